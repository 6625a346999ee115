"""The softmax-rows family (cross entropy, NLL) on the op scaffold.

Two ways to split the work (kernels/softmax_rows.py has the byte counts):
  default          the forward reads the logits once and saves each row's log-sum-exp; the backward
                   recomputes the softmax and writes the gradient once: 1.5x the minimal traffic for any
                   grad_output. One launch each way.
  grad_in_forward  the forward also writes the gradient for grad_output = 1 (for 'mean' the denominator
                   is computed first, on the device); the backward rescales only rows whose grad_output
                   is not 1, a check done on the device: 1.0x when grad_output is 1, 2.0x otherwise.
Measured on an H100 (bench/NOTES.md) the two cost the same when half of the calls have grad_output 1, so
the default is the mode that does not depend on it. Nothing syncs with the host.

Vocabulary parallel (``process_group``): the logits hold one rank's block of the classes. The forward
launches twice around two collectives (fusedloss/ops/_vocab_parallel.py): the shard's row statistics,
combined over the ranks, then the loss and lse from them; the backward is the usual one, with the class
offset. linear_cross_entropy (fusedloss/ops/linear_cross_entropy.py) runs these kernels on each chunk
of its logits through ``launch_forward``.

Saved for the backward: the inputs (logits, target, weight) and the state (work, grad): the kernels'
workspace (each row's log-sum-exp and softmax coefficient, the 'mean' denominator: see WORKSPACE in
kernels/softmax_rows.py) and the gradient written by a grad_in_forward forward (handed to autograd by the
first backward).
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .._torch import F
from . import _scaffold, _vocab_parallel
from ._scaffold import accumulation_dtype, lazy_kernels
from ._eager import eager_cross_entropy, vocab_parallel_cross_entropy


class SoftmaxRowsOptions(NamedTuple):
    reduction: str  # "none" | "mean" | "sum"
    out_dtype: torch.dtype  # the loss's dtype: the input's, float32 under autocast
    ignore_index: int = -100
    label_smoothing: float = 0.0  # applied when > 0 (torch: none at all when <= 0)
    z_loss: float = 0.0
    softcap: Optional[float] = None
    prob_target: bool = False
    input_is_logprob: bool = False  # NLL: the input already holds log-probabilities
    inplace_backward: bool = False
    grad_in_forward: bool = False
    process_group: str = ""  # vocabulary-parallel: the group's name (fusedloss/ops/_vocab_parallel.py); "": none




kernels = lazy_kernels("softmax_rows")


def _rows(input, target, prob_target):
    """The (N, C, S) row view of the logits, as (logits, target, (N, C, S, logits strides, target strides)).

    (C) -> (1, C, 1); (N, C) -> (N, C, 1); (N, C, d1..dk) -> (N, C, d1*..*dk); the target as (N, S)
    (class indices: strides (n, 0, s)) or (N, C, S) (probabilities). Sizes and strides only: no view is
    made for (C) and (N, C) inputs, whatever their strides. For (N, C, d1..dk) the spatial dimensions are
    merged by ``reshape``: a view for every layout where they merge, else one copy (the kernels address
    a row by a single spatial stride).
    """
    dim = input.dim()
    if dim == 2:
        n, c = input.shape
        sx = input.stride()
        st = (*target.stride(), 0) if prob_target else (target.stride(0), 0, 0)
        return input, target, (n, c, 1, (sx[0], sx[1], 0), st)
    if dim == 1:
        st = (0, target.stride(0), 0) if prob_target else (0, 0, 0)
        return input, target, (1, input.shape[0], 1, (0, input.stride(0), 0), st)
    n, c = input.shape[0], input.shape[1]
    s = 1
    for size in input.shape[2:]:
        s *= size
    logits = input.reshape(n, c, s)
    if prob_target:
        target = target.reshape(n, c, s)
        return logits, target, (n, c, s, logits.stride(), target.stride())
    target = target.reshape(n, s)
    return logits, target, (n, c, s, logits.stride(), (target.stride(0), 0, target.stride(1)))


def _contiguous_strides(rows):
    """Strides over (N, C, S) of a new contiguous tensor of the input's shape."""
    n, c, s = rows[:3]
    return (c * s, s, 1) if s > 1 else (c, 1, 0)


def _grad_output_strides(grad_output, options, rows):
    """grad_output addressed over the (N, S) rows: (0, 0) for a reduced loss (one element for all)."""
    if options.reduction != "none" or grad_output.dim() == 0:
        return grad_output, (0, 0)
    if grad_output.dim() == 1:
        return grad_output, (grad_output.stride(0), 0)
    g = grad_output.reshape(rows[0], rows[2])
    return g, g.stride()


def _loss_shape(input, target, options):
    """torch's shape of the unreduced loss: the target's (class indices), or (N, d1..dk) (probabilities)."""
    if options.prob_target:
        return (input.shape[0], *input.shape[2:]) if input.dim() > 1 else ()
    return target.shape




