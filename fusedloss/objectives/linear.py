"""The objectives from hidden states and LM heads, the logits never whole: GRPO with its per-token gradient
written inside the chunk sweep (the op: fusedloss/ops/linear_grpo.py), the preference losses on
``linear_log_probs``. This module is their public layer: signatures, argument checks, the two-pass forms.

Log-probabilities are float32 for 16-bit models (float64 kept): bfloat16 log-probs would put exp(lp - old)
about 3% off. What each form costs, per chunk of tokens (a chunk: ``CHUNK_BYTES`` of logits, 224 MiB):

linear_grpo_loss
  one sweep (token-level ratio, no off-policy mask, the entropy mask only with a given threshold and without
    the bonus: options where d loss / d lp_t depends on token t's own values; ``linear_grpo.serves``): the fused
    op, 3 GEMMs per chunk for the policy (logits, dX, dW; d loss / d logits written inside the sweep, the
    backward only scales the saved gradients by grad_output), 1 for a reference head; 1 per head without
    gradients. Memory: one chunk of both heads' logits, dX and the float32 dW accumulator of a 16-bit head.
  two passes (sequence-level ratio, VESPO's sequence weight, the off-policy mask, the entropy quantile, the bonus
    under the entropy mask: d loss / d lp_t needs whole-sequence or whole-batch quantities): ``linear_log_probs``
    (forward 1 GEMM per chunk; its backward recomputes the chunk's logits, writes dL/dlogits, runs dX, dW: 4
    GEMMs in all), the reference's in a no-graph pass (1 GEMM per chunk), then grpo_loss with autograd.

The preference forms (DPO, KTO, ORPO, CPO, SimPO) are sequence-level: ``linear_log_probs`` gives the policy's
per-token log-probabilities (its forward 1 GEMM per chunk, its backward recomputes the chunk's logits: 4 GEMMs
per chunk in all), the reference's without a graph (1 GEMM per chunk), then the log-prob objective unchanged.
"""
import contextlib
import inspect
import re
from typing import NamedTuple, Optional

import torch

from .. import _validation as check
from .. import functional as FL
from ..functional._common import values_checked_here
from ..ops import linear_grpo as _op
from ..ops._scaffold import accumulation_dtype as _compute_dtype
from . import grpo as G
from . import preference as P
from ._common import ObjectiveResult, check_choice

__all__ = ["linear_grpo_loss", "linear_dpo_loss", "linear_kto_loss", "linear_orpo_loss", "linear_cpo_loss",
           "linear_simpo_loss"]

# grpo_loss's keyword options and their defaults (linear_grpo_loss takes them all; it computes the entropies)
_GRPO_DEFAULTS = {name: p.default for name, p in inspect.signature(G.grpo_loss).parameters.items()
                  if p.kind is p.KEYWORD_ONLY and name != "entropies"}


