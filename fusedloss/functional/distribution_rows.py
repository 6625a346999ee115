"""Distillation and token log-probabilities over large vocabularies (fusedloss.ops.distribution_rows)."""
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .. import _dtensor, _validation as check
from .. import dispatch
from ..dispatch import Route
from ..ops import distribution_rows as distribution_op
from ..ops import _eager
from ..ops.distribution_rows import DistributionOptions, NO_GRADIENT, distribution_loss, stats_flags
from ._common import group_and_classes, require_classes, requested_out_dtype, values_checked_here


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
        require_classes(process_group, input, -1)
    return dispatch.call(_JSD, input, target, indices, labels, beta, temperature, ignore_index, reduction,
                         grad_in_forward, loss_dtype, process_group)


def _jsd_call(input, target, indices, labels, beta, temperature, ignore_index, reduction, loss_dtype, process_group):
    """The validated call: (out dtype, the group's name, the vocabulary's classes)."""
    check.check_jsd(input, target, indices, labels, beta, temperature, ignore_index, reduction)
    out_dtype = requested_out_dtype("jsd_loss", input, loss_dtype)
    group, n_classes = group_and_classes(input, process_group)
    if n_classes is not None and any(t is not None and values_checked_here(t) for t in (indices, labels)):
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


_JSD = Route("jsd_loss", _eager_jsd, _fused_jsd, distribution_op.unsupported_jsd, (0, 1, 2, 3), (),
             dtensor=lambda *args: _dtensor.jsd_loss(jsd_loss, *args))


class TokenStats(NamedTuple):
    """``log_probs`` / ``linear_log_probs`` with ``stats``: the per-token outputs, each shaped as the tokens,
    None where not asked for (the fields and names of TRL's fused LM head, ``ChunkedLogProbFunction``)."""

    log_probs: Tensor  # log_softmax(z)[token], differentiable
    entropy: Optional[Tensor] = None  # -sum p log p, differentiable
    log_sum_sq_probs: Optional[Tensor] = None  # log sum_v p_v**2, no gradient
    mean_logits: Optional[Tensor] = None  # sum_v z_v / V, no gradient
    is_top1: Optional[Tensor] = None  # bool: the token is z's first maximum (argmax's), no gradient


STATS_DOC = """``stats``: per-token statistics computed in the same pass over the logits, names among TRL's
    ``("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")`` (a sequence, or one name as a string):
    the call then returns a ``TokenStats`` (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1),
    each shaped as the tokens, None where not asked for. With z the logits as the loss sees them (after
    ``logit_scale`` and ``softcap`` where the function has them, divided by the temperature: TRL's
    ``_transform``) and p = softmax(z): ``entropy`` -sum p log p (differentiable; ``with_entropy=True`` is
    the same as asking for it, and alone still returns the pair ``(log_probs, entropy)``);
    ``log_sum_sq_probs`` log sum_v p_v**2 (log of the collision probability); ``mean_logits`` sum_v z_v / V
    (over the whole vocabulary, the temperature applied: TRL's); ``is_top1`` (bool) whether the token is the
    first maximum of z, torch.argmax's rule: ties with an earlier class do not count, with later ones do
    (TRL's; z as the kernels compute it, x * (1 / T): at T != 1 two logits an ulp apart may tie). The last
    three have no gradient (TRL marks them non-differentiable) and come in the outputs' dtype (``dtype``;
    TRL's are float32: pass ``dtype=torch.float32`` for those). Ignored tokens: 0 (is_top1 False); a token
    outside [0, V) that is not ignored: NaN (is_top1 False). Vocabulary parallel (``process_group``, DTensor
    inputs) as the log-probabilities, no extra collective: is_top1's max of z before the token rides in the
    MAX all_reduce (R floats more), log_sum_sq_probs' and mean_logits' sums in the SUM one (R more each)."""


