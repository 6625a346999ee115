"""linear_cross_entropy (and nn.LinearCrossEntropyLoss): parity with torch's reference path, the logits
never whole, determinism, errors, the fallback on torches without it.

The chunk budget is shrunk (fixture ``small_chunks``) so that every call here runs several chunks.
Shapes (N tokens, H features, C classes) and why:
  (37, 19, 300)     H and C not multiples of any tile, 3 chunks in float32 (2 in 16-bit), the last one short
  (3, 33, 4099)     C just above a 4096-wide column block: the online log-sum-exp over two blocks per chunk
  (1, 8, 13)        one token
  1-D input (8,)    an unbatched input, 0-d target
  (0, 8, 13)        no tokens
  (6, 5, 7 x 3)     a K-dimensional loss: linear_weight (C, d1, H), target (N, d1)
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import fusedloss
import fusedloss.functional as FL
import fusedloss.nn as FN
from fusedloss.ops import _chunks
from helpers import (DEVICE, DTYPES, AllocationRecorder as _AllocationRecorder, assert_matches,
                     assert_matches_torch, assert_twice_rounded_matches_torch, backend_context, class_targets,
                     probability_targets)

BACKENDS = ["triton", "torch"]
REDUCTIONS = ["mean", "sum", "none"]
TORCH_HAS_IT = hasattr(F, "linear_cross_entropy")  # torch >= 2.13
needs_torchs = pytest.mark.skipif(not TORCH_HAS_IT, reason="compares with torch 2.13's own linear_cross_entropy API")


def torch_reference(input, linear_weight, target, *, linear_bias=None, ignore_index=None, **kwargs):
    """torch's reference path: F.linear_cross_entropy with options=None on torch >= 2.13; the same
    F.linear then F.cross_entropy on older torches (the GPU image's 2.11)."""
    if TORCH_HAS_IT:
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, ignore_index=ignore_index,
                                      **kwargs)
    from fusedloss.ops._eager import linear_logits

    return F.cross_entropy(linear_logits(input, linear_weight, linear_bias), target,
                           ignore_index=-100 if ignore_index is None else ignore_index, **kwargs)
SHAPES = [(37, 19, 300), (3, 33, 4099), (1, 8, 13), (None, 8, 13)]  # None: a 1-D input


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """16 KiB of logits per chunk: 13 rows of 300 float32 classes, one row of 4099."""
    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 16 << 10)


def make_inputs(shape, dtype, bias=False, out_features=(), ignore_fraction=0.2, ignore_index=-100, prob=False):
    """input, linear_weight, target, linear_bias: values of the size a trained head produces (logits ~ 3)."""
    n, h, c = shape
    x = torch.randn((h,) if n is None else (n, h), device=DEVICE)
    w = torch.randn(c, *out_features, h, device=DEVICE) * (3 / h**0.5)
    b = torch.randn(c, *out_features, device=DEVICE) if bias else None
    batch = () if n is None else (n, *out_features)
    if prob:
        target = probability_targets((*batch[:1], c, *out_features), dtype)
    else:
        target = class_targets(batch, c, ignore_fraction, ignore_index)
    cast = [t.to(dtype).requires_grad_() if t is not None else None for t in (x, w, b)]
    return cast[0], cast[1], target, cast[2]


def loss_and_grads(fn, x, w, target, b, upstream, backend=None, **kwargs):
    with backend_context(backend):
        loss = fn(x, w, target, linear_bias=b, **kwargs)
    diff = [t for t in (x, w, b) if t is not None and t.requires_grad]
    grads = torch.autograd.grad(loss, diff, upstream.to(loss.dtype).reshape(loss.shape)) if diff else ()
    return loss, grads


def eager_extras(x, w, target, **kwargs):
    """fusedloss's eager path: the reference for the extras (z_loss, softcap)."""
    with fusedloss.backend("torch"):
        return FL.linear_cross_entropy(x, w, target, **kwargs)


