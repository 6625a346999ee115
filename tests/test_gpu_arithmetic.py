"""The GPU's float32 arithmetic in the interpreter (fusedloss/bench/interpreter.py: gpu_arithmetic), and
every loss held to its parity tolerances under it.

Compiled for an NVIDIA GPU, a float32 ``tl.exp`` is ``ex2.approx`` after a float32 product by log2(e), a
float32 ``/`` is ``div.full.f32`` (2 ulp), ``tl.log`` libdevice's logf (1 ulp); numpy, which the
interpreter uses, rounds them correctly. Under ``gpu_arithmetic(mode)`` every such result carries its
instruction's whole error bound: all magnitudes up, all down, or either per element ("spread", from a
hash of the seed and the operands: the same values always move the same way, as on a GPU).

The sweep runs every loss (tests/losses.py: one sample call each) and, at shapes where the approximate
operations pile up (a softmax over 4099 classes, a variance broadcast over 1023 elements, rows of 600
features), each family's heaviest formulas: forward and every gradient, in float32, bfloat16 and
float16, in every mode, with the parity harness's own tolerances (tests/helpers.check_parity: the
tolerance table against float64, and in 16 bits no further from float64 than torch at that dtype).
The vocabulary-parallel shard kernels run the same way through a gloo group of this one process (their
2- and 3-rank tests run float64, which the mode leaves exact). FUSEDLOSS_GPU_ARITHMETIC=up|down|spread runs
the whole suite in a mode (tests/conftest.py); the family tests and the row-margin campaign pass in each.
"""
import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import fusedloss
import fusedloss.functional as FL
import helpers
from fusedloss.bench.interpreter import GPU_ARITHMETIC_MODES, gpu_arithmetic
from helpers import DEVICE, DTYPES
from losses import (SAMPLES, Sample, _classes, _eager_fusedloss, _groups, _normal, _positive, _probability, _sign,
                    _stacked)

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter runs only without a GPU (a GPU's "
                                                         "own arithmetic runs the family tests there)")

# ------------------------------------------------------------------ the mode itself

EXP, LOG, DIV, DIV_RN, SQRT, SQRT_RN, EXP2 = range(7)


@triton.jit
def _op_kernel(x_ptr, y_ptr, out_ptr, n, OP: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=1.0)
    y = tl.load(y_ptr + offsets, mask=mask, other=1.0)
    if OP == 0:
        out = tl.exp(x)
    elif OP == 1:
        out = tl.log(x)
    elif OP == 2:
        out = x / y
    elif OP == 3:
        out = tl.div_rn(x, y)
    elif OP == 4:
        out = tl.sqrt(x)
    elif OP == 5:
        out = tl.sqrt_rn(x)
    else:
        out = tl.exp2(x)
    tl.store(out_ptr + offsets, out, mask=mask)


def interpreted(op, x, y=None):
    y = torch.ones_like(x) if y is None else y
    out = torch.empty_like(x)
    _op_kernel[(triton.cdiv(x.numel(), 256),)](x, y, out, x.numel(), OP=op, BLOCK=256)
    return out


def ulps(actual, exact):
    """(actual - exact) in ulp of the float32 exact value, signed by the magnitude's direction (> 0: larger)."""
    exact = np.asarray(exact, dtype=np.float64)
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.sign(exact) * (actual.double().numpy() - exact) / spacing


@pytest.fixture
def operands():
    x = torch.rand(4099, dtype=torch.float64) * 8 - 4
    y = torch.rand(4099, dtype=torch.float64) * 4 + 0.25
    return x.float(), y.float()