class SoftmaxRows:
    name = "softmax_rows"
    options_type = SoftmaxRowsOptions
    n_inputs = 3  # input, target, weight

    @staticmethod
    def forward(options, inputs, needs_grad):
        input, target, weight = inputs
        logits, rows_target, rows = _rows(input, target, options.prob_target)
        grad = None
        extra = {}  # the launcher's extras this call uses
        shard = shard_of(options, rows[1], weight, input.device)
        if shard is not None:  # this rank's statistics, combined over the ranks (two collectives)
            stats = input.new_empty((5, rows[0] * rows[2]), dtype=accumulation_dtype(input.dtype))
            launch_forward(logits, rows_target, weight, rows, options, False, reduction="none", shard=shard,
                           stats=stats, stats_mode="write")
            _vocab_parallel.combine_statistics(stats, options.process_group, per_class_sums(options))
            extra.update(shard=shard, stats=stats, stats_mode="read")
        if needs_grad[0] and options.grad_in_forward and not needs_grad[1]:
            if options.inplace_backward:
                grad, extra["grad_strides"] = logits, rows[3]
            else:
                grad = torch.empty_like(input, memory_format=torch.contiguous_format)
                extra["grad_strides"] = _contiguous_strides(rows)
            extra["grad"] = grad
            if options.reduction == "mean":
                extra["denom"] = mean_denominator(rows_target, weight, options, rows[0] * rows[2],
                                                  shard[1] if shard else rows[1], accumulation_dtype(input.dtype))
        out, work = launch_forward(logits, rows_target, weight, rows, options, needs_grad[0] or needs_grad[1],
                                   _loss_shape(input, target, options), **extra)
        if grad is not None and options.inplace_backward:
            work = None  # the forward overwrote the logits: only the gradient it wrote is left to hand over
        return out, (work, grad)

    @staticmethod
    def backward(options, inputs, state, grad_output, needs_grad, in_place):
        input, target, weight = inputs
        work, grad = state
        want_target = needs_grad[1] and options.prob_target  # class indices are not differentiable
        if input.numel() == 0:
            return (torch.zeros_like(input) if needs_grad[0] else None,
                    torch.zeros_like(target) if want_target else None, None)
        logits, rows_target, rows = _rows(input, target, options.prob_target)
        grad_output, g_strides = _grad_output_strides(grad_output, options, rows)
        if grad is not None and in_place:  # written by the forward for grad_output 1: rescale, hand over
            state[1] = None
            strides = rows[3] if options.inplace_backward else _contiguous_strides(rows)
            kernels().softmax_rows_rescale(grad, strides, rows, grad_output, g_strides)
            return grad.view(input.shape), None, None
        if work is None:
            SoftmaxRows.assert_inputs_intact(options, state)
        grad = strides = target_grad = None
        if needs_grad[0] and options.inplace_backward and in_place:
            grad, strides = logits, rows[3]  # opt-in: the caller's logits are overwritten by their gradient
            state[0] = None  # ... so nothing may read them again (assert_inputs_intact)
        elif needs_grad[0]:
            grad, strides = torch.empty_like(input, memory_format=torch.contiguous_format), _contiguous_strides(rows)
        if want_target:
            target_grad = target.new_empty(target.shape)
        kernels().softmax_rows_bwd(
            logits, rows_target, weight, rows, work, grad_output, g_strides, grad, strides,
            options.reduction == "mean", options.ignore_index, max(options.label_smoothing, 0.0), options.softcap,
            options.prob_target, options.input_is_logprob, target_grad,
            _contiguous_strides(rows) if want_target else None, shard_of(options, rows[1], None, input.device))
        if grad is not None and grad is logits:
            grad = grad.view(input.shape)  # the logits' own buffer, as a new view (autograd copies the input itself)
        return grad, target_grad, None

    @staticmethod
    def assert_inputs_intact(options, state):
        """Raise if an opt-in in-place write overwrote the logits (the workspace is dropped then)."""
        if state[0] is None:
            raise RuntimeError("fusedloss: this cross_entropy's logits were overwritten by their gradient "
                               "(inplace_backward=True), so a second backward, or a differentiable one "
                               "(create_graph=True), is impossible: backward once, or drop inplace_backward")

    @staticmethod
    def compile_options(options):
        """Under torch.compile the gradient gets its own buffer, computed in the backward (same values):
        the registered ops own no buffers across calls."""
        return options._replace(inplace_backward=False, grad_in_forward=False)

    @staticmethod
    def reference(options, input, target, weight):
        return reference_loss(options, input, target, weight)

    @staticmethod
    def fake(options, inputs, needs_grad):
        input, target, _ = inputs
        n, c, s = _rows(input, target, options.prob_target)[2][:3]
        shape = _loss_shape(input, target, options) if options.reduction == "none" else ()
        out = input.new_empty(shape, dtype=options.out_dtype)
        # the state the launcher returns, sized by the launcher's own functions (inductor checks the sizes)
        n_saved = kernels().saved_rows(n * s, needs_grad[0] or needs_grad[1], options.input_is_logprob)
        return out, (input.new_empty(kernels().state_size(n_saved), dtype=accumulation_dtype(input.dtype)), None)