def check_parity(x, w, target, b, backend, reference=torch_reference, grad_scale=0.37, **kwargs):
    """fusedloss vs the reference at the same dtype vs the reference in float64: loss and every gradient."""
    dtype = x.dtype

    def at64(t):
        return t.detach().double().requires_grad_(t.requires_grad) if t is not None else None

    kwargs64 = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
    target64 = target.double() if target.is_floating_point() else target
    with torch.no_grad():
        probe = reference(at64(x), at64(w), target64, linear_bias=at64(b), **kwargs64)
    upstream = (torch.rand(probe.shape, device=DEVICE, dtype=torch.float64) + 0.5) * grad_scale
    ref = loss_and_grads(reference, at64(x), at64(w), target64, at64(b), upstream, **kwargs64)
    same = loss_and_grads(reference, x, w, target, b, upstream, **kwargs)
    ours = loss_and_grads(FL.linear_cross_entropy, x, w, target, b, upstream, backend, **kwargs)
    assert ours[0].dtype == same[0].dtype and ours[0].shape == same[0].shape
    names = ["loss"] + [name for name, t in (("input grad", x), ("weight grad", w), ("bias grad", b))
                        if t is not None and t.requires_grad]
    twice = kwargs.get("reduction", "mean") != "none"  # grads written for grad_output 1, then scaled
    for got, theirs, exact, name in zip([ours[0], *ours[1]], [same[0], *same[1]], [ref[0], *ref[1]], names):
        assert got.dtype == theirs.dtype and got.shape == theirs.shape, name
        if backend == "torch" and reference is torch_reference:
            assert_matches(got, theirs.double(), dtype, name)  # torch's own function runs
        elif twice and name != "loss":
            assert_twice_rounded_matches_torch(got, theirs, exact, dtype, name)
        else:
            assert_matches_torch(got, theirs, exact, dtype, name)


# ------------------------------------------------------------------ parity with torch's reference path


# (37, 19, 300) in every dtype; the small shapes in float64 and bfloat16; the two-block one in 32 and 16 bits
SHAPE_DTYPES = [((37, 19, 300), dtype) for dtype in (torch.float64, *DTYPES)] + \
    [(shape, dtype) for shape in SHAPES[2:] for dtype in (torch.float64, torch.bfloat16)] + \
    [(SHAPES[1], dtype) for dtype in DTYPES]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,dtype", SHAPE_DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_targets(shape, dtype, reduction, backend):
    x, w, target, b = make_inputs(shape, dtype, bias=True)
    check_parity(x, w, target, b, backend, reduction=reduction)


OPTION_SETS = {
    "weight": dict(weight=True),
    "smoothing": dict(label_smoothing=0.15),
    "weight+smoothing+ignore3": dict(weight=True, label_smoothing=0.3, ignore_index=3),
    "no_bias": dict(bias=False),
    "probability": dict(prob=True),
    "probability+weight+smoothing": dict(prob=True, weight=True, label_smoothing=0.2),
    "k_dimensional": dict(out_features=(3,)),
    "k_dimensional+probability+smoothing": dict(out_features=(3,), prob=True, label_smoothing=0.1),
    "all_ignored": dict(ignore_fraction=1.0, weight=True),
}


@needs_torchs
@pytest.mark.parametrize("backend", BACKENDS)
def test_deprecated_elementwise_mean_is_mean(backend):
    """torch takes reduction='elementwise_mean' as 'mean' (a deprecation warning); the Triton path once
    passed the name on and summed."""
    x, w, target, b = make_inputs((9, 5, 7), torch.float32, bias=True)
    with pytest.warns(UserWarning, match="elementwise_mean"):
        check_parity(x, w, target, b, backend, reduction="elementwise_mean")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", OPTION_SETS)
