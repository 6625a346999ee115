"""Row-margin losses: one program per row reads the row once and writes the loss and every gradient
(fusedloss.ops.row_margin); the ranking losses (groups of scores); ctc_loss (torch's, on every backend).
The Triton path reproduces torch's checks before the kernel runs."""
from typing import Optional

import torch
from torch import Tensor

from .. import _validation as check
from .._torch import F
from .. import dispatch
from ..dispatch import Route
from ..ops import row_margin as row_margin_op
from ..ops import _eager
from ..ops.row_margin import RowMarginOptions, row_margin_loss
from ._common import out_dtype_of


def _route(op, fused, tensors, *, operands=(), promoted=False, norm=None, unsupported=None, eager=None,
           broadcast=((0, 1),)):
    """A row-margin loss's Route from its arguments' positions: ``operands``, the floating tensors that must
    share a dtype (``promoted``: torch promotes their integer dtypes), ``norm`` the position of a p-norm's
    ``p``; or ``unsupported``, the family's predicate for losses with more to check. ``tensors``: the
    positions whose devices decide; ``eager`` (default: torch's function) and ``broadcast`` as in ``Route``."""
    if unsupported is None:
        count = len(operands)
        assert 1 <= count <= 3, "the family's losses check one to three operands"
        first, second, third = (*operands, None, None)[:3]

        def unsupported(*args):  # indexed here: Dynamo traces it (not itemgetter), and it runs on every fused call
            values = ((args[first],) if count == 1 else (args[first], args[second]) if count == 2
                      else (args[first], args[second], args[third]))
            problem = row_margin_op.unsupported(op, values, promoted=values if promoted else ())
            return problem if problem is not None or norm is None else row_margin_op.unsupported_norm(args[norm])

    return Route(op, eager or getattr(F, op), fused, unsupported, tensors, broadcast)


