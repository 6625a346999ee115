"""Row-margin family: parity with torch (values and every gradient) for each loss, option, reduction, dtype
and both backends; the target edge cases torch's own kernels got wrong; extreme values; bad input;
grad_output handling; determinism; gradcheck; traffic; the drop-in API; the ranking losses against the
reference library's formulas; ctc_loss routed to torch.

Shapes of the parity harness and why (rows x D, D the classes or embedding features):
  (7, 300)   D above the interpreter's 256-element row tile: the column loops run twice (multilabel_margin's
             128-class tiles three times), and rows with more targets than its 8-target block
  (3, 13)    D odd and small: several rows per program, masking on both axes
  (1, 5)     one row
  (13,)      the 1-D form (a 0-d target where torch takes one)
  "strided"  (6, 40) views of transposed buffers: every operand (2-D targets too) read through strides
No rows, no features and broadcasting have their own tests. torch's CPU kernels of multi_margin_loss and
multilabel_margin_loss have no 16-bit versions: there the 16-bit results are checked against float64
only (helpers.check_parity); on a GPU against torch's CUDA kernels too.
"""
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F

import fusedloss
import fusedloss.functional as FL
import fusedloss.nn as FN
import helpers
from fusedloss.bench import registry
from fusedloss.bench.traffic import measure_traffic
from helpers import DEVICE, DTYPES, Case, grid_call, make_call, normal, parity_grid, positive, probability, scaled

BACKENDS = ["triton", "torch"]
SHAPES = [(7, 300), (3, 13), (1, 5), (13,), "strided"]
LOW_PRECISION_SHAPES = [(7, 300), (3, 13)]
STRIDED_SHAPE = (6, 40)


# ------------------------------------------------------------------ value makers (float64; shape = the input's)


scores = scaled(3)


def small(shape):
    """p = 0.5 distances grow as (sum |u|^0.5)^2: small features keep them inside float16's range."""
    return 0.01 * normal(shape)


def class_weight(shape):
    return positive(shape[-1:])


def binary(shape):
    return (torch.rand(shape, device=DEVICE) < 0.3).long()


def class_index(shape):
    """multi_margin_loss targets: one class per row ((1,) for a 1-D input), the last class included."""
    n_rows = shape[0] if len(shape) == 2 else 1
    target = torch.randint(0, shape[-1], (n_rows,), device=DEVICE)
    if n_rows:
        target[-1] = shape[-1] - 1
    return target


LIST_LENGTHS = [0, 1, 9, 3, 5, 2, 4]  # 0: a -1 at position 0; 9: more than one block of 8 targets


def class_lists(shape):
    """multilabel_margin_loss targets: per row a list of classes (a duplicate in some), then -1 padding,
    then leftovers after the pad (ignored by torch, and in range as torch requires)."""
    rows, n_classes = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
    target = torch.randint(0, n_classes, (rows, n_classes), device=DEVICE)
    for i in range(rows):
        k = min(LIST_LENGTHS[i % len(LIST_LENGTHS)], n_classes)
        target[i, :k] = torch.randperm(n_classes, device=DEVICE)[:k]
        if k >= 3:
            target[i, 2] = target[i, 0]  # a duplicate counts twice, as in torch
        if k < n_classes:
            target[i, k] = -1
    return target.reshape(shape)


def row_sign(shape):
    """cosine_embedding_loss targets: +1 / -1 per row, and a 0 (neither: loss 0); () for 1-D inputs."""
    if len(shape) == 1:
        return torch.tensor(-1, device=DEVICE)
    return torch.tensor([1, -1, 1, -1, 0], device=DEVICE).repeat(shape[0])[:shape[0]]


EMBEDDING = (normal, normal, normal)
CASES = {
    "multi_margin": Case("multi_margin_loss", (scores, class_index), (0,)),
    "multi_margin(p=2,margin=0.3)+weight": Case("multi_margin_loss", (scores, class_index), (0,),
                                                {"p": 2, "margin": 0.3}, {"weight": class_weight}),
    "multilabel_margin": Case("multilabel_margin_loss", (scores, class_lists), (0,)),
    "multilabel_soft_margin": Case("multilabel_soft_margin_loss", (scores, probability), (0, 1)),
    "multilabel_soft_margin(long target)+weight": Case("multilabel_soft_margin_loss", (scores, binary), (0,),
                                                       tensor_kwargs={"weight": class_weight}),
    "cosine_embedding(margin=0.2)": Case("cosine_embedding_loss", EMBEDDING[:2] + (row_sign,), (0, 1), {"margin": 0.2}),
    "cosine_embedding(margin=-0.4)": Case("cosine_embedding_loss", EMBEDDING[:2] + (row_sign,), (0, 1),
                                          {"margin": -0.4}),
    "triplet": Case("triplet_margin_loss", EMBEDDING, (0, 1, 2)),
    "triplet(p=1,swap,margin=0.5)": Case("triplet_margin_loss", EMBEDDING, (0, 1, 2),
                                         {"p": 1, "swap": True, "margin": 0.5}),
    "triplet(p=3,eps=0.1,swap)": Case("triplet_margin_loss", EMBEDDING, (0, 1, 2), {"p": 3.0, "eps": 0.1, "swap": True}),
    "triplet(p=0.5,margin=0.1)": Case("triplet_margin_loss", (small, small, small), (0, 1, 2), {"p": 0.5, "margin": 0.1}),
    "triplet_with_distance(swap)": Case("triplet_margin_with_distance_loss", EMBEDDING, (0, 1, 2), {"swap": True}),
    "pairwise_distance": Case("pairwise_distance", EMBEDDING[:2], (0, 1), reductions=(None,)),
    "pairwise_distance(p=1.5,eps=0,keepdim)": Case("pairwise_distance", EMBEDDING[:2], (0, 1),
                                                   {"p": 1.5, "eps": 0.0, "keepdim": True}, reductions=(None,)),
    "cosine_similarity(dim=-1)": Case("cosine_similarity", EMBEDDING[:2], (0, 1), {"dim": -1}, reductions=(None,)),
    "cosine_similarity(dim=0)": Case("cosine_similarity", EMBEDDING[:2], (0, 1), {"dim": 0, "eps": 0.5},
                                     reductions=(None,)),
}