def _check_grpo(hidden, weight, bias, tokens, old, advantages, mask, ref_hidden, ref_weight, ref_bias, temperature,
                ignore_index, a):
    """grpo_loss's argument checks (its exceptions; ``a``: its keywords), before any sweep; the heads' as
    linear_log_probs'."""
    check_choice("loss_type", a["loss_type"], G.LOSS_TYPES)
    check_choice("importance_sampling_level", a["importance_sampling_level"], G.IMPORTANCE_SAMPLING_LEVELS)
    check.check_linear_log_probs(hidden, weight, tokens, bias, temperature, ignore_index, op="linear_grpo_loss")
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, H), got shape {tuple(hidden.shape)}")
    full, per_seq = tuple(tokens.shape), (tokens.shape[0], 1)
    G._check_tensor("old_per_token_logps", old, [full], optional=True)
    G._check_tensor("advantages", advantages, [full[:1], full, per_seq])
    G._check_tensor("completion_mask", mask, [full], floating=False)
    for name in ("ref_per_token_logps", "sampling_per_token_logps"):
        G._check_tensor(name, a[name], [full], optional=True)
    G._check_tensor("importance_sampling_ratio", a["importance_sampling_ratio"], [full, per_seq], optional=True)
    G._check_tensor("aux_loss", a["aux_loss"], [()], optional=True)
    if full[0] == 0:
        raise ValueError("tokens must hold at least one sequence (an empty batch has no loss to normalise)")
    if values_checked_here(tokens):  # free on CPU tensors: an IndexError naming tokens, not a NaN loss
        check.check_class_targets(tokens, weight.shape[0], ignore_index, "tokens")
    _check_mask_covers_tokens(mask, tokens, ignore_index, "completion_mask", "tokens")
    G.check_options(**a)
    if ref_weight is not None or ref_hidden is not None:
        if a["ref_per_token_logps"] is not None:
            raise ValueError("pass the reference as ref_per_token_logps or as ref_hidden and ref_weight, not both")
        if ref_weight is None or ref_hidden is None:
            raise ValueError("a reference head needs both ref_hidden and ref_weight")
        with _head_arguments(input="ref_hidden", weight="ref_weight", bias="ref_bias"):
            check.check_linear_log_probs(ref_hidden, ref_weight, tokens, ref_bias, temperature, ignore_index,
                                         op="linear_grpo_loss")
        _check_reference_head(weight, ref_weight)
    if a["beta"] != 0.0 and ref_weight is None and a["ref_per_token_logps"] is None:
        raise ValueError("a reference (ref_per_token_logps, or ref_hidden and ref_weight) is required when beta != 0")