def test_options(options, reduction, dtype, backend):
    kwargs = dict(OPTION_SETS[options])
    make = {k: kwargs.pop(k) for k in ("prob", "out_features", "ignore_fraction", "bias") if k in kwargs}
    shape = (6, 5, 7) if "out_features" in make else (23, 11, 41)
    x, w, target, b = make_inputs(shape, dtype, bias=make.pop("bias", True), ignore_index=kwargs.get("ignore_index", -100),
                                  **make)
    if kwargs.pop("weight", False):
        kwargs["weight"] = (torch.rand(shape[2], device=DEVICE) + 0.1).to(dtype)
    check_parity(x, w, target, b, backend, reduction=reduction, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("extras", ["z_loss", "softcap", "z_loss+softcap+weight+smoothing", "probability+z+softcap",
                                    "scale+softcap+z"])
def test_extras(extras, reduction, dtype):
    """z_loss, softcap (Gemma 2) and logit_scale (Cohere, Granite: a multiplier before the softcap, in the
    GEMMs on the Triton path) against fusedloss's eager formulas (F.linear + the cross-entropy extras)."""
    kwargs = dict(reduction=reduction)
    if "scale" in extras:
        kwargs["logit_scale"] = 2.7  # not a power of two: the scale's rounding shows
    if "z" in extras:
        kwargs["z_loss"] = 1e-2
    if "softcap" in extras:
        kwargs["softcap"] = 2.5  # logits of scale 3 squashed hard: the chain rule matters
    if "weight" in extras:
        kwargs.update(weight=(torch.rand(41, device=DEVICE) + 0.1).to(dtype), label_smoothing=0.1)
    x, w, target, b = make_inputs((23, 11, 41), dtype, bias=True, prob="probability" in extras)
    check_parity(x, w, target, b, "triton", reference=eager_extras, **kwargs)


def test_eager_extras_reference_is_linear_then_cross_entropy_extras():
    """The eager reference of the extras is what it says: cross_entropy's extras on F.linear's logits."""
    x, w, target, b = make_inputs((9, 6, 11), torch.float64, bias=True)
    kwargs = dict(z_loss=1e-3, softcap=4.0, label_smoothing=0.1)
    expected = eager_extras_ce(F.linear(x, w, b), target, **kwargs)
    torch.testing.assert_close(eager_extras(x, w, target, linear_bias=b, **kwargs), expected, rtol=1e-13, atol=0)
    expected = eager_extras_ce(F.linear(x, w, b) * 0.3, target, **kwargs)  # the scale first, then the softcap
    torch.testing.assert_close(eager_extras(x, w, target, linear_bias=b, logit_scale=0.3, **kwargs), expected,
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value,error", [("2", TypeError), (True, TypeError), (torch.tensor(2.0), TypeError),
                                         (float("nan"), ValueError), (float("inf"), ValueError)])
def test_logit_scale_is_validated(value, error, backend):
    x, w, target, b = make_inputs((5, 4, 7), torch.float32)
    with backend_context(backend), pytest.raises(error, match="logit_scale"):
        FL.linear_cross_entropy(x, w, target, logit_scale=value)
    with pytest.raises(error, match="logit_scale"):
        FN.LinearCrossEntropyLoss(4, 7, logit_scale=value)


def eager_extras_ce(logits, target, **kwargs):
    with fusedloss.backend("torch"):
        return FL.cross_entropy(logits, target, **kwargs)


# ------------------------------------------------------------------ gradients: who needs one, grad_output, reuse


