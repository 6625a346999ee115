"""Pointwise family: parity with torch (values and every gradient) for each loss, option, reduction,
dtype and both backends; broadcasting; the edges of each formula; bad input; grad_output handling.

Shapes of the parity harness and why:
  (1,)          one element: one program, every other lane masked
  (4097,)       one past a 4096-element block: a second program with a single live lane
  (3, 1023)     2-D, rows of 2**10 - 1: the flat index crosses rows inside a block
  (0,)          no elements: no launch; 'mean' is 0 / 0 = NaN as in torch, gradients empty
  "strided"     (33, 64) views of transposed buffers: every operand read through non-unit strides
Broadcasting (a weight, pos_weight, var or target smaller than the input, or an input smaller than the
target) has its own tests, as have shapes that coalesce to more than the kernel's three dimensions.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

import fusedloss
import fusedloss.functional as FL
import fusedloss.nn as FN
from fusedloss.bench import registry
from fusedloss.bench.traffic import measure_traffic
import helpers
from helpers import (DEVICE, Case, assert_matches, backend_context, grid_call, make_call, normal,
                     parity_grid, positive, probability, scaled, sign)

BACKENDS = ["triton", "torch"]
SHAPES = [(1,), (4097,), (3, 1023), (0,), "strided"]
STRIDED_SHAPE = (33, 64)


# ------------------------------------------------------------------ value makers (float64, in each domain)


logits = scaled(3)


def binary(shape):
    return torch.randint(0, 2, shape, device=DEVICE).double()


def counts(shape):
    return torch.poisson(3 * torch.rand(shape, dtype=torch.float64, device=DEVICE))


def log_probability(shape):
    return probability(shape).log()


def small_var(shape):
    """Half of the entries below eps = 0.1: the clamp and its straight-through gradient."""
    return torch.rand(shape, dtype=torch.float64, device=DEVICE) * 0.2


def last_dim(maker):
    return lambda shape: maker(shape[-1:])


def sigmoid_focal_reference(*args, **kwargs):
    """torchvision's formula in eager torch: fusedloss's torch path."""
    with fusedloss.backend("torch"):
        return FL.sigmoid_focal_loss(*args, **kwargs)


def torch_function(name):
    return sigmoid_focal_reference if name == "sigmoid_focal_loss" else getattr(F, name)


CASES = {
    "bce": Case("binary_cross_entropy", (probability, probability), (0, 1)),
    "bce+weight": Case("binary_cross_entropy", (probability, probability), (0, 1), tensor_kwargs={"weight": positive}),
    "bce_logits": Case("binary_cross_entropy_with_logits", (logits, probability), (0, 1)),
    "bce_logits+weight+pos_weight": Case("binary_cross_entropy_with_logits", (logits, probability), (0, 1),
                                         tensor_kwargs={"weight": positive, "pos_weight": last_dim(positive)}),
    "smooth_l1": Case("smooth_l1_loss", (normal, normal), (0, 1)),
    "smooth_l1(beta=0.3)": Case("smooth_l1_loss", (normal, normal), (0, 1), {"beta": 0.3}),
    "smooth_l1(beta=0)": Case("smooth_l1_loss", (normal, normal), (0, 1), {"beta": 0.0}),
    "huber": Case("huber_loss", (normal, normal), (0, 1)),
    "huber(delta=0.4)+weight": Case("huber_loss", (normal, normal), (0, 1), {"delta": 0.4},
                                    tensor_kwargs={"weight": positive}),
    "l1": Case("l1_loss", (normal, normal), (0, 1)),
    "l1+weight": Case("l1_loss", (normal, normal), (0, 1), tensor_kwargs={"weight": positive}),
    "mse": Case("mse_loss", (normal, normal), (0, 1)),
    "mse+weight": Case("mse_loss", (normal, normal), (0, 1), tensor_kwargs={"weight": positive}),
    "soft_margin": Case("soft_margin_loss", (logits, sign), (0,)),
    "kl": Case("kl_div", (log_probability, probability), (0, 1), reductions=("none", "batchmean", "sum")),
    "kl(log_target)": Case("kl_div", (log_probability, log_probability), (0, 1), {"log_target": True},
                           reductions=("none", "batchmean", "mean")),
    "poisson": Case("poisson_nll_loss", (normal, counts), (0, 1)),
    "poisson(full)": Case("poisson_nll_loss", (normal, counts), (0, 1), {"full": True}),
    "poisson(rate,full,eps)": Case("poisson_nll_loss", (positive, counts), (0, 1),
                                   {"log_input": False, "full": True, "eps": 1e-3}),
    "gaussian": Case("gaussian_nll_loss", (normal, normal, positive), (0, 1, 2)),
    "gaussian(full,eps=0.1)": Case("gaussian_nll_loss", (normal, normal, small_var), (0, 1, 2),
                                   {"full": True, "eps": 0.1}),
    "gaussian(var=0.7)": Case("gaussian_nll_loss", (normal, normal), (0, 1), {"var": 0.7}),
    "margin_ranking": Case("margin_ranking_loss", (normal, normal, sign), (0, 1, 2), {"margin": 0.2}),
    "hinge": Case("hinge_embedding_loss", (normal, sign), (0,), {"margin": 0.5}),
    "focal": Case("sigmoid_focal_loss", (logits, binary), (0, 1)),
    "focal(alpha=-1,gamma=1.5)": Case("sigmoid_focal_loss", (logits, probability), (0, 1),
                                      {"alpha": -1.0, "gamma": 1.5}),
    "focal(gamma=0)": Case("sigmoid_focal_loss", (logits, probability), (0, 1), {"gamma": 0.0}),
}


# ------------------------------------------------------------------ the parity harness


def check_parity(fn_name, args, kwargs, backend, grad_scale=0.37, upstream=None):
    """fusedloss vs torch at the same dtype vs torch in float64: the loss and every gradient."""
    helpers.check_parity(torch_function(fn_name), getattr(FL, fn_name), args, kwargs, backend, grad_scale, upstream)


@pytest.mark.parametrize("case_id,reduction,shape,dtype,backend", list(parity_grid(CASES, SHAPES, (4097,))))
def test_parity(case_id, reduction, shape, dtype, backend):
    case = CASES[case_id]
    args, kwargs = grid_call(case, shape, dtype, STRIDED_SHAPE)
    check_parity(case.fn, args, {**kwargs, "reduction": reduction}, backend)


def test_parity_grid_covers_every_loss():
    """Every benchmarked pointwise loss (test_bench: every fused function is benchmarked) is in the grid."""
    covered = {case.fn for case in CASES.values()}
    assert covered == {b.name for b in registry.REGISTRY if b.family == "pointwise"}


# ------------------------------------------------------------------ broadcasting


BROADCASTS = {
    # name: (fn, shapes of the positional tensors, kwargs (a tuple: a tensor of that shape), warning)
    "mse target (C,)": ("mse_loss", [(6, 9), (9,)], {}, UserWarning),
    "mse input (N,1)": ("mse_loss", [(6, 1), (6, 9)], {}, UserWarning),
    "l1 target (N,1)": ("l1_loss", [(6, 9), (6, 1)], {}, UserWarning),
    "smooth_l1 target (C,)": ("smooth_l1_loss", [(6, 9), (9,)], {"beta": 0.5}, UserWarning),
    "huber target (1,C)+weight": ("huber_loss", [(6, 9), (1, 9)], {"weight": (6, 9)}, UserWarning),
    "mse weighted mean, target (N,1)": ("mse_loss", [(6, 9), (6, 1)], {"weight": (6, 9)}, UserWarning),
    "bce weight (C,)": ("binary_cross_entropy", [(6, 9), (6, 9)], {"weight": (9,)}, None),
    "bce_logits weight (N,1) pos_weight (C,)": ("binary_cross_entropy_with_logits", [(6, 9), (6, 9)],
                                                {"weight": (6, 1), "pos_weight": (9,)}, None),
    "bce_logits pos_weight (N,1)": ("binary_cross_entropy_with_logits", [(4, 6, 9), (4, 6, 9)],
                                    {"pos_weight": (6, 1)}, None),
    "kl target (C,)": ("kl_div", [(6, 9), (9,)], {}, None),
    "poisson target (N,1)": ("poisson_nll_loss", [(6, 9), (6, 1)], {}, None),
    "gaussian var (N,)": ("gaussian_nll_loss", [(6, 9), (6, 9), (6,)], {}, None),
    "gaussian var (N,1)": ("gaussian_nll_loss", [(6, 9), (6, 9), (6, 1)], {}, None),
    "gaussian var (N,1,H,W)": ("gaussian_nll_loss", [(3, 4, 5, 6), (3, 4, 5, 6), (3, 1, 5, 6)], {}, None),
    "gaussian target (C,)": ("gaussian_nll_loss", [(6, 9), (9,), (6, 9)], {}, None),
    "margin_ranking input2 (N,1) target (1,C)": ("margin_ranking_loss", [(6, 9), (6, 1), (1, 9)], {}, None),
    "hinge target (C,)": ("hinge_embedding_loss", [(6, 9), (9,)], {}, None),
    "soft_margin target (C,)": ("soft_margin_loss", [(6, 9), (9,)], {}, None),
    "mse four dims after coalescing": ("mse_loss", [(2, 3, 4, 5), (2, 1, 4, 1)], {}, UserWarning),
}
DOMAINS = {  # value makers per function for positional tensors, and kwargs tensors
    "binary_cross_entropy": (probability, probability), "binary_cross_entropy_with_logits": (logits, probability),
    "kl_div": (log_probability, probability), "poisson_nll_loss": (normal, counts),
    "gaussian_nll_loss": (normal, normal, positive), "margin_ranking_loss": (normal, normal, sign),
    "hinge_embedding_loss": (normal, sign), "soft_margin_loss": (normal, sign),
}
NOT_DIFFERENTIABLE = {"hinge_embedding_loss": {1}, "soft_margin_loss": {1}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", BROADCASTS)
def test_broadcasting(name, reduction, dtype):
    fn, shapes, tensor_kwargs, warning = BROADCASTS[name]
    makers = DOMAINS.get(fn, (normal,) * len(shapes))
    args = [makers[i](shape).to(dtype).requires_grad_(i not in NOT_DIFFERENTIABLE.get(fn, ()))
            for i, shape in enumerate(shapes)]
    kwargs = {k: positive(v).to(dtype) if isinstance(v, tuple) else v for k, v in tensor_kwargs.items()}
    if warning is not None:
        with fusedloss.backend("triton"), pytest.warns(warning, match="target size"):
            getattr(FL, fn)(*args, **kwargs)
    check_parity(fn, args, {**kwargs, "reduction": reduction}, "triton")


@pytest.mark.parametrize("fn", ["hinge_embedding_loss", "mse_loss", "l1_loss", "soft_margin_loss", "margin_ranking_loss"])
def test_integer_target(fn):
    """torch promotes an integer target for these losses; the kernel reads it in its own dtype. (The
    reference takes the same values as floats: torch's CUDA backward rejects mixed dtypes for some.)"""
    x = normal((5, 7)).float().requires_grad_()
    target = sign((5, 7)).long()
    args = (x, normal((5, 7)).float()) if fn == "margin_ranking_loss" else (x,)
    with fusedloss.backend("triton"):
        got = getattr(FL, fn)(*args, target, reduction="none")
    expected = getattr(F, fn)(*args, target.float(), reduction="none")
    torch.testing.assert_close(got, expected)
    upstream = torch.rand_like(expected)
    torch.testing.assert_close(torch.autograd.grad(got, x, upstream)[0], torch.autograd.grad(expected, x, upstream)[0])


# ------------------------------------------------------------------ the edges of each formula


EDGES = {
    "bce at 0 and 1": ("binary_cross_entropy", [[0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1e-30, 0.5],
                                                [0.0, 1.0, 1.0, 0.0, 0.3, 0.3, 1.0, 0.5]], {}),
    "bce_logits at +-100": ("binary_cross_entropy_with_logits", [[-100.0, 100.0, -100.0, 100.0, 30.0, 0.0],
                                                                 [0.0, 1.0, 1.0, 0.0, 0.3, 0.5]],
                            {"pos_weight": [3.0]}),
    "smooth_l1 at |d| == beta": ("smooth_l1_loss", [[0.5, -0.5, 0.25, 0.0, 1.5], [0.0, 0.0, -0.25, 0.0, 1.0]],
                                 {"beta": 0.5}),
    "smooth_l1 beta=0 at d == 0": ("smooth_l1_loss", [[0.5, 0.0, -1.0], [0.5, 0.0, 1.0]], {"beta": 0.0}),
    "huber at |d| == delta": ("huber_loss", [[0.5, -0.5, 0.25, 0.0, 2.0], [0.0, 0.0, -0.25, 0.0, 1.0]],
                              {"delta": 0.5}),
    "l1 at d == 0": ("l1_loss", [[1.0, 0.0, -2.0], [1.0, 0.0, 3.0]], {}),
    "soft_margin at +-100": ("soft_margin_loss", [[100.0, -100.0, 100.0, 0.0], [-1.0, 1.0, 1.0, -1.0]], {}),
    "kl target 0 and negative": ("kl_div", [[-1.0, -2.0, -0.5], [0.0, -0.5, 1.0]], {}),
    "kl log_target -inf": ("kl_div", [[-1.0, -2.0], [float("-inf"), -0.5]], {"log_target": True}),
    "poisson full around 1": ("poisson_nll_loss", [[0.5, 0.2, 1.0, 2.0, 3.0, 0.1],
                                                   [0.0, 0.5, 1.0, 1.0001, 2.0, -1.0]], {"full": True}),
    "poisson rate at 0": ("poisson_nll_loss", [[0.0, 0.0, 2.0], [0.0, 2.0, 3.0]], {"log_input": False, "full": True}),
    "gaussian var below eps": ("gaussian_nll_loss", [[0.5, 0.2, 1.0, -1.0], [0.0, 1.0, 1.0, 2.0],
                                                     [1e-8, 1e-6, 0.0, 2.0]], {}),
    "margin_ranking at u == 0": ("margin_ranking_loss", [[0.5, 1.0, 0.0], [0.0, 0.5, 0.0], [1.0, -1.0, 1.0]],
                                 {"margin": 0.5}),
    "hinge at margin - x == 0": ("hinge_embedding_loss", [[1.0, 1.0, 2.0, 0.5], [-1.0, 1.0, 0.5, -1.0]],
                                 {"margin": 1.0}),
    "focal saturated": ("sigmoid_focal_loss", [[100.0, -100.0, 100.0, -100.0, 0.0], [1.0, 0.0, 0.0, 1.0, 0.5]], {}),
    # (x = 10: 1 - sigmoid(x) in the float64 reference still has 12 good digits)
    "focal gamma=0 saturated": ("sigmoid_focal_loss", [[100.0, -100.0, 10.0], [1.0, 0.0, 1.0]], {"gamma": 0.0}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", EDGES)
def test_formula_edges(name, dtype):
    """Values exactly where a formula switches branch, clamps or saturates: loss and every gradient
    against torch in float64 (torch's NaN and inf included)."""
    fn, values, kwargs = EDGES[name]
    args = [torch.tensor(v, dtype=dtype, device=DEVICE).requires_grad_() for v in values]
    if fn in NOT_DIFFERENTIABLE:
        args[1].requires_grad_(False)
    kwargs = {k: torch.tensor(v, dtype=dtype, device=DEVICE) if isinstance(v, list) else v for k, v in kwargs.items()}
    check_parity(fn, args, {**kwargs, "reduction": "none"}, "triton",
                 upstream=torch.ones(len(values[0]), dtype=torch.float64, device=DEVICE))


def test_gaussian_var_exactly_eps_and_tiny():
    """The clamp keeps the gradient to var (torch clamps without autograd): -0.5 d^2 / eps^2 at var < eps."""
    x = torch.tensor([0.5, 0.5], dtype=torch.float64, device=DEVICE)
    var = torch.tensor([1e-6, 1e-12], dtype=torch.float64, device=DEVICE, requires_grad=True)
    with fusedloss.backend("triton"):
        loss = FL.gaussian_nll_loss(x, torch.zeros_like(x), var, reduction="sum")
    grad, = torch.autograd.grad(loss, var)
    expected = 0.5 * (1 / 1e-6 - 0.25 / 1e-12)
    torch.testing.assert_close(grad, torch.full_like(grad, expected))


# ------------------------------------------------------------------ values torch checks on the host


def test_bce_out_of_range_gives_nan_on_triton_and_raises_in_debug(fusedloss_env):
    x = torch.tensor([0.5, 1.5, 0.2, -0.1], device=DEVICE, requires_grad=True)
    target = torch.tensor([0.5, 0.5, 1.2, 0.0], device=DEVICE)
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(x.cpu(), target.cpu())  # torch's CPU check (CUDA: a device assert)
    with fusedloss.backend("triton"):
        loss = FL.binary_cross_entropy(x, target, reduction="none")
    grad, = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1:]).all()
    assert torch.isfinite(grad[0]) and torch.isnan(grad[1:]).all()
    fusedloss_env("FUSEDLOSS_DEBUG", "1")
    for bad_input, bad_target, message in [(x, target.clamp(0, 1), "input"), (x.clamp(0, 1), target, "target")]:
        with pytest.raises(RuntimeError) as torch_error:
            F.binary_cross_entropy(bad_input.detach().cpu(), bad_target.cpu())
        with fusedloss.backend("triton"), pytest.raises(RuntimeError) as our_error:
            FL.binary_cross_entropy(bad_input, bad_target)
        assert str(our_error.value) == str(torch_error.value) and message in str(our_error.value)


def test_negative_var_gives_nan_on_triton_and_raises_in_debug(fusedloss_env):
    x, target = normal((4,)), normal((4,))
    var = torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=torch.float64, device=DEVICE, requires_grad=True)
    with pytest.raises(ValueError, match="negative"):
        F.gaussian_nll_loss(x, target, var)
    with fusedloss.backend("triton"):
        loss = FL.gaussian_nll_loss(x, target, var, reduction="none")
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2, 3]]).all()
    assert torch.isnan(torch.autograd.grad(loss.sum(), var)[0][1])
    fusedloss_env("FUSEDLOSS_DEBUG", "1")
    with fusedloss.backend("triton"), pytest.raises(ValueError, match="var has negative entry/entries"):
        FL.gaussian_nll_loss(x, target, var)


