"""Drop-in replacements for ``torch.nn.functional`` losses.

Same names, signatures (deprecated ``size_average``/``reduce`` included), values, gradients and exception
types as torch. Extras are keyword-only and off by default. Every function is one line: it hands its
arguments, positionally, to ``fusedloss.dispatch.call`` with the loss's route (below each function):
torch's own function on the eager path (its checks, warnings and errors as they are), or the checks
torch would make followed by the fused op.
"""
from typing import Optional, Union

import torch
from torch import Tensor

from . import _dtensor, _validation as check
from ._torch import F
from . import dispatch
from .dispatch import Route
from .ops import _eager, _vocab_parallel
from .ops._scaffold import autocast_policy
from .ops.distribution_rows import DistributionOptions, distribution_loss
from .ops.linear_distribution import LinearJSDOptions, LinearLogProbsOptions
from .ops.linear_distribution import linear_jsd_loss as linear_jsd_loss_op
from .ops.linear_distribution import linear_log_probs as linear_log_probs_op
from .ops.linear_cross_entropy import MatmulRowsOptions, linear_cross_entropy_loss
from .ops.pointwise import PointwiseOptions, pointwise_loss
from .ops.row_margin import RowMarginOptions, row_margin_loss
from .ops.softmax_rows import SoftmaxRowsOptions, softmax_rows_loss

__all__ = ["cross_entropy", "nll_loss", "linear_cross_entropy",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "smooth_l1_loss", "huber_loss", "l1_loss",
           "mse_loss", "soft_margin_loss", "kl_div", "poisson_nll_loss", "gaussian_nll_loss",
           "margin_ranking_loss", "hinge_embedding_loss", "sigmoid_focal_loss",
           "multi_margin_loss", "multilabel_margin_loss", "multilabel_soft_margin_loss", "cosine_embedding_loss",
           "triplet_margin_loss", "triplet_margin_with_distance_loss", "pairwise_distance", "cosine_similarity",
           "rank_hinge_loss", "rank_cross_entropy_loss", "ctc_loss",
           "jsd_loss", "log_probs", "linear_jsd_loss", "linear_log_probs"]


def _out_dtype(op, input):
    """The loss's dtype: float32 where torch's autocast policy computes this loss in float32."""
    return torch.float32 if autocast_policy(op, input) == "float32" else input.dtype


# ----------------------------------------------------------------------------------------------------
# softmax rows: cross entropy and NLL
# ----------------------------------------------------------------------------------------------------


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
    loss_dtype: Optional[torch.dtype] = None,
    process_group=None,
) -> Tensor:
    """``torch.nn.functional.cross_entropy``, fused (softmax + NLL in one pass over the logits).

    Keyword-only extras:
      z_loss: adds ``z_loss * lse**2`` per counted row (PaLM), weighted like that row's loss (by the
        target's class weight) and reduced with the same denominator. lse is the row's log-sum-exp.
      softcap: logits -> ``softcap * tanh(logits / softcap)`` before the softmax (Gemma 2).
      inplace_backward: on the Triton path, write the gradient into the logits' own buffer instead of a
        new one (saves N*C memory). The logits then hold their gradient after backward: only use it when
        nothing else reads them afterwards. No effect on the eager path nor under torch.compile.
      grad_in_forward: on the Triton path, compute the gradient in the forward pass, assuming
        grad_output == 1, and only rescale it in the backward (on the device) when grad_output is not 1.
        Forward+backward traffic: 1.0x the minimal when the loss is back-propagated as is, 2.0x when it is
        scaled first (loss scaling, loss / accumulation_steps); the default moves 1.5x either way. With
        ``inplace_backward`` too, the logits are overwritten by their gradient during the forward.
      loss_dtype: the dtype of the loss (default: the input's, or float32 under autocast). float32 with
        16-bit logits gives what ``cross_entropy(logits.float(), ...)`` gives (Hugging Face's causal-LM loss
        upcasts so) without the float32 copy of the logits: the kernels compute in float32 anyway; the
        gradient keeps the logits' dtype.
      process_group: vocabulary-parallel cross entropy over a ``torch.distributed`` group. The logits hold
        this rank's contiguous block of the classes (rank r the r-th block; sizes may differ, as
        ``torch.tensor_split`` makes them); target and ``weight`` are global (class indices and weights
        of every class; probability targets: this rank's block, like the logits). Every rank gets the
        global loss and the gradient of its block. Collectives: one all_reduce MAX and one all_reduce SUM
        of N floats each per call (2N or 4N for the SUM with smoothing or probabilities), none in the
        backward, plus one all_gather of the block sizes the first time a local size is seen (see
        fusedloss/ops/_vocab_parallel.py).
    """
    if process_group is not None:
        _require_classes(process_group, input, 1)
    return dispatch.call(_CROSS_ENTROPY, input, target, weight, size_average, ignore_index, reduce, reduction,
                         label_smoothing, z_loss, softcap, inplace_backward, grad_in_forward, loss_dtype,
                         process_group)


def _require_classes(process_group, tensor, class_dim):
    """A vocabulary-parallel call whose block of the classes (``tensor``'s ``class_dim``; its only one for a
    1-D tensor) is empty: the same error on every rank of the group (_vocab_parallel.require_classes)."""
    if isinstance(tensor, torch.Tensor) and tensor.dim() > 0:
        _vocab_parallel.require_classes(process_group, tensor.shape[min(class_dim, tensor.dim() - 1)], tensor.device)


def _check_extras(z_loss, softcap):
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be a positive number or None, got {softcap}")
    if z_loss < 0:
        raise ValueError(f"z_loss must be >= 0, got {z_loss}")


def _eager_cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing,
                         z_loss, softcap, inplace_backward, grad_in_forward, loss_dtype, process_group):
    if loss_dtype is not None:
        check.check_loss_dtype(loss_dtype)
    if loss_dtype is not None and isinstance(input, Tensor) and loss_dtype != input.dtype:
        input = input.to(loss_dtype)  # the eager path's way to that dtype: torch computes in the input's
        weight = weight.to(loss_dtype) if isinstance(weight, Tensor) and weight.is_floating_point() else weight
    if not z_loss and softcap is None and process_group is None:
        return F.cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)
    _check_extras(z_loss, softcap)
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    if process_group is not None:
        prob_target = check.check_cross_entropy(input, target, weight, ignore_index, label_smoothing,
                                                autocast=_out_dtype("cross_entropy", input) != input.dtype,
                                                sharded=True)
        if input.dim() == 1 and not prob_target:
            target = target.reshape(())
        return _eager.vocab_parallel_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                                                   z_loss, softcap, _vocab_parallel.group_name(process_group))
    return _eager.eager_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                                      softcap)


def _unsupported_softmax_rows(input, target, weight, *unused):
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        return "a non-tensor input or target"
    if weight is not None and weight.requires_grad and target.is_floating_point() and torch.is_grad_enabled():
        # torch differentiates the weight only with probability targets (class indices: it raises)
        return "a class weight that requires grad, with probability targets"
    return None


