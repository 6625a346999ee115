"""The row-margin family (margin losses, multi-label losses, embedding distances, ranking losses) on the
op scaffold.

Forward: one launch reads each row of every operand once and writes the loss (per row, or reduced on
the device in the same launch) and, for each operand that needs one, its gradient for ``grad_output ==
1`` (kernels/row_margin.py has the math and the bytes). Backward: multiplies those buffers by
grad_output, one launch per gradient, each skipping on the device the rows whose grad_output is 1.
Forward+backward traffic is then 1.0x the minimal for a grad_output of 1.

Layout: every operand is addressed as (N, D, S) through strides (D the row: classes or features; see
LAYOUT in the kernels). Operands of different shapes are expanded to their broadcast shape (views, stride
0); the gradient of a broadcast operand is written over the full shape in float32 (float64) and summed
down to the operand's shape with torch (``sum_to_size``), as the pointwise family does.

Saved for the backward: the inputs, and the state: the three gradient buffers of the forward.
"""
import functools
from typing import NamedTuple

import torch
from torch import Tensor

from .._torch import F
from .. import _validation as check
from . import _eager, _scaffold
from ._scaffold import accumulation_dtype, autocast_policy, lazy_kernels, sum_to_operand as _reduce_to

# every operand in its order: a, b, c (row tensors), t (targets), w (class weights)
N_INPUTS = 5


class RowMarginOptions(NamedTuple):
    loss: str  # a name in kernels/row_margin.py LOSSES
    reduction: str  # "none" | "mean" | "sum"
    out_dtype: torch.dtype  # the loss's dtype: the input's, float32 under autocast
    margin: float = 0.0
    p: float = 2.0  # multi_margin's exponent (1 or 2), or the order of a distance's norm
    eps: float = 0.0
    swap: bool = False  # triplet: the distance swap
    dim: int = -1  # cosine_similarity: the reduced dimension of the broadcast shape (non-negative)
    keepdim: bool = False  # pairwise_distance
    group: int = 1  # rank losses: the group size, num_neg + 1




kernels = lazy_kernels("row_margin")


class Layout(NamedTuple):
    """How the kernel addresses one call: rows = (N, D, S); per operand a view and its (n, d, s) strides."""

    operands: tuple  # (a, b, c) views of the broadcast shape (None where absent)
    strides: tuple  # their (stride_n, stride_d, stride_s), None where absent
    target: object  # the target tensor (or None) and its strides
    target_strides: tuple
    rows: tuple  # (N, D, S)
    grad_shape: tuple  # the (broadcast) shape the gradients are written in
    out_shape: tuple  # the unreduced loss's shape


def _merged_stride(sizes, strides):
    """The stride of consecutive dimensions addressed as one (0 when all have size 1), or None."""
    dims = [(size, stride) for size, stride in zip(sizes, strides) if size != 1]
    for (_, outer), (size, inner) in zip(dims, dims[1:]):
        if outer != inner * size:
            return None
    return dims[-1][1] if dims else 0


def _row_strides(tensor, dim):
    """(tensor, (stride_n, stride_d, stride_s)) of ``tensor`` viewed as (N, D, S) around dimension ``dim``.

    The dimensions before ``dim`` must merge into one stride and so must those after it: true for every
    contiguous, sliced or transposed 2-D layout and for broadcast (stride 0) views of them. Where they do
    not (a broadcast along interleaved dimensions of a >2-D operand) the operand is copied to a
    contiguous tensor, the one layout the kernel then addresses.
    """
    strides = _strides_around(tensor.shape, tensor.stride(), dim)
    if strides is None:
        if tensor.numel() == 0:  # nothing to read; and .contiguous() keeps an empty view's strides as they are
            return tensor, (0, 0, 0)
        tensor = tensor.contiguous()
        strides = _strides_around(tensor.shape, tensor.stride(), dim)
    return tensor, strides


def _strides_around(shape, strides, dim):
    """(stride_n, stride_d, stride_s) of a layout around ``dim``, or None where the dimensions before or
    after it do not merge. Cached (it runs on every call), except for the symbolic sizes of a
    torch.compile trace with dynamic shapes (SymInts are not hashable)."""
    try:
        return _strides_around_cached(shape, strides, dim)
    except TypeError:
        return _strides_of(shape, strides, dim)


def _strides_of(shape, strides, dim):
    outer, inner = _merged_stride(shape[:dim], strides[:dim]), _merged_stride(shape[dim + 1:], strides[dim + 1:])
    if outer is None or inner is None:
        return None
    return outer, strides[dim], inner


