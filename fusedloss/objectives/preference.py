"""Preference objectives over log-probabilities: DPO and its loss family, KTO, ORPO, CPO and SimPO, to TRL 1.16.

Input form, shared by every function. A sequence's log-probabilities come as either
  - per-token log-probs, shape (B, T), with an optional (B, T) mask (bool, or 0/1 numbers; nonzero = a completion
    token; None = every position counts), as ``fusedloss.functional.log_probs`` / ``linear_log_probs`` return
    them. Masked positions may hold anything (NaN included): they are selected out, with no gradient;
  - or per-sequence summed log-probs, shape (B,), without a mask.
The summed form serves every option that needs only sums; an option that averages per token or needs the tokens
themselves (DPO's ipo, sigmoid_norm, sft, ld_alpha, use_weighting; ORPO; CPO's ipo/simpo and its NLL term) asks
for the per-token form, in a ValueError naming the argument. A per-token reference is masked with its policy's mask;
a summed reference is used as given (TRL's ``precompute_ref_log_probs``: with ``ld_alpha``, already weighted).
Chosen and rejected may have different T. Averages over zero tokens follow TRL: DPO's ipo/sigmoid_norm divide
by max(count, 1) (an empty completion scores 0); ORPO's and CPO's averages divide by the count (NaN).

Every function returns ``ObjectiveResult(loss, metrics)``: ``loss`` 0-dim, metrics detached and named as TRL logs
them (TRL logs the batch mean of a per-example metric). Math runs in float64 when the policy log-probs are float64,
else in float32 (16-bit inputs give a float32 loss and metrics); nothing reads a tensor value on the host.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._common import ObjectiveResult, check_choice, check_number

__all__ = ["dpo_loss", "kto_loss", "orpo_loss", "cpo_loss", "simpo_loss", "DPO_LOSS_TYPES", "F_DIVERGENCE_TYPES",
           "KTO_LOSS_TYPES", "CPO_LOSS_TYPES"]

F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# The losses built on the chosen-minus-rejected score difference, the only ones with an f-divergence form (TRL).
_F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")


# ---------------------------------------------------------------------------------------------------- inputs
class _Seq(NamedTuple):
    name: str  # the argument it came from, for errors
    tokens: object  # (B, T) log-probs in the compute dtype, 0 outside the mask; None for the summed form
    mask: object    # (B, T) bool; None for the summed form
    total: torch.Tensor  # (B,) summed log-probs
    count: object   # (B,) number of tokens in the compute dtype; None for the summed form


def _tensor(name, value, *, floating=True):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    return value


def _sequence(name, logps, mask, mask_name, dtype):
    """(B, T) per-token log-probs + mask, or (B,) sums, into a _Seq (see the module docstring)."""
    _tensor(name, logps)
    if logps.dim() == 1:
        if mask is not None:
            raise ValueError(f"{mask_name} is only for per-token (B, T) log-probs, but {name} has shape "
                             f"{tuple(logps.shape)} (summed per sequence)")
        return _Seq(name, None, None, logps.to(dtype), None)
    if logps.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T) (per token) or (B,) (summed), got {tuple(logps.shape)}")
    if mask is None:
        mask = torch.ones(logps.shape, dtype=torch.bool, device=logps.device)
    else:
        _tensor(mask_name, mask, floating=False)
        if mask.shape != logps.shape:
            raise ValueError(f"{mask_name} must have the shape of {name}, {tuple(logps.shape)}, "
                             f"got {tuple(mask.shape)}")
        mask = mask != 0
    tokens = torch.where(mask, logps.to(dtype), 0.0)
    return _Seq(name, tokens, mask, tokens.sum(-1), mask.sum(-1).to(dtype))


def _reference(name, ref, policy):
    """A reference as a _Seq beside its policy's: (B,) sums as given, or (B, T) tokens under the policy's mask."""
    _tensor(name, ref)
    if ref.dim() == 1:
        if ref.shape[0] != policy.total.shape[0]:
            raise ValueError(f"{name} must have shape ({policy.total.shape[0]},), got {tuple(ref.shape)}")
        return _Seq(name, None, None, ref.to(policy.total.dtype), None)
    if policy.tokens is None or ref.shape != policy.tokens.shape:
        expected = "(B,)" if policy.tokens is None else f"(B,) or {tuple(policy.tokens.shape)}"
        raise ValueError(f"{name} must have shape {expected} like {policy.name}, got {tuple(ref.shape)}")
    tokens = torch.where(policy.mask, ref.to(policy.total.dtype), 0.0)
    return _Seq(name, tokens, policy.mask, tokens.sum(-1), policy.count)


def _pair(chosen_logps, rejected_logps, chosen_mask, rejected_mask):
    """The policy's chosen and rejected _Seqs, in float64 if either is float64, else in float32."""
    dtype = torch.promote_types(torch.promote_types(_tensor("policy_chosen_logps", chosen_logps).dtype, torch.float32),
                                _tensor("policy_rejected_logps", rejected_logps).dtype)
    chosen = _sequence("policy_chosen_logps", chosen_logps, chosen_mask, "chosen_mask", dtype)
    rejected = _sequence("policy_rejected_logps", rejected_logps, rejected_mask, "rejected_mask", dtype)
    if rejected.total.shape[0] != chosen.total.shape[0]:
        raise ValueError(f"policy_rejected_logps has batch size {rejected.total.shape[0]}, policy_chosen_logps has "
                         f"{chosen.total.shape[0]}")
    if chosen.total.shape[0] == 0:
        raise ValueError("policy_chosen_logps must hold at least one sequence")
    return dtype, chosen, rejected


