"""Drop-in replacements for ``torch.nn.functional`` losses.

Same names, signatures (deprecated ``size_average``/``reduce`` included), values, gradients and exception
types as torch. Extras are keyword-only and off by default. Each call asks ``fusedloss.dispatch`` for a
backend: the fused Triton op, or eager torch (which also implements every extra, as the reference).
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _validation as check
from . import dispatch
from .ops.pointwise import PointwiseOptions, pointwise_loss
from .ops.softmax_rows import SoftmaxRowsOptions, softmax_rows_loss

__all__ = ["cross_entropy", "nll_loss",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "smooth_l1_loss", "huber_loss", "l1_loss",
           "mse_loss", "soft_margin_loss", "kl_div", "poisson_nll_loss", "gaussian_nll_loss",
           "margin_ranking_loss", "hinge_embedding_loss", "sigmoid_focal_loss"]

def _unsupported_softmax_rows(input, target, weight):
    """Why the softmax-rows kernels cannot run this call (None when they can)."""
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        return "a non-tensor input or target"
    if target.is_floating_point() and target.requires_grad:
        return "a gradient with respect to the probability target"
    if weight is not None and weight.requires_grad:
        return "a class weight that requires grad"
    return None


def _check_extras(z_loss, softcap):
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be a positive number or None, got {softcap}")
    if z_loss < 0:
        raise ValueError(f"z_loss must be >= 0, got {z_loss}")


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    ignore_index: int = -100,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    inplace_backward: bool = False,
    grad_in_forward: bool = False,
) -> Tensor:
    """``torch.nn.functional.cross_entropy``, fused (softmax + NLL in one pass over the logits).

    Keyword-only extras:
      z_loss: adds ``z_loss * lse**2`` per counted row (PaLM), weighted like that row's loss (by the
        target's class weight) and reduced with the same denominator. lse is the row's log-sum-exp.
      softcap: logits -> ``softcap * tanh(logits / softcap)`` before the softmax (Gemma 2).
      inplace_backward: on the Triton path, write the gradient into the logits' own buffer instead of a
        new one (saves N*C memory). The logits then hold their gradient after backward: only use it when
        nothing else reads them afterwards. No effect on the eager path.
      grad_in_forward: on the Triton path, compute the gradient in the forward pass, assuming
        grad_output == 1, and only rescale it in the backward (on the device) when grad_output is not 1.
        Forward+backward traffic: 1.0x the minimal when the loss is back-propagated as is, 2.0x when it is
        scaled first (loss scaling, loss / accumulation_steps); the default moves 1.5x either way. With
        ``inplace_backward`` too, the logits are overwritten by their gradient during the forward.
    """
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    _check_extras(z_loss, softcap)
    decision = dispatch.decide("cross_entropy", (input, target, weight),
                               _unsupported_softmax_rows(input, target, weight))
    if decision.backend == "torch":
        return _eager_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                                    z_loss, softcap)
    prob_target = check.check_cross_entropy(input, target, weight, ignore_index, label_smoothing)
    if input.dim() == 1 and not prob_target:
        target = target.reshape(())  # torch takes a (1,) target for a (C,) input as a 0-d one
    if not prob_target and check.debug_enabled():
        check.check_class_targets(target, input.shape[0 if input.dim() == 1 else 1], ignore_index)
    options = SoftmaxRowsOptions(
        reduction=reduction, ignore_index=int(ignore_index), label_smoothing=float(label_smoothing),
        z_loss=float(z_loss), softcap=None if softcap is None else float(softcap),
        prob_target=prob_target, inplace_backward=bool(inplace_backward), grad_in_forward=bool(grad_in_forward))
    return softmax_rows_loss(input, target, weight, options)


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    ignore_index: int = -100,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.nll_loss``: ``-weight[y] * input[y]`` per row, gathered on the device."""
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    decision = dispatch.decide("nll_loss", (input, target, weight),
                               _unsupported_softmax_rows(input, target, weight))
    if decision.backend == "torch":
        return F.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)
    check.check_tensor("input", input)
    check.check_tensor("target", target)
    check.check_same_device(input, target, weight)
    check.check_nll_nd(input, target, weight)
    if input.dim() == 1:
        target = target.reshape(())  # torch takes a (1,) target for a (C,) input as a 0-d one
    if check.debug_enabled():
        check.check_class_targets(target, input.shape[0 if input.dim() == 1 else 1], ignore_index)
    options = SoftmaxRowsOptions(reduction=reduction, ignore_index=int(ignore_index), input_is_logprob=True)
    return softmax_rows_loss(input, target, weight, options)


