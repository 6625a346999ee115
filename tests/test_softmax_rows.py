"""Softmax-rows family (cross_entropy, nll_loss): parity with torch, errors, edge cases, determinism.

Shapes and why:
  (37, 1000)        C not a power of two, one column block, two rows per program (masking on both axes)
  (5, 4099)         C just above a float32 block of 4096: the online max/sum over two column blocks
  (3, 9001)         two column blocks for 16-bit inputs too (their block is 8192)
  (1, 1)            one row, one class
  (13, 7, 6)        (N, C, d1): class-strided rows, several rows per program
  (2, 5, 3, 4)      (N, C, d1, d2): torch's nll_loss2d path
  (11,)             unbatched input (C) with a 0-d target
  (2, 70001)        a vocabulary above 65536 (GPU grids, block loops)
"""
import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F

import triton
import triton.language as tl

import fusedloss
import fusedloss.functional as FL
import fusedloss.nn as FN
from fusedloss.kernels._math import offset64
from helpers import (DEVICE, DTYPES, assert_matches, assert_matches_torch, backend_context, class_targets,
                     probability_targets, strided_like)

SHAPES = [(37, 1000), (5, 4099), (3, 9001), (1, 1), (13, 7, 6), (2, 5, 3, 4), (11,)]
REDUCTIONS = ["mean", "sum", "none"]
BACKENDS = ["triton", "torch"]


def n_classes(shape):
    return shape[0] if len(shape) == 1 else shape[1]


def class_target(shape, ignore_fraction=0.2, ignore_index=-100):
    """Class targets of logits of ``shape``: their shape without the classes (dim 1; () for (C,))."""
    target_shape = () if len(shape) == 1 else (shape[0], *shape[2:])
    return class_targets(target_shape, n_classes(shape), ignore_fraction, ignore_index)


def logits_of(shape, dtype, scale=3.0, layout="contiguous"):
    x = (scale * torch.randn(shape, device=DEVICE)).to(dtype)
    return strided_like(x, layout).requires_grad_()


def run_loss(fn, x, target, backend, upstream, **kwargs):
    """Loss and d(loss * upstream)/dx under ``backend`` (None: plain torch)."""
    with backend_context(backend):
        loss = fn(x, target, **kwargs)
    grad, = torch.autograd.grad(loss, x, upstream if loss.dim() else upstream.reshape(()))
    return loss, grad


def check_parity(fn, torch_fn, x, target, backend, weight=None, grad_scale=0.37, **kwargs):
    """fusedloss vs torch at the same dtype vs torch in float64: values and gradients."""
    dtype = x.dtype
    if weight is not None:
        kwargs["weight"] = weight.to(dtype)
    with torch.no_grad():
        probe = torch_fn(x.detach().double(), target, **{k: (v.double() if torch.is_tensor(v) else v)
                                                        for k, v in kwargs.items()})
    upstream = (torch.rand(probe.shape, device=DEVICE, dtype=torch.float64) + 0.5) * grad_scale
    x64 = x.detach().double().requires_grad_()
    kwargs64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
    target64 = target.double() if target.is_floating_point() else target
    ref_loss, ref_grad = run_loss(torch_fn, x64, target64, None, upstream, **kwargs64)
    same_loss, same_grad = run_loss(torch_fn, x, target, None, upstream.to(dtype), **kwargs)
    loss, grad = run_loss(fn, x, target, backend, upstream.to(dtype), **kwargs)
    assert loss.dtype == same_loss.dtype and grad.dtype == x.dtype
    if backend == "torch":  # the eager path's contract is torch itself (whose CUDA sums may use atomics)
        assert_matches(loss, same_loss.double(), dtype, "loss")
        assert_matches(grad, same_grad.double(), dtype, "grad")
        return
    assert_matches_torch(loss, same_loss, ref_loss, dtype, "loss")
    assert_matches_torch(grad, same_grad, ref_grad, dtype, "grad")


# ------------------------------------------------------------------ parity: class-index targets


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_class_targets(shape, dtype, reduction, backend):
    x = logits_of(shape, dtype)
    target = class_target(shape)
    check_parity(FL.cross_entropy, F.cross_entropy, x, target, backend, reduction=reduction)


OPTION_SETS = {
    "weight": dict(weight=True),
    "smoothing": dict(label_smoothing=0.1),
    "weight+smoothing": dict(weight=True, label_smoothing=0.25),
    "weight+smoothing+ignore3": dict(weight=True, label_smoothing=0.3, ignore_index=3),
    "ignore_in_range": dict(ignore_index=0),
    "smoothing=1": dict(label_smoothing=1.0),
    "negative_smoothing": dict(label_smoothing=-0.2),  # torch: no smoothing at all when <= 0
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 1000), (5, 4099), (13, 7, 6), (11,)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", OPTION_SETS, ids=str)
def test_cross_entropy_options(shape, dtype, reduction, options, backend):
    kwargs = dict(OPTION_SETS[options])
    weight = torch.rand(n_classes(shape), device=DEVICE) + 0.1 if kwargs.pop("weight", False) else None
    x = logits_of(shape, dtype)
    target = class_target(shape, ignore_index=kwargs.get("ignore_index", -100))
    check_parity(FL.cross_entropy, F.cross_entropy, x, target, backend, weight=weight,
                 reduction=reduction, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 1000), (5, 4099), (13, 7, 6), (11,)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", ["plain", "weight", "smoothing", "weight+smoothing"])
def test_cross_entropy_probability_targets(shape, dtype, reduction, options, backend):
    weight = torch.rand(n_classes(shape), device=DEVICE) + 0.1 if "weight" in options else None
    smoothing = 0.2 if "smoothing" in options else 0.0
    x = logits_of(shape, dtype)
    target = probability_targets(shape, dtype)
    check_parity(FL.cross_entropy, F.cross_entropy, x, target, backend, weight=weight,
                 reduction=reduction, label_smoothing=smoothing)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "sliced"])