def _fused_cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing,
                         z_loss, softcap, inplace_backward, grad_in_forward, loss_dtype, process_group):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    if z_loss or softcap is not None:
        _check_extras(z_loss, softcap)
    if loss_dtype is not None:
        check.check_loss_dtype(loss_dtype)
    out_dtype = _out_dtype("cross_entropy", input) if loss_dtype is None else loss_dtype
    prob_target = check.check_cross_entropy(input, target, weight, ignore_index, label_smoothing,
                                            autocast=out_dtype != input.dtype, sharded=process_group is not None,
                                            reduction=reduction)
    if not prob_target:
        check.check_not_differentiable("nll_loss_forward", "weight", weight)
    if input.dim() == 1 and not prob_target:
        target = target.reshape(())  # torch takes a (1,) target for a (C,) input as a 0-d one
    if not prob_target and dispatch.debug_enabled() and process_group is None:
        check.check_class_targets(target, input.shape[0 if input.dim() == 1 else 1], ignore_index)
    if inplace_backward and _overlapping(input):
        inplace_backward = False  # one memory location per several logits can hold none of their gradients
    options = SoftmaxRowsOptions(  # positional: the fields in their order (cheaper than keywords)
        reduction, out_dtype, int(ignore_index), float(label_smoothing), float(z_loss),
        None if softcap is None else float(softcap), prob_target, False, bool(inplace_backward),
        bool(grad_in_forward), "" if process_group is None else _vocab_parallel.group_name(process_group))
    return softmax_rows_loss(input, target, weight, options)


def _overlapping(tensor):
    """True for a view whose elements share memory (stride 0 along a dimension of size > 1: an expanded
    tensor), which ``inplace_backward`` cannot overwrite with a gradient per element (torch's in-place ops
    refuse such a tensor); the gradient then gets its own buffer, as without the option."""
    return any(stride == 0 and size > 1 for size, stride in zip(tensor.shape, tensor.stride()))


_CROSS_ENTROPY = Route("cross_entropy", _eager_cross_entropy, _fused_cross_entropy, _unsupported_softmax_rows,
                       (0, 1, 2), dtensor=lambda *args: _dtensor.cross_entropy(cross_entropy, *args))


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
    return dispatch.call(_NLL, input, target, weight, size_average, ignore_index, reduce, reduction)


def _fused_nll_loss(input, target, weight, size_average, ignore_index, reduce, reduction):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_tensor("input", input)
    check.check_tensor("target", target)
    out_dtype = _out_dtype("nll_loss", input)
    check.check_nll_nd(input, target, weight, autocast=out_dtype != input.dtype)
    check.check_not_differentiable("nll_loss_forward", "weight", weight)
    if input.dim() == 1:
        target = target.reshape(())  # torch takes a (1,) target for a (C,) input as a 0-d one
    if dispatch.debug_enabled():
        check.check_class_targets(target, input.shape[0 if input.dim() == 1 else 1], ignore_index)
    # positional (cheaper than keywords): reduction, out_dtype, ignore_index, label_smoothing, z_loss, softcap,
    # prob_target, input_is_logprob
    options = SoftmaxRowsOptions(reduction, out_dtype, int(ignore_index), 0.0, 0.0, None, False, True)
    return softmax_rows_loss(input, target, weight, options)


_NLL = Route("nll_loss", F.nll_loss, _fused_nll_loss, _unsupported_softmax_rows, (0, 1, 2),
             dtensor=lambda *args: _dtensor.nll_loss(*args))


# ----------------------------------------------------------------------------------------------------
# matmul rows: linear_cross_entropy, the logits never whole (fusedloss.ops.linear_cross_entropy)
# ----------------------------------------------------------------------------------------------------


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    options=None,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    logit_scale: float = 1.0,
    loss_dtype: Optional[torch.dtype] = None,
    process_group=None,
) -> Tensor:
    """``torch.nn.functional.linear_cross_entropy`` (torch >= 2.13; the same signature on older torches):
    ``cross_entropy(linear(input, linear_weight, linear_bias), target, ...)`` without ever holding the
    logits whole. Inputs (N, H) or (H); linear_weight (C, H) or (C, d1..dk, H) (K-dimensional loss);
    class-index or probability targets; every cross_entropy option. ``ignore_index=None`` is torch's
    -100 for class indices (and must stay None for probabilities).

    On the Triton path the work runs in chunks of tokens around the GEMMs, the fused cross-entropy
    kernel writing each chunk's gradient over its logits (fusedloss/ops/linear_cross_entropy.py): the
    largest temporary is one chunk of logits (<= 224 MiB), plus a float32 accumulator of the weight's
    gradient for 16-bit weights; deterministic, no host sync. ``options``: the eager path passes it to
    torch as given (torch's chunked path); the Triton path takes only its ``batch_chunk_size`` (rows per
    chunk; default: the memory budget) and always accumulates in float32, supporting double backward,
    torch.func and torch.compile.

    Keyword-only extras, as ``cross_entropy``'s: ``z_loss``, ``softcap`` (applied to the logits, its
    gradient included), ``logit_scale`` (the logits are ``logit_scale * linear(input)``, scaled before the
    softcap as Cohere's ``logit_scale``, Granite's ``1 / logits_scaling`` and Falcon-H1's
    ``lm_head_multiplier`` scale theirs; on the Triton path it rides in the GEMMs, no pass over the
    logits), ``loss_dtype`` (float32 with 16-bit operands: the loss of the 16-bit logits
    computed and returned in float32, as Hugging Face's causal-LM loss upcasts them), ``process_group``
    (vocabulary-parallel: ``linear_weight`` and ``linear_bias`` hold
    this rank's contiguous block of the classes; the gradient of ``input`` is this rank's term, to be
    summed over the group like a column-parallel linear's input gradient).
    """
    if process_group is not None:
        _require_classes(process_group, linear_weight, 0)
    return dispatch.call(_LINEAR_CROSS_ENTROPY, input, linear_weight, target, linear_bias, weight, reduction,
                         ignore_index, label_smoothing, options, z_loss, softcap, loss_dtype, process_group,
                         logit_scale)


def _eager_linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                                label_smoothing, options, z_loss, softcap, loss_dtype, process_group, logit_scale):
    if loss_dtype is not None:
        check.check_loss_dtype(loss_dtype)
    logit_scale = check.check_logit_scale(logit_scale)
    torch_linear_cross_entropy = getattr(F, "linear_cross_entropy", None)  # torch >= 2.13
    plain = not z_loss and softcap is None and process_group is None and logit_scale == 1.0 and (
        loss_dtype is None or not isinstance(input, Tensor) or loss_dtype == input.dtype)
    if plain and torch_linear_cross_entropy is not None:
        return torch_linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=weight,
                                          reduction=reduction, ignore_index=ignore_index,
                                          label_smoothing=label_smoothing, options=options)
    _check_extras(z_loss, softcap)
    check.linear_cross_entropy_chunk_rows(options, input, linear_weight)  # checked; the eager formula holds
    # the logits whole (torch's own function with these options, where this torch has one, runs above)
    reduction, prob_target, ignore_index = _check_linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, reduction, ignore_index, label_smoothing, process_group)
    return _eager.linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                                       label_smoothing, z_loss, softcap,
                                       "" if process_group is None else _vocab_parallel.group_name(process_group),
                                       loss_dtype, logit_scale)