def _require_tokens(why, *seqs):
    for seq in seqs:
        if seq.tokens is None:
            raise ValueError(f"{seq.name} must be per-token (B, T) log-probs (with a mask): {why}")


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _nll(logps, mask):  # -Σ log p over the selected tokens / their number, batch-wide (CE's 'mean')
    return -torch.where(mask, logps, 0.0).sum() / mask.sum()


def _pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps):
    return {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": chosen_logps.detach(), "logps/rejected": rejected_logps.detach()}


def _log1mexp(x):
    """log(1 - exp(x)) for x <= 0, split at -log 2 (log1p(-exp x) below, log(-expm1 x) above); each branch is fed
    only inputs it is stable for, so the branch not taken gives no inf/NaN gradient."""
    low = x < -math.log(2.0)
    return torch.where(low, torch.log1p(-torch.exp(torch.where(low, x, -1.0))),
                       torch.log(-torch.expm1(torch.where(low, -0.5, x))))


def _smoothed_sigmoid(z, eps):  # -(1 - eps) log σ(z) - eps log σ(-z)
    return -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps


# ---------------------------------------------------------------------------------------------------- DPO
class _DPOTerms(NamedTuple):
    beta: float
    eps: float  # label_smoothing
    tau: float  # discopop_tau
    chosen_logratios: torch.Tensor  # (B,) log πθ(yc) - log πref(yc)
    rejected_logratios: torch.Tensor
    chosen_scores: torch.Tensor  # (B,) f'-transformed log-ratios (= log-ratios for reverse KL)
    rejected_scores: torch.Tensor
    chosen_logps: torch.Tensor  # (B,) policy / reference sequence log-probs (for aot)
    rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor
    ref_rejected_logps: torch.Tensor
    chosen: _Seq  # the policy's chosen tokens and counts (for ipo, sigmoid_norm, sft)
    rejected: _Seq


def _delta(t):  # Δ = score(yc) - score(yr)
    return t.chosen_scores - t.rejected_scores


def _avg_delta(t):  # Δ per token: score(yc)/max(|yc|, 1) - score(yr)/max(|yr|, 1)
    return t.chosen_scores / t.chosen.count.clamp(min=1.0) - t.rejected_scores / t.rejected.count.clamp(min=1.0)


def _dpo_sigmoid(t):  # -log σ(βΔ)
    return -F.logsigmoid(t.beta * _delta(t))


def _dpo_hinge(t):  # relu(1 - βΔ)
    return torch.relu(1 - t.beta * _delta(t))


def _dpo_ipo(t):  # (Δ_avg - 1/(2β))²
    return (_avg_delta(t) - 1 / (2 * t.beta)) ** 2


def _dpo_exo_pair(t):  # σ(βΔ)(log σ(βΔ) - log(1-ε)) + σ(-βΔ)(log σ(-βΔ) - log ε)
    z = t.beta * _delta(t)
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-t.eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(t.eps)))


def _dpo_nca_pair(t):  # -log σ(β rc) - ½ log σ(-β rc) - ½ log σ(-β rr),  r = log-ratio
    c, r = t.beta * t.chosen_logratios, t.beta * t.rejected_logratios
    return -F.logsigmoid(c) - 0.5 * F.logsigmoid(-c) - 0.5 * F.logsigmoid(-r)


