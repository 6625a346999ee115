"""The pointwise family (BCE, L1/MSE/Huber, KL, Poisson/Gaussian NLL, margins, focal) on the op scaffold.

Forward: one launch of the fused kernel reads every operand once and writes the loss (per element, or
reduced on the device in the same launch) and, for each operand that needs one, its gradient already
scaled as for ``grad_output == 1``. Backward: applies ``grad_output`` to those buffers (one launch per
gradient, skipped on the device when it is 1) and hands them to autograd. Forward+backward traffic is
then 1.0x the minimal for ``grad_output == 1`` (see kernels/pointwise.py for the bytes).

Broadcasting: the operands are expanded to their broadcast shape (views: a broadcast operand is read
through stride 0). The gradient of an operand smaller than that shape is written over the full shape in
float32 and summed down to the operand's shape with torch (``sum_to_size``, a fixed-order reduction).

Saved for the backward: the inputs, and the state: the three gradient buffers of the forward.
"""
from typing import NamedTuple

import torch
from torch import Tensor

from .._torch import F
from .. import _validation as check
from . import _scaffold
from ._eager import gaussian_nll_loss, sigmoid_focal_loss
from ._scaffold import accumulation_dtype, autocast_policy, lazy_kernels, sum_to_operand as _reduce_to


class PointwiseOptions(NamedTuple):
    loss: str  # the formula: a name in kernels/pointwise.py FORMULAS
    # "none" | "sum" | "mean" (over the broadcast shape's elements) | "batchmean" (over input.shape[0])
    # | "weight_mean" (sum(w * l) / sum(w), torch's weighted l1_loss and mse_loss)
    reduction: str
    out_dtype: torch.dtype  # the loss's dtype: the input's, float32 under autocast
    p: float = 0.0  # the formula's scalars: beta, delta, margin or eps (p); var (q, Gaussian NLL with a float
    q: float = 0.0  # var); alpha, gamma (focal loss)
    full: bool = False  # Poisson NLL's Stirling term, Gaussian NLL's constant




kernels = lazy_kernels("pointwise")


def _broadcast_shape(inputs):
    shape = inputs[0].shape
    if any(t is not None and t.shape != shape for t in inputs):
        shape = check.broadcast_shapes(*(t.shape for t in inputs if t is not None))
    return shape


def _expand(tensor, shape):
    """A view of ``tensor`` over the broadcast shape (stride 0 along broadcast dimensions)."""
    return tensor if tensor is None or tensor.shape == shape else tensor.expand(shape)


def _state_dtype(operand, full_shape):
    """The dtype of the gradient the forward writes for grad_output 1 (the state): the operand's own, but
    float32 for a float16 operand (whose g = 1 gradient may overflow float16 where torch's gradient, scaled
    by a grad_output < 1 first, does not: 1 / x at x = 1e-5) and for a broadcast operand's full-shape
    buffer (summed down later). The backward casts to the operand's dtype after applying grad_output."""
    if full_shape and operand.dtype != torch.float16:
        return operand.dtype
    return accumulation_dtype(operand.dtype)


