"""fusedloss.objectives.preference against TRL 1.16's own trainer code: the loss, every metric TRL logs from
log-probs, and the gradient of every input that reaches the loss.

TRL's losses live inside trainer methods that run a model, so those methods are called unbound on a trainer made
with ``object.__new__`` holding only the attributes they read, with a stub model: for DPO and KTO it returns given
per-token log-probs as TRL's fused LM head does (0 where the label is -100), for ORPO and CPO given logits.
Float64 against TRL in float64 (tests/helpers.py's tolerance table); float32, bfloat16 and float16 against TRL at
that dtype and in float64 ("no further from float64 than TRL at the same dtype").
"""
import contextlib
import os
import types
import warnings
from collections import defaultdict

import pytest
import torch

from fusedloss.objectives import preference as P
from helpers import assert_matches, assert_matches_torch, max_error

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
ACCELERATOR = types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected")


class _Model(torch.nn.Module):
    """The trainer's own ``self.model`` (its loss code reads the mode and the gradient-checkpointing flag)."""
    is_gradient_checkpointing = False


def _trainer(module, cls, **attrs):
    """A TRL trainer with only the attributes its loss code reads (no model, dataset or accelerate state)."""
    trainer = object.__new__(getattr(pytest.importorskip(module), cls))
    args = types.SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=attrs.pop("discopop_tau", 0.05))
    trainer.__dict__.update(accelerator=ACCELERATOR, aux_loss_enabled=False, _total_train_tokens=0, _tp_size=1,
                            _metrics=defaultdict(lambda: defaultdict(list)), args=args, model=_Model(), **attrs)
    return trainer


def _fused_head(tables):
    """A stub of TRL's fused-LM-head model: ``tables`` maps input_ids (by identity) to (log_probs, log_sum_sq)."""
    def forward(*, input_ids, labels, fused_lm_head, **_):
        logps, log_sum_sq = tables[id(input_ids)]
        drop = labels[:, 1:] == -100
        zero = torch.zeros_like(logps)
        return types.SimpleNamespace(log_probs=logps.masked_fill(drop, 0), entropy=zero, mean_logits=zero,
                                     is_top1=drop & False, aux_loss=None,
                                     log_sum_sq_probs=None if log_sum_sq is None else log_sum_sq.masked_fill(drop, 0))
    return forward


def _ids(mask):  # input_ids and the unshifted completion mask of per-token rows (one prompt token in front)
    completion = torch.cat([torch.zeros_like(mask[:, :1]), mask], 1).long()
    return torch.arange(completion.numel()).view(completion.shape) % 13, completion


def _grads(loss, leaves):
    return list(torch.autograd.grad(loss, leaves, allow_unused=True))


def _rounded(tensors, dtype):  # the inputs at ``dtype``, held in float64: every run sees the same values
    return [None if t is None else t.to(dtype).to(F64) for t in tensors]


def _leaves(tensors, dtype):
    return [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]


@contextlib.contextmanager
def _default_dtype(dtype):  # TRL makes EXO's ε a tensor of the default dtype: float64 runs get a float64 one
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _run(dtype, tensors, ours, theirs, *, grads=None, ref_dtype=F64, trl_dtype=None):
    """Ours at ``dtype``, TRL's at ``dtype`` (or ``trl_dtype``), and for low precision TRL's at ``ref_dtype``:
    each (loss, metrics, gradients of the leaves numbered in ``grads``, all by default)."""
    tensors = _rounded(tensors, dtype)

    def run(fn, at):
        leaves = _leaves(tensors, at)
        with _default_dtype(F64 if at == F64 else F32):
            loss, metrics = fn(leaves)
        return loss, metrics, _grads(loss, [leaves[i] for i in (grads or range(len(leaves)))])

    return run(ours, dtype), run(theirs, trl_dtype or dtype), (run(theirs, ref_dtype) if dtype != F64 else None)


def _compare(ours, trl_at_dtype, trl64, dtype, what, shared_chain=False):
    """Float64: the table's tolerance. Lower: the table's tolerance of TRL's float64 result and no further from
    it than TRL at that dtype; with ``shared_chain`` (gradients reaching logits through the same low-precision
    log-softmax as TRL's) only the latter. TRL logs reward accuracy as a float32 mean: float32's tolerance."""
    ours, trl_at_dtype, trl64 = (torch.as_tensor(x, dtype=F64) for x in (ours, trl_at_dtype, trl64))
    if what == "rewards/accuracies" and dtype == F64:
        dtype = F32
    if dtype == F64:
        assert_matches(ours, trl_at_dtype, F64, what)
    elif shared_chain:
        ours_error, trl_error = max_error(ours, trl64), max_error(trl_at_dtype, trl64)
        ulp = torch.finfo(dtype).eps * float(trl64.abs().max())
        assert ours_error <= trl_error + ulp, f"{what}: error {ours_error:.3g} vs TRL's {trl_error:.3g} at {dtype}"
    else:
        assert_matches_torch(ours, trl_at_dtype.to(dtype), trl64, dtype, what)