# ------------------------------------------------------------------ the parity harness


def with_reduction(kwargs, reduction):
    return kwargs if reduction is None else {**kwargs, "reduction": reduction}


def check_parity(fn, args, kwargs, backend, grad_scale=0.37, upstream=None):
    helpers.check_parity(getattr(F, fn), getattr(FL, fn), args, kwargs, backend, grad_scale, upstream)


@pytest.mark.parametrize("case_id,reduction,shape,dtype,backend",
                         list(parity_grid(CASES, SHAPES, (3, 13), LOW_PRECISION_SHAPES)))
def test_parity(case_id, reduction, shape, dtype, backend):
    case = CASES[case_id]
    args, kwargs = grid_call(case, shape, dtype, STRIDED_SHAPE)
    check_parity(case.fn, args, with_reduction(kwargs, reduction), backend)


def test_parity_grid_covers_every_fused_function():
    covered = {case.fn for case in CASES.values()} | {"rank_hinge_loss", "rank_cross_entropy_loss"}
    assert covered == {b.name for b in registry.REGISTRY if b.family == "row margin"}


@pytest.mark.parametrize("case_id", ["multi_margin(p=2,margin=0.3)+weight", "multilabel_margin",
                                     "multilabel_soft_margin(long target)+weight", "triplet(p=1,swap,margin=0.5)"])
def test_sliced_views(case_id):
    """Every other element of a wider buffer (column stride 2) for every operand, 2-D targets included."""
    case = CASES[case_id]
    args, kwargs = make_call(case, (5, 37), torch.float32, layout="sliced")
    check_parity(case.fn, args, {**kwargs, "reduction": "none"}, "triton")


# ------------------------------------------------------------------ no rows, no features, broadcasting


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("case_id", [c for c in CASES if CASES[c].reductions != (None,)] + ["pairwise_distance",
                                                                                             "cosine_similarity(dim=-1)"])
def test_no_rows(case_id, reduction):
    """(0, D) inputs: no launch; 'none' is empty, 'sum' 0, 'mean' 0 / 0 = NaN. torch's multi_margin_loss
    and multilabel_margin_loss read uninitialised memory for reduced empty batches (their values change
    from run to run), so there the reduced values are the unreduced loss's sum and mean."""
    case = CASES[case_id]
    reduction = reduction if case.reductions != (None,) else None
    args, kwargs = make_call(case, (0, 9), torch.float32)
    kwargs = with_reduction(kwargs, reduction)
    with fusedloss.backend("triton"):
        loss = getattr(FL, case.fn)(*args, **kwargs)
    expected = getattr(F, case.fn)(*args, **kwargs)
    if case.fn in ("multi_margin_loss", "multilabel_margin_loss") and reduction != "none":
        expected = torch.tensor(float("nan") if reduction == "mean" else 0.0)
    assert loss.shape == expected.shape and loss.dtype == expected.dtype
    torch.testing.assert_close(loss, expected, equal_nan=True)
    grads = torch.autograd.grad(loss.sum(), [args[i] for i in case.grad])
    assert all(g.shape == args[i].shape for g, i in zip(grads, case.grad))


@pytest.mark.parametrize("fn,kwargs", [("cosine_embedding_loss", {"reduction": "none"}),
                                       ("triplet_margin_loss", {"reduction": "none"}), ("pairwise_distance", {}),
                                       ("cosine_similarity", {"dim": 1})])
def test_no_features(fn, kwargs):
    """(N, 0) embeddings: every norm and product is 0 (cos = 0 with torch's epsilon; distances 0)."""
    args = [torch.zeros(3, 0, device=DEVICE, requires_grad=True) for _ in range(3 if fn == "triplet_margin_loss" else 2)]
    if fn == "cosine_embedding_loss":
        args.append(torch.tensor([1, -1, 1], device=DEVICE))
    with fusedloss.backend("triton"):
        loss = getattr(FL, fn)(*args, **kwargs)
    torch.testing.assert_close(loss, getattr(F, fn)(*args, **kwargs))


def test_no_features_strided_view():
    """Empty operands whose strides do not merge into (N, D, S) (a sliced view): torch counts an empty
    tensor as contiguous, so copying it kept those strides, and the kernel got no stride (a crash)."""
    x1 = torch.randn(0, 9, 3, device=DEVICE, requires_grad=True)
    x2 = torch.zeros(0, 9, 7, device=DEVICE)[..., 1::2]
    with fusedloss.backend("triton"):
        loss = FL.cosine_similarity(x1, x2, dim=0)
    torch.testing.assert_close(loss, F.cosine_similarity(x1, x2, dim=0))


BROADCASTS = {
    # name: (fn, shapes of the positional tensors (a maker per position from EMBEDDING), kwargs)
    "triplet positive (1,D)": ("triplet_margin_loss", [(6, 11), (1, 11), (6, 11)], {}),
    "triplet anchor (N,1)": ("triplet_margin_loss", [(6, 1), (6, 11), (6, 11)], {"swap": True}),
    "triplet 3-D, negative (D)": ("triplet_margin_loss", [(2, 3, 11), (2, 3, 11), (1, 1, 11)], {}),
    "pairwise (4,1,D) with (3,D): copied layout": ("pairwise_distance", [(4, 1, 11), (3, 11)], {}),
    "pairwise (D) with (N,D)": ("pairwise_distance", [(11,), (5, 11)], {"p": 1.0}),
    "cosine_similarity (N,D,S) dim 1, x2 (D,1)": ("cosine_similarity", [(2, 5, 3), (5, 1)], {"dim": 1}),
    "cosine_similarity (B,N,D) dim -1, x2 (N,D)": ("cosine_similarity", [(2, 3, 7), (3, 7)], {"dim": -1}),
    "cosine_embedding x2 (1,D), target (N)": ("cosine_embedding_loss", [(1, 9), (1, 9), (5,)], {"margin": 0.1}),
    "cosine_embedding target (1)": ("cosine_embedding_loss", [(5, 9), (5, 9), (1,)], {"margin": -0.2}),
}


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("name", BROADCASTS)
def test_broadcasting(name, reduction):
    fn, shapes, kwargs = BROADCASTS[name]
    args = [normal(shape).float().requires_grad_() for shape in shapes]
    if fn == "cosine_embedding_loss":
        args[2] = torch.tensor([1, -1, 1, 1, -1][:shapes[2][0]], device=DEVICE)
    if fn in ("pairwise_distance", "cosine_similarity"):
        reduction = None
    check_parity(fn, args, with_reduction(kwargs, reduction), "triton")