@pytest.mark.parametrize("options", ["plain", "weight+smoothing", "probability"])
def test_cross_entropy_non_contiguous(layout, options, backend):
    shape = (29, 517)
    x = logits_of(shape, torch.float32, layout=layout)
    assert not x.is_contiguous()
    weight = torch.rand(shape[1], device=DEVICE) if "weight" in options else None
    smoothing = 0.15 if "smoothing" in options else 0.0
    target = probability_targets(shape) if options == "probability" else class_target(shape)
    if options == "probability":
        target = strided_like(target, layout)
    check_parity(FL.cross_entropy, F.cross_entropy, x, target, backend, weight=weight,
                 label_smoothing=smoothing)


def test_cross_entropy_non_contiguous_spatial():
    """(N, C, d1, d2) whose spatial dims do not merge into one stride: copied once, still exact."""
    x = torch.randn(4, 6, 9, 5, device=DEVICE).transpose(1, 3).requires_grad_()  # (4, 5, 9, 6), strided
    target = class_target(tuple(x.shape))
    check_parity(FL.cross_entropy, F.cross_entropy, x, target, "triton", label_smoothing=0.1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cross_entropy_large_vocabulary(dtype):
    shape = (2, 70001) if DEVICE == "cpu" else (67, 262147)
    x = logits_of(shape, dtype)
    check_parity(FL.cross_entropy, F.cross_entropy, x, class_target(shape), "triton", label_smoothing=0.1)


def test_cross_entropy_vocabulary_above_65536():
    """C = 70001: eighteen float32 column blocks per row, the index arithmetic past 2**16."""
    shape = (2, 70001)
    x = logits_of(shape, torch.float32)
    check_parity(FL.cross_entropy, F.cross_entropy, x, class_target(shape, ignore_fraction=0.0), "triton",
                 weight=torch.rand(shape[1], device=DEVICE), label_smoothing=0.1)


@pytest.mark.gpu
def test_cross_entropy_64bit_offsets():
    """Rows whose element offset passes 2**31 (N * C > 2**31 elements, bf16: 4.3 GB of logits)."""
    n, c = 16500, 131072
    x = torch.randn(n, c, device=DEVICE, dtype=torch.bfloat16).requires_grad_()
    target = torch.randint(0, c, (n,), device=DEVICE)
    target[-1] = c - 1
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(x, target, reduction="none")
    tail = slice(n - 4, n)
    ref = F.cross_entropy(x[tail].detach().float(), target[tail], reduction="none")
    torch.testing.assert_close(loss[tail].float(), ref, rtol=1e-2, atol=1e-2)
    loss[tail].sum().backward()
    ref_grad = torch.softmax(x[tail].detach().float(), 1)
    ref_grad[torch.arange(4), target[tail]] -= 1
    torch.testing.assert_close(x.grad[tail].float(), ref_grad, rtol=2e-2, atol=1e-3)
    assert x.grad[: n - 4].abs().sum() == 0


@triton.jit(do_not_specialize=["n"])
def _offsets_kernel(out_ptr, n):
    tl.store(out_ptr + 0, offset64(n, 2))
    tl.store(out_ptr + 1, offset64(n, 3))
    tl.store(out_ptr + 2, offset64(n, 4))
    tl.store(out_ptr + 3, (n * 3).to(tl.int64))  # the int32 product, for contrast


def test_workspace_offsets_are_64_bit():
    """The softmax-rows kernels address their workspace slots (``k * n_saved``: lse_lo, the denominator) and
    the vocabulary-parallel statistics (``k * stats_stride``) through ``offset64``. At 800,000,000 rows (a
    3-D segmentation volume with few classes) the int32 product of a kernel's arguments wraps: the helper's
    must not. Checked without allocating the rows: a kernel that only computes and stores the offsets."""
    n = 800_000_000
    out = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    _offsets_kernel[(1,)](out, n)
    assert out.tolist() == [2 * n, 3 * n, 4 * n, 3 * n - 2**32]  # the last wrapped: int32 arithmetic
    from fusedloss.kernels import softmax_rows

    for kernel in (softmax_rows._softmax_rows_fwd_kernel, softmax_rows._softmax_rows_bwd_kernel):
        source = inspect.getsource(kernel.fn)  # every such product in the kernels goes through offset64
        assert "* n_saved" not in source and "* stats_stride" not in source and "offset64(n_saved, 2)" in source


# ------------------------------------------------------------------ nll_loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 1000), (13, 7, 6), (2, 5, 3, 4), (11,), (1, 1)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss(shape, dtype, reduction, weighted, backend):
    dim = 0 if len(shape) == 1 else 1
    x = torch.log_softmax(3 * torch.randn(shape, device=DEVICE), dim).to(dtype).requires_grad_()
    weight = torch.rand(n_classes(shape), device=DEVICE) + 0.1 if weighted else None
    check_parity(FL.nll_loss, F.nll_loss, x, class_target(shape), backend, weight=weight, reduction=reduction)


@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unbatched_input_with_one_element_target(fn, reduction):
    """torch's forward takes target (1,) for input (C,) as a 0-d target (its backward then fails);
    fusedloss gives the 0-d result, and the gradient of the 0-d case."""
    x = torch.randn(7, device=DEVICE).log_softmax(0).requires_grad_()
    with fusedloss.backend("triton"):
        loss = getattr(FL, fn)(x, torch.tensor([3], device=DEVICE), reduction=reduction)
    expected = getattr(F, fn)(x, torch.tensor(3, device=DEVICE), reduction=reduction)
    assert loss.shape == expected.shape == ()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], torch.autograd.grad(expected, x)[0])


def test_nll_loss_uint8_target():
    x = torch.randn(9, 6, device=DEVICE).log_softmax(1).requires_grad_()
    target = torch.randint(0, 6, (9,), device=DEVICE, dtype=torch.uint8)
    check_parity(FL.nll_loss, F.nll_loss, x, target, "triton")
    check_parity(FL.cross_entropy, F.cross_entropy, x, target, "triton")