def _dpo_robust(t):  # (-(1-ε) log σ(βΔ) + ε log σ(-βΔ)) / (1 - 2ε)
    z = t.beta * _delta(t)
    return (-(1 - t.eps) * F.logsigmoid(z) + t.eps * F.logsigmoid(-z)) / (1 - 2 * t.eps)


def _dpo_bco_pair(t):  # -log σ(β rc) - log σ(-β rr)
    return -F.logsigmoid(t.beta * t.chosen_logratios) - F.logsigmoid(-t.beta * t.rejected_logratios)


def _dpo_sppo_hard(t):  # (rc - 1/(2β))² + (rr + 1/(2β))²
    return (t.chosen_logratios - 0.5 / t.beta) ** 2 + (t.rejected_logratios + 0.5 / t.beta) ** 2


def _dpo_aot(t):  # smoothed sigmoid of β(sort(πc - πr) - sort(refc - refr)), sorted over the batch
    d = (torch.sort(t.chosen_logps - t.rejected_logps, dim=0)[0]
         - torch.sort(t.ref_chosen_logps - t.ref_rejected_logps, dim=0)[0])
    return _smoothed_sigmoid(t.beta * d, t.eps)


def _dpo_aot_unpaired(t):  # smoothed sigmoid of β(sort(rc) - sort(rr)), sorted over the batch
    d = torch.sort(t.chosen_logratios, dim=0)[0] - torch.sort(t.rejected_logratios, dim=0)[0]
    return _smoothed_sigmoid(t.beta * d, t.eps)


def _dpo_apo_zero(t):  # (1 - σ(β rc)) + σ(β rr)
    return torch.sigmoid(-t.beta * t.chosen_logratios) + torch.sigmoid(t.beta * t.rejected_logratios)


def _dpo_apo_down(t):  # σ(β rc) + (1 - σ(β(rc - rr)))
    return (torch.sigmoid(t.beta * t.chosen_logratios)
            + torch.sigmoid(-t.beta * (t.chosen_logratios - t.rejected_logratios)))


def _dpo_discopop(t):  # -log σ(x)·(1 - σ(x/τ)) + exp(-x)·σ(x/τ),  x = βΔ
    x = t.beta * _delta(t)
    return -F.logsigmoid(x) * torch.sigmoid(-x / t.tau) + torch.exp(F.logsigmoid(x / t.tau) - x)


def _dpo_sft(t):  # -mean of the chosen tokens' log-probs over the batch, the same for every pair
    nll = -t.chosen.tokens.sum() / t.chosen.mask.sum()
    return nll.expand(t.chosen.total.shape[0])


def _dpo_sigmoid_norm(t):  # -log σ(β Δ_avg)
    return -F.logsigmoid(t.beta * _avg_delta(t))


DPO_LOSS_TYPES = {
    "sigmoid": _dpo_sigmoid, "hinge": _dpo_hinge, "ipo": _dpo_ipo, "exo_pair": _dpo_exo_pair,
    "nca_pair": _dpo_nca_pair, "robust": _dpo_robust, "bco_pair": _dpo_bco_pair, "sppo_hard": _dpo_sppo_hard,
    "aot": _dpo_aot, "aot_unpaired": _dpo_aot_unpaired, "apo_zero": _dpo_apo_zero, "apo_down": _dpo_apo_down,
    "discopop": _dpo_discopop, "sft": _dpo_sft, "sigmoid_norm": _dpo_sigmoid_norm,
}
_PER_TOKEN_LOSSES = {"ipo": "averages per token", "sigmoid_norm": "averages per token",
                     "sft": "averages the chosen tokens"}


def _f_scores(logratios, kind, coef):
    """f'(πθ/πref) of the f-divergence, from the log-ratio (f-DPO). exp(x) - 1 rather than expm1: torch
    differentiates expm1 as (expm1(x) + 1), which is 0 where exp(x) < eps, a lost gradient."""
    if kind == "forward_kl":  # f'(t) = 1 - 1/t
        return 1 - torch.exp(-logratios)
    if kind == "js_divergence":  # f'(t) = log(2t/(t+1)) = log 2 + log σ(log t)
        return math.log(2.0) + F.logsigmoid(logratios)
    if kind == "alpha_divergence" and abs(coef - 1.0) >= 1e-6:  # f'(t) = (t^(α-1) - 1)/(α-1), exponent capped at 80
        return (torch.exp(((coef - 1.0) * logratios).clamp(max=80.0)) - 1) / (coef - 1.0)
    return logratios  # reverse KL, and the α → 1 limit