# ------------------------------------------------------------------ bad input: torch's exception types


def bad_calls():
    x, y = torch.rand(4, 5), torch.rand(4, 5)
    return {
        "bce target size": ("binary_cross_entropy", (x, y[:, :3]), {}),
        "bce bad reduction": ("binary_cross_entropy", (x, y), {"reduction": "average"}),
        "bce weight not broadcastable": ("binary_cross_entropy", (x, y), {"weight": torch.ones(3)}),
        "bce weight larger than input": ("binary_cross_entropy", (x[0], y[0]), {"weight": torch.ones(4, 5)}),
        "bce weight requires grad": ("binary_cross_entropy", (x, y), {"weight": torch.ones(5, requires_grad=True)}),
        "bce integer target": ("binary_cross_entropy", (x, y.long()), {}),
        "bce_logits target size": ("binary_cross_entropy_with_logits", (x, y[:3]), {}),
        "bce_logits pos_weight not broadcastable": ("binary_cross_entropy_with_logits", (x, y),
                                                    {"pos_weight": torch.ones(4)}),
        "bce_logits pos_weight larger": ("binary_cross_entropy_with_logits", (x[0], y[0]),
                                         {"pos_weight": torch.ones(4, 5)}),
        "bce_logits pos_weight requires grad": ("binary_cross_entropy_with_logits", (x, y),
                                                {"pos_weight": torch.ones(5, requires_grad=True)}),
        "smooth_l1 negative beta": ("smooth_l1_loss", (x, y), {"beta": -1.0}),
        "smooth_l1 not broadcastable": ("smooth_l1_loss", (x, y[:, :3]), {}),
        "huber delta 0": ("huber_loss", (x, y), {"delta": 0.0}),
        "huber weight size": ("huber_loss", (x, y), {"weight": torch.ones(5)}),
        "l1 weight size": ("l1_loss", (x, y), {"weight": torch.ones(4, 1)}),
        "mse bad reduction": ("mse_loss", (x, y), {"reduction": "batchmean"}),
        "mse weighted bad reduction": ("mse_loss", (x, y), {"reduction": "avg", "weight": torch.ones(4, 5)}),
        # torch's weighted path knows no 'elementwise_mean' (the unweighted one takes it as 'mean')
        "l1 weighted elementwise_mean": ("l1_loss", (x, y), {"reduction": "elementwise_mean",
                                                             "weight": torch.ones(4, 5)}),
        "huber weighted elementwise_mean": ("huber_loss", (x, y), {"reduction": "elementwise_mean",
                                                                   "weight": torch.ones(4, 5)}),
        "huber weight size before delta": ("huber_loss", (x, y), {"delta": -1.0, "weight": torch.ones(5)}),
        "mse weighted not broadcastable": ("mse_loss", (x, y[:, :3]), {"weight": torch.ones(4, 3)}),
        "poisson elementwise_mean": ("poisson_nll_loss", (x, y), {"reduction": "elementwise_mean"}),
        "soft_margin target requires grad": ("soft_margin_loss", (x, y.clone().requires_grad_()), {}),
        "soft_margin input smaller than target": ("soft_margin_loss", (x[0], y), {}),
        "kl bad reduction": ("kl_div", (x, y), {"reduction": "elementwise"}),
        "kl integer target": ("kl_div", (x, y.long()), {}),
        "poisson batchmean": ("poisson_nll_loss", (x, y), {"reduction": "batchmean"}),
        "gaussian negative float var": ("gaussian_nll_loss", (x, y, -1.0), {}),
        "gaussian var size": ("gaussian_nll_loss", (x, y, torch.ones(4, 3)), {}),
        "gaussian var (1,1)": ("gaussian_nll_loss", (x, y, torch.ones(1, 1)), {}),
        "gaussian 0-d var": ("gaussian_nll_loss", (x, y, torch.tensor(1.0)), {}),
        "gaussian int var": ("gaussian_nll_loss", (x, y, 1), {}),
        "gaussian bad reduction": ("gaussian_nll_loss", (x, y, torch.ones(4, 5)), {"reduction": "batchmean"}),
        "margin_ranking dims": ("margin_ranking_loss", (x, y[0], torch.ones(4, 5)), {}),
        "margin_ranking not broadcastable": ("margin_ranking_loss", (x, y[:3], torch.ones(4, 5)), {}),
        "hinge bad reduction": ("hinge_embedding_loss", (x, y), {"reduction": "max"}),
        "focal bad reduction": ("sigmoid_focal_loss", (x, y), {"reduction": "batchmean"}),
        "focal target size": ("sigmoid_focal_loss", (x, y[:2]), {}),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", bad_calls())
def test_bad_input_raises_torch_exception_type(case, backend):
    fn, args, kwargs = bad_calls()[case]
    with pytest.raises(Exception) as torch_error:
        torch_function(fn)(*args, **kwargs)
    move = lambda v: v.to(DEVICE) if torch.is_tensor(v) else v  # noqa: E731
    args, kwargs = [move(a) for a in args], {k: move(v) for k, v in kwargs.items()}
    with fusedloss.backend(backend), pytest.raises(Exception) as our_error:
        getattr(FL, fn)(*args, **kwargs)
    assert type(our_error.value) is type(torch_error.value), (our_error.value, torch_error.value)


def test_warnings_match_torch():
    x, y = torch.rand(4, 5, device=DEVICE), torch.rand(5, device=DEVICE)
    with fusedloss.backend("triton"):
        with pytest.warns(UserWarning, match="divides the total loss by both"):
            FL.kl_div(x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no 'mean' warning for batchmean, nor for the legacy arguments
            FL.kl_div(x, y, reduction="batchmean")
        with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
            FL.kl_div(x, y, size_average=True)
        with pytest.warns(UserWarning, match="Using a target size"):
            FL.mse_loss(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["mse_loss", "poisson_nll_loss", "kl_div", "margin_ranking_loss"])
def test_legacy_reduction_arguments(fn, backend):
    x, y = normal((6, 5)).float().requires_grad_(), probability((6, 5)).float()
    args = (x, y, sign((6, 5)).float()) if fn == "margin_ranking_loss" else (x, y)
    for size_average, reduce in [(None, False), (False, None), (True, True)]:
        with pytest.warns(UserWarning):
            expected = getattr(F, fn)(*args, size_average=size_average, reduce=reduce)
        with backend_context(backend), pytest.warns(UserWarning):
            got = getattr(FL, fn)(*args, size_average=size_average, reduce=reduce)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["binary_cross_entropy", "binary_cross_entropy_with_logits", "smooth_l1_loss",
                                "huber_loss", "l1_loss", "mse_loss", "soft_margin_loss", "kl_div",
                                "margin_ranking_loss", "hinge_embedding_loss"])
def test_deprecated_elementwise_mean_is_mean(fn, backend):
    """torch still takes reduction='elementwise_mean' as 'mean' (with a deprecation warning); the Triton
    path once passed the name on and the kernels summed."""
    x, y = probability((6, 5)).float().requires_grad_(), probability((6, 5)).float()
    args = (x, y, sign((6, 5)).float()) if fn == "margin_ranking_loss" else (x, y)
    with pytest.warns(UserWarning, match="elementwise_mean"):
        expected = getattr(F, fn)(*args, reduction="elementwise_mean")
    with backend_context(backend), pytest.warns(UserWarning, match="elementwise_mean"):
        got = getattr(FL, fn)(*args, reduction="elementwise_mean")
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(expected, x)[0])


