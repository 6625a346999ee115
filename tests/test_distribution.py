"""Distillation and token log-probabilities over large vocabularies: jsd_loss (forward/reverse KL, the
generalized JSD, a top-k teacher), log_probs (+ entropy), and their LM-head forms linear_jsd_loss and
linear_log_probs (the logits never whole).

The reference is the definition in torch ops (fusedloss/ops/_eager.py, TRL's formulas; tests/test_trl.py
checks them against TRL itself), in float64; in 16 bits also "no further from it than the same formula
evaluated by torch at that dtype". Shapes and why:
  (7, 1300)      the vocabulary crosses the interpreter's 512-element tiles (1300 = 2 x 512 + 276)
  (3, 5, 301)    rows from two leading dimensions, an odd vocabulary
  (1, 9)         one row, a vocabulary in one tile
  "strided"      (6, 700) views of transposed buffers (rows addressed through strides)
"""
import math

import pytest
import torch

import fusedloss
import fusedloss.functional as FL
import fusedloss.nn as FN
from helpers import (ALL_STATS, DEVICE, AllocationRecorder, assert_matches, assert_matches_torch, assert_stats_match,
                     assert_twice_rounded_matches_torch, backend_context, class_labels, class_targets, max_error,
                     normal, stats_reference, strided_like)

SHAPES = [(7, 1300), (3, 5, 301), (1, 9), "strided"]
BETAS = [0.0, 0.3, 1.0]
REDUCTIONS = ["batchmean", "sum", "mean", "none"]


def logits(shape, scale=2.0):
    if shape == "strided":
        return strided_like(scale * normal((6, 700)), "transposed")
    return scale * normal(shape)


def labels_for(x, ignore=True):
    return class_labels(x.shape[:-1], x.shape[-1], ignore)


def eager(fn):
    def call(*args, **kwargs):
        with fusedloss.backend("torch"):
            return fn(*args, **kwargs)
    return call


def as64(t):
    if not torch.is_tensor(t) or not t.is_floating_point():
        return t
    return t.detach().double().requires_grad_(t.requires_grad)


def parity(fn, args, kwargs, upstream_scale=0.37, twice_rounded=False):
    """fusedloss's Triton path vs the float64 definition (and, in 16 bits, vs the definition evaluated
    at that dtype): the output and the gradient of every input that requires grad."""
    dtype = args[0].dtype
    args64 = [as64(a) for a in args]
    kwargs64 = {k: as64(v) for k, v in kwargs.items()}
    diff = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    diff64 = [a for a in args64 if torch.is_tensor(a) and a.requires_grad]

    def run(backend, inputs, kw, wrt):
        with backend_context(backend):
            out = fn(*inputs, **kw)
        out = torch.stack(out) if isinstance(out, tuple) else out
        return out, wrt

    ref, _ = run("torch", args64, kwargs64, diff64)
    upstream = (torch.rand(ref.shape, dtype=torch.float64, device=DEVICE) + 0.5) * upstream_scale
    ref_grads = torch.autograd.grad(ref, diff64, upstream) if diff64 else []
    out, _ = run("triton", args, kwargs, diff)
    grads = torch.autograd.grad(out, diff, upstream.to(out.dtype)) if diff else []
    if dtype in (torch.bfloat16, torch.float16):
        same, _ = run("torch", args, kwargs, diff)
        same_grads = torch.autograd.grad(same, diff, upstream.to(same.dtype)) if diff else []
        assert_matches_torch(out, same, ref, dtype, "output")
        check = assert_twice_rounded_matches_torch if twice_rounded else assert_matches_torch
        for i, (g, s, r) in enumerate(zip(grads, same_grads, ref_grads)):
            check(g, s, r, dtype, f"grad {i}")
    else:
        assert_matches(out, ref, dtype, "output")
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            assert_matches(g, r, dtype, f"grad {i}")
    return out, grads


# ------------------------------------------------------------------ jsd_loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_jsd_parity(shape, beta, reduction):
    """float32, both logits differentiated, labels with an ignored row, T = 2."""
    x = logits(shape).float().requires_grad_()
    t = logits(shape).float().requires_grad_()
    parity(FL.jsd_loss, [x, t, labels_for(x)], dict(beta=beta, temperature=2.0, reduction=reduction))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_jsd_parity_16_bit(dtype, beta, reduction):
    """16-bit logits, a frozen teacher: within the tolerance of float64, no further from it than the
    formula in torch ops at that dtype."""
    x = logits((7, 1300)).to(dtype).requires_grad_()
    t = logits((7, 1300)).to(dtype)
    parity(FL.jsd_loss, [x, t], dict(beta=beta, reduction=reduction))


@pytest.mark.parametrize("grad_in_forward", [False, True])
@pytest.mark.parametrize("upstream_scale", [1.0, 0.37])
def test_jsd_grad_in_forward(grad_in_forward, upstream_scale):
    """The gradient written in the forward for grad_output 1 and rescaled when it is not: the same values."""
    x = logits((5, 700)).float().requires_grad_()
    t = logits((5, 700)).float().requires_grad_()
    parity(lambda *a, **k: FL.jsd_loss(*a, grad_in_forward=grad_in_forward, **k), [x, t, labels_for(x)],
           dict(beta=0.4), upstream_scale=upstream_scale, twice_rounded=True)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_jsd_without_labels_counts_every_row(backend):
    """Without labels every row counts: 'mean' over rows x V; 'batchmean' over the first dimension, as
    kl_div's 'batchmean' and TRL's (B of (B, L, V) logits, not B x L)."""
    x, t = logits((3, 4, 50)).float(), logits((3, 4, 50)).float()
    with fusedloss.backend(backend):
        batchmean = FL.jsd_loss(x, t, beta=0.0)
        total = FL.jsd_loss(x, t, beta=0.0, reduction="sum")
        mean = FL.jsd_loss(x, t, beta=0.0, reduction="mean")
        rows = FL.jsd_loss(x, t, beta=0.0, reduction="none")
    assert rows.shape == (3, 4)
    torch.testing.assert_close(batchmean, total / 3)
    torch.testing.assert_close(batchmean, torch.nn.functional.kl_div(
        x.log_softmax(-1), t.log_softmax(-1), reduction="batchmean", log_target=True))
    torch.testing.assert_close(mean, total / (12 * 50))
    torch.testing.assert_close(total, rows.sum())
    expected = torch.nn.functional.kl_div(x.log_softmax(-1), t.log_softmax(-1), reduction="sum", log_target=True)
    torch.testing.assert_close(total, expected)


@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_jsd_all_rows_ignored(grad_in_forward):
    """Nothing counted: 'batchmean' 0 with zero gradients (TRL's: its denominator is at least 1, so a fully
    truncated batch does not poison training), 'mean' 0 / 0 = NaN (TRL's jsd.mean() of nothing), 'sum' 0."""
    x = logits((4, 30)).float().requires_grad_()
    t = logits((4, 30)).float()
    y = torch.full((4,), -100, device=DEVICE)
    for reduction in ("batchmean", "mean", "sum"):
        with fusedloss.backend("triton"):
            loss = FL.jsd_loss(x, t, y, reduction=reduction, grad_in_forward=grad_in_forward)
        grad, = torch.autograd.grad(loss, x)
        if reduction == "mean":
            assert math.isnan(loss.item())
        else:
            assert loss.item() == 0 and torch.equal(grad, torch.zeros_like(grad)), reduction