def _ld_logps(tokens, mask, shared_len, ld_alpha):
    """LD-DPO: the sum over the first ``shared_len`` = min(|yc|, |yr|) completion tokens + ld_alpha × the rest."""
    pos = mask.cumsum(-1)
    return (torch.where(pos <= shared_len, tokens, 0.0).sum(-1)
            + ld_alpha * torch.where(pos > shared_len, tokens, 0.0).sum(-1))


def _wpo_weight(policy, log_sum_sq_probs, name):
    """WPO: exp(mean over the completion of log p(token) - log Σ_v p(v)²), no gradient."""
    _tensor(name, log_sum_sq_probs)
    if log_sum_sq_probs.shape != policy.tokens.shape:
        raise ValueError(f"{name} must have shape {tuple(policy.tokens.shape)}, got {tuple(log_sum_sq_probs.shape)}")
    aligned = torch.where(policy.mask, policy.tokens - log_sum_sq_probs.to(policy.tokens.dtype), 0.0)
    return torch.exp(aligned.sum(-1) / policy.count.clamp(min=1.0)).detach()


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
             chosen_mask=None, rejected_mask=None, beta=0.1, loss_type="sigmoid", loss_weights=None,
             label_smoothing=0.0, reference_free=False, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
             discopop_tau=0.05, ld_alpha=None, use_weighting=False, chosen_log_sum_sq_probs=None,
             rejected_log_sum_sq_probs=None):
    """DPO and its loss family, as TRL 1.16's ``DPOTrainer`` computes them.

    Inputs (module docstring): ``policy_*_logps`` (B, T) per token with ``chosen_mask``/``rejected_mask``, or (B,)
    sums; ``ref_*_logps`` the same forms (a per-token reference uses its policy's mask), or None with
    ``reference_free=True`` (reference log-probs 0: earlier TRL's ``reference_free``; 1.16 has no such option).

    With r = log πθ(y) - log πref(y) and Δ = f'(rc) - f'(rr) (f' the identity for reverse KL), the loss is
    Σ_k loss_weights[k] · mean_batch(loss_type[k](...)), one formula per type in ``DPO_LOSS_TYPES`` (TRL's
    ``loss_type`` list; the default weights are 1). DPOConfig options served: beta, loss_type, loss_weights,
    label_smoothing (robust, exo_pair, aot, aot_unpaired), f_divergence_type and f_alpha_divergence_coef,
    discopop_tau, ld_alpha (per-token inputs; a summed reference must already be weighted), use_weighting (WPO:
    each pair's loss × w(yc) w(yr), w from ``*_log_sum_sq_probs``, the per-token log Σ_v p(v)², shape (B, T)).

    Metrics, per pair (B,): ``rewards/chosen`` = β rc, ``rewards/rejected`` = β rr, ``rewards/accuracies``
    (rc > rr as 0/1), ``rewards/margins``, ``logps/chosen``, ``logps/rejected`` (sequence sums, LD-weighted
    with ld_alpha).
    """
    types = [loss_type] if isinstance(loss_type, str) else loss_type
    if not isinstance(types, (list, tuple)) or not types:
        raise TypeError(f"loss_type must be a string or a non-empty list of strings, got {loss_type!r}")
    for name in types:
        check_choice("loss_type", name, tuple(DPO_LOSS_TYPES))
    if loss_weights is None:
        loss_weights = [1.0] * len(types)
    elif not isinstance(loss_weights, (list, tuple)):
        raise TypeError(f"loss_weights must be a list of numbers, got {type(loss_weights).__name__}")
    elif len(loss_weights) != len(types):
        raise ValueError(f"loss_weights must have one weight per loss_type: {len(loss_weights)} for {len(types)}")
    for i, weight in enumerate(loss_weights):
        check_number(f"loss_weights[{i}]", weight)
    check_number("beta", beta, low=0.0, low_open=True)
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    if "robust" in types:
        check_number("label_smoothing", label_smoothing, high=0.5, high_open=True)
    if "exo_pair" in types:
        check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, low_open=True, high_open=True)
    check_choice("f_divergence_type", f_divergence_type, F_DIVERGENCE_TYPES)
    if f_divergence_type != "reverse_kl" and not set(types) <= set(_F_DIVERGENCE_LOSSES):
        raise ValueError(f"f_divergence_type={f_divergence_type!r} needs loss types among {_F_DIVERGENCE_LOSSES}, "
                         f"got {types}")
    check_number("f_alpha_divergence_coef", f_alpha_divergence_coef)
    check_number("discopop_tau", discopop_tau, low=0.0, low_open=True)
    if ld_alpha is not None:
        check_number("ld_alpha", ld_alpha, low=0.0, high=1.0)
    if _flag("use_weighting", use_weighting) and ({"aot", "aot_unpaired"} & set(types)):
        raise ValueError("use_weighting is not defined for 'aot'/'aot_unpaired' (they sort the pairs)")
    _flag("reference_free", reference_free)
    if reference_free and (ref_chosen_logps is not None or ref_rejected_logps is not None):
        raise ValueError("reference_free=True takes no ref_chosen_logps/ref_rejected_logps")
    if not reference_free and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError("ref_chosen_logps and ref_rejected_logps are required unless reference_free=True")

    dtype, chosen, rejected = _pair(policy_chosen_logps, policy_rejected_logps, chosen_mask, rejected_mask)
    if reference_free:
        ref_c = ref_r = _Seq("reference", None, None, torch.zeros_like(chosen.total), None)
    else:
        ref_c = _reference("ref_chosen_logps", ref_chosen_logps, chosen)
        ref_r = _reference("ref_rejected_logps", ref_rejected_logps, rejected)
    for name in types:
        if name in _PER_TOKEN_LOSSES:
            _require_tokens(f"loss_type {name!r} {_PER_TOKEN_LOSSES[name]}", chosen, rejected)

    chosen_logps, rejected_logps = chosen.total, rejected.total
    ref_chosen, ref_rejected = ref_c.total, ref_r.total
    if ld_alpha is not None:
        _require_tokens("ld_alpha splits each completion at the shorter one's length", chosen, rejected)
        shared_len = torch.minimum(chosen.mask.sum(-1), rejected.mask.sum(-1))[:, None]
        chosen_logps = _ld_logps(chosen.tokens, chosen.mask, shared_len, ld_alpha)
        rejected_logps = _ld_logps(rejected.tokens, rejected.mask, shared_len, ld_alpha)
        if ref_c.tokens is not None:
            ref_chosen = _ld_logps(ref_c.tokens, chosen.mask, shared_len, ld_alpha)
        if ref_r.tokens is not None:
            ref_rejected = _ld_logps(ref_r.tokens, rejected.mask, shared_len, ld_alpha)
    weight = None
    if use_weighting:
        _require_tokens("use_weighting averages per token", chosen, rejected)
        if chosen_log_sum_sq_probs is None or rejected_log_sum_sq_probs is None:
            raise ValueError("use_weighting=True needs chosen_log_sum_sq_probs and rejected_log_sum_sq_probs")
        weight = (_wpo_weight(chosen, chosen_log_sum_sq_probs, "chosen_log_sum_sq_probs")
                  * _wpo_weight(rejected, rejected_log_sum_sq_probs, "rejected_log_sum_sq_probs"))

    chosen_logratios, rejected_logratios = chosen_logps - ref_chosen, rejected_logps - ref_rejected
    terms = _DPOTerms(
        beta, label_smoothing, discopop_tau, chosen_logratios, rejected_logratios,
        _f_scores(chosen_logratios, f_divergence_type, f_alpha_divergence_coef),
        _f_scores(rejected_logratios, f_divergence_type, f_alpha_divergence_coef),
        chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen, rejected)
    loss = None
    for name, loss_weight in zip(types, loss_weights):
        per_pair = DPO_LOSS_TYPES[name](terms)
        if weight is not None:
            per_pair = per_pair * weight
        term = per_pair.mean() * loss_weight
        loss = term if loss is None else loss + term

    return ObjectiveResult(loss, _pair_metrics(beta * chosen_logratios.detach(), beta * rejected_logratios.detach(),
                                               chosen_logps, rejected_logps))