@pytest.mark.parametrize("shapes", [((2, 3, 7), (2, 3, 7), None), ((4, 7), (7,), (4, 1)), ((4, 7), (4, 7), (2, 4, 7))],
                         ids=["3-D", "target (C), weight (N,1)", "weight larger than the input"])
def test_multilabel_soft_margin_shapes(shapes):
    """Leading dimensions are rows; the target and weight broadcast to the input (gradient of a broadcast
    target summed to its shape); a weight that enlarges the loss's shape runs through torch."""
    input_shape, target_shape, weight_shape = shapes
    x = scores(input_shape).float().requires_grad_()
    target = probability(target_shape).float().requires_grad_()
    kwargs = {} if weight_shape is None else {"weight": positive(weight_shape).float()}
    if weight_shape == (2, 4, 7):
        with fusedloss.backend("triton"), pytest.raises(RuntimeError, match="larger shape"):
            FL.multilabel_soft_margin_loss(x, target, **kwargs)
        return
    check_parity("multilabel_soft_margin_loss", [x, target], {**kwargs, "reduction": "none"}, "triton")


# ------------------------------------------------------------------ targets at the edges (torch's CUDA bugs)


def test_multi_margin_targets_at_the_edges():
    """Class C-1 and class 0 are computed; targets torch rejects on the host (-1, C, 2**40: an int64 that
    an int32 truncation would wrap into range) give NaN rows, loss and gradient, and leave other rows
    alone. No host sync, no out-of-bounds read (the gathers are clamped)."""
    x = scores((6, 11)).float().requires_grad_()
    target = torch.tensor([10, 0, -1, 11, 2**40, 2**32 + 3], device=DEVICE)
    with fusedloss.backend("triton"):
        loss = FL.multi_margin_loss(x, target, reduction="none")
        mean = FL.multi_margin_loss(x, target)
    grad, = torch.autograd.grad(loss.sum(), x)
    good = target[:2]
    torch.testing.assert_close(loss[:2], F.multi_margin_loss(x[:2], good, reduction="none"))
    torch.testing.assert_close(grad[:2], torch.autograd.grad(F.multi_margin_loss(x[:2], good, reduction="sum"), x)[0][:2])
    assert torch.isnan(loss[2:]).all() and torch.isnan(grad[2:]).all() and torch.isnan(mean)


def test_multilabel_margin_targets_at_the_edges():
    """Rows: class C-1 listed; a -1 at position 0 (no targets: loss and gradient 0); a full row without a
    pad (every class a target: loss 0); duplicates. Then rows torch rejects (an entry >= C, or < -1,
    before or after the pad, or 2**40): NaN in that row only."""
    n_classes = 13
    x = scores((9, n_classes)).float().requires_grad_()
    target = torch.full((9, n_classes), -1, dtype=torch.long, device=DEVICE)
    target[0, :2] = torch.tensor([n_classes - 1, 3])
    target[2] = torch.randperm(n_classes, device=DEVICE)  # full, no pad
    target[3, :4] = torch.tensor([5, 5, 1, 5])  # duplicates
    target[4, :3] = torch.tensor([1, n_classes, 2])  # >= C before the pad
    target[5, :3] = torch.tensor([1, -1, n_classes])  # >= C after the pad (torch checks every entry)
    target[6, :2] = torch.tensor([4, -2])  # < -1
    target[7, :2] = torch.tensor([2**40, 1])
    target[8, :2] = torch.tensor([2**32 + 1, 2])  # 1 after an int32 truncation
    with fusedloss.backend("triton"):
        loss = FL.multilabel_margin_loss(x, target, reduction="none")
    grad, = torch.autograd.grad(loss.sum(), x)
    good = slice(0, 4)
    expected = F.multilabel_margin_loss(x[good], target[good], reduction="none")
    torch.testing.assert_close(loss[good], expected)
    torch.testing.assert_close(grad[good], torch.autograd.grad(expected.sum(), x)[0][good])
    assert loss[1] == 0 and loss[2] == 0 and (grad[1] == 0).all() and (grad[2] == 0).all()
    assert torch.isnan(loss[4:]).all() and torch.isnan(grad[4:]).all()


@pytest.mark.parametrize("fn,target", [("multi_margin_loss", [1, 12, 3, 0, 4]),
                                       ("multi_margin_loss", [1, -1, 3, 0, 4]),
                                       ("multilabel_margin_loss", [[1, -1] + [0] * 10] * 4 + [[12] + [-1] * 11]),
                                       ("multilabel_margin_loss", [[1, -1] + [13] + [0] * 9] + [[-1] * 12] * 4)],
                         ids=["multi_margin >= C", "multi_margin -1", "multilabel >= C", "multilabel after the pad"])
def test_out_of_range_target_debug_mode_raises_like_torch(fn, target, fusedloss_env):
    x = torch.randn(5, 12)
    target = torch.tensor(target)
    with pytest.raises(RuntimeError) as torch_error:
        getattr(F, fn)(x, target)
    fusedloss_env("FUSEDLOSS_DEBUG", "1")
    with fusedloss.backend("triton"), pytest.raises(RuntimeError) as our_error:
        getattr(FL, fn)(x.to(DEVICE), target.to(DEVICE))
    assert str(our_error.value) == str(torch_error.value)


# ------------------------------------------------------------------ extreme values


