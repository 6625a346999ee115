"""fusedloss.objectives.linear: GRPO and the preference objectives from hidden states and LM heads, against the
same objectives on the whole logits (F.linear, then float64 log_softmax and gather): loss, every metric and its
dtype, the gradients of the policy's hidden states, weight and bias, none for the reference. float64 to 1e-10;
float32 and bfloat16 within tests/helpers.py's tolerances of a float64 reference that rounds the logits as the
model's F.linear does (log-probabilities are float32 from there on; the rounding of the logits is the model's).

Shapes: B = 3 sequences of T = 7 tokens (one fully masked, one of a single token, the third with trailing
padding), H = 16, V = 97 (odd: no tile divides it), and T = 1; the chunk budget is shrunk to 4 KiB so that every
call runs several chunks (5 rows of 97 float64 logits, 2 with a reference head beside). Every gradient is of
loss * 3.7 (a grad_output that is not 1).
"""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import fusedloss
import fusedloss.nn as FN
from fusedloss.objectives import grpo_loss, linear
from fusedloss.objectives import preference as P
from fusedloss.ops import _chunks
from helpers import DEVICE, AllocationRecorder, assert_matches

B, T, H, V = 3, 7, 16, 97
UPSTREAM = 3.7


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 4 << 10)


def _head(h=H, bias=True, scale=2.0):
    w = torch.randn(V, h, dtype=torch.float64, device=DEVICE) * (scale / h**0.5)
    return w, (torch.randn(V, dtype=torch.float64, device=DEVICE) * 0.5 if bias else None)


def _tokens(b=B, t=T):
    """Sequence 0 fully masked, sequence 1 a single token, the rest with two padded positions at the end."""
    tokens = torch.randint(0, V, (b, t), device=DEVICE)
    tokens[0] = -100
    if b > 1:
        tokens[1, 1:] = -100
    if b > 2 and t > 2:
        tokens[2:, -2:] = -100
    return tokens


def _whole_logits(x, w, b, tokens, dtype=torch.float64, logit_scale=1.0, softcap=None, temperature=1.0):
    """(log-probs, entropies) from the whole logits F.linear(x, w, b), then in float64; 0 where the token is
    ignored. A model in ``dtype`` has its logits rounded to it (then log-probabilities in float32): these are
    the logits F.linear gives at ``dtype``, differentiated as the float64 product (the rounding straight through)."""
    b64 = None if b is None else b.double()
    logits = F.linear(x.double(), w.double(), b64)
    if dtype != torch.float64:
        rounded = F.linear(x.detach().to(dtype), w.detach().to(dtype), None if b is None else b.detach().to(dtype))
        logits = logits + (rounded.double() - logits).detach()
    logits = logits * logit_scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    s = torch.log_softmax(logits / temperature, -1)
    counted = tokens != -100
    lp = torch.where(counted, s.gather(-1, tokens.clamp(min=0)[..., None])[..., 0], 0.0)
    return lp, torch.where(counted, -(s.exp() * s).sum(-1), 0.0)


def _leaf(t, dtype):
    return None if t is None else t.to(dtype).requires_grad_()


def _grads(loss, leaves):
    wanted = [t for t in leaves if t is not None]
    return torch.autograd.grad(loss * UPSTREAM, wanted)


def _compare(result, expected, grads, expected_grads, dtype):
    assert result.metrics.keys() == expected.metrics.keys()
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    assert result.loss.dtype == compute
    assert_matches(result.loss, expected.loss, dtype, "loss")
    for name, value in result.metrics.items():
        assert value.dtype == (expected.metrics[name].dtype if dtype == torch.float64 else torch.float32), name
        assert not value.requires_grad, name
        assert_matches(value, expected.metrics[name], dtype, name)
    for i, (got, want) in enumerate(zip(grads, expected_grads)):
        assert got.dtype == dtype, i
        assert_matches(got, want, dtype, f"grad {i}")


# ---- GRPO ---------------------------------------------------------------------------------------------------