# ------------------------------------------------------------------ extras: z-loss, softcap, in-place


def eager_extras(x, target, **kwargs):
    with fusedloss.backend("torch"):
        return FL.cross_entropy(x, target, **kwargs)


def test_extras_reference_matches_definition():
    """The eager extras are what the docstring says: softcap before the softmax, z * w_y * lse**2 added."""
    x = torch.randn(6, 9, dtype=torch.float64, device=DEVICE)
    target = torch.tensor([0, 1, -100, 3, 4, 5], device=DEVICE)
    weight = torch.rand(9, dtype=torch.float64, device=DEVICE)
    capped = 4.0 * torch.tanh(x / 4.0)
    lse = torch.logsumexp(capped, 1)
    counted = target != -100
    w_y = weight[target.clamp(min=0)] * counted
    expected = (F.cross_entropy(capped, target, weight, reduction="sum") + 1e-3 * (w_y * lse**2).sum()) / w_y.sum()
    got = eager_extras(x, target, weight=weight, softcap=4.0, z_loss=1e-3)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, *DTYPES], ids=str)
@pytest.mark.parametrize("shape", [(37, 1000), (5, 4099), (13, 7, 6)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("extras", ["z_loss", "softcap", "z_loss+softcap+weight+smoothing", "probability+z+cap"])
def test_cross_entropy_extras(shape, dtype, reduction, extras):
    kwargs = dict(reduction=reduction)
    if "z" in extras:
        kwargs["z_loss"] = 1e-2
    if "cap" in extras:
        kwargs["softcap"] = 2.5  # logits of scale 3 are squashed hard: the chain rule matters
    if "weight" in extras:
        kwargs["weight"] = (torch.rand(n_classes(shape), device=DEVICE) + 0.1).to(dtype)
        kwargs["label_smoothing"] = 0.1
    x = logits_of(shape, dtype)
    target = probability_targets(shape, dtype) if "probability" in extras else class_target(shape)
    x64 = x.detach().double().requires_grad_()
    kwargs64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
    ref = eager_extras(x64, target.double() if target.is_floating_point() else target, **kwargs64)
    upstream = torch.rand(ref.shape, dtype=torch.float64, device=DEVICE) + 0.5
    ref_grad, = torch.autograd.grad(ref, x64, upstream)
    same = eager_extras(x, target, **kwargs)
    same_grad, = torch.autograd.grad(same, x, upstream.to(dtype))
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(x, target, **kwargs)
    grad, = torch.autograd.grad(loss, x, upstream.to(dtype))
    assert_matches_torch(loss, same, ref, dtype, "loss")
    assert_matches_torch(grad, same_grad, ref_grad, dtype, "grad")


@pytest.mark.parametrize("case", ["nothing counted", "ignored row of -inf logits", "counted weights all 0"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_z_loss_backends_agree_on_ignored_rows(case, reduction):
    """An ignored row adds no z-loss and gets no gradient whatever its logits, on both backends (the eager
    formula once multiplied its lse**2 by a 0 weight: NaN for -inf logits, and NaN gradients everywhere for
    a 'mean' that counts no row, where torch's own cross_entropy and the kernels give 0)."""
    x = torch.randn(4, 5, device=DEVICE)
    target = torch.tensor([0, 1, -100, 3], device=DEVICE)
    kwargs = dict(reduction=reduction, z_loss=0.1)
    if case == "nothing counted":
        target = torch.full_like(target, -100)
    elif case == "ignored row of -inf logits":
        x[2] = float("-inf")
    else:
        kwargs["weight"] = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0], device=DEVICE)
    results = []
    for backend in ("torch", "triton"):
        logits = x.clone().requires_grad_()
        with fusedloss.backend(backend):
            loss = FL.cross_entropy(logits, target, **kwargs)
        results.append((loss, torch.autograd.grad(loss.sum(), logits)[0]))
    (eager, eager_grad), (fused, fused_grad) = results
    torch.testing.assert_close(fused, eager, equal_nan=True)
    torch.testing.assert_close(fused_grad, eager_grad, equal_nan=True)
    plain = F.cross_entropy(x.clone().requires_grad_(), target, reduction=reduction, weight=kwargs.get("weight"))
    assert torch.equal(eager.isnan(), plain.isnan())  # NaN exactly where torch's loss is NaN


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inplace_backward(reduction):
    """The gradient is right and is written into the logits' own buffer (no N*C allocation)."""
    x = torch.randn(21, 300, device=DEVICE)
    target = class_target(x.shape)
    reference = x.clone().requires_grad_()
    F.cross_entropy(reference, target, reduction=reduction, label_smoothing=0.1).sum().backward()
    logits = x.clone().requires_grad_()
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(logits, target, reduction=reduction, label_smoothing=0.1, inplace_backward=True)
    loss.sum().backward()
    torch.testing.assert_close(logits.grad, reference.grad, rtol=2e-5, atol=1e-7)
    assert logits.grad.data_ptr() == logits.data_ptr(), "the gradient lives in the logits' buffer"


@pytest.mark.parametrize("grad_in_forward", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inplace_backward_of_expanded_logits(reduction, grad_in_forward):
    """Expanded logits (stride 0: several logits in one memory location) cannot hold their gradient: the
    option is ignored for them (the kernels once wrote every row's gradient over the shared elements: wrong
    gradients, and with grad_in_forward a wrong loss, read back after being overwritten)."""
    base = torch.randn(1, 7, 5, device=DEVICE, requires_grad=True)
    target = class_target((6, 7, 5))
    kwargs = dict(reduction=reduction, inplace_backward=True, grad_in_forward=grad_in_forward)
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(base.expand(6, 7, 5), target, **kwargs)
    expected = F.cross_entropy(base.expand(6, 7, 5), target, reduction=reduction)
    torch.testing.assert_close(loss, expected)
    upstream = torch.rand(loss.shape, device=DEVICE) + 0.5
    torch.testing.assert_close(torch.autograd.grad(loss, base, upstream)[0],
                               torch.autograd.grad(expected, base, upstream)[0])


# ------------------------------------------------------------------ grad_output, graph reuse, edge cases


@pytest.mark.parametrize("upstream", [1.0, 2.0**16, 1 / 7])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_output_scalars(upstream, reduction):
    """Loss scaling (2**16) and gradient accumulation (1/k) give exactly scaled gradients."""
    x = logits_of((19, 333), torch.float32)
    target = class_target(x.shape)
    check_parity(FL.cross_entropy, F.cross_entropy, x, target, "triton", grad_scale=upstream,
                 reduction=reduction, label_smoothing=0.05)


def test_loss_used_twice_in_one_graph():
    x = logits_of((17, 129), torch.float32)
    y1, y2 = class_target(x.shape), class_target(x.shape)
    with fusedloss.backend("triton"):
        loss1 = FL.cross_entropy(x, y1)
        loss2 = FL.cross_entropy(x, y2, reduction="sum", label_smoothing=0.2)
        total = loss1 + 3 * loss1 + loss2
    grad, = torch.autograd.grad(total, x)
    x64 = x.detach().double().requires_grad_()
    ref1 = F.cross_entropy(x64, y1)
    ref = ref1 + 3 * ref1 + F.cross_entropy(x64, y2, reduction="sum", label_smoothing=0.2)
    ref_grad, = torch.autograd.grad(ref, x64)
    assert_matches(total, ref, torch.float32, "loss")
    assert_matches(grad, ref_grad, torch.float32, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
def test_all_targets_ignored(fn, reduction, backend):
    """Mean over nothing is NaN as in torch (0/0); sum is 0; gradients are 0."""
    x = logits_of((6, 10), torch.float32)
    target = torch.full((6,), -100, device=DEVICE)
    weight = torch.rand(10, device=DEVICE)
    check_parity(getattr(FL, fn), getattr(F, fn), x, target, backend, weight=weight, reduction=reduction)


@pytest.mark.parametrize("layout", ["step", "column", "expanded"])
@pytest.mark.parametrize("fn, options", [("cross_entropy", {}), ("cross_entropy", {"label_smoothing": 0.2}),
                                         ("cross_entropy", {"reduction": "none"}), ("nll_loss", {}),
                                         ("nll_loss", {"reduction": "none"})], ids=str)
def test_strided_class_weight(fn, options, layout):
    """A class weight that is a view with stride != 1 (every other entry, a column of a table, an expanded
    scalar): the kernels index w[c] at weight_ptr + c, so the launchers copy such a view first (they once
    read the wrong entries, or past a one-element buffer)."""
    x = logits_of((7, 10, 3), torch.float32)
    target = class_target(x.shape)
    weight = {"step": lambda: torch.rand(20, device=DEVICE)[::2],
              "column": lambda: torch.rand(10, 3, device=DEVICE)[:, 1],
              "expanded": lambda: torch.rand(1, device=DEVICE).expand(10)}[layout]()
    assert weight.stride(0) != 1
    check_parity(getattr(FL, fn), getattr(F, fn), x, target, "triton", weight=weight, **options)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2,), (6, 10), (3, 10, 4)], ids=str)
def test_nll_loss_mean_over_zero_class_weight(shape, backend):
    """'mean' whose counted targets all have class weight 0: the loss is 0 / 0 = NaN, and torch's gradient
    is NaN only in the target's column (-w_y g / 0), 0 in the others (the kernel once multiplied those
    zeros by the infinite g / 0: NaN everywhere)."""
    x = torch.randn(shape, device=DEVICE).log_softmax(0 if len(shape) == 1 else 1).requires_grad_()
    target = class_target(shape)
    weight = torch.zeros(n_classes(shape), device=DEVICE)
    with fusedloss.backend(backend):
        loss = FL.nll_loss(x, target, weight=weight)
    expected = F.nll_loss(x, target, weight=weight)
    torch.testing.assert_close(loss, expected, equal_nan=True)
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], torch.autograd.grad(expected, x)[0], equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 10), (0, 10, 3), (4, 10, 0)], ids=str)
def test_empty_batch(shape, reduction, backend):
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    target = torch.randint(0, 10, (shape[0], *shape[2:]), device=DEVICE)
    with fusedloss.backend(backend):
        loss = FL.cross_entropy(x, target, reduction=reduction)
    ref = F.cross_entropy(x, target, reduction=reduction)
    torch.testing.assert_close(loss, ref, equal_nan=True)
    if reduction != "none":
        loss.backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["neg_inf_logits", "target_at_neg_inf", "row_all_neg_inf", "huge_logits",
                                  "pos_inf_logit"])