# ---------------------------------------------------------------------------------------------------- KTO
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


def _masked_mean(values, select, count):  # Σ_{select} values / count, NaN values left out of the sum (TRL's nansum)
    return torch.where(select, values, 0.0).nansum() / count


def kto_loss(policy_logps, ref_logps, labels, policy_kl_logps=None, ref_kl_logps=None, *, mask=None, kl_mask=None,
             beta=0.1, loss_type="kto", desirable_weight=1.0, undesirable_weight=1.0):
    """KTO (and unpaired APO-zero), as TRL 1.16's ``KTOTrainer`` computes them.

    ``policy_logps``/``ref_logps``: the completions, (B, T) per token with ``mask`` or (B,) sums; ``labels`` (B,)
    bool (or 0/1 integers): True = desirable. ``policy_kl_logps``/``ref_kl_logps``: the mismatched (prompt,
    completion) pairs of TRL's KL estimate, (B', T') with ``kl_mask`` or (B',) sums; needed for "kto", unused by
    "apo_zero_unpaired".

    With r = log πθ(y) - log πref(y) and z = max(0, mean(πθ_KL - πref_KL)) (detached, TRL's KL estimate):
      kto:               desirable w_d (1 - σ(β(r - z))), undesirable w_u (1 - σ(β(z - r)))
      apo_zero_unpaired: desirable w_d (1 - σ(β r)),      undesirable w_u σ(β r)
    and the loss is the batch mean, NaN terms left out (TRL's nanmean). KTOConfig options served: beta,
    loss_type, desirable_weight, undesirable_weight. TRL averages z over all ranks before the clamp; this
    function takes the local batch (all-reduce the KL batch yourself for the global estimate).

    Metrics, 0-dim: ``kl`` (z), ``rewards/chosen``/``logps/chosen`` (means of β r and of the sequence sums over the
    desirable examples), ``rewards/rejected``/``logps/rejected`` (over the undesirable ones), ``rewards/margins``;
    NaN where TRL logs nothing (no example of that kind).
    """
    check_choice("loss_type", loss_type, KTO_LOSS_TYPES)
    check_number("beta", beta, low=0.0, low_open=True)
    check_number("desirable_weight", desirable_weight, low=0.0)
    check_number("undesirable_weight", undesirable_weight, low=0.0)
    dtype = torch.promote_types(_tensor("policy_logps", policy_logps).dtype, torch.float32)
    policy = _sequence("policy_logps", policy_logps, mask, "mask", dtype)
    ref = _reference("ref_logps", ref_logps, policy)
    if _tensor("labels", labels, floating=False).is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be a bool (or integer) tensor, got {labels.dtype}")
    if labels.shape != policy.total.shape:
        raise ValueError(f"labels must have shape {tuple(policy.total.shape)}, got {tuple(labels.shape)}")
    if policy.total.shape[0] == 0:
        raise ValueError("policy_logps must hold at least one sequence")
    desirable = labels != 0

    logratios = policy.total - ref.total
    if loss_type == "kto":
        if policy_kl_logps is None or ref_kl_logps is None:
            raise ValueError("loss_type 'kto' needs policy_kl_logps and ref_kl_logps (the KL estimate)")
        kl_policy = _sequence("policy_kl_logps", policy_kl_logps, kl_mask, "kl_mask", dtype)
        kl_ref = _reference("ref_kl_logps", ref_kl_logps, kl_policy)
        if kl_policy.total.shape[0] == 0:
            raise ValueError("policy_kl_logps must hold at least one sequence")
        kl = (kl_policy.total - kl_ref.total).mean().detach().clamp(min=0)
        chosen_losses = torch.sigmoid(-beta * (logratios - kl))  # 1 - σ(β(r - z))
        rejected_losses = torch.sigmoid(-beta * (kl - logratios))  # 1 - σ(β(z - r))
    else:
        kl = torch.zeros((), dtype=dtype, device=logratios.device)
        chosen_losses = torch.sigmoid(-beta * logratios)  # 1 - σ(β r)
        rejected_losses = torch.sigmoid(beta * logratios)  # σ(β r)
    losses = torch.where(desirable, desirable_weight * chosen_losses, undesirable_weight * rejected_losses)
    loss = losses.nanmean()

    rewards = beta * logratios.detach()
    num_chosen = desirable.sum().to(dtype)
    num_rejected = desirable.numel() - num_chosen
    metrics = {
        "kl": kl,
        "rewards/chosen": _masked_mean(rewards, desirable, num_chosen),
        "logps/chosen": _masked_mean(policy.total.detach(), desirable, num_chosen),
        "rewards/rejected": _masked_mean(rewards, ~desirable, num_rejected),
        "logps/rejected": _masked_mean(policy.total.detach(), ~desirable, num_rejected),
    }
    metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return ObjectiveResult(loss, metrics)