def _grpo_inputs(dtype, b=B, t=T, ref_head=False):
    x = torch.randn(b, t, H, dtype=torch.float64, device=DEVICE)
    w, bias = _head()
    tokens = _tokens(b, t)
    mask = (tokens != -100).long()
    lp, _ = _whole_logits(x, w, bias, tokens)
    data = dict(x=_leaf(x, dtype), w=_leaf(w, dtype), b=_leaf(bias, dtype), tokens=tokens, mask=mask,
                old=(lp + 0.3 * torch.randn_like(lp)) * mask, advantages=torch.randn(b, dtype=torch.float64))
    if ref_head:
        ref_x, (ref_w, ref_b) = torch.randn(b, t, 12, dtype=torch.float64), _head(12)
        data.update(ref_x=_leaf(ref_x, dtype), ref_w=_leaf(ref_w, dtype), ref_b=_leaf(ref_b, dtype))
    else:
        data["ref"] = (lp + 0.2 * torch.randn_like(lp)) * mask
    return data


def _run_grpo(d, backend="triton", head_options=None, **options):
    """linear_grpo_loss on ``d`` and the gradients of loss * 3.7 for the hidden states, weight and bias (none
    reaches a reference head)."""
    head_options = head_options or {}
    ref = dict(ref_hidden=d["ref_x"], ref_weight=d["ref_w"], ref_bias=d["ref_b"]) if "ref_x" in d else \
        dict(ref_per_token_logps=d["ref"] if options.get("beta") else None)
    with fusedloss.backend(backend):
        result = linear.linear_grpo_loss(d["x"], d["w"], d["tokens"], d["old"], d["advantages"], d["mask"],
                                         bias=d["b"], **ref, **head_options, **options)
    leaves = [d[k] for k in ("x", "w", "b", "ref_x", "ref_w", "ref_b") if k in d]
    grads = torch.autograd.grad(result.loss * UPSTREAM, leaves, allow_unused=True)
    assert grads[3:] == (None,) * (len(leaves) - 3), "no gradient for the reference"
    return result, grads[:3]


def _reference_grpo(d, head_options=None, compute_entropy=True, **options):
    """grpo_loss on the whole logits' log-probabilities, float64, from the same (rounded) inputs."""
    head_options = dict(head_options or {})
    head_options.pop("options", None)
    leaves = [_leaf(d[k].detach(), torch.float64) if d[k] is not None else None for k in ("x", "w", "b")]
    dtype = d["x"].dtype
    lp, ent = _whole_logits(*leaves, d["tokens"], dtype, **head_options)
    ref = d.get("ref")
    if "ref_x" in d:
        ref, _ = _whole_logits(d["ref_x"].detach(), d["ref_w"].detach(), d["ref_b"].detach(), d["tokens"], dtype,
                               **head_options)
    needs = compute_entropy or options.get("top_entropy_quantile", 1.0) < 1 or options.get("entropy_coef", 0.0)
    expected = grpo_loss(lp, d["old"], d["advantages"], d["mask"], entropies=ent if needs else None,
                         ref_per_token_logps=ref if options.get("beta") else None, **options)
    return expected, _grads(expected.loss, leaves)


def _check_grpo(dtype=torch.float64, d=None, head_options=None, **options):
    d = d or _grpo_inputs(dtype)
    result, grads = _run_grpo(d, head_options=head_options, **options)
    expected, expected_grads = _reference_grpo(d, head_options, **options)
    _compare(result, expected, grads, expected_grads, dtype)
    return result, grads


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo", "luspo", "cispo", "sapo", "vespo"])
def test_grpo_loss_types(loss_type):
    """Every loss type at the token level (vespo: two passes, its sequence weight), with the k3 KL term."""
    _check_grpo(loss_type=loss_type, beta=0.04, max_completion_length=T)


GRPO_OPTIONS = {  # one sweep unless noted
    "sequence-level (two passes)": dict(importance_sampling_level="sequence", loss_type="grpo"),
    "delta, no bias correction": dict(delta=1.2, epsilon_high=0.28, beta=0.1, use_bias_correction_kl=False),
    "entropy quantile (two passes)": dict(top_entropy_quantile=0.5),
    "entropy threshold given": dict(top_entropy_quantile=0.5, entropy_threshold=2.0),
    "entropy threshold tensor + bonus (two passes)": dict(top_entropy_quantile=0.5,
                                                           entropy_threshold=torch.tensor(2.0, dtype=torch.float64),
                                                           entropy_coef=0.05),
    "entropy bonus": dict(entropy_coef=0.05, gradient_accumulation_steps=2),
    "off-policy mask (two passes)": dict(off_policy_mask_threshold=0.02, loss_type="bnpo"),
    "normaliser numbers": dict(num_items_in_batch=40, num_processes=2, gradient_accumulation_steps=4,
                               steps_per_generation=2),
    "normaliser tensor": dict(num_items_in_batch=torch.tensor(37.0, dtype=torch.float64)),
    "no old log-probs": dict(loss_type="grpo", beta=0.02),
    "no entropy": dict(compute_entropy=False, loss_type="sapo"),
}