def test_division_is_pushed_two_ulp_one_way_or_spread(operands):
    """float32 / is div.full.f32: every quotient 1 to 2 ulp larger in magnitude ("up"), smaller ("down"),
    or either per element ("spread", the same for the same seed); div_rn stays correctly rounded."""
    x, y = operands
    exact = x.double().numpy() / y.double().numpy()
    before = interpreted(DIV, x, y)  # numpy's division (or the mode FUSEDLOSS_GPU_ARITHMETIC set)
    with gpu_arithmetic("up"):
        up = ulps(interpreted(DIV, x, y), exact)
        rounded = ulps(interpreted(DIV_RN, x, y), exact)
    with gpu_arithmetic("down"):
        down = ulps(interpreted(DIV, x, y), exact)
    assert (up > 1).all() and (up <= 2).all()
    assert (down < -1).all() and (down >= -2).all()
    assert (np.abs(rounded) <= 0.5).all()
    spread = []
    for seed in (0, 0, 1):
        with gpu_arithmetic("spread", seed=seed):
            spread.append(ulps(interpreted(DIV, x, y), exact))
    assert (np.abs(spread[0]) > 1).all() and (np.abs(spread[0]) <= 2).all()
    assert 0.4 < (spread[0] > 0).mean() < 0.6
    assert np.array_equal(spread[0], spread[1]) and not np.array_equal(spread[0], spread[2])
    assert torch.equal(interpreted(DIV, x, y), before)  # leaving a mode restores the arithmetic before it


def test_exp_rounds_its_float32_product_then_adds_ex2_error():
    """tl.exp(x) = ex2.approx(fp32(x * fp32(log2 e))): 1 to 2 ulp from 2 ** that product, which is itself up
    to |x| 2**-24 relative off e**x (CUDA's __expf: 2 + 1.173 |x| ulp): tens of ulp from numpy's exp
    at |x| > 60. ex2.approx(0) is exactly 1."""
    x = torch.cat([torch.linspace(-87.0, 88.0, 4099), torch.zeros(1)])
    product = x.numpy() * np.float32(np.log2(np.e))
    for mode in GPU_ARITHMETIC_MODES:
        with gpu_arithmetic(mode):
            result = interpreted(EXP, x)
        error = ulps(result[:-1], np.exp2(product[:-1].astype(np.float64)))
        assert (np.abs(error) > 1).all() and (np.abs(error) <= 2).all()
        assert result[-1] == 1.0
        assert np.abs(ulps(result, np.exp(x.double().numpy()))).max() > 30


def test_log_sqrt_and_exp2_errors_and_flush_to_zero(operands):
    """tl.log (libdevice logf) 1 ulp, exact at 1; tl.sqrt (sqrt.approx.ftz) 1 ulp, subnormal input read as
    0; tl.exp2 (ex2.approx.ftz) 2 ulp, a subnormal result flushed to 0; sqrt_rn correctly rounded."""
    x = torch.cat([operands[1], torch.tensor([1.0])])
    tiny = torch.tensor([1e-40, 4.0, -130.0])
    with gpu_arithmetic("up"):
        log = ulps(interpreted(LOG, x), np.log(x.double().numpy()))
        sqrt = ulps(interpreted(SQRT, x), np.sqrt(x.double().numpy()))
        sqrt_rn = ulps(interpreted(SQRT_RN, x), np.sqrt(x.double().numpy()))
        assert interpreted(LOG, x)[-1] == 0.0
        assert interpreted(SQRT, tiny)[0] == 0.0 and interpreted(EXP2, tiny)[-1] == 0.0
        exp2 = ulps(interpreted(EXP2, operands[0]), np.exp2(operands[0].double().numpy()))
    assert (log[:-1] > 0).all() and (log <= 1).all()
    assert (sqrt > 0).all() and (sqrt <= 1).all()
    assert (np.abs(sqrt_rn) <= 0.5).all()
    assert (exp2 > 1).all() and (exp2 <= 2).all()
    assert torch.sqrt(tiny[:1]) > 0  # numpy keeps the subnormal: the flush is the mode's


def test_modes_nest_and_unknown_modes_are_refused(operands):
    x, y = operands
    before = interpreted(DIV, x, y)
    with gpu_arithmetic("up"):
        with gpu_arithmetic("down"):
            assert (ulps(interpreted(DIV, x, y), x.double().numpy() / y.double().numpy()) < -1).all()
        assert (ulps(interpreted(DIV, x, y), x.double().numpy() / y.double().numpy()) > 1).all()
    assert torch.equal(interpreted(DIV, x, y), before)
    with pytest.raises(ValueError, match="up, down, spread"):
        gpu_arithmetic("nearest")