# ---------------------------------------------------------------------------------------------------- ORPO
def orpo_loss(policy_chosen_logps, policy_rejected_logps, *, chosen_mask=None, rejected_mask=None, nll_mask=None,
              beta=0.1):
    """ORPO, as TRL 1.16's ``experimental.orpo.ORPOTrainer`` computes it.

    ``policy_*_logps``: (B, T) per-token log-probs with ``chosen_mask``/``rejected_mask`` selecting the completion
    tokens, whose average is the sequence log-prob ℓ. ``nll_mask`` (chosen's shape) selects the tokens of the NLL
    term; None = ``chosen_mask``. TRL's trainer takes the NLL over the whole chosen sequence, prompt included:
    to match it, give the chosen log-probs of the prompt tokens too and ``nll_mask`` = its attention mask (shifted).

    loss = NLL - β mean(log σ(log odds)), log odds = (ℓc - ℓr) - (log(1 - e^ℓc) - log(1 - e^ℓr)), a stable
    log1mexp (finite gradients for ℓ → 0⁻, where TRL's turn NaN). ORPOConfig options served: beta. Metrics:
    per pair (B,) ``rewards/chosen`` = β ℓc, ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
    ``logps/chosen`` = ℓc, ``logps/rejected``; 0-dim ``nll_loss``, ``log_odds_ratio`` (mean log σ(log odds)),
    ``log_odds_chosen`` (mean log odds). TRL computes in float32 even for float64 inputs; here float64 stays.
    """
    check_number("beta", beta, low=0.0)
    dtype, chosen, rejected = _pair(policy_chosen_logps, policy_rejected_logps, chosen_mask, rejected_mask)
    _require_tokens("ORPO averages per token", chosen, rejected)
    if nll_mask is not None:
        _tensor("nll_mask", nll_mask, floating=False)
        if nll_mask.shape != chosen.tokens.shape:
            raise ValueError(f"nll_mask must have shape {tuple(chosen.tokens.shape)}, got {tuple(nll_mask.shape)}")
    chosen_nll = _nll(policy_chosen_logps.to(dtype), chosen.mask if nll_mask is None else nll_mask != 0)
    chosen_avg, rejected_avg = chosen.total / chosen.count, rejected.total / rejected.count
    log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
    ratio = F.logsigmoid(log_odds)
    loss = chosen_nll - (beta * ratio).mean()
    metrics = _pair_metrics(beta * chosen_avg.detach(), beta * rejected_avg.detach(), chosen_avg, rejected_avg)
    metrics.update({"nll_loss": chosen_nll.detach(), "log_odds_ratio": ratio.mean().detach(),
                    "log_odds_chosen": log_odds.mean().detach()})
    return ObjectiveResult(loss, metrics)