def linear_grpo_loss(hidden, weight, tokens, old_per_token_logps, advantages, completion_mask, *, bias=None,
                     ref_hidden=None, ref_weight=None, ref_bias=None, temperature=1.0, ignore_index=-100,
                     logit_scale=1.0, softcap=None, options=None, compute_entropy=True, **grpo_options):
    """``grpo_loss`` of the policy's log-probabilities, computed from its hidden states and LM head with the
    logits never whole (module docstring): token-level options in one sweep of 3 GEMMs per chunk, d loss / d logits
    written inside it; whole-sequence options through linear_log_probs, 4 GEMMs per chunk.

    hidden (B, T, H): the policy's hidden states at the completion positions (position t predicts tokens[:, t]);
    weight (V, H), bias (V,): its head, the logits logit_scale * (hidden W^T + b), then softcap, then / temperature
    (as ``linear_log_probs``). tokens (B, T): the completion's token ids, ``ignore_index`` where there is none
    (log-prob 0, no gradient). The reference for the KL term (beta != 0): ``ref_per_token_logps`` (B, T), or its
    hidden states ``ref_hidden`` (B, T, H_ref) and head ``ref_weight`` (V, H_ref), ``ref_bias``, whose
    log-probabilities come without a graph, 1 GEMM per chunk (logit scale, softcap and temperature as the
    policy's). ``options``: a LinearCrossEntropyOptions (``batch_chunk_size``: rows per chunk).
    ``compute_entropy``: the per-token entropies (the ``entropy`` metric TRL logs); they are computed anyway when
    ``top_entropy_quantile < 1`` or ``entropy_coef != 0``. ``grpo_options``: every keyword of grpo_loss but
    ``entropies`` (loss_type, beta, epsilon, ..., ref_per_token_logps, importance_sampling_ratio, aux_loss), with
    its meaning and default.

    Returns grpo_loss's ``ObjectiveResult``: the same loss (0-dim, float32 for 16-bit models, float64 kept) and
    metrics. Gradients: hidden, weight, bias (none for the tokens, the reference, the advantages and the other
    constants of the objective; aux_loss's through its own graph).
    """
    unknown = sorted(set(grpo_options) - set(_GRPO_DEFAULTS))
    if unknown:
        raise TypeError(f"linear_grpo_loss() got an unexpected keyword argument {unknown[0]!r}")
    a = {**_GRPO_DEFAULTS, **grpo_options}
    with _named("linear_grpo_loss"):
        _check_grpo(hidden, weight, bias, tokens, old_per_token_logps, advantages, completion_mask, ref_hidden,
                    ref_weight, ref_bias, temperature, ignore_index, a)
    entropy = bool(compute_entropy) or a["top_entropy_quantile"] < 1.0 or a["entropy_coef"] != 0.0
    head = _Head(temperature, ignore_index, logit_scale, softcap, options)
    if not _op.serves(a):  # two passes: linear_log_probs (4 GEMMs per chunk), then grpo_loss's autograd
        with _errors_of("linear_grpo_loss", "grpo_loss"):
            out = _sequence_logps(head, hidden, weight, bias, tokens, "hidden", with_entropy=entropy)
            if a["beta"] != 0.0 and ref_hidden is not None:
                a["ref_per_token_logps"] = _reference_logps(head, ref_hidden, ref_weight, ref_bias, tokens, None,
                                                            "ref_hidden")
        return G.grpo_loss(out[0] if entropy else out, old_per_token_logps, advantages, completion_mask,
                           entropies=out[1] if entropy else None, **a)

    o = _op.options_of(a, entropy=entropy, temperature=temperature, ignore_index=ignore_index,
                       logit_scale=check.check_logit_scale(logit_scale), softcap=check.check_softcap(softcap),
                       chunk_rows=check.linear_cross_entropy_chunk_rows(options, hidden, weight,
                                                                        op="linear_grpo_loss"))

    def detached(v):
        return v.detach() if isinstance(v, torch.Tensor) else None

    t = _op.Inputs(hidden, weight, bias, tokens, *map(detached, (ref_hidden, ref_weight, ref_bias, old_per_token_logps,
                                                                advantages, completion_mask, a["ref_per_token_logps"],
                                                                a["importance_sampling_ratio"], a["entropy_threshold"],
                                                                a["num_items_in_batch"])))
    loss, metrics = _op.linear_grpo_loss(o, t)
    aux, coef = a["aux_loss"], a["router_aux_loss_coef"]
    if aux is not None and coef != 0.0:  # grpo_loss's last term, outside the op (its graph is the caller's)
        loss = loss + coef * aux.to(loss.dtype) / a["gradient_accumulation_steps"]
        metrics["aux_loss"] = aux.detach()
    return ObjectiveResult(loss, metrics)


# ---- the preference objectives: linear_log_probs, then the log-prob objective -------------------------------
# Each takes the head's keywords of linear_log_probs (temperature, ignore_index, logit_scale, softcap, options;
# the reference's head transformed as the policy's) and the objective's own keywords, and costs, per set of
# sequences, 4 GEMMs per chunk for the policy (linear_log_probs: forward 1, backward 3, the chunk's logits
# recomputed) and 1 per chunk for a reference head (no graph); one chunk of logits at a time, never the whole.

class _Head(NamedTuple):
    """linear_log_probs's head arguments, shared by the policy and the reference."""
    temperature: float = 1.0
    ignore_index: int = -100
    logit_scale: float = 1.0
    softcap: Optional[float] = None
    options: object = None


# ---- errors worded for the function the user called ----------------------------------------------------------

_REWORDED = (TypeError, ValueError, IndexError, RuntimeError)  # these exact types (not OOM, a RuntimeError's child)


def _argument_error(error):
    """Whether ``error`` is about the arguments (worded for them here): not the dispatcher's ("fusedloss: ...",
    e.g. a forced backend that cannot run) and, for a RuntimeError, linear_log_probs' own check (torch's
    RuntimeErrors pass unchanged)."""
    message = str(error)
    if message.startswith("fusedloss: "):
        return False
    return type(error) is not RuntimeError or message.startswith(("linear_log_probs: ", "linear_grpo_loss: "))


def _own(error_type, message):
    """An error of this module's own checks (already worded for the user's arguments)."""
    error = error_type(message)
    error.fusedloss_worded = True
    return error


