"""The fused GRPO op: ``linear_grpo_loss``'s token-level options in one sweep over the chunks of an LM head's
logits, d loss / d logits written inside it (a family beside the matmul-rows losses, on their chunk driver
``_chunks.sweep``; the public function, its checks and its two-pass forms: fusedloss/objectives/linear.py).

Notation: X (N, H) the policy's hidden states at the N = B * T completion positions, W (V, H) and b its head,
z = softcap(s (X W^T + b)) / temperature the logits (s the logit scale), lp_t = log_softmax(z_t)[token_t],
H_t the entropy of row t. Log-probabilities are float32 for 16-bit models (float64 kept): bfloat16 log-probs
would put exp(lp - old) about 3% off.

GRPO's loss L (fusedloss/objectives/grpo.py) is a function of the per-token lp (and H), so by the chain rule
    dL/dz_t = c_t (onehot(token_t) - p_t) - g_t p_t (log p_t + H_t),   c_t = dL/dlp_t, g_t = dL/dH_t
(the distribution-rows kernel writes it from (c_t, g_t), times 1/temperature and the softcap's slope), and
dL/dX = dL/dlogits W, dL/dW = dL/dlogits^T X: the chunk driver's gradient GEMMs.

The op serves the options where c_t, g_t depend on token t's own values (``serves``: token-level ratio, no
off-policy mask, the entropy mask only with a given threshold and without the bonus): grpo.py's normalisers are
linear in the per-token losses, with weights known from the mask before the sweep (counts on the device), so
per chunk: GEMM -> kernel (lp, H, the rows' log-sum-exps) [-> the reference head's GEMM and kernel] -> c, g of
the chunk's tokens (a few (rows,)-sized torch ops) -> kernel writing dL/dlogits over the chunk's logits from the
saved statistics -> dX, dW GEMMs. 3 GEMMs per chunk for the policy, 1 for a reference head, each chunk of logits
read twice and written once. The loss and metrics are then grpo_loss's on the swept log-probabilities; dX, dW,
db are the forward's, for grad_output 1, and the backward only scales them by grad_output on the device (no
recompute, no host sync). Without gradients: 1 GEMM per chunk and head.

Memory: one chunk of both heads' logits (``_chunks.CHUNK_BYTES``), (N,)-sized float vectors, dX and the float32
dW accumulator of a 16-bit head, held until the backward. torch.compile: the registered torch.library op
(fullgraph); create_graph and torch.func differentiate the whole-logits formula (the scaffold's reference).
The torch backend runs that formula too (``whole_logits``: the logits whole, grpo_loss's autograd).

The op depends on grpo.py's formulas (its per-token losses, normalisers and masks: pure torch, no fusedloss
import), the one place they exist.
"""
from typing import NamedTuple, Optional

import torch

from .. import dispatch
from ..objectives import grpo as G
from . import _chunks, _eager, _scaffold
from ._scaffold import accumulation_dtype as _compute_dtype

_CLIPPED = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
_CLIP_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "clip_ratio/low_min",
                 "clip_ratio/high_max")
_FLOAT32_METRICS = (*_CLIP_METRICS, "cispo_clip_ratio")  # fractions: float32 whatever the compute dtype, as TRL


class LinearGRPOOptions(NamedTuple):
    """The fused op's options: grpo_loss's scalar options under their names (a number where grpo_loss also takes
    a tensor: the tensor is an input), then the head's."""
    loss_type: str
    importance_sampling_level: str
    beta: float
    epsilon: float
    epsilon_high: float
    delta: Optional[float]
    use_bias_correction_kl: bool
    sapo_temperature_pos: float
    sapo_temperature_neg: float
    top_entropy_quantile: float
    entropy_threshold: Optional[float]
    entropy_coef: float
    max_completion_length: Optional[int]
    num_items_in_batch: Optional[float]
    num_processes: int
    gradient_accumulation_steps: int
    steps_per_generation: Optional[int]
    entropy: bool  # entropies computed (the metric, the entropy mask, the bonus)
    temperature: float
    ignore_index: int
    logit_scale: float  # the policy's and the reference's
    softcap: Optional[float]
    chunk_rows: int  # 0: as many as CHUNK_BYTES of both heads' logits hold


_OPTION_FIELDS = LinearGRPOOptions._fields[:LinearGRPOOptions._fields.index("entropy")]  # grpo_loss's keywords