@pytest.mark.parametrize("beta", BETAS)
def test_jsd_extreme_logits(beta):
    """|x| ~ 1e4, -inf entries (a masked vocabulary), a one-hot teacher: finite where the math is, as the
    float64 definition; identical distributions give 0 to rounding, never below it beyond rounding."""
    x = 1e4 * torch.randn(4, 600, device=DEVICE)
    t = x + torch.randn(4, 600, device=DEVICE)
    x[:, 500:] = -math.inf  # the same classes masked in both
    t[:, 500:] = -math.inf
    t[3] = -math.inf  # a one-hot teacher
    t[3, 7] = 0.0
    for student, teacher in ((x, t), (x, x.clone())):
        s = student.clone().requires_grad_()
        with fusedloss.backend("triton"):
            rows = FL.jsd_loss(s, teacher, beta=beta, reduction="none")
        grad, = torch.autograd.grad(rows.sum(), s)
        s64 = student.double().requires_grad_()
        with fusedloss.backend("torch"):
            exact = FL.jsd_loss(s64, teacher.double(), beta=beta, reduction="none")
        exact_grad, = torch.autograd.grad(exact.sum(), s64)
        finite = torch.isfinite(exact)
        assert torch.equal(torch.isfinite(rows), finite)
        torch.testing.assert_close(rows[finite].double(), exact[finite], rtol=2e-5, atol=1e-4)
        torch.testing.assert_close(grad[finite].double(), exact_grad[finite], rtol=2e-5, atol=1e-6)
        if teacher is not t:
            assert (rows.abs() <= 1e-5).all() and (rows >= -1e-6).all(), rows


def test_jsd_top_k_teacher():
    """Offline distillation from a stored top-k: forward KL over the teacher's support, the student's
    softmax over its whole vocabulary; the definition's gradient."""
    x = logits((6, 900)).float().requires_grad_()
    values, classes = logits((6, 900)).float().log_softmax(-1).topk(11)
    for reduction in REDUCTIONS:
        parity(lambda *a, **k: FL.jsd_loss(a[0], (a[1], a[2]), **k), [x, values, classes],
               dict(beta=0.0, temperature=1.5, reduction=reduction))