def _check_all(ours, theirs, ref64, dtype, metrics, atol=None, shared_chain=False):
    """Loss, ``metrics`` and gradients; ``atol``: an absolute float64 tolerance for the gradients where TRL's own
    float64 error (1 - σ(x) for large x) sets it."""
    ref = ref64 or theirs
    _compare(ours[0], theirs[0], ref[0], dtype, "loss")
    for name in metrics:
        _compare(ours[1][name], theirs[1][name], ref[1][name], dtype, name)
    for i, (g, t, r) in enumerate(zip(ours[2], theirs[2], ref[2], strict=True)):
        if g is None:  # an input the loss does not use (sft's rejected): TRL's gradient is 0 (or None too)
            assert t is None or not t.any(), f"gradient {i}"
        elif atol is not None:
            torch.testing.assert_close(g, t, rtol=1e-10, atol=atol, msg=lambda m: f"gradient {i}: {m}")
        else:
            assert g.dtype == t.dtype
            _compare(g, t, r, dtype, f"gradient {i}", shared_chain)
    assert ours[0].dtype == (F64 if dtype == F64 else F32)


# ------------------------------------------------------------------------------------------------- inputs
def _masks(batch, length, gen, empty=()):
    """Contiguous completions after a 0-2 token prompt, of 1.. tokens; rows in ``empty`` have none."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row in range(batch):
        start = int(torch.randint(0, 3, (1,), generator=gen))
        mask[row, start:start + int(torch.randint(1, length - start + 1, (1,), generator=gen))] = row not in empty
    return mask


def _pairs(batch=4, length=7, seed=0, spread=0.4, empty=()):
    """Per-token policy (chosen, rejected) and reference log-probs, masks; log-ratios of about ``spread`` per
    token. 4 pairs of 7 tokens: sums unequal, aot's sorting not the identity."""
    gen = torch.Generator().manual_seed(seed)
    logps = [-(0.05 + 2 * torch.rand(batch, length, generator=gen, dtype=F64)) for _ in range(2)]
    refs = [lp + spread * torch.randn(batch, length, generator=gen, dtype=F64) for lp in logps]
    return logps + refs, [_masks(batch, length, gen, empty), _masks(batch, length, gen)]


# ------------------------------------------------------------------------------------------------- DPO
def _trl_dpo(tensors, masks, *, precompute=False, log_sum_sq=None, loss_type="sigmoid", **options):
    """TRL's DPOTrainer._compute_loss on stub models (the attributes its __init__ sets from DPOConfig)."""
    pc, pr, rc, rr = tensors
    ids, completion = _ids(torch.cat(masks))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}
    if precompute:
        inputs.update(ref_chosen_logps=rc, ref_rejected_logps=rr)
    types_ = [loss_type] if isinstance(loss_type, str) else loss_type
    defaults = dict(beta=0.1, loss_weights=[1.0] * len(types_), label_smoothing=0.0, ld_alpha=None,
                    f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, use_weighting=False)
    trainer = _trainer("trl.trainer.dpo_trainer", "DPOTrainer", precompute_ref_logps=precompute, loss_types=types_,
                       ref_model=None if precompute else _fused_head({id(ids): (torch.cat([rc, rr]), None)}),
                       **{**defaults, **options})
    lssp = None if log_sum_sq is None else torch.cat(log_sum_sq)
    loss = trainer._compute_loss(_fused_head({id(ids): (torch.cat([pc, pr]), lssp)}), inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _run_dpo(dtype, data, *, precompute=False, summed=False, log_sum_sq=None, ref_dtype=F64, trl_dtype=None,
             **options):
    """``precompute``: summed references (TRL's precompute_ref_log_probs), their gradients compared too.
    ``summed``: our policy inputs are the (B,) sums (TRL always gets the tokens)."""
    tensors, masks = data
    if precompute:
        tensors = tensors[:2] + [(t * m).sum(-1) for t, m in zip(tensors[2:], masks)]
    lssp = list(log_sum_sq or (None, None))

    def ours(leaves):
        pc, pr, rc, rr, lc, lr = leaves
        kw = dict(chosen_mask=masks[0], rejected_mask=masks[1])
        if summed:
            pc, pr, kw = (pc * masks[0]).sum(-1), (pr * masks[1]).sum(-1), {}
        result = P.dpo_loss(pc, pr, rc, rr, chosen_log_sum_sq_probs=lc, rejected_log_sum_sq_probs=lr, **kw, **options)
        return result.loss, {k: v.mean() for k, v in result.metrics.items()}

    def theirs(leaves):
        lc, lr = leaves[4:]
        return _trl_dpo(leaves[:4], masks, precompute=precompute, log_sum_sq=None if lc is None else (lc, lr),
                        **options)

    return _run(dtype, tensors + lssp, ours, theirs, grads=[0, 1, 2, 3] if precompute else [0, 1],
                ref_dtype=ref_dtype, trl_dtype=trl_dtype)


def _smoothing(loss_type):
    return {"label_smoothing": 0.1} if loss_type in ("robust", "exo_pair", "aot", "aot_unpaired") else {}


@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16])
@pytest.mark.parametrize("loss_type", list(P.DPO_LOSS_TYPES))
def test_dpo_loss_types(loss_type, dtype):
    _check_all(*_run_dpo(dtype, _pairs(), loss_type=loss_type, beta=0.5, **_smoothing(loss_type)), dtype, PAIR_METRICS)