def _reworded(error, message):
    return _own(type(error), message).with_traceback(error.__traceback__)


@contextlib.contextmanager
def _head_arguments(**names):
    """An error of linear_log_probs inside, its argument names (input, weight, bias, tokens) replaced by the
    user's (``names``), e.g. tokens -> chosen_tokens."""
    try:
        yield
    except _REWORDED as error:
        message = str(error)
        if type(error) not in _REWORDED or not _argument_error(error):
            raise
        message = message.removeprefix("linear_log_probs: ").removeprefix("linear_grpo_loss: ")
        message = re.sub(r"\b(input|weight|bias|tokens)\b", lambda m: names.get(m.group(1), m.group(1)), message)
        raise _reworded(error, message) from None


@contextlib.contextmanager
def _errors_of(public, objective):
    """Errors raised inside worded for ``public``, the function the user called: linear_log_probs' with the
    user's argument names (``_head_arguments``), the log-prob objective's (``objective``, e.g. "dpo_loss") as
    that step's, an unexpected keyword as ``public``'s."""
    try:
        yield
    except _REWORDED as error:
        message = str(error)
        worded = getattr(error, "fusedloss_worded", False)
        if type(error) not in _REWORDED or not (worded or _argument_error(error)):
            raise
        if worded:
            message = f"{public}: {message}"
        elif message.startswith(f"{objective}() "):
            message = f"{public}() " + message[len(objective) + 3:]
        else:
            message = f"{public}: {message} (in {objective}, of the heads' log-probabilities)"
        raise _reworded(error, message) from None


@contextlib.contextmanager
def _named(public):
    """Argument errors raised inside (this module's checks, grpo.py's, linear_log_probs') start with ``public``,
    the function the user called."""
    try:
        yield
    except _REWORDED as error:
        message = str(error)
        worded = getattr(error, "fusedloss_worded", False)
        if type(error) not in _REWORDED or not (worded or _argument_error(error)) or message.startswith(public):
            raise
        raise _reworded(error, f"{public}: {message}") from None


def _check_reference_head(weight, ref_weight):
    if weight is not None and ref_weight is not None and ref_weight.shape[0] != weight.shape[0]:
        raise _own(ValueError, f"ref_weight must have the policy's {weight.shape[0]} classes (the tokens index both "
                               f"heads), got {ref_weight.shape[0]}")


def _split(keywords):
    """(the head's arguments, the objective's keywords)."""
    return _Head(**{k: keywords.pop(k) for k in _Head._fields if k in keywords}), keywords


def _sequence_logps(head, hidden, weight, bias, tokens, name, with_entropy=False, names=None):
    """(B, T) log-probabilities of ``tokens``, float32 for a 16-bit model (with_entropy: (log-probs, entropies)):
    linear_log_probs, forward 1 GEMM per chunk, backward 3. ``name``: the hidden states' argument; ``names``:
    the user's names of (weight, bias, tokens) for its errors (default: the same)."""
    if weight is None:
        raise _own(ValueError, f"{name} needs its head's weight")
    with _head_arguments(input=name, **dict(names or {})):
        return FL.linear_log_probs(hidden, weight, tokens, bias=bias, temperature=head.temperature,
                                   ignore_index=head.ignore_index, options=head.options, logit_scale=head.logit_scale,
                                   softcap=head.softcap, with_entropy=with_entropy,
                                   dtype=_compute_dtype(hidden.dtype))


def _reference_logps(head, hidden, weight, bias, tokens, given, name, names=None):
    """The reference's log-probabilities: ``given``, or from its hidden states and head without a graph (``name``,
    ``names``: as ``_sequence_logps``'; the head's default: ref_weight, ref_bias)."""
    if hidden is None:
        return given
    if given is not None:
        raise _own(ValueError, f"pass the reference's log-probabilities or {name}, not both")
    with torch.no_grad():
        return _sequence_logps(head, hidden.detach(), None if weight is None else weight.detach(),
                               None if bias is None else bias.detach(), tokens, name,
                               names={"weight": "ref_weight", "bias": "ref_bias", **dict(names or {})})


