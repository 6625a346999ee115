"""Test set-up: run the Triton kernels on CUDA when a GPU is present, else through Triton's interpreter.

TRITON_INTERPRET must be set before Triton compiles a kernel (decorators read it when kernels are
defined), so it is set here, before any test imports ``fusedloss.kernels``.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# FUSEDLOSS_GPU_ARITHMETIC=up|down|spread: the whole run with the GPU's float32 exp, log, division and sqrt
# in the interpreter (fusedloss/bench/interpreter.py: gpu_arithmetic); unset, numpy's correctly rounded ones
GPU_ARITHMETIC = os.environ.get("FUSEDLOSS_GPU_ARITHMETIC", "")

if INTERPRETING:
    # bf16 checks judge the kernels, not the emulator's truncation; tl.fma rounds once, as the GPU's
    # (fusedloss/bench/interpreter.py)
    from fusedloss.bench.interpreter import interpret_like_the_gpu

    interpret_like_the_gpu()


def pytest_configure(config):
    from fusedloss.bench.interpreter import GPU_ARITHMETIC_MODES

    if GPU_ARITHMETIC and GPU_ARITHMETIC not in GPU_ARITHMETIC_MODES:
        raise pytest.UsageError(f"FUSEDLOSS_GPU_ARITHMETIC={GPU_ARITHMETIC!r}: expected one of "
                                f"{', '.join(GPU_ARITHMETIC_MODES)} (lower case), or unset")
    if GPU_ARITHMETIC and not INTERPRETING:
        raise pytest.UsageError("FUSEDLOSS_GPU_ARITHMETIC models the GPU in Triton's interpreter: it needs "
                                "TRITON_INTERPRET=1 (on a GPU the GPU's own arithmetic runs the tests)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _gpu_arithmetic_from_environment():
    if not (INTERPRETING and GPU_ARITHMETIC):
        yield
        return
    from fusedloss.bench.interpreter import gpu_arithmetic

    with gpu_arithmetic(GPU_ARITHMETIC):
        yield


@pytest.fixture
def gpu_arithmetic_mode(request):
    """A test parametrized with ``gpu_arithmetic_mode`` ("up", "down", "spread", indirect) runs with the GPU's
    float32 arithmetic in the interpreter, in that mode."""
    from fusedloss.bench.interpreter import gpu_arithmetic

    with gpu_arithmetic(request.param):
        yield request.param


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fusedloss_env(monkeypatch):
    """``fusedloss_env(NAME, value)``: set a FUSEDLOSS_* variable and make fusedloss read it again (it reads
    the environment once, at import); restored after the test."""
    from fusedloss import dispatch

    def setenv(name, value):
        monkeypatch.setenv(name, value)
        dispatch.reload_environment()

    yield setenv
    monkeypatch.undo()
    dispatch.reload_environment()


@pytest.fixture
def fast_fallback(monkeypatch):
    """``bench --cpu-fallback`` in a second: every benchmark entry at one small CPU shape (each dimension at
    most 97), 3 short rounds, and a fixed copy bandwidth (tests/test_bench.py, tests/test_cli.py)."""
    from fusedloss.bench import harness, registry

    for bench in registry.REGISTRY:
        monkeypatch.setattr(bench, "cpu_shapes", [tuple(max(1, min(s, 97)) for s in bench.cpu_shapes[0])])
    monkeypatch.setattr(harness, "copy_bandwidth_gbps", lambda device: 10.0)
    monkeypatch.setattr(harness, "FALLBACK_ROUNDS", 3)
    monkeypatch.setattr(harness, "FALLBACK_ROUND_MS", 2.0)