# ------------------------------------------------------------------ grad_output, graph reuse, determinism


@pytest.mark.parametrize("upstream", [1.0, 2.0**16, 1 / 7])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case_id", ["mse", "gaussian(full,eps=0.1)", "bce_logits+weight+pos_weight"])
def test_grad_output_scalars(case_id, reduction, upstream):
    """grad_output 1 (the rescale skipped on the device), loss scaling 2**16 and accumulation 1/7."""
    case = CASES[case_id]
    args, kwargs = make_call(case, (5, 301), torch.float32)
    check_parity(case.fn, args, {**kwargs, "reduction": reduction}, "triton",
                 upstream=torch.tensor(upstream, dtype=torch.float64, device=DEVICE))


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_retain_graph_backward_twice(reduction):
    """The first backward hands its buffers to autograd (scaled in place); a second one recomputes them."""
    x, y, var = normal((7, 11)).requires_grad_(), normal((7, 11)).requires_grad_(), positive((7, 1)).requires_grad_()
    with fusedloss.backend("triton"):
        loss = FL.gaussian_nll_loss(x, y, var, reduction=reduction, full=True)
    reference = F.gaussian_nll_loss(x, y, var, reduction=reduction, full=True)
    upstream = torch.rand(loss.shape, dtype=torch.float64, device=DEVICE) + 0.5
    for scale in (3.0, 1.0, 3.0):
        got = torch.autograd.grad(loss, (x, y, var), upstream * scale, retain_graph=True)
        expected = torch.autograd.grad(reference, (x, y, var), upstream * scale, retain_graph=True)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e)
    loss.backward(upstream, retain_graph=True)
    loss.backward(upstream)
    expected = torch.autograd.grad(reference, (x, y, var), 2 * upstream)
    for tensor, e in zip((x, y, var), expected):
        torch.testing.assert_close(tensor.grad, e)