def test_float64_is_untouched():
    """float64 division and sqrt are correctly rounded on the GPU too (exp and log: libdevice, 1 ulp of
    float64, far below every float64 tolerance): the mode leaves float64 to numpy."""
    x = torch.rand(300, dtype=torch.float64) + 0.5
    y = torch.rand(300, dtype=torch.float64) + 0.5
    with gpu_arithmetic("up"):
        assert torch.equal(interpreted(DIV, x, y), x / y)
        assert torch.equal(interpreted(EXP, x), torch.from_numpy(np.exp(x.numpy())))


# ------------------------------------------------------------------ every loss under it


def _gaussian_var_over_1023():
    """One variance for 1023 elements (its gradient a sum of 1023 quotients), near the mean squared error
    (the sum partly cancels, as in training, where var settles there)."""
    x, y = _normal(1023), _normal(1023)
    return [x, y, (x - y).pow(2).mean().reshape(1) * 0.8], {}


# each family's heaviest formulas at shapes where approximate operations accumulate
STRESS = {
    "cross_entropy[3x4099,weight+smoothing]": Sample(
        "cross_entropy", lambda: ([3 * _normal(3, 4099), _classes(3, 4099)],
                                  {"weight": _positive(4099), "label_smoothing": 0.1}), (0,)),
    "cross_entropy[3x4099,probabilities]": Sample(
        "cross_entropy", lambda: ([3 * _normal(3, 4099), torch.softmax(3 * _normal(3, 4099), 1)], {}), (0, 1)),
    "cross_entropy[3x4099,z_loss+softcap,none]": Sample(
        "cross_entropy", lambda: ([3 * _normal(3, 4099), _classes(3, 4099)],
                                  {"z_loss": 1e-3, "softcap": 5.0, "reduction": "none"}), (0,),
        reference=_eager_fusedloss("cross_entropy")),
    "jsd_loss[3x1100,beta=0.3,T=2]": Sample(
        "jsd_loss", lambda: ([2 * _normal(3, 1100), 2 * _normal(3, 1100), _classes(3, 1100)],
                             {"beta": 0.3, "temperature": 2.0}), (0, 1), reference=_eager_fusedloss("jsd_loss")),
    "jsd_loss[3x1100,reverse KL,sum]": Sample(
        "jsd_loss", lambda: ([2 * _normal(3, 1100), 2 * _normal(3, 1100)], {"beta": 1.0, "reduction": "sum"}),
        (0, 1), reference=_eager_fusedloss("jsd_loss")),
    "log_probs[3x1100,entropy]": Sample(
        "log_probs", lambda: ([2 * _normal(3, 1100), _classes(3, 1100)], {}), (0,),
        reference=_stacked(lambda *a, **k: _eager_fusedloss("log_probs")(*a, with_entropy=True, **k)),
        fused=_stacked(lambda *a, **k: FL.log_probs(*a, with_entropy=True, **k))),
    "linear_cross_entropy[9x16,V=1100]": Sample(
        "linear_cross_entropy", lambda: ([_normal(9, 16), _normal(1100, 16), _classes(9, 1100)],
                                         {"label_smoothing": 0.1}), (0, 1),
        reference=_eager_fusedloss("linear_cross_entropy")),
    "gaussian_nll_loss[var (1,) over 1023]": Sample("gaussian_nll_loss", _gaussian_var_over_1023, (0, 1, 2)),
    "binary_cross_entropy[3x1023]": Sample(
        "binary_cross_entropy", lambda: ([_probability(3, 1023), _probability(3, 1023)], {}), (0, 1)),
    "binary_cross_entropy_with_logits[3x1023,pos_weight]": Sample(
        "binary_cross_entropy_with_logits", lambda: ([3 * _normal(3, 1023), _probability(3, 1023)],
                                                     {"pos_weight": _positive(1023)}), (0, 1)),
    "poisson_nll_loss[3x1023,rate,full]": Sample(
        "poisson_nll_loss", lambda: ([_positive(3, 1023), 3 * _positive(3, 1023)], {"log_input": False, "full": True}),
        (0, 1)),
    "kl_div[3x1023,log_target]": Sample(
        "kl_div", lambda: ([_probability(3, 1023).log(), _probability(3, 1023).log()],
                           {"log_target": True, "reduction": "batchmean"}), (0, 1)),
    "smooth_l1_loss[3x1023,beta=0.3]": Sample(
        "smooth_l1_loss", lambda: ([_normal(3, 1023), _normal(3, 1023)], {"beta": 0.3}), (0, 1)),
    "sigmoid_focal_loss[3x1023,gamma=1.5]": Sample(
        "sigmoid_focal_loss", lambda: ([3 * _normal(3, 1023), _probability(3, 1023)],
                                       {"gamma": 1.5, "reduction": "sum"}), (0, 1),
        reference=_eager_fusedloss("sigmoid_focal_loss")),
    "multilabel_soft_margin_loss[9x600,weight]": Sample(
        "multilabel_soft_margin_loss", lambda: ([3 * _normal(9, 600), _probability(9, 600)],
                                                {"weight": _positive(600)}), (0, 1)),
    "cosine_embedding_loss[9x600]": Sample(
        "cosine_embedding_loss", lambda: ([_normal(9, 600), _normal(9, 600), _sign(9)],
                                          {"margin": 0.2}), (0, 1)),
    "triplet_margin_loss[5x600,p=3]": Sample(
        "triplet_margin_loss", lambda: ([_normal(5, 600), _normal(5, 600), _normal(5, 600)], {"p": 3.0, "margin": 5.0}),
        (0, 1, 2)),
    "rank_cross_entropy_loss[64 groups]": Sample(
        "rank_cross_entropy_loss", lambda: (_groups(64, 7), {"num_neg": 7}), (0,),
        reference=_eager_fusedloss("rank_cross_entropy_loss")),
}
SWEEP = {**SAMPLES, **STRESS}