@pytest.mark.parametrize("name", list(GRPO_OPTIONS))
def test_grpo_options(name):
    options = dict(GRPO_OPTIONS[name])
    d = _grpo_inputs(torch.float64)
    if name == "no old log-probs":
        d["old"] = None
    _check_grpo(d=d, **options)


@pytest.mark.parametrize("level, shape", [("token", (B, T)), ("token", (B, 1)), ("sequence", (B, 1))])
def test_grpo_vllm_ratio_and_aux_loss(level, shape):
    d = _grpo_inputs(torch.float64)
    ratio = torch.rand(shape, dtype=torch.float64) + 0.5
    aux = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    options = dict(importance_sampling_ratio=ratio, aux_loss=aux, router_aux_loss_coef=0.01,
                   importance_sampling_level=level, gradient_accumulation_steps=2)
    _check_grpo(d=d, **options)
    result, _ = _run_grpo(d, **options)
    assert torch.autograd.grad(result.loss, aux)[0] == 0.01 / 2
    assert result.metrics["aux_loss"] == 0.7


def test_grpo_reference_head_in_the_sweep():
    """The reference's log-probabilities from its own hidden states (H_ref = 12) and head (one GEMM per chunk,
    no graph; in the policy's sweep at the token level): no gradient reaches them."""
    d = _grpo_inputs(torch.float64, ref_head=True)
    for options in (dict(beta=0.1), dict(beta=0.1, importance_sampling_level="sequence")):
        _check_grpo(d=d, **options)


def test_grpo_head_transforms():
    """logit_scale, softcap and temperature as linear_log_probs takes them; a chunk size in options."""
    _check_grpo(head_options=dict(logit_scale=1.5, softcap=3.0, temperature=0.7), beta=0.04)
    _check_grpo(head_options=dict(options=FN.LinearCrossEntropyOptions(batch_chunk_size=4)), loss_type="grpo")


