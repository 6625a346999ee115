"""Test set-up: run the Triton kernels on CUDA when a GPU is present, else through Triton's interpreter.

TRITON_INTERPRET must be set before Triton compiles a kernel (decorators read it when kernels are
defined), so it is set here, before any test imports ``fusedloss.kernels``.
"""
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _round_float32_to_bfloat16(data):
    """float32 values (numpy) to bfloat16 bit patterns, rounded to nearest even as the GPU does
    (Triton 3.8's interpreter truncates); NaN stays a quiet NaN of the same sign."""
    bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return rounded.astype(np.uint16).reshape(np.shape(data))


def _interpreter_rounds_bfloat16_like_the_gpu():
    """Patch the interpreter's float32 -> bfloat16 conversion (casts and stores) to round to nearest
    even, so bf16 checks judge the kernels, not the emulator's truncation (up to one ulp worse)."""
    from triton import language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    cast_impl, fp_to_fp = builder.cast_impl, builder.create_fp_to_fp

    def float32_to_bfloat16(src, dst_type):
        return src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16

    def rounded_cast(self, src, dst_type):
        if float32_to_bfloat16(src, dst_type):
            return interpreter.TensorHandle(_round_float32_to_bfloat16(src.data), dst_type.scalar)
        return cast_impl(self, src, dst_type)

    def rounded_fp_to_fp(self, src, dst_type, rounding_mode):
        if float32_to_bfloat16(src, dst_type):
            return interpreter.TensorHandle(_round_float32_to_bfloat16(src.data), dst_type.scalar)
        return fp_to_fp(self, src, dst_type, rounding_mode)

    builder.cast_impl = rounded_cast
    builder.create_fp_trunc = rounded_cast
    builder.create_fp_to_fp = rounded_fp_to_fp


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _interpreter_rounds_bfloat16_like_the_gpu()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


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