class Inputs(NamedTuple):
    """The op's tensors, in its order (None where absent); only the first three get gradients."""
    x: torch.Tensor  # (B, T, H) policy hidden states
    w: torch.Tensor  # (V, H)
    b: Optional[torch.Tensor]
    tokens: torch.Tensor  # (B, T) int
    ref_x: Optional[torch.Tensor]  # the reference head's, detached (used when beta != 0)
    ref_w: Optional[torch.Tensor]
    ref_b: Optional[torch.Tensor]
    old: Optional[torch.Tensor]
    advantages: torch.Tensor
    mask: torch.Tensor  # completion_mask as given (its dtype decides grpo_loss's count arithmetic)
    ref_logps: Optional[torch.Tensor]
    is_ratio: Optional[torch.Tensor]
    entropy_threshold: Optional[torch.Tensor]  # a 0-dim tensor (a number is in the options)
    num_items: Optional[torch.Tensor]


def _metric_names(o):
    """The metrics grpo_loss returns for the fused op's options (aux_loss apart: added outside), in its order."""
    names = list(_CLIP_METRICS if o.loss_type in _CLIPPED else ("cispo_clip_ratio",) if o.loss_type == "cispo" else ())
    return names + ["policy_loss"] * (o.entropy_coef != 0.0) + ["kl"] * (o.beta != 0.0) + ["entropy"] * o.entropy


def serves(a):
    """Whether dL/dlp_t and dL/dH_t depend on token t's own values (module docstring): the fused op serves these.
    ``a``: grpo_loss's keyword arguments."""
    entropy_mask = a["top_entropy_quantile"] < 1.0
    return (a["importance_sampling_level"] == "token" and a["loss_type"] != "vespo"
            and a["off_policy_mask_threshold"] is None
            and (not entropy_mask or (a["entropy_threshold"] is not None and a["entropy_coef"] == 0.0)))


def _uses_ref_head(o, t):
    return o.beta != 0.0 and t.ref_x is not None


def _objective(o, t, logps, entropies, ref_logps):
    """grpo_loss on (B, T) log-probabilities: (loss, metrics)."""
    options = {name: getattr(o, name) for name in _OPTION_FIELDS}
    if t.entropy_threshold is not None:
        options["entropy_threshold"] = t.entropy_threshold
    if t.num_items is not None:
        options["num_items_in_batch"] = t.num_items
    result = G.grpo_loss(logps, t.old, t.advantages, t.mask, ref_per_token_logps=ref_logps, entropies=entropies,
                         importance_sampling_ratio=t.is_ratio, **options)
    return result.loss, result.metrics


def _pack(o, loss, metrics, dtype):
    """[loss, *metrics] in one 1-D tensor of the compute ``dtype`` (the scaffold's ops return one tensor, and
    its fake says this dtype: a float64 num_items_in_batch would otherwise promote a float32 loss, which
    inductor then read as float32 bits); ``_unpack`` reverses it."""
    return torch.stack([loss.to(dtype), *(metrics[name].to(dtype) for name in _metric_names(o))])


def _unpack(o, out):
    metrics = {name: out[i + 1].detach().to(torch.float32 if name in _FLOAT32_METRICS else out.dtype)
               for i, name in enumerate(_metric_names(o))}
    return out[0], metrics



# ---- the one-sweep gradient: the normalisers' weights up front, each chunk's coefficients from its tokens ----
# Written out, not taken by autograd: under torch.compile a registered op runs below autograd and functorch.
# They follow torch's derivatives where the loss has kinks: min's mean of both sides at a tie, clamp's
# gradient kept at its bounds (the tests compare them with autograd through grpo_loss, to 1e-10).

_WEIGHTS = {  # grpo.py's normalisers are linear in the per-token losses l: dL/dl_t, m the (B, T) mask
    G._per_sequence_mean: lambda m, o, items: m / m.sum(-1, keepdim=True).clamp(min=1.0) / m.shape[0]
    / o.gradient_accumulation_steps,
    G._local_token_mean: lambda m, o, items: m / m.sum().clamp(min=1.0) / o.gradient_accumulation_steps,
    G._constant_length: lambda m, o, items: m / (m.shape[0] * o.max_completion_length)
    / o.gradient_accumulation_steps,
    G._global_token_mean: lambda m, o, items: m / items,
    G._per_sequence_sum: lambda m, o, items: m / m.shape[0] / o.gradient_accumulation_steps,
}


class _Local(NamedTuple):
    """(N,) per-token tensors in the compute dtype, flattened, for the chunks to slice."""
    old: Optional[torch.Tensor]
    advantages: torch.Tensor
    mask: torch.Tensor
    is_ratio: Optional[torch.Tensor]
    ref: Optional[torch.Tensor]
    weight: torch.Tensor  # dL/dl_t of the normaliser
    entropy_weight: Optional[torch.Tensor]  # dL/dH_t of the entropy bonus
    threshold: object  # the entropy mask's threshold (a number or a 0-dim tensor)