# ----------------------------------------------------------------------------------------------------
# eager torch (the reference for the extras)
# ----------------------------------------------------------------------------------------------------

def _eager_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    """torch's cross_entropy plus the extras, written with eager torch ops."""
    if softcap is not None:
        input = softcap * torch.tanh(input / softcap)
    loss = F.cross_entropy(input, target, weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if not z_loss:
        return loss
    class_dim = 0 if input.dim() == 1 else 1
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    lse = torch.logsumexp(input.to(acc), dim=class_dim)
    if input.shape == target.shape:  # probability targets: every row counts once
        row_weight = torch.ones_like(lse)
    else:
        counted = target != ignore_index
        safe_target = torch.where(counted, target, torch.zeros_like(target)).long()
        row_weight = weight.to(acc)[safe_target] if weight is not None else torch.ones_like(lse)
        row_weight = row_weight * counted
    z_term = z_loss * row_weight * lse * lse
    if reduction == "none":
        return (loss.to(acc) + z_term).to(loss.dtype)
    if reduction == "sum":
        return (loss.to(acc) + z_term.sum()).to(loss.dtype)
    return (loss.to(acc) + z_term.sum() / row_weight.sum()).to(loss.dtype)


# ----------------------------------------------------------------------------------------------------
# pointwise losses: one fused pass over the elements computes the loss and every gradient
# (fusedloss.ops.pointwise). Each function asks the dispatcher first; the eager path is torch's own
# function with the caller's arguments as given (its legacy mapping, warnings and errors), and the
# Triton path reproduces torch's checks before the kernel runs.
# ----------------------------------------------------------------------------------------------------

def _unsupported_pointwise(input, target, others=(), *, integer_target, trainable_weight=None):
    """Why the pointwise kernel cannot run this call (None when it can).

    ``others``: tensors that must share the input's dtype (weight, pos_weight, var, input2).
    ``integer_target``: torch promotes an integer target for this loss (the kernel reads any real dtype).
    ``trainable_weight``: a weight torch differentiates (l1, mse, huber); the kernel gives it no gradient.
    """
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        return "a non-tensor input or target"
    if not input.is_floating_point():
        return f"a {check.c10_name(input.dtype)} input (the kernel computes in floating point)"
    if any(t.dtype != input.dtype for t in others if isinstance(t, Tensor)) or (
            target.is_floating_point() and target.dtype != input.dtype):
        return "operands of different dtypes (torch's type promotion runs on the eager path)"
    if not target.is_floating_point() and (target.is_complex() or not integer_target):
        return f"a {check.c10_name(target.dtype)} target"
    if trainable_weight is not None and trainable_weight.requires_grad:
        return "a weight that requires grad"
    return None


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
    decision = dispatch.decide("binary_cross_entropy", (input, target, weight),
                               _unsupported_pointwise(input, target, (weight,), integer_target=False))
    if decision.backend == "torch":
        return F.binary_cross_entropy(input, target, weight, size_average, reduce, reduction)
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_same_size(input, target, "binary_cross_entropy")
    check.check_bce_weight(input, target, weight)
    check.check_not_differentiable("binary_cross_entropy", "weight", weight)
    if check.debug_enabled():
        check.check_unit_interval(input, "input")
        check.check_unit_interval(target, "target")
    return pointwise_loss(PointwiseOptions("bce", reduction), input, target, weight=weight)


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
    decision = dispatch.decide("binary_cross_entropy_with_logits", (input, target, weight, pos_weight),
                               _unsupported_pointwise(input, target, (weight, pos_weight), integer_target=False))
    if decision.backend == "torch":
        return F.binary_cross_entropy_with_logits(input, target, weight, size_average, reduce, reduction,
                                                  pos_weight)
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_same_size(input, target, "binary_cross_entropy_with_logits")
    check.check_broadcasts_to_input(input, weight, pos_weight)
    for name, tensor in (("weight", weight), ("pos_weight", pos_weight)):
        check.check_not_differentiable("binary_cross_entropy_with_logits", name, tensor)
    return pointwise_loss(PointwiseOptions("bce_with_logits", reduction), input, target, weight=weight,
                          pos_weight=pos_weight)


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    """``torch.nn.functional.smooth_l1_loss`` (``beta == 0`` is the L1 loss, as in torch)."""
    decision = dispatch.decide("smooth_l1_loss", (input, target), _unsupported_pointwise(input, target,
                                                                                         integer_target=True))
    if decision.backend == "torch":
        return F.smooth_l1_loss(input, target, size_average, reduce, reduction, beta)
    check.warn_size_mismatch(input, target, "smooth_l1_loss")
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_beta(beta)
    options = PointwiseOptions("smooth_l1", reduction, (float(beta),)) if beta else PointwiseOptions("l1", reduction)
    return pointwise_loss(options, input, target)


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Optional[Tensor] = None,
) -> Tensor:
    """``torch.nn.functional.huber_loss``; with a weight, 'mean' divides by the element count as torch."""
    decision = dispatch.decide("huber_loss", (input, target, weight), _unsupported_pointwise(
        input, target, (weight,), integer_target=True, trainable_weight=weight))
    if decision.backend == "torch":
        return F.huber_loss(input, target, reduction, delta, weight)
    check.warn_size_mismatch(input, target, "huber_loss")
    reduction = check.reduction_from_args(None, None, reduction)
    check.check_delta(delta)
    check.check_weight_size(input, weight)
    return pointwise_loss(PointwiseOptions("huber", reduction, (float(delta),)), input, target, weight=weight)


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    weight: Optional[Tensor] = None,
) -> Tensor:
    """``torch.nn.functional.l1_loss``; with a weight, 'mean' is sum(w |x - y|) / sum(w) as torch."""
    return _l1_or_mse("l1", input, target, size_average, reduce, reduction, weight)


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    weight: Optional[Tensor] = None,
) -> Tensor:
    """``torch.nn.functional.mse_loss``; with a weight, 'mean' is sum(w (x - y)^2) / sum(w) as torch."""
    return _l1_or_mse("mse", input, target, size_average, reduce, reduction, weight)


