"""GRPO's loss family over per-token log-probabilities, exact to TRL 1.16's ``GRPOTrainer._compute_loss``.

With ``logp`` the policy's per-token log-probabilities (B, T), ``old`` those of the policy that sampled (or the
last update's), ``A`` the advantages and ``m`` the completion mask (times the tool mask, if any):

    r = exp(logp - old)                                         importance_sampling_level="token"     (B, T)
    r = exp(sum_t (logp - old) m / max(1, sum_t m))             importance_sampling_level="sequence"  (B, 1)
    l = per-token loss of the loss type (table ``_LOSSES``)     (B, T) or (B, 1)
    l = l * keep_seq * entropy_mask * is_ratio + beta * kl      (each factor only when its option is on)
    kl = exp(ref - logp) - (ref - logp) - 1   (k3), times r when use_bias_correction_kl
    loss = normaliser of the loss type (sum of l m over tokens / count), - entropy_coef * H + aux_coef * aux

Everything is torch code in the input's precision (float32 for 16-bit inputs, float64 kept), with TRL's own
operations in TRL's order, so float64 results agree with TRL to rounding and the same tokens clip. No
``.item()``, no host sync, no Python branch on tensor values: ``torch.compile(fullgraph=True)`` and CUDA
graphs take it. Distributed quantities (TRL gathers them across processes) are optional arguments.
"""
import math
from typing import NamedTuple

import torch

from ._common import ObjectiveResult, check_choice, check_number

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
VLLM_IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
_LOG_1E_8 = math.log(1e-8)  # VESPO's lower clamp of log-weights


class ImportanceSamplingRatio(NamedTuple):
    """``ratio``: (B, T) for ``token_*`` modes, (B, 1) for ``sequence_*``; ``metrics``: name -> 0-dim tensor."""
    ratio: torch.Tensor
    metrics: dict


class _Step(NamedTuple):
    """What a per-token loss may read: all in the compute dtype; ``coef_1`` (B, T) or (B, 1) by level."""
    logps: torch.Tensor       # (B, T) policy log-probabilities (differentiable)
    log_ratio: torch.Tensor   # (B, T) logp - old, per token whatever the level
    coef_1: torch.Tensor      # r = exp(log importance weight)
    advantages: torch.Tensor  # (B, 1) or (B, T)
    mask: torch.Tensor        # (B, T) 0/1
    is_ratio: object          # vLLM importance-sampling ratio (B, T) / (B, 1), or None


class _Options(NamedTuple):
    epsilon_low: float
    epsilon_high: float
    delta: object
    sapo_temperature_pos: float
    sapo_temperature_neg: float
    vespo: tuple              # (k_pos, lambda_pos, k_neg, lambda_neg)


class _Norm(NamedTuple):
    gradient_accumulation_steps: int
    max_completion_length: object
    items: object             # dapo's max(1, N) / P * GA / S, a tensor or a Python float


# ---- metrics: TRL's local reductions, without boolean indexing -------------------------------------------

def _masked_mean(x, mask):
    """TRL's ``global_masked_mean`` on one process: sum(x m) / max(1, sum m); a (B, 1) x (sequence level, or
    T == 1) is averaged over all B rows, unmasked, as TRL does by shape."""
    if x.shape[1] == 1:
        return x.sum() / x.new_full((), float(x.shape[0])).clamp(min=1.0)
    return (x * mask.to(x.dtype)).sum() / mask.sum().float().clamp(min=1.0)


def _sequence_mean(x, mask):
    """TRL's ``masked_seq_mean``: per sequence sum_t(x m) / sum_t m (NaN for a fully masked sequence)."""
    if x.shape[1] == 1:
        return x.squeeze(1)
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1)


def _nan_extreme(x, largest):
    """TRL's ``nanmin``/``nanmax`` of a 1-D tensor (NaN when all are NaN), without indexing by a mask."""
    nan = torch.isnan(x)
    filled = torch.where(nan, -math.inf if largest else math.inf, x)
    value = filled.amax() if largest else filled.amin()
    return torch.where(nan.all(), torch.full_like(value, math.nan), value)