def test_extreme_logits(case, dtype):
    x = 3 * torch.randn(8, 50, device=DEVICE)
    target = class_target(x.shape, ignore_fraction=0.0)
    big = 1e4 if dtype == torch.float16 else 1e30  # a 50-class row sum stays inside the float32 range
    if case == "neg_inf_logits":
        x[:, ::3] = float("-inf")
        target = (target // 3) * 3 + 1
    elif case == "target_at_neg_inf":
        x[0, target[0]] = float("-inf")
    elif case == "row_all_neg_inf":
        x[2] = float("-inf")
    elif case == "huge_logits":
        x[1] *= big
        x[4, 7] = big
    elif case == "pos_inf_logit":
        x[3, 5] = float("inf")
    x = x.to(dtype).requires_grad_()
    for smoothing in (0.0, 0.1):
        check_parity(FL.cross_entropy, F.cross_entropy, x, target, "triton", reduction="none",
                     label_smoothing=smoothing)


# ------------------------------------------------------------------ out-of-range targets


def test_out_of_range_target_gives_nan_rows():
    x = logits_of((5, 12), torch.float32)
    target = torch.tensor([1, 12, 3, -1, 4], device=DEVICE)
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(x, target, reduction="none")
        mean = FL.cross_entropy(x, target)
    assert torch.isnan(loss[[1, 3]]).all() and torch.isfinite(loss[[0, 2, 4]]).all()
    assert torch.isnan(mean)
    grad, = torch.autograd.grad(loss.sum(), x)
    assert torch.isnan(grad[[1, 3]]).all() and torch.isfinite(grad[[0, 2, 4]]).all()


@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
def test_out_of_range_target_debug_mode_raises_like_torch(fn, fusedloss_env):
    x = torch.randn(5, 12, device="cpu")
    target = torch.tensor([1, 12, 3, 0, 4])
    with pytest.raises(IndexError) as torch_error:
        getattr(F, fn)(x, target)
    fusedloss_env("FUSEDLOSS_DEBUG", "1")
    with fusedloss.backend("triton"), pytest.raises(IndexError) as our_error:
        getattr(FL, fn)(x.to(DEVICE), target.to(DEVICE))
    assert str(our_error.value) == str(torch_error.value)


# ------------------------------------------------------------------ bad input: torch's exception types


def bad_calls():
    x = torch.randn(4, 5)
    y = torch.randint(0, 5, (4,))
    return {
        "float_target_wrong_shape": (x, torch.rand(4, 3), {}),
        "int32_target": (x, y.int(), {}),
        "batch_mismatch": (x, y[:3], {}),
        "bad_reduction": (x, y, dict(reduction="average")),
        "weight_length": (x, y, dict(weight=torch.ones(4))),
        "weight_2d": (x, y, dict(weight=torch.ones(5, 1))),
        "weight_dtype": (x, y, dict(weight=torch.ones(5, dtype=torch.float64))),
        "spatial_target_mismatch": (torch.randn(2, 5, 3), torch.randint(0, 5, (2, 4)), {}),
        "2d_spatial_target_mismatch": (torch.randn(2, 5, 3, 4), torch.randint(0, 5, (2, 3, 5)), {}),
        "2d_spatial_target_ndim": (torch.randn(2, 5, 3, 4), torch.randint(0, 5, (2, 12)), {}),
        "1d_input_1d_target": (torch.randn(5), torch.randint(0, 5, (5,)), {}),
        "1d_input_other_1d_target": (torch.randn(5), torch.randint(0, 5, (3,)), {}),
        "2d_input_2d_target": (x, torch.randint(0, 5, (4, 2)), {}),
        "0d_input": (torch.tensor(1.0), torch.tensor(0), {}),
        "integer_input": (x.long(), y, {}),
        "2d_input_0d_target": (x, torch.tensor(1), {}),
        # (N, C, d1..dk) inputs run as nll_loss2d, whose kernels read int64 targets only
        "uint8_spatial_target": (torch.randn(2, 5, 3), torch.randint(0, 5, (2, 3), dtype=torch.uint8), {}),
        "uint8_2d_spatial_target": (torch.randn(2, 5, 3, 4), torch.randint(0, 5, (2, 3, 4), dtype=torch.uint8), {}),
    }


def bad_cross_entropy_calls():
    x = torch.randn(4, 5)
    y = torch.randint(0, 5, (4,))
    return {
        "smoothing_above_1": (x, y, dict(label_smoothing=1.5)),
        "prob_smoothing_above_1": (x, torch.rand(4, 5), dict(label_smoothing=1.01)),
        "prob_weight_length": (x, torch.rand(4, 5), dict(weight=torch.ones(3))),
        "prob_ignore_index": (x, torch.rand(4, 5), dict(ignore_index=2)),
        "prob_long_target": (x, torch.randint(0, 5, (4, 5)), {}),
        "prob_integer_input": (x.long(), torch.rand(4, 5), {}),
        # torch's smoothed 'mean' with class weights gathers them with the targets as indices: int64 only
        "uint8_target_weight_smoothing_mean": (x, y.to(torch.uint8), dict(weight=torch.rand(5), label_smoothing=0.1)),
    }


BAD_CASES = [("cross_entropy", case) for case in bad_cross_entropy_calls()] + [
    (fn, case) for fn in ("cross_entropy", "nll_loss") for case in bad_calls()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn,case", BAD_CASES, ids=str)
def test_bad_input_raises_torch_exception_type(fn, case, backend):
    calls = {**bad_calls(), **bad_cross_entropy_calls()} if fn == "cross_entropy" else bad_calls()
    x, target, kwargs = calls[case]
    x, target = x.to(DEVICE), target.to(DEVICE)
    kwargs = {k: (v.to(DEVICE) if torch.is_tensor(v) else v) for k, v in kwargs.items()}
    with pytest.raises(Exception) as torch_error:  # torch on the same device: CUDA raises some types differently
        getattr(F, fn)(x, target, **kwargs)
    with fusedloss.backend(backend), pytest.raises(Exception) as our_error:
        getattr(FL, fn)(x, target, **kwargs)
    assert type(our_error.value) is type(torch_error.value), (our_error.value, torch_error.value)


def test_bad_extras_raise_value_error():
    x, y = torch.randn(3, 4, device=DEVICE), torch.tensor([0, 1, 2], device=DEVICE)
    with pytest.raises(ValueError):
        FL.cross_entropy(x, y, softcap=0.0)
    with pytest.raises(ValueError):
        FL.cross_entropy(x, y, z_loss=-1.0)


# ------------------------------------------------------------------ determinism, gradcheck, legacy args


def test_deterministic_bitwise():
    x = logits_of((64, 3001), torch.bfloat16)
    target = class_target(x.shape)
    results = []
    for _ in range(2):
        with fusedloss.backend("triton"):
            loss = FL.cross_entropy(x, target, label_smoothing=0.1, z_loss=1e-4)
        grad, = torch.autograd.grad(loss, x)
        results.append((loss, grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("options", ["plain", "weight+smoothing+z+cap", "probability", "nll"])
def test_gradcheck_float64(options):
    x = torch.randn(4, 7, dtype=torch.float64, device=DEVICE, requires_grad=True)
    target = torch.tensor([0, 6, -100, 3], device=DEVICE)
    kwargs = {}
    fn = FL.cross_entropy
    if options == "weight+smoothing+z+cap":
        kwargs = dict(weight=torch.rand(7, dtype=torch.float64, device=DEVICE), label_smoothing=0.2,
                      z_loss=0.01, softcap=2.0, reduction="none")
    elif options == "probability":
        target = torch.softmax(torch.randn(4, 7, dtype=torch.float64, device=DEVICE), 1)
    elif options == "nll":
        fn = FL.nll_loss
    with fusedloss.backend("triton"):
        assert torch.autograd.gradcheck(lambda inp: fn(inp, target, **kwargs), (x,))




@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size_average,reduce", [(None, False), (False, None), (True, True), (False, True)])
def test_legacy_reduction_arguments(size_average, reduce, backend):
    x = logits_of((9, 11), torch.float32)
    target = class_target(x.shape)
    with pytest.warns(UserWarning):
        ref = F.cross_entropy(x, target, size_average=size_average, reduce=reduce)
    with backend_context(backend), pytest.warns(UserWarning):
        loss = FL.cross_entropy(x, target, size_average=size_average, reduce=reduce)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
def test_deprecated_elementwise_mean_is_mean(fn, backend):
    """torch still takes reduction='elementwise_mean' as 'mean' (with a deprecation warning); the Triton
    path once passed the name on and the kernel summed."""
    x = logits_of((9, 11), torch.float32)
    target = class_target(x.shape)
    with pytest.warns(UserWarning, match="elementwise_mean"):
        ref = getattr(F, fn)(x, target, reduction="elementwise_mean")
    with backend_context(backend), pytest.warns(UserWarning, match="elementwise_mean"):
        loss = getattr(FL, fn)(x, target, reduction="elementwise_mean")
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], torch.autograd.grad(ref, x)[0])


def test_no_gradient_work_without_grad():
    """Without a gradient the forward saves nothing and builds no graph (the kernel's SAVE_FOR_BACKWARD off)."""
    x = torch.randn(7, 30, device=DEVICE)
    target = class_target(x.shape)
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(x, target)
        with torch.no_grad():
            loss_no_grad = FL.cross_entropy(x.requires_grad_(), target)
    assert loss.grad_fn is None and loss_no_grad.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(x, target))
    torch.testing.assert_close(loss_no_grad, loss)


# ------------------------------------------------------------------ drop-in API


@pytest.mark.parametrize("module", ["CrossEntropyLoss", "NLLLoss"])
def test_module_drop_in(module):
    theirs_cls, ours_cls = getattr(torch.nn, module), getattr(FN, module)
    weight = torch.rand(13, device=DEVICE)
    theirs, ours = theirs_cls(weight=weight, ignore_index=2, reduction="sum"), ours_cls(weight=weight, ignore_index=2,
                                                                                     reduction="sum")
    assert isinstance(ours, theirs_cls)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(10, 13, device=DEVICE)
    if module == "NLLLoss":
        x = x.log_softmax(1)
    x.requires_grad_()
    target = class_target(x.shape, ignore_index=2)
    with fusedloss.backend("triton"):
        out = ours(x, target)
    torch.testing.assert_close(out, theirs(x, target), rtol=2e-5, atol=1e-5)


def test_module_extras():
    module = FN.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-3, softcap=30.0)
    assert "z_loss=0.001" in repr(module) and "softcap=30.0" in repr(module)
    x = logits_of((6, 20), torch.float32)
    target = class_target(x.shape)
    with fusedloss.backend("triton"):
        got = module(x, target)
    expected = eager_extras(x, target, label_smoothing=0.1, z_loss=1e-3, softcap=30.0)
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=1e-6)


