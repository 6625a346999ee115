"""Drop-in replacements for ``torch.nn.functional`` losses.

Same names, signatures (deprecated ``size_average``/``reduce`` included), values, gradients and exception
types as torch. Extras are keyword-only and off by default. Each call asks ``fusedloss.dispatch`` for a
backend: the fused Triton op, or eager torch (which also implements every extra, as the reference).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _validation as check
from . import dispatch
from .ops.softmax_rows import SoftmaxRowsOptions, softmax_rows_loss

__all__ = ["cross_entropy", "nll_loss"]

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