# ---- per-token losses: (step, options) -> (per-token loss, local metrics) ----------------------------------

def _clipped(s, o):
    """-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r capped at delta first when set (two-sided clipping)."""
    coef_2 = torch.clamp(s.coef_1, 1 - o.epsilon_low, 1 + o.epsilon_high)
    coef_1 = s.coef_1 if o.delta is None else torch.clamp(s.coef_1, max=o.delta)  # TRL's flags see this one
    loss = -torch.min(coef_1 * s.advantages, coef_2 * s.advantages)
    low = (coef_1 < 1 - o.epsilon_low) & (s.advantages < 0)
    high = (coef_1 > 1 + o.epsilon_high) & (s.advantages > 0)
    low, high, region = low.float(), high.float(), (low | high).float()
    return loss, {"clip_ratio/low_mean": _masked_mean(low, s.mask),
                  "clip_ratio/high_mean": _masked_mean(high, s.mask),
                  "clip_ratio/region_mean": _masked_mean(region, s.mask),
                  "clip_ratio/low_min": _nan_extreme(_sequence_mean(low, s.mask), largest=False),
                  "clip_ratio/high_max": _nan_extreme(_sequence_mean(high, s.mask), largest=True)}


def _cispo(s, o):
    """-sg(min(r, eps_high)) A logp: the clipped ratio as a constant weight on the policy gradient."""
    clamped = torch.clamp(s.coef_1, max=o.epsilon_high).detach()
    clipped = ((s.coef_1 > o.epsilon_high) & (s.advantages > 0)).float()
    return -clamped * s.advantages * s.logps, {"cispo_clip_ratio": _masked_mean(clipped, s.mask)}


def _sapo(s, o):
    """-(4 / tau) sigmoid(tau (r - 1)) A, tau = tau_pos where A > 0 else tau_neg (float32 scalars, as TRL)."""
    tau = torch.where(s.advantages > 0, o.sapo_temperature_pos, o.sapo_temperature_neg)
    return -(torch.sigmoid(tau * (s.coef_1 - 1)) * 4 / tau) * s.advantages, {}