def _check_mask_covers_tokens(mask, tokens, ignore_index, mask_name, tokens_name):
    """A mask that selects a position whose token is ``ignore_index`` (log-probability 0 there, not a token's: a
    silently wrong ratio, sum or length) raises ValueError naming both, where the check costs nothing (CPU
    tensors, or FUSEDLOSS_DEBUG=1: ``values_checked_here``); on a GPU it would sync with the host."""
    if mask is None or not isinstance(tokens, torch.Tensor) or not isinstance(mask, torch.Tensor):
        return
    if not (values_checked_here(tokens) and values_checked_here(mask)) or mask.shape != tokens.shape:
        return
    selected = int((mask.bool() & (tokens == ignore_index)).sum())
    if selected:
        raise _own(ValueError, f"{mask_name} selects {selected} position(s) whose {tokens_name} are ignore_index "
                               f"({ignore_index}): their log-probability is 0, not a token's; leave them out of "
                               f"{mask_name} or give their tokens")


def _mask(mask, tokens, ignore_index, mask_name="mask", tokens_name="tokens"):
    """The completion mask: as given (checked against the ignored tokens), else the tokens that are not
    ``ignore_index``."""
    if mask is None:
        return tokens != ignore_index
    _check_mask_covers_tokens(mask, tokens, ignore_index, mask_name, tokens_name)
    return mask


def _policy_pair(head, chosen_hidden, rejected_hidden, weight, bias, chosen_tokens, rejected_tokens, chosen_mask,
                 rejected_mask):
    """The policy's chosen and rejected (B, T) log-probabilities, and their masks as keywords. One
    linear_log_probs call over both sets' rows (``_joined_logps``) where they can share it, else one each."""
    masks = dict(chosen_mask=_mask(chosen_mask, chosen_tokens, head.ignore_index, "chosen_mask", "chosen_tokens"),
                 rejected_mask=_mask(rejected_mask, rejected_tokens, head.ignore_index, "rejected_mask",
                                     "rejected_tokens"))
    sets = ((chosen_hidden, chosen_tokens, "chosen_hidden", {"tokens": "chosen_tokens"}),
            (rejected_hidden, rejected_tokens, "rejected_hidden", {"tokens": "rejected_tokens"}))
    if _joinable(chosen_hidden, rejected_hidden, chosen_tokens, rejected_tokens, weight, bias):
        return (*_joined_logps(head, sets, weight, bias), masks)
    chosen, rejected = (_sequence_logps(head, hidden, weight, bias, tokens, name, names=names)
                        for hidden, tokens, name, names in sets)
    return chosen, rejected, masks


def _joinable(chosen_hidden, rejected_hidden, chosen_tokens, rejected_tokens, weight, bias):
    """Plain tensors (no DTensor, no tensor subclass) of one dtype and device on each side, the same hidden
    size: the two sets' rows can be one call's."""
    tensors = (chosen_hidden, rejected_hidden, chosen_tokens, rejected_tokens, weight)
    if not all(type(t) is torch.Tensor for t in tensors) or (bias is not None and type(bias) is not torch.Tensor):
        return False
    return (chosen_hidden.dim() >= 1 and chosen_hidden.shape[-1:] == rejected_hidden.shape[-1:]
            and chosen_hidden.dtype == rejected_hidden.dtype and chosen_tokens.dtype == rejected_tokens.dtype
            and len({t.device for t in tensors}) == 1)