# ---------------------------------------------------------------------------------------------------- CPO
def _cpo_sigmoid(z, beta, eps):  # -(1-ε) log σ(βz) - ε log σ(-βz)
    return _smoothed_sigmoid(beta * z, eps)


def _cpo_hinge(z, beta, eps):  # relu(1 - βz)
    return torch.relu(1 - beta * z)


def _cpo_ipo(z, beta, eps):  # (z - 1/(2β))²
    return (z - 1 / (2 * beta)) ** 2


CPO_LOSS_TYPES = {"sigmoid": _cpo_sigmoid, "hinge": _cpo_hinge, "ipo": _cpo_ipo, "simpo": _cpo_sigmoid,
                  "alphapo": _cpo_sigmoid}


def cpo_loss(policy_chosen_logps, policy_rejected_logps, *, chosen_mask=None, rejected_mask=None, beta=0.1,
             loss_type="sigmoid", label_smoothing=0.0, cpo_alpha=1.0, simpo_gamma=0.5, alpha=0.0):
    """CPO and SimPO/AlphaPO, as TRL 1.16's ``experimental.cpo.CPOTrainer`` computes them.

    ``policy_*_logps``: (B, T) per token with ``chosen_mask``/``rejected_mask`` (the completion tokens), or (B,)
    sums where nothing averages (sigmoid/hinge with cpo_alpha=0). ℓ is the sequence log-prob: the sum, or the
    per-token average for "ipo" and "simpo". The reward is ρ = ℓ, or with ``alpha`` ≠ 0 AlphaPO's
    ρ = (1 - p^-α)/α = (1 - e^(-α ℓ))/α (p = e^ℓ), and z = ρc - ρr (minus simpo_gamma/β for "simpo"):
      sigmoid, simpo: -(1-ε) log σ(βz) - ε log σ(-βz)   hinge: relu(1 - βz)   ipo: (z - 1/(2β))²
    loss = mean(...) + cpo_alpha · NLL, NLL = -mean log p over all chosen completion tokens (skipped when
    cpo_alpha = 0). "alphapo" is TRL's shorthand for "simpo" with cpo_alpha = 0 (the cpo_alpha given is
    overridden, as CPOConfig does). CPOConfig options served: beta, loss_type, label_smoothing (sigmoid, simpo;
    TRL warns and ignores it for hinge/ipo, here a ValueError), cpo_alpha, simpo_gamma, alpha.

    Metrics: per pair (B,) ``rewards/chosen`` = β ρc, ``rewards/rejected``, ``rewards/accuracies``,
    ``rewards/margins``, ``logps/chosen`` = ℓc, ``logps/rejected``; 0-dim ``nll_loss``.
    """
    check_choice("loss_type", loss_type, tuple(CPO_LOSS_TYPES))
    check_number("beta", beta, low=0.0, low_open=True)
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    if loss_type in ("hinge", "ipo") and label_smoothing != 0:
        raise ValueError(f"label_smoothing is not used by loss_type {loss_type!r}: leave it at 0.0")
    check_number("cpo_alpha", cpo_alpha)
    check_number("simpo_gamma", simpo_gamma)
    check_number("alpha", alpha)
    if loss_type == "alphapo":
        cpo_alpha = 0.0
    averaged = loss_type in ("ipo", "simpo", "alphapo")
    dtype, chosen, rejected = _pair(policy_chosen_logps, policy_rejected_logps, chosen_mask, rejected_mask)
    if averaged:
        _require_tokens(f"loss_type {loss_type!r} averages per token", chosen, rejected)
    if cpo_alpha != 0:
        _require_tokens("the NLL term (cpo_alpha != 0) averages per token", chosen)

    chosen_logps = chosen.total / chosen.count if averaged else chosen.total
    rejected_logps = rejected.total / rejected.count if averaged else rejected.total
    if alpha != 0:  # p^-α as exp(-α ℓ): finite where e^ℓ underflows (TRL's p^-α is then inf)
        chosen_rewards = (1 - torch.exp(-alpha * chosen_logps)) / alpha
        rejected_rewards = (1 - torch.exp(-alpha * rejected_logps)) / alpha
    else:
        chosen_rewards, rejected_rewards = chosen_logps, rejected_logps
    z = chosen_rewards - rejected_rewards
    if loss_type in ("simpo", "alphapo"):
        z = z - simpo_gamma / beta
    loss = CPO_LOSS_TYPES[loss_type](z, beta, label_smoothing).mean()
    nll = _nll(chosen.tokens, chosen.mask) if cpo_alpha != 0 else torch.zeros((), dtype=dtype, device=z.device)
    loss = loss + cpo_alpha * nll
    metrics = _pair_metrics(beta * chosen_rewards.detach(), beta * rejected_rewards.detach(),
                            chosen_logps, rejected_logps)
    metrics["nll_loss"] = nll.detach()
    return ObjectiveResult(loss, metrics)


def simpo_loss(policy_chosen_logps, policy_rejected_logps, *, chosen_mask=None, rejected_mask=None, beta=0.1,
               simpo_gamma=0.5, label_smoothing=0.0, cpo_alpha=0.0, alpha=0.0):
    """SimPO: ``cpo_loss(..., loss_type="simpo")`` with no NLL term by default (cpo_alpha=0, TRL's recipe for
    SimPO; a nonzero cpo_alpha gives CPO-SimPO). β and γ default to CPOConfig's 0.1 and 0.5 (the SimPO paper
    tunes β in [2, 2.5] and γ/β in [0.3, 1.6] per model). Inputs, formula and metrics: ``cpo_loss``."""
    return cpo_loss(policy_chosen_logps, policy_rejected_logps, chosen_mask=chosen_mask, rejected_mask=rejected_mask,
                    beta=beta, loss_type="simpo", label_smoothing=label_smoothing, cpo_alpha=cpo_alpha,
                    simpo_gamma=simpo_gamma, alpha=alpha)