def _check_linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                                label_smoothing, process_group, autocast=False):
    """torch's checks of linear_cross_entropy, in its order: its own, the reduction, cross entropy's on the
    logits' shape. Returns (reduction, probability targets, ignore_index)."""
    logits_shape, prob_target, ignore_index = check.check_linear_cross_entropy(
        input, linear_weight, target, linear_bias, ignore_index)
    reduction = check.reduction_from_args(None, None, reduction)
    logits = check.LogitsShape(logits_shape, input.dtype, input.is_cuda)
    check.check_cross_entropy(logits, target, weight, ignore_index, label_smoothing, autocast=autocast,
                              sharded=process_group is not None, reduction=reduction)
    return reduction, prob_target, ignore_index


def _autocast_linear(input, linear_weight, linear_bias):
    """torch.autocast's casts of the linear's operands (16-bit GEMMs), or the operands as they are."""
    device_type = input.device.type
    if input.dtype == torch.float64 or not torch.is_autocast_enabled(device_type):
        return input, linear_weight, linear_bias
    dtype = torch.get_autocast_dtype(device_type)
    cast = [t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
            for t in (input, linear_weight, linear_bias)]
    return tuple(cast)


def _fused_linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                                label_smoothing, options, z_loss, softcap, loss_dtype, process_group, logit_scale):
    if loss_dtype is not None:
        check.check_loss_dtype(loss_dtype)
    logit_scale = check.check_logit_scale(logit_scale)
    out_dtype = _out_dtype("cross_entropy", input) if loss_dtype is None else loss_dtype
    autocast = out_dtype != input.dtype or torch.is_autocast_enabled(input.device.type)
    reduction, prob_target, ignore_index = _check_linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, reduction, ignore_index, label_smoothing, process_group,
        autocast)
    if z_loss or softcap is not None:
        _check_extras(z_loss, softcap)
    check.check_not_differentiable("nll_loss_forward", "weight", None if prob_target else weight)
    input, linear_weight, linear_bias = _autocast_linear(input, linear_weight, linear_bias)
    if input.dim() == 1 and not prob_target:
        target = target.reshape(())  # torch takes a (1,) target for an unbatched input as a 0-d one
    if not prob_target and dispatch.debug_enabled() and process_group is None:
        check.check_class_targets(target, linear_weight.shape[0], ignore_index)
    # torch's chunked path takes options for these calls only (else it warns and ignores them)
    chunked = (reduction in ("mean", "sum", "none") and not label_smoothing and target.dtype == torch.int64
               and linear_weight.dim() == 2)
    chunk_rows = check.linear_cross_entropy_chunk_rows(options, input, linear_weight, chunked)
    lce_options = MatmulRowsOptions(
        reduction, out_dtype, int(ignore_index), float(label_smoothing), float(z_loss),
        None if softcap is None else float(softcap), prob_target, int(chunk_rows),
        "" if process_group is None else _vocab_parallel.group_name(process_group), logit_scale)
    return linear_cross_entropy_loss(input, linear_weight, target, linear_bias, weight, lce_options)


def _unsupported_linear_cross_entropy(input, linear_weight, target, linear_bias, weight, *unused):
    tensors = (input, linear_weight, target)
    if not all(isinstance(t, Tensor) for t in tensors):
        return "a non-tensor input, linear_weight or target"
    if not input.is_floating_point():
        return f"a {check.c10_name(input.dtype)} input"
    operands = [t for t in (input, linear_weight, linear_bias) if t is not None]
    if not torch.is_autocast_enabled(input.device.type) and any(t.dtype != input.dtype for t in operands):
        return "operands of different dtypes (torch's linear raises on the eager path)"
    if target.requires_grad and target.is_floating_point() and torch.is_grad_enabled():
        return "probability targets that require grad"
    return _unsupported_softmax_rows(input, target, weight)


_LINEAR_CROSS_ENTROPY = Route("linear_cross_entropy", _eager_linear_cross_entropy, _fused_linear_cross_entropy,
                              _unsupported_linear_cross_entropy, (0, 1, 2, 3, 4),
                              dtensor=lambda *args: _dtensor.linear_cross_entropy(linear_cross_entropy, *args))


# ----------------------------------------------------------------------------------------------------
# pointwise losses: one fused pass over the elements computes the loss and every gradient
# (fusedloss.ops.pointwise). The Triton path reproduces torch's checks before the kernel runs.
# ----------------------------------------------------------------------------------------------------


def _unsupported_pointwise(op, input, target, others=(), *, integer_target, trainable_weight=None):
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


def _pointwise_route(op, fused, unsupported, tensors, eager=None, broadcast=((0, 1),)):
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
    options = PointwiseOptions("bce", reduction, _out_dtype("binary_cross_entropy", input))
    return pointwise_loss(options, input, target, weight=weight)


_BCE = _pointwise_route(
    "binary_cross_entropy", _fused_bce,
    lambda input, target, weight, *_: _unsupported_pointwise("binary_cross_entropy", input, target, (weight,),
                                                             integer_target=False), (0, 1, 2))


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
    options = PointwiseOptions("bce_with_logits", reduction, _out_dtype("binary_cross_entropy_with_logits", input))
    return pointwise_loss(options, input, target, weight=weight, pos_weight=pos_weight)


_BCE_WITH_LOGITS = _pointwise_route(
    "binary_cross_entropy_with_logits", _fused_bce_with_logits,
    lambda input, target, weight, size_average, reduce, reduction, pos_weight: _unsupported_pointwise(
        "binary_cross_entropy_with_logits", input, target, (weight, pos_weight), integer_target=False),
    (0, 1, 2, 6),
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
    out_dtype = _out_dtype("smooth_l1_loss", input)
    options = (PointwiseOptions("smooth_l1", reduction, out_dtype, float(beta)) if beta
               else PointwiseOptions("l1", reduction, out_dtype))
    return pointwise_loss(options, input, target)


_SMOOTH_L1 = _pointwise_route(
    "smooth_l1_loss", _fused_smooth_l1,
    lambda input, target, *_: _unsupported_pointwise("smooth_l1_loss", input, target, integer_target=True), (0, 1))


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
    options = PointwiseOptions("huber", reduction, _out_dtype("huber_loss", input), float(delta))
    return pointwise_loss(options, input, target, weight=weight)


_HUBER = _pointwise_route(
    "huber_loss", _fused_huber,
    lambda input, target, reduction, delta, weight: _unsupported_pointwise(
        "huber_loss", input, target, (weight,), integer_target=True, trainable_weight=weight), (0, 1, 4))


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
        return pointwise_loss(PointwiseOptions(formula, reduction, _out_dtype(op, input)), input, target,
                              weight=weight)

    def unsupported(input, target, size_average, reduce, reduction, weight):
        return _unsupported_pointwise(op, input, target, (weight,), integer_target=True, trainable_weight=weight)

    return _pointwise_route(op, fused, unsupported, (0, 1, 5))


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
    options = PointwiseOptions("soft_margin", reduction, _out_dtype("soft_margin_loss", input))
    return pointwise_loss(options, input, target)


_SOFT_MARGIN = _pointwise_route(
    "soft_margin_loss", _fused_soft_margin,
    lambda input, target, *_: _unsupported_pointwise("soft_margin_loss", input, target, integer_target=True), (0, 1))


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
                               _out_dtype("kl_div", input))
    return pointwise_loss(options, input, target)