EXTREMES = {
    "multi_margin -inf and 1e20": ("multi_margin_loss", [[[float("-inf"), 1.0, 2.0, 0.5], [3.0, float("-inf"), 1e20, 0.0],
                                                          [1e20, -1e20, 0.0, 1.0]], [1, 1, 0]], {"p": 1}),
    "multi_margin p=2 -inf target": ("multi_margin_loss", [[[float("-inf"), 1.0, 2.0, 0.5], [3.0, 0.0, 1.0, -3.0]],
                                                           [0, 2]], {"p": 2, "margin": 2.0}),
    "multilabel_margin -inf": ("multilabel_margin_loss", [[[float("-inf"), 1.0, 2.0, 0.5], [1e20, 0.0, -1e20, 3.0]],
                                                          [[0, 2, -1, 0], [1, -1, 0, 0]]], {}),
    "multilabel_soft_margin +-100, +-inf": ("multilabel_soft_margin_loss",
                                           [[[100.0, -100.0, float("inf"), float("-inf"), 0.0]],
                                            [[0.0, 1.0, 1.0, 1.0, 0.5]]], {}),
    # (equal vectors: tests/test_row_margin_campaign.py, against exact arithmetic; float64 torch is 0.1% off)
    "cosine_embedding zero, opposite": ("cosine_embedding_loss",
                                        [[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]],
                                         [[1.0, 2.0, 0.0], [-1.0, -2.0, -3.0], [0.0, 0.0, 0.0]],
                                         [1, -1, -1]], {"margin": -0.5}),
    "triplet anchor == positive, large": ("triplet_margin_loss", [[[1.0, 2.0, 3.0], [1e15, 0.0, -1e15]],
                                                                 [[1.0, 2.0, 3.0], [1e15, 1.0, -1e15]],
                                                                 [[1.5, 2.0, 3.0], [0.0, 0.0, 0.0]]], {"margin": 1.0}),
    "triplet swap tie (anchor == positive)": ("triplet_margin_loss", [[[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]],
                                                                      [[1.2, 2.0, 2.5]]], {"swap": True}),
    "pairwise x1 == x2, eps 0, p=2": ("pairwise_distance", [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [0.0, 4.0]]],
                                      {"eps": 0.0}),
    "pairwise x1 == x2, eps 0, p=0.5": ("pairwise_distance", [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [0.0, 4.0]]],
                                        {"eps": 0.0, "p": 0.5}),
    "pairwise x1 == x2, eps 0, p=3": ("pairwise_distance", [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [0.0, 4.0]]],
                                      {"eps": 0.0, "p": 3.0}),
    "cosine_similarity zero vector": ("cosine_similarity", [[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]],
                                                            [[1.0, 2.0, 3.0], [1e-9, 0.0, 0.0]]], {}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", EXTREMES)
def test_extreme_values(name, dtype):
    """Values where a formula saturates, divides by a clamped norm or meets a tie: loss and every gradient
    against torch (its inf and NaN included), grad_output 1 per row."""
    fn, values, kwargs = EXTREMES[name]
    args = [torch.tensor(v, device=DEVICE) for v in values]
    args = [a.to(dtype).requires_grad_() if a.is_floating_point() else a for a in args]
    if fn == "cosine_embedding_loss":
        args[2] = args[2].long()
    kwargs = dict(kwargs) if fn in ("pairwise_distance", "cosine_similarity") else {**kwargs, "reduction": "none"}
    with torch.no_grad():
        n_out = getattr(F, fn)(*args, **kwargs).numel()
    check_parity(fn, args, kwargs, "triton", upstream=torch.ones(n_out, dtype=torch.float64, device=DEVICE).reshape(
        getattr(F, fn)(*args, **kwargs).shape))


# ------------------------------------------------------------------ grad_output, determinism, gradcheck


@pytest.mark.parametrize("upstream", [1.0, 2.0**16, 1 / 7])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case_id", ["multi_margin(p=2,margin=0.3)+weight", "multilabel_margin",
                                     "multilabel_soft_margin", "cosine_embedding(margin=0.2)",
                                     "triplet(p=3,eps=0.1,swap)"])
def test_grad_output_scalars(case_id, reduction, upstream):
    """grad_output 1 (the rescale skipped on the device), loss scaling 2**16 and accumulation 1/7."""
    case = CASES[case_id]
    args, kwargs = make_call(case, (5, 29), torch.float32)
    check_parity(case.fn, args, {**kwargs, "reduction": reduction}, "triton",
                 upstream=torch.tensor(upstream, dtype=torch.float64, device=DEVICE))


def test_retain_graph_backward_twice():
    """The first backward hands its buffers to autograd (scaled in place); a second one recomputes them."""
    a, p, n = (normal((5, 9)).requires_grad_() for _ in range(3))
    with fusedloss.backend("triton"):
        loss = FL.triplet_margin_loss(a, p, n, reduction="none", swap=True)
    reference = F.triplet_margin_loss(a, p, n, reduction="none", swap=True)
    upstream = torch.rand(5, dtype=torch.float64, device=DEVICE) + 0.5
    for scale in (3.0, 1.0, 3.0):
        got = torch.autograd.grad(loss, (a, p, n), upstream * scale, retain_graph=True)
        expected = torch.autograd.grad(reference, (a, p, n), upstream * scale, retain_graph=True)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e)


@pytest.mark.parametrize("case_id", ["multi_margin(p=2,margin=0.3)+weight", "multilabel_margin",
                                     "multilabel_soft_margin", "triplet(p=1,swap,margin=0.5)",
                                     "cosine_similarity(dim=0)"])
def test_deterministic_bitwise(case_id):
    """The same loss and gradients, bit for bit, twice (the reductions add partials in program order)."""
    case = CASES[case_id]
    args, kwargs = make_call(case, (19, 300), torch.bfloat16)
    if case.reductions != (None,):
        kwargs["reduction"] = "sum"
    results = []
    for _ in range(2):
        with fusedloss.backend("triton"):
            loss = getattr(FL, case.fn)(*args, **kwargs).sum()
        results.append((loss, *torch.autograd.grad(loss, [args[i] for i in case.grad])))
    assert all(torch.equal(a, b) for a, b in zip(*results))


GRADCHECK_CASES = {
    **{case_id: CASES[case_id] for case_id in (
        "multi_margin", "multi_margin(p=2,margin=0.3)+weight", "multilabel_margin", "multilabel_soft_margin",
        "cosine_embedding(margin=-0.4)", "triplet", "triplet(p=1,swap,margin=0.5)", "triplet(p=3,eps=0.1,swap)",
        "triplet(p=0.5,margin=0.1)", "pairwise_distance(p=1.5,eps=0,keepdim)")},
    # below eps torch's norm clamp passes the gradient straight through (not the clamped value's
    # derivative): finite differences only agree with norms above eps
    "cosine_similarity(dim=0)": Case("cosine_similarity", EMBEDDING[:2], (0, 1), {"dim": 0}, reductions=(None,)),
}