_strides_around_cached = functools.lru_cache(maxsize=4096)(_strides_of)


def _rows_of(shape, dim):
    n = s = 1
    for size in shape[:dim]:
        n *= size
    for size in shape[dim + 1:]:
        s *= size
    return n, shape[dim], s


def _class_layout(options, input, target, weight):
    """multi_margin, multilabel_margin: (C) or (N, C) scores (a 0-d input is one class), no broadcasting."""
    dim = input.dim()
    if dim == 2:
        rows, strides = (input.shape[0], input.shape[1], 1), (input.stride(0), input.stride(1), 0)
    elif dim == 1:
        rows, strides = (1, input.shape[0], 1), (0, input.stride(0), 0)
    else:
        rows, strides = (1, 1, 1), (0, 0, 0)
    if options.loss == "multi_margin":  # one class per row; the unreduced loss has the target's shape
        target_strides = (target.stride(0) if target.dim() else 0, 0, 0)
        out_shape = tuple(target.shape)
    else:  # a class list per row, laid out as the input
        target_strides = ((target.stride(0), target.stride(1), 0) if dim == 2 else
                          (0, target.stride(0), 0) if target.dim() == 1 else (0, 0, 0))
        out_shape = (rows[0],) if dim == 2 else ()
    return Layout((input, None, None), (strides, None, None), target, target_strides, rows, tuple(input.shape),
                  out_shape)


def _broadcast_layout(tensors, dim, out_shape_of):
    """Row tensors expanded to their broadcast shape, rows around ``dim`` of that shape."""
    present = [t for t in tensors if t is not None]
    shape = present[0].shape
    if any(t.shape != shape for t in present):
        shape = check.broadcast_shapes(*(t.shape for t in present))
    dim = dim % len(shape)
    views, strides = [], []
    for t in tensors:
        if t is None:
            views.append(None)
            strides.append(None)
            continue
        view, st = _row_strides(t if t.shape == shape else t.expand(shape), dim)
        views.append(view)
        strides.append(st)
    return views, strides, _rows_of(shape, dim), tuple(shape), out_shape_of(tuple(shape), dim)


def _without(shape, dim):
    return shape[:dim] + shape[dim + 1:]