def test_option_grid_covers_every_combination():
    """Every combination of the kernel's switches, once, on one small shape (float32, triton path)."""
    shape = (9, 37)
    for weighted, smoothing, z, cap, reduction, prob in itertools.product(
            [False, True], [0.0, 0.2], [0.0, 1e-3], [None, 5.0], REDUCTIONS, [False, True]):
        kwargs = dict(reduction=reduction, label_smoothing=smoothing, z_loss=z, softcap=cap)
        if weighted:
            kwargs["weight"] = torch.rand(shape[1], device=DEVICE) + 0.1
        x = logits_of(shape, torch.float32)
        target = probability_targets(shape) if prob else class_target(shape)
        x64 = x.detach().double().requires_grad_()
        k64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
        ref = eager_extras(x64, target.double() if prob else target, **k64)
        ref_grad, = torch.autograd.grad(ref.sum(), x64)
        with fusedloss.backend("triton"):
            loss = FL.cross_entropy(x, target, **kwargs)
        grad, = torch.autograd.grad(loss.sum(), x)
        assert_matches(loss, ref, torch.float32, str(kwargs))
        assert_matches(grad, ref_grad, torch.float32, str(kwargs))


# ------------------------------------------------------------------ grad_in_forward (single-pass mode)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("grad_scale", [1.0, 2.0**16, 1 / 3])
@pytest.mark.parametrize("options", ["plain", "weight+smoothing+ignore", "z+cap", "probability+weight"])
def test_grad_in_forward(options, grad_scale, reduction, inplace):
    """Gradient written in the forward for grad_output 1, rescaled on the device otherwise."""
    shape = (23, 1031)
    kwargs = dict(reduction=reduction)
    if "weight" in options:
        kwargs["weight"] = torch.rand(shape[1], device=DEVICE) + 0.1
    if "smoothing" in options:
        kwargs["label_smoothing"] = 0.1
    if "z" in options:
        kwargs.update(z_loss=1e-3, softcap=3.0)
    target = probability_targets(shape) if "probability" in options else class_target(shape)
    x = logits_of(shape, torch.float32)
    x64 = x.detach().double().requires_grad_()
    k64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
    ref = eager_extras(x64, target.double() if target.is_floating_point() else target, **k64)
    upstream = torch.full(ref.shape, grad_scale, dtype=torch.float64, device=DEVICE)
    if reduction == "none":
        upstream[::2] = 0.5  # a per-row grad_output: some rows 1 would be skipped, these are not
    ref_grad, = torch.autograd.grad(ref, x64, upstream)
    logits = x.detach().clone().requires_grad_()
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(logits, target, grad_in_forward=True, inplace_backward=inplace, **kwargs)
    assert_matches(loss, ref, torch.float32, "loss")
    loss.backward(upstream.float())
    assert_matches(logits.grad, ref_grad, torch.float32, "grad")
    if inplace:
        assert logits.grad.data_ptr() == logits.data_ptr()