class _GEMMCounter(TorchDispatchMode):
    GEMMS = (torch.ops.aten.mm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.default,
             torch.ops.aten.addmm.out, torch.ops.aten.addmm_.default)

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.GEMMS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("ref_head", [False, True])
def test_grpo_gemms_per_chunk(level, ref_head):
    """Forward and backward: token-level options 3 GEMMs per chunk for the policy (logits, dX, dW, the chunk
    holding both heads' logits), 1 for the reference head; sequence-level ones 4 for the policy
    (linear_log_probs), 1 for the reference in a pass of its own."""
    d = _grpo_inputs(torch.float64, ref_head=ref_head)

    def chunks(columns):
        count = -(-B * T // _chunks.chunk_rows(B * T, columns, 8, 0))
        assert count > 1
        return count

    if level == "token":
        expected = 4 * chunks(2 * V) if ref_head else 3 * chunks(V)
    else:
        expected = 4 * chunks(V) + (chunks(V) if ref_head else 0)
    with _GEMMCounter() as counter:
        _run_grpo(d, importance_sampling_level=level, loss_type="grpo", beta=0.04)
    assert counter.count == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_grpo_low_precision(dtype, level):
    """Log-probabilities, loss and metrics in float32 from 16-bit heads, gradients in the head's dtype."""
    _check_grpo(dtype, importance_sampling_level=level, beta=0.04, loss_type="grpo")


def test_grpo_length_one_completions():
    """T = 1: every sequence a single token (one of them masked)."""
    _check_grpo(d=_grpo_inputs(torch.float64, b=2, t=1), beta=0.04, loss_type="grpo")
    _check_grpo(d=_grpo_inputs(torch.float64, b=2, t=1), importance_sampling_level="sequence")


def test_grpo_grad_output_scales_exactly():
    """The backward multiplies the forward's gradients by grad_output: loss * 3.7 gives 3.7 x the gradients of
    the loss, bit for bit, and a second backward through the graph recomputes them."""
    d = _grpo_inputs(torch.float64)
    leaves = (d["x"], d["w"], d["b"])
    with fusedloss.backend("triton"):
        loss = linear.linear_grpo_loss(d["x"], d["w"], d["tokens"], d["old"], d["advantages"], d["mask"],
                                       bias=d["b"]).loss
    once = torch.autograd.grad(loss, leaves, retain_graph=True)
    scaled = torch.autograd.grad(loss * UPSTREAM, leaves)
    for a, b in zip(once, scaled):
        assert torch.equal(a * UPSTREAM, b)


def test_grpo_no_gradient_and_torch_backend():
    """Under no_grad: the loss alone (one GEMM per chunk); the torch backend: the whole-logits formula."""
    d = _grpo_inputs(torch.float64)
    expected, _ = _reference_grpo(d, beta=0.04)
    with torch.no_grad(), fusedloss.backend("triton"):
        result = linear.linear_grpo_loss(d["x"], d["w"], d["tokens"], d["old"], d["advantages"], d["mask"],
                                         bias=d["b"], ref_per_token_logps=d["ref"], beta=0.04)
    assert_matches(result.loss, expected.loss, torch.float64, "loss")
    result, grads = _run_grpo(d, backend="torch", beta=0.04)
    _compare(result, expected, grads, _reference_grpo(d, beta=0.04)[1], torch.float64)


def test_grpo_double_backward():
    """create_graph=True differentiates the whole-logits formula: a gradient penalty matches it."""
    d = _grpo_inputs(torch.float64)
    with fusedloss.backend("triton"):
        loss = linear.linear_grpo_loss(d["x"], d["w"], d["tokens"], d["old"], d["advantages"], d["mask"],
                                       bias=d["b"]).loss
    gx, = torch.autograd.grad(loss, d["x"], create_graph=True)
    penalty, = torch.autograd.grad(gx.square().sum(), d["w"])
    leaves = [_leaf(d[k].detach(), torch.float64) for k in ("x", "w", "b")]
    lp, ent = _whole_logits(*leaves, d["tokens"])
    ref_loss = grpo_loss(lp, d["old"], d["advantages"], d["mask"], entropies=ent).loss
    ref_gx, = torch.autograd.grad(ref_loss, leaves[0], create_graph=True)
    assert_matches(penalty, torch.autograd.grad(ref_gx.square().sum(), leaves[1])[0], torch.float64, "penalty")


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_grpo_logits_never_whole(level):
    """No tensor of B x T x V elements, nothing larger than one chunk of logits but the weight's gradient."""
    d = _grpo_inputs(torch.float32)
    chunk = _chunks.chunk_rows(B * T, V, 4, 0)
    assert 1 < chunk < B * T
    with AllocationRecorder() as recorder:
        _run_grpo(d, importance_sampling_level=level, loss_type="grpo")
    assert max(s for s in recorder.sizes if s != V * H) <= chunk * _chunks.padded_columns(V) < B * T * V


@pytest.mark.parametrize("level, ref_head, backend", [("token", True, "aot_eager"), ("token", False, "inductor"),
                                                     ("sequence", False, "aot_eager")])
def test_grpo_compile_fullgraph(level, ref_head, backend):
    """torch.compile(fullgraph=True): the registered op (token level; inductor checks its fake's output sizes
    against the real op's) or linear_log_probs's (sequence level) trace; values and gradients as eager."""
    d = _grpo_inputs(torch.float32, ref_head=ref_head)
    ref = dict(ref_hidden=d["ref_x"], ref_weight=d["ref_w"]) if ref_head else dict(ref_per_token_logps=d["ref"])

    def fn(x, w, b):
        r = linear.linear_grpo_loss(x, w, d["tokens"], d["old"], d["advantages"], d["mask"], bias=b, beta=0.04,
                                    importance_sampling_level=level, **ref)
        return r.loss * UPSTREAM, r.metrics

    torch._dynamo.reset()
    with fusedloss.backend("triton"):
        eager = fn(d["x"], d["w"], d["b"])
        traced = torch.compile(fn, fullgraph=True, backend=backend)(d["x"], d["w"], d["b"])
    torch.testing.assert_close(traced, eager, rtol=1e-6, atol=0)
    leaves = (d["x"], d["w"], d["b"])
    for a, b in zip(torch.autograd.grad(traced[0], leaves), torch.autograd.grad(eager[0], leaves)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_grpo_func_grad():
    """torch.func.grad through the op (the scaffold's functorch path: the whole-logits formula's vjp)."""
    d = _grpo_inputs(torch.float64)
    with fusedloss.backend("triton"):
        grad = torch.func.grad(lambda w: linear.linear_grpo_loss(
            d["x"].detach(), w, d["tokens"], d["old"], d["advantages"], d["mask"]).loss)(d["w"].detach())
        loss = linear.linear_grpo_loss(d["x"], d["w"], d["tokens"], d["old"], d["advantages"], d["mask"]).loss
    assert_matches(grad, torch.autograd.grad(loss, d["w"])[0], torch.float64, "weight grad")


@pytest.mark.parametrize("override", [
    dict(loss_type="ppo"), dict(beta=0.1), dict(epsilon=-1), dict(loss_type="dr_grpo"), dict(delta=0),
    dict(delta=0.9), dict(beta=-0.1), dict(epsilon=1.0), dict(router_aux_loss_coef=-1.0),
    dict(advantages=torch.zeros(B, 2)), dict(num_processes=0), dict(use_bias_correction_kl=1)])
def test_grpo_bad_arguments_as_grpo_loss(override):
    """The exception grpo_loss raises for the same arguments, before any sweep."""
    d = _grpo_inputs(torch.float32)
    args = dict(old=d["old"], advantages=d["advantages"], mask=d["mask"])
    options = {k: v for k, v in override.items() if k not in args}
    args.update({k: v for k, v in override.items() if k in args})
    with pytest.raises(Exception) as theirs:
        grpo_loss(d["old"].float(), args["old"], args["advantages"], args["mask"], **options)
    with pytest.raises(theirs.type), fusedloss.backend("triton"):
        linear.linear_grpo_loss(d["x"], d["w"], d["tokens"], args["old"], args["advantages"], args["mask"],
                                **options)


@pytest.mark.parametrize("override", [dict(ref_weight=torch.zeros(V, H)), dict(
    ref_hidden=torch.zeros(B, T, H), ref_weight=torch.zeros(V, H), ref_per_token_logps=torch.zeros(B, T)),
    dict(ref_hidden=torch.zeros(B, T, H), ref_weight=torch.zeros(V + 1, H))])
def test_grpo_bad_reference(override):
    d = _grpo_inputs(torch.float32)
    with pytest.raises(ValueError), fusedloss.backend("triton"):
        linear.linear_grpo_loss(d["x"], d["w"], d["tokens"], d["old"], d["advantages"], d["mask"], **override)


# ---- the preference objectives ------------------------------------------------------------------------------

def _pair(dtype, empty=True):
    """Chosen and rejected of B x T tokens (as _tokens); ``empty``: an empty chosen completion against a
    non-empty rejected one (ORPO's and CPO's token means are NaN there, as TRL's: not ``empty`` for those)."""
    x = {k: _leaf(torch.randn(B, T, H, dtype=torch.float64), dtype) for k in ("chosen", "rejected")}
    ref = {k: torch.randn(B, T, H, dtype=torch.float64).to(dtype) for k in ("chosen", "rejected")}
    tokens = {k: _tokens() for k in ("chosen", "rejected")}
    tokens["rejected"][0, :3] = torch.randint(0, V, (3,))
    if not empty:
        tokens["chosen"][0, :2] = torch.randint(0, V, (2,))
    w, b = _head()
    ref_w = _head()[0].to(dtype)
    return x, ref, tokens, _leaf(w, dtype), _leaf(b, dtype), ref_w


def _per_token(x, w, b, tokens, dtype):
    lp, _ = _whole_logits(x, w, b, tokens, dtype)
    return lp, tokens != -100


CASES = {
    "dpo sigmoid, reference head": ("dpo", dict(beta=0.1)),
    "dpo ipo + sft, reference head": ("dpo", dict(loss_type=["ipo", "sft"], loss_weights=[1.0, 0.5])),
    "dpo reference-free robust": ("dpo", dict(reference_free=True, loss_type="robust", label_smoothing=0.1)),
    "kto": ("kto", dict(beta=0.2)),
    "orpo": ("orpo", dict(beta=0.3)),
    "cpo": ("cpo", dict(cpo_alpha=0.5, loss_type="hinge")),
    "simpo": ("simpo", dict(simpo_gamma=0.4, beta=2.0)),
}


def _preference(kind, x, ref, tokens, w, b, ref_w, options):
    """linear_<kind>_loss on the policy's head, the reference's (DPO, KTO) from its hidden states and head."""
    with fusedloss.backend("triton"):
        if kind == "kto":
            labels = torch.tensor([True, False, True])
            return linear.linear_kto_loss(x["chosen"], w, tokens["chosen"], labels, x["rejected"],
                                          tokens["rejected"], bias=b, ref_hidden=ref["chosen"],
                                          ref_kl_hidden=ref["rejected"], ref_weight=ref_w, **options)
        fn = getattr(linear, f"linear_{kind}_loss")
        heads = {} if kind != "dpo" or options.get("reference_free") else dict(
            ref_chosen_hidden=ref["chosen"], ref_rejected_hidden=ref["rejected"], ref_weight=ref_w)
        return fn(x["chosen"], x["rejected"], w, tokens["chosen"], tokens["rejected"], bias=b, **heads, **options)


def _preference_reference(kind, x, ref, tokens, w, b, ref_w, options):
    leaves = {k: _leaf(v.detach(), torch.float64) for k, v in x.items()}
    w64, b64 = _leaf(w.detach(), torch.float64), _leaf(b.detach(), torch.float64)
    dtype = w.dtype
    c, cm = _per_token(leaves["chosen"], w64, b64, tokens["chosen"], dtype)
    r, rm = _per_token(leaves["rejected"], w64, b64, tokens["rejected"], dtype)
    rc, rr = (_per_token(ref[k].detach(), ref_w.detach(), None, tokens[k], dtype)[0] for k in ("chosen", "rejected"))
    if kind == "kto":
        kl, _ = _per_token(x["rejected"].detach(), w64.detach(), b64.detach(), tokens["rejected"], dtype)
        result = P.kto_loss(c, rc, torch.tensor([True, False, True]), kl, rr, mask=cm, kl_mask=rm, **options)
        wanted = (leaves["chosen"], w64, b64)
    else:
        refs = (rc, rr) if kind == "dpo" and not options.get("reference_free") else ()
        fn = {"dpo": P.dpo_loss, "orpo": P.orpo_loss, "cpo": P.cpo_loss, "simpo": P.simpo_loss}[kind]
        result = fn(c, r, *refs, chosen_mask=cm, rejected_mask=rm, **options)
        wanted = (leaves["chosen"], leaves["rejected"], w64, b64)
    return result, _grads(result.loss, wanted)


@pytest.mark.parametrize("name", list(CASES))
def test_preference_objectives(name):
    kind, options = CASES[name]
    x, ref, tokens, w, b, ref_w = _pair(torch.float64, empty=kind in ("dpo", "kto"))
    result = _preference(kind, x, ref, tokens, w, b, ref_w, options)
    wanted = (x["chosen"], w, b) if kind == "kto" else (x["chosen"], x["rejected"], w, b)
    expected, expected_grads = _preference_reference(kind, x, ref, tokens, w, b, ref_w, options)
    _compare(result, expected, _grads(result.loss, wanted), expected_grads, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_preference_low_precision(dtype):
    x, ref, tokens, w, b, ref_w = _pair(dtype)
    ref_w.requires_grad_()
    ref = {k: v.requires_grad_() for k, v in ref.items()}
    result = _preference("dpo", x, ref, tokens, w, b, ref_w, dict(beta=0.1))
    grads = torch.autograd.grad(result.loss * UPSTREAM, (x["chosen"], x["rejected"], w, b, ref_w, *ref.values()),
                                allow_unused=True)
    assert grads[4:] == (None, None, None), "no gradient for the reference"
    expected, expected_grads = _preference_reference("dpo", x, ref, tokens, w, b, ref_w, dict(beta=0.1))
    _compare(result, expected, grads[:4], expected_grads, dtype)


def test_preference_logits_never_whole():
    """No tensor of B x T x V: at most one chunk of logits (the policy's chosen and rejected rows run as one
    linear_log_probs call, chunked as 2 B T rows; the reference's as B T each), and the head's gradient."""
    x, ref, tokens, w, b, ref_w = _pair(torch.float32)
    chunk = max(_chunks.chunk_rows(2 * B * T, V, 4, 0), _chunks.chunk_rows(B * T, V, 4, 0))
    with fusedloss.backend("triton"), AllocationRecorder() as recorder:
        result = _preference("dpo", x, ref, tokens, w, b, ref_w, dict(beta=0.1))
        torch.autograd.grad(result.loss, (x["chosen"], x["rejected"], w, b))
    assert max(s for s in recorder.sizes if s != V * H) <= chunk * _chunks.padded_columns(V) < B * T * V


def test_the_op_imports_before_the_objectives():
    """fusedloss.ops.linear_grpo imported first: it imports grpo.py's formulas, whose package imports linear.py,
    which imports the op back (it reads the op's names only when called): no circular-import failure."""
    code = ("import fusedloss.ops.linear_grpo as op, fusedloss.objectives.linear as public; "
            "assert public._op is op and op.FAMILY.n_inputs == 14")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)



def test_grpo_out_of_range_tokens_and_empty_batch():
    """A token outside [0, V) on CPU tensors: IndexError naming tokens (the fused single pass once gave a NaN
    loss), as linear_log_probs; an empty batch: grpo_loss's ValueError, not a reduction's RuntimeError."""
    d = _grpo_inputs(torch.float32)
    tokens = d["tokens"].clone()
    tokens[1, 1] = V + 3
    with pytest.raises(IndexError, match="tokens holds"), fusedloss.backend("triton"):
        linear.linear_grpo_loss(d["x"], d["w"], tokens, d["old"], d["advantages"], d["mask"])
    with pytest.raises(ValueError, match="at least one sequence"):
        linear.linear_grpo_loss(d["x"][:0], d["w"], d["tokens"][:0], d["old"][:0], d["advantages"][:0],
                                d["mask"][:0])
    with pytest.raises(ValueError, match="at least one sequence"):
        grpo_loss(d["old"][:0], d["old"][:0], d["advantages"][:0], d["mask"][:0])


def test_grpo_loss_dtype_with_a_float64_item_count():
    """num_items_in_batch as a float64 tensor: the loss stays in the compute dtype (float32 here), eager and
    compiled with inductor (the fake said float32 while the op returned float64, which inductor then read as
    float32 bits: a wrong loss without an error)."""
    d = _grpo_inputs(torch.float32)
    items = torch.tensor(float(d["mask"].sum()), dtype=torch.float64)

    def step(x):
        return linear.linear_grpo_loss(x, d["w"], d["tokens"], d["old"], d["advantages"], d["mask"],
                                       num_items_in_batch=items).loss

    with fusedloss.backend("triton"):
        eager = step(d["x"])
        compiled = torch.compile(step, fullgraph=True)(d["x"])
    assert eager.dtype == compiled.dtype == torch.float32
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["dpo", "kto", "orpo", "cpo", "simpo"])
def test_preference_errors_name_the_callers_arguments(kind):
    """A preference form's errors name the function called and its arguments, not the inner steps': an
    out-of-range token as rejected_tokens / kl_tokens (linear_log_probs calls it ``tokens``), a head of the
    wrong width as ref_weight, an unknown keyword as linear_<kind>_loss()'s, a bad option as the objective's."""
    x, ref, tokens, w, b, ref_w = _pair(torch.float32)
    name = f"linear_{kind}_loss"
    bad = dict(tokens)
    bad["rejected"] = bad["rejected"].clone()
    bad["rejected"][1, 2] = V + 3
    which = "kl_tokens" if kind == "kto" else "rejected_tokens"
    with pytest.raises(IndexError, match=f"^{name}: {which} holds {V + 3}, outside"):
        _preference(kind, x, ref, bad, w, b, ref_w, {})
    with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword argument 'bogus'"):
        _preference(kind, x, ref, tokens, w, b, ref_w, dict(bogus=1))
    with pytest.raises(ValueError, match=f"^{name}: beta must be"):
        _preference(kind, x, ref, tokens, w, b, ref_w, dict(beta=-1.0))
    if kind in ("dpo", "kto"):
        with pytest.raises(RuntimeError, match=f"^{name}: ref_weight of shape .* for ref_"):
            _preference(kind, x, ref, tokens, w, b, ref_w[:, :2], {})


def test_masks_that_select_ignored_tokens_raise():
    """A mask selecting a position whose token is ignore_index (log-probability 0 there) raises ValueError naming
    the mask and the tokens (GRPO's completion_mask, a preference pair's masks), on CPU tensors where the check
    is free; the default masks (the tokens not ignored) never do."""
    x, ref, tokens, w, b, ref_w = _pair(torch.float32)
    full = torch.ones(B, T, dtype=torch.bool)
    assert (tokens["rejected"] == -100).any()
    with pytest.raises(ValueError, match="^linear_dpo_loss: rejected_mask selects .* rejected_tokens are ignore_index"):
        _preference("dpo", x, ref, tokens, w, b, ref_w, dict(rejected_mask=full))
    old = torch.zeros(B, T)
    with pytest.raises(ValueError, match="completion_mask selects .* tokens are ignore_index"):
        linear.linear_grpo_loss(x["rejected"], w, tokens["rejected"], old, torch.ones(B), full)
    fine = tokens["rejected"] != -100
    assert torch.isfinite(linear.linear_grpo_loss(x["rejected"], w, tokens["rejected"], old, torch.ones(B),
                                                  fine).loss)


def test_reference_heads_and_grpo_errors_named_for_the_caller():
    """A reference head with another class count raises in every form (the tokens index both heads); ORPO's
    nll_mask is checked like the other masks; linear_grpo_loss's errors start with its name and call the
    reference head's tensors by their names."""
    x, ref, tokens, w, b, ref_w = _pair(torch.float32)
    wide = torch.randn(V + 7, H)
    with pytest.raises(ValueError, match="^linear_dpo_loss: ref_weight must have the policy's"):
        _preference("dpo", x, ref, tokens, w, b, wide, {})
    with pytest.raises(ValueError, match="^linear_kto_loss: ref_weight must have the policy's"):
        _preference("kto", x, ref, tokens, w, b, wide, {})
    with pytest.raises(ValueError, match="^linear_orpo_loss: nll_mask selects .* chosen_tokens"):
        _preference("orpo", x, ref, tokens, w, b, ref_w, dict(nll_mask=torch.ones(B, T, dtype=torch.bool)))
    y = tokens["rejected"]
    args = (x["rejected"], w, y, torch.zeros(B, T), torch.ones(B), y != -100)
    with pytest.raises(RuntimeError, match=r"^linear_grpo_loss: ref_weight of shape .* for ref_hidden"):
        linear.linear_grpo_loss(*args, beta=0.1, ref_hidden=x["chosen"].detach(), ref_weight=ref_w[:, :2])
    with pytest.raises(ValueError, match="^linear_grpo_loss: ref_weight must have the policy's"):
        linear.linear_grpo_loss(*args, beta=0.1, ref_hidden=x["chosen"].detach(), ref_weight=wide)
    with pytest.raises(IndexError, match="^linear_grpo_loss: tokens holds"):
        linear.linear_grpo_loss(args[0], w, y + V, *args[3:])


def test_policy_pair_is_one_linear_log_probs_call(monkeypatch):
    """The policy's chosen and rejected rows run as one linear_log_probs call (one dW, one accumulator) where they
    can (plain tensors alike in dtype and device), as two otherwise (int32 rejected tokens here), with the same
    loss and gradients."""
    calls = []
    original = linear.FL.linear_log_probs

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(linear.FL, "linear_log_probs", counting)
    x, ref, tokens, w, b, ref_w = _pair(torch.float64)
    results = []
    for rejected_dtype in (torch.int64, torch.int32):
        calls.clear()
        pair = dict(tokens, rejected=tokens["rejected"].to(rejected_dtype))
        result = _preference("dpo", x, ref, pair, w, b, ref_w, dict(beta=0.1, reference_free=True))
        results.append((result.loss, *_grads(result.loss, (x["chosen"], x["rejected"], w, b))))
        assert calls == ([(2 * B * T, H)] if rejected_dtype == torch.int64 else [(B, T, H), (B, T, H)]), calls
    for joint, separate in zip(*results):
        torch.testing.assert_close(joint, separate, rtol=1e-12, atol=1e-12)