def _local_terms(o, t, dtype, ref_logps):
    """The per-token tensors of the one-sweep gradient; the counts as grpo_loss makes them (on the device)."""
    B, T = t.tokens.shape
    mask = t.mask.to(dtype)
    ga, steps = o.gradient_accumulation_steps, o.steps_per_generation
    items = o.num_items_in_batch if t.num_items is None else t.num_items
    if items is None:  # as grpo_loss: an integer mask counts in int64, a float one in the compute dtype
        items = mask.sum() if t.mask.is_floating_point() else t.mask.sum()
    if isinstance(items, torch.Tensor):
        items = items.clamp(min=1.0) / o.num_processes
    else:
        items = max(float(items), 1.0) / o.num_processes
    items = items * ga / (ga if steps is None else steps)
    weight = _WEIGHTS[G._LOSSES[o.loss_type][1]](mask, o, items)
    entropy_weight = None  # the bonus -coef sum(H m) / max(1, sum m) / GA (no entropy mask in one sweep)
    if o.entropy_coef != 0.0:
        entropy_weight = mask * (-o.entropy_coef / mask.sum().clamp(min=1.0) / ga)

    def flat(x):
        return None if x is None else x.to(dtype).expand(B, T).reshape(-1)

    advantages = t.advantages.unsqueeze(1) if t.advantages.dim() == 1 else t.advantages
    threshold = o.entropy_threshold if t.entropy_threshold is None else t.entropy_threshold
    return _Local(flat(t.old), flat(advantages), mask.reshape(-1), flat(t.is_ratio),
                  ref_logps if t.ref_logps is None else flat(t.ref_logps), weight.reshape(-1),
                  flat(entropy_weight), threshold)


def _d_min(a, b, da, db):
    """d min(a, b) as torch differentiates it: the smaller side's derivative, their mean at a tie."""
    return torch.where(a < b, da, torch.where(a > b, db, (da + db) / 2))


def _d_token_loss(o, r, advantages):
    """d l_t / d lp_t of the loss type's per-token loss (grpo.py), r = exp(lp - old) (so dr/dlp = r)."""
    A = advantages
    if o.loss_type == "cispo":  # -sg(min(r, eps_high)) A lp
        return -torch.clamp(r, max=o.epsilon_high) * A
    if o.loss_type == "sapo":  # -(4 / tau) sigmoid(tau (r - 1)) A
        tau = torch.where(A > 0, o.sapo_temperature_pos, o.sapo_temperature_neg)
        s = torch.sigmoid(tau * (r - 1))
        return -(s * (1 - s) * 4 / tau) * A * tau * r  # tau: float32 scalars, as grpo.py (and TRL)
    # -min(c1 A, c2 A), c1 = r (capped at delta), c2 = clip(r, 1 - eps, 1 + eps_high)
    c1 = r if o.delta is None else torch.clamp(r, max=o.delta)
    dc1 = r if o.delta is None else r * (r <= o.delta)
    c2 = torch.clamp(r, 1 - o.epsilon, 1 + o.epsilon_high)
    dc2 = r * ((r >= 1 - o.epsilon) & (r <= 1 + o.epsilon_high))
    return -_d_min(c1 * A, c2 * A, dc1 * A, dc2 * A)


def _chunk_coefficients(o, local, r0, rows, out):
    """(c, g) = (dL/dlp, dL/dH) of the chunk's tokens: (2, rows) with the entropy, else (rows,). With l_t the
    per-token loss, m_t the entropy mask, rho_t the vLLM ratio, w_t the normaliser's weight:
        c_t = w_t (dl_t/dlp_t m_t rho_t + beta dkl_t/dlp_t),   kl = e - (ref - lp) - 1, e = exp(ref - lp),
        dkl/dlp = 1 - e, times r plus kl r with the bias correction (kl r);   g_t = the bonus's weight."""
    k = local._replace(**{f: getattr(local, f)[r0:r0 + rows] for f in _Local._fields
                          if f != "threshold" and getattr(local, f) is not None})
    lp = out[0] if o.entropy else out
    r = torch.exp(lp - lp if k.old is None else lp - k.old)  # no old log-probs: r = 1 (grpo_loss's lp.detach())
    d = _d_token_loss(o, r, k.advantages)
    if o.top_entropy_quantile < 1.0:
        d = d * G._high_entropy_mask(out[1], k.mask, 1 - o.top_entropy_quantile, k.threshold)
    if k.is_ratio is not None:
        d = d * k.is_ratio
    if o.beta != 0.0:
        e = torch.exp(k.ref - lp)
        dkl = 1 - e
        if o.use_bias_correction_kl:
            dkl = dkl * r + (e - (k.ref - lp) - 1) * r
        d = d + o.beta * dkl
    c = d * k.weight
    if not o.entropy:
        return c
    return torch.stack([c, torch.zeros_like(c) if k.entropy_weight is None else k.entropy_weight])


