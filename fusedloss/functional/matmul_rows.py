"""Matmul rows: the losses of LM heads, the logits never whole (fusedloss.ops.linear_cross_entropy,
fusedloss.ops.linear_distribution): linear_cross_entropy, linear_jsd_loss, linear_log_probs."""
from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import _dtensor, _validation as check
from .._torch import F
from .. import dispatch
from ..dispatch import Route
from ..ops import linear_distribution as linear_distribution_op
from ..ops import linear_cross_entropy as linear_ce_op
from ..ops import _eager, _vocab_parallel
from ..ops.linear_distribution import LinearJSDOptions, LinearLogProbsOptions
from ..ops.linear_distribution import linear_jsd_loss as linear_jsd_loss_op
from ..ops.linear_distribution import linear_log_probs as linear_log_probs_op
from ..ops.linear_cross_entropy import LinearCrossEntropyOpOptions, linear_cross_entropy_loss
from ._common import (check_extras, group_and_classes, out_dtype_of, require_classes, requested_out_dtype,
                      values_checked_here)
from .distribution_rows import STATS_DOC, TokenStats, token_outputs
from ..ops.distribution_rows import stats_flags


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
    stats: Sequence[str] = (),
):
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

    ``stats``: TRL's per-token statistics of the logits the loss reads (SFT logs the entropy and
    ``is_top1`` as ``mean_token_accuracy``), computed by the kernel that already reads each chunk of logits:
    names among ``("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")``; the call then returns
    ``(loss, TokenStats)``, its ``log_probs`` None and each statistic shaped as the target, with z the
    logits after ``logit_scale`` and ``softcap``: entropy -sum p log p, log sum p^2, the mean of z over the
    classes, is_top1 (bool) whether the target is z's first maximum (torch.argmax's rule). None of them has a
    gradient (metrics; for an entropy term in the loss use ``linear_log_probs``); they come in the loss's
    dtype; 0 (False) for ignored targets. Class-index targets only, and not with ``process_group`` or
    DTensor heads (ValueError: use ``linear_log_probs(..., stats=...)`` there).
    """
    if process_group is not None:
        require_classes(process_group, linear_weight, 0)
    names = check.check_token_stats(stats, False, "linear_cross_entropy")
    if names and (process_group is not None or _dtensor.any_dtensor((input, linear_weight, linear_bias), (0, 1, 2))):
        raise ValueError("linear_cross_entropy: stats are not served with a vocabulary-parallel head "
                         "(process_group or DTensor weights); linear_log_probs(..., stats=...) serves them there")
    out = dispatch.call(_LINEAR_CROSS_ENTROPY, input, linear_weight, target, linear_bias, weight, reduction,
                        ignore_index, label_smoothing, options, z_loss, softcap, loss_dtype, process_group,
                        logit_scale, names)
    if not names:
        return out
    loss, planes = out
    parts = {name: planes[check.TOKEN_STATS.index(name)].detach() for name in names}
    if "is_top1" in parts:
        parts["is_top1"] = parts["is_top1"] != 0
    return loss, TokenStats(None, **parts)


def _eager_linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                                label_smoothing, options, z_loss, softcap, loss_dtype, process_group, logit_scale,
                                stats=()):
    if loss_dtype is not None:
        check.check_loss_dtype(loss_dtype)
    logit_scale = check.check_logit_scale(logit_scale)
    torch_linear_cross_entropy = getattr(F, "linear_cross_entropy", None)  # torch >= 2.13
    plain = not stats and not z_loss and softcap is None and process_group is None and logit_scale == 1.0 and (
        loss_dtype is None or not isinstance(input, Tensor) or loss_dtype == input.dtype)
    if plain and torch_linear_cross_entropy is not None:
        return torch_linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=weight,
                                          reduction=reduction, ignore_index=ignore_index,
                                          label_smoothing=label_smoothing, options=options)
    check_extras(z_loss, softcap)
    check.linear_cross_entropy_chunk_rows(options, input, linear_weight)  # checked; the eager formula holds
    # the logits whole (torch's own function with these options, where this torch has one, runs above)
    reduction, prob_target, ignore_index = _check_linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, reduction, ignore_index, label_smoothing, process_group)
    _check_stats_targets(stats, prob_target)
    return _eager.linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                                       label_smoothing, z_loss, softcap,
                                       "" if process_group is None else _vocab_parallel.group_name(process_group),
                                       loss_dtype, logit_scale, bool(stats))


def _check_stats_targets(stats, prob_target):
    if stats and prob_target:
        raise ValueError("linear_cross_entropy: stats need class-index targets (is_top1 and the ignored rows are "
                         "defined by them); got probability targets")


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


def _fused_linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                                label_smoothing, options, z_loss, softcap, loss_dtype, process_group, logit_scale,
                                stats=()):
    if loss_dtype is not None:
        check.check_loss_dtype(loss_dtype)
    logit_scale = check.check_logit_scale(logit_scale)
    out_dtype = out_dtype_of("cross_entropy", input) if loss_dtype is None else loss_dtype
    autocast = out_dtype != input.dtype or torch.is_autocast_enabled(input.device.type)
    reduction, prob_target, ignore_index = _check_linear_cross_entropy(
        input, linear_weight, target, linear_bias, weight, reduction, ignore_index, label_smoothing, process_group,
        autocast)
    _check_stats_targets(stats, prob_target)
    if z_loss or softcap is not None:
        check_extras(z_loss, softcap)
    check.check_not_differentiable("nll_loss_forward", "weight", None if prob_target else weight)
    input, linear_weight, linear_bias = linear_ce_op.autocast_linear(input, linear_weight, linear_bias)
    if input.dim() == 1 and not prob_target:
        target = target.reshape(())  # torch takes a (1,) target for an unbatched input as a 0-d one
    if not prob_target and dispatch.debug_enabled() and process_group is None:
        check.check_class_targets(target, linear_weight.shape[0], ignore_index)
    # torch's chunked path takes options for these calls only (else it warns and ignores them)
    chunked = (reduction in ("mean", "sum", "none") and not label_smoothing and target.dtype == torch.int64
               and linear_weight.dim() == 2)
    chunk_rows = check.linear_cross_entropy_chunk_rows(options, input, linear_weight, chunked)
    lce_options = LinearCrossEntropyOpOptions(
        reduction, out_dtype, int(ignore_index), float(label_smoothing), float(z_loss),
        None if softcap is None else float(softcap), prob_target, int(chunk_rows),
        "" if process_group is None else _vocab_parallel.group_name(process_group), logit_scale, bool(stats))
    out = linear_cross_entropy_loss(input, linear_weight, target, linear_bias, weight, lce_options)
    if not stats:
        return out
    n_loss = 1 if reduction != "none" else target.numel()  # the flat output: [loss | 4 planes of statistics]
    loss = out[0] if reduction != "none" else out[:n_loss].view(target.shape)
    return loss, out[n_loss:].view(4, *target.shape)


_LINEAR_CROSS_ENTROPY = Route("linear_cross_entropy", _eager_linear_cross_entropy, _fused_linear_cross_entropy,
                              linear_ce_op.unsupported, (0, 1, 2, 3, 4),
                              dtensor=lambda *args: _dtensor.linear_cross_entropy(linear_cross_entropy, *args))



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
        require_classes(process_group, weight, 0)
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
    out_dtype = requested_out_dtype("linear_jsd_loss", input, loss_dtype)
    group, n_classes = group_and_classes(input, process_group, weight.shape[0])
    if hard_weight and n_classes is not None and values_checked_here(labels):
        check.check_class_targets(labels, n_classes, ignore_index, "labels")
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
    input, weight, bias = linear_ce_op.autocast_linear(input, weight, bias)
    teacher_input, teacher_weight, teacher_bias = linear_ce_op.autocast_linear(teacher_input, teacher_weight, teacher_bias)
    jsd_options = LinearJSDOptions(reduction, out_dtype, float(beta), float(temperature), int(ignore_index),
                                   float(hard_weight), float(soft_weight), int(chunk), group, float(logit_scale),
                                   float(teacher_logit_scale), check.check_softcap(softcap),
                                   check.check_softcap(teacher_softcap))
    return linear_jsd_loss_op(jsd_options, input, weight, bias, teacher_input, teacher_weight, teacher_bias, labels)


_LINEAR_JSD = Route("linear_jsd_loss", _eager_linear_jsd, _fused_linear_jsd, linear_distribution_op.unsupported_jsd,
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
    stats: Sequence[str] = (),
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
        require_classes(process_group, weight, 0)
    names = check.check_token_stats(stats, with_entropy, "linear_log_probs")
    out = dispatch.call(_LINEAR_LOG_PROBS, input, weight, tokens, bias, temperature, ignore_index, names,
                        options, dtype, process_group, logit_scale, softcap)
    return token_outputs(out, names, bool(stats))


if linear_log_probs.__doc__:  # (None under python -OO); the statistics' z: after logit_scale and softcap
    linear_log_probs.__doc__ += "\n    " + STATS_DOC + "\n    "


def _linear_log_probs_args(input, weight, tokens, bias, temperature, ignore_index, options, dtype, process_group,
                           logit_scale, softcap):
    """The validated call: (chunk rows, out dtype, the group's name)."""
    check.check_logit_scale(logit_scale)
    check.check_softcap(softcap)
    check.check_linear_log_probs(input, weight, tokens, bias, temperature, ignore_index)
    chunk = check.linear_cross_entropy_chunk_rows(options, input, weight, op="linear_log_probs")
    out_dtype = requested_out_dtype("linear_log_probs", input, dtype, "dtype")
    group, n_classes = group_and_classes(input, process_group, weight.shape[0])
    if n_classes is not None and values_checked_here(tokens):
        check.check_class_targets(tokens, n_classes, ignore_index, "tokens")
    return chunk, out_dtype, group


def _eager_linear_log_probs(input, weight, tokens, bias, temperature, ignore_index, stats, options, dtype,
                            process_group, logit_scale, softcap):
    _, out_dtype, group = _linear_log_probs_args(input, weight, tokens, bias, temperature, ignore_index, options,
                                                 dtype, process_group, logit_scale, softcap)
    logits = _eager.softcapped_wide(_eager.linear_logits(input, weight, bias, float(logit_scale)), softcap)
    if out_dtype != logits.dtype and softcap is None:  # (capped logits stay in float32: the kernels' ties)
        logits = logits.to(out_dtype)
    return _eager.token_log_probs(logits, tokens, float(temperature), ignore_index, False, group,
                                  stats=stats).to(out_dtype)


def _fused_linear_log_probs(input, weight, tokens, bias, temperature, ignore_index, stats, options, dtype,
                            process_group, logit_scale, softcap):
    chunk, out_dtype, group = _linear_log_probs_args(input, weight, tokens, bias, temperature, ignore_index, options,
                                                     dtype, process_group, logit_scale, softcap)
    input, weight, bias = linear_ce_op.autocast_linear(input, weight, bias)
    entropy, log_sum_sq, mean_logits, is_top1 = stats_flags(stats)
    lp_options = LinearLogProbsOptions(out_dtype, float(temperature), int(ignore_index), entropy,
                                       int(chunk), group, float(logit_scale), check.check_softcap(softcap),
                                       log_sum_sq, mean_logits, is_top1)
    return linear_log_probs_op(lp_options, input, weight, bias, tokens)


def _dtensor_linear_log_probs(input, weight, tokens, *, bias, temperature, ignore_index, with_entropy, options,
                              logit_scale, softcap, dtype, process_group):
    """The local call of the DTensor adapter (fusedloss/_dtensor.py), which hands the route's seventh argument
    on as ``with_entropy``: here the statistics' names. A tensor, or a tuple of the outputs asked for (the
    adapter wraps each)."""
    out = linear_log_probs(input, weight, tokens, bias=bias, temperature=temperature, ignore_index=ignore_index,
                           stats=with_entropy, options=options, logit_scale=logit_scale, softcap=softcap,
                           dtype=dtype, process_group=process_group)
    return tuple(value for value in out if value is not None) if with_entropy else out


# the route's arguments: (input, weight, tokens, bias, temperature, ignore_index, the statistics' names, options,
# dtype, process_group, logit_scale, softcap)
_LINEAR_LOG_PROBS = Route("linear_log_probs", _eager_linear_log_probs, _fused_linear_log_probs,
                          lambda input, weight, tokens, bias, *_: linear_distribution_op.unsupported_head(input, weight, bias),
                          (0, 1, 2, 3), (),
                          dtensor=lambda *args: _dtensor.linear_log_probs(_dtensor_linear_log_probs, *args))