def test_grad_in_forward_retain_graph_backward_twice():
    x = logits_of((9, 77), torch.float32)
    target = class_target(x.shape)
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(x, target, label_smoothing=0.1, grad_in_forward=True)
    first, = torch.autograd.grad(loss * 3.0, x, retain_graph=True)
    second, = torch.autograd.grad(loss * 0.5, x)  # recomputed: the first backward consumed the buffer
    expected, = torch.autograd.grad(F.cross_entropy(x, target, label_smoothing=0.1), x)
    torch.testing.assert_close(first, 3.0 * expected, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(second, 0.5 * expected, rtol=2e-5, atol=1e-7)
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(x.detach().clone().requires_grad_(), target, grad_in_forward=True,
                                inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def test_grad_in_forward_no_grad_is_plain_forward():
    x = torch.randn(5, 40, device=DEVICE)
    target = class_target(x.shape)
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(x, target, grad_in_forward=True, inplace_backward=True)
    torch.testing.assert_close(loss, F.cross_entropy(x, target))
    assert torch.isfinite(x).all() and x.abs().max() > 0.5, "no gradient written without autograd"


# ------------------------------------------------------------------ gradients of probability targets


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 1000), (5, 4099), (13, 7, 6), (11,)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", ["plain", "weight+smoothing", "z+cap", "target only"])
def test_probability_target_gradient(shape, dtype, reduction, options):
    """Soft labels that require grad (mutual learning, a trainable teacher): d loss / d target fused in the
    backward's pass, against torch (float64 and the same dtype), with or without the logits' gradient."""
    kwargs = dict(reduction=reduction)
    if "weight" in options:
        kwargs.update(weight=(torch.rand(n_classes(shape), device=DEVICE) + 0.1).to(dtype), label_smoothing=0.15)
    if "z" in options:
        kwargs.update(z_loss=1e-2, softcap=2.5)
    x = logits_of(shape, dtype).requires_grad_(options != "target only")
    target = probability_targets(shape, dtype).requires_grad_()
    diff = [target] if options == "target only" else [x, target]

    def grads(fn, x, target, upstream, **kw):
        loss = fn(x, target, **kw)
        return loss, torch.autograd.grad(loss, [t for t in (x, target) if t.requires_grad], upstream.to(loss.dtype))

    x64, t64 = (t.detach().double().requires_grad_(t.requires_grad) for t in (x, target))
    k64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
    with torch.no_grad():
        shape = eager_extras(x64, t64, **k64).shape
    upstream = torch.rand(shape, dtype=torch.float64, device=DEVICE) + 0.5
    ref, ref_grads = grads(eager_extras, x64, t64, upstream, **k64)
    same, same_grads = grads(eager_extras, x, target, upstream, **kwargs)
    with fusedloss.backend("triton"):
        loss, our_grads = grads(FL.cross_entropy, x, target, upstream, **kwargs)
    assert len(our_grads) == len(diff)
    assert_matches_torch(loss, same, ref, dtype, "loss")
    for ours, theirs, reference, what in zip(our_grads, same_grads, ref_grads, ["grad", "target grad"][-len(diff):]):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        assert_matches_torch(ours, theirs, reference, dtype, what)


def test_probability_target_gradient_non_contiguous_and_gradcheck():
    x = torch.randn(9, 13, dtype=torch.float64, device=DEVICE, requires_grad=True)
    target = strided_like(torch.softmax(torch.randn(9, 13, dtype=torch.float64, device=DEVICE), 1),
                          "transposed").requires_grad_()
    assert not target.is_contiguous()
    with fusedloss.backend("triton"):
        assert torch.autograd.gradcheck(lambda a, t: FL.cross_entropy(a, t, label_smoothing=0.1, reduction="sum"),
                                        (x, target))


# ------------------------------------------------------------------ exact where torch is exact


CONFIDENT = [(30.0, 8.0), (30.0, 14.0), (300.0, 3.0), (1e4, 20.0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("base,gap", CONFIDENT, ids=str)
@pytest.mark.parametrize("options", ["plain", "smoothing", "probability", "z_loss", "softcap", "nll"])
def test_confident_rows_keep_their_precision(base, gap, options, dtype):
    """Rows whose target is the largest logit by far: the loss is (m - x_y) + log(sum exp(x - m)), as torch
    computes it, not lse - x_y (which cancels: 0.0 instead of 8.3e-7 at base 30, gap 14). No further from
    float64 than torch at the same dtype, for every option (every base is within float16's range)."""
    x = torch.tensor([[base, base - gap], [base - gap, base], [-base, -base - gap]], device=DEVICE).to(dtype)
    target = torch.tensor([0, 1, 0], device=DEVICE)
    kwargs = {"reduction": "none"}
    fn = FL.cross_entropy
    if options == "smoothing":
        kwargs["label_smoothing"] = 0.05
    elif options == "probability":
        target = torch.nn.functional.one_hot(target, 2).to(dtype)
    elif options == "z_loss":
        kwargs["z_loss"] = 1e-6
    elif options == "softcap":
        kwargs["softcap"] = 2.0 * base
    elif options == "nll":
        fn = FL.nll_loss
        x = (x.double() - x.double().logsumexp(1, keepdim=True)).to(dtype)
    x = x.requires_grad_()
    reference_fn = F.nll_loss if options == "nll" else eager_extras
    ref = reference_fn(x.detach().double(), target.double() if target.is_floating_point() else target, **kwargs)
    same = reference_fn(x.detach(), target, **kwargs)
    with fusedloss.backend("triton"):
        loss = fn(x, target, **kwargs)
    # these losses are tiny (8e-7) next to lse (30-1e4): what is left of them is a few ulp of log(1 + e),
    # so "as good as torch" is the measure, element by element, plus two ulp of the loss itself
    error, torch_error = (loss.double() - ref).abs(), (same.double() - ref).abs()
    assert loss.dtype == same.dtype and torch.isfinite(loss).all()
    assert (error <= 2 * torch_error + 2 * torch.finfo(dtype).eps * ref.abs() + 1e-30).all(), (loss, same, ref)


@pytest.mark.parametrize("offset", [-1279.23, 5000.0])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"grad_in_forward": True}, {"z_loss": 1e-4},
                                     {"probability": True}], ids=str)