def test_loss_used_twice_in_one_graph():
    x = normal((9, 13)).float().requires_grad_()
    target = probability((9, 13)).float()
    with fusedloss.backend("triton"):
        loss = FL.binary_cross_entropy_with_logits(x, target)
        total = loss + 3 * loss + FL.mse_loss(x, target, reduction="sum")
    grad, = torch.autograd.grad(total, x)
    x64 = x.detach().double().requires_grad_()
    ref = 4 * F.binary_cross_entropy_with_logits(x64, target.double()) + F.mse_loss(x64, target.double(),
                                                                                    reduction="sum")
    assert_matches(total, ref, torch.float32, "loss")
    assert_matches(grad, torch.autograd.grad(ref, x64)[0], torch.float32, "grad")


@pytest.mark.parametrize("case_id", ["bce_logits+weight+pos_weight", "gaussian", "focal"])
def test_deterministic_bitwise(case_id):
    case = CASES[case_id]
    args, kwargs = make_call(case, (3, 4099), torch.bfloat16)
    results = []
    for _ in range(2):
        with fusedloss.backend("triton"):
            loss = getattr(FL, case.fn)(*args, **kwargs, reduction="sum")
        results.append((loss, *torch.autograd.grad(loss, [args[i] for i in case.grad])))
    assert all(torch.equal(a, b) for a, b in zip(*results))