@pytest.mark.parametrize("wanted", ["input", "weight", "bias", "weight+bias"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_only_some_inputs_require_grad(wanted, reduction):
    x, w, target, b = make_inputs((37, 19, 300), torch.float32, bias=True)
    for name, t in (("input", x), ("weight", w), ("bias", b)):
        t.requires_grad_(name in wanted)
    check_parity(x, w, target, b, "triton", reduction=reduction)


def test_no_gradient_work_without_grad():
    """Without autograd the forward computes the loss only: no gradient buffer is made (the no-grad
    forward allocates less than the chunk buffer plus the loss)."""
    x, w, target, b = make_inputs((37, 19, 300), torch.float32, bias=True)
    with torch.no_grad(), fusedloss.backend("triton"), _AllocationRecorder() as recorder:
        loss = FL.linear_cross_entropy(x, w, target, linear_bias=b)
    assert loss.grad_fn is None
    assert max(recorder.sizes) < w.numel(), "no weight-sized gradient or accumulator"
    torch.testing.assert_close(loss, torch_reference(x, w, target, linear_bias=b), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("upstream", [1.0, 2.0**16, 1 / 7])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_output_scalars(upstream, reduction):
    """Loss scaling (2**16) and accumulation (1/k): the gradients written in the forward, scaled exactly."""
    x, w, target, b = make_inputs((37, 19, 300), torch.float32, bias=True)
    check_parity(x, w, target, b, "triton", grad_scale=upstream, reduction=reduction, label_smoothing=0.05)


def test_backward_twice_recomputes():
    """retain_graph: the first backward hands over the gradients written in the forward, a second one
    recomputes them (the same values)."""
    x, w, target, b = make_inputs((37, 19, 300), torch.float32, bias=True)
    with fusedloss.backend("triton"):
        loss = FL.linear_cross_entropy(x, w, target, linear_bias=b, label_smoothing=0.1)
    first = torch.autograd.grad(loss * 3.0, (x, w, b), retain_graph=True)
    second = torch.autograd.grad(loss * 0.5, (x, w, b))
    expected = torch.autograd.grad(torch_reference(x, w, target, linear_bias=b, label_smoothing=0.1), (x, w, b))
    for f, s, e in zip(first, second, expected):
        torch.testing.assert_close(f, 3.0 * e, rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(s, 0.5 * e, rtol=2e-5, atol=1e-6)


def test_gradcheck_tiny():
    x, w, target, b = make_inputs((4, 3, 5), torch.float64, bias=True)
    target[1] = -100
    with fusedloss.backend("triton"):
        for reduction in REDUCTIONS:
            assert torch.autograd.gradcheck(
                lambda a, c, d: FL.linear_cross_entropy(a, c, target, linear_bias=d, reduction=reduction,
                                                        label_smoothing=0.1, z_loss=1e-2, softcap=3.0), (x, w, b),
                fast_mode=True)


@pytest.mark.parametrize("chunk", [1, 4, 37])
def test_chunk_size_does_not_change_the_result(chunk):
    """options.batch_chunk_size sets the rows per chunk (torch's own knob): the same loss and gradients
    for one row per chunk, uneven chunks, a single chunk."""
    x, w, target, b = make_inputs((37, 19, 300), torch.float64, bias=True)
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk) if hasattr(torch.nn, "LinearCrossEntropyOptions") \
        else type("Options", (), {"batch_chunk_size": chunk})()
    with fusedloss.backend("triton"), _AllocationRecorder() as recorder:
        loss = FL.linear_cross_entropy(x, w, target, linear_bias=b, options=options)
        grads = torch.autograd.grad(loss, (x, w, b))
    one_chunk = chunk * _chunks.padded_columns(300)  # rows padded to 16 elements
    assert max(s for s in recorder.sizes if s != w.numel()) <= max(one_chunk, x.numel()), "one chunk of logits"
    ref = torch_reference(x, w, target, linear_bias=b)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-13)
    for got, expected in zip(grads, torch.autograd.grad(ref, (x, w, b))):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_logit_scale_over_chunks(reduction):
    """logit_scale with several chunks, a bias, a grad_output per row or a scalar: the GEMMs' alpha (and
    beta for the bias) give torch's scale * linear(...) and its gradients, to float64 rounding."""
    x, w, target, b = make_inputs((37, 19, 300), torch.float64, bias=True)
    options = type("Options", (), {"batch_chunk_size": 10})()
    upstream = torch.rand((37,) if reduction == "none" else (), dtype=torch.float64, device=DEVICE) + 0.5
    with fusedloss.backend("triton"):
        loss = FL.linear_cross_entropy(x, w, target, linear_bias=b, options=options, logit_scale=-0.3,
                                       reduction=reduction)
        grads = torch.autograd.grad(loss, (x, w, b), upstream)
    ref = F.cross_entropy(F.linear(x, w, b) * -0.3, target, reduction=reduction)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-13)
    for got, expected in zip(grads, torch.autograd.grad(ref, (x, w, b), upstream)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_deterministic_bitwise(reduction):
    x, w, target, b = make_inputs((37, 19, 300), torch.bfloat16, bias=True)
    results = []
    for _ in range(2):
        with fusedloss.backend("triton"):
            loss = FL.linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction)
        results.append([loss, *torch.autograd.grad(loss.sum(), (x, w, b))])
    for first, second in zip(*results):
        assert torch.equal(first, second)


# ------------------------------------------------------------------ the logits are never whole


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_no_tensor_of_n_by_c_elements(reduction, dtype):
    """Forward and backward never make a tensor of N x C elements, nor anything larger than one chunk of
    logits (its rows padded to 16 bytes) besides the weight-sized gradient (and its float32 accumulator);
    torch's reference path does (the check can fail)."""
    n, h, c = 64, 8, 300  # N x C = 19200, the weight 2400 elements, a chunk 16 KiB / (300 x 4 or 2 bytes)
    x, w, target, b = make_inputs((n, h, c), dtype, bias=True)
    chunk = _chunks.chunk_rows(n, c, x.element_size(), 0)
    assert 1 < chunk < n
    for backend, expect_whole in (("triton", False), (None, True)):
        fn = torch_reference if backend is None else FL.linear_cross_entropy
        with backend_context(backend), _AllocationRecorder() as recorder:
            loss = fn(x, w, target, linear_bias=b, reduction=reduction)
            torch.autograd.grad(loss.sum(), (x, w, b))
        assert (max(recorder.sizes) >= n * c) == expect_whole, (backend, max(recorder.sizes))
        if not expect_whole:
            assert max(s for s in recorder.sizes if s != w.numel()) <= chunk * _chunks.padded_columns(c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("c", [7, 300, 50257, 128256])
def test_chunk_buffer_rows_start_16_byte_aligned(dtype, c):
    """The chunk buffer's row stride is a multiple of 16 elements (at C = 50257 in bfloat16 only every eighth
    row of a dense buffer starts 16-byte aligned; cuBLAS's aligned kernels need every one, and Triton proves
    alignment only for strides divisible by 16); the logits are a (rows, C) view of it."""
    x = torch.zeros(2, 3, dtype=dtype)
    buffer = _chunks.chunk_buffer(x, 5, c)
    assert buffer.shape == (5, c) and buffer.stride(1) == 1
    assert buffer.stride(0) % 16 == 0 and 0 <= buffer.stride(0) - c < 16


@pytest.mark.parametrize("n,c,element_size", [(8192, 128256, 2), (16384, 128256, 4), (65536, 50257, 2),
                                              (4096, 262144, 2)])
def test_chunk_rows_fewest_chunks_then_the_gemm_tile(n, c, element_size, monkeypatch):
    """Chunks within CHUNK_BYTES (the package's 224 MiB, not this file's 16 KiB) with their padded rows, as few
    as fit, evenly split, and a multiple of 128 rows (the GEMMs' M tile) where that adds no chunk: at
    C = 128256 in bfloat16 9 chunks of 911 rows (896 would make 10: W and dW read again)."""
    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 224 << 20)
    rows = _chunks.chunk_rows(n, c, element_size, 0)
    row_bytes = _chunks.padded_columns(c) * element_size
    assert rows * row_bytes <= _chunks.CHUNK_BYTES
    fewest = -(-n // (_chunks.CHUNK_BYTES // row_bytes))
    assert -(-n // rows) == fewest
    rounded = -(-rows // _chunks.GEMM_ROWS) * _chunks.GEMM_ROWS
    assert rows % _chunks.GEMM_ROWS == 0 or rounded * row_bytes > _chunks.CHUNK_BYTES
    if (n, c, element_size) == (8192, 128256, 2):
        assert rows == 911


# ------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_tokens(reduction, backend):
    x, w, target, b = make_inputs((0, 8, 13), torch.float32, bias=True)
    with backend_context(backend):
        loss = FL.linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction)
    expected = torch_reference(x, w, target, linear_bias=b, reduction=reduction)
    torch.testing.assert_close(loss, expected, equal_nan=True)
    grads = torch.autograd.grad(loss.sum(), (x, w, b))
    for got, t in zip(grads, (x, w, b)):
        assert got.shape == t.shape and (got == 0).all()


def test_out_of_range_target_gives_nan_rows():
    """torch raises on the host; the Triton path (no sync) gives NaN where the bad row reaches."""
    x, w, target, b = make_inputs((5, 6, 12), torch.float32)
    target = torch.tensor([1, 12, 3, -100, 4], device=DEVICE)
    with fusedloss.backend("triton"):
        loss = FL.linear_cross_entropy(x, w, target, reduction="none")
        mean = FL.linear_cross_entropy(x, w, target)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2, 3, 4]]).all() and torch.isnan(mean)