@pytest.mark.parametrize("loss_type", sorted(set(P.DPO_LOSS_TYPES) - {"ipo", "sigmoid_norm", "sft"}))
def test_dpo_summed_inputs_and_precomputed_reference(loss_type):
    """(B,) sums for the policy (every loss type that does not average per token) and precomputed summed
    references, whose gradients TRL's precompute path also gives."""
    _check_all(*_run_dpo(F64, _pairs(seed=1), precompute=True, summed=True, loss_type=loss_type, beta=0.3,
                         **_smoothing(loss_type)), F64, PAIR_METRICS)


@pytest.mark.parametrize("dtype", [F64, BF16])
@pytest.mark.parametrize("f_divergence_type", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop",
                                       "sft"])
def test_dpo_f_divergence(loss_type, f_divergence_type, dtype):
    """f-DPO. TRL's alpha_divergence has no float64 entry in its clamp table (a KeyError): float32 is the
    reference for bfloat16, and float64 inputs (float32 values) are compared with TRL's float32 at float32's
    tolerance."""
    options = dict(loss_type=loss_type, beta=0.5, f_divergence_type=f_divergence_type, **_smoothing(loss_type))
    alpha = f_divergence_type == "alpha_divergence"
    if not (alpha and dtype == F64):
        _check_all(*_run_dpo(dtype, _pairs(seed=2), ref_dtype=F32 if alpha else F64, **options), dtype, PAIR_METRICS)
        return
    tensors, masks = _pairs(seed=2)
    ours, theirs, _ = _run_dpo(F64, (_rounded(tensors, F32), masks), trl_dtype=F32, **options)
    pairs = [("loss", ours[0], theirs[0])] + [(n, ours[1][n], torch.tensor(theirs[1][n])) for n in PAIR_METRICS]
    pairs += [(f"gradient {i}", g, t) for i, (g, t) in enumerate(zip(ours[2], theirs[2])) if g is not None]
    for name, a, b in pairs:
        assert a.dtype == F64
        assert_matches(a, b.double(), F32, name)


@pytest.mark.parametrize("coef", [1.0, 0.3, -0.5, 1.7])
def test_dpo_alpha_divergence_coefficients(coef):
    """α = 1 is TRL's reverse-KL limit; α > 1 and α < 0 flip the exponent's sign (the cap at 80 applies)."""
    options = dict(loss_type="sigmoid", beta=0.2, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=coef)
    _check_all(*_run_dpo(F32, _pairs(seed=3, spread=4.0), ref_dtype=F32, **options), F32, PAIR_METRICS)


@pytest.mark.parametrize("dtype", [F64, BF16])
def test_dpo_weighted_combination(dtype):
    """MPO's combination of three loss types with weights (TRL's docs example)."""
    _check_all(*_run_dpo(dtype, _pairs(seed=4), loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0],
                         beta=0.2), dtype, PAIR_METRICS)


@pytest.mark.parametrize("precompute", [False, True])
@pytest.mark.parametrize("ld_alpha", [0.0, 0.5, 1.0])
def test_dpo_ld_alpha(ld_alpha, precompute):
    """LD-DPO; a precomputed reference is used as given (TRL's precompute weights it there)."""
    _check_all(*_run_dpo(F64, _pairs(seed=5, length=9), precompute=precompute, ld_alpha=ld_alpha,
                         loss_type=["sigmoid", "ipo"], beta=0.3), F64, PAIR_METRICS)


@pytest.mark.parametrize("dtype", [F64, BF16])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_zero", "discopop"])
def test_dpo_use_weighting(loss_type, dtype):
    """WPO: each pair's loss times exp(mean log p - log Σ p²) of both completions, without gradient."""
    gen = torch.Generator().manual_seed(7)
    log_sum_sq = [-(0.5 * torch.rand(4, 7, generator=gen, dtype=F64)) for _ in range(2)]
    _check_all(*_run_dpo(dtype, _pairs(seed=6), use_weighting=True, log_sum_sq=log_sum_sq, loss_type=loss_type,
                         beta=0.5), dtype, PAIR_METRICS)


def test_dpo_sft_with_weighting_where_trl_fails():
    """TRL multiplies the expanded scalar SFT loss in place (an error); here each pair's weight scales it."""
    (pc, pr, rc, rr), (mc, mr) = _pairs(seed=8)
    lssp = [torch.zeros_like(pc), torch.zeros_like(pr)]
    with pytest.raises(RuntimeError):
        _trl_dpo(_leaves([pc, pr, rc, rr], F64), [mc, mr], loss_type="sft", use_weighting=True, log_sum_sq=lssp)
    result = P.dpo_loss(pc, pr, rc, rr, chosen_mask=mc, rejected_mask=mr, loss_type="sft", use_weighting=True,
                        chosen_log_sum_sq_probs=lssp[0], rejected_log_sum_sq_probs=lssp[1])
    weight = torch.exp((pc * mc).sum(-1) / mc.sum(-1)) * torch.exp((pr * mr).sum(-1) / mr.sum(-1))
    plain = P.dpo_loss(pc, pr, rc, rr, chosen_mask=mc, rejected_mask=mr, loss_type="sft").loss
    torch.testing.assert_close(result.loss, plain * weight.mean(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "apo_zero", "aot"])
