"""``make demo`` (``python -m fusedloss demo``): what fusedloss brings, shown honestly on the machine at hand.

On a GPU: the measured race (the benchmark suite at its quick sizes). Without one there is nothing to
race (fusedloss runs torch's own kernels on the CPU), so the demo shows what can be checked here and
labels what cannot:
  1. memory traffic: the bytes each implementation moves, over the minimal, fusedloss's kernels run
     through Triton's interpreter against torch eager (the figure GPU speed follows);
  2. parity: the largest error of each loss and gradient against float64, fusedloss's kernels next to
     torch at the same dtype;
  3. the GPU results committed in bench/results/, with the device that measured them;
  4. the eager fallback's overhead on this CPU (fusedloss's dispatcher calling torch), on the first
     selected loss at its CPU shape.
With ``--loss`` every section shows the selected losses only.
A PNG has one panel per question that has data: traffic, parity, GPU speed-ups.
"""
import glob
import json
import os
import time

import torch

from . import registry, report

SECTIONS = ("Memory traffic", "Parity", "Committed GPU results", "Eager fallback overhead")


def _parity(losses=None, dtypes=(torch.float32, torch.bfloat16)):
    """Rows of (loss, dtype, fusedloss's and torch's largest relative error vs float64, over the loss and
    every gradient), each registry entry at its traffic shape, fusedloss on the Triton backend."""
    import fusedloss

    rows = []
    for bench in registry.select(losses):
        if not bench.traffic_shapes:  # an entry too large for the interpreter (linear_cross_entropy's GEMMs)
            continue
        for dtype in dtypes:
            if dtype not in bench.dtypes and dtype != torch.float32:
                continue
            torch.manual_seed(0)
            inputs = bench.make_inputs(bench.traffic_shapes[0], dtype, "cpu")
            exact = _loss_and_grads(registry.torch_impl(bench), _as_float64(inputs))
            with fusedloss.backend("triton"):
                ours = _loss_and_grads(registry.fusedloss_impl(bench), inputs)
            try:
                theirs = _worst_error(_loss_and_grads(registry.torch_impl(bench), inputs), exact)
            except (RuntimeError, NotImplementedError):  # no CPU kernel of torch's at this dtype
                theirs = None
            rows.append({"loss": bench.label, "dtype": str(dtype).replace("torch.", ""),
                         "fusedloss": _worst_error(ours, exact), "torch": theirs})
    return rows


def _as_float64(inputs):
    def cast(t):
        if not torch.is_tensor(t) or not t.is_floating_point():
            return t
        return t.detach().double().requires_grad_(t.requires_grad)
    args = tuple(cast(a) for a in inputs.args)
    kwargs = {k: cast(v) for k, v in inputs.kwargs.items()}
    grads = tuple(a for a in args if torch.is_tensor(a) and a.requires_grad)
    return registry.Inputs(args, kwargs, grads)


def _loss_and_grads(impl, inputs):
    loss = impl(*inputs.args, **inputs.kwargs)
    grads = torch.autograd.grad(loss.sum() if loss.dim() else loss, inputs.grad_tensors)
    return [loss.detach(), *grads]


def _worst_error(values, exact):
    worst = 0.0
    for value, reference in zip(values, exact):
        scale = reference.abs().max().item() or 1.0
        worst = max(worst, ((value.double() - reference).abs().max().item()) / scale)
    return worst


def _committed_gpu_results(folder):
    """The newest committed GPU result document per results file stem, newest first."""
    docs = []
    for path in glob.glob(os.path.join(folder, "*.json")):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("device_type") == "cuda" and doc.get("results"):
            docs.append((doc.get("date", ""), path, doc))
    return sorted(docs, key=lambda d: d[0], reverse=True)


def _selected_gpu_results(gpu_docs, losses):
    """``_committed_gpu_results``' documents cut to the rows of the selected losses (the registry's labels
    that ``losses`` names; every row when None); documents left without a row are dropped."""
    if not losses:
        return gpu_docs
    labels = {bench.label for bench in registry.select(losses)}
    chosen = []
    for date, path, doc in gpu_docs:
        rows = [r for r in doc["results"] if isinstance(r, dict) and r.get("loss") in labels]
        if rows:
            chosen.append((date, path, dict(doc, results=rows)))
    return chosen


