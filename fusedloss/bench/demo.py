"""``make demo`` (``python -m fusedloss demo``): what fusedloss brings, shown honestly on the machine at hand.

On a GPU: the measured race (the benchmark suite at its quick sizes). Without one there is nothing to
race (fusedloss runs torch's own kernels on the CPU), so the demo shows what can be checked here and
labels what cannot:
  1. memory traffic: the bytes each implementation moves, over the minimal, fusedloss's kernels run
     through Triton's interpreter against torch eager (the figure GPU speed follows), every entry of the
     registry at its traffic shape (the LM-head losses too, at a small one, with the note that they trade
     traffic for memory);
  2. parity: the largest error of each loss and gradient against float64, fusedloss's kernels next to
     torch at the same dtype;
  3. the GPU results committed in bench/results/, with the device that measured them;
  4. the eager fallback's overhead on this CPU (fusedloss's dispatcher calling torch), on the first
     selected loss at its CPU shape, as the median of the per-round ratios with their range.
With ``--loss`` every section shows the selected losses only. Each section is printed (flushed) when it
is done, and progress goes to stderr as ``bench``'s does: the whole takes minutes on a small CPU.
The PNG sets one panel per question that has data side by side: traffic, parity, GPU speed-ups.
"""
import glob
import json
import os
import sys
import time

import torch

from . import harness, registry, report
from .entry import Inputs, fusedloss_impl, torch_impl

SECTIONS = ("Memory traffic", "Parity", "Committed GPU results", "Eager fallback overhead")
PARITY_DTYPES = (torch.float32, torch.bfloat16)