class Pointwise(_scaffold.Family):
    name = "pointwise"
    options_type = PointwiseOptions
    n_inputs = 5  # a (input), b (target or input2), c (var or target), weight, pos_weight

    @staticmethod
    def forward(options, inputs, needs_grad):
        a, b, c, weight, pos_weight = inputs
        shape = a.shape
        broadcast = (b.shape != shape or c is not None and c.shape != shape or weight is not None and weight.shape != shape
                     or pos_weight is not None and pos_weight.shape != shape)
        if broadcast:
            shape = _broadcast_shape(inputs)
            inputs = [_expand(t, shape) for t in inputs]
        reduction = options.reduction
        denom, divisor = None, 1
        if reduction == "weight_mean":
            denom = weight.sum(dtype=accumulation_dtype(a.dtype))  # torch.sum(weight): over the weight's own shape
        elif reduction != "none" and reduction != "sum":
            divisor = _scaffold.reduction_divisor(reduction, shape.numel(), a.shape[0] if a.dim() else 1)
        grad_dtypes = [None if not need else _state_dtype(t, t.shape == shape) for t, need in zip((a, b, c), needs_grad)]
        out, grads = kernels().pointwise_fwd(
            options.loss, *inputs, shape, options.p, options.q, options.full, options.out_dtype, reduction != "none",
            1.0 / divisor if divisor else 1.0, divisor, denom, grad_dtypes)
        if broadcast and reduction != "none":  # broadcast operands: summed to their shapes
            grads = [None if g is None else g.sum_to_size(t.shape).to(_state_dtype(t, True))
                     for g, t in zip(grads, (a, b, c))]
        return out, grads

    @staticmethod
    def backward(options, inputs, state, grad_output, needs_grad, in_place):
        ga, gb, gc = state
        grads = (ga, gb, gc)
        if needs_grad[0] and ga is None or needs_grad[1] and gb is None or needs_grad[2] and gc is None:
            # a second backward through the graph: the first one handed the buffers to autograd
            grads = Pointwise.forward(options, inputs, needs_grad)[1]
            in_place = True  # fresh buffers of our own
        elif in_place:
            state[0] = state[1] = state[2] = None  # handed to autograd: no copy
        if options.reduction == "none":
            scaled = [None if g is None else _reduce_to(g.mul_(grad_output) if in_place else g * grad_output, t)
                      for g, t in zip(grads, inputs)]
        elif in_place:
            scale = kernels().scale_by_grad_output
            scaled = [None if g is None else scale(g, grad_output) for g in grads]
        else:
            scaled = [None if g is None else g * grad_output for g in grads]
        scaled = [g if g is None or g.dtype == t.dtype else g.to(t.dtype) for g, t in zip(scaled, inputs)]  # float16
        return (*scaled, None, None)  # no gradient for weight and pos_weight (the callers check)

    @staticmethod
    def reference(options, a, b, c, weight, pos_weight):
        if a.dtype != options.out_dtype:  # autocast: torch casts to float32 first
            a, b, c, weight, pos_weight = (None if t is None or not t.is_floating_point() else t.to(options.out_dtype)
                                           for t in (a, b, c, weight, pos_weight))
        return _REFERENCES[options.loss](options, a, b, c, weight, pos_weight)

    @staticmethod
    def fake(options, inputs, needs_grad):
        shape = _broadcast_shape(inputs)
        a = inputs[0]
        out = a.new_empty(shape if options.reduction == "none" else (), dtype=options.out_dtype)
        grads = []
        for t, need in zip(inputs[:3], needs_grad[:3]):
            if not need:
                grads.append(None)
            elif options.reduction == "none":
                grads.append(a.new_empty(shape, dtype=_state_dtype(t, t.shape == shape)))
            else:
                grads.append(a.new_empty(t.shape, dtype=_state_dtype(t, True)))
        return out, grads


def _torch_reduction(options):
    return "mean" if options.reduction == "weight_mean" else options.reduction


def _kl_div(options, a, b, log_target):
    if options.reduction == "mean":  # torch's 'mean' (sum / numel), without its warning on every call
        return F.kl_div(a, b, reduction="sum", log_target=log_target) / torch.broadcast_shapes(a.shape, b.shape).numel()
    return F.kl_div(a, b, reduction=options.reduction, log_target=log_target)