@pytest.mark.parametrize("case_id", GRADCHECK_CASES)
def test_gradcheck_float64(case_id):
    """Finite differences against the fused gradients (random values: off every kink, with probability 1)."""
    case = GRADCHECK_CASES[case_id]
    args, kwargs = make_call(case, (2, 5), torch.float64)
    diff = tuple(args[i] for i in case.grad)

    def fn(*inputs):
        full = list(args)
        for i, t in zip(case.grad, inputs):
            full[i] = t
        with fusedloss.backend("triton"):
            return getattr(FL, case.fn)(*full, **with_reduction(kwargs, case.reductions[0]))

    assert torch.autograd.gradcheck(fn, diff)


def test_no_graph_without_grad():
    x, target = scores((4, 6)), torch.tensor([0, 5, 2, 1], device=DEVICE)
    with fusedloss.backend("triton"):
        with torch.no_grad():
            loss = FL.multi_margin_loss(x.requires_grad_(), target)
        plain = FL.multi_margin_loss(x.detach(), target)
    assert loss.grad_fn is None and plain.grad_fn is None
    torch.testing.assert_close(plain, F.multi_margin_loss(x.detach(), target))


# ------------------------------------------------------------------ bad input: torch's exception types


def bad_calls():
    x, y = torch.randn(3, 5), torch.tensor([0, 4, 2])
    labels = torch.tensor([[0, 1, -1, 0, 0]] * 3)
    a = torch.randn(3, 5)
    return {
        "multi_margin p=3": ("multi_margin_loss", (x, y), {"p": 3}),
        "multi_margin weight 2-D": ("multi_margin_loss", (x, y), {"weight": torch.ones(5, 1)}),
        "multi_margin weight size": ("multi_margin_loss", (x, y), {"weight": torch.ones(4)}),
        "multi_margin weight dtype": ("multi_margin_loss", (x, y), {"weight": torch.ones(5, dtype=torch.float64)}),
        "multi_margin weight requires grad": ("multi_margin_loss", (x, y), {"weight": torch.ones(5, requires_grad=True)}),
        "multi_margin 3-D input": ("multi_margin_loss", (torch.randn(2, 3, 4), y), {}),
        "multi_margin no classes": ("multi_margin_loss", (torch.randn(3, 0), y), {}),
        "multi_margin target size": ("multi_margin_loss", (x, y[:2]), {}),
        "multi_margin target 2-D": ("multi_margin_loss", (x, y[:, None]), {}),
        "multi_margin int32 target": ("multi_margin_loss", (x, y.int()), {}),
        "multi_margin integer input": ("multi_margin_loss", (x.long(), y), {}),
        "multi_margin bad reduction": ("multi_margin_loss", (x, y), {"reduction": "avg"}),
        "multilabel 3-D": ("multilabel_margin_loss", (torch.randn(2, 3, 5), labels), {}),
        "multilabel target size": ("multilabel_margin_loss", (x, labels[:2]), {}),
        "multilabel 1-D target size": ("multilabel_margin_loss", (x[0], labels[0, :3]), {}),
        "multilabel int32 target": ("multilabel_margin_loss", (x, labels.int()), {}),
        "multilabel integer input": ("multilabel_margin_loss", (x.long(), labels), {}),
        "multilabel bad reduction": ("multilabel_margin_loss", (x, labels), {"reduction": "batchmean"}),
        "multilabel_soft target size": ("multilabel_soft_margin_loss", (x, a[:, :4]), {}),
        "multilabel_soft bool target": ("multilabel_soft_margin_loss", (x, a > 0), {}),
        "multilabel_soft integer input": ("multilabel_soft_margin_loss", (x.long(), a), {}),
        "multilabel_soft 0-d input": ("multilabel_soft_margin_loss", (torch.tensor(1.0), torch.tensor(1.0)), {}),
        "multilabel_soft bad reduction": ("multilabel_soft_margin_loss", (x, a), {"reduction": "avg"}),
        "multilabel_soft weight size": ("multilabel_soft_margin_loss", (x, a), {"weight": torch.ones(4)}),
        "cosine_embedding 2-D target": ("cosine_embedding_loss", (x, a, torch.ones(3, 1)), {}),
        "cosine_embedding 1-D target, 1-D inputs": ("cosine_embedding_loss", (x[0], a[0], torch.ones(1)), {}),
        "cosine_embedding 0-d target, 2-D inputs": ("cosine_embedding_loss", (x, a, torch.tensor(1.0)), {}),
        "cosine_embedding 3-D inputs": ("cosine_embedding_loss", (torch.randn(2, 3, 5),) * 2 + (torch.ones(2),), {}),
        "cosine_embedding feature mismatch": ("cosine_embedding_loss", (x, a[:, :4], torch.ones(3)), {}),
        "cosine_embedding target batch": ("cosine_embedding_loss", (x, a, torch.ones(4)), {}),
        "cosine_embedding bad reduction": ("cosine_embedding_loss", (x, a, torch.ones(3)), {"reduction": "x"}),
        "triplet margin 0": ("triplet_margin_loss", (x, a, a), {"margin": 0.0}),
        "triplet dims": ("triplet_margin_loss", (x, a[0], a), {}),
        "triplet not broadcastable": ("triplet_margin_loss", (x, a[:, :4], a), {}),
        "triplet bad reduction": ("triplet_margin_loss", (x, a, a), {"reduction": "x"}),
        "triplet_with_distance bad reduction": ("triplet_margin_with_distance_loss", (x, a, a), {"reduction": "x"}),
        "triplet_with_distance margin": ("triplet_margin_with_distance_loss", (x, a, a), {"margin": -1.0}),
        "triplet_with_distance dims": ("triplet_margin_with_distance_loss", (x, a[0], a), {}),
        "pairwise not broadcastable": ("pairwise_distance", (x, a[:, :4]), {}),
        "cosine_similarity integer inputs": ("cosine_similarity", (x.long(), a.long()), {}),
        "cosine_similarity dim out of range": ("cosine_similarity", (x, a), {"dim": 2}),
        "cosine_similarity dim -3": ("cosine_similarity", (x, a), {"dim": -3}),
        "cosine_similarity not broadcastable": ("cosine_similarity", (x, a[:, :4]), {}),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", bad_calls())
def test_bad_input_raises_torch_exception_type(case, backend):
    fn, args, kwargs = bad_calls()[case]
    with pytest.raises(Exception) as torch_error:
        getattr(F, fn)(*args, **kwargs)
    move = lambda v: v.to(DEVICE) if torch.is_tensor(v) else v  # noqa: E731
    args, kwargs = [move(a) for a in args], {k: move(v) for k, v in kwargs.items()}
    with fusedloss.backend(backend), pytest.raises(Exception) as our_error:
        getattr(FL, fn)(*args, **kwargs)
    assert type(our_error.value) is type(torch_error.value), (our_error.value, torch_error.value)


@pytest.mark.parametrize("call", ["mixed dtypes", "integer inputs", "p=inf", "0-d inputs", "trainable weight"])
def test_unsupported_options_fall_back_or_raise(call):
    """Valid calls the kernels do not take: eager torch in auto mode (with the reason on CUDA), an error
    that says why with backend 'triton'."""
    a, b = normal((4, 5)).float(), normal((4, 5)).float()
    fn, args, kwargs, reason = {
        "mixed dtypes": ("triplet_margin_loss", (a, b.double(), b), {}, "different dtypes"),
        "integer inputs": ("pairwise_distance", (a.long(), b.long()), {}, "integer operands"),
        "p=inf": ("pairwise_distance", (a, b), {"p": float("inf")}, "p=inf"),
        "0-d inputs": ("triplet_margin_loss", (a[0, 0], b[0, 0], b[1, 1]), {}, "0-d"),
        "trainable weight": ("multilabel_soft_margin_loss", (a, b.sigmoid()), {"weight": positive((5,)).float()
                                                                                .requires_grad_()}, "requires grad"),
    }[call]
    with fusedloss.backend("triton"), pytest.raises(RuntimeError, match=reason):
        getattr(FL, fn)(*args, **kwargs)
    decision = fusedloss.explain(getattr(FL, fn), *args, **kwargs)
    assert decision.backend == "torch"
    if DEVICE == "cuda":
        assert reason in decision.reason
    torch.testing.assert_close(getattr(FL, fn)(*args, **kwargs), getattr(F, fn)(*args, **kwargs))


def test_legacy_reduction_arguments():
    x, target = scores((6, 5)).float(), torch.tensor([0, 1, 2, 3, 4, 0], device=DEVICE)
    for size_average, reduce in [(None, False), (False, None), (True, True)]:
        with pytest.warns(UserWarning):
            expected = F.multi_margin_loss(x, target, size_average=size_average, reduce=reduce)
        with fusedloss.backend("triton"), pytest.warns(UserWarning):
            got = FL.multi_margin_loss(x, target, size_average=size_average, reduce=reduce)
        torch.testing.assert_close(got, expected)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = F.multilabel_soft_margin_loss(x, x.sigmoid(), size_average=size_average, reduce=reduce)
            with fusedloss.backend("triton"):
                got = FL.multilabel_soft_margin_loss(x, x.sigmoid(), size_average=size_average, reduce=reduce)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("call", ["multi_margin_loss", "multilabel_margin_loss", "cosine_embedding_loss",
                                  "triplet_margin_loss", "rank_hinge_loss"])
def test_deprecated_elementwise_mean_is_mean(call):
    """torch takes reduction='elementwise_mean' as 'mean' (a deprecation warning); the Triton path once
    passed the name on and the kernel summed."""
    x = scores((6, 5)).float().requires_grad_()
    other = scores((6, 5)).float()
    args = {"multi_margin_loss": (x, torch.tensor([0, 1, 2, 3, 4, 0], device=DEVICE)),
            "multilabel_margin_loss": (x, torch.tensor([[0, 3, -1, 1, 1]] * 6, device=DEVICE)),
            "cosine_embedding_loss": (x, other, torch.tensor([1.0, -1.0] * 3, device=DEVICE)),
            "triplet_margin_loss": (x, other, scores((6, 5)).float()),
            "rank_hinge_loss": (x[:, :1], None)}[call]
    reference = rank_hinge_reference if call == "rank_hinge_loss" else getattr(F, call)
    with pytest.warns(UserWarning, match="elementwise_mean"):
        expected = reference(*args, reduction="elementwise_mean")
    with fusedloss.backend("triton"), pytest.warns(UserWarning, match="elementwise_mean"):
        got = getattr(FL, call)(*args, reduction="elementwise_mean")
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(expected, x)[0])