def test_debug_mode_raises_torchs_error(fusedloss_env):
    fusedloss_env("FUSEDLOSS_DEBUG", "1")
    x, w, _, _ = make_inputs((3, 4, 6), torch.float32)
    with fusedloss.backend("triton"), pytest.raises(IndexError, match="out of bounds"):
        FL.linear_cross_entropy(x, w, torch.tensor([0, 6, 1], device=DEVICE))


BAD_CALLS = {
    "3-D input": lambda x, w, t: (x[None], w, t, {}),
    "1-D weight": lambda x, w, t: (x, w[0], t, {}),
    "in_features": lambda x, w, t: (x[:, :3], w, t, {}),
    "bias shape": lambda x, w, t: (x, w, t, {"linear_bias": torch.zeros(5, device=DEVICE)}),
    "K-dim unbatched": lambda x, w, t: (x[0], w[:, None], t[0], {}),
    "ignore_index with probabilities": lambda x, w, t: (x, w, torch.rand(4, 7, device=DEVICE), {"ignore_index": -100}),
    "reduction": lambda x, w, t: (x, w, t, {"reduction": "average"}),
    "smoothing": lambda x, w, t: (x, w, t, {"label_smoothing": 1.5}),
    "class weight size": lambda x, w, t: (x, w, t, {"weight": torch.rand(6, device=DEVICE)}),
    "class weight dtype": lambda x, w, t: (x, w, t, {"weight": torch.rand(7, device=DEVICE, dtype=torch.float64)}),
    "target dtype": lambda x, w, t: (x, w, t.int(), {}),
    "uint8 target, weight, smoothing, mean": lambda x, w, t: (x, w, t.to(torch.uint8), {
        "weight": torch.rand(7, device=DEVICE), "label_smoothing": 0.1}),
    "target batch": lambda x, w, t: (x, w, t[:3], {}),
    "operand dtypes": lambda x, w, t: (x.double(), w, t, {}),
}