@pytest.mark.parametrize("gpu_arithmetic_mode", GPU_ARITHMETIC_MODES, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", SWEEP)
def test_parity_under_gpu_arithmetic(name, dtype, gpu_arithmetic_mode):
    sample = SWEEP[name]
    args, kwargs = sample.call(dtype)
    helpers.check_parity(sample.torch_fn(), sample.ours(), args, kwargs, "triton")


def test_sweep_covers_every_loss():
    assert {sample.fn for sample in SWEEP.values()} == {sample.fn for sample in SAMPLES.values()}


# ------------------------------------------------------------------ what it found


@pytest.mark.parametrize("gpu_arithmetic_mode", GPU_ARITHMETIC_MODES, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_distance_gradients_of_one_feature_are_exact(dtype, gpu_arithmetic_mode):
    """D = 1, p = 2: d|u|/du = u / |u| is +-1 exactly, so triplet_margin_loss's gradients ('sum') are sums of
    +-1 and halves, exactly those of float64. Found by the row-margin campaign in mode "down" (seed 52):
    the kernel multiplied u by 1 / |u|, which the GPU computes to 2 ulp (div.full.f32), and the positive's
    gradient with swap, a difference of two such terms, came out 2e-7 where torch's is 0."""
    a, b, c = (_normal(64, 1).to(dtype).requires_grad_() for _ in range(3))
    for fn, args, kwargs in ((FL.pairwise_distance, (a, b), {"eps": 0.0}),
                             (FL.triplet_margin_loss, (a, b, c), {"swap": True, "eps": 0.0, "reduction": "sum"})):
        with fusedloss.backend("triton"):
            grads = torch.autograd.grad(fn(*args, **kwargs).sum(), args)
        args64 = [t.detach().double().requires_grad_() for t in args]
        exact = torch.autograd.grad(getattr(torch.nn.functional, fn.__name__)(*args64, **kwargs).sum(), args64)
        for grad, reference in zip(grads, exact):
            assert torch.equal(grad, reference.to(dtype)), fn.__name__


@pytest.mark.parametrize("gpu_arithmetic_mode", GPU_ARITHMETIC_MODES, indirect=True)
def test_half_norm_is_an_exact_square_of_its_sum(gpu_arithmetic_mode):
    """pairwise_distance at p = 0.5 is (sum |u|^0.5)^2, and pow_runtime squares exactly when its exponent
    1 / p is exactly 2: the kernel computes 1 / p correctly rounded. With the GPU's division (div.full.f32)
    the exponent came out 2.0000002, the square exp(2.0000002 log(sum)): 23 to 35 ulp from float64 against
    torch's 10 (and triplet_margin_loss(p=0.5), a difference of two such distances, left the float32
    tolerance where the two errors differed). Now no further from float64 than torch."""
    a, b = _normal(9, 300), _normal(9, 300)
    exact = torch.nn.functional.pairwise_distance(a, b, p=0.5)
    with fusedloss.backend("triton"):
        ours = FL.pairwise_distance(a.float(), b.float(), p=0.5)
    theirs = torch.nn.functional.pairwise_distance(a.float(), b.float(), p=0.5)
    assert ((ours.double() - exact).abs() / exact).max() <= ((theirs.double() - exact).abs() / exact).max()


# ------------------------------------------------------------------ the vocabulary-parallel shard kernels

@pytest.fixture(scope="module")
def group_of_one(tmp_path_factory):
    """A gloo group of this one process: ``process_group=`` then runs the shard kernels (statistics per
    shard, the all-reduces, the terms) in this process, so the GPU's arithmetic reaches them (the 2- and
    3-rank tests run float64, which the mode leaves exact)."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    init_file = tmp_path_factory.mktemp("group_of_one") / "rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    try:
        yield dist.new_group([0])
    finally:
        dist.destroy_process_group()


def _sharded_cases():
    n, c, h = 7, 300, 5
    logits, student = 4 * _normal((n, c)), 4 * _normal((n, c))
    tokens = torch.randint(0, c, (n,), device=DEVICE)
    tokens[2] = -100
    x, w, teacher_x, teacher_w = _normal((n, h)), _normal((c, h)), _normal((n, h + 2)), _normal((c, h + 2))
    return {
        "cross_entropy z-loss softcap smoothing": (FL.cross_entropy, (logits, tokens),
                                                   dict(z_loss=1e-2, softcap=5.0, label_smoothing=0.1)),
        "jsd_loss beta 0.3 T 2": (FL.jsd_loss, (student, logits), dict(beta=0.3, temperature=2.0)),
        "log_probs with entropy": (FL.log_probs, (logits, tokens), dict(with_entropy=True)),
        "linear_cross_entropy": (FL.linear_cross_entropy, (x, w, tokens), dict(z_loss=1e-2, logit_scale=1.5)),
        "linear_jsd_loss softcaps": (FL.linear_jsd_loss, (x, w, teacher_x, teacher_w),
                                     dict(beta=0.5, softcap=3.0, teacher_softcap=4.0)),
        "linear_log_probs": (FL.linear_log_probs, (x, w, tokens), dict(with_entropy=True, temperature=0.7)),
    }


@pytest.mark.parametrize("gpu_arithmetic_mode", GPU_ARITHMETIC_MODES, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(_sharded_cases()))
def test_vocabulary_parallel_under_gpu_arithmetic(name, dtype, gpu_arithmetic_mode, group_of_one):
    """Each vocabulary-parallel function through its shard kernels, forward and every gradient, in the
    tolerance table of its dtype against the same function in float64 on one process (eager torch)."""
    torch.manual_seed(0)
    fn, args, kwargs = _sharded_cases()[name]
    floats = [a for a in args if a.is_floating_point()]
    ours_in = [a.to(dtype).requires_grad_() if a.is_floating_point() else a for a in args]
    ref_in = [a.to(dtype).double().requires_grad_() if a.is_floating_point() else a for a in args]
    with fusedloss.backend("triton"):
        ours = fn(*ours_in, **kwargs, process_group=group_of_one)
    with fusedloss.backend("torch"):
        reference = fn(*ref_in, **kwargs)
    ours, reference = (list(o) if isinstance(o, tuple) else [o] for o in (ours, reference))  # with_entropy: a pair
    upstream = [torch.rand(r.shape, dtype=torch.float64, device=DEVICE) + 0.5 for r in reference]
    grads = torch.autograd.grad(ours, [a for a in ours_in if a.is_floating_point()],
                                [u.to(o.dtype) for u, o in zip(upstream, ours)])
    expected = torch.autograd.grad(reference, [a for a in ref_in if a.is_floating_point()], upstream)
    for i, (o, r) in enumerate(zip(ours, reference)):
        helpers.assert_matches(o, r, dtype, f"{name} output {i}")
    for i, (g, e) in enumerate(zip(grads, expected)):
        helpers.assert_matches(g, e, dtype, f"{name} gradient {i}")
    assert len(grads) == len(floats)