GRADCHECK_CASES = {  # smooth where differentiated: off every kink, clamp and masked region of the formula
    "bce_logits+weight+pos_weight": CASES["bce_logits+weight+pos_weight"],
    "poisson(rate,full), target > 1": Case("poisson_nll_loss", (positive, lambda s: positive(s) + 1.5), (0, 1),
                                           {"log_input": False, "full": True, "eps": 1e-3}),
    "kl": CASES["kl"],
    "kl(log_target)": CASES["kl(log_target)"],
    "gaussian(full)": Case("gaussian_nll_loss", (normal, normal, positive), (0, 1, 2), {"full": True}),
    "focal(alpha=-1,gamma=1.5)": CASES["focal(alpha=-1,gamma=1.5)"],
    "focal": Case("sigmoid_focal_loss", (logits, probability), (0, 1)),
    "huber(delta=0.4)+weight": CASES["huber(delta=0.4)+weight"],
    "smooth_l1(beta=0.3)": CASES["smooth_l1(beta=0.3)"],
    "soft_margin": CASES["soft_margin"],
}


@pytest.mark.parametrize("case_id", [*GRADCHECK_CASES, "margin_ranking"])
def test_gradcheck_float64(case_id):
    if case_id == "margin_ranking":
        x2, target = normal((2, 3)), sign((2, 3))
        # u = 0.2 - target (x1 - x2) at least 0.1 from the kink: half active, half not
        x1 = x2 - target * (0.2 + positive((2, 3))) * sign((2, 3))
        args, kwargs, fn = [x1, x2, target], {"margin": 0.2}, "margin_ranking_loss"
        args = [a.requires_grad_() for a in args]
    else:
        case = GRADCHECK_CASES[case_id]
        args, kwargs = make_call(case, (2, 3), torch.float64)
        fn = case.fn
    for reduction in ("none", "sum"):
        with fusedloss.backend("triton"):
            assert torch.autograd.gradcheck(lambda *a: getattr(FL, fn)(*a, **kwargs, reduction=reduction),
                                            tuple(args))