def _joined_logps(head, sets, weight, bias):
    """Both sets' log-probabilities from one linear_log_probs call over their rows concatenated (each set checked
    first under its own names): one float32 dW accumulator and one dW instead of two summed by autograd (at
    128256 x 4096 in bf16: 1 GB less at the peak, ~3 GB less traffic); the rows, chunked as one, cost the same
    GEMMs."""
    for hidden, tokens, name, names in sets:
        with _head_arguments(input=name, **names):
            check.check_linear_log_probs(hidden, weight, tokens, bias, head.temperature, head.ignore_index)
            if values_checked_here(tokens):
                check.check_class_targets(tokens, weight.shape[0], head.ignore_index, "tokens")
    (chosen, chosen_tokens, _, _), (rejected, rejected_tokens, _, _) = sets
    size = chosen.shape[-1]
    hidden = torch.cat([chosen.reshape(-1, size), rejected.reshape(-1, size)])
    tokens = torch.cat([chosen_tokens.reshape(-1), rejected_tokens.reshape(-1)])
    logps = _sequence_logps(head, hidden, weight, bias, tokens, "chosen_hidden and rejected_hidden")
    n = chosen_tokens.numel()
    return logps[:n].view(chosen_tokens.shape), logps[n:].view(rejected_tokens.shape)


def linear_dpo_loss(chosen_hidden, rejected_hidden, weight, chosen_tokens, rejected_tokens, *, bias=None,
                    ref_chosen_hidden=None, ref_rejected_hidden=None, ref_weight=None, ref_bias=None,
                    ref_chosen_logps=None, ref_rejected_logps=None, chosen_mask=None, rejected_mask=None, **keywords):
    """``dpo_loss`` from the policy's hidden states chosen_hidden (B, Tc, H), rejected_hidden (B, Tr, H) and head
    weight (V, H), bias; chosen_tokens (B, Tc), rejected_tokens (B, Tr), ``ignore_index`` where there is no
    completion token (masks: default the tokens not ignored). The reference: ``ref_*_logps`` as dpo_loss takes
    them, or its hidden states ``ref_chosen_hidden``/``ref_rejected_hidden`` and head ``ref_weight``, ``ref_bias``,
    or ``reference_free=True``. ``keywords``: the head's (section comment) and dpo_loss's (beta, loss_type, ...;
    WPO's ``*_log_sum_sq_probs`` are to be passed: linear_log_probs does not compute them)."""
    with _errors_of("linear_dpo_loss", "dpo_loss"):
        _check_reference_head(weight, ref_weight)
        head, keywords = _split(keywords)
        chosen, rejected, masks = _policy_pair(head, chosen_hidden, rejected_hidden, weight, bias, chosen_tokens,
                                               rejected_tokens, chosen_mask, rejected_mask)
        ref_chosen = _reference_logps(head, ref_chosen_hidden, ref_weight, ref_bias, chosen_tokens,
                                      ref_chosen_logps, "ref_chosen_hidden", {"tokens": "chosen_tokens"})
        ref_rejected = _reference_logps(head, ref_rejected_hidden, ref_weight, ref_bias, rejected_tokens,
                                        ref_rejected_logps, "ref_rejected_hidden", {"tokens": "rejected_tokens"})
        return P.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, **masks, **keywords)


