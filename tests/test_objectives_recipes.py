"""README's "Preference and RL objectives" steps, run as written on a tiny Llama.

The README is the source: this test reads the section's ```python blocks and executes them, in order, in one
namespace holding what the section says it assumes (``policy``, ``reference``, ``input_ids``, ``attention_mask``,
``labels``, GRPO's ``old_logps`` and ``advantages``, KTO's ``desirable`` and KL pairs). Every result the blocks
make (``grpo`` and ``grpo_from_logps``, ``dpo``..., ``gkd`` and ``gkd_from_logits``) is then checked against the
same objective on the model's own full logits (``model(input_ids).logits``, log_softmax, gather; GKD against
TRL's ``GKDTrainer.generalized_jsd_loss``): the loss, every metric, and the gradient of every parameter of the
policy. The steps run in float32; each value is within tests/helpers.py's float32 tolerance of the full-logits
objective on float64 copies of the models, or, where float32 itself is that far (a reward is beta times the
difference of two sums of about 40 nats, each rounded by float32), no further from it than twice the full-logits
objective in float32, plus four float32 ulps of the terms it is made of. Both backends: torch (the
whole-logits formulas) and triton (the chunked kernels, through the interpreter on the CPU, with chunks of a
few rows so that every call runs several).

Data: 4 sequences of 12 tokens, a 4-token prompt, a chosen and a rejected completion shortened by right padding
(3 and 1 tokens); V = 97. About 20 s on one core (the interpreter's run most of it).
"""
import copy
import os
import re

import pytest
import torch

import fusedloss
from fusedloss.objectives import dpo_loss, grpo_loss, kto_loss, orpo_loss
from fusedloss.ops import _chunks
from helpers import _scale, assert_matches, max_error

transformers = pytest.importorskip("transformers")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
GKDTrainer = pytest.importorskip("trl.experimental.gkd.gkd_trainer").GKDTrainer

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
SECTION = "## Preference and RL objectives"
B, L, PROMPT, V = 4, 12, 4, 97
F32 = torch.float32


def readme_steps():
    """The section's ```python blocks, in order."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end if end >= 0 else None], re.S)


def _models():
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    policy = transformers.LlamaForCausalLM(config).float()
    reference = copy.deepcopy(policy)
    with torch.no_grad():  # a reference that differs from the policy: nonzero log-ratios and KL
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, reference


def _data():
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, V, (B, L), generator=g)
    attention_mask = torch.ones(B, L, dtype=torch.long)
    attention_mask[1, -3:] = 0  # a shorter completion (a chosen one), right padding
    attention_mask[3, -1:] = 0  # and a rejected one
    prompt = torch.arange(L) < PROMPT

    def labels_of(ids, attn):
        return ids.masked_fill(prompt | (attn == 0), -100)

    # KTO's KL pairs, as TRL builds them: each prompt with the next example's completion
    kl_ids = torch.where(prompt, input_ids, input_ids.roll(1, 0))
    kl_attention_mask = torch.where(prompt, attention_mask, attention_mask.roll(1, 0))
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels_of(input_ids, attention_mask),
                kl_ids=kl_ids, kl_attention_mask=kl_attention_mask, kl_labels=labels_of(kl_ids, kl_attention_mask),
                advantages=torch.randn(B, generator=g), desirable=torch.tensor([True, False, False, True]),
                noise=torch.randn(B, L - 1, generator=g))


def _full_logits_log_probs(model, ids, attention_mask, tokens):
    """(log-probs, entropies, logits) of ``tokens`` from the model's own full logits; 0 where tokens is -100."""
    logits = model(ids, attention_mask=attention_mask).logits[:, :-1]
    s = torch.log_softmax(logits, -1)
    counted = tokens != -100
    lp = torch.where(counted, s.gather(-1, tokens.clamp(min=0)[..., None])[..., 0], 0.0)
    return lp, torch.where(counted, -(s.exp() * s).sum(-1), 0.0), logits