def test_no_graph_without_grad():
    x, y = normal((4, 6)).requires_grad_(), normal((4, 6))
    with fusedloss.backend("triton"):
        with torch.no_grad():
            loss = FL.smooth_l1_loss(x, y)
        plain = FL.smooth_l1_loss(x.detach(), y)
    assert loss.grad_fn is None and plain.grad_fn is None
    torch.testing.assert_close(loss, F.smooth_l1_loss(x, y).detach())
    torch.testing.assert_close(plain, loss)


def test_target_without_gradient_in_torch_gets_none():
    """hinge_embedding_loss's target only selects a branch: like torch, it is not in the graph."""
    x, target = normal((5,)).requires_grad_(), sign((5,)).requires_grad_()
    with fusedloss.backend("triton"):
        loss = FL.hinge_embedding_loss(x, target)
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(loss, target)


# ------------------------------------------------------------------ traffic: the fused pass is minimal


POINTWISE_BENCHES = [b for b in registry.REGISTRY if b.family == "pointwise"]


@pytest.mark.skipif(DEVICE != "cpu", reason="the traffic meter hooks Triton's interpreter")
@pytest.mark.parametrize("bench", POINTWISE_BENCHES, ids=lambda b: b.label)
def test_traffic_forward_backward(bench):
    """grad_output 1: 1.0x the minimal (the gradient written by the forward, the rescale skipped on the
    device). Another scalar: reads and writes each gradient once more, (I + 3G) / (I + G) with I the
    input bytes and G the gradient bytes (5/3 for one input and one target)."""
    inputs = bench.make_inputs((3, 101) if "pos_weight" in bench.label else (301,), torch.float32, "cpu")
    impl = registry.fusedloss_impl(bench)
    minimal = bench.minimal_bytes(inputs, backward=True)
    grad_bytes = minimal - inputs.nbytes()
    reductions = 64  # bytes: the partial sums, their torch sum and 'mean' division, grad_output's load
    with fusedloss.backend("triton"):
        unit = measure_traffic(impl, inputs).total
        scaled = measure_traffic(impl, inputs, grad_scale=2.0**16).total
    assert minimal <= unit <= minimal + reductions
    assert minimal + 2 * grad_bytes <= scaled <= minimal + 2 * grad_bytes + reductions