def _parity(losses=None, dtypes=PARITY_DTYPES, on_case=None, notes=None):
    """Rows of (loss, dtype, fusedloss's and torch's largest relative error vs float64, over the loss and
    every gradient), each registry entry at its traffic shape, fusedloss on the Triton backend; torch's
    error is None where torch has no CPU kernel at that dtype. ``on_case(i, total, label)``: progress;
    ``notes``: a dict that receives why an entry has no row."""
    import fusedloss

    notes = {} if notes is None else notes
    plan = []
    for bench in registry.select(losses):
        if not bench.traffic_shapes:
            notes[bench.label] = "no interpreter shape (traffic_shapes): not checked here"
            continue
        plan += [(bench, dtype) for dtype in dtypes if dtype in bench.dtypes or dtype == torch.float32]
    rows = []
    for i, (bench, dtype) in enumerate(plan, 1):
        shape = bench.traffic_shapes[0]
        if on_case is not None:
            on_case(i, len(plan), f"{bench.label} {str(dtype).replace('torch.', '')} {'x'.join(map(str, shape))}")
        torch.manual_seed(0)
        inputs = bench.make_inputs(shape, dtype, "cpu")
        exact = _loss_and_grads(torch_impl(bench), _as_float64(inputs))
        with fusedloss.backend("triton"):
            ours = _loss_and_grads(fusedloss_impl(bench), inputs)
        try:
            theirs = _worst_error(_loss_and_grads(torch_impl(bench), inputs), exact)
        except (RuntimeError, NotImplementedError):  # no CPU kernel of torch's at this dtype
            theirs = None
        rows.append({"loss": bench.label, "dtype": str(dtype).replace("torch.", ""), "shape": list(shape),
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
    return Inputs(args, kwargs, grads)


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
    torch on one thread). Returns {"loss", "dtype", "shape", "torch_ms": torch's time per call (the median
    over the rounds: the scale of the call), "summary": host.overhead() (the median of the per-round ratios
    and their range: on a shared machine the same call varies by 2x run to run)}, or, when nothing could be
    measured,
    {"why": ...} (with the case's "loss", "dtype", "shape" when there is one)."""
    from . import host

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
    return {**described, "torch_ms": theirs.median_ms, "summary": host.overhead(ours.rounds_ms, theirs.rounds_ms)}


def fallback_overhead_text(overhead):
    """The demo's sentence for ``_fallback_overhead()``'s figures (or for why there are none): the ratio's
    statistic named, and only the conclusion its range allows."""
    from . import host

    case = (f"{overhead['loss']} {overhead['dtype']} {' x '.join(map(str, overhead['shape']))} forward+backward"
            if "loss" in overhead else None)
    if "why" in overhead:
        return (f"The eager fallback's overhead on {case} was not measured: {overhead['why']}." if case else
                f"The eager fallback's overhead was not measured: {overhead['why']}.")
    return (f"{case} on this CPU (torch: {overhead['torch_ms']:.3f} ms per call, the median over the rounds), "
            f"interleaved rounds with torch on one thread: fusedloss / torch "
            f"{host.describe_overhead(overhead['summary'])}. The compute is torch's in both.")


def _progress(section, enabled):
    """``on_case(i, total, label)`` for one section: a bar on a terminal, a line every 10% otherwise
    (harness._Progress, as ``bench``), on stderr, flushed."""
    bar = harness._Progress(0, False)

    def on_case(i, total, label):
        nonlocal bar
        if i == 1:
            bar = harness._Progress(total, enabled)
        bar.step(i, f"{section}: {label}")
        if i == total:
            bar.close()
    return on_case


def _say(text, enabled=True):
    if enabled:
        print(f"demo: {text}", file=sys.stderr, flush=True)


def _notes_lines(title, notes):
    return [f"{title}:", *[f"- {label}: {why}" for label, why in notes.items()], ""] if notes else []


def run_cpu(results_folder="bench/results", out_stem=None, losses=None, emit=None, progress=True):
    """The CPU demo (``losses``: a subset of the registry, default all): returns its text, and writes it
    as Markdown and a PNG beside ``out_stem``. ``results_folder``: where the committed GPU results are
    (None when fusedloss was not imported from its source tree). ``emit(part)``: receives each section's
    text as soon as it is done (the CLI prints it, flushed); ``progress``: progress lines on stderr."""
    from . import traffic

    emit = emit or (lambda part: None)
    started = time.perf_counter()
    parts = []

    def done(lines):
        part = "\n".join(lines)
        parts.append(part)
        emit(part)

    done(["# fusedloss on this machine (no GPU)", "",
          f"{report.provenance_line(harness.provenance('cpu'))}.", "",
          "Without a GPU fusedloss runs torch's own kernels (the eager fallback), so nothing here races. "
          "What the kernels bring is checked below through Triton's interpreter; GPU speed is shown from "
          "committed results, labelled with the device that measured them.", ""])
    _say("memory traffic: every selected loss forward+backward through Triton's interpreter", progress)
    traffic_notes = {}
    traffic_rows = traffic.run_traffic(losses, notes=traffic_notes, on_case=_progress("traffic", progress))
    done([f"## {SECTIONS[0]} (forward+backward, bytes moved / minimal; through Triton's interpreter)", "",
          traffic.traffic_table(traffic_rows), "", *_notes_lines("Not metered", traffic_notes)])
    _say("parity: each loss and gradient against float64, float32 and bfloat16", progress)
    parity_notes = {}
    parity_rows = _parity(losses, on_case=_progress("parity", progress), notes=parity_notes)
    lines = [f"## {SECTIONS[1]} (largest error vs float64, relative to the largest value; loss and every "
             "gradient; each loss at its traffic shape)", "",
             "| loss | dtype | shape | fusedloss kernels | torch |", "|---|---|---|---|---|"]
    lines += [f"| {r['loss']} | {r['dtype']} | {'x'.join(map(str, r['shape']))} | {r['fusedloss']:.2e} | "
              f"{'no CPU kernel' if r['torch'] is None else format(r['torch'], '.2e')} |" for r in parity_rows]
    done(lines + ["", *_notes_lines("Not checked", parity_notes)])
    all_gpu_docs = _committed_gpu_results(results_folder) if results_folder else []
    gpu_docs = _selected_gpu_results(all_gpu_docs, losses)
    lines = [f"## {SECTIONS[2]} (not measured on this machine)", ""]
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
    done(lines)
    _say("eager fallback overhead: interleaved rounds of fusedloss's dispatcher and torch", progress)
    done([f"## {SECTIONS[3]}", "", fallback_overhead_text(_fallback_overhead(losses)), ""])
    _say(f"done in {time.perf_counter() - started:.0f} s", progress)
    text = "\n".join(parts)
    written = []
    if out_stem:
        os.makedirs(os.path.dirname(os.path.abspath(out_stem)), exist_ok=True)
        with open(out_stem + ".md", "w") as f:
            f.write(text + "\n")
        written.append(out_stem + ".md")
        panels = plot_panels(traffic_rows, parity_rows, [doc for _, _, doc in gpu_docs[:1]])
        png = report.barh_panels(panels, out_stem + ".png", layout="columns")
        written.append(png or f"no PNG ({report.why_no_plot(panels)})")
    return text, written


def plot(traffic_rows, parity_rows, gpu_docs, path):
    """One panel per question that has data (traffic, parity, committed GPU speed-ups), side by side; the
    path, or None (``report.why_no_plot`` says why)."""
    return report.barh_panels(plot_panels(traffic_rows, parity_rows, gpu_docs), path, layout="columns")


def plot_panels(traffic_rows, parity_rows, gpu_docs):
    """The panels of ``plot``: one per question that has data. A value that was not measured (torch without
    a CPU kernel at that dtype) is None: not drawn, and its line's label says why."""
    panels = []
    if traffic_rows:
        noted = any(r.get("note") for r in traffic_rows)
        labels = [f"{r['loss']} {r['impl'].replace('fusedloss', '').strip()}".strip() + (" *" if r.get("note") else "")
                  for r in traffic_rows]
        panels.append(("Memory traffic, forward+backward (x the minimal, log scale; lower is better)"
                       + ("; * trades traffic for memory (logits in chunks): see the table's note" if noted
                          else ""), labels,
                       {"fusedloss": [r["fusedloss_ratio"] for r in traffic_rows],
                        "torch eager": [r["torch_ratio"] for r in traffic_rows]}, "log",
                       {"missing": {"torch eager": "no CPU kernel"}}))
    if parity_rows:
        losses = list(dict.fromkeys(r["loss"] for r in parity_rows))
        dtypes = list(dict.fromkeys(r["dtype"] for r in parity_rows))
        found = {(r["loss"], r["dtype"]): r for r in parity_rows}
        series, missing = {}, {}
        for dtype in dtypes:
            for impl in ("fusedloss", "torch"):
                name = f"{impl} {dtype}"
                rows = [found.get((loss, dtype)) for loss in losses]
                series[name] = [None if r is None else r[impl] for r in rows]
                # why a value is missing, per line: torch without a CPU kernel, or a dtype the loss is not run in
                missing[name] = ["not run" if r is None else "no CPU kernel" for r in rows]
        panels.append(("Largest error vs float64, loss and every gradient (log scale; lower is better)", losses,
                       series, "log", {"style": "dots", "missing": missing}))
    for doc in gpu_docs:
        rows = [(k, v) for k, v in report.grouped(doc).items() if k[3] == "forward+backward"
                and v.get("fusedloss", {}).get("median_ms") and v.get("torch", {}).get("median_ms")]
        if rows:
            labels = [f"{loss} {dtype} {report._shape(shape)}" for (loss, dtype, shape, _), _ in rows]
            panels.append((f"Speed-up over torch eager, forward+backward, measured on {doc['device']} (committed "
                           "results)", labels,
                           {"fusedloss": [v["torch"]["median_ms"] / v["fusedloss"]["median_ms"] for _, v in rows]},
                           "linear"))
    return panels
