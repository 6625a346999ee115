"""The benchmark suite: traffic figures (deterministic, no GPU needed), the CLI, reports."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fusedloss.__main__ import main
from fusedloss.bench import harness, peers, registry, report


def traffic(tmp_path, *losses, stdout=None):
    """``fusedloss bench --traffic`` in a fresh process (the interpreter must be on before Triton compiles
    anything, which a GPU test session has already done): its rows; ``stdout``: a list that receives the
    printed text."""
    out = tmp_path / "traffic.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-m", "fusedloss", "bench", "--traffic", "--loss", *losses, "--out",
                          str(out)], check=True, env=env, capture_output=True, text=True)
    if stdout is not None:
        stdout.append(run.stdout)
    return json.loads(out.read_text())["results"]


def by_impl(rows, loss):
    return {r["impl"]: r for r in rows if r["loss"] == loss}


def test_cross_entropy_traffic_figures(tmp_path):
    """Two-pass: 1.5x the minimal for any grad_output; grad in forward: 1.0x at grad_output 1, 2.0x
    otherwise; torch eager 3.0x (log_softmax out, nll backward, log_softmax backward)."""
    rows = by_impl(traffic(tmp_path, "cross_entropy"), "cross_entropy")
    two_pass, single = rows["fusedloss"], rows["fusedloss (grad in forward)"]
    assert two_pass["fusedloss_ratio"] == pytest.approx(1.5, abs=0.01)
    assert two_pass["fusedloss_scaled_grad_ratio"] == pytest.approx(1.5, abs=0.01)
    assert single["fusedloss_ratio"] == pytest.approx(1.0, abs=0.01)
    assert single["fusedloss_scaled_grad_ratio"] == pytest.approx(2.0, abs=0.01)
    assert two_pass["torch_ratio"] == pytest.approx(3.0, abs=0.01)


def test_nll_traffic_is_minimal(tmp_path):
    rows = by_impl(traffic(tmp_path, "nll_loss"), "nll_loss")
    assert rows["fusedloss"]["fusedloss_ratio"] == pytest.approx(1.0, abs=0.02)


def test_linear_functions_traffic_is_measured_and_noted(tmp_path):
    """The LM-head losses are metered at a small shape (not left out), and their ratio, above torch's for
    linear_cross_entropy, carries the note that they trade traffic for memory."""
    printed = []
    rows = traffic(tmp_path, "linear_cross_entropy", "linear_jsd_loss", "linear_log_probs", stdout=printed)
    assert [(r["loss"], r["shape"]) for r in rows] == [
        ("linear_cross_entropy", [16, 32, 100]), ("linear_jsd_loss", [16, 32, 100]),
        ("linear_log_probs[entropy]", [16, 32, 100])]
    assert all(r["note"].startswith("trades traffic for memory") and "one chunk of rows at a time" in r["note"]
               for r in rows)
    lines = printed[0].splitlines()
    assert all(any(line.startswith(f"| {r['loss']} | fusedloss [1] |") for line in lines) for r in rows)
    assert "[1] linear_cross_entropy, linear_jsd_loss, linear_log_probs[entropy]: trades traffic for memory" in \
        printed[0]


def test_every_entry_has_a_traffic_shape():
    """`bench --traffic` and the demo cover every loss: none is left out for want of an interpreter shape."""
    assert [b.label for b in registry.REGISTRY if not b.traffic_shapes] == []


def test_traffic_table_marks_noted_rows_and_prints_each_note_once():
    from fusedloss.bench import traffic

    row = {"impl": "fusedloss", "dtype": "bfloat16", "shape": [4, 8], "minimal_bytes": 10, "fusedloss_ratio": 1.0,
           "fusedloss_scaled_grad_ratio": 1.0, "torch_ratio": None}
    table = traffic.traffic_table([dict(row, loss="a"), dict(row, loss="b", note="why b"),
                                   dict(row, loss="c", note="why b"), dict(row, loss="d", note="why d")])
    assert "| a | fusedloss | bfloat16 |" in table and "| b | fusedloss [1] |" in table
    assert "| c | fusedloss [1] |" in table and "| d | fusedloss [2] |" in table and "| no CPU kernel |" in table
    assert table.endswith("[1] b, c: why b\n\n[2] d: why d") and table.count("why b") == 1


def test_traffic_document_has_the_timed_results_provenance():
    from fusedloss.bench import traffic

    doc = traffic.document([{"loss": "x"}], {"y": "skipped"})
    timed = harness.provenance("cpu")
    assert set(harness.PROVENANCE_KEYS) <= set(doc) and {k: doc[k] for k in timed if k != "date"} == \
        {k: v for k, v in timed.items() if k != "date"}
    assert doc["kind"] == "traffic" and doc["results"] == [{"loss": "x"}] and doc["notes"] == {"y": "skipped"}
    legacy = [{"loss": "l", "impl": "i", "shape": [1], "fusedloss_ratio": 1.0, "torch_ratio": 1.0}]
    assert report.result_kind(doc) == "traffic" and report.result_kind(legacy) == "traffic"  # a bare list: older
    head = report.header(doc)
    for shown in (doc["device"], f"fusedloss {doc['fusedloss']}", f"commit {doc['git_commit']}",
                  f"torch {doc['torch']}", f"triton {doc['triton']}", doc["date"]):
        assert shown in head


def test_cli_bench_on_cpu_writes_results(tmp_path, fast_fallback, capsys):
    out = tmp_path / "results.json"
    assert main(["bench", "--cpu-fallback", "--loss", "cross_entropy", "nll_loss", "--dtype", "float32", "bfloat16",
                 "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert doc["device_type"] == "cpu" and doc["cpu_fallback"] and doc["torch"] and doc["copy_bandwidth_gbps"] == 10.0
    impls = {(r["loss"], r["impl"], r["mode"]) for r in doc["results"]}
    assert ("cross_entropy", "fusedloss", "forward+backward") in impls
    assert ("nll_loss", "torch", "forward") in impls
    assert all(r["status"] == "ok" and r["median_ms"] > 0 and len(r["rounds_ms"]) == 3 for r in doc["results"])
    assert (tmp_path / "results.md").read_text().startswith("Device:")
    assert (tmp_path / "results.png").stat().st_size > 0
    assert "| cross_entropy | float32 |" in capsys.readouterr().out


def test_cli_info(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "cross_entropy" in text and "torch" in text


def test_every_fused_function_is_benchmarked():
    """Each function of fusedloss.functional with kernels has a benchmark entry (ctc_loss has none: it is
    torch's on every backend); the other entries are objectives on an LM head (fusedloss.objectives: not in
    fusedloss.functional), with their function given."""
    import fusedloss.functional as FL
    import fusedloss.objectives as O

    objectives = [b for b in registry.REGISTRY if b.family == "objectives"]
    assert {b.name for b in registry.REGISTRY} - {b.name for b in objectives} == set(FL.__all__) - {"ctc_loss"}
    assert {b.name for b in objectives} == {"linear_grpo_loss", "linear_dpo_loss"} <= set(O.__all__)
    assert all(b.implementation is not None for b in objectives)


def test_unknown_loss_is_an_error():
    with pytest.raises(SystemExit):
        registry.select(["not_a_loss"])


def test_markdown_table_speedups():
    doc = {"results": [
        {"loss": "l", "dtype": "bfloat16", "shape": [4, 8], "mode": "forward+backward", "impl": "fusedloss",
         "median_ms": 1.0, "roofline_fraction": 0.5, "peak_extra_mb": 1.0, "status": "ok"},
        {"loss": "l", "dtype": "bfloat16", "shape": [4, 8], "mode": "forward+backward", "impl": "torch",
         "median_ms": 2.5, "roofline_fraction": 0.2, "peak_extra_mb": 3.0, "status": "ok"},
        {"loss": "l", "dtype": "bfloat16", "shape": [4, 8], "mode": "forward+backward", "impl": "liger",
         "median_ms": None, "roofline_fraction": None, "peak_extra_mb": None, "status": "out of memory"},
    ]}
    table = report.markdown_table(doc)
    assert "| l | bfloat16 | 4x8 | forward+backward | 1.000 | 50 | 2.500 (2.50x) | out of memory | 1 | 3 |" in table


# ------------------------------------------------------------------ the demo, the CLI's honesty


def test_demo_on_cpu_shows_what_it_can_check(tmp_path):
    """`make demo` without a GPU: traffic, parity, the committed GPU results with their device (found from
    the package's source tree, whatever the current directory), the eager overhead with its statistic and
    range, progress on stderr, and a PNG where --out says; never a torch-vs-torch race labelled fusedloss."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU demo even where a GPU exists
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(__file__)), env.get("PYTHONPATH")) if p)
    stem = tmp_path / "out" / "cpu-demo"
    run = subprocess.run([sys.executable, "-m", "fusedloss", "demo", "--loss", "cross_entropy", "mse_loss",
                          "--out", str(stem)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for section in ("## Memory traffic", "## Parity", "## Committed GPU results (not measured on this machine)",
                    "NVIDIA H100 80GB HBM3", "## Eager fallback overhead", "interleaved rounds",
                    "median of the per-round ratios; range", "The compute is torch's in both"):
        assert section in out, section
    assert out.startswith("# fusedloss on this machine (no GPU)\n\nDevice: **CPU") and " · commit " in out
    assert "| cross_entropy | fusedloss | bfloat16 | 64x3001 |" in out and "| mse_loss | fusedloss |" in out
    assert "speedup" not in out.split("## Committed GPU results")[0].lower()  # no CPU race above
    assert f"wrote {stem}.md, {stem}.png" in out
    for progress in ("demo: memory traffic", "traffic: cross_entropy bfloat16 64x3001", "demo: parity",
                     "parity: mse_loss", "demo: eager fallback overhead", "demo: done in"):
        assert progress in run.stderr, progress
    assert os.path.getsize(f"{stem}.png") > 10_000 and os.path.exists(f"{stem}.md")
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing else in the current directory


def test_demo_prints_each_section_when_it_is_done(monkeypatch):
    """`make demo > file` shows the traffic table before the parity checks start (not everything at the end)."""
    from fusedloss.bench import demo, traffic

    parts, seen = [], {}

    def parity(losses, **kwargs):
        seen["parity"] = len(parts)  # the sections printed when the parity checks start
        return []

    def fallback(losses):
        seen["fallback"] = len(parts)
        return {"why": "test"}

    monkeypatch.setattr(traffic, "run_traffic", lambda losses, **kwargs: [])
    monkeypatch.setattr(demo, "_parity", parity)
    monkeypatch.setattr(demo, "_fallback_overhead", fallback)
    text, written = demo.run_cpu(None, None, ["mse_loss"], emit=parts.append, progress=False)
    assert seen == {"parity": 2, "fallback": 4}  # title and traffic out before parity; parity, GPU before fallback
    assert [part.splitlines()[0] for part in parts] == ["# fusedloss on this machine (no GPU)", "## Memory traffic "
        "(forward+backward, bytes moved / minimal; through Triton's interpreter)", "## Parity (largest error vs "
        "float64, relative to the largest value; loss and every gradient; each loss at its traffic shape)",
        "## Committed GPU results (not measured on this machine)", "## Eager fallback overhead"]
    assert text == "\n".join(parts) and written == []


def _demo_figure(monkeypatch, traffic_rows, parity_rows, docs):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from fusedloss.bench import demo

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: figures.append(self))
    assert demo.plot(traffic_rows, parity_rows, docs, "unused.png")
    return figures[0]


def test_demo_plot_has_one_nonempty_panel_per_question_side_by_side(monkeypatch):
    traffic_rows = [{"loss": "mse_loss", "impl": "fusedloss", "fusedloss_ratio": 1.0, "torch_ratio": 1.67}]
    parity_rows = [{"loss": "mse_loss", "dtype": "float32", "fusedloss": 1e-7, "torch": 2e-7}]
    doc = {"device": "GPU X", "results": [
        {"loss": "mse_loss", "dtype": "float32", "shape": [8], "mode": "forward+backward", "impl": impl,
         "median_ms": ms} for impl, ms in (("fusedloss", 1.0), ("torch", 2.5))]}
    figure = _demo_figure(monkeypatch, traffic_rows, parity_rows, [doc])
    axes = figure.axes
    assert [ax.get_title().split(" ")[0] for ax in axes] == ["Memory", "Largest", "Speed-up"]
    assert len({round(ax.get_position().y0, 3) for ax in axes}) == 1  # side by side, not stacked
    for ax in axes:
        assert any(p.get_width() > 0 for p in ax.patches) or any(len(line.get_xdata()) for line in ax.lines)
        assert all(label.get_rotation() == 0 for label in ax.get_yticklabels())
    assert len(_demo_figure(monkeypatch, traffic_rows, [], []).axes) == 1  # a question without data: no panel


def test_demo_plot_leaves_out_what_torch_cannot_compute_and_says_so(monkeypatch):
    """torch has no bfloat16 CPU kernel of multi_margin_loss: no point (once drawn as a bar near 0 on a log
    axis), and the line's label says why; a traffic row without torch gets no bar either."""
    parity_rows = [{"loss": loss, "dtype": dtype, "fusedloss": 1e-3 if dtype == "bfloat16" else 1e-7,
                    "torch": None if (loss, dtype) == ("multi_margin_loss", "bfloat16") else 2e-3}
                   for loss in ("mse_loss", "multi_margin_loss") for dtype in ("float32", "bfloat16")]
    traffic_rows = [{"loss": "multi_margin_loss", "impl": "fusedloss", "fusedloss_ratio": 1.0, "torch_ratio": None},
                    {"loss": "linear_cross_entropy", "impl": "fusedloss", "fusedloss_ratio": 12.0, "torch_ratio": 3.4,
                     "note": "trades traffic for memory"}]
    traffic_axis, parity_axis = _demo_figure(monkeypatch, traffic_rows, parity_rows, []).axes
    points = {line.get_label(): list(line.get_xdata()) for line in parity_axis.lines}
    assert points["torch bfloat16"] == [2e-3] and points["fusedloss bfloat16"] == [1e-3, 1e-3]
    labels = [label.get_text() for label in parity_axis.get_yticklabels()]
    assert labels == ["mse_loss", "multi_margin_loss  [torch bfloat16: no CPU kernel]"]
    assert len(traffic_axis.patches) == 3  # two fusedloss bars, one torch bar: no placeholder for the missing one
    assert [label.get_text() for label in traffic_axis.get_yticklabels()] == [
        "multi_margin_loss  [torch eager: no CPU kernel]", "linear_cross_entropy *"]
    assert "trades traffic for memory" in traffic_axis.get_title().replace("\n", " ")


def test_demo_figure_is_readable_at_the_full_registry(tmp_path):
    """Every entry's lines in a figure whose panels stand side by side: wider than tall, and no taller
    than a screen (the stacked layout drew 1100 x 5150 px)."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from fusedloss.bench import demo

    traffic_rows = [{"loss": b.label, "impl": "fusedloss", "fusedloss_ratio": 1.5, "torch_ratio": 3.0}
                    for b in registry.REGISTRY for _ in range(1 + len(b.variants))]
    parity_rows = [{"loss": b.label, "dtype": dtype, "fusedloss": 1e-7, "torch": 1e-7}
                   for b in registry.REGISTRY for dtype in ("float32", "bfloat16")]
    path = demo.plot(traffic_rows, parity_rows, [], str(tmp_path / "d.png"))
    width, height = Image.open(path).size
    assert width > height and height <= 1600, (width, height)


def test_bench_help_lists_losses_and_implementations(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "losses: " in text and "cross_entropy[smoothing+weight]" in text
    assert "implementations: fusedloss, torch, torch.compile" in text and "liger" in text
    assert "--no-progress" in text and "every 10%" in text


def test_progress_without_a_terminal_prints_a_line_per_tenth(capsys):
    progress = harness._Progress(40, True)
    progress.tty = False
    for i in range(1, 41):
        progress.step(i, f"item {i}")
    progress.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("40/40 (100%)")


def test_bench_shape_option_runs_the_users_shapes(tmp_path, fast_fallback):
    out = tmp_path / "results.json"
    assert main(["bench", "--cpu-fallback", "--loss", "mse_loss", "cross_entropy", "--dtype", "float32", "--shape",
                 "37", "--shape", "5x11", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    shapes = {(r["loss"], tuple(r["shape"])) for r in doc["results"]}
    assert shapes == {("mse_loss", (37,)), ("cross_entropy", (5, 11))}


def test_bench_compare(tmp_path, capsys):
    def doc(device, ms):
        return {"device": device, "torch": "2.13", "triton": "3.8", "results": [
            {"loss": "mse_loss", "dtype": "float32", "shape": [8], "mode": "forward+backward", "impl": "fusedloss",
             "median_ms": ms, "status": "ok"}]}
    old, new, other = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "other.json"
    old.write_text(json.dumps(doc("GPU A", 2.0)))
    new.write_text(json.dumps(doc("GPU A", 1.5)))
    other.write_text(json.dumps(doc("GPU B", 1.0)))
    assert main(["bench", "compare", str(old), str(new)]) == 0
    text = capsys.readouterr().out
    assert "| mse_loss | float32 | 8 | forward+backward | fusedloss | 2.000 | 1.500 | 0.750 |" in text
    assert "Not comparable" not in text
    main(["bench", "compare", str(old), str(other)])
    assert "Not comparable as is (different device: GPU A -> GPU B)" in capsys.readouterr().out.replace("**", "")


def test_bench_without_matplotlib_says_so(tmp_path, fast_fallback, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = tmp_path / "r.json"
    assert main(["bench", "--cpu-fallback", "--loss", "mse_loss", "--dtype", "float32", "--out", str(out),
                 "--no-progress"]) == 0
    assert "no plot: matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "r.png").exists()


def test_info_with_triton_forced_reports_instead_of_crashing(fusedloss_env, capsys):
    fusedloss_env("FUSEDLOSS_BACKEND", "triton")
    fusedloss_env("TRITON_INTERPRET", "0")
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "requested backend: triton (forced" in text
    assert "cross_entropy" in text and ("cannot run" in text or "triton" in text)


def test_linear_cross_entropy_entry(tmp_path, fast_fallback):
    """The matmul-rows entry: its FLOPs (three GEMMs of 2 N H C forward+backward, one forward), the cuBLAS
    floor's gradients (the shapes of the inputs'), and a CPU run of the CLI with TFLOP/s in the results."""
    bench = registry.select(["linear_cross_entropy"])[0]
    inputs = bench.make_inputs((6, 5, 7), torch.float32, "cpu")
    assert bench.flops(inputs, True) == 3 * bench.flops(inputs, False) == 3 * 2 * 6 * 5 * 7
    floor = peers.three_gemm_floor(bench)(*inputs.args)
    grads = torch.autograd.grad(floor, inputs.grad_tensors)
    assert [g.shape for g in grads] == [t.shape for t in inputs.grad_tensors]
    assert set(bench.peers) == {"cuBLAS 3-GEMM floor", "torch chunked", "liger", "cut-cross-entropy"}
    out = tmp_path / "lce.json"
    assert main(["bench", "--cpu-fallback", "--loss", "linear_cross_entropy", "--out", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())["results"]
    assert {r["impl"] for r in results} == {"fusedloss", "torch"}
    assert all(r["status"] == "ok" and r["tflops"] > 0 for r in results)


def test_every_test_is_under_tests():
    """pytest's testpaths is tests/ alone, and no test module lives elsewhere (the CPU fallback's
    pytest-benchmark set moved from bench/ to tests/test_bench_cpu_fallback.py)."""
    import glob

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml")) as f:
        assert 'testpaths = ["tests"]' in f.read().splitlines()
    strays = [path for path in glob.glob(os.path.join(root, "**", "test_*.py"), recursive=True)
              if not os.path.relpath(path, root).startswith(("tests" + os.sep, ".venv" + os.sep, "build" + os.sep))]
    assert strays == []