_REFERENCES = {  # the torch call each formula fuses: (options, a, b, c, weight, pos_weight) -> loss
    "bce": lambda o, a, b, c, w, pw: F.binary_cross_entropy(a, b, w, reduction=o.reduction),
    "bce_with_logits": lambda o, a, b, c, w, pw: F.binary_cross_entropy_with_logits(
        a, b, w, reduction=o.reduction, pos_weight=pw),
    "smooth_l1": lambda o, a, b, c, w, pw: F.smooth_l1_loss(a, b, reduction=o.reduction, beta=o.p),
    "huber": lambda o, a, b, c, w, pw: F.huber_loss(a, b, reduction=o.reduction, delta=o.p, weight=w),
    "l1": lambda o, a, b, c, w, pw: F.l1_loss(a, b, reduction=_torch_reduction(o), weight=w),
    "mse": lambda o, a, b, c, w, pw: F.mse_loss(a, b, reduction=_torch_reduction(o), weight=w),
    "soft_margin": lambda o, a, b, c, w, pw: F.soft_margin_loss(a, b, reduction=o.reduction),
    "kl_div": lambda o, a, b, c, w, pw: _kl_div(o, a, b, False),
    "kl_div_log_target": lambda o, a, b, c, w, pw: _kl_div(o, a, b, True),
    "poisson_nll": lambda o, a, b, c, w, pw: F.poisson_nll_loss(
        a, b, log_input=False, full=o.full, eps=o.p, reduction=o.reduction),
    "poisson_nll_log_input": lambda o, a, b, c, w, pw: F.poisson_nll_loss(
        a, b, log_input=True, full=o.full, eps=o.p, reduction=o.reduction),
    "gaussian_nll": lambda o, a, b, c, w, pw: gaussian_nll_loss(
        a, b, c if c is not None else o.q, o.full, o.p, o.reduction),
    "margin_ranking": lambda o, a, b, c, w, pw: F.margin_ranking_loss(a, b, c, margin=o.p,
                                                                      reduction=o.reduction),
    "hinge_embedding": lambda o, a, b, c, w, pw: F.hinge_embedding_loss(a, b, margin=o.p,
                                                                        reduction=o.reduction),
    "sigmoid_focal": lambda o, a, b, c, w, pw: sigmoid_focal_loss(a, b, o.p, o.q, o.reduction),
}

FAMILY = _scaffold.register(Pointwise())


def pointwise_loss(options, a, b, c=None, weight=None, pos_weight=None):
    """The loss of operands a (input), b (target or input2), c (var or target), validated by the caller."""
    return _scaffold.run(FAMILY, options, (a, b, c, weight, pos_weight))


# ----------------------------------------------------------------------------------------------------
# the kernels' reach: why they cannot serve a call (None when they can), asked by fusedloss.functional's routes
# ----------------------------------------------------------------------------------------------------

def unsupported(op, input, target, others=(), *, integer_target, trainable_weight=None):
    """Why the pointwise kernel cannot run this call (None when it can).

    ``others``: tensors that must share the input's dtype (weight, pos_weight, var, input2), unless
    autocast computes this loss in float32 (then each is read in its own 16- or 32-bit dtype).
    ``integer_target``: torch promotes an integer target for this loss (the kernel reads any real dtype).
    ``trainable_weight``: a weight torch differentiates (l1, mse, huber); the kernel gives it no gradient.
    """
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        return "a non-tensor input or target"
    if not input.is_floating_point():
        return f"a {check.c10_name(input.dtype)} input (the kernel computes in floating point)"
    policy = autocast_policy(op, input)
    if policy == "refused":
        return f"{op} under autocast (torch refuses it there)"
    dtype = input.dtype
    for t in (target, *others):
        if not isinstance(t, Tensor) or t is target and not t.is_floating_point():
            continue  # an integer target is read as it is (torch promotes it)
        if policy == "float32" and (t.dtype == torch.float64 or dtype == torch.float64):
            return "a float64 operand under autocast (torch's type promotion runs on the eager path)"
        if policy != "float32" and t.dtype != dtype:
            return "operands of different dtypes (torch's type promotion runs on the eager path)"
    if not target.is_floating_point() and (target.is_complex() or not integer_target):
        return f"a {check.c10_name(target.dtype)} target"
    if trainable_weight is not None and trainable_weight.requires_grad and torch.is_grad_enabled():
        return "a weight that requires grad"
    return None