def multi_margin_loss(
    input: Tensor,
    target: Tensor,
    p: int = 1,
    margin: float = 1.0,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.multi_margin_loss``: per row sum_{c != y} w_y max(0, margin - x_y + x_c)^p / C.

    torch raises on the host for a target outside [0, C); the Triton path makes that row's loss and
    gradient NaN instead (no host sync), and raises as torch with ``FUSEDLOSS_DEBUG=1``.
    """
    return dispatch.call(_MULTI_MARGIN, input, target, p, margin, weight, size_average, reduce, reduction)


def _fused_multi_margin(input, target, p, margin, weight, size_average, reduce, reduction):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    out_dtype = out_dtype_of("multi_margin_loss", input)
    check.check_multi_margin(input, target, p, weight, autocast=out_dtype != input.dtype)
    check.check_not_differentiable("multi_margin_loss", "weight", weight)
    if dispatch.debug_enabled():
        check.check_margin_targets(target, input.shape[-1] if input.dim() else 1, multilabel=False)
    options = RowMarginOptions("multi_margin", reduction, out_dtype, float(margin), float(p))
    return row_margin_loss(options, input, t=target, w=weight)


_MULTI_MARGIN = _route("multi_margin_loss", _fused_multi_margin, (0, 1, 4), operands=(0, 4))


def multilabel_margin_loss(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.multilabel_margin_loss``: targets are class lists ending at the first -1;
    per row sum_j sum_{i not a target} max(0, 1 - (x_{y_j} - x_i)) / C.

    torch raises on the host when any target entry is outside [-1, C); the Triton path makes that row's
    loss and gradient NaN instead (no host sync, no out-of-bounds access), and raises as torch with
    ``FUSEDLOSS_DEBUG=1``.
    """
    return dispatch.call(_MULTILABEL_MARGIN, input, target, size_average, reduce, reduction)


def _fused_multilabel_margin(input, target, size_average, reduce, reduction):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_multilabel_margin(input, target)
    if dispatch.debug_enabled():
        check.check_margin_targets(target, input.shape[-1] if input.dim() else 1, multilabel=True)
    options = RowMarginOptions("multilabel_margin", reduction, out_dtype_of("multilabel_margin_loss", input))
    return row_margin_loss(options, input, t=target)


_MULTILABEL_MARGIN = _route("multilabel_margin_loss", _fused_multilabel_margin, (0, 1), operands=(0,))


def multilabel_soft_margin_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.multilabel_soft_margin_loss``: the BCE-with-logits terms, times ``weight``
    (broadcast to the input), averaged over the classes (the last dimension), then reduced over the rest.
    Gradients for the input and the target."""
    return dispatch.call(_MULTILABEL_SOFT_MARGIN, input, target, weight, size_average, reduce, reduction)


def _fused_multilabel_soft_margin(input, target, weight, size_average, reduce, reduction):
    if size_average is not None or reduce is not None:
        reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_multilabel_soft_margin(input, target, weight)
    check.check_three_reductions(reduction, reduction + " is not valid")
    options = RowMarginOptions("multilabel_soft_margin", reduction, out_dtype_of("multilabel_soft_margin_loss", input))
    return row_margin_loss(options, input, target, weight)


_MULTILABEL_SOFT_MARGIN = _route("multilabel_soft_margin_loss", _fused_multilabel_soft_margin, (0, 1, 2),
                                 unsupported=row_margin_op.unsupported_multilabel_soft_margin,
                                 broadcast=((1, 0), ((0, 1), 2)))  # torch: target * logsigmoid(input), then * weight


def cosine_embedding_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.cosine_embedding_loss``: 1 - cos(x1, x2) where target == 1,
    max(0, cos - margin) where target == -1 (0 elsewhere), with torch's 1e-12 added to each squared norm
    (finite for zero vectors). Gradients for both inputs."""
    return dispatch.call(_COSINE_EMBEDDING, input1, input2, target, margin, size_average, reduce, reduction)


def _fused_cosine_embedding(input1, input2, target, margin, size_average, reduce, reduction):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_cosine_embedding(input1, input2, target)
    options = RowMarginOptions("cosine_embedding", reduction, out_dtype_of("cosine_embedding_loss", input1),
                               float(margin), eps=_COSINE_EMBEDDING_EPS)
    # the target only selects a branch: torch's graph has no path to it, so it gets no gradient here either
    return row_margin_loss(options, input1, input2, t=target.detach())


def _cosine_shape(args):
    """The shape of cosine_embedding_loss's cosines: the inputs' broadcast shape without the last dimension."""
    return torch.broadcast_shapes(args[0].shape, args[1].shape)[:-1]


_COSINE_EMBEDDING_EPS = 9.999999960041972e-13  # ATen's EPSILON: the float 1e-12f (float64 inputs see it exactly)
_COSINE_EMBEDDING = _route("cosine_embedding_loss", _fused_cosine_embedding, (0, 1, 2), operands=(0, 1), promoted=True,
                           broadcast=((0, 1), (2, _cosine_shape)))  # torch: where(target == 1, 1 - cos, 0), cos per row


def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2,
    eps: float = 1e-6,
    swap: bool = False,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.triplet_margin_loss``: max(0, margin + d(a, p) - d(a, n)) with
    d(x, y) = |x - y + eps|_p and, with ``swap``, d(a, n) replaced by min(d(a, n), d(p, n)). Inputs (D) or
    (..., D), broadcast as torch allows; gradients for all three."""
    return dispatch.call(_TRIPLET, anchor, positive, negative, margin, p, eps, swap, size_average, reduce, reduction)


def _fused_triplet(anchor, positive, negative, margin, p, eps, swap, size_average, reduce, reduction):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_triplet(anchor, positive, negative, margin)
    return _triplet_loss("triplet_margin_loss", anchor, positive, negative, margin, p, eps, swap, reduction)


def _triplet_loss(op, anchor, positive, negative, margin, p, eps, swap, reduction):
    options = RowMarginOptions("triplet", reduction, out_dtype_of(op, anchor), float(margin), float(p), float(eps),
                               bool(swap))
    return row_margin_loss(options, anchor, positive, negative)


_TRIPLET = _route("triplet_margin_loss", _fused_triplet, (0, 1, 2), operands=(0, 1, 2), promoted=True, norm=4,
                  broadcast=((0, 1), (0, 2), (1, 2)))  # torch: the distances a-p, a-n, p-n


def triplet_margin_with_distance_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    distance_function=None,
    margin: float = 1.0,
    swap: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.triplet_margin_with_distance_loss``, fused when ``distance_function`` is None
    or ``pairwise_distance`` (torch's or fusedloss's: p = 2, eps = 1e-6); any other callable runs through
    torch (``fusedloss.explain`` gives the reason)."""
    return dispatch.call(_TRIPLET_WITH_DISTANCE, anchor, positive, negative, distance_function, margin, swap,
                         reduction)


def _eager_triplet_with_distance(anchor, positive, negative, distance_function, margin, swap, reduction):
    return F.triplet_margin_with_distance_loss(anchor, positive, negative, distance_function=distance_function,
                                               margin=margin, swap=swap, reduction=reduction)


def _fused_triplet_with_distance(anchor, positive, negative, distance_function, margin, swap, reduction):
    check.check_reduction_name(reduction)
    check.check_triplet(anchor, positive, negative, margin)
    p, eps = _fused_distance(distance_function)
    return _triplet_loss("triplet_margin_with_distance_loss", anchor, positive, negative, margin, p, eps, swap,
                         reduction)


def _fused_distance(distance_function):
    """(p, eps) of a distance the fused triplet computes, else None: None and pairwise_distance (torch's or
    fusedloss's: p = 2, eps = 1e-6), and a PairwiseDistance module (torch's default for the module
    TripletMarginWithDistanceLoss) without keepdim."""
    if (distance_function is None or distance_function is F.pairwise_distance
            or distance_function is torch.pairwise_distance or distance_function is pairwise_distance
            or distance_function is torch.nn.functional.pairwise_distance):
        return 2.0, 1e-6
    if (isinstance(distance_function, torch.nn.PairwiseDistance) and not distance_function.keepdim
            and type(distance_function).forward in _PAIRWISE_DISTANCE_FORWARDS):
        return float(distance_function.norm), float(distance_function.eps)
    return None


# The forwards of the PairwiseDistance modules that compute pairwise_distance itself: torch's, and those
# registered by register_pairwise_distance_forward (fusedloss.nn's; a layer below imports nothing above it).
_PAIRWISE_DISTANCE_FORWARDS = {torch.nn.PairwiseDistance.forward}


def register_pairwise_distance_forward(forward):
    """Recognise a PairwiseDistance subclass's ``forward`` as pairwise_distance (fusedloss.nn registers its
    own), so that triplet_margin_with_distance_loss fuses a module that uses it as its distance."""
    _PAIRWISE_DISTANCE_FORWARDS.add(forward)


def _unsupported_triplet_with_distance(anchor, positive, negative, distance_function, *unused):
    distance = _fused_distance(distance_function)
    if distance is None:
        name = getattr(distance_function, "__qualname__", type(distance_function).__name__)
        return f"distance_function={name} (only None or pairwise_distance is fused; torch runs any other callable)"
    return row_margin_op.unsupported("triplet_margin_with_distance_loss", (anchor, positive, negative),
                             promoted=(anchor, positive, negative)) or row_margin_op.unsupported_norm(distance[0])


_TRIPLET_WITH_DISTANCE = _route("triplet_margin_with_distance_loss", _fused_triplet_with_distance, (0, 1, 2),
                                unsupported=_unsupported_triplet_with_distance, eager=_eager_triplet_with_distance,
                                broadcast=((0, 1), (0, 2), (1, 2)))  # torch: the distances a-p, a-n, p-n


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> Tensor:
    """``torch.nn.functional.pairwise_distance``: |x1 - x2 + eps|_p over the last dimension of the
    broadcast inputs, fused (one read of each row; gradients for both inputs)."""
    return dispatch.call(_PAIRWISE_DISTANCE, x1, x2, p, eps, keepdim)


def _fused_pairwise_distance(x1, x2, p, eps, keepdim):
    check.check_pairwise(x1, x2)
    options = RowMarginOptions("pairwise_distance", "none", out_dtype_of("pairwise_distance", x1), p=float(p),
                               eps=float(eps), keepdim=bool(keepdim))
    return row_margin_loss(options, x1, x2)


_PAIRWISE_DISTANCE = _route("pairwise_distance", _fused_pairwise_distance, (0, 1), operands=(0, 1), promoted=True,
                            norm=2)


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``torch.nn.functional.cosine_similarity``: <x1 / max(|x1|, eps), x2 / max(|x2|, eps)> along ``dim``
    of the broadcast inputs (torch's clamp has no gradient), fused; gradients for both inputs."""
    return dispatch.call(_COSINE_SIMILARITY, x1, x2, dim, eps)


def _fused_cosine_similarity(x1, x2, dim, eps):
    dim = check.check_cosine_similarity(x1, x2, dim)
    options = RowMarginOptions("cosine_similarity", "none", out_dtype_of("cosine_similarity", x1), eps=float(eps),
                               dim=dim)
    return row_margin_loss(options, x1, x2)


_COSINE_SIMILARITY = _route("cosine_similarity", _fused_cosine_similarity, (0, 1),
                            unsupported=row_margin_op.unsupported_cosine_similarity)


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """``torch.nn.functional.ctc_loss``, not fused: always torch's (cuDNN or ATen) implementation, whatever
    the backend (``fusedloss.explain`` says so). Its dynamic program over time steps is sequential per
    sample and torch's kernels already keep it on chip."""
    return dispatch.call(_CTC, log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity)


def _ctc_not_fused(*unused):
    return "ctc_loss is not fused: torch's implementation (cuDNN or ATen) runs on every backend"


_CTC = _route("ctc_loss", None, (0, 1), unsupported=_ctc_not_fused)


# ------------------------------------------------------------------ ranking losses (groups of scores)


def rank_hinge_loss(
    y_pred: Tensor,
    y_true: Optional[Tensor] = None,
    num_neg: int = 1,
    margin: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """The ranking hinge loss of a text-matching library's RankHingeLoss: ``y_pred`` (B * (num_neg + 1), 1)
    holds groups of one positive score followed by ``num_neg`` negatives; per group
    max(0, margin - (s_pos - mean(s_neg))), reduced over the groups ('none' gives (B, 1)). ``y_true`` is
    accepted and unused, as in the reference. Fused as one row kernel over a strided view of the groups.
    A batch that is not a multiple of num_neg + 1 raises ValueError."""
    return dispatch.call(_RANK_HINGE, y_pred, y_true, num_neg, margin, reduction)


def _eager_rank_hinge(y_pred, y_true, num_neg, margin, reduction):
    check.check_rank_groups("rank_hinge_loss", y_pred, y_true, num_neg)
    check.reduction_from_args(None, None, reduction)
    return _eager.rank_hinge_loss(y_pred, y_true, num_neg, margin, reduction)


def _fused_rank_hinge(y_pred, y_true, num_neg, margin, reduction):
    check.check_rank_groups("rank_hinge_loss", y_pred, y_true, num_neg)
    reduction = check.reduction_from_args(None, None, reduction)
    options = RowMarginOptions("rank_hinge", reduction, out_dtype_of("rank_hinge_loss", y_pred), float(margin),
                               group=num_neg + 1)
    return row_margin_loss(options, y_pred)


_RANK_HINGE = _route("rank_hinge_loss", _fused_rank_hinge, (0,), unsupported=row_margin_op.unsupported_rank_hinge,
                     eager=_eager_rank_hinge)


def rank_cross_entropy_loss(y_pred: Tensor, y_true: Tensor, num_neg: int = 1) -> Tensor:
    """The ranking cross entropy of the same library's RankCrossEntropyLoss: per group of num_neg + 1 scores
    (one positive followed by its negatives, rows of ``y_pred`` (B * (num_neg + 1), 1)),
    -sum_j y_true_j log(softmax(s)_j + eps), eps = torch.finfo(torch.float64).eps as the reference, mean
    over the groups. Gradient for ``y_pred``. A batch that is not a multiple of num_neg + 1 raises
    ValueError."""
    return dispatch.call(_RANK_CROSS_ENTROPY, y_pred, y_true, num_neg)


def _eager_rank_cross_entropy(y_pred, y_true, num_neg):
    check.check_rank_groups("rank_cross_entropy_loss", y_pred, y_true, num_neg, labels=True)
    return _eager.rank_cross_entropy_loss(y_pred, y_true, num_neg)


def _fused_rank_cross_entropy(y_pred, y_true, num_neg):
    check.check_rank_groups("rank_cross_entropy_loss", y_pred, y_true, num_neg, labels=True)
    options = RowMarginOptions("rank_cross_entropy", "mean", out_dtype_of("rank_cross_entropy_loss", y_pred),
                               eps=float(torch.finfo(torch.float64).eps), group=num_neg + 1)
    return row_margin_loss(options, y_pred, y_true)


_RANK_CROSS_ENTROPY = _route("rank_cross_entropy_loss", _fused_rank_cross_entropy, (0, 1),
                             unsupported=row_margin_op.unsupported_rank_cross_entropy, eager=_eager_rank_cross_entropy)