def _l1_or_mse(formula, input, target, size_average, reduce, reduction, weight):
    """l1_loss and mse_loss: the same arguments, checks and weighted mean; only the formula differs."""
    op = f"{formula}_loss"
    decision = dispatch.decide(op, (input, target, weight), _unsupported_pointwise(
        input, target, (weight,), integer_target=True, trainable_weight=weight))
    if decision.backend == "torch":
        return getattr(F, op)(input, target, size_average, reduce, reduction, weight)
    check.warn_size_mismatch(input, target, op)
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_weight_size(input, weight)
    if weight is not None and reduction == "mean":
        reduction = "weight_mean"  # torch's weighted mean: sum(weight * loss) / sum(weight)
    return pointwise_loss(PointwiseOptions(formula, reduction), input, target, weight=weight)


def soft_margin_loss(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.soft_margin_loss``: log(1 + exp(-y x)), computed without overflow."""
    decision = dispatch.decide("soft_margin_loss", (input, target),
                               _unsupported_pointwise(input, target, integer_target=True))
    if decision.backend == "torch":
        return F.soft_margin_loss(input, target, size_average, reduce, reduction)
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_broadcasts_to_input(input, target)
    check.check_not_differentiable("soft_margin_loss", "target", target)
    return pointwise_loss(PointwiseOptions("soft_margin", reduction), input, target)


def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """``torch.nn.functional.kl_div``, pointwise: every reduction, 'batchmean' dividing by input.size(0)."""
    decision = dispatch.decide("kl_div", (input, target),
                               _unsupported_pointwise(input, target, integer_target=False))
    if decision.backend == "torch":
        return F.kl_div(input, target, size_average, reduce, reduction, log_target)
    reduction = check.kl_div_reduction(size_average, reduce, reduction)
    loss = "kl_div_log_target" if log_target else "kl_div"
    return pointwise_loss(PointwiseOptions(loss, reduction), input, target)


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
    decision = dispatch.decide("poisson_nll_loss", (input, target),
                               _unsupported_pointwise(input, target, integer_target=True))
    if decision.backend == "torch":
        return F.poisson_nll_loss(input, target, log_input, full, size_average, eps, reduce, reduction)
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    loss = "poisson_nll_log_input" if log_input else "poisson_nll"
    return pointwise_loss(PointwiseOptions(loss, reduction, (float(eps),), bool(full)), input, target)


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
    decision = dispatch.decide("gaussian_nll_loss", (input, target, var),
                               _unsupported_pointwise(input, target, (var,), integer_target=True))
    if decision.backend == "torch":
        return F.gaussian_nll_loss(input, target, var, full, eps, reduction)
    var = check.gaussian_nll_var(input, var)
    check.check_three_reductions(reduction, reduction + " is not valid")
    options = PointwiseOptions("gaussian_nll", reduction, (float(eps), var if isinstance(var, float) else 0.0),
                               bool(full))
    return pointwise_loss(options, input, target, var if isinstance(var, Tensor) else None)


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
    decision = dispatch.decide("margin_ranking_loss", (input1, input2, target),
                               _unsupported_pointwise(input1, target, (input2,), integer_target=True))
    if decision.backend == "torch":
        return F.margin_ranking_loss(input1, input2, target, margin, size_average, reduce, reduction)
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_same_dim(input1, input2, target)
    return pointwise_loss(PointwiseOptions("margin_ranking", reduction, (float(margin),)), input1, input2, target)


def hinge_embedding_loss(
    input: Tensor,
    target: Tensor,
    margin: float = 1.0,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.hinge_embedding_loss``: [y != 1] max(0, margin - x) + [y != -1] x."""
    decision = dispatch.decide("hinge_embedding_loss", (input, target),
                               _unsupported_pointwise(input, target, integer_target=True))
    if decision.backend == "torch":
        return F.hinge_embedding_loss(input, target, margin, size_average, reduce, reduction)
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    # the target only selects a branch: torch's graph has no path to it, so it gets no gradient here either
    return pointwise_loss(PointwiseOptions("hinge_embedding", reduction, (float(margin),)), input, target.detach())


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
    decision = dispatch.decide("sigmoid_focal_loss", (inputs, targets),
                               _unsupported_pointwise(inputs, targets, integer_target=False))
    message = (f"Invalid Value for arg 'reduction': '{reduction} \n Supported reduction modes: 'none', "
               "'mean', 'sum'")
    if decision.backend == "torch":
        return _eager_sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction, message)
    check.check_same_size(inputs, targets, "binary_cross_entropy_with_logits")
    check.check_three_reductions(reduction, message)
    options = PointwiseOptions("sigmoid_focal", reduction, (float(alpha), float(gamma)))
    return pointwise_loss(options, inputs, targets)


def _eager_sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction, message):
    """The focal-loss formula of the docstring above, in eager torch ops (torchvision's semantics)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(message)