@needs_torchs
@pytest.mark.parametrize("case", BAD_CALLS)
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_errors_match_torch(case, backend):
    x, w, target, _ = make_inputs((4, 5, 7), torch.float32, ignore_fraction=0.0)
    x, w, target, kwargs = BAD_CALLS[case](x, w, target)
    with pytest.raises(Exception) as theirs:
        F.linear_cross_entropy(x, w, target, **kwargs)
    with backend_context(backend), pytest.raises(type(theirs.value)) as ours:
        FL.linear_cross_entropy(x, w, target, **kwargs)
    if case != "operand dtypes":  # forced triton: "not supported by the kernels: operands of different dtypes"
        assert str(ours.value) == str(theirs.value)


# ------------------------------------------------------------------ the drop-in API


@needs_torchs
@pytest.mark.parametrize("cls", ["LinearCrossEntropyLoss", "StandaloneLinearCrossEntropyLoss"])
@pytest.mark.parametrize("kwargs", [dict(), dict(out_features=(2,), bias=True, reduction="sum", ignore_index=1,
                                                 label_smoothing=0.1)], ids=["plain", "k_dim+bias+options"])
def test_module_drop_in(cls, kwargs):
    """fusedloss's module (torch's subclass here) and the stand-in for torches without it: torch's
    constructor, parameters, buffers, repr, and values and gradients for the same parameters."""
    weight = torch.rand(9, device=DEVICE)
    torch.manual_seed(1)
    theirs = torch.nn.LinearCrossEntropyLoss(6, 9, weight=weight, device=DEVICE, **kwargs)
    torch.manual_seed(1)
    ours = getattr(FN, cls)(6, 9, weight=weight, device=DEVICE, **kwargs)
    if cls == "LinearCrossEntropyLoss":
        assert isinstance(ours, torch.nn.LinearCrossEntropyLoss)
    assert repr(ours) == repr(theirs).replace("LinearCrossEntropyLoss", type(ours).__name__)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(5, 6, device=DEVICE, requires_grad=True)
    target = torch.randint(0, 9, (5, *kwargs.get("out_features", ())), device=DEVICE)
    with fusedloss.backend("triton"):
        loss = ours(x, target)
    expected = theirs(x, target)
    torch.testing.assert_close(loss, expected, rtol=2e-5, atol=1e-6)
    for got, exp in zip(torch.autograd.grad(loss, [x, *ours.parameters()]),
                        torch.autograd.grad(expected, [x, *theirs.parameters()])):
        torch.testing.assert_close(got, exp, rtol=2e-5, atol=1e-6)