# ---- the op ---------------------------------------------------------------------------------------------------

def _kernels():
    from fusedloss.kernels import distribution_rows

    return distribution_rows


def _problem(o, entropy):
    return _kernels().Problem("log_probs", has_labels=True, entropy=entropy, ignore_index=o.ignore_index,
                              temperature=o.temperature, softcap=o.softcap)


def _forward(o, t, want):
    """(packed loss and metrics, (dX, dW, db) for grad_output 1, None where not wanted)."""
    K = _kernels()
    B, T = t.tokens.shape
    n, dtype = B * T, _compute_dtype(t.x.dtype)
    heads = [_chunks.Head(t.x.reshape(n, t.x.shape[-1]), t.w, t.b, o.logit_scale)]
    if _uses_ref_head(o, t):
        heads.append(_chunks.Head(t.ref_x.reshape(n, t.ref_x.shape[-1]), t.ref_w, t.ref_b, o.logit_scale))
    chunk = _chunks.chunk_rows(n, sum(h.w.shape[0] for h in heads), max(h.x.element_size() for h in heads),
                               o.chunk_rows)
    flat = t.tokens.reshape(-1)
    problem, ref_problem = _problem(o, o.entropy), _problem(o, False)
    out = t.x.new_empty((2, n) if o.entropy else (n,), dtype=dtype)  # [lp | H]
    ref_out = t.x.new_empty(n, dtype=dtype) if len(heads) > 1 else None
    grads = _chunks.new_grads(heads[0], t.x, want) if any(want) else None
    local = _local_terms(o, t, dtype, ref_out) if grads is not None else None

    def visit(i, r0, rows, logits):
        mine = out[..., r0:r0 + rows]
        _, state = K.distribution_fwd(problem, logits[0], None, None, flat[r0:r0 + rows], "none", dtype,
                                      grads is not None, out=mine, out_plane=n)
        if ref_out is not None:
            K.distribution_fwd(ref_problem, logits[1], None, None, flat[r0:r0 + rows], "none", dtype, False,
                               out=ref_out[r0:r0 + rows])
        if grads is not None:  # dL/dlogits over the chunk's logits, from the row statistics just saved
            coefficients = _chunk_coefficients(o, local, r0, rows, mine)
            K.distribution_bwd(problem, logits[0], None, None, flat[r0:r0 + rows], state, coefficients,
                               (1, rows if o.entropy else 0), False, grad=logits[0])

    _chunks.sweep(heads, n, chunk, visit, [grads, None] if grads is not None else None)
    ref = t.ref_logps if ref_out is None else ref_out.view(B, T)
    loss, metrics = _objective(o, t, (out[0] if o.entropy else out).view(B, T),
                               out[1].view(B, T) if o.entropy else None, ref)
    finished = _chunks.finish(grads, t.x, t.w, t.b) if grads is not None else (None, None, None)
    return _pack(o, loss, metrics, dtype), finished


def _whole_logits_log_probs(o, x, w, b, tokens, entropy, dtype):
    """The log-probabilities (and entropies) from the whole logits, in torch ops (the eager path and the
    differentiable reference)."""
    logits = _eager.softcapped(_eager.linear_logits(x, w, b, o.logit_scale).to(dtype), o.softcap)
    return _eager.token_log_probs(logits, tokens, o.temperature, o.ignore_index, entropy).to(dtype)


def _whole_logits(o, t):
    """(loss, metrics) from the whole logits: the torch backend's path."""
    dtype = _compute_dtype(t.x.dtype)
    out = _whole_logits_log_probs(o, t.x, t.w, t.b, t.tokens, o.entropy, dtype)
    ref = t.ref_logps
    if _uses_ref_head(o, t):
        with torch.no_grad():
            ref = _whole_logits_log_probs(o, t.ref_x, t.ref_w, t.ref_b, t.tokens, False, dtype)
    return _objective(o, t, out[0] if o.entropy else out, out[1] if o.entropy else None, ref)