# ------------------------------------------------------------------ drop-in API


MODULES = {
    # module: (constructor kwargs, value makers of the forward's arguments)
    "BCELoss": (dict(weight=torch.rand(7) + 0.5, reduction="sum"), (probability, probability)),
    "BCEWithLogitsLoss": (dict(weight=torch.rand(7), pos_weight=torch.rand(7) + 0.5), (logits, probability)),
    "SmoothL1Loss": (dict(beta=0.3), (normal, normal)),
    "HuberLoss": (dict(delta=0.7, reduction="none"), (normal, normal)),
    "L1Loss": (dict(), (normal, normal)),
    "MSELoss": (dict(reduction="sum"), (normal, normal)),
    "SoftMarginLoss": (dict(), (normal, sign)),
    "KLDivLoss": (dict(reduction="batchmean", log_target=True), (log_probability, log_probability)),
    "PoissonNLLLoss": (dict(log_input=False, full=True), (positive, counts)),
    "GaussianNLLLoss": (dict(full=True, eps=1e-3), (normal, normal, positive)),
    "MarginRankingLoss": (dict(margin=0.1), (normal, normal, sign)),
    "HingeEmbeddingLoss": (dict(margin=0.3), (normal, sign)),
}


@pytest.mark.parametrize("module", MODULES)
def test_module_drop_in(module):
    helpers.check_module_drop_in(module, *MODULES[module])