def _fallback_case(losses=None):
    """(entry, shape, dtype) of the eager fallback's measurement: the first selected loss (in the order
    ``losses`` names them; the registry's first when None) that has a CPU shape, at its first CPU shape, in
    float32 where it is benchmarked in float32 (else in its first dtype); None when no selected loss has a
    CPU shape."""
    for bench in [b for name in losses for b in registry.select([name])] if losses else registry.REGISTRY:
        if bench.cpu_shapes:
            dtype = torch.float32 if torch.float32 in bench.dtypes else bench.dtypes[0]
            return bench, tuple(bench.cpu_shapes[0]), dtype
    return None


def _fallback_overhead(losses=None, rounds=None, round_ms=None):
    """fusedloss's eager fallback against torch directly, forward+backward, on the first selected loss that
    has a CPU shape (``_fallback_case``), measured as ``bench --cpu-fallback`` measures that case
    (harness.measure_fallback, which times as ``bench --host`` does: the two interleaved round by round,
    torch on one thread, the best round of each). Returns {"loss", "dtype", "shape", "fusedloss": ms,
    "torch": ms, "summary": host.overhead()} (on a shared machine the same call varies by 2x run to run, so
    the ratio comes with its spread), or, when nothing could be measured, {"why": ...} (with the case's
    "loss", "dtype", "shape" when there is one)."""
    from . import harness, host

    case = _fallback_case(losses)
    if case is None:
        return {"why": f"no selected loss ({', '.join(losses or ())}) has a CPU shape to measure it at"}
    bench, shape, dtype = case
    described = {"loss": bench.label, "dtype": str(dtype).replace("torch.", ""), "shape": shape}
    torch.manual_seed(0)
    ours, theirs = harness.measure_fallback(bench, shape, dtype, "forward+backward", bandwidth=1.0, rounds=rounds,
                                            round_ms=round_ms)
    if not (ours.rounds_ms and theirs.rounds_ms):
        return {**described, "why": ours.status}
    return {**described, "fusedloss": ours.best_ms, "torch": theirs.best_ms,
            "summary": host.overhead(ours.rounds_ms, theirs.rounds_ms)}


def fallback_overhead_text(overhead):
    """The demo's sentence for ``_fallback_overhead()``'s figures (or for why there are none)."""
    from . import host

    case = (f"{overhead['loss']} {overhead['dtype']} {' x '.join(map(str, overhead['shape']))} forward+backward"
            if "loss" in overhead else None)
    if "why" in overhead:
        return (f"The eager fallback's overhead on {case} was not measured: {overhead['why']}." if case else
                f"The eager fallback's overhead was not measured: {overhead['why']}.")
    return (f"{case} on this CPU (torch on one thread, best of interleaved rounds): fusedloss "
            f"{overhead['fusedloss']:.3f} ms, torch {overhead['torch']:.3f} ms; fusedloss / torch "
            f"{host.describe_overhead(overhead['summary'])}. The compute is torch's in both.")