def test_dpo_reference_free(loss_type):
    """reference_free (earlier TRL's option): reference log-probs 0, as TRL 1.16 given zero references."""
    (pc, pr, _, _), masks = _pairs(seed=9)
    zeros = torch.zeros(4, dtype=F64)

    def ours(leaves):
        result = P.dpo_loss(*leaves[:2], chosen_mask=masks[0], rejected_mask=masks[1], reference_free=True,
                            loss_type=loss_type)
        return result.loss, {k: v.mean() for k, v in result.metrics.items()}

    theirs = lambda leaves: _trl_dpo(leaves, masks, precompute=True, loss_type=loss_type)  # noqa: E731
    _check_all(*_run(F64, [pc, pr, zeros, zeros], ours, theirs, grads=[0, 1]), F64, PAIR_METRICS)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "sigmoid_norm", "sppo_hard", "aot", "sft"])
def test_dpo_batch_of_one_and_empty_completion(loss_type):
    """One pair; then a batch whose chosen completion 1 is empty (ipo/sigmoid_norm divide by max(count, 1))."""
    _check_all(*_run_dpo(F64, _pairs(batch=1, seed=10), loss_type=loss_type), F64, PAIR_METRICS)
    _check_all(*_run_dpo(F64, _pairs(seed=11, empty=(1,)), loss_type=loss_type), F64, PAIR_METRICS)


@pytest.mark.parametrize("loss_type", list(P.DPO_LOSS_TYPES))
def test_dpo_extreme_log_ratios(loss_type):
    """|log r| about 50 per sequence with beta 1 (logits about ±100): TRL's float64 values, finite in float32
    (where TRL's discopop overflows: exp(100))."""
    data, options = _pairs(seed=12, spread=25.0), dict(loss_type=loss_type, beta=1.0, **_smoothing(loss_type))
    ours, theirs, _ = _run_dpo(F64, data, **options)
    _check_all(ours, theirs, None, F64, PAIR_METRICS, atol=1e-15)
    ours32 = _run_dpo(F32, data, **options)[0]
    assert torch.isfinite(ours32[0]) and all(g is None or torch.isfinite(g).all() for g in ours32[2])


def test_dpo_different_lengths_and_masked_garbage():
    """Chosen and rejected of different lengths; NaN at masked positions changes nothing (no NaN gradient)."""
    (pc, pr, rc, rr), (mc, mr) = _pairs(seed=13)
    mr = mr.clone()
    mr[:, 5:] = False
    padded = P.dpo_loss(pc, pr, rc, rr, chosen_mask=mc, rejected_mask=mr, loss_type=["ipo", "sigmoid"])
    leaves = _leaves([pc.masked_fill(~mc, float("nan")), pr[:, :5]], F64)
    result = P.dpo_loss(leaves[0], leaves[1], rc, rr[:, :5], chosen_mask=mc, rejected_mask=mr[:, :5],
                        loss_type=["ipo", "sigmoid"])
    torch.testing.assert_close(result.loss, padded.loss, rtol=1e-14, atol=0)
    grads = _grads(result.loss, leaves)
    assert all(torch.isfinite(g).all() for g in grads) and (grads[0][~mc] == 0).all()


# ------------------------------------------------------------------------------------------------- KTO
KTO_METRICS = ("kl", "rewards/chosen", "logps/chosen", "rewards/rejected", "logps/rejected", "rewards/margins")