@needs_torchs
def test_module_extras_and_errors():
    module = FN.LinearCrossEntropyLoss(4, 5, z_loss=1e-3, softcap=30.0, logit_scale=0.0625)
    assert "z_loss=0.001, softcap=30.0, logit_scale=0.0625" in repr(module)
    for kwargs in (dict(weight=torch.rand(4)), dict(label_smoothing=-0.1)):
        with pytest.raises(RuntimeError) as theirs:
            torch.nn.LinearCrossEntropyLoss(4, 5, **kwargs)
        with pytest.raises(RuntimeError) as ours:
            FN.StandaloneLinearCrossEntropyLoss(4, 5, **kwargs)
        assert str(ours.value) == str(theirs.value)


@needs_torchs
def test_fallback_without_torchs_linear_cross_entropy(monkeypatch):
    """On a torch without F.linear_cross_entropy (2.11) the eager path is fusedloss's own reference:
    F.linear, then cross entropy; the same values and gradients as 2.13's reference path."""
    monkeypatch.delattr(fusedloss._torch.F, "linear_cross_entropy")
    for kwargs in (dict(reduction="none", label_smoothing=0.1), dict(ignore_index=None, reduction="sum"),
                   dict(weight=torch.rand(300, device=DEVICE, dtype=torch.float64) + 0.1)):
        x, w, target, b = make_inputs((37, 19, 300), torch.float64, bias=True)
        check_parity(x, w, target, b, "torch", **kwargs)
    x, w, target, b = make_inputs((4, 5, 7), torch.float64, prob=True)
    with pytest.raises(RuntimeError, match="ignore_index cannot be specified"), fusedloss.backend("torch"):
        FL.linear_cross_entropy(x, w, target, ignore_index=-100)