def mean_denominator(target, weight, options, n_rows, n_classes, acc):
    """torch's 'mean' denominator on the device (no sync), for a gradient written in the forward: the
    summed weights of the counted targets (their count without weights; NaN if a counted target is not
    one of the ``n_classes`` classes, as the fused reduction gives), or ``n_rows`` for probability
    targets."""
    return count_denominator(target, weight, options.prob_target, options.ignore_index, n_rows, n_classes, acc)


def count_denominator(target, weight, prob_target, ignore_index, n_rows, n_classes, acc):
    """mean_denominator of the options' two fields it reads."""
    if prob_target:
        return target.new_full((), n_rows, dtype=acc)
    counted = target != ignore_index
    in_range = (target >= 0) & (target < n_classes)
    safe = torch.where(counted & in_range, target, 0).long()
    row_weight = weight[safe].to(acc) if weight is not None else torch.ones(target.shape, dtype=acc,
                                                                            device=target.device)
    row_weight = torch.where(counted, row_weight, 0.0)
    return torch.where(counted & ~in_range, float("nan"), row_weight).sum()


def reference_loss(options, input, target, weight):
    """The loss of a cross-entropy call (also linear_cross_entropy's, on its logits) in differentiable eager
    torch ops: the second-order path."""
    if input.dtype != options.out_dtype:  # autocast: torch casts to float32 first
        input = input.to(options.out_dtype)
        weight = weight.to(options.out_dtype) if weight is not None else None
    if getattr(options, "input_is_logprob", False):
        return F.nll_loss(input, target, weight, ignore_index=options.ignore_index, reduction=options.reduction)
    if options.process_group:
        return vocab_parallel_cross_entropy(input, target, weight, options.ignore_index, options.reduction,
                                            options.label_smoothing, options.z_loss, options.softcap,
                                            options.process_group)
    return eager_cross_entropy(input, target, weight, options.ignore_index, options.reduction,
                               options.label_smoothing, options.z_loss, options.softcap)


def per_class_sums(options):
    """Whether the kernels keep the per-class sums (label smoothing, probability targets)."""
    return options.prob_target or options.label_smoothing > 0


def shard_of(options, n_classes, weight, device):
    """(class offset, total classes) of this rank's block of ``n_classes`` classes, or None without a
    process group; checks the class weight's size against the total."""
    if not options.process_group:
        return None
    shard = _vocab_parallel.shard_layout(options.process_group, n_classes, device)
    _vocab_parallel.check_class_weight(weight, shard[1])
    return shard


def launch_forward(logits, target, weight, rows, options, save_for_backward, out_shape=(), reduction=None,
                   out_dtype=None, **extra):
    """``softmax_rows_fwd`` with the options of a cross-entropy call (also linear_cross_entropy's);
    ``reduction`` and ``out_dtype`` override theirs, ``extra`` goes to the launcher as it is. (The
    launcher's main arguments travel positionally and only the extras a call uses by keyword: on the
    per-call host path, binding ~20 keyword arguments cost ~2.5 us.)"""
    return kernels().softmax_rows_fwd(
        logits, target, weight, rows, reduction or options.reduction, out_dtype or options.out_dtype, out_shape,
        options.ignore_index, max(options.label_smoothing, 0.0), options.z_loss, options.softcap,
        options.prob_target, getattr(options, "input_is_logprob", False), save_for_backward, **extra)


FAMILY = _scaffold.register(SoftmaxRows())


def softmax_rows_loss(input, target, weight, options):
    """Cross entropy / NLL of validated arguments, in torch's output shape."""
    return _scaffold.run(FAMILY, options, (input, target, weight))


# ----------------------------------------------------------------------------------------------------
# the kernels' reach: why they cannot serve a call (None when they can), asked by fusedloss.functional's routes
# ----------------------------------------------------------------------------------------------------

def unsupported(input, target, weight, *unused):
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        return "a non-tensor input or target"
    if weight is not None and weight.requires_grad and target.is_floating_point() and torch.is_grad_enabled():
        # torch differentiates the weight only with probability targets (class indices: it raises)
        return "a class weight that requires grad, with probability targets"
    return None


def overlapping(tensor):
    """True for a view whose elements share memory (stride 0 along a dimension of size > 1: an expanded
    tensor), which ``inplace_backward`` cannot overwrite with a gradient per element (torch's in-place ops
    refuse such a tensor); the gradient then gets its own buffer, as without the option."""
    return any(stride == 0 and size > 1 for size, stride in zip(tensor.shape, tensor.stride()))