def _expected(policy, reference, d, old_logps):
    """Each step's objective on the full logits (the same options as the README's steps), and the magnitude of
    the terms each one's loss and metrics are made of (``_close``'s ulp): the per-token log-probabilities and
    entropies for GRPO, beta times the sequences' sums for DPO and KTO, the sequences' averages for ORPO."""
    tokens = d["labels"][:, 1:]
    mask = tokens != -100
    lp, ent, logits = _full_logits_log_probs(policy, d["input_ids"], d["attention_mask"], tokens)
    with torch.no_grad():
        ref_lp, _, ref_logits = _full_logits_log_probs(reference, d["input_ids"], d["attention_mask"], tokens)
        kl_tokens = d["kl_labels"][:, 1:]
        kl_lp = _full_logits_log_probs(policy, d["kl_ids"], d["kl_attention_mask"], kl_tokens)[0]
        ref_kl_lp = _full_logits_log_probs(reference, d["kl_ids"], d["kl_attention_mask"], kl_tokens)[0]
    seq = d["input_ids"][:, 1:].masked_fill(d["attention_mask"][:, 1:] == 0, -100)
    seq_lp_c = _full_logits_log_probs(policy, d["input_ids"], d["attention_mask"], seq)[0].chunk(2)[0]
    (lp_c, lp_r), (ref_c, ref_r), (m_c, m_r) = lp.chunk(2), ref_lp.chunk(2), mask.chunk(2)
    sums = torch.cat([lp, ref_lp, kl_lp, ref_kl_lp]).detach().abs().sum(-1)
    scales = {"grpo": float(torch.cat([lp, ent]).detach().abs().max()), "dpo": 0.1 * float(sums.max()),
              "kto": 0.1 * float(sums.max()), "orpo": float((sums / mask.sum(-1).clamp(min=1).repeat(4)).max()),
              "gkd": 0.0}
    return scales, {
        "grpo": grpo_loss(lp, old_logps, d["advantages"], mask, ref_per_token_logps=ref_lp, entropies=ent,
                          beta=0.04, epsilon_high=0.28),
        "dpo": dpo_loss(lp_c, lp_r, ref_c, ref_r, chosen_mask=m_c, rejected_mask=m_r, beta=0.1),
        "kto": kto_loss(lp, ref_lp, d["desirable"], kl_lp, ref_kl_lp, mask=mask, kl_mask=kl_tokens != -100,
                        beta=0.1),
        "orpo": orpo_loss(seq_lp_c, lp_r, chosen_mask=m_c, rejected_mask=m_r, nll_mask=seq.chunk(2)[0] != -100,
                          beta=0.1),
        "gkd": GKDTrainer.generalized_jsd_loss(logits, ref_logits, tokens, beta=0.5),
    }


def _close(got, want32, want64, what, terms=0.0):
    """``got`` (float32) within float32's tolerance of the float64 objective, or no further from it than twice the
    float32 full-logits objective, plus four float32 ulps of the larger of its value and ``terms`` (the magnitude
    of what it is computed from)."""
    try:
        assert_matches(got, want64, F32, what)
    except AssertionError:
        ours, theirs = max_error(got, want64), max_error(want32, want64)
        ulp = 4 * torch.finfo(F32).eps * max(_scale(want64.detach()), terms)
        assert ours <= 2 * theirs + ulp, f"{what}: error {ours:.3g}, the full logits' in float32 {theirs:.3g}"


def _loss(result):
    return result.loss if hasattr(result, "loss") else result


def _parameter_grads(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def test_readme_has_the_steps():
    steps = readme_steps()
    assert len(steps) == 6 and steps[0].startswith("import torch")
    made = {name for step in steps for name in re.findall(r"^(\w+) = ", step, re.M)}
    for name in ("grpo", "dpo", "kto", "orpo", "gkd"):
        assert {name, name + ("_from_logits" if name == "gkd" else "_from_logps")} <= made, name


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_readme_steps_match_the_full_logits(backend, monkeypatch):
    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 4 << 10)  # chunks of 10 rows of 97 float32 logits
    policy, reference = _models()
    d = _data()
    with torch.no_grad():  # GRPO's sampling policy: the policy's log-probabilities, perturbed
        tokens = d["labels"][:, 1:]
        lp = _full_logits_log_probs(policy, d["input_ids"], d["attention_mask"], tokens)[0]
        old_logps = (lp + 0.3 * d["noise"]) * (tokens != -100)
    namespace = dict(policy=policy, reference=reference, old_logps=old_logps,
                     **{k: v for k, v in d.items() if k != "noise"})
    with fusedloss.backend(backend):
        for step in readme_steps():
            exec(compile(step, README, "exec"), namespace)
    assert not any(p.requires_grad for p in reference.parameters())

    params = list(policy.parameters())
    policy64, reference64 = copy.deepcopy(policy).double(), copy.deepcopy(reference).double()
    _, expected = _expected(policy, reference, d, old_logps)
    terms, expected64 = _expected(policy64, reference64, d, old_logps.double())
    for name, want in expected.items():
        want64 = expected64[name]
        want_grads = _parameter_grads(_loss(want), params)
        want64_grads = _parameter_grads(_loss(want64), list(policy64.parameters()))
        assert any(g.abs().max() > 0 for g in want64_grads), name  # the check has something to compare
        for form in (name, name + ("_from_logits" if name == "gkd" else "_from_logps")):
            got = namespace[form]
            assert _loss(got).dtype == F32, form
            _close(_loss(got), _loss(want), _loss(want64), f"{form}: loss", terms[name])
            if hasattr(want, "metrics"):
                assert got.metrics.keys() == want.metrics.keys(), form
                for metric in want.metrics:
                    _close(got.metrics[metric], want.metrics[metric], want64.metrics[metric], f"{form}: {metric}",
                           terms[name])
            grads = _parameter_grads(_loss(got), params)
            for (pname, _), g, w, w64 in zip(policy.named_parameters(), grads, want_grads, want64_grads):
                _close(g, w, w64, f"{form}: d loss / d {pname}")