class _LinearGRPO(_scaffold.Family):
    name = "linear_grpo_loss"
    options_type = LinearGRPOOptions
    n_inputs = len(Inputs._fields)

    @staticmethod
    def forward(options, inputs, needs_grad):
        t = Inputs(*inputs)
        with torch.autocast(t.x.device.type, enabled=False):
            return _forward(options, t, tuple(needs_grad[:3]))

    @staticmethod
    def backward(options, inputs, state, grad_output, needs_grad, in_place):
        """dX, dW, db (written by the forward for grad_output 1) times the loss's grad_output (out[0]; the
        metrics have none). A second backward through the graph, after the first took them: recomputed."""
        want = tuple(needs_grad[:3])
        if any(w and s is None for w, s in zip(want, state[:3])):
            state, in_place = list(_LinearGRPO.forward(options, inputs, needs_grad)[1]), True
        g = grad_output[0]
        if in_place:
            grads = [_chunks.scale_in_place(s, g) if w else None for s, w in zip(state[:3], want)]
            state[:3] = [None] * 3  # handed over: a second backward recomputes
        else:  # the registered op (torch.compile): its outputs are not to be written
            grads = [s * g if w else None for s, w in zip(state[:3], want)]
        return (*grads, *(None,) * (len(inputs) - 3))  # nothing for the tokens and the objective's constants

    @staticmethod
    def reference(options, *inputs):
        t = Inputs(*inputs)
        return _pack(options, *_whole_logits(options, t), _compute_dtype(t.x.dtype))

    @staticmethod
    def fake(options, inputs, needs_grad):
        t = Inputs(*inputs)
        out = t.x.new_empty(1 + len(_metric_names(options)), dtype=_compute_dtype(t.x.dtype))
        return out, tuple(v.new_empty(v.shape) if need else None for v, need in zip(inputs[:3], needs_grad[:3]))


FAMILY = _scaffold.register(_LinearGRPO())


def _fused(options, t):
    if t.x.dtype != torch.float64 and torch.is_autocast_enabled(t.x.device.type):  # autocast's 16-bit GEMMs
        cast = torch.get_autocast_dtype(t.x.device.type)
        t = t._replace(**{f: getattr(t, f).to(cast) for f in ("x", "w", "b", "ref_x", "ref_w", "ref_b")
                          if getattr(t, f) is not None and getattr(t, f).dtype != torch.float64})
    return _unpack(options, _scaffold.run(FAMILY, options, t))


def _unsupported(options, t):
    heads = [(t.x, t.w, t.b)] + ([(t.ref_x, t.ref_w, t.ref_b)] if _uses_ref_head(options, t) else [])
    for x, w, b in heads:
        if not torch.is_autocast_enabled(x.device.type) and any(v.dtype != x.dtype for v in (w, b) if v is not None):
            return "operands of different dtypes (torch's linear raises on the eager path)"
    return None


# dispatch reads the devices of the heads' tensors (positions 0-5); the callables take (options, inputs)
ROUTE = dispatch.Route("linear_grpo_loss", lambda *args: _whole_logits(*args[6:]), lambda *args: _fused(*args[6:]),
                       lambda *args: _unsupported(*args[6:]), (0, 1, 2, 3, 4, 5))


def options_of(a, *, entropy, temperature, ignore_index, logit_scale, softcap, chunk_rows):
    """The op's options from grpo_loss's keywords ``a`` (checked, ``serves(a)``) and the head's (checked): a
    number where grpo_loss also takes a tensor (the tensor is then one of the op's inputs)."""
    def number(v):
        return None if v is None or isinstance(v, torch.Tensor) else float(v)

    return LinearGRPOOptions(
        a["loss_type"], a["importance_sampling_level"], float(a["beta"]), float(a["epsilon"]),
        float(a["epsilon"] if a["epsilon_high"] is None else a["epsilon_high"]), number(a["delta"]),
        a["use_bias_correction_kl"], float(a["sapo_temperature_pos"]), float(a["sapo_temperature_neg"]),
        float(a["top_entropy_quantile"]), number(a["entropy_threshold"]), float(a["entropy_coef"]),
        a["max_completion_length"], number(a["num_items_in_batch"]), a["num_processes"],
        a["gradient_accumulation_steps"], a["steps_per_generation"], bool(entropy), float(temperature),
        int(ignore_index), logit_scale, softcap, int(chunk_rows))


def linear_grpo_loss(options, inputs):
    """(loss, metrics) of one call: the fused op (the Triton backend) or the whole-logits formula (torch's),
    as fusedloss.dispatch chooses. ``inputs``: an ``Inputs`` (all but the policy's head detached)."""
    t = inputs
    return dispatch.call(ROUTE, t.x, t.w, t.b, t.ref_x, t.ref_w, t.ref_b, options, t)