def run_cpu(results_folder="bench/results", out_stem=None, losses=None):
    """The CPU demo (``losses``: a subset of the registry, default all): returns its text, and writes it
    as Markdown and a PNG beside ``out_stem``. ``results_folder``: where the committed GPU results are
    (None when fusedloss was not imported from its source tree)."""
    from . import traffic

    lines = ["# fusedloss on this machine (no GPU)", "",
             "Without a GPU fusedloss runs torch's own kernels (the eager fallback), so nothing here races. "
             "What the kernels bring is checked below through Triton's interpreter; GPU speed is shown from "
             "committed results, labelled with the device that measured them.", ""]
    traffic_rows = traffic.run_traffic(losses)
    lines += [f"## {SECTIONS[0]} (forward+backward, bytes moved / minimal; through Triton's interpreter)", "",
              traffic.traffic_table(traffic_rows), ""]
    parity_rows = _parity(losses)
    lines += [f"## {SECTIONS[1]} (largest error vs float64, relative to the largest value; loss and every "
              "gradient)", "", "| loss | dtype | fusedloss kernels | torch |", "|---|---|---|---|"]
    lines += [f"| {r['loss']} | {r['dtype']} | {r['fusedloss']:.2e} | "
              f"{'no CPU kernel' if r['torch'] is None else format(r['torch'], '.2e')} |" for r in parity_rows]
    lines.append("")
    all_gpu_docs = _committed_gpu_results(results_folder) if results_folder else []
    gpu_docs = _selected_gpu_results(all_gpu_docs, losses)
    lines += [f"## {SECTIONS[2]} (not measured on this machine)", ""]
    if gpu_docs:
        if losses:
            lines += [f"Rows of the selected losses ({', '.join(losses)}) only.", ""]
        for _, path, doc in gpu_docs:
            lines += [f"From `{path}`: **{doc['device']}**, torch {doc['torch']}, triton {doc['triton']}, "
                      f"{doc['date']}.", "", report.summary_table(doc), ""]
    elif all_gpu_docs:
        lines += [f"None of the selected losses ({', '.join(losses)}) was measured on a GPU in the committed "
                  f"results in {results_folder}/.", ""]
    elif results_folder:
        lines += [f"No committed GPU results in {results_folder}/.", ""]
    else:
        lines += ["fusedloss was not imported from its source tree (an installed wheel), so there are no committed "
                  "GPU results to show: they are in the repository's bench/results/.", ""]
    lines += [f"## {SECTIONS[3]}", "", fallback_overhead_text(_fallback_overhead(losses)), ""]
    text = "\n".join(lines)
    written = []
    if out_stem:
        os.makedirs(os.path.dirname(os.path.abspath(out_stem)), exist_ok=True)
        with open(out_stem + ".md", "w") as f:
            f.write(text + "\n")
        written.append(out_stem + ".md")
        panels = plot_panels(traffic_rows, parity_rows, [doc for _, _, doc in gpu_docs[:1]])
        png = report.barh_panels(panels, out_stem + ".png")
        written.append(png or f"no PNG ({report.why_no_plot(panels)})")
    return text, written


def plot(traffic_rows, parity_rows, gpu_docs, path):
    """One panel per question that has data (traffic, parity, committed GPU speed-ups); the path, or None
    (``report.why_no_plot`` says why)."""
    return report.barh_panels(plot_panels(traffic_rows, parity_rows, gpu_docs), path)


def plot_panels(traffic_rows, parity_rows, gpu_docs):
    """The panels of ``plot``: one per question that has data."""
    panels = []
    if traffic_rows:
        labels = [f"{r['loss']} {r['impl'].replace('fusedloss', '').strip()}".strip() for r in traffic_rows]
        panels.append(("Memory traffic, forward+backward (x the minimal; lower is better)", labels,
                       {"fusedloss": [r["fusedloss_ratio"] for r in traffic_rows],
                        "torch eager": [r["torch_ratio"] or 0.0 for r in traffic_rows]}, "linear"))
    if parity_rows:
        labels = [f"{r['loss']} {r['dtype']}" for r in parity_rows]
        panels.append(("Largest error vs float64 (log scale; lower is better)", labels,
                       {"fusedloss kernels": [max(r["fusedloss"], 1e-17) for r in parity_rows],
                        "torch": [max(r["torch"] or 0.0, 1e-17) for r in parity_rows]}, "log"))
    for doc in gpu_docs:
        rows = [(k, v) for k, v in report.grouped(doc).items() if k[3] == "forward+backward"
                and v.get("fusedloss", {}).get("median_ms") and v.get("torch", {}).get("median_ms")]
        if rows:
            panels.append((f"Speed-up over torch eager, forward+backward, measured on {doc['device']} (committed "
                           "results)", [f"{loss} {dtype} {report._shape(shape)}" for (loss, dtype, shape, _), _ in rows],
                           {"fusedloss": [v["torch"]["median_ms"] / v["fusedloss"]["median_ms"] for _, v in rows]},
                           "linear"))
    return panels