def _trl_kto(tensors, masks, labels, *, precompute, loss_type="kto", **options):
    """TRL's KTOTrainer._compute_loss on stub models: the completions and the KL completions."""
    logps, ref, kl, ref_kl = tensors
    (ids, completion), (kl_ids, kl_completion) = _ids(masks[0]), _ids(masks[1])
    batch = {"label": labels, "input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion,
             "KL_input_ids": kl_ids, "KL_attention_mask": torch.ones_like(kl_ids), "KL_completion_mask": kl_completion}
    if precompute:
        batch.update(ref_logps=ref, ref_KL_logps=ref_kl)
    trainer = _trainer("trl.trainer.kto_trainer", "KTOTrainer", precompute_ref_logps=precompute, loss_type=loss_type,
                       calculate_KL=loss_type == "kto",
                       ref_model=_fused_head({id(ids): (ref, None), id(kl_ids): (ref_kl, None)}),
                       **{**dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.0), **options})
    loss = trainer._compute_loss(_fused_head({id(ids): (logps, None), id(kl_ids): (kl, None)}), batch, False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _run_kto(dtype, labels, *, precompute=False, seed=20, kl_shift=0.0, spread=0.4, **options):
    (lp, kl, ref, ref_kl), masks = _pairs(batch=labels.numel(), seed=seed, spread=spread)
    tensors = [lp, ref, kl, ref_kl + kl_shift]
    if precompute:
        tensors = [lp, (ref * masks[0]).sum(-1), kl, ((ref_kl + kl_shift) * masks[1]).sum(-1)]

    def ours(leaves):
        result = P.kto_loss(*leaves[:2], labels, *leaves[2:], mask=masks[0], kl_mask=masks[1], **options)
        return result.loss, result.metrics

    theirs = lambda leaves: _trl_kto(leaves, masks, labels, precompute=precompute, **options)  # noqa: E731
    return _run(dtype, tensors, ours, theirs, grads=[0, 1] if precompute else [0])


@pytest.mark.parametrize("dtype", [F64, F32, BF16])
@pytest.mark.parametrize("precompute", [False, True])
@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto(loss_type, precompute, dtype):
    _check_all(*_run_kto(dtype, torch.tensor([True, False, True, True, False]), precompute=precompute,
                         loss_type=loss_type, beta=0.5, desirable_weight=1.3, undesirable_weight=0.7),
               dtype, KTO_METRICS)


@pytest.mark.parametrize("kl_shift", [-3.0, 3.0])
def test_kto_kl_clamped_at_zero(kl_shift):
    """A negative KL estimate is clamped to 0 (then the loss is kto without KL); a positive one shifts it."""
    ours, theirs, _ = _run_kto(F64, torch.tensor([True, False, True, False]), kl_shift=kl_shift, beta=0.5)
    _check_all(ours, theirs, None, F64, KTO_METRICS)
    assert (ours[1]["kl"] == 0) == (kl_shift > 0)


@pytest.mark.parametrize("labels", [[True], [True, True, True], [False, False]])
def test_kto_one_sided_batches(labels):
    """Only desirable (or only undesirable) examples: TRL logs nothing for the missing side; here those are NaN."""
    labels = torch.tensor(labels)
    ours, theirs, _ = _run_kto(F64, labels, seed=21)
    side, other = ("chosen", "rejected") if labels.all() else ("rejected", "chosen")
    _check_all(ours, theirs, None, F64, ("kl", f"rewards/{side}", f"logps/{side}"))
    assert ours[1][f"rewards/{other}"].isnan() and ours[1]["rewards/margins"].isnan()
    assert f"rewards/{other}" not in theirs[1]


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_extreme_log_ratios(loss_type):
    """|log r| about 50 with beta 1: TRL's float64 values (to its own 1 - σ(x) rounding), finite in float32."""
    labels = torch.tensor([True, False, True, False, False])
    ours, theirs, _ = _run_kto(F64, labels, loss_type=loss_type, spread=25.0, beta=1.0)
    _check_all(ours, theirs, None, F64, KTO_METRICS, atol=1e-15)
    ours32 = _run_kto(F32, labels, loss_type=loss_type, spread=25.0, beta=1.0)[0]
    assert torch.isfinite(ours32[0]) and torch.isfinite(ours32[2][0]).all()


# ------------------------------------------------------------------------------------------------- ORPO / CPO
def _logits_batch(batch=3, length=8, vocab=11, seed=30, empty=()):
    """Chosen then rejected rows: logits (2B, L, V), prompts of 1-3 tokens, completions of 1.. tokens, padding."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2 * batch, length, vocab, generator=gen, dtype=F64)
    ids = torch.randint(0, vocab, (2 * batch, length), generator=gen)
    attention, labels = torch.zeros_like(ids), ids.clone()
    for row in range(2 * batch):
        prompt = int(torch.randint(1, 4, (1,), generator=gen))
        end = prompt + (0 if row in empty else int(torch.randint(1, length - prompt + 1, (1,), generator=gen)))
        attention[row, :end] = 1
        labels[row, :prompt] = labels[row, end:] = -100
    halves = {"chosen": slice(0, batch), "rejected": slice(batch, 2 * batch)}
    return logits, {f"{side}_{key}": value[rows] for side, rows in halves.items()
                    for key, value in (("input_ids", ids), ("attention_mask", attention), ("labels", labels))}


def _per_token(logits, inputs, side):
    """Per-token log-probs as TRL's get_batch_logps makes them (its selective_log_softmax), and the mask."""
    select = pytest.importorskip("trl.trainer.utils").selective_log_softmax
    rows = slice(0, logits.shape[0] // 2) if side == "chosen" else slice(logits.shape[0] // 2, None)
    return select(logits[rows, :-1], inputs[f"{side}_input_ids"][:, 1:]), inputs[f"{side}_labels"][:, 1:] != -100


def _run_logits(dtype, data, ours, theirs):
    """Ours on per-token log-probs of the logits, TRL's get_batch_loss_metrics on a model returning them."""
    logits, inputs = data

    def call_ours(leaves):
        (chosen, mc), (rejected, mr) = (_per_token(leaves[0], inputs, side) for side in ("chosen", "rejected"))
        result = ours(chosen, rejected, chosen_mask=mc, rejected_mask=mr,
                      nll_mask=inputs["chosen_attention_mask"][:, 1:])
        return result.loss, {k: v.mean() for k, v in result.metrics.items()}

    def call_theirs(leaves):
        model = lambda *args, **kwargs: types.SimpleNamespace(logits=leaves[0])  # noqa: E731
        return theirs().get_batch_loss_metrics(model, inputs)

    return _run(dtype, [logits], call_ours, call_theirs)


def _orpo(beta):
    ours = lambda *args, **kw: P.orpo_loss(*args, beta=beta, **kw)  # noqa: E731
    theirs = lambda: _trainer("trl.experimental.orpo.orpo_trainer", "ORPOTrainer", is_encoder_decoder=False,  # noqa
                              padding_value=0, beta=beta)
    return ours, theirs


ORPO_METRICS = PAIR_METRICS + ("nll_loss", "log_odds_ratio", "log_odds_chosen")


@pytest.fixture
def trl_float64_orpo(monkeypatch):
    """TRL's ORPO casts the log-probs to float32 (``.float()``) even for float64 inputs: kept float64 here so
    the float64 formula is compared at float64's tolerance (float32 and bfloat16 runs are unchanged)."""
    cast = torch.Tensor.float
    monkeypatch.setattr(torch.Tensor, "float", lambda self, *a, **k: self if self.dtype == F64 else cast(self, *a, **k))


@pytest.mark.parametrize("dtype,beta", [(F64, 0.1), (F64, 1.0), (F32, 0.2), (BF16, 0.2)])
def test_orpo(dtype, beta, trl_float64_orpo):
    """The NLL over the whole chosen sequence, prompt included (TRL's), through ``nll_mask``."""
    _check_all(*_run_logits(dtype, _logits_batch(seed=31), *_orpo(beta)), dtype, ORPO_METRICS, shared_chain=True)


def test_orpo_empty_completion_is_nan(trl_float64_orpo):
    """An empty completion averages 0/0 = NaN, as in TRL."""
    ours, theirs, _ = _run_logits(F64, _logits_batch(seed=32, empty=(1,)), *_orpo(0.1))
    assert ours[0].isnan() and theirs[0].isnan()


def test_orpo_confident_completion_keeps_finite_gradients():
    """A near-certain chosen completion (mean log p about -1e-10; TRL's float32 cast makes exp of it 1): TRL's
    log1mexp has -inf in its unused branch and NaN gradients; here they stay finite, the loss TRL's (float32)."""
    logits, inputs = _logits_batch(seed=33)
    logits[0, :, :] = -25.0
    logits[0, torch.arange(logits.shape[1] - 1), inputs["chosen_input_ids"][0, 1:]] = 0.0
    ours, theirs, _ = _run_logits(F64, (logits, inputs), *_orpo(0.1))
    assert_matches(ours[0], theirs[0], F32, "loss")
    assert torch.isfinite(ours[2][0]).all() and theirs[2][0].isnan().any()


def _cpo(fn=P.cpo_loss, **options):
    """Ours, and TRL's trainer with the values its CPOConfig resolves (it maps "alphapo" to simpo, cpo_alpha 0)."""
    ours = lambda *args, nll_mask, **kw: fn(*args, **options, **kw)  # noqa: E731
    options_trl = {"loss_type": "simpo", "cpo_alpha": 0.0, **options} if fn is P.simpo_loss else options
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' TrainingArguments deprecations
        config = pytest.importorskip("trl.experimental.cpo").CPOConfig(output_dir="/tmp/unused", bf16=False,
                                                                       **options_trl)
    fields = ("loss_type", "beta", "label_smoothing", "cpo_alpha", "simpo_gamma", "alpha")
    theirs = lambda: _trainer("trl.experimental.cpo.cpo_trainer", "CPOTrainer", is_encoder_decoder=False,  # noqa
                              pad_token_id=0, **{name: getattr(config, name) for name in fields})
    return ours, theirs


CPO_METRICS = PAIR_METRICS + ("nll_loss",)


@pytest.mark.parametrize("dtype", [F64, F32, BF16])
@pytest.mark.parametrize("alpha", [0.0, 0.25])
@pytest.mark.parametrize("options", [
    {}, {"label_smoothing": 0.2, "cpo_alpha": 0.0}, {"loss_type": "hinge", "beta": 0.5},
    {"loss_type": "ipo", "cpo_alpha": 0.5},
    {"loss_type": "simpo", "simpo_gamma": 0.3, "beta": 2.0, "label_smoothing": 0.1},
    {"loss_type": "alphapo", "beta": 2.5}], ids=["sigmoid", "smoothing-no-nll", "hinge", "ipo", "simpo", "alphapo"])
def test_cpo(options, alpha, dtype):
    _check_all(*_run_logits(dtype, _logits_batch(seed=40), *_cpo(alpha=alpha, **options)), dtype, CPO_METRICS,
               shared_chain=True)


def test_simpo_is_cpo_simpo_without_nll():
    _check_all(*_run_logits(F64, _logits_batch(seed=41), *_cpo(P.simpo_loss, beta=2.0, simpo_gamma=0.8)), F64,
               CPO_METRICS)


@pytest.mark.parametrize("loss_type", ["sigmoid", "simpo"])
def test_cpo_extreme_log_probs(loss_type):
    """Log-probs about -30 per token (sums down to -230) with AlphaPO's α = 0.25: TRL's float64 values; in float32
    TRL's p = e^ℓ underflows to 0 for the sums and p^-α is inf, while e^(-α ℓ) stays finite here."""
    logits, inputs = _logits_batch(seed=44)
    fns = _cpo(loss_type=loss_type, alpha=0.25, beta=0.1, cpo_alpha=0.5)
    _check_all(*_run_logits(F64, (8 * logits, inputs), *fns), F64, CPO_METRICS)
    ours32, theirs32, _ = _run_logits(F32, (8 * logits, inputs), *fns)
    assert torch.isfinite(ours32[0]) and torch.isfinite(ours32[2][0]).all()
    assert loss_type == "simpo" or not torch.isfinite(theirs32[0])


def test_cpo_summed_inputs_and_empty_average():
    """(B,) sums serve sigmoid/hinge without the NLL term; SimPO's average over an empty completion is NaN (TRL)."""
    logits, inputs = _logits_batch(seed=42)
    (chosen, mc), (rejected, mr) = (_per_token(logits, inputs, s) for s in ("chosen", "rejected"))
    tokens = P.cpo_loss(chosen, rejected, chosen_mask=mc, rejected_mask=mr, cpo_alpha=0.0)
    summed = P.cpo_loss((chosen * mc).sum(-1), (rejected * mr).sum(-1), cpo_alpha=0.0)
    torch.testing.assert_close(summed.loss, tokens.loss, rtol=1e-14, atol=0)
    ours, theirs, _ = _run_logits(F64, _logits_batch(seed=43, empty=(0,)), *_cpo(loss_type="simpo"))
    assert ours[0].isnan() and theirs[0].isnan()


# ------------------------------------------------------------------------------------------------- transforms
def _compile_cases():
    (pc, pr, rc, rr), (mc, mr) = _pairs(seed=50)
    labels = torch.tensor([True, False, True, False])
    return {
        "dpo": (lambda a, b, c, d: P.dpo_loss(a, b, c, d, chosen_mask=mc, rejected_mask=mr), (pc, pr, rc, rr)),
        "dpo-mixture": (lambda a, b, c, d: P.dpo_loss(a, b, c, d, chosen_mask=mc, rejected_mask=mr, ld_alpha=0.5,
                                                      loss_type=["aot", "ipo", "discopop"]), (pc, pr, rc, rr)),
        "kto": (lambda a, b, c, d: P.kto_loss(a, b, labels, c, d, mask=mc, kl_mask=mr), (pc, rc, pr, rr)),
        "orpo": (lambda a, b: P.orpo_loss(a, b, chosen_mask=mc, rejected_mask=mr), (pc, pr)),
        "cpo": (lambda a, b: P.cpo_loss(a, b, chosen_mask=mc, rejected_mask=mr, loss_type="simpo", alpha=0.3),
                (pc, pr)),
    }


@pytest.mark.parametrize("case", ["dpo", "dpo-mixture", "kto", "orpo", "cpo"])
def test_compile_fullgraph(case):
    fn, tensors = _compile_cases()[case]
    torch._dynamo.reset()
    expected_leaves, leaves = _leaves(tensors, F32), _leaves(tensors, F32)
    expected, result = fn(*expected_leaves), torch.compile(fn, fullgraph=True, backend="aot_eager")(*leaves)
    torch.testing.assert_close(result.loss, expected.loss)
    for name, value in expected.metrics.items():
        torch.testing.assert_close(result.metrics[name], value, equal_nan=True)
    for g, e in zip(_grads(result.loss, leaves), _grads(expected.loss, expected_leaves)):
        torch.testing.assert_close(g, e)


def test_torch_func_grad():
    (pc, pr, rc, rr), (mc, mr) = _pairs(seed=51)
    fn = lambda a, b: P.dpo_loss(a, b, rc, rr, chosen_mask=mc, rejected_mask=mr, loss_type="robust",  # noqa: E731
                                 label_smoothing=0.1).loss
    grads = torch.func.grad(fn, argnums=(0, 1))(pc, pr)
    leaves = _leaves([pc, pr], F64)
    for g, e in zip(grads, _grads(fn(*leaves), leaves)):
        torch.testing.assert_close(g, e, rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------------------------- bad arguments
_T, _M, _S = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2)
_DPO = lambda *args, **kw: P.dpo_loss(*(args or (_T, _T, _T, _T)), **kw)  # noqa: E731
_KTO = lambda *args, **kw: P.kto_loss(*(args or (_T, _T, _M[:, 0], _T, _T)), **kw)  # noqa: E731
_ORPO = lambda *args, **kw: P.orpo_loss(*(args or (_T, _T)), **kw)  # noqa: E731
_CPO = lambda *args, **kw: P.cpo_loss(*(args or (_T, _T)), **kw)  # noqa: E731
V, T = ValueError, TypeError
BAD = [  # (function, positional tensors or (), keywords, error, the argument the message names)
    (_DPO, (), dict(beta=0.0), V, "beta"), (_DPO, (), dict(beta="1"), T, "beta"),
    (_DPO, (), dict(loss_type="kto"), V, "loss_type"), (_DPO, (), dict(loss_type=3), T, "loss_type"),
    (_DPO, (), dict(loss_type=[]), T, "loss_type"), (_DPO, (), dict(loss_weights=2.0), T, "loss_weights"),
    (_DPO, (), dict(loss_type=["sigmoid", "ipo"], loss_weights=[1.0]), V, "loss_weights"),
    (_DPO, (), dict(loss_weights=["a"]), T, "loss_weights[0]"),
    (_DPO, (), dict(label_smoothing=1.5), V, "label_smoothing"),
    (_DPO, (), dict(loss_type="robust", label_smoothing=0.5), V, "label_smoothing"),
    (_DPO, (), dict(loss_type="exo_pair"), V, "label_smoothing"),
    (_DPO, (), dict(f_divergence_type="kl"), V, "f_divergence_type"),
    (_DPO, (), dict(f_divergence_type="forward_kl", loss_type="bco_pair"), V, "f_divergence_type"),
    (_DPO, (), dict(f_alpha_divergence_coef=None), T, "f_alpha_divergence_coef"),
    (_DPO, (), dict(discopop_tau=-1.0), V, "discopop_tau"), (_DPO, (), dict(ld_alpha=1.5), V, "ld_alpha"),
    (_DPO, (), dict(use_weighting=1), T, "use_weighting"), (_DPO, (), dict(reference_free="no"), T, "reference_free"),
    (_DPO, (), dict(use_weighting=True, loss_type="aot"), V, "use_weighting"),
    (_DPO, (), dict(use_weighting=True), V, "chosen_log_sum_sq_probs"),
    (_DPO, (), dict(use_weighting=True, chosen_log_sum_sq_probs=_S, rejected_log_sum_sq_probs=_T), V,
     "chosen_log_sum_sq_probs"),
    (_DPO, (), dict(reference_free=True), V, "reference_free"), (_DPO, (_T, _T), {}, V, "ref_chosen_logps"),
    (_DPO, (_T.long(), _T, _T, _T), {}, T, "policy_chosen_logps"),
    (_DPO, ([1.0], _T, _T, _T), {}, T, "policy_chosen_logps"),
    (_DPO, (_T[None], _T, _T, _T), {}, V, "policy_chosen_logps"),
    (_DPO, (_T, _T[:1], _T, _T[:1]), {}, V, "policy_rejected_logps"),
    (_DPO, (_T, _T, _T[:, :2], _T), {}, V, "ref_chosen_logps"), (_DPO, (_S, _S, _T, _S), {}, V, "ref_chosen_logps"),
    (_DPO, (_S, _S, _S, _S[:1]), {}, V, "ref_rejected_logps"),
    (_DPO, (_S, _S, _S, _S), dict(loss_type="ipo"), V, "policy_chosen_logps"),
    (_DPO, (_S, _S, _S, _S), dict(ld_alpha=0.5), V, "policy_chosen_logps"),
    (_DPO, (_S, _S, _S, _S), dict(chosen_mask=_M[:, 0]), V, "chosen_mask"),
    (_DPO, (_T[:0], _T[:0], _T[:0], _T[:0]), {}, V, "policy_chosen_logps"),
    (_DPO, (), dict(chosen_mask=_M[:, :2]), V, "chosen_mask"), (_DPO, (), dict(rejected_mask=[1]), T, "rejected_mask"),
    (_KTO, (), dict(loss_type="sigmoid"), V, "loss_type"), (_KTO, (), dict(beta=-1.0), V, "beta"),
    (_KTO, (), dict(desirable_weight=-1.0), V, "desirable_weight"),
    (_KTO, (), dict(undesirable_weight="x"), T, "undesirable_weight"),
    (_KTO, (_T, _T, _M[:, 0]), {}, V, "policy_kl_logps"), (_KTO, (_T, _T, _S, _T, _T), {}, T, "labels"),
    (_KTO, (_T, _T, _M, _T, _T), {}, V, "labels"), (_KTO, (_T, _S[:1], _M[:, 0], _T, _T), {}, V, "ref_logps"),
    (_KTO, (_T, _T, _M[:, 0], _T, _S[:1]), {}, V, "ref_kl_logps"),
    (_KTO, (), dict(mask=_M[:1]), V, "mask"), (_KTO, (), dict(kl_mask=_M[:, :1]), V, "kl_mask"),
    (_ORPO, (), dict(beta=-0.1), V, "beta"), (_ORPO, (), dict(nll_mask=_M[:1]), V, "nll_mask"),
    (_ORPO, (_S, _S), {}, V, "policy_chosen_logps"),
    (_CPO, (), dict(loss_type="dpo"), V, "loss_type"), (_CPO, (), dict(beta=0), V, "beta"),
    (_CPO, (), dict(label_smoothing=-0.1), V, "label_smoothing"),
    (_CPO, (), dict(loss_type="hinge", label_smoothing=0.1), V, "label_smoothing"),
    (_CPO, (), dict(cpo_alpha="1"), T, "cpo_alpha"), (_CPO, (), dict(simpo_gamma=float("nan")), V, "simpo_gamma"),
    (_CPO, (), dict(alpha=None), T, "alpha"), (_CPO, (_S, _S), {}, V, "policy_chosen_logps"),
    (_CPO, (_S, _S), dict(loss_type="simpo", cpo_alpha=0.0), V, "policy_chosen_logps"),
    (P.simpo_loss, (_T, _T), dict(simpo_gamma="0.5"), T, "simpo_gamma"),
]


@pytest.mark.parametrize("fn,args,kwargs,error,name", BAD, ids=[f"{i}-{b[4]}" for i, b in enumerate(BAD)])
def test_bad_arguments(fn, args, kwargs, error, name):
    with pytest.raises(error, match=name.replace("[", r"\[").replace("]", r"\]")):
        fn(*args, **kwargs)