def test_jsd_top_k_bad_classes_and_beta(fusedloss_env):
    x = logits((3, 40)).float()
    values, classes = logits((3, 40)).float().log_softmax(-1).topk(4)
    with pytest.raises(ValueError, match="beta=0"):
        FL.jsd_loss(x, (values, classes), beta=0.5)
    bad = classes.clone()
    bad[1, 2] = 40

    def rows_of(x, values, classes):  # compiled: no host check of the classes (as on a GPU): NaN for the row
        return FL.jsd_loss(x, (values, classes), beta=0.0, reduction="none")

    with fusedloss.backend("triton"):
        rows = torch.compile(rows_of, backend="aot_eager", fullgraph=True)(x, values, bad)
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2]]).all()
    fusedloss_env("FUSEDLOSS_DEBUG", "1")
    with fusedloss.backend("triton"), pytest.raises(IndexError, match="40"):
        FL.jsd_loss(x, (values, bad), beta=0.0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("call,error", [
    (lambda x, t, y: FL.jsd_loss(x, t[:, :-1]), ValueError),
    (lambda x, t, y: FL.jsd_loss(x, t, beta=1.5), ValueError),
    (lambda x, t, y: FL.jsd_loss(x, t, beta=-0.1), ValueError),
    (lambda x, t, y: FL.jsd_loss(x, t, temperature=0.0), ValueError),
    (lambda x, t, y: FL.jsd_loss(x, t, temperature=-2.0), ValueError),
    (lambda x, t, y: FL.jsd_loss(x, t, reduction="average"), ValueError),
    (lambda x, t, y: FL.jsd_loss(x, t, y.float()), RuntimeError),
    (lambda x, t, y: FL.jsd_loss(x, t, y[:-1]), ValueError),
    (lambda x, t, y: FL.jsd_loss(x, t, loss_dtype=torch.int64), TypeError),
    (lambda x, t, y: FL.log_probs(x, y.float()), RuntimeError),
    (lambda x, t, y: FL.log_probs(x, y[:, None]), ValueError),
    (lambda x, t, y: FL.log_probs(x, y, temperature=0), ValueError),
    (lambda x, t, y: FL.log_probs(x, y, dtype=torch.int32), TypeError),
    (lambda x, t, y: FL.log_probs(x[:, :0], y), ValueError),
    (lambda x, t, y: FL.log_probs(x, y, dtype=torch.int64), (TypeError, "^dtype must be")),
    (lambda x, t, y: FL.linear_jsd_loss(x, t, x, t, options={"batch_chunk_size": 1}),
     (AttributeError, "^linear_jsd_loss: options")),
    (lambda x, t, y: FL.linear_log_probs(x, t, y, options=3), (AttributeError, "^linear_log_probs: options")),
    (lambda x, t, y: FN.LinearJSDLoss(hard_weight=math.nan), (ValueError, "hard_weight")),
    (lambda x, t, y: FN.LinearJSDLoss(soft_weight=math.inf), (ValueError, "soft_weight")),
    (lambda x, t, y: FN.LinearJSDLoss(options=5), (AttributeError, "^LinearJSDLoss: options")),
], ids=range(20))
def test_bad_input(call, error, backend):
    """Each bad argument raises torch's exception type, the message naming the function and argument."""
    x, t = logits((4, 10)).float(), logits((4, 10)).float()
    y = torch.randint(0, 10, (4,), device=DEVICE)
    error, message = error if isinstance(error, tuple) else (error, None)
    with fusedloss.backend(backend), pytest.raises(error, match=message):
        call(x, t, y)


def test_deterministic_bitwise():
    x = logits((9, 1300)).float().requires_grad_()
    t = logits((9, 1300)).float().requires_grad_()
    results = []
    for _ in range(2):
        with fusedloss.backend("triton"):
            loss = FL.jsd_loss(x, t, beta=0.3)
        results.append((loss, *torch.autograd.grad(loss, (x, t))))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_jsd_module():
    x = logits((5, 40)).float().requires_grad_()
    t = logits((5, 40)).float()
    module = FN.JSDLoss(beta=0.2, temperature=1.5, reduction="sum")
    assert "beta=0.2" in repr(module)
    with fusedloss.backend("triton"):
        loss = module(x, t)
    torch.testing.assert_close(loss, eager(FL.jsd_loss)(x, t, beta=0.2, temperature=1.5, reduction="sum"))


# ------------------------------------------------------------------ log_probs


@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_log_probs_parity(shape, temperature, with_entropy):
    x = logits(shape).float().requires_grad_()
    parity(FL.log_probs, [x, labels_for(x)], dict(temperature=temperature, with_entropy=with_entropy))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_log_probs_16_bit(dtype):
    x = logits((7, 1300)).to(dtype).requires_grad_()
    parity(FL.log_probs, [x, labels_for(x)], dict(with_entropy=True))


def test_log_probs_float32_from_16_bit_logits():
    """dtype=float32: log_softmax(x.float())'s values, from the 16-bit logits as they are."""
    x = logits((5, 700)).to(torch.bfloat16).requires_grad_()
    y = labels_for(x, ignore=False)
    with fusedloss.backend("triton"):
        lp, entropy = FL.log_probs(x, y, with_entropy=True, dtype=torch.float32)
    assert lp.dtype == entropy.dtype == torch.float32
    reference = x.detach().float().log_softmax(-1)
    torch.testing.assert_close(lp, reference.gather(-1, y[:, None])[:, 0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy, -(reference.exp() * reference).sum(-1), rtol=1e-5, atol=1e-5)
    grad, = torch.autograd.grad(lp.sum() + entropy.sum(), x)
    assert grad.dtype == torch.bfloat16


def test_log_probs_ignored_and_bad_tokens():
    """Ignored rows: 0 and no gradient for both outputs; a token outside [0, V) where values cannot be checked
    on the host without a sync (a GPU; here torch.compile, which cannot branch on them either): NaN."""
    x = logits((4, 20)).float().requires_grad_()
    y = torch.tensor([3, -100, 25, 0], device=DEVICE)

    def both(x, y):
        return FL.log_probs(x, y, with_entropy=True)

    with fusedloss.backend("triton"):
        lp, entropy = torch.compile(both, backend="aot_eager", fullgraph=True)(x, y)
    grad, = torch.autograd.grad(lp.sum() + entropy.sum(), x)
    assert lp[1] == 0 and entropy[1] == 0 and torch.equal(grad[1], torch.zeros_like(grad[1]))
    assert torch.isnan(lp[2]) and torch.isnan(grad[2]).all()
    assert torch.isfinite(lp[[0, 3]]).all() and torch.isfinite(grad[[0, 3]]).all()


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU tensors: on a GPU the check would synchronise (NaN rows there)")
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("fn", ["log_probs", "linear_log_probs", "jsd_loss top-k", "linear_jsd_loss labels"])
def test_out_of_range_classes_raise_on_cpu(fn, backend):
    """A token, top-k class or hard label outside [0, V) (not ignore_index): IndexError naming it on CPU
    tensors, on both backends (the check costs no GPU sync there), where NaN rows would hide the bug."""
    x, w = logits((4, 20)).float(), logits((20, 6)).float()
    h = logits((4, 6)).float()
    bad = torch.tensor([3, -100, 25, 0], device=DEVICE)
    calls = {
        "log_probs": (lambda: FL.log_probs(x, bad), "tokens holds 25"),
        "linear_log_probs": (lambda: FL.linear_log_probs(h, w, bad), "tokens holds 25"),
        "jsd_loss top-k": (lambda: FL.jsd_loss(x, (x[:, :3].log_softmax(-1), torch.tensor(
            [[0, 1, 2]] * 3 + [[0, 1, 20]], device=DEVICE)), beta=0.0), "classes hold 20"),
        "linear_jsd_loss labels": (lambda: FL.linear_jsd_loss(h, w, h, w, bad, hard_weight=0.5), "labels holds 25"),
    }
    call, message = calls[fn]
    with fusedloss.backend(backend), pytest.raises(IndexError, match=message):
        call()


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32], ids=str)
def test_log_probs_tokens_of_any_integer_width(dtype, backend):
    """uint8/int16/int32 tokens: the same values as int64 tokens on both backends (the eager path's gather
    once raised 'Expected dtype int32/int64' for uint8)."""
    x = logits((5, 30)).float()
    y = torch.tensor([3, 0, 29, 7, 12], device=DEVICE)
    with fusedloss.backend(backend):
        got = FL.log_probs(x, y.to(dtype), with_entropy=True)
        expected = FL.log_probs(x, y, with_entropy=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("who", ["student", "teacher"])
def test_non_finite_logit_makes_its_row_nan(who, beta, bad, backend):
    """One NaN or +inf logit, in the student's row or the teacher's: that row's loss and gradient NaN (it
    once gave 0 and no gradient: a diverged teacher silently stopped teaching), the other rows finite."""
    s, t = logits((3, 600)).float(), logits((3, 600)).float()
    (s if who == "student" else t)[1, 577] = bad
    s.requires_grad_()
    with fusedloss.backend(backend):
        rows = FL.jsd_loss(s, t, beta=beta, reduction="none")
    grad, = torch.autograd.grad(rows.sum(), s)
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2]]).all(), rows
    assert torch.isnan(grad[1]).any() and torch.isfinite(grad[[0, 2]]).all()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_nan_top_k_log_probability_makes_its_row_nan(backend):
    x = logits((3, 40)).float()
    values, classes = logits((3, 40)).float().log_softmax(-1).topk(4)
    values[1, 2] = math.nan
    with fusedloss.backend(backend):
        rows = FL.jsd_loss(x, (values, classes), beta=0.0, reduction="none")
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2]]).all()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_ignored_rows_of_minus_inf_get_no_gradient(backend):
    """An ignored row whose logits are all -inf (a padded position): exactly 0 gradient for the student
    and the teacher (its softmax is NaN; it once sent NaN back), log_probs and jsd_loss alike."""
    x = logits((3, 30)).float()
    x[1] = -math.inf
    labels = torch.tensor([1, -100, 2], device=DEVICE)
    with fusedloss.backend(backend):
        s = x.clone().requires_grad_()
        lp, entropy = FL.log_probs(s, labels, with_entropy=True)
        grad, = torch.autograd.grad(lp.sum() + entropy.sum(), s)
        assert torch.equal(grad[1], torch.zeros_like(grad[1])) and torch.isfinite(grad).all()
        for beta in BETAS:
            s, t = x.clone().requires_grad_(), x.flip(0).clone().requires_grad_()
            grads = torch.autograd.grad(FL.jsd_loss(s, t, labels, beta=beta), (s, t))
            for g in grads:
                assert torch.equal(g[1], torch.zeros_like(g[1])) and torch.isfinite(g).all(), beta
        values, classes = x.log_softmax(-1).topk(3)
        classes[1] = -5  # an ignored row's classes are not read
        s = x.clone().requires_grad_()
        grad, = torch.autograd.grad(FL.jsd_loss(s, (values, classes), labels, beta=0.0), s)
        assert torch.equal(grad[1], torch.zeros_like(grad[1])) and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_debug_mode_raises_for_bad_classes(backend, fusedloss_env):
    """FUSEDLOSS_DEBUG=1: IndexError for a top-k class or a token outside [0, V), on both backends; an
    ignored row's classes are not checked."""
    x = logits((3, 6)).float()
    values, classes = x.log_softmax(-1).topk(2)
    classes[1, 0] = -1
    fusedloss_env("FUSEDLOSS_DEBUG", "1")
    with fusedloss.backend(backend):
        rows = FL.jsd_loss(x, (values, classes), torch.tensor([1, -100, 2], device=DEVICE), beta=0.0,
                           reduction="none")
        assert rows[1] == 0 and torch.isfinite(rows).all()
        with pytest.raises(IndexError, match="-1"):
            FL.jsd_loss(x, (values, classes), beta=0.0)
        with pytest.raises(IndexError, match="7"):
            FL.log_probs(x, torch.tensor([1, 7, 2], device=DEVICE))
        with pytest.raises(IndexError, match="7"):
            FL.linear_log_probs(x, torch.eye(6, device=DEVICE), torch.tensor([1, 7, 2], device=DEVICE))