def linear_kto_loss(hidden, weight, tokens, labels, kl_hidden=None, kl_tokens=None, *, bias=None, ref_hidden=None,
                    ref_kl_hidden=None, ref_weight=None, ref_bias=None, ref_logps=None, ref_kl_logps=None, mask=None,
                    kl_mask=None, **keywords):
    """``kto_loss`` from the completions' hidden states (B, T, H) and tokens (B, T), ``labels`` (B,) (True:
    desirable), TRL's mismatched KL pairs ``kl_hidden`` (B', T', H) and ``kl_tokens`` (needed by "kto"; their
    policy log-probabilities without a graph, as kto_loss detaches its KL estimate: 1 GEMM per chunk), the
    reference as ``ref_logps``/``ref_kl_logps`` or ``ref_hidden``/``ref_kl_hidden`` with ``ref_weight``,
    ``ref_bias``. ``keywords``: the head's (section comment) and kto_loss's."""
    with _errors_of("linear_kto_loss", "kto_loss"):
        _check_reference_head(weight, ref_weight)
        head, keywords = _split(keywords)
        policy_kl = None
        if kl_hidden is not None:
            if kl_tokens is None:
                raise _own(ValueError, "kl_hidden needs kl_tokens")
            policy_kl = _reference_logps(head, kl_hidden, weight, bias, kl_tokens, None, "kl_hidden",
                                         {"tokens": "kl_tokens", "weight": "weight", "bias": "bias"})
        ref = _reference_logps(head, ref_hidden, ref_weight, ref_bias, tokens, ref_logps, "ref_hidden")
        ref_kl = _reference_logps(head, ref_kl_hidden, ref_weight, ref_bias, kl_tokens, ref_kl_logps,
                                  "ref_kl_hidden", {"tokens": "kl_tokens"})
        kl_mask = None if kl_tokens is None else _mask(kl_mask, kl_tokens, head.ignore_index, "kl_mask", "kl_tokens")
        return P.kto_loss(_sequence_logps(head, hidden, weight, bias, tokens, "hidden"), ref, labels, policy_kl,
                          ref_kl, mask=_mask(mask, tokens, head.ignore_index), kl_mask=kl_mask, **keywords)


def _without_reference(objective, chosen_hidden, rejected_hidden, weight, chosen_tokens, rejected_tokens, bias,
                       chosen_mask, rejected_mask, keywords):
    with _errors_of("linear_" + objective.__name__, objective.__name__):
        head, keywords = _split(keywords)
        if keywords.get("nll_mask") is not None:  # ORPO's NLL over the chosen tokens
            _check_mask_covers_tokens(keywords["nll_mask"], chosen_tokens, head.ignore_index, "nll_mask",
                                      "chosen_tokens")
        chosen, rejected, masks = _policy_pair(head, chosen_hidden, rejected_hidden, weight, bias, chosen_tokens,
                                               rejected_tokens, chosen_mask, rejected_mask)
        return objective(chosen, rejected, **masks, **keywords)


def linear_orpo_loss(chosen_hidden, rejected_hidden, weight, chosen_tokens, rejected_tokens, *, bias=None,
                     chosen_mask=None, rejected_mask=None, **keywords):
    """``orpo_loss`` from the policy's hidden states and head (no reference), arguments as linear_dpo_loss's;
    ``keywords``: the head's and orpo_loss's (beta; ``nll_mask``: TRL takes the NLL over the whole chosen
    sequence: give its prompt tokens in chosen_tokens, the completion in chosen_mask)."""
    return _without_reference(P.orpo_loss, chosen_hidden, rejected_hidden, weight, chosen_tokens, rejected_tokens,
                              bias, chosen_mask, rejected_mask, keywords)


def linear_cpo_loss(chosen_hidden, rejected_hidden, weight, chosen_tokens, rejected_tokens, *, bias=None,
                    chosen_mask=None, rejected_mask=None, **keywords):
    """``cpo_loss`` (CPO, SimPO, AlphaPO) from the policy's hidden states and head (no reference), arguments as
    linear_dpo_loss's; ``keywords``: the head's and cpo_loss's."""
    return _without_reference(P.cpo_loss, chosen_hidden, rejected_hidden, weight, chosen_tokens, rejected_tokens,
                              bias, chosen_mask, rejected_mask, keywords)


def linear_simpo_loss(chosen_hidden, rejected_hidden, weight, chosen_tokens, rejected_tokens, *, bias=None,
                      chosen_mask=None, rejected_mask=None, **keywords):
    """``simpo_loss`` (cpo_loss's "simpo" without the NLL term by default) from the policy's hidden states and
    head, arguments as linear_cpo_loss's."""
    return _without_reference(P.simpo_loss, chosen_hidden, rejected_hidden, weight, chosen_tokens, rejected_tokens,
                              bias, chosen_mask, rejected_mask, keywords)