# ------------------------------------------------------------------ triplet_margin_with_distance_loss's distances


@pytest.mark.parametrize("distance", ["None", "F.pairwise_distance", "torch.pairwise_distance",
                                      "fusedloss pairwise_distance", "nn.PairwiseDistance()",
                                      "fusedloss nn.PairwiseDistance(p=1)"])
def test_triplet_with_distance_fused_distances(distance):
    """None and pairwise_distance in every spelling (and the module's default, a PairwiseDistance) are
    fused, with the module's p and eps."""
    function = {"None": None, "F.pairwise_distance": F.pairwise_distance,
                "torch.pairwise_distance": torch.pairwise_distance, "fusedloss pairwise_distance": FL.pairwise_distance,
                "nn.PairwiseDistance()": torch.nn.PairwiseDistance(),
                "fusedloss nn.PairwiseDistance(p=1)": FN.PairwiseDistance(p=1.0)}[distance]
    args = [normal((5, 8)).float().requires_grad_() for _ in range(3)]
    with fusedloss.backend("triton"):
        assert fusedloss.explain(FL.triplet_margin_with_distance_loss, *args, distance_function=function).backend == \
            "triton"
    check_parity("triplet_margin_with_distance_loss", args, {"distance_function": function, "swap": True}, "triton")