def test_torch_backend_computes_16_bit_in_float32():
    """The eager backend (CPU's default) computes 16-bit logits in float32 as the kernels do: identical
    bfloat16 student and teacher give 0 to float32 rounding on both backends (in bfloat16 math: 1e-2)."""
    z = (30 * torch.randn(16, 64, device=DEVICE)).bfloat16()
    for backend in ("triton", "torch"):
        with fusedloss.backend(backend):
            rows = FL.jsd_loss(z, z.clone(), beta=0.5, temperature=0.3, reduction="none")
        assert rows.dtype == torch.bfloat16 and rows.float().abs().max() < 1e-6, backend


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_nan_logit_makes_its_row_nan(backend):
    """A NaN logit (student or teacher) makes its row's loss NaN and leaves the other rows as they were,
    in the kernel and in the torch ops alike: a NaN never hides behind a zero probability."""
    x, t = logits((4, 700)).float(), logits((4, 700)).float()
    y = torch.tensor([5, 6, 7, 8], device=DEVICE)
    bad_x, bad_t = x.clone(), t.clone()
    bad_x[1, 650] = math.nan
    bad_t[2, 3] = math.nan
    with fusedloss.backend(backend):
        for beta in BETAS:
            clean = FL.jsd_loss(x, t, beta=beta, reduction="none")
            rows = FL.jsd_loss(bad_x, bad_t, beta=beta, reduction="none")
            assert torch.isnan(rows[1:3]).all(), (beta, rows)
            assert torch.equal(rows[[0, 3]], clean[[0, 3]]), beta
        lp, entropy = FL.log_probs(bad_x, y, with_entropy=True)
        clean_lp, clean_entropy = FL.log_probs(x, y, with_entropy=True)
    assert torch.isnan(lp[1]) and torch.isnan(entropy[1])
    assert torch.equal(lp[[0, 2, 3]], clean_lp[[0, 2, 3]])
    assert torch.equal(entropy[[0, 2, 3]], clean_entropy[[0, 2, 3]])


@pytest.mark.gpu
def test_log_probs_64bit_offsets():
    """16400 rows x 131072 classes in bfloat16: 2**31 + 2**27 elements, offsets past int32 (4.3 GB logits,
    4.3 GB gradient). The last rows against torch's float32 log_softmax."""
    rows, vocab = 16400, 131072
    x = torch.randn(rows, vocab, device=DEVICE, dtype=torch.bfloat16).requires_grad_()
    y = torch.randint(0, vocab, (rows,), device=DEVICE)
    with fusedloss.backend("triton"):
        lp = FL.log_probs(x, y, dtype=torch.float32)
    tail = slice(rows - 3, rows)
    exact = x[tail].detach().float().log_softmax(-1).gather(-1, y[tail, None]).squeeze(-1)
    torch.testing.assert_close(lp[tail], exact, rtol=1e-6, atol=2e-5)
    grad, = torch.autograd.grad(lp[tail].sum(), x)
    expected = -x[tail].detach().float().softmax(-1)
    expected[torch.arange(3, device=DEVICE), y[tail]] += 1
    torch.testing.assert_close(grad[tail].float(), expected, rtol=1.6e-2, atol=1e-5)
    assert float(grad[:-3].abs().sum()) == 0.0


