"""The benchmark suite: traffic figures (deterministic, no GPU needed), the CLI, reports."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fusedloss.__main__ import main
from fusedloss.bench import harness, registry, report


def traffic(tmp_path, *losses):
    """``fusedloss bench --traffic`` in a fresh process: the interpreter must be on before Triton compiles
    anything, which a GPU test session has already done."""
    out = tmp_path / "traffic.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    subprocess.run([sys.executable, "-m", "fusedloss", "bench", "--traffic", "--loss", *losses, "--out", str(out)],
                   check=True, env=env, capture_output=True)
    return json.loads(out.read_text())


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


@pytest.fixture
def tiny_registry(monkeypatch):
    """Every entry at one small CPU shape, so the CLI runs in seconds."""
    for bench in registry.REGISTRY:
        monkeypatch.setattr(bench, "cpu_shapes", [tuple(max(1, min(s, 97)) for s in bench.cpu_shapes[0])])
    monkeypatch.setattr(harness, "copy_bandwidth_gbps", lambda device: 10.0)
    monkeypatch.setattr(harness, "FALLBACK_ROUNDS", 3)
    monkeypatch.setattr(harness, "FALLBACK_ROUND_MS", 2.0)


def test_cli_bench_on_cpu_writes_results(tmp_path, tiny_registry, capsys):
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
    torch's on every backend)."""
    import fusedloss.functional as FL

    assert {b.name for b in registry.REGISTRY} == set(FL.__all__) - {"ctc_loss"}


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
    the package's source tree, whatever the current directory), the eager overhead with its spread, and a
    PNG where --out says; never a torch-vs-torch race labelled fusedloss."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU demo even where a GPU exists
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(__file__)), env.get("PYTHONPATH")) if p)
    stem = tmp_path / "out" / "cpu-demo"
    run = subprocess.run([sys.executable, "-m", "fusedloss", "demo", "--loss", "cross_entropy", "mse_loss",
                          "--out", str(stem)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for section in ("## Memory traffic", "## Parity", "## Committed GPU results (not measured on this machine)",
                    "NVIDIA H100 80GB HBM3", "## Eager fallback overhead", "interleaved rounds", "per-round range",
                    "The compute is torch's in both"):
        assert section in out, section
    assert "| cross_entropy | fusedloss | bfloat16 | 64x3001 |" in out and "| mse_loss | fusedloss |" in out
    assert "speedup" not in out.split("## Committed GPU results")[0].lower()  # no CPU race above
    assert f"wrote {stem}.md, {stem}.png" in out
    assert os.path.getsize(f"{stem}.png") > 10_000 and os.path.exists(f"{stem}.md")
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing else in the current directory


def test_demo_plot_has_one_nonempty_panel_per_question(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from fusedloss.bench import demo

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: figures.append(self))
    traffic_rows = [{"loss": "mse_loss", "impl": "fusedloss", "fusedloss_ratio": 1.0, "torch_ratio": 1.67}]
    parity_rows = [{"loss": "mse_loss", "dtype": "float32", "fusedloss": 1e-7, "torch": 2e-7}]
    doc = {"device": "GPU X", "results": [
        {"loss": "mse_loss", "dtype": "float32", "shape": [8], "mode": "forward+backward", "impl": impl,
         "median_ms": ms} for impl, ms in (("fusedloss", 1.0), ("torch", 2.5))]}
    assert demo.plot(traffic_rows, parity_rows, [doc], str(tmp_path / "x.png"))
    axes = figures[0].axes
    assert [ax.get_title().split(" ")[0] for ax in axes] == ["Memory", "Largest", "Speed-up"]
    for ax in axes:
        assert ax.patches and any(p.get_width() > 0 for p in ax.patches)
        assert all(label.get_rotation() == 0 for label in ax.get_yticklabels())
    figures.clear()
    demo.plot(traffic_rows, [], [], str(tmp_path / "y.png"))  # a question without data gets no panel
    assert len(figures[0].axes) == 1


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


def test_bench_shape_option_runs_the_users_shapes(tmp_path, tiny_registry):
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


def test_bench_without_matplotlib_says_so(tmp_path, tiny_registry, monkeypatch, capsys):
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


def test_linear_cross_entropy_entry(tmp_path, tiny_registry):
    """The matmul-rows entry: its FLOPs (three GEMMs of 2 N H C forward+backward, one forward), the cuBLAS
    floor's gradients (the shapes of the inputs'), and a CPU run of the CLI with TFLOP/s in the results."""
    bench = registry.select(["linear_cross_entropy"])[0]
    inputs = bench.make_inputs((6, 5, 7), torch.float32, "cpu")
    assert bench.flops(inputs, True) == 3 * bench.flops(inputs, False) == 3 * 2 * 6 * 5 * 7
    floor = registry.three_gemm_floor(bench)(*inputs.args)
    grads = torch.autograd.grad(floor, inputs.grad_tensors)
    assert [g.shape for g in grads] == [t.shape for t in inputs.grad_tensors]
    assert set(bench.peers) == {"cuBLAS 3-GEMM floor", "torch chunked", "liger", "cut-cross-entropy"}
    out = tmp_path / "lce.json"
    assert main(["bench", "--cpu-fallback", "--loss", "linear_cross_entropy", "--out", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())["results"]
    assert {r["impl"] for r in results} == {"fusedloss", "torch"}
    assert all(r["status"] == "ok" and r["tflops"] > 0 for r in results)
