"""Pointwise losses: one fused pass over the elements computes the loss and every gradient
(fusedloss.ops.pointwise). The Triton path reproduces torch's checks before the kernel runs."""
from typing import Optional, Union

from torch import Tensor

from .. import _validation as check
from .._torch import F
from .. import dispatch
from ..dispatch import Route
from ..ops import pointwise as pointwise_op
from ..ops import _eager
from ..ops.pointwise import PointwiseOptions, pointwise_loss
from ._common import out_dtype_of


def _route(op, fused, *, integer_target, input=0, target=1, others=(), trainable_weight=None, eager=None,
           broadcast=((0, 1),)):
    """A pointwise loss's Route from its arguments' positions: ``input`` and ``target``, the ``others`` tensors
    that must share the input's dtype, a ``trainable_weight`` the kernel gives no gradient (all of them:
    the tensors whose devices decide); ``integer_target``, ``eager`` (default: torch's function) and
    ``broadcast`` as in ``pointwise_op.unsupported`` and ``Route``."""
    count = len(others)
    assert count <= 2, "the family's losses have at most two tensors besides input and target"
    first, second = (*others, None, None)[:2]

    def unsupported(*args):  # indexed here: Dynamo traces it (not itemgetter), and it runs on every fused call
        rest = () if count == 0 else (args[first],) if count == 1 else (args[first], args[second])
        return pointwise_op.unsupported(op, args[input], args[target], rest, integer_target=integer_target,
                                        trainable_weight=None if trainable_weight is None else args[trainable_weight])

    tensors = tuple(sorted({input, target, *others}))
    return Route(op, eager or getattr(F, op), fused, unsupported, tensors, broadcast)


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.binary_cross_entropy``, fused (loss and gradients in one pass).

    torch raises on the host for an input or target outside [0, 1]; the Triton path gives NaN for that
    element instead (no host sync), and with ``FUSEDLOSS_DEBUG=1`` checks on the host and raises as torch.
    """
    return dispatch.call(_BCE, input, target, weight, size_average, reduce, reduction)


def _fused_bce(input, target, weight, size_average, reduce, reduction):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_same_size(input, target, "binary_cross_entropy")
    check.check_bce_weight(input, target, weight)
    check.check_not_differentiable("binary_cross_entropy", "weight", weight)
    if dispatch.debug_enabled():
        check.check_unit_interval(input, "input")
        check.check_unit_interval(target, "target")
    options = PointwiseOptions("bce", reduction, out_dtype_of("binary_cross_entropy", input))
    return pointwise_loss(options, input, target, weight=weight)


_BCE = _route("binary_cross_entropy", _fused_bce, others=(2,), integer_target=False)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    pos_weight: Optional[Tensor] = None,
) -> Tensor:
    """``torch.nn.functional.binary_cross_entropy_with_logits``: the sigmoid fused in, in torch's stable
    form ``(1 - y) x - (1 + (pos_weight - 1) y) log_sigmoid(x)``; weight and pos_weight broadcast."""
    return dispatch.call(_BCE_WITH_LOGITS, input, target, weight, size_average, reduce, reduction, pos_weight)


def _fused_bce_with_logits(input, target, weight, size_average, reduce, reduction, pos_weight):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_same_size(input, target, "binary_cross_entropy_with_logits")
    check.check_broadcasts_to_input(input, weight, pos_weight)
    for name, tensor in (("weight", weight), ("pos_weight", pos_weight)):
        check.check_not_differentiable("binary_cross_entropy_with_logits", name, tensor)
    options = PointwiseOptions("bce_with_logits", reduction, out_dtype_of("binary_cross_entropy_with_logits", input))
    return pointwise_loss(options, input, target, weight=weight, pos_weight=pos_weight)


_BCE_WITH_LOGITS = _route("binary_cross_entropy_with_logits", _fused_bce_with_logits, others=(2, 6),
                          integer_target=False,
                          broadcast=((6, 1), (0, 2)))  # torch: (pos_weight - 1) * target, loss * weight


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    """``torch.nn.functional.smooth_l1_loss`` (``beta == 0`` is the L1 loss, as in torch)."""
    return dispatch.call(_SMOOTH_L1, input, target, size_average, reduce, reduction, beta)


def _fused_smooth_l1(input, target, size_average, reduce, reduction, beta):
    check.warn_size_mismatch(input, target, "smooth_l1_loss")
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_beta(beta)
    out_dtype = out_dtype_of("smooth_l1_loss", input)
    options = (PointwiseOptions("smooth_l1", reduction, out_dtype, float(beta)) if beta
               else PointwiseOptions("l1", reduction, out_dtype))
    return pointwise_loss(options, input, target)


_SMOOTH_L1 = _route("smooth_l1_loss", _fused_smooth_l1, integer_target=True)


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Optional[Tensor] = None,
) -> Tensor:
    """``torch.nn.functional.huber_loss``; with a weight, 'mean' divides by the element count as torch."""
    return dispatch.call(_HUBER, input, target, reduction, delta, weight)


def _fused_huber(input, target, reduction, delta, weight):
    check.warn_size_mismatch(input, target, "huber_loss")
    given, reduction = reduction, check.reduction_from_args(None, None, reduction)
    check.check_weight_size(input, target, weight)  # torch's order: weight size, delta, weighted reduction
    check.check_delta(delta)
    check.check_weighted_reduction(weight, given)
    options = PointwiseOptions("huber", reduction, out_dtype_of("huber_loss", input), float(delta))
    return pointwise_loss(options, input, target, weight=weight)


_HUBER = _route("huber_loss", _fused_huber, others=(4,), trainable_weight=4, integer_target=True)


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    weight: Optional[Tensor] = None,
) -> Tensor:
    """``torch.nn.functional.l1_loss``; with a weight, 'mean' is sum(w |x - y|) / sum(w) as torch."""
    return dispatch.call(_L1, input, target, size_average, reduce, reduction, weight)


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    weight: Optional[Tensor] = None,
) -> Tensor:
    """``torch.nn.functional.mse_loss``; with a weight, 'mean' is sum(w (x - y)^2) / sum(w) as torch."""
    return dispatch.call(_MSE, input, target, size_average, reduce, reduction, weight)


def _l1_or_mse(formula):
    """The fused path of l1_loss and mse_loss: the same arguments, checks and weighted mean."""
    op = f"{formula}_loss"

    def fused(input, target, size_average, reduce, reduction, weight):
        check.warn_size_mismatch(input, target, op)
        legacy = size_average is not None or reduce is not None
        given, reduction = reduction, check.reduction_from_args(size_average, reduce, reduction)
        check.check_weight_size(input, target, weight)
        check.check_weighted_reduction(weight, reduction if legacy else given)
        if weight is not None and reduction == "mean":
            reduction = "weight_mean"  # torch's weighted mean: sum(weight * loss) / sum(weight)
        return pointwise_loss(PointwiseOptions(formula, reduction, out_dtype_of(op, input)), input, target,
                              weight=weight)

    return _route(op, fused, others=(5,), trainable_weight=5, integer_target=True)


_L1 = _l1_or_mse("l1")
_MSE = _l1_or_mse("mse")


def soft_margin_loss(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.soft_margin_loss``: log(1 + exp(-y x)), computed without overflow."""
    return dispatch.call(_SOFT_MARGIN, input, target, size_average, reduce, reduction)