# ------------------------------------------------------------------ the LM-head forms


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few rows (16 KiB of logits for both heads together), so that 'never whole' means
    something at these sizes."""
    from fusedloss.ops import _chunks

    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 16 << 10)


def heads(n=37, h=11, h_teacher=7, v=300, dtype=torch.float64, bias=True, teacher_grad=False, extra=0):
    def make(*shape, grad=True):
        return torch.randn(*shape, dtype=torch.float64, device=DEVICE).to(dtype).requires_grad_(grad)

    x, w = make(n, h), make(v, h)
    b = make(v) if bias else None
    xt, wt = make(n, h_teacher, grad=teacher_grad), make(v + extra, h_teacher, grad=teacher_grad)
    bt = make(v + extra, grad=teacher_grad) if bias else None
    return x, w, b, xt, wt, bt


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", BETAS)
def test_linear_jsd_parity(beta, reduction, small_chunks):
    """Both heads differentiated, a hard loss (T = 1.7 != 1: its own log-sum-exp), labels with an ignored
    row, 37 rows in chunks of a few."""
    x, w, b, xt, wt, bt = heads(teacher_grad=True)
    y = labels_for(x[:, :1].expand(-1, 300))
    parity(lambda x, w, xt, wt, y, b, bt, **k: FL.linear_jsd_loss(x, w, xt, wt, y, bias=b, teacher_bias=bt, **k),
           [x.float(), w.float(), xt.float(), wt.float(), y, b.float(), bt.float()],
           dict(beta=beta, temperature=1.7, hard_weight=0.3, soft_weight=0.8, reduction=reduction))


def test_linear_jsd_frozen_teacher_costs_one_gemm(small_chunks):
    """A frozen teacher: no gradient for its tensors, one GEMM per chunk for it (the student: three)."""
    x, w, b, xt, wt, bt = (t.float() if t is not None else t for t in heads(bias=False))
    x.requires_grad_(), w.requires_grad_()
    gemms = []
    real_mm = torch.mm

    def counting_mm(a, b_, **kwargs):
        gemms.append(tuple(b_.shape))
        return real_mm(a, b_, **kwargs)

    torch.mm = counting_mm
    try:
        with fusedloss.backend("triton"):
            loss = FL.linear_jsd_loss(x, w, xt, wt, beta=0.5)
    finally:
        torch.mm = real_mm
    teacher_gemms = [s for s in gemms if s == (7, 300)]  # the teacher's X_c W_t^T
    chunks = len([s for s in gemms if s == (11, 300)])  # the student's X_c W^T
    assert chunks > 1 and len(teacher_gemms) == chunks
    assert xt.grad is None and wt.grad is None
    grads = torch.autograd.grad(loss, (x, w))
    assert all(torch.isfinite(g).all() for g in grads)


def test_linear_jsd_vocabularies():
    """A padded teacher vocabulary: dropped only when asked (its softmax over the student's classes)."""
    x, w, b, xt, wt, bt = heads(extra=5, dtype=torch.float64)
    with pytest.raises(ValueError, match="drop_teacher_extra_classes"):
        FL.linear_jsd_loss(x, w, xt, wt)
    with fusedloss.backend("triton"):
        loss = FL.linear_jsd_loss(x, w, xt, wt, bias=b, teacher_bias=bt, drop_teacher_extra_classes=True)
    logits_s = x @ w.t() + b
    logits_t = (xt @ wt.t() + bt)[:, :300]
    torch.testing.assert_close(loss, eager(FL.jsd_loss)(logits_s, logits_t), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="fewer classes"):
        FL.linear_jsd_loss(x, w[:-5].detach(), xt, wt[:290].detach())


def test_linear_jsd_hard_weight_needs_labels():
    x, w, b, xt, wt, bt = heads()
    with pytest.raises(ValueError, match="labels"):
        FL.linear_jsd_loss(x, w, xt, wt, hard_weight=0.5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_linear_jsd_16_bit(dtype, small_chunks):
    x, w, b, xt, wt, bt = heads(dtype=dtype, bias=False)
    parity(lambda *a, **k: FL.linear_jsd_loss(*a, **k), [x, w, xt, wt], dict(beta=0.5))


@pytest.mark.parametrize("with_entropy", [False, True])
def test_linear_log_probs_parity(with_entropy, small_chunks):
    x, w, b, _, _, _ = heads()
    y = labels_for(x[:, :1].expand(-1, 300))
    parity(lambda x, w, y, b, **k: FL.linear_log_probs(x, w, y, bias=b, **k), [x.float(), w.float(), y, b.float()],
           dict(temperature=0.9, with_entropy=with_entropy))


def test_linear_logit_scales(small_chunks):
    """logit_scale (and the teacher's) as a Cohere or Granite head scales its logits, before the temperature:
    the Triton path (the scale in the GEMMs) against the eager formulas, and those against the functions of
    the scaled logits."""
    x, w, b, xt, wt, bt = heads(teacher_grad=True)
    y = labels_for(x[:, :1].expand(-1, 300))
    scales = dict(logit_scale=0.37, teacher_logit_scale=2.1)
    parity(lambda x, w, xt, wt, y, b, bt, **k: FL.linear_jsd_loss(x, w, xt, wt, y, bias=b, teacher_bias=bt, **k),
           [x.float(), w.float(), xt.float(), wt.float(), y, b.float(), bt.float()],
           dict(beta=0.3, temperature=1.7, hard_weight=0.3, **scales))
    parity(lambda x, w, y, b, **k: FL.linear_log_probs(x, w, y, bias=b, **k), [x.float(), w.float(), y, b.float()],
           dict(temperature=0.9, with_entropy=True, logit_scale=-1.3))
    with torch.no_grad():
        student, teacher = (x @ w.t() + b) * 0.37, (xt @ wt.t() + bt) * 2.1
        torch.testing.assert_close(eager(FL.linear_jsd_loss)(x, w, xt, wt, y, bias=b, teacher_bias=bt, beta=0.3,
                                                             **scales),
                                   eager(FL.jsd_loss)(student, teacher, y, beta=0.3), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(eager(FL.linear_log_probs)(x, w, y, bias=b, logit_scale=-1.3, with_entropy=True),
                                   eager(FL.log_probs)((x @ w.t() + b) * -1.3, y, with_entropy=True),
                                   rtol=1e-12, atol=1e-13)
    for fn, args, name in ((FL.linear_log_probs, (x, w, y), "logit_scale"),
                           (FL.linear_jsd_loss, (x, w, xt, wt), "teacher_logit_scale")):
        with pytest.raises(ValueError, match=name):
            fn(*args, **{name: float("inf")})


@pytest.mark.parametrize("beta", [0.0, 0.3])  # the forward KL's and the generalized JSD's gradients
def test_linear_softcaps(beta, small_chunks):
    """softcap and teacher_softcap (Gemma 2/3's final-logit softcap, after the logit scale, before the
    temperature), differently per head, logits large enough for the tanh to bend (|x| up to ~15 against caps
    of 5 and 4): the Triton path (the kernels cap as they read, the slope in the gradient) against the eager
    formulas in float64, and those against the functions of the capped logits."""
    x, w, b, xt, wt, bt = heads(teacher_grad=True)
    x, xt = (3 * x).detach().requires_grad_(), (3 * xt).detach().requires_grad_()
    y = labels_for(x[:, :1].expand(-1, 300))
    caps = dict(logit_scale=0.7, teacher_logit_scale=1.3, softcap=5.0, teacher_softcap=4.0)
    parity(lambda x, w, xt, wt, y, b, bt, **k: FL.linear_jsd_loss(x, w, xt, wt, y, bias=b, teacher_bias=bt, **k),
           [x.float(), w.float(), xt.float(), wt.float(), y, b.float(), bt.float()],
           dict(beta=beta, temperature=1.7, hard_weight=0.3, **caps))

    def capped(logits, cap):
        return cap * torch.tanh(logits / cap)

    with torch.no_grad():
        student, teacher = capped((x @ w.t() + b) * 0.7, 5.0), capped((xt @ wt.t() + bt) * 1.3, 4.0)
        expected = eager(FL.jsd_loss)(student, teacher, y, beta=beta) + 0.3 * torch.nn.functional.cross_entropy(student, y)
        torch.testing.assert_close(eager(FL.linear_jsd_loss)(x, w, xt, wt, y, bias=b, teacher_bias=bt, beta=beta,
                                                             hard_weight=0.3, **caps),
                                   expected, rtol=1e-12, atol=1e-13)
    if beta == 0.3:  # log-probabilities: one case
        parity(lambda x, w, y, b, **k: FL.linear_log_probs(x, w, y, bias=b, **k), [x.float(), w.float(), y, b.float()],
               dict(temperature=0.9, with_entropy=True, logit_scale=0.7, softcap=5.0))
        with torch.no_grad():
            torch.testing.assert_close(
                eager(FL.linear_log_probs)(x, w, y, bias=b, logit_scale=0.7, softcap=5.0, with_entropy=True),
                eager(FL.log_probs)(capped((x @ w.t() + b) * 0.7, 5.0), y, with_entropy=True), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("value,error", [("5", TypeError), (0.0, ValueError), (-1.0, ValueError),
                                         (float("inf"), ValueError)])
def test_linear_softcap_is_validated(value, error, backend):
    x, w, b, xt, wt, bt = heads(n=5, v=30)
    y = torch.zeros(5, dtype=torch.long, device=DEVICE)
    with backend_context(backend):
        for fn, args, name in ((FL.linear_log_probs, (x, w, y), "softcap"),
                               (FL.linear_jsd_loss, (x, w, xt, wt), "teacher_softcap")):
            with pytest.raises(error, match=name):
                fn(*args, **{name: value})
    with pytest.raises(error, match="softcap"):
        FN.LinearJSDLoss(softcap=value)


def test_linear_log_probs_three_dimensional_and_strided(small_chunks):
    x = torch.randn(2, 19, 11, dtype=torch.float64, device=DEVICE).transpose(0, 1).float().requires_grad_()
    w = torch.randn(300, 11, device=DEVICE).requires_grad_()
    y = torch.randint(0, 300, (19, 2), device=DEVICE)
    parity(lambda x, w, y, **k: FL.linear_log_probs(x, w, y, **k), [x, w, y], dict(with_entropy=True))


@pytest.mark.parametrize("fn", ["linear_jsd_loss", "linear_log_probs"])
def test_linear_memory_is_one_chunk(fn, monkeypatch):
    """With a forced chunk of 5 rows, no tensor the op allocates is larger than the chunks' logits of both
    heads (or an input's or gradient's size): the logits are never whole."""
    from fusedloss.ops import _chunks

    x, w, b, xt, wt, bt = (t.float() if t is not None else t for t in heads(n=41, v=700, bias=False))
    y = torch.randint(0, 700, (41,), device=DEVICE)
    options = FN.LinearCrossEntropyOptions(batch_chunk_size=5)
    with fusedloss.backend("triton"), AllocationRecorder() as recorder:
        if fn == "linear_jsd_loss":
            loss = FL.linear_jsd_loss(x, w, xt, wt, y, hard_weight=0.5, options=options)
        else:
            loss = FL.linear_log_probs(x, w, y, options=options).sum()
        torch.autograd.grad(loss, (x, w))
    largest_operand = max(t.numel() for t in (x, w, xt, wt))
    assert max(recorder.sizes) <= max(5 * 700, largest_operand), sorted(recorder.sizes)[-5:]
    assert 41 * 700 not in recorder.sizes


def test_linear_jsd_memory_at_llm_scale_is_bounded():
    """The chunk budget at 8192 tokens x 4096 hidden x 128256 vocabulary in bf16, student and teacher
    chunks together: at most CHUNK_BYTES (224 MiB) of logits, under the 256 MB of the goal."""
    from fusedloss.ops import _chunks

    rows = _chunks.chunk_rows(8192, 2 * 128256, 2, 0)
    assert rows * 2 * 128256 * 2 <= _chunks.CHUNK_BYTES <= 256e6
    assert rows >= 128  # enough rows per GEMM to keep it efficient


# ------------------------------------------------------------------ per-token statistics (TRL's fused LM head)

def stats_gradients(out, wrt, upstream):
    """The gradients of the differentiable outputs (log-probabilities, entropy) for ``upstream`` (2, ...)."""
    return torch.autograd.grad((out.log_probs * upstream[0]).sum() + (out.entropy * upstream[1]).sum(), wrt)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", [(3, 5, 301), (7, 1300), "strided"], ids=str)
def test_log_probs_stats_parity(shape, temperature, backend):
    """Every statistic at once against the torch reference on the whole float64 logits (divided by T), in
    float32: values, and the gradients of the log-probabilities and entropies (the others have none).
    V = 301 and 1300 cross the interpreter's 512-wide tiles (1300: three of them, the max moving between)."""
    x = logits(shape).float().requires_grad_()
    y = labels_for(x)
    x64 = as64(x)
    with fusedloss.backend(backend):
        out = FL.log_probs(x, y, temperature=temperature, stats=ALL_STATS)
    reference = stats_reference(x64 / temperature, y)
    assert_stats_match(out, reference, torch.float32, backend)
    upstream = torch.rand((2, *y.shape), dtype=torch.float64, device=DEVICE) + 0.5
    for g, r in zip(stats_gradients(out, x, upstream.float()), stats_gradients(reference, x64, upstream)):
        assert_matches(g, r, torch.float32, "gradient")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_log_probs_stats_dtypes(dtype, backend):
    """Each input dtype: the statistics in it (float32 accumulation, one rounding) within its tolerance of the
    float64 reference of the same (rounded) logits, is_top1 exactly argmax's; dtype=float32 from 16 bits
    gives float32 statistics (TRL's dtype) at float32's tolerance."""
    x = logits((3, 5, 301)).to(dtype)
    y = labels_for(x)
    reference = stats_reference(x.double(), y)
    with fusedloss.backend(backend):
        out = FL.log_probs(x, y, stats=ALL_STATS)
        wide = FL.log_probs(x, y, stats=ALL_STATS, dtype=torch.float32)
    assert all(v.dtype == dtype for v in out[:4]) and all(v.dtype == torch.float32 for v in wide[:4])
    assert_stats_match(out, reference, dtype, str(dtype))
    assert_stats_match(wide, reference, torch.float32, "float32")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_log_probs_stats_ties_and_ignored_tokens(backend):
    """is_top1 follows torch.argmax (TRL's rule): a token tied with an earlier class is not the top-1, tied
    with a later one it is, also when the tie spans column blocks (columns 3 and 1290 of 1300); an ignored
    token gives 0 and False everywhere."""
    x = logits((6, 1300)).float()
    for row, (first, second) in enumerate([(3, 1290), (3, 1290), (700, 701), (700, 701)]):
        x[row, first] = x[row, second] = x[row].max() + 1.0
    y = torch.tensor([1290, 3, 701, 700, -100, 0], device=DEVICE)
    x[5, 0] = x[5].max() + 0.5  # a unique maximum at the token
    with fusedloss.backend(backend):
        out = FL.log_probs(x, y, stats=ALL_STATS)
    assert out.is_top1.tolist() == [False, True, False, True, False, True]
    assert all(float(v[4]) == 0 for v in out[:4])
    assert_stats_match(out, stats_reference(x.double(), y), torch.float32, backend)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_log_probs_stats_api(backend):
    """``stats`` returns a TokenStats (None where not asked for); ``with_entropy=True`` alone still returns
    the pair; both together: the union; one name as a string; None or () : the log-probabilities alone.
    Unknown names: ValueError naming ``stats``; non-strings: TypeError; linear_log_probs alike."""
    from fusedloss.kernels import distribution_rows as kernel_module

    x = logits((4, 30)).float()
    y = torch.tensor([3, -100, 29, 7], device=DEVICE)
    h, w = logits((4, 6)).float(), logits((30, 6)).float()
    with fusedloss.backend(backend):
        lp, entropy = pair = FL.log_probs(x, y, with_entropy=True)
        assert type(pair) is tuple and len(pair) == 2
        only = FL.log_probs(x, y, stats=("entropy",))
        assert type(only).__name__ == "TokenStats" and only.log_sum_sq_probs is None and only.is_top1 is None
        torch.testing.assert_close(only.log_probs, lp, rtol=0, atol=0)
        torch.testing.assert_close(only.entropy, entropy, rtol=0, atol=0)
        union = FL.log_probs(x, y, with_entropy=True, stats="is_top1")
        assert union.entropy is not None and union.is_top1 is not None and union.mean_logits is None
        torch.testing.assert_close(union.entropy, entropy, rtol=0, atol=0)
        assert kernel_module.STAT_PLANES == ALL_STATS  # the kernels' plane order
        for empty in (None, (), []):
            torch.testing.assert_close(FL.log_probs(x, y, stats=empty), lp, rtol=0, atol=0)
        linear = FL.linear_log_probs(h, w, y, stats=["mean_logits", "log_sum_sq_probs"])
        assert linear.entropy is None and linear.is_top1 is None and linear.mean_logits.shape == (4,)
        for call in (lambda **k: FL.log_probs(x, y, **k), lambda **k: FL.linear_log_probs(h, w, y, **k)):
            with pytest.raises(ValueError, match="stats .*'top1'"):
                call(stats=("entropy", "top1"))
            with pytest.raises(TypeError, match="stats"):
                call(stats=(1,))
            with pytest.raises(TypeError, match="stats"):
                call(stats=3)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_log_probs_stats_compile(compiler, backend):
    """torch.compile(fullgraph=True) (inductor checks the fake implementation's sizes against the real
    op's): the eager values and gradients; an out-of-range token (not checkable on the host in a graph):
    NaN statistics, is_top1 False; an ignored one 0."""
    x = logits((4, 301)).float()
    y = torch.tensor([3, -100, 301, 0], device=DEVICE)

    def stats(x, y):
        out = FL.log_probs(x, y, temperature=0.8, stats=ALL_STATS)
        return out.log_probs, out.entropy, out.log_sum_sq_probs, out.mean_logits, out.is_top1

    torch._dynamo.reset()
    results = []
    # eager: the bad token replaced (on CPU tensors an eager call raises IndexError for it)
    compiled = torch.compile(stats, backend=compiler, fullgraph=True)
    for fn, tokens in ((stats, torch.where(y == 301, 5, y)), (compiled, y)):
        leaf = x.clone().requires_grad_()
        with fusedloss.backend(backend):
            out = fn(leaf, tokens)
        results.append((out, torch.autograd.grad(out[0].sum() + 0.5 * out[1].sum(), leaf)[0]))
    (eager_out, eager_grad), (compiled_out, compiled_grad) = results
    good = [0, 1, 3]
    for got, expected in zip(compiled_out, eager_out):
        torch.testing.assert_close(got[good], expected[good], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(compiled_grad[good], eager_grad[good], rtol=1e-6, atol=1e-6)
    if backend == "triton":  # the kernels' bad row: NaN gradient too (torch's formula sends 0 back)
        assert torch.isnan(compiled_grad[2]).all()
    lp, entropy, log_sum_sq, mean, top1 = (v.detach() for v in compiled_out)
    assert all(torch.isnan(v[2]) for v in (lp, entropy, log_sum_sq, mean)) and not top1[2]
    assert all(float(v[1]) == 0 for v in (lp, entropy, log_sum_sq, mean)) and not top1[1]
    assert torch.isfinite(torch.stack([lp, entropy, log_sum_sq, mean])[:, [0, 3]]).all()


def capped(logits, cap):
    return cap * torch.tanh(logits / cap)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_linear_log_probs_stats(backend, small_chunks):
    """The LM-head form over several chunks (37 rows, 13 per chunk), a logit scale, a softcap that bends
    (|logits| up to ~15 against 5) and T = 0.9: every statistic of z = 5 tanh(0.7 (x W^T + b) / 5) / 0.9
    against the reference on the whole float64 logits; gradients of the input, weight and bias from the
    log-probabilities and entropies. Under torch.compile(fullgraph=True) too (the Triton path)."""
    x, w, b, _, _, _ = heads()
    x = (3 * x).detach().requires_grad_()
    y = labels_for(x[:, :1].expand(-1, 300))
    args = [t.detach().float().requires_grad_() for t in (x, w, b)]
    kwargs = dict(temperature=0.9, logit_scale=0.7, softcap=5.0, stats=ALL_STATS)

    def call(x, w, b):
        return FL.linear_log_probs(x, w, y, bias=b, **kwargs)

    with fusedloss.backend(backend):
        out = call(*args)
    reference = stats_reference(capped((x @ w.t() + b) * 0.7, 5.0) / 0.9, y)
    assert_stats_match(out, reference, torch.float32, backend)
    upstream = torch.rand((2, *y.shape), dtype=torch.float64, device=DEVICE) + 0.5
    grads = stats_gradients(out, args, upstream.float())
    for g, r in zip(grads, stats_gradients(reference, [x, w, b], upstream)):
        assert_matches(g, r, torch.float32, "gradient")
    if backend == "triton":
        torch._dynamo.reset()
        with fusedloss.backend(backend):
            compiled = torch.compile(lambda *a: tuple(call(*a)), backend="aot_eager", fullgraph=True)(*args)
        for got, expected in zip(compiled, out):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        compiled_grads = stats_gradients(FL.distribution_rows.TokenStats(*compiled), args, upstream.float())
        for g, e in zip(compiled_grads, grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_stats_match_trls_chunked_logprob():
    """TRL's fused LM head (trl.kernels.chunked_logprob.ChunkedLogProbFunction, its torch tiles on the CPU,
    vocabulary tiles of 128): the same log-probabilities, entropies, log sum p**2, mean logits and is_top1,
    (a) of an identity head (the logits are the hidden states exactly) with ties within and across TRL's
    tiles, (b) of a head with TRL's logit_scale, final_logit_softcapping and a temperature."""
    chunked = pytest.importorskip("trl.kernels.chunked_logprob")

    def trl(hidden, weight, bias, tokens, temperature, softcap, scale):
        out = chunked.ChunkedLogProbFunction.apply(hidden, weight, bias, tokens, temperature, 128, softcap, scale,
                                                   chunked.OPTIONAL_OUTPUTS)
        return FL.distribution_rows.TokenStats(*(o.detach() for o in out))

    def check(ours, theirs):
        for name, a, b in zip(ours._fields, ours, theirs):
            if name == "is_top1":
                assert torch.equal(a, b), (a, b)
            else:
                torch.testing.assert_close(a.detach(), b, rtol=2e-5, atol=2e-5, msg=lambda m: f"{name}: {m}")

    z = logits((6, 301)).float()
    for row, (first, second) in enumerate([(3, 200), (3, 200), (130, 131), (130, 131)]):
        z[row, first] = z[row, second] = z[row].max() + 1.0
    y = torch.tensor([200, 3, 131, 130, 5, 7], device=DEVICE)
    with fusedloss.backend("triton"):
        ours = FL.log_probs(z, y, temperature=0.8, stats=ALL_STATS)
    theirs = trl(z, torch.eye(301, device=DEVICE), None, y, 0.8, None, 1.0)
    assert theirs.is_top1[:4].tolist() == [False, True, False, True]
    check(ours, theirs)

    x, w, b, _, _, _ = (t.float() if t is not None else t for t in heads(n=9, h=5, v=301))
    y = torch.randint(0, 301, (9,), device=DEVICE)
    with fusedloss.backend("triton"):
        ours = FL.linear_log_probs(3 * x, w, y, bias=b, temperature=0.8, logit_scale=1.3, softcap=3.0,
                                   stats=ALL_STATS)
    check(ours, trl(3 * x, w, b, y, 0.8, 3.0, 1.3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_log_probs_no_further_from_float64_than_torch(dtype):
    """The demo's shape (64 x 3001, the bench's traffic shape): each token's log-probability and entropy no
    further from float64 than torch's log_softmax / -sum p log p at the same dtype (to one ulp of the largest
    value). The kernel's entropy, log D - E / D, adds two non-negative terms (no cancellation). (The demo's
    "loss" summed each output on its own, in its dtype, against a reference summed stacked: the sum of
    lp (~ -8) and H (~ +7.6) over the rows nearly cancels, so that summation's rounding, not the kernel,
    made its gap.)"""
    x = torch.randn(64, 3001, device=DEVICE).to(dtype)
    y = class_targets((64,), 3001)
    with fusedloss.backend("triton"):
        ours = FL.log_probs(x, y, with_entropy=True)

    def of(x):
        s = x.log_softmax(-1)
        counted = y != -100
        lp = s.gather(-1, torch.where(counted, y, 0)[:, None])[:, 0]
        return [torch.where(counted, v, torch.zeros_like(v)) for v in (lp, -(s.exp() * s).sum(-1))]

    exact, theirs = of(x.double()), of(x)
    for name, a, t, e in zip(("log_probs", "entropy"), ours, theirs, exact):
        ulp = torch.finfo(dtype).eps * float(e.abs().max())
        assert max_error(a, e) <= max_error(t, e) + ulp, (name, max_error(a, e), max_error(t, e))


def _stats_world_inputs():
    """The vocabulary-parallel stats problem (float64, the same on every rank): logits (9, 13) with ties
    across the ranks' blocks (classes 2 and 10: 7 + 6 classes over 2 ranks), tokens (two ignored), an LM head
    (hidden (9, 5), weight (13, 5), bias), and the upstream gradients of [log_probs | entropy]."""
    g = torch.Generator().manual_seed(7)
    x = 3 * torch.randn(9, 13, generator=g, dtype=torch.float64)
    x[0, 2] = x[0, 10] = x[1, 2] = x[1, 10] = x[:2].max() + 1
    y = torch.randint(0, 13, (9,), generator=g)
    y[0], y[1], y[4], y[6] = 10, 2, -100, -100
    hidden, weight, bias = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((9, 5), (13, 5), (13,)))
    upstream = torch.rand(2, 9, generator=g, dtype=torch.float64) + 0.5
    return x, y, 2 * hidden, weight, bias, upstream


_WORLD_LINEAR = dict(temperature=1.2, logit_scale=1.3, softcap=2.0, stats=ALL_STATS)


def _stats_world_rank(rank, world_size, rendezvous, folder):
    """One rank (tests/helpers.py run_world): log_probs and linear_log_probs with every statistic over a gloo
    group of two (process_group=, both backends; the LM head in chunks of 4 rows), and as DTensors (the
    Triton backend); saves each call's outputs and this rank's gradients."""
    import datetime
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    group = dist.new_group(list(range(world_size)))
    x, y, hidden, weight, bias, upstream = _stats_world_inputs()
    options = FN.LinearCrossEntropyOptions(batch_chunk_size=4)
    results = {}

    def record(name, out, leaves, local=lambda t: t):
        grads = stats_gradients(out, leaves, upstream) if out.log_probs.requires_grad else None
        results[name] = ([None if v is None else local(v).detach() for v in out],
                         [local(g) for g in grads] if grads is not None else None)

    for backend in ("triton", "torch"):
        with fusedloss.backend(backend):
            leaf = x.tensor_split(world_size, 1)[rank].contiguous().requires_grad_()
            out = FL.log_probs(leaf, y, temperature=0.8, stats=ALL_STATS, process_group=group)
            record(("log_probs", backend), out, [leaf])
            leaves = [hidden.clone().requires_grad_()] + [t.tensor_split(world_size, 0)[rank].contiguous()
                                                            .requires_grad_() for t in (weight, bias)]
            out = FL.linear_log_probs(leaves[0], leaves[1], y, bias=leaves[2], options=options,
                                      process_group=group, **_WORLD_LINEAR)
            record(("linear_log_probs", backend), out, leaves)
    mesh = init_device_mesh("cpu", (world_size,))
    with fusedloss.backend("triton"):
        leaf = distribute_tensor(x, mesh, [Shard(1)]).requires_grad_()
        out = FL.log_probs(leaf, y, temperature=0.8, stats=ALL_STATS)
        results[("log_probs", "dtensor")] = ([v.full_tensor().detach() for v in out], None)
        head, head_bias = (distribute_tensor(t, mesh, [Shard(0)]) for t in (weight, bias))
        out = FL.linear_log_probs(hidden, head, y, bias=head_bias, **_WORLD_LINEAR)
        results[("linear_log_probs", "dtensor")] = ([v.full_tensor().detach() for v in out], None)
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_stats_vocabulary_parallel(tmp_path):
    """process_group= (2 ranks, 7 + 6 classes) and DTensor inputs: every statistic on every rank equal to
    the single process's (the reference on the whole float64 logits), is_top1 with a tie across the ranks'
    blocks (the first maximum on rank 0), the ranks' gradient blocks (the LM head's input: the ranks' terms
    summed) equal to the whole's."""
    from helpers import run_world

    ranks = run_world(_stats_world_rank, 2, tmp_path, 300)
    x, y, hidden, weight, bias, upstream = _stats_world_inputs()
    leaves = [t.clone().requires_grad_() for t in (x, hidden, weight, bias)]
    expected = {"log_probs": stats_reference(leaves[0] / 0.8, y)}
    expected["linear_log_probs"] = stats_reference(
        capped((leaves[1] @ leaves[2].t() + leaves[3]) * 1.3, 2.0) / 1.2, y)
    assert expected["log_probs"].is_top1[:2].tolist() == [False, True]
    grads = {name: stats_gradients(ref, wrt, upstream)
             for (name, ref), wrt in zip(expected.items(), ([leaves[0]], leaves[1:]))}
    for (name, backend), _ in ranks[0].items():
        for rank, result in enumerate(ranks):
            values, rank_grads = result[(name, backend)]
            for field, got, want in zip(expected[name]._fields, values, expected[name]):
                if field == "is_top1":
                    assert torch.equal(got, want), (name, backend, rank)
                else:
                    torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12,
                                               msg=lambda m: f"{name} {backend} rank {rank} {field}: {m}")
        if ranks[0][(name, backend)][1] is None:
            continue
        if name == "log_probs":
            got = [torch.cat([r[(name, backend)][1][0] for r in ranks], 1)]
        else:
            got = [sum(r[(name, backend)][1][0] for r in ranks)]
            got += [torch.cat([r[(name, backend)][1][i] for r in ranks], 0) for i in (1, 2)]
        for g, e in zip(got, grads[name]):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name} {backend} grad: {m}")


# ------------------------------------------------------------------ traffic and the registry


def test_traffic_of_jsd():
    """Forward+backward bytes over the minimal (each logits tensor read once, each gradient written once),
    metered through the interpreter: both logits read at most twice and each gradient written once (a
    frozen teacher: 5/3; a teacher gradient: 6/4); with the gradient in the forward and grad_output 1: 1.0x."""
    from fusedloss.bench.registry import Inputs
    from fusedloss.bench.traffic import measure_traffic

    x = logits((16, 2048)).to(torch.bfloat16)
    t = logits((16, 2048)).to(torch.bfloat16)
    for kwargs, teacher_grad, expected in (({}, False, 5 / 3), ({}, True, 6 / 4),
                                            ({"grad_in_forward": True}, False, 1.0)):
        a = x.clone().requires_grad_()
        b = t.clone().requires_grad_(teacher_grad)
        inputs = Inputs((a, b), dict(beta=0.5, **kwargs), (a, b) if teacher_grad else (a,))
        minimal = inputs.nbytes() + sum(g.numel() * g.element_size() for g in inputs.grad_tensors)
        with fusedloss.backend("triton"):
            meter = measure_traffic(FL.jsd_loss, inputs)
        assert meter.total / minimal <= expected * 1.01, (kwargs, teacher_grad, meter.total / minimal)