def log_probs(
    input: Tensor,
    tokens: Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    with_entropy: bool = False,
    stats: Sequence[str] = (),
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
    A token outside [0, V) that is not ignore_index raises IndexError naming ``tokens`` where the check costs
    nothing (CPU tensors in eager calls; ``FUSEDLOSS_DEBUG=1`` everywhere); on a GPU its row is NaN instead
    (a check would synchronise). Integer tokens of any width (uint8 included), on both backends.
    ``process_group``: vocabulary parallel, as cross_entropy's (``input`` this rank's block of the classes,
    ``tokens`` global; collectives: an all_reduce MAX of R floats and a SUM of 2R, 3R with the entropy; none
    in the backward); DTensor logits sharded on the classes take this path by themselves.
    """
    if process_group is not None:
        require_classes(process_group, input, -1)
    names = check.check_token_stats(stats, with_entropy, "log_probs")
    out = dispatch.call(_LOG_PROBS, input, tokens, temperature, ignore_index, names, dtype, process_group)
    return token_outputs(out, names, bool(stats))


if log_probs.__doc__:  # (None under python -OO)
    log_probs.__doc__ += "\n    " + STATS_DOC + "\n    "


def token_outputs(out, names, as_stats):
    """The public outputs of a log-probabilities route's result: ``out`` the planes tensor (P, *rows)
    [lp | the statistics ``names``] ((*rows) without statistics), or on the DTensor path a tuple of them
    already split. A ``TokenStats`` when ``as_stats`` (the call passed ``stats``), else ``(lp, entropy)``
    (``with_entropy`` alone) or the log-probabilities."""
    if not names:
        return out
    if isinstance(out, tuple):  # the DTensor adapter's: split and converted by the local call
        parts = list(out)
    else:
        parts = [out[0]]
        for i, name in enumerate(names, 1):
            plane = out[i]
            if name in NO_GRADIENT:
                plane = plane.detach() != 0 if name == "is_top1" else plane.detach()
            parts.append(plane)
    if not as_stats:
        return parts[0], parts[1]
    return TokenStats(parts[0], **dict(zip(names, parts[1:])))


def _log_probs_call(input, tokens, temperature, ignore_index, dtype, process_group):
    """The validated call: (out dtype, the group's name)."""
    check.check_log_probs(input, tokens, temperature, ignore_index)
    out_dtype = requested_out_dtype("log_probs", input, dtype, "dtype")
    group, n_classes = group_and_classes(input, process_group)
    if n_classes is not None and values_checked_here(tokens):
        check.check_class_targets(tokens, n_classes, ignore_index, "tokens")
    return out_dtype, group


def _eager_log_probs(input, tokens, temperature, ignore_index, stats, dtype, process_group):
    out_dtype, group = _log_probs_call(input, tokens, temperature, ignore_index, dtype, process_group)
    if out_dtype != input.dtype:
        input = input.to(out_dtype)
    return _eager.token_log_probs(input, tokens, float(temperature), ignore_index, False, group,
                                  stats=stats).to(out_dtype)


def _fused_log_probs(input, tokens, temperature, ignore_index, stats, dtype, process_group):
    out_dtype, group = _log_probs_call(input, tokens, temperature, ignore_index, dtype, process_group)
    entropy, log_sum_sq, mean_logits, is_top1 = stats_flags(stats)
    options = DistributionOptions("log_probs", "none", out_dtype, 0.0, float(temperature), int(ignore_index),
                                  entropy, False, group, log_sum_sq=log_sum_sq, mean_logits=mean_logits,
                                  is_top1=is_top1)
    return distribution_loss(options, input, None, None, tokens)


def _dtensor_log_probs(input, tokens, *, temperature, ignore_index, with_entropy, dtype, process_group):
    """The local call of the DTensor adapter (fusedloss/_dtensor.py), which hands the route's fifth argument
    on as ``with_entropy``: here the statistics' names. A tensor, or a tuple of the outputs asked for (the
    adapter wraps each)."""
    out = log_probs(input, tokens, temperature=temperature, ignore_index=ignore_index, stats=with_entropy,
                    dtype=dtype, process_group=process_group)
    return tuple(value for value in out if value is not None) if with_entropy else out


# the route's arguments: (input, tokens, temperature, ignore_index, the statistics' names, dtype, process_group)
_LOG_PROBS = Route("log_probs", _eager_log_probs, _fused_log_probs, distribution_op.unsupported_log_probs, (0, 1), (),
                   dtensor=lambda *args: _dtensor.log_probs(_dtensor_log_probs, *args))
