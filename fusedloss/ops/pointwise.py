"""Autograd op of the pointwise family (BCE, L1/MSE/Huber, KL, Poisson/Gaussian NLL, margins, focal).

Forward: one pass of the fused kernel reads every operand once and writes the loss (per element, or
per-program partial sums reduced here on the device) and, for each operand that needs one, its gradient
already scaled as for ``grad_output == 1``. Backward: applies ``grad_output`` to those buffers on the
device (skipped on the device when it is 1) and hands them to autograd. Forward+backward traffic is
then 1.0x the minimal for ``grad_output == 1`` (see kernels/pointwise.py for the bytes).

Broadcasting: the operands are expanded to their broadcast shape (views: a broadcast operand is read
through stride 0). The gradient of an operand smaller than that shape is written over the full shape in
float32 and summed down to the operand's shape with torch (``sum_to_size``, a fixed-order reduction).
"""
import dataclasses

import torch
from torch.autograd.function import once_differentiable


@dataclasses.dataclass(frozen=True)
class PointwiseOptions:
    loss: str  # the formula: a name in kernels/pointwise.py FORMULAS
    # "none" | "sum" | "mean" (over the broadcast shape's elements) | "batchmean" (over input.shape[0])
    # | "weight_mean" (sum(w * l) / sum(w), torch's weighted l1_loss and mse_loss)
    reduction: str
    params: tuple = ()  # the formula's scalars (p, q): beta, delta, margin, eps, (eps, var), (alpha, gamma)
    full: bool = False  # Poisson NLL's Stirling term, Gaussian NLL's constant


def _kernels():
    from fusedloss.kernels import pointwise  # lazy: Triton is imported on the first Triton-backed call

    return pointwise


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _forward(options, operands, weight, pos_weight, needs_grad, loss_output):
    """Run the kernel. Returns (loss or None, [gradient or None per operand a, b, c]).

    Gradients come back with their operand's shape for a scalar reduction, already scaled for a
    grad_output of 1; for 'none', over the broadcast shape (float32 for a broadcast operand), to be
    multiplied by grad_output and summed down in the backward.
    """
    present = [t for t in (*operands, weight, pos_weight) if t is not None]
    shape = operands[0].shape
    if any(t.shape != shape for t in present):
        shape = torch.broadcast_shapes(*(t.shape for t in present))
    a, b, c, weight_, pos_weight_ = (_expand(t, shape) for t in (*operands, weight, pos_weight))
    n = a.numel()
    dtype = operands[0].dtype
    reduction = options.reduction
    denom = None
    if reduction == "mean":
        divisor = n
    elif reduction == "batchmean":
        divisor = operands[0].shape[0] if operands[0].dim() else 1
    elif reduction == "weight_mean":
        divisor = denom = weight.sum(dtype=_acc_dtype(dtype))  # torch.sum(weight): the weight's own shape
    else:
        divisor = 1
    scale = 1.0 / divisor if isinstance(divisor, int) and divisor else 1.0
    grad_dtypes = [None if not need else (t.dtype if t.shape == shape else _acc_dtype(dtype))
                   for t, need in zip(operands, needs_grad)]
    out, grads = _kernels().pointwise_fwd(
        options.loss, a, b, c, weight_, pos_weight_, params=options.params, full=options.full,
        out_dtype=dtype, reduction_scale=scale, denom=denom, loss_output=loss_output, grad_dtypes=grad_dtypes)
    if loss_output == "elements":
        out = out.view(shape)
    elif loss_output == "partials":
        # a fixed-order torch sum of the per-program partial sums, each already divided by the mean's
        # divisor; nothing to sum: 0 / divisor, so 'mean' of nothing is 0 / 0 = NaN as in torch
        out = out.sum().to(dtype) if n else (out.sum() / divisor).to(dtype)
    grads = [None if g is None else g.view(shape) for g in grads]
    if reduction != "none":
        grads = [None if g is None else _reduce_to(g, t) for g, t in zip(grads, operands)]
    return out, grads


def _expand(tensor, shape):
    """A view of ``tensor`` over the broadcast shape (stride 0 along broadcast dimensions)."""
    return tensor if tensor is None or tensor.shape == shape else tensor.expand(shape)


def _reduce_to(grad, operand):
    """A full-shape gradient summed down to a broadcast operand's shape, in its dtype."""
    if grad.shape == operand.shape:
        return grad
    return grad.sum_to_size(operand.shape).to(operand.dtype)


class PointwiseLoss(torch.autograd.Function):
    """Loss of operands (a, b, c) with optional weight and pos_weight; gradients for a, b, c."""

    @staticmethod
    def forward(ctx, options, a, b, c, weight, pos_weight):
        needs_grad = ctx.needs_input_grad[1:4]
        loss_output = "elements" if options.reduction == "none" else "partials"
        out, grads = _forward(options, (a, b, c), weight, pos_weight, needs_grad, loss_output)
        ctx.options = options
        ctx.grads = grads
        ctx.save_for_backward(a, b, c, weight, pos_weight)  # read again only by a second backward
        return out

    @staticmethod
    @once_differentiable  # the kernel's gradient is not itself differentiable: double backward raises
    def backward(ctx, grad_output):
        grads, ctx.grads = ctx.grads, None  # ctx lets go: autograd can keep the buffers as .grad, no copy
        operands = ctx.saved_tensors[:3]
        if grads is None:
            # a second backward through the graph (retain_graph=True): the first one handed the buffers
            # out (and scaled them in place), so compute the gradients again from the saved inputs
            a, b, c, weight, pos_weight = ctx.saved_tensors
            _, grads = _forward(ctx.options, (a, b, c), weight, pos_weight, ctx.needs_input_grad[1:4], None)
        if ctx.options.reduction == "none":
            grads = [None if g is None else _reduce_to(g.mul_(grad_output), t) for g, t in zip(grads, operands)]
        else:
            kernels = _kernels()
            grads = [None if g is None else kernels.scale_by_grad_output(g, grad_output) for g in grads]
        # one gradient per forward argument: (options, a, b, c, weight, pos_weight)
        return None, *grads, None, None


def pointwise_loss(options, a, b, c=None, weight=None, pos_weight=None):
    """The loss of operands a (input), b (target or input2), c (var or target), validated by the caller.

    The autograd op runs only when a gradient can be asked for; otherwise the kernel writes no gradient.
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (a, b, c)):
        return PointwiseLoss.apply(options, a, b, c, weight, pos_weight)
    loss_output = "elements" if options.reduction == "none" else "partials"
    return _forward(options, (a, b, c), weight, pos_weight, (False, False, False), loss_output)[0]