def test_triplet_with_distance_other_callable_runs_torch():
    """Any other distance runs torch's loop over the callable: forced Triton says why; auto runs torch."""
    args = [normal((5, 8)).float().requires_grad_() for _ in range(3)]

    def l_infinity(x1, x2):
        return torch.max(torch.abs(x1 - x2), dim=1).values

    for function in (l_infinity, torch.nn.PairwiseDistance(keepdim=True)):
        with fusedloss.backend("triton"), pytest.raises(RuntimeError, match="distance_function"):
            FL.triplet_margin_with_distance_loss(*args, distance_function=function)
        got = FL.triplet_margin_with_distance_loss(*args, distance_function=l_infinity)
        torch.testing.assert_close(got, F.triplet_margin_with_distance_loss(*args, distance_function=l_infinity))


# ------------------------------------------------------------------ ranking losses, against the library's formulas


def rank_hinge_reference(y_pred, y_true, num_neg=1, margin=1.0, reduction="mean"):
    """The reference library's RankHingeLoss, as written there: rows [pos, neg_1..neg_k, pos, ...]."""
    y_pos = y_pred[::(num_neg + 1), :]
    y_neg = torch.cat([y_pred[(j + 1)::(num_neg + 1), :] for j in range(num_neg)], dim=-1)
    y_neg = torch.mean(y_neg, dim=-1, keepdim=True)
    return F.margin_ranking_loss(y_pos, y_neg, torch.ones_like(y_pos), margin=margin, reduction=reduction)


def rank_cross_entropy_reference(y_pred, y_true, num_neg=1):
    """The reference library's RankCrossEntropyLoss: per group -sum y log(softmax + eps), mean over groups."""
    logits = torch.cat([y_pred[j::(num_neg + 1), :] for j in range(num_neg + 1)], dim=-1)
    labels = torch.cat([y_true[j::(num_neg + 1), :] for j in range(num_neg + 1)], dim=-1)
    return -torch.mean(torch.sum(labels * torch.log(F.softmax(logits, dim=-1) + torch.finfo(float).eps), dim=-1))


def rank_call(num_neg, n_groups, dtype, layout="contiguous"):
    y_pred = (2 * normal((n_groups * (num_neg + 1), 1))).to(dtype)
    y_true = (torch.arange(n_groups * (num_neg + 1), device=DEVICE) % (num_neg + 1) == 0).double()[:, None]
    y_true[1::3] += 0.25  # soft labels too
    if layout == "strided":  # a column of a wider buffer: row stride 2
        y_pred = torch.cat([y_pred, torch.zeros_like(y_pred)], dim=1)[:, :1]
        assert not y_pred.is_contiguous()
    return y_pred.requires_grad_(), y_true.to(dtype)


@pytest.mark.parametrize("num_neg", range(1, 16))
def test_rank_losses_num_neg(num_neg):
    for reduction in ("mean", "sum", "none"):
        y_pred, y_true = rank_call(num_neg, 7, torch.float32)
        helpers.check_parity(rank_hinge_reference, FL.rank_hinge_loss, [y_pred, y_true],
                             {"num_neg": num_neg, "margin": 0.5 * num_neg / 4, "reduction": reduction}, "triton")
    y_pred, y_true = rank_call(num_neg, 7, torch.float32)
    helpers.check_parity(rank_cross_entropy_reference, FL.rank_cross_entropy_loss, [y_pred, y_true],
                         {"num_neg": num_neg}, "triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rank_losses_dtypes_and_layouts(dtype, layout, backend):
    """16-bit inputs, and y_pred a strided view (the kernel reads the groups through strides, no gather
    copy); the eager backend is fusedloss's formula of the library's loss."""
    y_pred, y_true = rank_call(4, 33, dtype, layout)
    helpers.check_parity(rank_hinge_reference, FL.rank_hinge_loss, [y_pred, y_true], {"num_neg": 4}, backend)
    helpers.check_parity(rank_cross_entropy_reference, FL.rank_cross_entropy_loss, [y_pred, y_true], {"num_neg": 4},
                         backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["rank_hinge_loss", "rank_cross_entropy_loss"])
def test_rank_losses_bad_batch(fn, backend):
    """A batch that is not a multiple of the group size, a y_pred of another shape, num_neg < 1: ValueError."""
    y_pred, y_true = torch.randn(10, 1, device=DEVICE), torch.rand(10, 1, device=DEVICE)
    with fusedloss.backend(backend):
        with pytest.raises(ValueError, match="not a multiple of the group size num_neg \\+ 1 = 3"):
            getattr(FL, fn)(y_pred, y_true, num_neg=2)
        with pytest.raises(ValueError, match="shape"):
            getattr(FL, fn)(y_pred.reshape(5, 2), y_true.reshape(5, 2), num_neg=1)
        with pytest.raises(ValueError, match="num_neg"):
            getattr(FL, fn)(y_pred, y_true, num_neg=0)


def test_rank_cross_entropy_trainable_labels_run_eager():
    """A y_true that requires grad: the eager formula, which differentiates it too."""
    y_pred, y_true = rank_call(2, 5, torch.float64)
    y_true.requires_grad_()
    with fusedloss.backend("triton"), pytest.raises(RuntimeError, match="y_true that requires grad"):
        FL.rank_cross_entropy_loss(y_pred, y_true, num_neg=2)
    loss = FL.rank_cross_entropy_loss(y_pred, y_true, num_neg=2)
    expected = rank_cross_entropy_reference(y_pred, y_true, num_neg=2)
    for got, want in zip(torch.autograd.grad(loss, (y_pred, y_true)), torch.autograd.grad(expected, (y_pred, y_true))):
        torch.testing.assert_close(got, want)


def test_rank_modules():
    hinge, ce = FN.RankHingeLoss(num_neg=3, margin=0.7, reduction="sum"), FN.RankCrossEntropyLoss(num_neg=3)
    assert repr(hinge) == "RankHingeLoss(num_neg=3, margin=0.7, reduction=sum)" and repr(ce) == "RankCrossEntropyLoss(num_neg=3)"
    y_pred, y_true = rank_call(3, 6, torch.float32)
    with fusedloss.backend("triton"):
        torch.testing.assert_close(hinge(y_pred, y_true), rank_hinge_reference(y_pred, y_true, 3, 0.7, "sum"))
        torch.testing.assert_close(ce(y_pred, y_true), rank_cross_entropy_reference(y_pred, y_true, 3))
    assert inspect.signature(FL.rank_hinge_loss).parameters["num_neg"].default == 1
    assert inspect.signature(FL.rank_cross_entropy_loss).parameters["num_neg"].default == 1


# ------------------------------------------------------------------ ctc_loss: torch's on every backend


@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
def test_ctc_loss_runs_torch_with_the_reason(backend):
    log_probs = torch.randn(12, 3, 6, device=DEVICE).log_softmax(2).requires_grad_()
    targets = torch.randint(1, 6, (3, 4), device=DEVICE)
    lengths = torch.full((3,), 12, device=DEVICE), torch.tensor([4, 3, 2], device=DEVICE)
    with fusedloss.backend(backend):
        decision = fusedloss.explain(FL.ctc_loss, log_probs, targets, *lengths)
        got = FN.CTCLoss(blank=0, zero_infinity=True)(log_probs, targets, *lengths)
    assert decision.backend == "torch"
    if backend != "torch":  # in auto mode on the CPU too: the reason is that it has no kernel, not the device
        assert "ctc_loss is not fused" in decision.reason
    expected = torch.nn.CTCLoss(blank=0, zero_infinity=True)(log_probs, targets, *lengths)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got, log_probs)[0], torch.autograd.grad(expected, log_probs)[0])