_KL_DIV = _pointwise_route(
    "kl_div", _fused_kl_div,
    lambda input, target, *_: _unsupported_pointwise("kl_div", input, target, integer_target=False), (0, 1),
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
                               _out_dtype("poisson_nll_loss", input), float(eps), 0.0, bool(full))
    return pointwise_loss(options, input, target)


_POISSON_NLL = _pointwise_route(
    "poisson_nll_loss", _fused_poisson_nll,
    lambda input, target, *_: _unsupported_pointwise("poisson_nll_loss", input, target, integer_target=True), (0, 1),
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
    options = PointwiseOptions("gaussian_nll", reduction, _out_dtype("gaussian_nll_loss", input),
                               float(eps), var if isinstance(var, float) else 0.0, bool(full))
    return pointwise_loss(options, input, target, var if isinstance(var, Tensor) else None)


_GAUSSIAN_NLL = _pointwise_route(
    "gaussian_nll_loss", _fused_gaussian_nll,
    lambda input, target, var, *_: _unsupported_pointwise("gaussian_nll_loss", input, target, (var,),
                                                          integer_target=True), (0, 1, 2),
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
    options = PointwiseOptions("margin_ranking", reduction, _out_dtype("margin_ranking_loss", input1),
                               float(margin))
    return pointwise_loss(options, input1, input2, target)


_MARGIN_RANKING = _pointwise_route(
    "margin_ranking_loss", _fused_margin_ranking,
    lambda input1, input2, target, *_: _unsupported_pointwise("margin_ranking_loss", input1, target, (input2,),
                                                              integer_target=True), (0, 1, 2),
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
    options = PointwiseOptions("hinge_embedding", reduction, _out_dtype("hinge_embedding_loss", input),
                               float(margin))
    # the target only selects a branch: torch's graph has no path to it, so it gets no gradient here either
    return pointwise_loss(options, input, target.detach())


_HINGE_EMBEDDING = _pointwise_route(
    "hinge_embedding_loss", _fused_hinge_embedding,
    lambda input, target, *_: _unsupported_pointwise("hinge_embedding_loss", input, target, integer_target=True),
    (0, 1),
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
    options = PointwiseOptions("sigmoid_focal", reduction, _out_dtype("sigmoid_focal_loss", inputs),
                               float(alpha), float(gamma))
    return pointwise_loss(options, inputs, targets)


_SIGMOID_FOCAL = _pointwise_route(
    "sigmoid_focal_loss", _fused_sigmoid_focal,
    lambda inputs, targets, *_: _unsupported_pointwise("sigmoid_focal_loss", inputs, targets, integer_target=False),
    (0, 1), eager=_eager.sigmoid_focal_loss)


# ----------------------------------------------------------------------------------------------------
# row-margin losses: one program per row reads the row once and writes the loss and every gradient
# (fusedloss.ops.row_margin). The Triton path reproduces torch's checks before the kernel runs.
# ----------------------------------------------------------------------------------------------------


def _unsupported_rows(op, tensors, *, integer_ok=(), promoted=()):
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


def _unsupported_norm(p):
    if not 0 < p < float("inf"):
        return f"p={p} (the kernels compute the p-norm for 0 < p < inf)"
    return None


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
    out_dtype = _out_dtype("multi_margin_loss", input)
    check.check_multi_margin(input, target, p, weight, autocast=out_dtype != input.dtype)
    check.check_not_differentiable("multi_margin_loss", "weight", weight)
    if dispatch.debug_enabled():
        check.check_margin_targets(target, input.shape[-1] if input.dim() else 1, multilabel=False)
    options = RowMarginOptions("multi_margin", reduction, out_dtype, float(margin), float(p))
    return row_margin_loss(options, input, t=target, w=weight)


_MULTI_MARGIN = Route("multi_margin_loss", F.multi_margin_loss, _fused_multi_margin,
                      lambda input, target, p, margin, weight, *_: _unsupported_rows(
                          "multi_margin_loss", (input, weight)), (0, 1, 4))


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
    options = RowMarginOptions("multilabel_margin", reduction, _out_dtype("multilabel_margin_loss", input))
    return row_margin_loss(options, input, t=target)


_MULTILABEL_MARGIN = Route("multilabel_margin_loss", F.multilabel_margin_loss, _fused_multilabel_margin,
                           lambda input, *_: _unsupported_rows("multilabel_margin_loss", (input,)), (0, 1))


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
    options = RowMarginOptions("multilabel_soft_margin", reduction, _out_dtype("multilabel_soft_margin_loss", input))
    return row_margin_loss(options, input, target, weight)


def _unsupported_multilabel_soft_margin(input, target, weight, *unused):
    problem = _unsupported_rows("multilabel_soft_margin_loss", (input,), integer_ok=(target, weight))
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


_MULTILABEL_SOFT_MARGIN = Route("multilabel_soft_margin_loss", F.multilabel_soft_margin_loss,
                                _fused_multilabel_soft_margin, _unsupported_multilabel_soft_margin, (0, 1, 2),
                                ((1, 0), ((0, 1), 2)))  # torch: target * logsigmoid(input), then * weight


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
    options = RowMarginOptions("cosine_embedding", reduction, _out_dtype("cosine_embedding_loss", input1),
                               float(margin), eps=_COSINE_EMBEDDING_EPS)
    # the target only selects a branch: torch's graph has no path to it, so it gets no gradient here either
    return row_margin_loss(options, input1, input2, t=target.detach())


def _cosine_shape(args):
    """The shape of cosine_embedding_loss's cosines: the inputs' broadcast shape without the last dimension."""
    return torch.broadcast_shapes(args[0].shape, args[1].shape)[:-1]


_COSINE_EMBEDDING_EPS = 9.999999960041972e-13  # ATen's EPSILON: the float 1e-12f (float64 inputs see it exactly)
_COSINE_EMBEDDING = Route("cosine_embedding_loss", F.cosine_embedding_loss, _fused_cosine_embedding,
                          lambda input1, input2, target, *_: _unsupported_rows(
                              "cosine_embedding_loss", (input1, input2), promoted=(input1, input2)), (0, 1, 2),
                          ((0, 1), (2, _cosine_shape)))  # torch: where(target == 1, 1 - cos, 0), cos per row


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
    options = RowMarginOptions("triplet", reduction, _out_dtype(op, anchor), float(margin), float(p), float(eps),
                               bool(swap))
    return row_margin_loss(options, anchor, positive, negative)


_TRIPLET = Route("triplet_margin_loss", F.triplet_margin_loss, _fused_triplet,
                 lambda anchor, positive, negative, margin, p, *_: _unsupported_rows(
                     "triplet_margin_loss", (anchor, positive, negative),
                     promoted=(anchor, positive, negative)) or _unsupported_norm(p), (0, 1, 2),
                 ((0, 1), (0, 2), (1, 2)))  # torch: the distances a-p, a-n, p-n


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
    if isinstance(distance_function, torch.nn.PairwiseDistance) and not distance_function.keepdim:
        from . import nn  # (it imports this module)

        if type(distance_function).forward in (torch.nn.PairwiseDistance.forward, nn.PairwiseDistance.forward):
            return float(distance_function.norm), float(distance_function.eps)
    return None


def _unsupported_triplet_with_distance(anchor, positive, negative, distance_function, *unused):
    distance = _fused_distance(distance_function)
    if distance is None:
        name = getattr(distance_function, "__qualname__", type(distance_function).__name__)
        return f"distance_function={name} (only None or pairwise_distance is fused; torch runs any other callable)"
    return _unsupported_rows("triplet_margin_with_distance_loss", (anchor, positive, negative),
                             promoted=(anchor, positive, negative)) or _unsupported_norm(distance[0])


_TRIPLET_WITH_DISTANCE = Route("triplet_margin_with_distance_loss", _eager_triplet_with_distance,
                               _fused_triplet_with_distance, _unsupported_triplet_with_distance, (0, 1, 2),
                               ((0, 1), (0, 2), (1, 2)))  # torch: the distances a-p, a-n, p-n


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> Tensor:
    """``torch.nn.functional.pairwise_distance``: |x1 - x2 + eps|_p over the last dimension of the
    broadcast inputs, fused (one read of each row; gradients for both inputs)."""
    return dispatch.call(_PAIRWISE_DISTANCE, x1, x2, p, eps, keepdim)


def _fused_pairwise_distance(x1, x2, p, eps, keepdim):
    check.check_pairwise(x1, x2)
    options = RowMarginOptions("pairwise_distance", "none", _out_dtype("pairwise_distance", x1), p=float(p),
                               eps=float(eps), keepdim=bool(keepdim))
    return row_margin_loss(options, x1, x2)


_PAIRWISE_DISTANCE = Route("pairwise_distance", F.pairwise_distance, _fused_pairwise_distance,
                           lambda x1, x2, p, *_: _unsupported_rows("pairwise_distance", (x1, x2), promoted=(x1, x2))
                           or _unsupported_norm(p), (0, 1))


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``torch.nn.functional.cosine_similarity``: <x1 / max(|x1|, eps), x2 / max(|x2|, eps)> along ``dim``
    of the broadcast inputs (torch's clamp has no gradient), fused; gradients for both inputs."""
    return dispatch.call(_COSINE_SIMILARITY, x1, x2, dim, eps)


def _fused_cosine_similarity(x1, x2, dim, eps):
    dim = check.check_cosine_similarity(x1, x2, dim)
    options = RowMarginOptions("cosine_similarity", "none", _out_dtype("cosine_similarity", x1), eps=float(eps),
                               dim=dim)
    return row_margin_loss(options, x1, x2)


def _unsupported_cosine_similarity(x1, x2, *unused):
    if isinstance(x1, Tensor) and isinstance(x2, Tensor) and not x1.is_floating_point() and not x2.is_floating_point():
        return None  # torch's error: no floating common dtype
    return _unsupported_rows("cosine_similarity", (x1, x2), promoted=(x1, x2))


_COSINE_SIMILARITY = Route("cosine_similarity", F.cosine_similarity, _fused_cosine_similarity,
                           _unsupported_cosine_similarity, (0, 1))


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


_CTC = Route("ctc_loss", F.ctc_loss, None,
             lambda *_: "ctc_loss is not fused: torch's implementation (cuDNN or ATen) runs on every backend", (0, 1))


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
    options = RowMarginOptions("rank_hinge", reduction, _out_dtype("rank_hinge_loss", y_pred), float(margin),
                               group=num_neg + 1)
    return row_margin_loss(options, y_pred)


def _unsupported_rank(y_pred, y_true, num_neg, labels):
    if not isinstance(y_pred, Tensor) or not y_pred.is_floating_point():
        return "a non-floating y_pred"
    if isinstance(num_neg, int) and num_neg >= 4096:
        return f"num_neg={num_neg} (a group must fit one tile of at most 4096 scores)"
    if labels and isinstance(y_true, Tensor):
        if y_true.requires_grad and torch.is_grad_enabled():
            return "a y_true that requires grad"
        return _unsupported_rows("rank_cross_entropy_loss", (y_pred,), integer_ok=(y_true,))
    return None


_RANK_HINGE = Route("rank_hinge_loss", _eager_rank_hinge, _fused_rank_hinge,
                    lambda y_pred, y_true, num_neg, *_: _unsupported_rank(y_pred, y_true, num_neg, False), (0,))


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
    options = RowMarginOptions("rank_cross_entropy", "mean", _out_dtype("rank_cross_entropy_loss", y_pred),
                               eps=float(torch.finfo(torch.float64).eps), group=num_neg + 1)
    return row_margin_loss(options, y_pred, y_true)


_RANK_CROSS_ENTROPY = Route("rank_cross_entropy_loss", _eager_rank_cross_entropy, _fused_rank_cross_entropy,
                            lambda y_pred, y_true, num_neg: _unsupported_rank(y_pred, y_true, num_neg, True), (0, 1))


# ----------------------------------------------------------------------------------------------------
# distillation and token log-probabilities over large vocabularies (fusedloss.ops.distribution_rows)
# ----------------------------------------------------------------------------------------------------


def jsd_loss(
    input: Tensor,
    target,
    labels: Optional[Tensor] = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    grad_in_forward: bool = False,
    loss_dtype: Optional[torch.dtype] = None,
    process_group=None,
) -> Tensor:
    """Knowledge-distillation divergence between a student's logits ``input`` and a teacher's ``target``,
    (..., V) each (rows: every leading dimension), with s = log_softmax(input / T), t = log_softmax(target / T):

      beta = 0        sum_v exp(t_v) (t_v - s_v)           forward KL(teacher || student)
      beta = 1        sum_v exp(s_v) (s_v - t_v)           reverse KL(student || teacher)
      0 < beta < 1    m = log(beta exp(t) + (1 - beta) exp(s)),
                      beta sum exp(t) (t - m) + (1 - beta) sum exp(s) (s - m)   the generalized JSD (GKD)

    per row, no T**2 factor (TRL's ``GKDTrainer.generalized_jsd_loss``); a term whose probability is 0
    counts 0. ``labels`` (the rows' shape, optional): rows labelled ``ignore_index`` count nothing and get
    no gradient. ``reduction``: 'batchmean' (sum / counted rows, at least 1 as TRL's: a batch with no
    counted row gives 0; all rows count without labels), 'sum', 'mean' (sum / (counted rows x V), torch's
    kl_div 'mean'), 'none' (the rows' losses, shaped as the leading dimensions). Gradients for ``input``, and for ``target`` when it requires grad.

    Offline distillation: ``target`` may be the teacher's stored top-k, a pair ``(log_probs (..., K),
    classes (..., K))``: then beta must be 0 and the loss is sum_j exp(t_j) (t_j - s_{class_j}) over the
    teacher's support (the student's softmax over its whole vocabulary; the log-probabilities are taken as
    given, without T). A class outside [0, V) makes its row NaN (``FUSEDLOSS_DEBUG=1``: IndexError).

    Keyword-only extras: ``grad_in_forward`` (as cross_entropy's: the gradient for grad_output 1 written in
    the forward, rescaled on the device when it is not 1); ``loss_dtype`` (the loss's dtype; default the
    input's, float32 under autocast); ``process_group``: vocabulary parallel over a ``torch.distributed``
    group, as cross_entropy's: ``input`` and a logits ``target`` hold this rank's block of the classes,
    labels and top-k classes are global; every rank gets the global loss and the gradient of its block
    (collectives: an all_reduce MAX of 2R floats and SUMs of 2R and 2R, R the rows; none in the backward;
    ``grad_in_forward`` does not apply). DTensor logits sharded on the classes take this path by themselves.
    """
    indices = None
    if isinstance(target, (tuple, list)):
        if len(target) != 2:
            raise ValueError(f"jsd_loss: a top-k target is a pair (log_probs, classes), got {len(target)} items")
        target, indices = target
    if process_group is not None:
        _require_classes(process_group, input, -1)
    return dispatch.call(_JSD, input, target, indices, labels, beta, temperature, ignore_index, reduction,
                         grad_in_forward, loss_dtype, process_group)


def _jsd_out_dtype(op, input, loss_dtype, name="loss_dtype"):
    if loss_dtype is not None:
        check.check_loss_dtype(loss_dtype, name)
        return loss_dtype
    return _out_dtype(op, input)


def _group_and_classes(input, process_group, n_local=None):
    """(the group's registered name or "", the classes of the whole vocabulary, known only in debug mode:
    the shard layout may need a collective) of a call whose logits (or LM head) hold ``n_local`` classes
    (default the input's last dimension)."""
    n_local = input.shape[-1] if n_local is None else n_local
    if process_group is None:
        return "", n_local
    name = _vocab_parallel.group_name(process_group)
    if not dispatch.debug_enabled():
        return name, None
    return name, _vocab_parallel.shard_layout(name, n_local, input.device)[1]


def _jsd_call(input, target, indices, labels, beta, temperature, ignore_index, reduction, loss_dtype, process_group):
    """The validated call: (out dtype, the group's name, the vocabulary's classes)."""
    check.check_jsd(input, target, indices, labels, beta, temperature, ignore_index, reduction)
    out_dtype = _jsd_out_dtype("jsd_loss", input, loss_dtype)
    group, n_classes = _group_and_classes(input, process_group)
    if dispatch.debug_enabled():
        check.check_distribution_targets(indices, labels, n_classes, ignore_index, False)
    return out_dtype, group


def _eager_jsd(input, target, indices, labels, beta, temperature, ignore_index, reduction, grad_in_forward,
               loss_dtype, process_group):
    out_dtype, group = _jsd_call(input, target, indices, labels, beta, temperature, ignore_index, reduction,
                                 loss_dtype, process_group)
    if out_dtype != input.dtype:
        input = input.to(out_dtype)
        target = target.to(out_dtype)
    return _eager.distillation_loss(input, target, indices, labels, float(beta), float(temperature), ignore_index,
                                    reduction, group=group).to(out_dtype)


def _fused_jsd(input, target, indices, labels, beta, temperature, ignore_index, reduction, grad_in_forward,
               loss_dtype, process_group):
    out_dtype, group = _jsd_call(input, target, indices, labels, beta, temperature, ignore_index, reduction,
                                 loss_dtype, process_group)
    options = DistributionOptions("jsd", reduction, out_dtype, float(beta), float(temperature), int(ignore_index),
                                  False, bool(grad_in_forward) and not group, group)
    return distribution_loss(options, input, target, indices, labels)


def _unsupported_jsd(input, target, indices, labels, *unused):
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        return "a non-tensor input or target"
    if indices is not None and target.requires_grad and torch.is_grad_enabled():
        return "top-k teacher log-probabilities that require grad"
    return None


_JSD = Route("jsd_loss", _eager_jsd, _fused_jsd, _unsupported_jsd, (0, 1, 2, 3), (),
             dtensor=lambda *args: _dtensor.jsd_loss(jsd_loss, *args))


def log_probs(
    input: Tensor,
    tokens: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    with_entropy: bool = False,
    dtype: Optional[torch.dtype] = None,
    process_group=None,
):
    """Per row of the (..., V) logits ``input``: ``log_softmax(input / T)[token]`` (``tokens``: the rows'
    shape), 0 with no gradient where the token is ``ignore_index``; with ``with_entropy`` also the row's
    entropy ``-sum p log p`` (p = softmax(input / T); 0 with no gradient for ignored rows), returned as
    ``(log_probs, entropy)``. Both differentiable (the backward takes a gradient per row of each), in one
    pass over the logits: the per-token log-probabilities of RL (GRPO/PPO ratios, the entropy bonus) and
    preference training (DPO/KTO sum them per sequence). ``dtype``: the outputs' dtype (default the
    input's; float32 under autocast); float32 from 16-bit logits equals ``log_softmax(input.float() / T)``'s.
    A token outside [0, V) that is not ignore_index makes its row NaN (``FUSEDLOSS_DEBUG=1``: IndexError).
    ``process_group``: vocabulary parallel, as cross_entropy's (``input`` this rank's block of the classes,
    ``tokens`` global; collectives: an all_reduce MAX of R floats and a SUM of 2R, 3R with the entropy; none
    in the backward); DTensor logits sharded on the classes take this path by themselves.
    """
    if process_group is not None:
        _require_classes(process_group, input, -1)
    out = dispatch.call(_LOG_PROBS, input, tokens, temperature, ignore_index, with_entropy, dtype, process_group)
    return (out[0], out[1]) if with_entropy else out


def _log_probs_call(input, tokens, temperature, ignore_index, dtype, process_group):
    """The validated call: (out dtype, the group's name)."""
    check.check_log_probs(input, tokens, temperature, ignore_index)
    out_dtype = _jsd_out_dtype("log_probs", input, dtype, "dtype")
    group, n_classes = _group_and_classes(input, process_group)
    if dispatch.debug_enabled():
        check.check_class_targets(tokens, n_classes, ignore_index)
    return out_dtype, group


def _eager_log_probs(input, tokens, temperature, ignore_index, with_entropy, dtype, process_group):
    out_dtype, group = _log_probs_call(input, tokens, temperature, ignore_index, dtype, process_group)
    if out_dtype != input.dtype:
        input = input.to(out_dtype)
    return _eager.token_log_probs(input, tokens, float(temperature), ignore_index, bool(with_entropy),
                                  group).to(out_dtype)


def _fused_log_probs(input, tokens, temperature, ignore_index, with_entropy, dtype, process_group):
    out_dtype, group = _log_probs_call(input, tokens, temperature, ignore_index, dtype, process_group)
    options = DistributionOptions("log_probs", "none", out_dtype, 0.0, float(temperature), int(ignore_index),
                                  bool(with_entropy), False, group)
    return distribution_loss(options, input, None, None, tokens)


def _unsupported_log_probs(input, tokens, *unused):
    if not isinstance(input, Tensor) or not isinstance(tokens, Tensor):
        return "a non-tensor input or tokens"
    return None


_LOG_PROBS = Route("log_probs", _eager_log_probs, _fused_log_probs, _unsupported_log_probs, (0, 1), (),
                   dtensor=lambda *args: _dtensor.log_probs(log_probs, *args))


def linear_jsd_loss(
    input: Tensor,
    weight: Tensor,
    teacher_input: Tensor,
    teacher_weight: Tensor,
    labels: Optional[Tensor] = None,
    *,
    bias: Optional[Tensor] = None,
    teacher_bias: Optional[Tensor] = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    hard_weight: float = 0.0,
    soft_weight: float = 1.0,
    reduction: str = "batchmean",
    options=None,
    drop_teacher_extra_classes: bool = False,
    logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    softcap: Optional[float] = None,
    teacher_softcap: Optional[float] = None,
    loss_dtype: Optional[torch.dtype] = None,
    process_group=None,
) -> Tensor:
    """``soft_weight * jsd_loss(student logits, teacher logits, labels) + hard_weight *
    cross_entropy(student logits at T = 1, labels)`` from the two LM heads, the logits
    ``input @ weight.T + bias`` (student) and ``teacher_input @ teacher_weight.T + teacher_bias`` computed per
    chunk of tokens and never whole (fusedloss/ops/linear_distribution.py). ``input`` (..., H) and
    ``teacher_input`` (..., H_t) share their leading shape (the rows; hidden sizes may differ); weights (V, H)
    and (V, H_t). Every jsd_loss option; both terms are reduced over the same counted rows ('batchmean' and
    'mean': the divergence as jsd_loss's and the cross entropy's mean over the counted rows; 'sum'; 'none'
    per row). Gradients for input, weight and bias (float32 accumulation for 16-bit weights, as
    linear_cross_entropy), and for the teacher's tensors only if they require grad (a frozen teacher costs
    one GEMM per chunk). ``options``: a ``LinearCrossEntropyOptions``, its ``batch_chunk_size`` the rows
    per chunk (default: 224 MiB of both heads' logits). A teacher with more classes than the student (a
    padded vocabulary) needs ``drop_teacher_extra_classes=True`` (its classes past V are dropped before
    its softmax); otherwise the vocabularies must match. ``loss_dtype``: as jsd_loss's. ``process_group``:
    vocabulary parallel, as linear_cross_entropy's: both weights (and biases) hold this rank's block of the
    classes (the same block), labels are global; every rank gets the global loss, the gradients of its
    blocks, and its term of each input's gradient (all-reduce it over the group). Collectives: an all_reduce
    MAX and a SUM of 2-3 floats per row, a SUM of 2 per row; the logits' GEMM three times per chunk
    instead of once (fusedloss/ops/linear_distribution.py). DTensor weights sharded on their rows take
    this path by themselves. ``logit_scale`` / ``teacher_logit_scale``: each head's logits are that number
    times its linear, before the temperature (a Cohere or Granite head's multiplier, as
    ``linear_cross_entropy``'s); on the Triton path they ride in the GEMMs. ``softcap`` /
    ``teacher_softcap``: each head's scaled logits ``c tanh(logits / c)`` before the temperature (Gemma 2/3's
    ``final_logit_softcapping``), applied by the kernels as they read the chunk, its slope in the gradient.
    """
    if process_group is not None:
        _require_classes(process_group, weight, 0)
    return dispatch.call(_LINEAR_JSD, input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, beta,
                         temperature, ignore_index, hard_weight, soft_weight, reduction, options,
                         drop_teacher_extra_classes, loss_dtype, process_group, logit_scale, teacher_logit_scale,
                         softcap, teacher_softcap)


def _linear_jsd_args(input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, beta, temperature,
                     ignore_index, hard_weight, soft_weight, reduction, options, drop_teacher_extra_classes,
                     loss_dtype, process_group, logit_scale, teacher_logit_scale, softcap, teacher_softcap):
    """The validated call: (teacher_weight, teacher_bias (extra classes dropped), out dtype, chunk rows, the
    group's name)."""
    check.check_logit_scale(logit_scale)
    check.check_logit_scale(teacher_logit_scale, "teacher_logit_scale")
    check.check_softcap(softcap)
    check.check_softcap(teacher_softcap, "teacher_softcap")
    if process_group is not None and drop_teacher_extra_classes:
        raise ValueError("linear_jsd_loss: drop_teacher_extra_classes is not served with process_group (each rank "
                         "holds a block of the classes): shard the teacher's weight as the student's")
    teacher_weight, teacher_bias = check.check_linear_jsd(
        input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, beta, temperature, ignore_index,
        hard_weight, soft_weight, reduction, drop_teacher_extra_classes)
    chunk = check.linear_cross_entropy_chunk_rows(options, input, weight, op="linear_jsd_loss")
    out_dtype = _jsd_out_dtype("linear_jsd_loss", input, loss_dtype)
    group, n_classes = _group_and_classes(input, process_group, weight.shape[0])
    if hard_weight and dispatch.debug_enabled():
        check.check_class_targets(labels, n_classes, ignore_index)
    return teacher_weight, teacher_bias, out_dtype, chunk, group


def _eager_linear_jsd(input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, beta, temperature,
                      ignore_index, hard_weight, soft_weight, reduction, options, drop_teacher_extra_classes,
                      loss_dtype, process_group, logit_scale, teacher_logit_scale, softcap, teacher_softcap):
    teacher_weight, teacher_bias, out_dtype, _, group = _linear_jsd_args(
        input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, beta, temperature, ignore_index,
        hard_weight, soft_weight, reduction, options, drop_teacher_extra_classes, loss_dtype, process_group,
        logit_scale, teacher_logit_scale, softcap, teacher_softcap)
    logits = _eager.softcapped(_eager.linear_logits(input, weight, bias, float(logit_scale)), softcap)
    teacher_logits = _eager.softcapped(
        _eager.linear_logits(teacher_input, teacher_weight, teacher_bias, float(teacher_logit_scale)), teacher_softcap)
    if out_dtype != logits.dtype:
        logits, teacher_logits = logits.to(out_dtype), teacher_logits.to(out_dtype)
    return _eager.distillation_loss(logits, teacher_logits, None, labels, float(beta), float(temperature),
                                    ignore_index, reduction, float(hard_weight), float(soft_weight),
                                    group).to(out_dtype)


def _fused_linear_jsd(input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, beta, temperature,
                      ignore_index, hard_weight, soft_weight, reduction, options, drop_teacher_extra_classes,
                      loss_dtype, process_group, logit_scale, teacher_logit_scale, softcap, teacher_softcap):
    teacher_weight, teacher_bias, out_dtype, chunk, group = _linear_jsd_args(
        input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, beta, temperature, ignore_index,
        hard_weight, soft_weight, reduction, options, drop_teacher_extra_classes, loss_dtype, process_group,
        logit_scale, teacher_logit_scale, softcap, teacher_softcap)
    input, weight, bias = _autocast_linear(input, weight, bias)
    teacher_input, teacher_weight, teacher_bias = _autocast_linear(teacher_input, teacher_weight, teacher_bias)
    jsd_options = LinearJSDOptions(reduction, out_dtype, float(beta), float(temperature), int(ignore_index),
                                   float(hard_weight), float(soft_weight), int(chunk), group, float(logit_scale),
                                   float(teacher_logit_scale), check.check_softcap(softcap),
                                   check.check_softcap(teacher_softcap))
    return linear_jsd_loss_op(jsd_options, input, weight, bias, teacher_input, teacher_weight, teacher_bias, labels)


def _unsupported_linear_head(input, weight, bias):
    """Why the chunked path cannot take one LM head (None when it can)."""
    if not all(isinstance(t, Tensor) for t in (input, weight)):
        return "a non-tensor input or weight"
    operands = [t for t in (input, weight, bias) if t is not None]
    if not torch.is_autocast_enabled(input.device.type) and any(t.dtype != input.dtype for t in operands):
        return "operands of different dtypes (torch's linear raises on the eager path)"
    return None


def _unsupported_linear_jsd(input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, *unused):
    return (_unsupported_linear_head(input, weight, bias)
            or _unsupported_linear_head(teacher_input, teacher_weight, teacher_bias))


_LINEAR_JSD = Route("linear_jsd_loss", _eager_linear_jsd, _fused_linear_jsd, _unsupported_linear_jsd,
                    (0, 1, 2, 3, 4, 5, 6), (), dtensor=lambda *args: _dtensor.linear_jsd_loss(linear_jsd_loss, *args))


def linear_log_probs(
    input: Tensor,
    weight: Tensor,
    tokens: Tensor,
    *,
    bias: Optional[Tensor] = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    with_entropy: bool = False,
    options=None,
    logit_scale: float = 1.0,
    softcap: Optional[float] = None,
    dtype: Optional[torch.dtype] = None,
    process_group=None,
):
    """``log_probs(input @ weight.T + bias, tokens, ...)`` from the hidden states ``input`` (..., H) and the
    LM head (V, H), the logits computed per chunk of tokens and never whole: the forward one GEMM per chunk;
    the backward recomputes each chunk's logits and runs the two gradient GEMMs (four in all). The
    primitive of GRPO/PPO (per-token log-probabilities, the entropy bonus) and DPO/KTO (their sums per
    sequence). ``options``: a ``LinearCrossEntropyOptions`` (``batch_chunk_size``); ``dtype``: as log_probs'.
    ``process_group``: vocabulary parallel, as linear_cross_entropy's (the weight and bias this rank's block of
    the classes, tokens global; the input's gradient this rank's term); collectives as log_probs'. DTensor
    weights sharded on their rows take this path by themselves. ``logit_scale``: the logits are that number
    times the linear, before the temperature (as ``linear_cross_entropy``'s); ``softcap``: then
    ``c tanh(logits / c)`` (Gemma 2/3), as ``linear_jsd_loss``'s.
    """
    if process_group is not None:
        _require_classes(process_group, weight, 0)
    out = dispatch.call(_LINEAR_LOG_PROBS, input, weight, tokens, bias, temperature, ignore_index, with_entropy,
                        options, dtype, process_group, logit_scale, softcap)
    return (out[0], out[1]) if with_entropy else out


def _linear_log_probs_args(input, weight, tokens, bias, temperature, ignore_index, options, dtype, process_group,
                           logit_scale, softcap):
    """The validated call: (chunk rows, out dtype, the group's name)."""
    check.check_logit_scale(logit_scale)
    check.check_softcap(softcap)
    check.check_linear_log_probs(input, weight, tokens, bias, temperature, ignore_index)
    chunk = check.linear_cross_entropy_chunk_rows(options, input, weight, op="linear_log_probs")
    out_dtype = _jsd_out_dtype("linear_log_probs", input, dtype, "dtype")
    group, n_classes = _group_and_classes(input, process_group, weight.shape[0])
    if dispatch.debug_enabled():
        check.check_class_targets(tokens, n_classes, ignore_index)
    return chunk, out_dtype, group


def _eager_linear_log_probs(input, weight, tokens, bias, temperature, ignore_index, with_entropy, options, dtype,
                            process_group, logit_scale, softcap):
    _, out_dtype, group = _linear_log_probs_args(input, weight, tokens, bias, temperature, ignore_index, options,
                                                 dtype, process_group, logit_scale, softcap)
    logits = _eager.softcapped(_eager.linear_logits(input, weight, bias, float(logit_scale)), softcap)
    if out_dtype != logits.dtype:
        logits = logits.to(out_dtype)
    return _eager.token_log_probs(logits, tokens, float(temperature), ignore_index, bool(with_entropy),
                                  group).to(out_dtype)


def _fused_linear_log_probs(input, weight, tokens, bias, temperature, ignore_index, with_entropy, options, dtype,
                            process_group, logit_scale, softcap):
    chunk, out_dtype, group = _linear_log_probs_args(input, weight, tokens, bias, temperature, ignore_index, options,
                                                     dtype, process_group, logit_scale, softcap)
    input, weight, bias = _autocast_linear(input, weight, bias)
    lp_options = LinearLogProbsOptions(out_dtype, float(temperature), int(ignore_index), bool(with_entropy),
                                       int(chunk), group, float(logit_scale), check.check_softcap(softcap))
    return linear_log_probs_op(lp_options, input, weight, bias, tokens)


_LINEAR_LOG_PROBS = Route("linear_log_probs", _eager_linear_log_probs, _fused_linear_log_probs,
                          lambda input, weight, tokens, bias, *_: _unsupported_linear_head(input, weight, bias),
                          (0, 1, 2, 3), (), dtensor=lambda *args: _dtensor.linear_log_probs(linear_log_probs, *args))