def test_large_logits_keep_the_gradient_precise(offset, options):
    """Logits far from 0 (a large common offset, which the softmax ignores) in float32: the gradient's
    p = exp(x - lse) with lse rounded to float32 lost |lse| * 2**-24 relative (3e-5 at 1279, 1.5e-4 at 5000;
    torch 1e-7, from (x - m) - log d). The forward keeps lse's rounding error beside it for the backward."""
    options = dict(options)
    x = (3 * torch.randn(8, 100, device=DEVICE) + offset).requires_grad_()
    target = probability_targets(x.shape) if options.pop("probability", False) else class_target(x.shape)
    check_parity(FL.cross_entropy, eager_extras, x, target, "triton", **options)


@pytest.mark.parametrize("weight", [False, True])
def test_exact_zero_gradient_with_one_class(weight):
    """C = 1 with smoothing: torch's (1 - eps)(p - y) + eps (p - 1/C) is exactly 0; so is fusedloss's
    (p - 0.95 - 0.05 in float32 would leave 1.1e-8)."""
    x = torch.randn(6, 1, device=DEVICE, requires_grad=True)
    target = torch.zeros(6, dtype=torch.long, device=DEVICE)
    kwargs = dict(label_smoothing=0.05, weight=torch.full((1,), 0.7, device=DEVICE) if weight else None)
    expected, = torch.autograd.grad(F.cross_entropy(x, target, **kwargs), x)
    with fusedloss.backend("triton"):
        grad, = torch.autograd.grad(FL.cross_entropy(x, target, **kwargs), x)
    assert torch.equal(expected, torch.zeros_like(expected))
    assert torch.equal(grad, expected)