def _fused_soft_margin(input, target, size_average, reduce, reduction):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_broadcasts_to_input(input, target)
    check.check_not_differentiable("soft_margin_loss", "target", target)
    options = PointwiseOptions("soft_margin", reduction, out_dtype_of("soft_margin_loss", input))
    return pointwise_loss(options, input, target)


_SOFT_MARGIN = _route("soft_margin_loss", _fused_soft_margin, integer_target=True)


def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """``torch.nn.functional.kl_div``, pointwise: every reduction, 'batchmean' dividing by input.size(0)."""
    return dispatch.call(_KL_DIV, input, target, size_average, reduce, reduction, log_target)


def _fused_kl_div(input, target, size_average, reduce, reduction, log_target):
    reduction = check.kl_div_reduction(size_average, reduce, reduction)
    options = PointwiseOptions("kl_div_log_target" if log_target else "kl_div", reduction,
                               out_dtype_of("kl_div", input))
    return pointwise_loss(options, input, target)


_KL_DIV = _route("kl_div", _fused_kl_div, integer_target=False,
                 broadcast=((1, 0),))  # torch: target * (log(target) - input)


def poisson_nll_loss(
    input: Tensor,
    target: Tensor,
    log_input: bool = True,
    full: bool = False,
    size_average: Optional[bool] = None,
    eps: float = 1e-8,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.poisson_nll_loss`` (``full`` adds Stirling's term where target > 1)."""
    return dispatch.call(_POISSON_NLL, input, target, log_input, full, size_average, eps, reduce, reduction)


def _fused_poisson_nll(input, target, log_input, full, size_average, eps, reduce, reduction):
    if size_average is not None or reduce is not None:
        reduction = check.reduction_from_args(size_average, reduce, reduction)
    # torch's poisson_nll_loss checks the name in Python: its alias 'elementwise_mean' raises there
    check.check_three_reductions(reduction, reduction + " is not a valid value for reduction")
    options = PointwiseOptions("poisson_nll_log_input" if log_input else "poisson_nll", reduction,
                               out_dtype_of("poisson_nll_loss", input), float(eps), 0.0, bool(full))
    return pointwise_loss(options, input, target)


_POISSON_NLL = _route("poisson_nll_loss", _fused_poisson_nll, integer_target=True,
                      broadcast=((1, 0),))  # torch: target * input (or log(input + eps))


def gaussian_nll_loss(
    input: Tensor,
    target: Tensor,
    var: Union[Tensor, float],
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.gaussian_nll_loss``: var a tensor (same shape, one dimension short, or one
    dimension of size 1) or a float, clamped at eps without a gradient (torch's straight-through clamp).

    torch raises on the host for a negative entry of a var tensor; the Triton path gives NaN for that
    element instead (no host sync), and raises as torch with ``FUSEDLOSS_DEBUG=1``.
    """
    return dispatch.call(_GAUSSIAN_NLL, input, target, var, full, eps, reduction)


def _fused_gaussian_nll(input, target, var, full, eps, reduction):
    var = check.gaussian_nll_var(input, var, check_values=dispatch.debug_enabled())
    check.check_three_reductions(reduction, reduction + " is not valid")
    options = PointwiseOptions("gaussian_nll", reduction, out_dtype_of("gaussian_nll_loss", input),
                               float(eps), var if isinstance(var, float) else 0.0, bool(full))
    return pointwise_loss(options, input, target, var if isinstance(var, Tensor) else None)


_GAUSSIAN_NLL = _route("gaussian_nll_loss", _fused_gaussian_nll, others=(2,), integer_target=True,
                       broadcast=((0, 1), ((0, 1), 2)))  # torch: (input - target)**2 / var


def margin_ranking_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.margin_ranking_loss``: max(0, -y (x1 - x2) + margin), gradients for all three."""
    return dispatch.call(_MARGIN_RANKING, input1, input2, target, margin, size_average, reduce, reduction)


def _fused_margin_ranking(input1, input2, target, margin, size_average, reduce, reduction):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_same_dim(input1, input2, target)
    options = PointwiseOptions("margin_ranking", reduction, out_dtype_of("margin_ranking_loss", input1),
                               float(margin))
    return pointwise_loss(options, input1, input2, target)


_MARGIN_RANKING = _route("margin_ranking_loss", _fused_margin_ranking, target=2, others=(1,), integer_target=True,
                         broadcast=((0, 1), (2, (0, 1))))  # torch: -target * (input1 - input2)


def hinge_embedding_loss(
    input: Tensor,
    target: Tensor,
    margin: float = 1.0,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.hinge_embedding_loss``: [y != 1] max(0, margin - x) + [y != -1] x."""
    return dispatch.call(_HINGE_EMBEDDING, input, target, margin, size_average, reduce, reduction)


def _fused_hinge_embedding(input, target, margin, size_average, reduce, reduction):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    options = PointwiseOptions("hinge_embedding", reduction, out_dtype_of("hinge_embedding_loss", input),
                               float(margin))
    # the target only selects a branch: torch's graph has no path to it, so it gets no gradient here either
    return pointwise_loss(options, input, target.detach())


_HINGE_EMBEDDING = _route("hinge_embedding_loss", _fused_hinge_embedding, integer_target=True,
                          broadcast=((1, 0),))  # torch: where(target != 1, clamp(margin - input, 0), 0)


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
) -> Tensor:
    """torchvision's ``sigmoid_focal_loss`` (Lin et al., 2017), fused: with p = sigmoid(inputs) and
    ce = binary_cross_entropy_with_logits(inputs, targets), the loss is
    ``alpha_t * ce * (1 - p_t) ** gamma``, p_t = p t + (1 - p)(1 - t), alpha_t = alpha t + (1 - alpha)(1 - t)
    (no alpha_t when alpha < 0). Reductions 'none' (the default), 'mean', 'sum'; others raise ValueError.
    torchvision is not needed: the eager path is the same formula in torch ops.
    """
    return dispatch.call(_SIGMOID_FOCAL, inputs, targets, alpha, gamma, reduction)


def _fused_sigmoid_focal(inputs, targets, alpha, gamma, reduction):
    check.check_same_size(inputs, targets, "binary_cross_entropy_with_logits")
    check.check_three_reductions(reduction, f"Invalid Value for arg 'reduction': '{reduction} \n Supported "
                                            "reduction modes: 'none', 'mean', 'sum'")
    options = PointwiseOptions("sigmoid_focal", reduction, out_dtype_of("sigmoid_focal_loss", inputs),
                               float(alpha), float(gamma))
    return pointwise_loss(options, inputs, targets)


_SIGMOID_FOCAL = _route("sigmoid_focal_loss", _fused_sigmoid_focal, integer_target=False,
                        eager=_eager.sigmoid_focal_loss)
