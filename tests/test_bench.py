"""The benchmark suite: traffic figures (deterministic, no GPU needed), the CLI, reports."""
import json
import os
import subprocess
import sys

import pytest

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


def test_cli_bench_on_cpu_writes_results(tmp_path, tiny_registry, capsys):
    out = tmp_path / "results.json"
    assert main(["bench", "--loss", "cross_entropy", "nll_loss", "--dtype", "float32", "bfloat16", "--device", "cpu", "--out", str(out),
                 "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    assert doc["device_type"] == "cpu" and doc["torch"] and doc["copy_bandwidth_gbps"] == 10.0
    impls = {(r["loss"], r["impl"], r["mode"]) for r in doc["results"]}
    assert ("cross_entropy", "fusedloss", "forward+backward") in impls
    assert ("nll_loss", "torch", "forward") in impls
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in doc["results"])
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