# ------------------------------------------------------------------ traffic: the fused pass is minimal


ROW_BENCHES = [b for b in registry.REGISTRY if b.family == "row margin"]


ROW_FUNCTIONS = {"multi_margin_loss", "multilabel_margin_loss", "multilabel_soft_margin_loss", "cosine_embedding_loss",
                 "triplet_margin_loss", "triplet_margin_with_distance_loss", "pairwise_distance", "cosine_similarity",
                 "rank_hinge_loss", "rank_cross_entropy_loss"}


def test_every_row_margin_function_is_benchmarked():
    assert {b.name for b in ROW_BENCHES} == ROW_FUNCTIONS and ROW_FUNCTIONS < set(FL.__all__)


@pytest.mark.skipif(DEVICE != "cpu", reason="the traffic meter hooks Triton's interpreter")
@pytest.mark.parametrize("bench", ROW_BENCHES, ids=lambda b: b.label)
def test_traffic_forward_backward(bench):
    """grad_output 1: at most 1.05x the minimal (each input read once, each gradient written once: the
    gradients are written by the forward, the rescale skipped on the device). Another scalar: each
    gradient read and written once more."""
    inputs = bench.make_inputs(bench.traffic_shapes[0], bench.dtypes[0], "cpu")
    impl = registry.fusedloss_impl(bench)
    minimal = bench.minimal_bytes(inputs, backward=True)
    grad_bytes = sum(t.numel() * t.element_size() for t in inputs.grad_tensors)
    with fusedloss.backend("triton"):
        unit = measure_traffic(impl, inputs).total
        scaled = measure_traffic(impl, inputs, grad_scale=2.0**16).total
    assert minimal <= unit <= 1.05 * minimal, unit / minimal
    assert minimal + 2 * grad_bytes <= scaled <= 1.05 * minimal + 2 * grad_bytes, scaled / minimal


# ------------------------------------------------------------------ drop-in API


MODULES = {
    # module: (constructor kwargs, value makers of the forward's tensors, given the input's shape)
    "MultiMarginLoss": (dict(p=2, margin=0.5, weight=torch.rand(7) + 0.5, reduction="sum"), (scores, class_index)),
    "MultiLabelMarginLoss": (dict(reduction="none"), (scores, class_lists)),
    "MultiLabelSoftMarginLoss": (dict(weight=torch.rand(7) + 0.5), (scores, probability)),
    "CosineEmbeddingLoss": (dict(margin=0.1), (normal, normal, row_sign)),
    "TripletMarginLoss": (dict(margin=2.0, p=1.0, swap=True), EMBEDDING),
    "TripletMarginWithDistanceLoss": (dict(margin=2.0, swap=True), EMBEDDING),
    "PairwiseDistance": (dict(p=3.0, keepdim=True), EMBEDDING[:2]),
    "CosineSimilarity": (dict(dim=0), EMBEDDING[:2]),
}


@pytest.mark.parametrize("module", MODULES)
def test_module_drop_in(module):
    helpers.check_module_drop_in(module, *MODULES[module])


def test_ctc_module_is_torchs():
    ours, theirs = FN.CTCLoss(blank=2, reduction="sum"), torch.nn.CTCLoss(blank=2, reduction="sum")
    assert isinstance(ours, torch.nn.CTCLoss) and repr(ours) == repr(theirs)


def test_every_name_is_exported():
    assert ROW_FUNCTIONS | {"ctc_loss"} <= set(FL.__all__)
    assert {*MODULES, "CTCLoss", "RankHingeLoss", "RankCrossEntropyLoss"} <= set(FN.__all__)


@pytest.mark.gpu
@pytest.mark.parametrize("fn", ["multi_margin_loss", "cosine_embedding_loss", "triplet_margin_loss"])
def test_auto_uses_triton_on_cuda(fn):
    x = torch.randn(8, 16, device=DEVICE)
    args = {"multi_margin_loss": (x, torch.randint(0, 16, (8,), device=DEVICE)),
            "cosine_embedding_loss": (x, x.flip(0), torch.ones(8, device=DEVICE)),
            "triplet_margin_loss": (x, x.flip(0), x.flip(1))}[fn]
    assert fusedloss.explain(getattr(FL, fn), *args).backend == "triton"


@pytest.mark.gpu
def test_64bit_row_offsets():
    """Rows whose offsets pass 2**31 elements (bf16: 4.3 GB): the row index is 64-bit."""
    n_rows, n_classes = 2**31 // 1024 + 3, 1024
    x = torch.zeros(n_rows, n_classes, device=DEVICE, dtype=torch.bfloat16)
    x[-1, 5] = 2.0
    target = torch.zeros(n_rows, dtype=torch.long, device=DEVICE)
    with fusedloss.backend("triton"):
        loss = FL.multi_margin_loss(x.requires_grad_(), target, reduction="none")
    assert float(loss[-1]) == pytest.approx((1023 + 2.0) / 1024, rel=1e-2) and float(loss[0]) == pytest.approx(1023 / 1024, rel=1e-2)
