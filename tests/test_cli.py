"""The command line says what it measured and only that: no race without a GPU, options validated and
honoured in every mode, results that name their own commit, readable errors."""
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch

import fusedloss
import fusedloss.__main__ as cli
from fusedloss.bench import demo, harness, host, registry, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(fusedloss.__file__)))


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _exit_status(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return exit_info.value.code, capsys.readouterr().err


# ------------------------------------------------------------------ 1. no race without a GPU


@pytest.mark.parametrize("argv", [["bench", "--quick"], ["bench"], ["bench", "--device", "cpu", "--loss", "mse_loss"]])
def test_bench_without_a_gpu_refuses_and_points_to_what_runs(argv, no_gpu, monkeypatch, capsys):
    monkeypatch.setattr(harness, "run", lambda **kwargs: pytest.fail("timed torch against itself"))
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    for needle in ("fused kernels", "make demo", "bench --traffic", "bench --host", "--cpu-fallback",
                   "torch against itself"):
        assert needle in captured.err, needle


def test_cpu_fallback_reports_the_dispatchers_overhead_with_its_spread(tmp_path, fast_fallback, capsys):
    out = tmp_path / "fallback.json"
    assert cli.main(["bench", "--cpu-fallback", "--loss", "mse_loss", "--dtype", "float32", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["cpu_fallback"] and doc["fusedloss"] == fusedloss.__version__
    assert {(r["impl"], r["mode"]) for r in doc["results"]} == {
        (impl, mode) for impl in ("fusedloss", "torch") for mode in harness.MODES}
    assert all(len(r["rounds_ms"]) == 3 and r["best_ms"] == min(r["rounds_ms"]) for r in doc["results"])
    markdown = (tmp_path / "fallback.md").read_text()
    for shown in (text, markdown):
        assert "dispatcher overhead over torch: fusedloss / torch, median of the per-round ratios (range)" in shown
        assert "speedup" not in shown.lower() and "speed-up" not in shown.lower() and "(x)" not in shown
        assert "| mse_loss | float32 | 97 | forward+backward |" in shown


def _fallback_doc(ours_rounds, torch_rounds):
    return {"cpu_fallback": True, "results": [
        {"loss": "mse_loss", "dtype": "float32", "shape": [8], "mode": "forward+backward", "impl": impl,
         "rounds_ms": rounds, "best_ms": min(rounds), "median_ms": sorted(rounds)[len(rounds) // 2], "status": "ok"}
        for impl, rounds in (("fusedloss", ours_rounds), ("torch", torch_rounds))]}


def test_fallback_table_calls_a_difference_inside_the_range_unresolved():
    """The ratio shown is the median of the per-round ratios (1.9, 0.833, 1.1 -> 1.1), inside its range."""
    noisy = report.fallback_table(_fallback_doc([1.9, 1.0, 1.1], [1.0, 1.2, 1.0]))
    assert "| 1.000 | 1.000 | 1.100x (0.833-1.900) | not resolved (1.0 inside the range) |" in noisy
    steady = report.fallback_table(_fallback_doc([1.2, 1.3, 1.25], [1.0, 1.1, 1.05]))
    assert "| 1.200 | 1.000 | 1.190x (1.182-1.200) | overhead |" in steady


def _figures(text):
    """(ratio, low, high) as ``host.describe_overhead`` prints them."""
    import re

    match = re.search(r"([\d.]+)x \(median of the per-round ratios; range ([\d.]+)-([\d.]+)x over \d+ "
                      r"interleaved rounds\)", text)
    assert match, text
    return tuple(float(g) for g in match.groups())


@pytest.mark.parametrize("ours, theirs", [
    # the reported case: the best-of ratio (1.260x) at the top of the range 0.437-1.265x
    ([1.26, 1.3, 1.5, 1.4, 1.35], [1.0, 2.975, 1.186, 1.4, 1.5]),
    ([1.9, 1.0, 1.1], [1.0, 1.2, 1.0]),
    ([1.2, 1.3, 1.25], [1.0, 1.1, 1.05]),
    ([0.9, 0.95], [1.0, 1.0]),
])
def test_fallback_summary_states_its_statistic_and_only_what_its_range_allows(ours, theirs):
    summary = host.overhead(ours, theirs)
    text = host.describe_overhead(summary)
    ratio, low, high = _figures(text)
    assert low <= ratio <= high  # the figure printed is inside the range printed
    if low <= 1.0 <= high:
        assert "cannot tell the dispatcher overhead from this machine's noise" in text
        assert "measurable" not in text and "no measurable" not in text
    elif low > 1.0:
        assert "above 1.0 in every round, a measurable dispatcher overhead" in text
    else:
        assert "below 1.0 in every round" in text and "not a speed-up" in text
    per_round = sorted(o / t for o, t in zip(ours, theirs))
    assert summary["ratio"] == pytest.approx(statistics.median(per_round))  # the headline: the median
    assert summary["best_ratio"] == pytest.approx(min(ours) / min(theirs))  # kept for reference only


def test_bench_help_reads_true_for_every_mode(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    for line in ("bench --cpu-fallback [--loss] [--dtype] [--shape] [--device cpu] [--out] [--no-progress]",
                 "bench --traffic [--loss] [--dtype] [--shape] [--out]", "bench --host [--loss] [--out]",
                 "Without a CUDA device it stops (exit status 2)", "never a speed-up"):
        assert line in text, line


# ------------------------------------------------------------------ 2. the demo's eager fallback overhead


def test_time_rounds_interleaves_the_calls():
    log = []
    times = host.time_rounds({"a": lambda: log.append("a"), "b": lambda: log.append("b")}, rounds=3, calls=2,
                             warmup=1)
    assert log == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert [len(t) for t in times.values()] == [3, 3]


def test_demo_fallback_overhead_is_measured_like_bench_host(monkeypatch):
    seen = {}

    def fake_rounds(steps, rounds, calls, warmup=20, contexts=None):
        seen.update(threads=torch.get_num_threads(), names=list(steps), backend=fusedloss.dispatch.requested_backend())
        for step in steps.values():
            step()  # the real calls run
        return {"fusedloss": [0.0064, 0.0033, 0.0040], "torch": [0.0034, 0.0035, 0.0060]}

    monkeypatch.setattr(host, "time_rounds", fake_rounds)
    overhead = demo._fallback_overhead()
    assert seen == {"threads": 1, "names": ["fusedloss", "torch"], "backend": "auto"}
    assert overhead["torch_ms"] == pytest.approx(3.5)  # torch's median round
    text = demo.fallback_overhead_text(overhead)
    assert "(torch: 3.500 ms per call, the median over the rounds)" in text
    assert "0.943x (median of the per-round ratios; range 0.667-1.882x over 3 interleaved rounds)" in text
    assert "cannot tell the dispatcher overhead from this machine's noise (no conclusion either way)" in text

    monkeypatch.setattr(host, "time_rounds", lambda *a, **k: {"fusedloss": [1.2, 1.3], "torch": [1.0, 1.1]})
    assert "above 1.0 in every round, a measurable dispatcher overhead" in demo.fallback_overhead_text(
        demo._fallback_overhead())


def test_demo_fallback_overhead_real_rounds():
    overhead = demo._fallback_overhead(["mse_loss"], rounds=3, round_ms=1.0)
    assert (overhead["loss"], overhead["dtype"], overhead["shape"]) == ("mse_loss", "float32", (2**20,))
    summary = overhead["summary"]
    assert summary["rounds"] == 3 and summary["low"] <= summary["ratio"] <= summary["high"]
    assert summary["low"] <= summary["best_ratio"] <= summary["high"] and overhead["torch_ms"] > 0


# ------------------------------------------------------------------ 3. options validated and honoured


@pytest.mark.parametrize("argv, valid", [
    (["bench", "--dtype", "float64"], ["'bfloat16'", "'float32'"]),
    (["bench", "--impl", "fused"], ["'fusedloss'", "'torch'", "'fusedloss (grad in forward)'"]),
    (["bench", "--loss", "mse"], ["'mse_loss'", "'cross_entropy[smoothing+weight]'"]),
    (["demo", "--loss", "mse"], ["'mse_loss'"]),
])
def test_invalid_option_values_are_errors_listing_the_valid_ones(argv, valid, capsys):
    status, err = _exit_status(argv, capsys)
    assert status == 2
    option = argv[1]
    assert f"argument {option}: invalid choice: '{argv[2]}'" in err
    assert all(v in err for v in valid)


def _fake_host_case(measured):
    def measure_case(name, make, kwargs, rounds, calls):
        measured.append((name, kwargs))
        return {"fusedloss (triton, launches stubbed)": 2.0, "torch": 1.0, "fusedloss (eager fallback)": 1.0}
    return measure_case


def test_host_honours_loss_and_out(monkeypatch, tmp_path, fusedloss_env, capsys):
    fusedloss_env("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "0"))  # host.measure may set it
    measured = []
    monkeypatch.setattr(host, "_measure_case", _fake_host_case(measured))
    out = tmp_path / "host.json"
    assert cli.main(["bench", "--host", "--loss", "mse_loss", "--out", str(out)]) == 0
    assert measured == [("mse_loss", {})]
    assert list(json.loads(out.read_text())) == ["mse_loss"]
    assert "| mse_loss |" in capsys.readouterr().out
    measured.clear()
    assert cli.main(["bench", "--host", "--loss", "cross_entropy"]) == 0  # a function name: its every case
    assert [name for name, _ in measured] == ["cross_entropy"] * 3


def test_host_without_a_case_for_the_loss_lists_its_cases(monkeypatch, capsys):
    monkeypatch.setattr(host, "_measure_case", lambda *a: pytest.fail("measured"))
    status, err = _exit_status(["bench", "--host", "--loss", "kl_div"], capsys)
    assert status == 2
    assert "--host has no case for kl_div; its cases: " in err
    assert "mse_loss" in err and "cross_entropy (smoothing)" in err


@pytest.mark.parametrize("argv, named", [
    (["--host", "--dtype", "float32"], "--dtype: not an option of --host"),
    (["--host", "--impl", "torch"], "--impl: not an option of --host"),
    (["--host", "--quick", "--shape", "8"], "--quick --shape: not an option of --host"),
    (["--traffic", "--quick"], "--quick: not an option of --traffic"),
    (["--traffic", "--impl", "torch"], "--impl: not an option of --traffic"),
    (["--traffic", "--device", "cpu"], "--device: not an option of --traffic"),
    (["--cpu-fallback", "--impl", "torch"], "--impl: not an option of --cpu-fallback"),
    (["--cpu-fallback", "--device", "cuda"], "--device cuda: --cpu-fallback times the eager fallback on the CPU"),
    (["--host", "--traffic"], "--traffic and --host are separate modes"),
])
def test_options_a_mode_cannot_honour_are_errors(argv, named, capsys):
    status, err = _exit_status(["bench", *argv], capsys)
    assert status == 2 and named in err


def _cli(*argv, cwd=None):
    env = dict(os.environ, TRITON_INTERPRET="1")  # the traffic meter needs the interpreter from the start
    return subprocess.run([sys.executable, "-m", "fusedloss", *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_traffic_and_info_as_typed_in_a_shell():
    """``bench --traffic`` without TRITON_INTERPRET in the environment (the CLI turns the interpreter on itself:
    nothing it imports first may import Triton, TRL included), and ``info`` and ``--help`` on an install
    without TRL (a test extra: the objectives' TRL references are built on first use)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "fusedloss", "bench", "--traffic", "--loss", "mse_loss", "--shape",
                          "101"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "| mse_loss | fusedloss |" in run.stdout, run.stderr[-2000:]
    without_trl = ("import runpy, sys\n"
                   "class NoTRL:\n"
                   "    def find_spec(self, name, path=None, target=None):\n"
                   "        if name == 'trl' or name.startswith('trl.'):\n"
                   "            raise ModuleNotFoundError(name)\n"
                   "sys.meta_path.insert(0, NoTRL())\n"
                   "sys.argv = ['fusedloss'] + sys.argv[1:]\n"
                   "runpy.run_module('fusedloss', run_name='__main__')\n")
    for argv in (["info"], ["--help"], ["bench", "--help"]):
        run = subprocess.run([sys.executable, "-c", without_trl, *argv], env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0 and "Traceback" not in run.stderr, (argv, run.stderr[-2000:])


def test_traffic_honours_dtype(tmp_path):
    out = tmp_path / "traffic.json"
    run = _cli("bench", "--traffic", "--loss", "mse_loss", "--dtype", "float32", "--shape", "101", "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = doc["results"]
    assert [(r["dtype"], r["minimal_bytes"]) for r in rows] == [("float32", 3 * 101 * 4)]  # input, target, grad
    assert "| mse_loss | fusedloss | float32 | 101 |" in run.stdout
    # the provenance a timed result has, in the file and above the table
    assert set(harness.PROVENANCE_KEYS) <= set(doc) and doc["kind"] == "traffic"
    assert doc["fusedloss"] == fusedloss.__version__ and doc["torch"] == torch.__version__ and doc["date"]
    assert run.stdout.startswith(f"Device: **{doc['device']}** · fusedloss {fusedloss.__version__} · commit "
                                 f"{doc['git_commit']} · torch {doc['torch']} · triton {doc['triton']}")


def test_a_selection_that_runs_nothing_is_an_error(tmp_path, fast_fallback, capsys):
    assert cli.main(["bench", "--cpu-fallback", "--loss", "nll_loss", "--dtype", "float32", "--out",
                 str(tmp_path / "r.json")]) == 2
    assert "nothing was measured" in capsys.readouterr().err and not (tmp_path / "r.json").exists()
    run = _cli("bench", "--traffic", "--loss", "nll_loss", "--dtype", "float32")
    assert run.returncode == 2 and "nll_loss: skipped: benchmarked in bfloat16 only" in run.stderr


# ------------------------------------------------------------------ 4. why there is no plot


def test_no_plot_says_nothing_to_plot_when_matplotlib_is_there(tmp_path, monkeypatch, fast_fallback, capsys):
    import matplotlib  # noqa: F401  (installed: the bench extra)

    real_run = harness.run

    def failing_run(**kwargs):
        doc = real_run(**kwargs)
        for r in doc["results"]:
            r.update(status="error: RuntimeError: no", median_ms=None, best_ms=None, rounds_ms=None)
        return doc

    monkeypatch.setattr(harness, "run", failing_run)
    assert cli.main(["bench", "--cpu-fallback", "--loss", "mse_loss", "--dtype", "float32", "--out",
                 str(tmp_path / "r.json"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "no plot: nothing to plot" in text and "matplotlib is not installed" not in text
    assert report.why_no_plot(demo.plot_panels([], [], [])) == "nothing to plot"


# ------------------------------------------------------------------ 5. compare


def _speed_doc():
    return {"device": "GPU A", "torch": "2.13", "triton": "3.8", "results": [
        {"loss": "mse_loss", "dtype": "float32", "shape": [8], "mode": "forward+backward", "impl": "fusedloss",
         "median_ms": 1.0, "status": "ok"}]}


def _traffic_rows(ratio):
    return [{"loss": "mse_loss", "impl": "fusedloss", "shape": [101], "dtype": "bfloat16", "minimal_bytes": 606,
             "fusedloss_ratio": ratio, "fusedloss_scaled_grad_ratio": 1.67, "torch_ratio": 2.5}]


@pytest.mark.parametrize("content, message", [
    (None, "cannot read {old}: No such file or directory"),
    ("not json", "{old} is not a JSON results file"),
    (json.dumps({"a": 1}), "{old} is not a fusedloss results file"),
    (json.dumps(_traffic_rows(1.0)), "{old} is a --traffic result and {new} is a speed-results document"),
    (json.dumps({"mse_loss": {"fusedloss (triton, launches stubbed)": 2.0, "torch": 1.0,
                              "fusedloss (eager fallback)": 1.0}}), "{old} is a --host result"),
])
def test_compare_says_why_a_file_cannot_be_compared(tmp_path, capsys, content, message):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    if content is not None:
        old.write_text(content)
    new.write_text(json.dumps(_speed_doc()))
    status, err = _exit_status(["bench", "compare", str(old), str(new)], capsys)
    assert status == 2 and message.format(old=old, new=new) in err and "Traceback" not in err


def test_compare_two_traffic_results(tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_traffic_rows(1.5)))
    new.write_text(json.dumps(_traffic_rows(1.0)))
    assert cli.main(["bench", "compare", str(old), str(new)]) == 0
    assert "| mse_loss | fusedloss | bfloat16 | 101 | 1.50x | 1.00x | 1.67x | 1.67x | 2.50x | 2.50x |" in \
        capsys.readouterr().out


def test_compare_two_traffic_documents_shows_their_provenance(tmp_path, capsys):
    def doc(commit, ratio):
        return {"device": "CPU (x)", "device_type": "cpu", "fusedloss": "0.1.0", "git_commit": commit, "torch": "2.13",
                "triton": "3.8", "python": "3.11", "date": "today", "kind": "traffic", "notes": {},
                "results": _traffic_rows(ratio)}
    old, new, legacy = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "legacy.json"
    old.write_text(json.dumps(doc("aaa", 1.5)))
    new.write_text(json.dumps(doc("bbb", 1.0)))
    legacy.write_text(json.dumps(_traffic_rows(2.0)))
    assert cli.main(["bench", "compare", str(old), str(new)]) == 0
    text = capsys.readouterr().out
    assert "old: fusedloss 0.1.0 · commit aaa · torch 2.13 · triton 3.8 · today" in text
    assert "new: fusedloss 0.1.0 · commit bbb" in text and "| 1.50x | 1.00x |" in text
    assert cli.main(["bench", "compare", str(legacy), str(new)]) == 0
    assert "old: no provenance recorded" in capsys.readouterr().out
    broken = doc("ccc", 1.0)
    broken["results"][0]["shape"] = None
    new.write_text(json.dumps(broken))
    status, err = _exit_status(["bench", "compare", str(old), str(new)], capsys)
    assert status == 2 and "results[0].shape is null, not a list of dimensions" in err


# ------------------------------------------------------------------ 6. the package's own commit


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True).stdout.strip()


def _unrelated_repository(path):
    path.mkdir()
    _git("init", "-q", cwd=path)
    (path / "file").write_text("x")
    _git("add", "file", cwd=path)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "unrelated", cwd=path)
    commit = _git("rev-parse", "--short", "HEAD", cwd=path)
    assert commit
    return commit


def test_results_record_the_packages_commit_not_the_current_directorys(tmp_path, monkeypatch):
    monkeypatch.delenv("FUSEDLOSS_GIT_COMMIT", raising=False)
    ours = _git("rev-parse", "--short", "HEAD", cwd=os.path.dirname(fusedloss.__file__)) or None
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    assert harness._git_commit() == ours
    other = _unrelated_repository(tmp_path / "other")
    monkeypatch.chdir(tmp_path / "other")
    assert harness._git_commit() == ours != other


def test_an_installed_package_inside_an_unrelated_repository_has_no_commit(tmp_path, monkeypatch):
    monkeypatch.delenv("FUSEDLOSS_GIT_COMMIT", raising=False)
    _unrelated_repository(tmp_path / "project")
    installed = tmp_path / "project" / "venv" / "site-packages" / "fusedloss"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    monkeypatch.setattr(fusedloss, "__file__", str(installed / "__init__.py"))
    assert harness._git_commit() is None and harness.source_tree() is None


# ------------------------------------------------------------------ 7. the demo's files, wherever it runs


@pytest.fixture
def quick_demo(monkeypatch, no_gpu, fusedloss_env):
    """The CPU demo with its measurements replaced by fixed figures (the sections are tested elsewhere)."""
    from fusedloss.bench import interpreter, traffic

    fusedloss_env("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "0"))  # restored after the test
    monkeypatch.setattr(interpreter, "interpret_like_the_gpu", lambda: None)
    monkeypatch.setattr(traffic, "run_traffic", lambda losses, **kwargs: [])
    monkeypatch.setattr(demo, "_parity", lambda losses, **kwargs: [])
    monkeypatch.setattr(demo, "_fallback_overhead", lambda losses: {
        "loss": "mse_loss", "dtype": "float32", "shape": (8,), "torch_ms": 1.0,
        "summary": host.overhead([1.0, 1.1], [1.05, 1.0])})


def test_demo_finds_the_committed_results_from_the_package_not_the_cwd(tmp_path, monkeypatch, quick_demo, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--loss", "cross_entropy", "--out", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    assert f"From `{os.path.join(REPO, 'bench', 'results', 'nvidia-h100-80gb-hbm3-cross-entropy.json')}`" in text
    assert "NVIDIA H100 80GB HBM3" in text and f"wrote {tmp_path / 'd'}.md" in text
    assert (tmp_path / "d.md").exists()


def test_demo_outside_a_source_tree_writes_to_the_cwd_and_says_so(tmp_path, monkeypatch, quick_demo, capsys):
    monkeypatch.setattr(harness, "source_tree", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--loss", "mse_loss"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {os.path.join(os.curdir, 'cpu-demo.md')}" in text
    assert "not imported from its source tree" in text and "writing to the current directory" in text
    assert (tmp_path / "cpu-demo.md").exists()


def test_default_results_folder_is_the_source_trees(tmp_path, monkeypatch, fast_fallback, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli._results_folder() == (os.path.join(REPO, "bench", "results"), True)
    saved = []
    monkeypatch.setattr(report, "save", lambda doc, path: saved.append(path) or [path])
    assert cli.main(["bench", "--cpu-fallback", "--loss", "mse_loss", "--dtype", "float32", "--no-progress"]) == 0
    assert os.path.dirname(saved[0]) == os.path.join(REPO, "bench", "results")
    assert f"wrote {saved[0]}" in capsys.readouterr().out


# ------------------------------------------------------------------ 8. info


def test_info_table_is_aligned():
    rows = [("cross_entropy", "triton", "CUDA tensors and every option supported"),
            ("binary_cross_entropy_with_logits[pos_weight]", "torch", "not supported by the kernels: x"),
            ("mse_loss", "cannot run", "tensors are on the CPU")]
    lines = cli.info_table(rows)
    starts = {line.index(reason) for line, (_, _, reason) in zip(lines[1:], rows)}
    backends = {line.index(backend, len(label)) for line, (label, backend, _) in zip(lines[1:], rows)}
    assert len(starts) == 1 and len(backends) == 1
    assert lines[0].index("reason") in starts


def test_info_with_triton_forced_and_no_interpreter_says_the_reason_once(fusedloss_env, no_gpu, capsys):
    fusedloss_env("FUSEDLOSS_BACKEND", "triton")
    fusedloss_env("TRITON_INTERPRET", "0")
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert text.count("TRITON_INTERPRET=1 is not set") == 1 and "was requested for" not in text
    labels = {bench.label for bench in registry.REGISTRY}
    assert f"no loss can run on the forced triton backend here ({len(labels)} losses), for one reason:" in text
    assert all(bench.label in text for bench in registry.REGISTRY)


# ------------------------------------------------------------------ 9. a user's test: bad input is a usage error


@pytest.fixture
def nothing_measured(monkeypatch, no_gpu):
    """Every measurement fails the test: the errors below must come before anything is measured."""
    from fusedloss.bench import traffic

    for module, name in ((traffic, "run_traffic"), (harness, "run"), (host, "measure"), (demo, "run_cpu")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("measured before the error"))


@pytest.mark.parametrize("argv", [
    ["--traffic", "--loss", "cross_entropy", "--dtype", "float32", "--shape", "0x5"],
    ["--traffic", "--loss", "mse_loss", "--shape", "0"],
    ["--cpu-fallback", "--loss", "cross_entropy", "--dtype", "float32", "--shape", "4x0"],
    ["--cpu-fallback", "--loss", "mse_loss", "--shape", "2**-1"],
])
def test_a_shape_with_a_zero_dimension_is_a_usage_error(argv, nothing_measured, capsys):
    status, err = _exit_status(["bench", *argv], capsys)
    assert status == 2 and "argument --shape:" in err and "every dimension must be at least 1" in err
    assert cli._parse_shape("8x2**3") == (8, 8) and cli._parse_shape("1") == (1,)


def _bad_outs(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "file").write_text("x")
    return {"an existing folder": (str(folder), "is a directory"),
            "a folder path": (str(tmp_path / "new") + os.sep, "is a directory"),
            "under a file": (str(tmp_path / "file" / "r.json"), f"{tmp_path / 'file'} is not a directory"),
            "empty": ("", "empty")}


@pytest.mark.parametrize("mode", [[], ["--cpu-fallback"], ["--traffic"], ["--host"]])
@pytest.mark.parametrize("which", ["an existing folder", "a folder path", "under a file", "empty"])
def test_out_is_checked_before_anything_is_measured(mode, which, tmp_path, nothing_measured, capsys):
    out, message = _bad_outs(tmp_path)[which]
    status, err = _exit_status(["bench", *mode, "--out", out], capsys)
    assert status == 2 and "argument --out:" in err and message in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"]  # nothing created


def test_out_of_a_timed_mode_is_checked_with_the_files_beside_it(tmp_path, nothing_measured, capsys):
    (tmp_path / "r.md").mkdir()
    status, err = _exit_status(["bench", "--cpu-fallback", "--out", str(tmp_path / "r.json")], capsys)
    assert status == 2 and f"argument --out: {tmp_path / 'r.md'} is a directory" in err
    status, err = _exit_status(["bench", "--cpu-fallback", "--out", str(tmp_path / "r.md")], capsys)
    assert status == 2 and "give a .json path" in err  # the Markdown would overwrite the JSON


@pytest.mark.parametrize("which", ["an existing folder", "a folder path", "under a file", "empty"])
def test_demo_out_is_checked_before_anything_is_measured(which, tmp_path, nothing_measured, capsys):
    out, message = _bad_outs(tmp_path)[which]
    if which == "an existing folder":  # a stem beside which a folder has the name of a file to write
        out = str(tmp_path / "folder" / "d")
        (tmp_path / "folder" / "d.md").mkdir()
        message = "d.md is a directory"
    elif which == "a folder path":
        message = "names a folder"
    status, err = _exit_status(["demo", "--out", out], capsys)
    assert status == 2 and "argument --out:" in err and message in err


def test_a_write_that_fails_after_measuring_is_an_error_not_a_traceback(monkeypatch, tmp_path, capsys):
    doc = dict(_fallback_doc([1.2, 1.3], [1.0, 1.1]), device="CPU (x)", torch="2", triton="3", date="today")
    monkeypatch.setattr(harness, "run", lambda **kwargs: doc)

    def refuse(doc, path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(report, "save", refuse)
    out = str(tmp_path / "r.json")
    assert cli.main(["bench", "--cpu-fallback", "--loss", "mse_loss", "--out", out]) == 2
    captured = capsys.readouterr()
    assert "| mse_loss | float32 | 8 |" in captured.out  # the measurement is shown all the same
    assert f"cannot write {out}: Permission denied" in captured.err


@pytest.mark.parametrize("row, message", [
    ({"median_ms": "fast"}, 'results[1].median_ms is "fast", not a number of milliseconds'),
    ({"shape": None}, "results[1].shape is null, not a list of dimensions"),
    ({"loss": None}, "results[1].loss is null, not a string"),
    (5, "results[1] is 5, not a row (a JSON object)"),
])
def test_compare_names_a_malformed_row(row, message, tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_speed_doc()))
    doc = _speed_doc()
    doc["results"].append(row if not isinstance(row, dict) else dict(doc["results"][0], **row))
    new.write_text(json.dumps(doc))
    status, err = _exit_status(["bench", "compare", str(old), str(new)], capsys)
    assert status == 2 and f"{new} is a speed-results document (bench) with malformed rows: {message}" in err
    assert "Traceback" not in err


def test_compare_names_a_malformed_traffic_row(tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_traffic_rows(1.5)))
    new.write_text(json.dumps([dict(_traffic_rows(1.0)[0], shape=None, torch_ratio="x")]))
    status, err = _exit_status(["bench", "compare", str(old), str(new)], capsys)
    assert status == 2 and "[0].shape is null, not a list of dimensions" in err
    assert '[0].torch_ratio is "x", not a number of times the minimal' in err


@pytest.mark.parametrize("fields, cell", [({"median_ms": None}, "-"), ({"median_ms": 0}, "-"),
                                          ({"median_ms": None, "status": "out of memory"}, "out of memory")])
def test_compare_shows_no_time_as_no_time(fields, cell, tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_speed_doc()))
    doc = _speed_doc()
    doc["results"][0].update(fields)
    if doc["results"][0]["median_ms"] is None and "status" not in fields:
        del doc["results"][0]["median_ms"]  # absent, as well as null
    new.write_text(json.dumps(doc))
    assert cli.main(["bench", "compare", str(old), str(new)]) == 0
    assert f"| mse_loss | float32 | 8 | forward+backward | fusedloss | 1.000 | {cell} | - |" in capsys.readouterr().out


def _committed(folder):
    """Two committed GPU result files: cross_entropy and mse_loss rows, and cross_entropy rows only."""
    folder.mkdir()

    def rows(loss, shape):
        return [{"loss": loss, "dtype": "float32", "shape": shape, "mode": "forward+backward", "impl": impl,
                 "median_ms": ms, "roofline_fraction": 0.5, "peak_extra_mb": 1.0, "status": "ok"}
                for impl, ms in (("fusedloss", 1.0), ("torch", 2.0))]

    for name, date, results in (("a", "2026-01-02", rows("cross_entropy", [4, 8]) + rows("mse_loss", [16])),
                                ("b", "2026-01-01", rows("cross_entropy", [8, 8]))):
        (folder / f"{name}.json").write_text(json.dumps({
            "device": f"GPU {name}", "device_type": "cuda", "torch": "2", "triton": "3", "date": date,
            "results": results}))


def test_demo_with_loss_shows_the_committed_rows_of_those_losses(tmp_path, monkeypatch, quick_demo, capsys):
    _committed(tmp_path / "results")
    monkeypatch.setattr(cli, "_results_folder", lambda: (str(tmp_path / "results"), True))
    asked = []
    monkeypatch.setattr(demo, "_fallback_overhead", lambda losses: asked.append(losses) or {
        "loss": "mse_loss", "why": "test", "dtype": "float32", "shape": (8,)})
    assert cli.main(["demo", "--loss", "mse_loss", "--out", str(tmp_path / "d")]) == 0
    committed = capsys.readouterr().out.split("## Committed GPU results")[1].split("## Eager")[0]
    assert "| mse_loss | float32 | 16 |" in committed and "GPU a" in committed
    assert "cross_entropy" not in committed and "GPU b" not in committed
    assert asked == [["mse_loss"]]

    assert cli.main(["demo", "--loss", "nll_loss", "--out", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    assert "None of the selected losses (nll_loss) was measured on a GPU" in text and "GPU a" not in text
    assert "The eager fallback's overhead on mse_loss float32 8 forward+backward was not measured: test." in text

    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == 0  # no --loss: every committed table
    text = capsys.readouterr().out
    assert "GPU a" in text and "GPU b" in text and "| cross_entropy | float32 | 8x8 |" in text


def test_demo_fallback_overhead_is_measured_on_the_first_selected_loss(monkeypatch):
    seen = []

    def fake_rounds(steps, rounds, calls, warmup=20, contexts=None):
        seen.append(rounds)
        return {"fusedloss": [0.0012, 0.0013], "torch": [0.001, 0.0011]}

    monkeypatch.setattr(host, "time_rounds", fake_rounds)
    overhead = demo._fallback_overhead(["mse_loss", "cross_entropy"], rounds=2)
    assert (overhead["loss"], overhead["dtype"], overhead["shape"]) == ("mse_loss", "float32", (2**20,))
    assert overhead["torch_ms"] == pytest.approx(1.05) and seen == [2]
    assert demo.fallback_overhead_text(overhead).startswith("mse_loss float32 1048576 forward+backward on this CPU")

    monkeypatch.setattr(host, "time_rounds", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no kernel")))
    text = demo.fallback_overhead_text(demo._fallback_overhead(["nll_loss"]))
    assert text == ("The eager fallback's overhead on nll_loss bfloat16 512 x 32000 forward+backward was not "
                    "measured: error: RuntimeError: no kernel.")

    for bench in registry.select(["mse_loss"]):
        monkeypatch.setattr(bench, "cpu_shapes", [])
    text = demo.fallback_overhead_text(demo._fallback_overhead(["mse_loss"]))
    assert text == "The eager fallback's overhead was not measured: no selected loss (mse_loss) has a CPU shape " \
                   "to measure it at."


@pytest.mark.parametrize("argv", [["info"], ["bench", "compare", "{f}", "{f}"]])
def test_a_closed_pipe_ends_the_output_quietly(argv, tmp_path):
    results = tmp_path / "r.json"
    results.write_text(json.dumps(_speed_doc()))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written (`| head -0`)
    try:
        run = subprocess.run([sys.executable, "-m", "fusedloss", *(a.format(f=results) for a in argv)],
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert run.returncode == 1 and "Traceback" not in run.stderr and "BrokenPipeError" not in run.stderr, run.stderr


class _ClosedPipe:
    """A stdout whose reader has gone: every write raises BrokenPipeError."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass

    def fileno(self):
        raise OSError("no file descriptor")


def test_a_closed_pipe_does_not_lose_the_results_file(monkeypatch, tmp_path):
    from fusedloss.bench import traffic

    rows = [dict(_traffic_rows(1.0)[0], fusedloss_by_op={}, torch_by_op={})]
    monkeypatch.setattr(traffic, "run_traffic", lambda *a, **k: rows)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    out = tmp_path / "traffic.json"
    assert cli.main(["bench", "--traffic", "--loss", "mse_loss", "--out", str(out)]) == 1
    assert json.loads(out.read_text())["results"] == rows  # written before the table was printed