def layout(options, inputs):
    """The Layout of a validated call."""
    a, b, c, t, w = inputs
    loss = options.loss
    if loss == "multi_margin" or loss == "multilabel_margin":
        return _class_layout(options, a, t, w)
    if loss == "rank_hinge" or loss == "rank_cross_entropy":  # (B * G, 1) scores as B groups of G: a strided view
        group = options.group
        rows = (a.shape[0] // group, group, 1)
        strides = ((group * a.stride(0), a.stride(0), 0), None if b is None else (group * b.stride(0), b.stride(0), 0),
                   None)
        out_shape = (rows[0], 1)
        return Layout((a, b, None), strides, None, None, rows, tuple(a.shape), out_shape)
    if loss == "cosine_embedding":  # (N, D) or (D) pairs; the target (N,) or () broadcasts along the batch
        views, strides, rows, shape, _ = _broadcast_layout((a, b), -1, _without)
        if a.dim() == 2:
            n = check.broadcast_shapes((rows[0],), t.shape)[0]
            if n != rows[0]:  # a target longer than the inputs' batch: every input row serves each target
                views, strides, rows, shape, _ = _broadcast_layout((a.expand(n, -1), b.expand(n, -1)), -1, _without)
            t = t.expand(n)
            target_strides = (t.stride(0), 0, 0)
        else:
            target_strides = (0, 0, 0)
        return Layout((*views, None), (*strides, None), t, target_strides, rows, shape, shape[:-1])
    if loss == "cosine_similarity":
        views, strides, rows, shape, out_shape = _broadcast_layout((a, b), options.dim, _without)
        return Layout((*views, None), (*strides, None), None, None, rows, shape, out_shape)
    if loss == "pairwise_distance":
        keep = options.keepdim
        views, strides, rows, shape, out_shape = _broadcast_layout(
            (a, b), -1, lambda s, d: s[:-1] + (1,) if keep else s[:-1])
        return Layout((*views, None), (*strides, None), None, None, rows, shape, out_shape)
    # triplet, multilabel_soft_margin (b the target, c the weight): the last dimension is the row
    views, strides, rows, shape, out_shape = _broadcast_layout((a, b, c), -1, _without)
    return Layout(tuple(views), tuple(strides), None, None, rows, shape, out_shape)


def _grad_dtypes(inputs, needs_grad, shape):
    return [None if not need else t.dtype if tuple(t.shape) == shape else accumulation_dtype(t.dtype)
            for t, need in zip(inputs[:3], needs_grad[:3])]


def _grad_output_rows(grad_output, options, lay):
    """grad_output and its (n, s) strides over the rows: (0, 0) for a reduced loss."""
    if options.reduction != "none" or grad_output.dim() == 0:
        return grad_output, (0, 0)
    n, _, s = lay.rows
    g = grad_output.reshape(n, s)
    return g, g.stride()


class RowMargin(_scaffold.Family):
    name = "row_margin"
    options_type = RowMarginOptions
    n_inputs = N_INPUTS  # a, b, c (row operands), t (targets), w (class weights)

    @staticmethod
    def forward(options, inputs, needs_grad):
        lay = layout(options, inputs)
        n, _, s = lay.rows
        n_rows = n * s
        reduction = options.reduction
        mean = reduction == "mean"
        divisor = n_rows if mean else 1  # no rows: 0 / 0 = NaN ('mean') and 0 ('sum'), no launch
        return kernels().row_margin_fwd(
            options.loss, lay.operands, lay.strides, lay.target, lay.target_strides, inputs[4], lay.rows,
            out_shape=lay.out_shape, out_dtype=options.out_dtype, reduce=reduction != "none", divisor=divisor,
            grad_scale=1.0 / n_rows if mean and n_rows else 1.0,
            grad_dtypes=_grad_dtypes(inputs, needs_grad, lay.grad_shape), grad_shape=lay.grad_shape,
            margin=options.margin, p=options.p, eps=options.eps, swap=options.swap)

    @staticmethod
    def backward(options, inputs, state, grad_output, needs_grad, in_place):
        grads = list(state)
        if any(need and g is None for g, need in zip(grads, needs_grad[:3])):
            # a second backward through the graph: the first one handed the buffers to autograd
            grads = RowMargin.forward(options, inputs, needs_grad)[1]
            in_place = True  # fresh buffers of our own
        elif in_place:
            state[:] = [None] * len(state)  # handed to autograd: no copy
        lay = layout(options, inputs)
        g, g_strides = _grad_output_rows(grad_output, options, lay)
        rescale = kernels().rescale_rows
        out = []
        for grad, operand in zip(grads, inputs[:3]):
            if grad is None:
                out.append(None)
                continue
            grad = rescale(grad if in_place else grad.clone(), lay.rows, g, g_strides)
            out.append(_reduce_to(grad, operand))
        return (*out, None, None)  # targets and class weights get no gradient (the callers check)

    @staticmethod
    def reference(options, a, b, c, t, w):
        if a.dtype != options.out_dtype:  # autocast: torch computes these losses in float32
            a, b, c, w = (None if x is None or not x.is_floating_point() else x.to(options.out_dtype)
                          for x in (a, b, c, w))
        return _REFERENCES[options.loss](options, a, b, c, t, w)

    @staticmethod
    def fake(options, inputs, needs_grad):
        lay = layout(options, inputs)
        a = inputs[0]
        out = a.new_empty(lay.out_shape if options.reduction == "none" else (), dtype=options.out_dtype)
        grads = [None if dt is None else a.new_empty(lay.grad_shape, dtype=dt)
                 for dt in _grad_dtypes(inputs, needs_grad, lay.grad_shape)]
        return out, grads


_REFERENCES = {  # the loss in differentiable torch ops: (options, a, b, c, t, w) -> loss
    # torch's own multi_margin_loss and multilabel_margin_loss have no double backward: torch-ops formulas
    "multi_margin": lambda o, a, b, c, t, w: _eager.multi_margin_loss(a, t, o.p, o.margin, w, o.reduction),
    "multilabel_margin": lambda o, a, b, c, t, w: _eager.multilabel_margin_loss(a, t, o.reduction),
    "multilabel_soft_margin": lambda o, a, b, c, t, w: F.multilabel_soft_margin_loss(a, b, c, reduction=o.reduction),
    "cosine_embedding": lambda o, a, b, c, t, w: F.cosine_embedding_loss(a, b, t, o.margin, reduction=o.reduction),
    "cosine_similarity": lambda o, a, b, c, t, w: F.cosine_similarity(a, b, o.dim, o.eps),
    "pairwise_distance": lambda o, a, b, c, t, w: F.pairwise_distance(a, b, o.p, o.eps, o.keepdim),
    "triplet": lambda o, a, b, c, t, w: F.triplet_margin_loss(a, b, c, o.margin, o.p, o.eps, o.swap,
                                                              reduction=o.reduction),
    "rank_hinge": lambda o, a, b, c, t, w: _eager.rank_hinge_loss(a, b, o.group - 1, o.margin, o.reduction),
    "rank_cross_entropy": lambda o, a, b, c, t, w: _eager.rank_cross_entropy_loss(a, b, o.group - 1),
}

FAMILY = _scaffold.register(RowMargin())


def row_margin_loss(options, a, b=None, c=None, t=None, w=None):
    """The loss of validated operands (see kernels/row_margin.py for what a, b, c, t, w are per loss)."""
    return _scaffold.run(FAMILY, options, (a, b, c, t, w))


# ----------------------------------------------------------------------------------------------------
# the kernels' reach: why they cannot serve a call (None when they can), asked by fusedloss.functional's routes
# ----------------------------------------------------------------------------------------------------

def unsupported(op, tensors, *, integer_ok=(), promoted=()):
    """Why the row-margin kernel cannot run this call (None when it can, or when torch itself raises).

    ``tensors``: the floating operands that must share the first one's dtype (unless autocast computes
    ``op`` in float32: then 16- and 32-bit operands mix). ``integer_ok``: operands the kernel reads in any
    dtype. ``promoted``: operands whose integer dtype torch promotes (the call is valid, the kernels take
    floats only); other non-floating operands are torch's errors, raised by the checks.
    """
    if not all(isinstance(t, Tensor) for t in tensors if t is not None):
        return "a non-tensor operand"
    if any(t is not None and t.dim() == 0 for t in promoted):
        return "0-d operands (a norm over no dimension)"
    if any(t is not None and not t.is_floating_point() and not t.is_complex() for t in promoted):
        return "integer operands (torch promotes them to floating point)"
    policy = autocast_policy(op, tensors[0])
    floats = [t for t in tensors if t is not None and t.is_floating_point()]
    if policy == "float32":
        if any(t.dtype == torch.float64 for t in floats):
            return "a float64 operand under autocast (torch runs it in float64 on the eager path)"
    elif any(t.dtype != floats[0].dtype for t in floats):
        return "operands of different dtypes (torch's type promotion runs on the eager path)"
    for t in integer_ok:
        if t is not None and t.is_floating_point() and floats and t.dtype != floats[0].dtype and policy != "float32":
            return "operands of different dtypes (torch's type promotion runs on the eager path)"
    return None


def unsupported_norm(p):
    if not 0 < p < float("inf"):
        return f"p={p} (the kernels compute the p-norm for 0 < p < inf)"
    return None


def unsupported_multilabel_soft_margin(input, target, weight, *unused):
    problem = unsupported("multilabel_soft_margin_loss", (input,), integer_ok=(target, weight))
    if problem is not None or not input.is_floating_point():
        return problem
    if _enlarges(input, target) or _enlarges(input, weight):
        return "a target or weight that broadcasts the input to a larger shape"
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        return "a weight that requires grad"
    return None


def _enlarges(input, tensor):
    """True when ``tensor`` broadcasts with the input to a larger shape than the input's (torch's loss then
    has that shape); False when it broadcasts to the input's, or not at all (torch's error: the checks)."""
    if tensor is None or tensor.shape == input.shape:
        return False
    try:
        return check.broadcast_shapes(input.shape, tensor.shape) != input.shape
    except RuntimeError:
        return False


def unsupported_cosine_similarity(x1, x2, *unused):
    if isinstance(x1, Tensor) and isinstance(x2, Tensor) and not x1.is_floating_point() and not x2.is_floating_point():
        return None  # torch's error: no floating common dtype
    return unsupported("cosine_similarity", (x1, x2), promoted=(x1, x2))


def unsupported_rank_hinge(y_pred, y_true, num_neg, *unused):
    return unsupported_rank(y_pred, y_true, num_neg, labels=False)


def unsupported_rank_cross_entropy(y_pred, y_true, num_neg):
    return unsupported_rank(y_pred, y_true, num_neg, labels=True)


def unsupported_rank(y_pred, y_true, num_neg, labels):
    if not isinstance(y_pred, Tensor) or not y_pred.is_floating_point():
        return "a non-floating y_pred"
    if isinstance(num_neg, int) and num_neg >= 4096:
        return f"num_neg={num_neg} (a group must fit one tile of at most 4096 scores)"
    if labels and isinstance(y_true, Tensor):
        if y_true.requires_grad and torch.is_grad_enabled():
            return "a y_true that requires grad"
        return unsupported("rank_cross_entropy_loss", (y_pred,), integer_ok=(y_true,))
    return None