def test_sigmoid_focal_loss_module():
    module = FN.SigmoidFocalLoss(alpha=0.5, gamma=1.0, reduction="mean")
    assert "alpha=0.5" in repr(module) and "gamma=1.0" in repr(module)
    x, target = logits((6, 4)).float().requires_grad_(), binary((6, 4)).float()
    with fusedloss.backend("triton"):
        got = module(x, target)
    torch.testing.assert_close(got, sigmoid_focal_reference(x, target, alpha=0.5, gamma=1.0, reduction="mean"))


def test_sigmoid_focal_reference_is_torchvisions_formula():
    """The eager path (the reference of the Triton path) against the documented formula, written out."""
    x, t = logits((50,)), probability((50,))
    p = torch.sigmoid(x)
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    torch.testing.assert_close(sigmoid_focal_reference(x, t, reduction="sum"), (alpha_t * ce * (1 - p_t) ** 2).sum())
    torch.testing.assert_close(sigmoid_focal_reference(x, t, alpha=-1, gamma=0.5),
                               ce * (1 - p_t) ** 0.5)


@pytest.mark.parametrize("options", [dict(), dict(alpha=-1.0, gamma=0.5, reduction="sum"),
                                     dict(alpha=0.7, gamma=0.0, reduction="mean")], ids=str)
def test_sigmoid_focal_loss_matches_torchvision(options):
    """Where torchvision is installed (the GPU image has it): its own function as the reference."""
    ops = pytest.importorskip("torchvision.ops")
    x = logits((7, 33)).float().requires_grad_()
    target = probability((7, 33)).float().requires_grad_()
    with fusedloss.backend("triton"):
        got = FL.sigmoid_focal_loss(x, target, **options)
    expected = ops.sigmoid_focal_loss(x, target, **options)
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=1e-6)
    for ours, theirs in zip(torch.autograd.grad(got.sum(), (x, target)), torch.autograd.grad(expected.sum(), (x, target))):
        torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-6)


# ------------------------------------------------------------------ dispatcher


@pytest.mark.parametrize("call", ["mixed dtypes", "trainable weight", "integer input"])
def test_unsupported_options_fall_back_or_raise(call):
    x = normal((4, 5)).float().requires_grad_()
    if call == "mixed dtypes":
        args, kwargs, reason = (x, normal((4, 5))), {}, "different dtypes"
    elif call == "trainable weight":
        args, kwargs, reason = (x, normal((4, 5)).float()), {"weight": positive((4, 5)).float().requires_grad_()}, \
            "weight that requires grad"
    else:
        args, kwargs, reason = (normal((4, 5)).long(), normal((4, 5)).float()), {}, "Long input"
    with fusedloss.backend("triton"), pytest.raises(RuntimeError, match=reason):
        FL.mse_loss(*args, **kwargs)
    decision = fusedloss.explain(FL.mse_loss, *args, **kwargs)
    assert decision.backend == "torch"
    if DEVICE == "cuda":
        assert reason in decision.reason
    torch.testing.assert_close(FL.mse_loss(*args, **kwargs), F.mse_loss(*args, **kwargs))


@pytest.mark.gpu
@pytest.mark.parametrize("fn", ["binary_cross_entropy_with_logits", "mse_loss"])
def test_auto_uses_triton_on_cuda(fn):
    x, y = torch.randn(64, device=DEVICE), torch.rand(64, device=DEVICE)
    assert fusedloss.explain(getattr(FL, fn), x, y).backend == "triton"


@pytest.mark.gpu
def test_64bit_offsets():
    """More than 2**31 elements (bf16: 4.3 GB per operand): the flat index and offsets are 64-bit."""
    n = 2**31 + 4097
    x = torch.zeros(n, device=DEVICE, dtype=torch.bfloat16)
    x[-3:] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16, device=DEVICE)
    x.requires_grad_()
    target = torch.zeros_like(x)
    with fusedloss.backend("triton"):
        loss = FL.mse_loss(x, target, reduction="sum")
    assert float(loss) == 14.0
    grad, = torch.autograd.grad(loss, x)
    assert grad[-3:].tolist() == [2.0, 4.0, 6.0] and float(grad[:-3].abs().sum()) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_float16_gradient_beyond_float16_before_grad_output(reduction, backend):
    """The gradient for grad_output 1 may exceed float16's range where the real one, scaled by a grad_output
    below 1, does not (binary cross entropy: -1/x = -1e5 at x = 1e-5; torch gives -9984 for grad_output
    0.1): the forward keeps it in float32 for float16 operands. It once came back -inf."""
    x = torch.tensor([1e-5, 0.5, 2e-5], dtype=torch.float16, device=DEVICE).requires_grad_()
    y = torch.ones(3, dtype=torch.float16, device=DEVICE)
    upstream = torch.full((3,) if reduction == "none" else (), 0.1 if reduction != "mean" else 0.3,
                          dtype=torch.float16, device=DEVICE)
    expected = torch.autograd.grad(F.binary_cross_entropy(x, y, reduction=reduction), x, upstream)[0]
    with backend_context(backend):
        got = torch.autograd.grad(FL.binary_cross_entropy(x, y, reduction=reduction), x, upstream)[0]
    assert got.dtype == torch.float16 and torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=0)