# ------------------------------------------------------------------ one NaN behaviour for out-of-range targets


@pytest.mark.parametrize("grad_in_forward", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_out_of_range_target_nan_is_the_same_in_both_modes(reduction, grad_in_forward):
    """torch raises on the host; fusedloss (no sync) poisons what the bad row reaches: its own loss and
    gradient row for 'sum' and 'none'; for 'mean' the denominator, so the loss and every counted row's
    gradient (ignored rows keep their 0), in the default mode and with grad_in_forward alike."""
    x = logits_of((5, 12), torch.float32)
    target = torch.tensor([1, 12, 3, -100, 4], device=DEVICE)
    with fusedloss.backend("triton"):
        loss = FL.cross_entropy(x, target, reduction=reduction, grad_in_forward=grad_in_forward)
    grad, = torch.autograd.grad(loss.sum(), x)
    if reduction == "mean":
        assert torch.isnan(loss) and torch.isnan(grad[[0, 1, 2, 4]]).all() and (grad[3] == 0).all()
    else:
        assert torch.isnan(loss).any() and torch.isnan(grad[1]).all()
        assert torch.isfinite(grad[[0, 2, 3, 4]]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_dtype_float32_from_16_bit_logits(reduction, backend):
    """loss_dtype=float32: what cross_entropy(logits.float()) gives (Hugging Face's causal-LM loss), the
    gradient in the logits' dtype, and no float32 copy of the logits on the Triton path."""
    x = logits_of((37, 1000), torch.bfloat16)
    target = class_target(x.shape)
    expected = F.cross_entropy(x.float(), target, reduction=reduction, label_smoothing=0.1)
    expected_grad, = torch.autograd.grad(expected.sum(), x)
    with backend_context(backend):
        loss = FL.cross_entropy(x, target, reduction=reduction, label_smoothing=0.1, loss_dtype=torch.float32)
    grad, = torch.autograd.grad(loss.sum(), x)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, expected, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=8e-3, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_dtype", [torch.int64, torch.bool, torch.complex64, "float32", torch.float32.itemsize],
                         ids=str)
@pytest.mark.parametrize("fn", ["cross_entropy", "linear_cross_entropy"])
def test_loss_dtype_must_be_floating(fn, loss_dtype, backend):
    """Only a floating loss_dtype is served: an integer one once returned tensor(1) for a loss of 1.87 on
    the Triton path (and raised an error about log_softmax on the eager one); both raise, naming it."""
    x = torch.randn(4, 6, device=DEVICE, requires_grad=True)
    target = torch.randint(0, 6, (4,), device=DEVICE)
    args = (x, target) if fn == "cross_entropy" else (x, torch.randn(5, 6, device=DEVICE), target[:4] % 5)
    with backend_context(backend), pytest.raises(TypeError, match="loss_dtype"):
        getattr(FL, fn)(*args, loss_dtype=loss_dtype)
    module = FN.CrossEntropyLoss if fn == "cross_entropy" else FN.LinearCrossEntropyLoss
    with pytest.raises(TypeError, match="loss_dtype"):
        module(loss_dtype=loss_dtype) if fn == "cross_entropy" else module(6, 5, loss_dtype=loss_dtype)