@torch.no_grad()
def _gamma_weights(s, o):
    """VESPO's phi(w) = exp(lambda + k log w - lambda w), w the sequence ratio prod_t r_t (times the vLLM ratio),
    log-ratios clamped to [-20, 20], log w to [log 1e-8, 20]; (k, lambda) by the sign of A; no gradient."""
    k_pos, lambda_pos, k_neg, lambda_neg = o.vespo
    seq_log_ratio = (torch.clamp(s.log_ratio, -20.0, 20.0) * s.mask).sum(-1, keepdim=True)
    if s.is_ratio is not None:
        seq_log_ratio = seq_log_ratio + torch.clamp(torch.log(s.is_ratio), _LOG_1E_8, 20.0).sum(-1, keepdim=True)
    log_w = torch.clamp(seq_log_ratio, _LOG_1E_8, 20.0)
    nonneg = s.advantages >= 0
    k = torch.where(nonneg, k_pos, k_neg)
    lam = torch.where(nonneg, lambda_pos, lambda_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def _vespo(s, o):
    """-sg(phi(w)) A logp (the vLLM ratio enters w, not a per-token factor)."""
    phi = _gamma_weights(s, o)
    return -phi * s.advantages * s.logps, {"vespo/phi_seq_mean": _masked_mean(phi, s.mask)}


# ---- normalisers: (per-token loss, mask, norm) -> (policy loss before accumulation scaling, loss) ----------

def _per_sequence_mean(loss, m, n):
    """mean_b [sum_t l m / max(1, sum_t m)] / GA  (grpo, sapo)"""
    x = ((loss * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    return x, x / n.gradient_accumulation_steps


def _local_token_mean(loss, m, n):
    """sum(l m) / max(1, sum m) / GA, this batch's tokens only  (bnpo)"""
    x = (loss * m).sum() / m.sum().clamp(min=1.0)
    return x, x / n.gradient_accumulation_steps


def _constant_length(loss, m, n):
    """sum(l m) / (B max_completion_length) / GA  (dr_grpo)"""
    x = (loss * m).sum() / (loss.size(0) * n.max_completion_length)
    return x, x / n.gradient_accumulation_steps


def _global_token_mean(loss, m, n):
    """sum(l m) / (max(1, N) / P * GA / S), N the active tokens of the generation batch  (dapo, cispo, vespo)"""
    x = (loss * m).sum() / n.items
    return x, x


def _per_sequence_sum(loss, m, n):
    """mean_b [sum_t l m] / GA  (luspo: each sequence weighted by its length)"""
    x = (loss * m).sum(-1).mean()
    return x, x / n.gradient_accumulation_steps


# loss type -> (per-token loss, normaliser)
_LOSSES = {
    "grpo": (_clipped, _per_sequence_mean),
    "bnpo": (_clipped, _local_token_mean),
    "dr_grpo": (_clipped, _constant_length),
    "dapo": (_clipped, _global_token_mean),
    "luspo": (_clipped, _per_sequence_sum),
    "cispo": (_cispo, _global_token_mean),
    "sapo": (_sapo, _per_sequence_mean),
    "vespo": (_vespo, _global_token_mean),
}


# ---- masks ------------------------------------------------------------------------------------------------

def _high_entropy_mask(entropies, mask, quantile, threshold):
    """Tokens with entropy >= the ``quantile`` of the masked entropies (torch.quantile's linear rule, in float32
    as TRL), computed by a sort with masked entries last: no boolean indexing. ``threshold`` overrides it."""
    valid = mask.bool()
    if threshold is None:
        local = entropies.detach().float()
        ordered = torch.where(valid, local, math.inf).flatten().sort().values
        rank = torch.full((), quantile, dtype=torch.float32, device=local.device) * (valid.sum() - 1).clamp(min=0)
        below = rank.long()
        values = ordered.gather(0, torch.stack([below, torch.ceil(rank).long()]))
        threshold = torch.lerp(values[0], values[1], rank - below)
        threshold = torch.where((torch.isnan(local) & valid).any(), math.nan, threshold)
    return ((entropies * mask.float()) >= threshold) & valid


def _off_policy_keep(advantages, logps, sampling_logps, mask, threshold):
    """DeepSeek-V3.2's sequence mask (B, 1): keep where A >= 0 or mean_t (sampling - logp) <= threshold."""
    kl = torch.nan_to_num(sampling_logps - logps.detach(), nan=0.0)
    mean_kl = (kl * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    return ((advantages >= 0) | (mean_kl <= threshold)).to(mask.dtype)


# ---- argument checks --------------------------------------------------------------------------------------

def _check_tensor(name, t, shapes, *, optional=False, floating=True):
    if t is None and optional:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if tuple(t.shape) not in shapes:
        raise ValueError(f"{name} must have shape {' or '.join(str(s) for s in shapes)}, got {tuple(t.shape)}")
    return t


def _check_logps(name, t):
    """A floating (B, T) tensor: returns its shape."""
    if isinstance(t, torch.Tensor) and t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (batch, completion_length) tensor, got shape {tuple(t.shape)}")
    return tuple(_check_tensor(name, t, [tuple(getattr(t, "shape", ()))]).shape)


def _check_count(name, value, optional=False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _check_scalar(name, value):
    """None, a real number, or a 0-dim tensor."""
    if value is None or isinstance(value, torch.Tensor) and value.dim() == 0:
        return value
    if isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a 0-dim tensor, got shape {tuple(value.shape)}")
    return check_number(name, value, low=0)


# ---- the objectives ---------------------------------------------------------------------------------------

def check_options(*, loss_type, beta, epsilon, epsilon_high, delta, sapo_temperature_pos, sapo_temperature_neg,
                  vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg, off_policy_mask_threshold,
                  top_entropy_quantile, use_bias_correction_kl, entropy_threshold, num_items_in_batch, entropy_coef,
                  router_aux_loss_coef, max_completion_length, num_processes, gradient_accumulation_steps,
                  steps_per_generation, **tensors):
    """grpo_loss's checks of its scalar options (linear_grpo_loss's too; ``tensors``: the other keywords, not
    checked here). Returns (epsilon_high, steps_per_generation) resolved."""
    for name, value in (("vespo_k_pos", vespo_k_pos), ("vespo_lambda_pos", vespo_lambda_pos),
                        ("vespo_k_neg", vespo_k_neg), ("vespo_lambda_neg", vespo_lambda_neg),
                        ("entropy_coef", entropy_coef)):
        check_number(name, value)
    check_number("beta", beta, low=0)  # the KL's weight
    check_number("router_aux_loss_coef", router_aux_loss_coef, low=0)
    check_number("epsilon", epsilon, low=0, high=1, high_open=True)  # the ratio's lower clip 1 - epsilon > 0
    epsilon_high = epsilon if epsilon_high is None else check_number("epsilon_high", epsilon_high, low=0)
    if delta is not None:
        check_number("delta", delta, low=1, low_open=True)  # the two-sided clip's cap on the ratio: above 1
    check_number("sapo_temperature_pos", sapo_temperature_pos, low=0, low_open=True)
    check_number("sapo_temperature_neg", sapo_temperature_neg, low=0, low_open=True)
    if off_policy_mask_threshold is not None:
        check_number("off_policy_mask_threshold", off_policy_mask_threshold)
    check_number("top_entropy_quantile", top_entropy_quantile, low=0, high=1)
    if not isinstance(use_bias_correction_kl, bool):
        raise TypeError(f"use_bias_correction_kl must be a bool, got {type(use_bias_correction_kl).__name__}")
    _check_scalar("entropy_threshold", entropy_threshold)
    _check_scalar("num_items_in_batch", num_items_in_batch)
    _check_count("max_completion_length", max_completion_length, optional=loss_type != "dr_grpo")
    _check_count("num_processes", num_processes)
    _check_count("gradient_accumulation_steps", gradient_accumulation_steps)
    steps_per_generation = _check_count("steps_per_generation", steps_per_generation, optional=True)
    return epsilon_high, steps_per_generation


def grpo_loss(per_token_logps, old_per_token_logps, advantages, completion_mask, *, ref_per_token_logps=None,
              entropies=None, importance_sampling_ratio=None, sampling_per_token_logps=None, aux_loss=None,
              loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=None, delta=None,
              importance_sampling_level="token", use_bias_correction_kl=True, sapo_temperature_pos=1.0,
              sapo_temperature_neg=1.05, vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0,
              vespo_lambda_neg=2.0, off_policy_mask_threshold=None, top_entropy_quantile=1.0,
              entropy_threshold=None, entropy_coef=0.0, router_aux_loss_coef=0.0, max_completion_length=None,
              num_items_in_batch=None, num_processes=1, gradient_accumulation_steps=1, steps_per_generation=None):
    """GRPO's loss (every TRL 1.16 ``loss_type``) and the metrics ``GRPOTrainer._compute_loss`` logs.

    Tensors (B sequences, T completion tokens; all on one device):
      per_token_logps (B, T): the policy's log-probabilities of the completion tokens (the gradient flows here).
      old_per_token_logps (B, T) or None: the sampling policy's (None: ``per_token_logps.detach()``, as TRL).
      advantages (B,) or (B, T).  completion_mask (B, T): 1 for loss tokens (pass TRL's completion_mask *
      tool_mask when tools are used); any dtype.
      ref_per_token_logps (B, T): the reference model's, required when ``beta != 0``.
      entropies (B, T): per-token entropies, required by ``top_entropy_quantile < 1`` and ``entropy_coef``;
      when given, the metric ``entropy``.  importance_sampling_ratio (B, T) or (B, 1): the vLLM correction
      (``vllm_importance_sampling_ratio``): a factor on the per-token loss, or VESPO's extra sequence weight.
      sampling_per_token_logps (B, T): the sampler's, for the off-policy mask (default: old_per_token_logps).
      aux_loss (0-dim): an MoE router loss, added as ``router_aux_loss_coef * aux_loss / GA``.

    Per-token losses (r as in the module docstring, sg = no gradient):
      grpo, bnpo, dr_grpo, dapo, luspo: -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A), r first capped at
        ``delta`` when set; cispo: -sg(min(r, epsilon_high)) A logp; sapo: -(4/tau) sigmoid(tau (r - 1)) A;
      vespo: -sg(phi(w)) A logp, phi(w) = exp(lambda + k log w - lambda w), w = prod_t r_t of the sequence.
      Then, in TRL's order: times the off-policy mask (``off_policy_mask_threshold``), the top-entropy mask
      (``top_entropy_quantile``), the vLLM ratio (not for vespo); plus ``beta`` * k3 KL (times r when
      ``use_bias_correction_kl``).

    Normalisers (GA = ``gradient_accumulation_steps``: TRL's ``current_gradient_accumulation_steps`` in
    training, 1 in evaluation): grpo, sapo: mean over sequences of the per-sequence token mean, / GA;
      bnpo: token mean of this batch, / GA; dr_grpo: sum / (B * ``max_completion_length``), / GA;
      luspo: mean over sequences of the per-sequence sum, / GA;
      dapo, cispo, vespo: sum / (max(1, N) / P * GA / S), N = ``num_items_in_batch`` (the mask's tokens summed
      over the generation batch and all processes; default: this mask's sum, i.e. one process, one step),
      P = ``num_processes``, S = ``steps_per_generation`` (default GA; in evaluation pass GA = S = 1).
      A tensor N is used with its own arithmetic (an integer count: float32, as TRL); a Python number in
      float64. ``entropy_coef`` subtracts coef * (masked entropy mean over the same tokens) / GA (adaptive
      entropy control: pass the coefficient it applies this step).

    Distributed: the function never communicates. Pass N (TRL: gathered sum) and, for the entropy mask,
    ``entropy_threshold`` (TRL: the quantile over the masked entropies gathered from all processes; default:
    this batch's). Metrics are this batch's: TRL's means over processes sum (numerator, count) pairs across
    processes first; ``clip_ratio/low_min``/``high_max`` are the min/max over this batch's sequences (TRL's
    over all processes' sequences, i.e. the min/max of these); ``policy_loss`` and ``aux_loss`` are averaged.

    Returns ``ObjectiveResult(loss, metrics)``: loss 0-dim in the compute dtype (float32 for 16-bit inputs,
    float64 for float64); metrics detached 0-dim tensors named as TRL logs them: ``entropy`` (entropies given),
    ``kl`` (beta != 0), ``clip_ratio/{low_mean,high_mean,region_mean,low_min,high_max}`` (clipped types),
    ``cispo_clip_ratio``, ``vespo/phi_seq_mean``, ``policy_loss`` (entropy_coef != 0), ``aux_loss``.
    Ratios (clip fractions) are float32, as TRL's. Not served: TRL's reward/advantage computation, and its
    adaptive entropy controller's state (a per-step host decision).
    """
    check_choice("loss_type", loss_type, LOSS_TYPES)
    check_choice("importance_sampling_level", importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
    B, T = _check_logps("per_token_logps", per_token_logps)
    full, per_seq = (B, T), (B, 1)
    _check_tensor("old_per_token_logps", old_per_token_logps, [full], optional=True)
    _check_tensor("advantages", advantages, [(B,), full, per_seq])
    _check_tensor("completion_mask", completion_mask, [full], floating=False)
    for name, t in (("ref_per_token_logps", ref_per_token_logps), ("entropies", entropies),
                    ("sampling_per_token_logps", sampling_per_token_logps)):
        _check_tensor(name, t, [full], optional=True)
    _check_tensor("importance_sampling_ratio", importance_sampling_ratio, [full, per_seq], optional=True)
    _check_tensor("aux_loss", aux_loss, [()], optional=True)
    if full[0] == 0:
        raise ValueError("per_token_logps must hold at least one sequence (an empty batch has no loss to normalise)")
    epsilon_high, steps_per_generation = check_options(
        loss_type=loss_type, beta=beta, epsilon=epsilon, epsilon_high=epsilon_high, delta=delta,
        sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg,
        vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
        vespo_lambda_neg=vespo_lambda_neg, off_policy_mask_threshold=off_policy_mask_threshold,
        top_entropy_quantile=top_entropy_quantile, use_bias_correction_kl=use_bias_correction_kl,
        entropy_threshold=entropy_threshold, num_items_in_batch=num_items_in_batch, entropy_coef=entropy_coef,
        router_aux_loss_coef=router_aux_loss_coef, max_completion_length=max_completion_length,
        num_processes=num_processes, gradient_accumulation_steps=gradient_accumulation_steps,
        steps_per_generation=steps_per_generation)
    if beta != 0.0 and ref_per_token_logps is None:
        raise ValueError("ref_per_token_logps is required when beta != 0")
    if entropies is None and (top_entropy_quantile < 1.0 or entropy_coef != 0.0):
        raise ValueError("entropies are required when top_entropy_quantile < 1 or entropy_coef != 0")

    dtype = torch.promote_types(per_token_logps.dtype, torch.float32)
    logps = per_token_logps.to(dtype)
    old = logps.detach() if old_per_token_logps is None else old_per_token_logps.to(dtype)
    advantages = advantages.to(dtype)
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    mask = completion_mask.to(dtype)
    entropies = None if entropies is None else entropies.to(dtype)
    is_ratio = None if importance_sampling_ratio is None else importance_sampling_ratio.to(dtype)

    entropy_mask = None
    if top_entropy_quantile < 1.0:
        entropy_mask = _high_entropy_mask(entropies, mask, 1 - top_entropy_quantile, entropy_threshold)
    keep = None
    if off_policy_mask_threshold is not None:
        sampling = old if sampling_per_token_logps is None else sampling_per_token_logps.to(dtype)
        keep = _off_policy_keep(advantages, logps, sampling, mask, off_policy_mask_threshold)

    log_ratio = logps - old
    if importance_sampling_level == "token":
        log_weights = log_ratio
    else:
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_weights)
    if beta != 0.0:
        ref = ref_per_token_logps.to(dtype)
        per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1  # k3, unbiased estimate of KL(pi || ref)
        if use_bias_correction_kl:
            per_token_kl = per_token_kl * coef_1

    per_token, normaliser = _LOSSES[loss_type]
    options = _Options(epsilon, epsilon_high, delta, sapo_temperature_pos, sapo_temperature_neg,
                       (vespo_k_pos, vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg))
    loss, metrics = per_token(_Step(logps, log_ratio, coef_1, advantages, mask, is_ratio), options)
    if keep is not None:
        loss = loss * keep
    if entropy_mask is not None:
        loss = loss * entropy_mask
    if is_ratio is not None and loss_type != "vespo":
        loss = loss * is_ratio
    if beta != 0.0:
        loss = loss + beta * per_token_kl

    ga = gradient_accumulation_steps
    if num_items_in_batch is None:  # an integer mask counts in int64 (as TRL's), a float one in the compute dtype
        num_items_in_batch = mask.sum() if completion_mask.is_floating_point() else completion_mask.sum()
    if isinstance(num_items_in_batch, torch.Tensor):
        items = num_items_in_batch.clamp(min=1.0) / num_processes
    else:
        items = max(float(num_items_in_batch), 1.0) / num_processes
    items = items * ga / (ga if steps_per_generation is None else steps_per_generation)
    policy_loss, loss = normaliser(loss, mask, _Norm(ga, max_completion_length, items))

    if entropy_coef != 0.0:
        effective = mask if entropy_mask is None else mask * entropy_mask
        bonus = (entropies * effective).sum() / effective.sum().clamp(min=1.0) / ga
        loss = loss - entropy_coef * bonus
        metrics["policy_loss"] = policy_loss
    if aux_loss is not None and router_aux_loss_coef != 0.0:
        loss = loss + router_aux_loss_coef * aux_loss.to(dtype) / ga
        metrics["aux_loss"] = aux_loss
    if beta != 0.0:
        metrics["kl"] = _masked_mean(per_token_kl, mask)
    if entropies is not None:
        metrics["entropy"] = _masked_mean(entropies, mask)
    return ObjectiveResult(loss, {name: value.detach() for name, value in metrics.items()})


@torch.no_grad()
def vllm_importance_sampling_ratio(old_per_token_logps, sampling_per_token_logps, completion_mask, *,
                                   mode="sequence_mask", clip_min=None, clip_max=3.0):
    """TRL 1.16's vLLM importance-sampling correction (``vllm_importance_sampling_correction=True``), as
    ``GRPOTrainer._generate_and_score_completions`` computes it, for ``grpo_loss(importance_sampling_ratio=)``.

    old_per_token_logps (B, T): the trainer's recomputed log-probabilities; sampling_per_token_logps (B, T): the
    sampler's (vLLM's; NaN where it could not score a token: no correction there); completion_mask (B, T)
    (times the tool mask when tools are used). With d = nan_to_num((old - sampling) m, nan=0):
      token_*: rho = exp(d) (B, T); sequence_*: rho = exp(sum_t d) (B, 1);
      *_truncate: clamp(rho, clip_min, clip_max); *_mask: rho where clip_min <= rho <= clip_max, else 0
    (a missing bound is no bound; truncate needs at least one). No gradient.

    Metrics (0-dim, this batch; TRL gathers each across processes and takes min / mean / max of them):
    ``sampling/sampling_logp_difference/{mean,max}`` of |old - sampling| over masked, scored tokens, and
    ``sampling/importance_sampling_ratio/{min,mean,max}`` over masked tokens (token modes) or all sequences
    (sequence modes); 0 where there is nothing to reduce, as TRL.
    """
    check_choice("mode", mode, VLLM_IMPORTANCE_SAMPLING_MODES)
    if clip_min is not None:
        check_number("clip_min", clip_min)
    if clip_max is not None:
        check_number("clip_max", clip_max)
    if mode.endswith("_truncate") and clip_min is None and clip_max is None:
        raise ValueError("clip_min or clip_max must be set for a *_truncate mode")
    if clip_min is not None and clip_max is not None and clip_min >= clip_max:
        raise ValueError(f"clip_min ({clip_min}) must be less than clip_max ({clip_max})")
    full = _check_logps("old_per_token_logps", old_per_token_logps)
    _check_tensor("sampling_per_token_logps", sampling_per_token_logps, [full])
    _check_tensor("completion_mask", completion_mask, [full], floating=False)

    dtype = torch.promote_types(old_per_token_logps.dtype, torch.float32)
    old, sampling = old_per_token_logps.to(dtype), sampling_per_token_logps.to(dtype)
    valid = completion_mask.bool()
    diff = torch.nan_to_num((old - sampling) * completion_mask.to(dtype), nan=0.0)
    sequence_level = mode.startswith("sequence_")
    ratio = torch.exp(diff.sum(dim=-1, keepdim=True) if sequence_level else diff)
    if mode.endswith("_truncate"):
        ratio = torch.clamp(ratio, min=clip_min, max=clip_max)
    else:
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        ratio = ratio.masked_fill((ratio < low) | (ratio > high), 0.0)

    delta = torch.abs(old - sampling)
    scored = valid & ~torch.isnan(delta)
    counted = torch.ones_like(ratio, dtype=torch.bool) if sequence_level else valid
    metrics = {
        "sampling/sampling_logp_difference/mean": _where_mean(delta, scored),
        "sampling/sampling_logp_difference/max": _where_extreme(delta, scored, largest=True),
        "sampling/importance_sampling_ratio/min": _where_extreme(ratio, counted, largest=False),
        "sampling/importance_sampling_ratio/mean": _where_mean(ratio, counted),
        "sampling/importance_sampling_ratio/max": _where_extreme(ratio, counted, largest=True),
    }
    return ImportanceSamplingRatio(ratio, metrics)


def _where_mean(x, keep):
    """mean of x[keep], 0 when keep is empty (TRL's convention), without boolean indexing."""
    count = keep.sum()
    mean = torch.where(keep, x, 0.0).sum() / count.clamp(min=1)
    return torch.where(count > 0, mean, 0.0)


def _where_extreme(x, keep, largest):
    """min or max of x[keep], 0 when keep is empty."""
    filled = torch.where(keep, x, -math.inf if largest else math.inf)
    value = filled.amax() if largest else filled.amin()
    return torch.where(keep.any(), value, 0.0)
