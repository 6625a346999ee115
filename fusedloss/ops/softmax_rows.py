"""Autograd op of the softmax-rows family (cross entropy, NLL) on the Triton kernels.

Two ways to split the work (kernels/softmax_rows.py has the byte counts):
  default          forward reads the logits once and saves each row's log-sum-exp; backward recomputes
                   the softmax and writes the gradient once: 1.5x the minimal traffic for any grad_output.
  grad_in_forward  forward also writes the gradient for grad_output = 1 (the 'mean' denominator is
                   computed on the device first); backward rescales only rows whose grad_output is not
                   1, a check done on the device: 1.0x when grad_output is 1, 2.0x otherwise.
Measured on an H100 (bench/NOTES.md) the two cost the same when half of the calls have grad_output 1, so
the default is the mode that does not depend on it. Reductions stay on the device: no host sync.
"""
import dataclasses
from typing import Optional

import torch
from torch.autograd.function import once_differentiable


@dataclasses.dataclass(frozen=True)
class SoftmaxRowsOptions:
    reduction: str  # "none" | "mean" | "sum"
    ignore_index: int = -100
    label_smoothing: float = 0.0  # torch applies smoothing only when > 0
    z_loss: float = 0.0
    softcap: Optional[float] = None
    prob_target: bool = False
    input_is_logprob: bool = False  # NLL: the input already holds log-probabilities
    inplace_backward: bool = False
    grad_in_forward: bool = False


def _kernels():
    from fusedloss.kernels import softmax_rows  # lazy: Triton is imported on the first Triton-backed call

    return softmax_rows


def _as_rows(input, target, prob_target):
    """View input as (N, C, S) and target as (N, S) (or (N, C, S) for probabilities).

    (C) -> (1, C, 1); (N, C) -> (N, C, 1); (N, C, d1..dk) -> (N, C, d1*..*dk). ``reshape`` is a view for
    every layout whose spatial dims merge (all contiguous inputs, transposed (N, C) views); other strided
    layouts are copied once here because the kernels address a row by a single spatial stride.
    """
    if input.dim() == 1:
        logits = input.reshape(1, input.shape[0], 1)
        target = target.reshape(1, input.shape[0], 1) if prob_target else target.reshape(1, 1)
    else:
        n, c = input.shape[0], input.shape[1]
        s = _spatial(input)
        logits = input.reshape(n, c, s)
        target = target.reshape(n, c, s) if prob_target else target.reshape(n, s)
    return logits, target


def _spatial(input):
    size = 1
    for d in input.shape[2:]:
        size *= d
    return size


class SoftmaxRowsLoss(torch.autograd.Function):
    """Cross entropy / NLL over (N, C, S) logits. Returns the reduced loss, or per-row losses (N*S,)."""

    @staticmethod
    def forward(ctx, input, target, weight, options):
        logits, rows_target = _as_rows(input, target, options.prob_target)
        needs_grad = ctx.needs_input_grad[0]
        denom = grad = None
        if needs_grad and options.grad_in_forward:
            grad = logits if options.inplace_backward else torch.empty(logits.shape, dtype=logits.dtype,
                                                                       device=logits.device)
            if options.reduction == "mean":
                denom = _mean_denominator(logits, rows_target, weight, options)
        loss, row_weight, lse, p_coef = _kernels().softmax_rows_fwd(
            logits, rows_target, weight,
            ignore_index=options.ignore_index, smoothing=max(options.label_smoothing, 0.0),
            z_loss=options.z_loss, softcap=options.softcap, prob_target=options.prob_target,
            input_is_logprob=options.input_is_logprob, save_for_backward=needs_grad, grad=grad, denom=denom)
        # reductions stay on the device: fixed-order torch sums of the per-row buffers, no host sync
        if options.reduction == "none":
            out = loss.to(input.dtype)
        elif options.reduction == "sum":
            out = loss.sum().to(input.dtype)
        else:
            denom = row_weight.sum() if denom is None else denom
            out = (loss.sum() / denom).to(input.dtype)
        ctx.options = options
        ctx.input_shape = input.shape
        ctx.rows_shape = (logits.shape[0], logits.shape[2])
        ctx.grad_from_forward = grad  # consumed by the first backward
        if needs_grad:
            ctx.save_for_backward(logits, rows_target, weight, lse, p_coef, denom)
        return out

    @staticmethod
    @once_differentiable  # the kernel's gradient is not itself differentiable: double backward raises
    def backward(ctx, grad_output):
        logits, target, weight, lse, p_coef, denom = ctx.saved_tensors
        options = ctx.options
        if options.reduction == "none":
            grad_rows = grad_output.reshape(ctx.rows_shape)
        else:
            grad_rows = grad_output.reshape(()).expand(ctx.rows_shape)  # strides 0: one element for all rows
        if ctx.grad_from_forward is not None:
            grad, ctx.grad_from_forward = ctx.grad_from_forward, None  # hand the buffer over, no copy
            _kernels().softmax_rows_rescale(grad, grad_rows)
        else:
            if options.grad_in_forward and options.inplace_backward:
                raise RuntimeError("fusedloss: a second backward through cross_entropy with grad_in_forward=True "
                                   "and inplace_backward=True is impossible: the forward overwrote the logits "
                                   "with their gradient (backward once, or drop one of the two options)")
            if options.inplace_backward:
                grad = logits  # opt-in: the caller's logits are overwritten by their gradient
            else:
                grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
            _kernels().softmax_rows_bwd(
                logits, target, weight, lse, p_coef, grad_rows, denom, grad,
                ignore_index=options.ignore_index, smoothing=max(options.label_smoothing, 0.0),
                softcap=options.softcap, prob_target=options.prob_target,
                input_is_logprob=options.input_is_logprob)
        # one gradient per forward input: (input, target, weight, options); only input is differentiable
        return grad.reshape(ctx.input_shape), None, None, None


def _mean_denominator(logits, target, weight, options):
    """torch's 'mean' denominator on the device (no sync): the summed weights of the counted targets
    (their count without weights), or the number of rows for probability targets."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if options.prob_target:
        return torch.full((), target.shape[0] * target.shape[2], dtype=acc, device=logits.device)
    counted = target != options.ignore_index
    if weight is None:
        return counted.sum(dtype=acc)
    in_range = torch.where(counted, target, 0).clamp(0, max(logits.shape[1] - 1, 0)).long()
    return (weight[in_range].to(acc) * counted).sum()


def softmax_rows_loss(input, target, weight, options):
    """Apply the op and shape the result as torch does ('none' -> the target's shape)."""
    out = SoftmaxRowsLoss.apply(input, target, weight, options)
    if options.reduction == "none":
        if options.prob_target:
            shape = (input.shape[0], *input.shape[2:]) if input.dim() > 1 else ()
        else:
            shape = target.shape
        out = out.reshape(shape)
    return out