@needs_torchs
def test_import_and_run_on_a_torch_without_linear_cross_entropy(tmp_path):
    """A fresh process whose torch lacks F.linear_cross_entropy, nn.LinearCrossEntropyLoss and
    nn.LinearCrossEntropyOptions (as 2.11): fusedloss imports, offers both with 2.13's signature, and
    both backends give the reference's values."""
    script = textwrap.dedent("""
        import inspect
        import torch, torch.nn, torch.nn.functional as F
        reference = F.linear_cross_entropy
        theirs = inspect.signature(reference)
        for owner, name in ((F, "linear_cross_entropy"), (torch.nn, "LinearCrossEntropyLoss"),
                            (torch.nn, "LinearCrossEntropyOptions")):
            delattr(owner, name)
        import fusedloss, fusedloss.functional as FL, fusedloss.nn as FN
        assert FN.LinearCrossEntropyLoss is FN.StandaloneLinearCrossEntropyLoss
        params = list(inspect.signature(FL.linear_cross_entropy).parameters.values())[:len(theirs.parameters)]
        assert [(p.name, p.default, p.kind) for p in params] == \\
            [(p.name, p.default, p.kind) for p in theirs.parameters.values()]
        torch.manual_seed(0)
        module = FN.LinearCrossEntropyLoss(6, 9, bias=True, dtype=torch.float64)
        x = torch.randn(5, 6, dtype=torch.float64)
        target = torch.randint(0, 9, (5,))
        expected = reference(x, module.linear.weight, target, linear_bias=module.linear.bias)
        for backend in ("torch", "triton"):
            with fusedloss.backend(backend):
                torch.testing.assert_close(module(x, target), expected, rtol=1e-12, atol=1e-12)
        print("ok")
    """)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_autocast_16_bit_linear_float32_loss():
    """Under autocast (float32 parameters) the linear runs in bfloat16 and the loss in float32, as torch's
    reference path does there; the parameters' gradients keep their dtype."""
    x, w, target, b = make_inputs((23, 11, 41), torch.float32, bias=True)
    device_type = "cuda" if DEVICE == "cuda" else "cpu"
    results = []
    for backend in ("triton", None):
        with torch.autocast(device_type, dtype=torch.bfloat16), backend_context(backend):
            fn = torch_reference if backend is None else FL.linear_cross_entropy
            loss = fn(x, w, target, linear_bias=b, label_smoothing=0.1)
        results.append((loss, torch.autograd.grad(loss, (x, w, b))))
    (loss, grads), (expected, expected_grads) = results
    assert loss.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-2, atol=1e-3)
    for got, exp in zip(grads, expected_grads):
        assert got.dtype == exp.dtype == torch.float32
        torch.testing.assert_close(got, exp, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_loss_dtype_float32_from_16_bit_operands(reduction, backend, small_chunks):
    """loss_dtype=float32: the loss of the 16-bit logits computed and returned in float32 (what Hugging
    Face's causal-LM loss gives with its float32 upcast), the gradients in the operands' dtype."""
    x = torch.randn(37, 24, device=DEVICE).bfloat16().requires_grad_()
    w = torch.randn(103, 24, device=DEVICE).bfloat16().requires_grad_()
    target = torch.randint(0, 103, (37,), device=DEVICE)
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.linear(x, w).float(), target, reduction=reduction)
    with fusedloss.backend(backend):
        loss = FL.linear_cross_entropy(x, w, target, reduction=reduction, loss_dtype=torch.float32)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(loss.sum(), (x, w))
    expected_grads = torch.autograd.grad(expected.sum(), (x, w))
    for g, e in zip(grads, expected_grads):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), e.float(), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_options_class_and_bad_options(backend):
    """``options`` is torch's ``LinearCrossEntropyOptions`` (``fusedloss.nn.LinearCrossEntropyOptions``: the
    same class, or a stand-in on torches without it); fusedloss.functional no longer exports an internal
    tuple of that name (``FL.LinearCrossEntropyOptions(batch_chunk_size=3)`` was a TypeError). Anything
    else raises AttributeError on both paths, as torch's chunked path does, with a message naming it."""
    assert not hasattr(FL, "LinearCrossEntropyOptions")
    if hasattr(torch.nn, "LinearCrossEntropyOptions"):
        assert FN.LinearCrossEntropyOptions is torch.nn.LinearCrossEntropyOptions
    x, w, target, _ = make_inputs((9, 5, 13), torch.float64)
    options = FN.LinearCrossEntropyOptions(batch_chunk_size=3)
    with backend_context(backend):
        loss = FL.linear_cross_entropy(x, w, target, options=options)
        torch.testing.assert_close(loss, torch_reference(x, w, target), rtol=1e-12, atol=1e-12)
        for bad in (5, "chunked", object()):
            with pytest.raises(AttributeError, match="options|_adjust"):
                FL.linear_cross_entropy(x, w, target, options=bad)
    with pytest.raises(ValueError, match="batch_chunk_size"):
        FN.LinearCrossEntropyOptions(batch_chunk_size=0)


@pytest.mark.skipif(not hasattr(torch.nn, "LinearCrossEntropyOptions"),
                    reason="torch's options class (torch >= 2.13); the stand-in has no chunking_method resolution")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_options_resolved_and_rejected_as_torch(backend):
    """torch's options are resolved as torch resolves them: an explicit chunking_method sets the chunk
    size; options torch rejects (a chunk size and a chunking method that disagree, an accumulation dtype
    it does not serve) raise torch's exception on the fused path too (they were accepted)."""
    x, w, target, _ = make_inputs((10, 3, 7), torch.float32)
    options = torch.nn.LinearCrossEntropyOptions
    with backend_context(backend):
        with pytest.raises(ValueError, match="different chunk sizes"):
            FL.linear_cross_entropy(x, w, target, options=options(batch_chunk_size=3, chunking_method="aspect_ratio"))
        with pytest.raises(RuntimeError, match="acc_dtype"):
            FL.linear_cross_entropy(x, w, target, options=options(acc_dtype=torch.float16))
        loss = FL.linear_cross_entropy(x, w, target, options=options(chunking_method="aspect_ratio:2"))
    torch.testing.assert_close(loss, torch_reference(x, w, target))
    assert check_chunk(options(chunking_method="aspect_ratio:2"), x, w) == options(
        chunking_method="aspect_ratio:2")._adjust(10, 3, 7, torch.float32, x.device).batch_chunk_size


def check_chunk(options, x, w):
    from fusedloss import _validation

    return _validation.linear_cross_entropy_chunk_rows(options, x, w)
