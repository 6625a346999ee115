"""Hugging Face Transformers integration (fusedloss.integrations.transformers), on tiny randomly initialised
models (no downloads): the loss and every parameter's gradient equal to the unpatched model's, with
num_items_in_batch and -100 padding, a few optimizer steps in lockstep, restore().

The vocabulary (1031) is larger than every other dimension, so a tensor of tokens x vocabulary elements
is easy to tell apart from the decoder's own activations."""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fusedloss

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (the [test] extra installs it: pip install -e '.[test]')")
from fusedloss.integrations import transformers as hf  # noqa: E402

from helpers import DEVICE  # noqa: E402

VOCAB = 1031
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
FAMILIES = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON)),
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**COMMON, head_dim=16)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON)),
    "gemma2": lambda: transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        **COMMON, head_dim=16, final_logit_softcapping=5.0, attn_logit_softcapping=None)),
}


def make_model(family, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return FAMILIES[family]().to(DEVICE, dtype)


def batch(seed=1, size=(2, 13), pad=True):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, size, generator=generator).to(DEVICE)
    labels = input_ids.clone()
    if pad:
        labels[0, -4:] = -100  # padding
        labels[1, :2] = -100  # a masked prompt
    return input_ids, labels


def train_in_lockstep(reference, model, rtol, atol, steps=3):
    """A few optimizer steps of both models on the same batches; then their parameters agree. SGD: Adam
    would turn the float32 noise of gradients that are exactly 0 in exact arithmetic (the key
    projection's bias: softmax ignores a shift shared by all keys) into full-size, diverging steps."""
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (reference, model)]
    for step in range(steps):
        input_ids, labels = batch(seed=step)
        for m, opt in zip((reference, model), optimizers):
            opt.zero_grad()
            with fusedloss.backend("triton"):
                m(input_ids=input_ids, labels=labels).loss.backward()
            opt.step()
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(q, p, rtol=rtol, atol=atol, msg=name)


def loss_and_grads(model, input_ids, labels, **kwargs):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=input_ids, labels=labels, **kwargs).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_items", [None, 37])
@pytest.mark.parametrize("family", FAMILIES)
def test_use_fused_loss_matches_transformers(family, num_items):
    """The loss and every parameter's gradient as transformers' own loss gives them (float32), with the
    fused kernels (forced Triton backend) computing the cross entropy."""
    reference = make_model(family)
    model = hf.use_fused_loss(copy.deepcopy(reference))
    input_ids, labels = batch()
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items, device=DEVICE)}
    expected, expected_grads = loss_and_grads(reference, input_ids, labels, **kwargs)
    with fusedloss.backend("triton"):
        decisions = fusedloss.decisions(lambda: model(input_ids=input_ids, labels=labels, **kwargs))
        loss, grads = loss_and_grads(model, input_ids, labels, **kwargs)
    assert [d.op for d in decisions] == ["cross_entropy"] and decisions[0].backend == "triton"
    assert loss.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_use_fused_loss_bfloat16_no_worse_than_transformers():
    reference = make_model("llama", torch.bfloat16)
    exact = make_model("llama", torch.float64)
    model = hf.use_fused_loss(copy.deepcopy(reference))
    input_ids, labels = batch()
    with torch.no_grad():
        truth = exact(input_ids=input_ids, labels=labels).loss
        theirs = reference(input_ids=input_ids, labels=labels).loss
        with fusedloss.backend("triton"):
            ours = model(input_ids=input_ids, labels=labels).loss
    assert ours.dtype == torch.float32
    # the same bf16 logits feed both: the losses agree to float32 rounding
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert abs(ours.double() - truth) <= abs(theirs.double() - truth) + 1e-5


def test_training_steps_in_lockstep_and_restore():
    reference = make_model("qwen2")
    model = hf.use_fused_loss(copy.deepcopy(reference))
    assert hf.use_fused_loss(model) is model  # twice is harmless
    train_in_lockstep(reference, model, rtol=1e-5, atol=1e-6)
    hf.restore(model)
    assert model.loss_function is reference.loss_function is transformers.loss.loss_utils.ForCausalLMLoss
    assert "_loss_function" not in model.__dict__ and "forward" not in model.__dict__


def test_use_fused_loss_refuses_other_models():
    classifier = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**COMMON, pad_token_id=0))
    with pytest.raises(ValueError, match="causal language models"):
        hf.use_fused_loss(classifier)
    with pytest.raises(TypeError, match="loss_function"):
        hf.use_fused_loss(torch.nn.Linear(3, 4))


def test_import_fusedloss_does_not_import_transformers():
    import subprocess
    import sys
    code = "import sys, fusedloss, fusedloss.functional; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ the logits never whole


class _LargestLogitsLike(TorchDispatchMode):
    """Records every tensor an op makes (views aside) whose last dimension is the vocabulary (what a logits
    tensor looks like): the largest such numel seen."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == VOCAB
                    and t.untyped_storage().data_ptr() not in inputs):  # a new tensor, not a view
                self.largest = max(self.largest, t.numel())
        return out


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows of logits (16 KiB at this vocabulary), so that 'never whole' means something at
    these tiny sizes."""
    from fusedloss.ops import _chunks

    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 16 << 10)


@pytest.mark.parametrize("num_items", [None, 37])
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_linear_cross_entropy_matches_transformers(family, num_items, small_chunks):
    """Training with labels: the loss and every parameter's gradient as transformers' own forward gives
    them (Gemma 2's final-logit softcapping included), the logits never built (None in the output)."""
    reference = make_model(family).train()
    model = hf.use_fused_linear_cross_entropy(copy.deepcopy(reference))
    input_ids, labels = batch()
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items, device=DEVICE)}
    expected, expected_grads = loss_and_grads(reference, input_ids, labels, **kwargs)
    recorder = _LargestLogitsLike()
    with fusedloss.backend("triton"), recorder:
        loss, grads = loss_and_grads(model, input_ids, labels, **kwargs)
    tokens = input_ids.numel()
    assert 0 < recorder.largest <= 4 * VOCAB < tokens * VOCAB  # chunks of rows, never tokens x vocabulary
    unpatched = _LargestLogitsLike()
    with unpatched:
        reference(input_ids=input_ids, labels=labels)
    assert unpatched.largest >= tokens * VOCAB  # the recorder sees transformers' own logits
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    with fusedloss.backend("triton"):
        assert model(input_ids=input_ids, labels=labels).logits is None


def test_fused_linear_cross_entropy_bfloat16_no_worse_than_transformers(small_chunks):
    reference = make_model("llama", torch.bfloat16).train()
    exact = make_model("llama", torch.float64).train()
    model = hf.use_fused_linear_cross_entropy(copy.deepcopy(reference))
    input_ids, labels = batch()
    truth = exact(input_ids=input_ids, labels=labels).loss.detach()
    theirs, _ = loss_and_grads(reference, input_ids, labels)
    with fusedloss.backend("triton"):
        ours, _ = loss_and_grads(model, input_ids, labels)
    assert ours.dtype == torch.float32
    assert abs(ours.double() - truth) <= abs(theirs.double() - truth) + 1e-4


def test_evaluation_and_generation_are_unchanged():
    """Without labels, in eval mode, or with skip_logits=False the model's own forward runs: the logits,
    the loss and generate() exactly as unpatched."""
    reference = make_model("mistral").eval()
    model = hf.use_fused_linear_cross_entropy(copy.deepcopy(reference))
    input_ids, labels = batch()
    with torch.no_grad(), fusedloss.backend("triton"):
        ours, theirs = model(input_ids=input_ids, labels=labels), reference(input_ids=input_ids, labels=labels)
        assert torch.equal(ours.logits, theirs.logits) and torch.equal(ours.loss, theirs.loss)
        model.train()
        kept = model(input_ids=input_ids, labels=labels, skip_logits=False)
        assert kept.logits is not None
        model.eval()
        prompt = input_ids[:1, :5]
        generated = model.generate(prompt, max_new_tokens=4, do_sample=False)
        expected = reference.generate(prompt, max_new_tokens=4, do_sample=False)
    assert torch.equal(generated, expected)


def test_fused_linear_training_in_lockstep_and_restore(small_chunks):
    reference = make_model("gemma2").train()
    model = hf.use_fused_linear_cross_entropy(hf.use_fused_loss(copy.deepcopy(reference)))
    train_in_lockstep(reference, model, rtol=1e-4, atol=1e-5)
    hf.restore(model)
    assert "forward" not in model.__dict__ and model(input_ids=batch()[0]).logits is not None


def test_fused_linear_refuses_other_structures():
    class NoHead(transformers.LlamaForCausalLM):
        pass
    model = NoHead(transformers.LlamaConfig(**COMMON))
    model.lm_head = torch.nn.Identity()
    with pytest.raises(ValueError, match="lm_head"):
        hf.use_fused_linear_cross_entropy(model)


# ------------------------------------------------------------------ README's distillation and RL recipes


def _llama(hidden, seed):
    torch.manual_seed(seed)
    config = dict(COMMON, hidden_size=hidden, intermediate_size=hidden + 32)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).to(DEVICE)


def _both_backends(step, *modules):
    """step() on the Triton path and on the eager formulas: (loss, the gradient of every parameter)."""
    results = []
    for backend in ("triton", "torch"):
        for module in modules:
            module.zero_grad()
        with fusedloss.backend(backend):
            loss = step()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for m in modules for p in m.parameters()
                                        if p.grad is not None]))
    return results


def test_readme_gkd_step():
    """README's GKD step: a student and a bigger frozen teacher (hidden 64 vs 96), linear_jsd_loss on
    their decoders' hidden states, equal to the divergence of their full logits (torch ops)."""
    import fusedloss.functional as FL

    student, teacher = _llama(64, 0), _llama(96, 1)
    teacher.requires_grad_(False)
    input_ids, labels = batch()

    def step():
        with torch.no_grad():
            teacher_hidden = teacher.model(input_ids).last_hidden_state
        student_hidden = student.model(input_ids).last_hidden_state
        return FL.linear_jsd_loss(student_hidden[:, :-1], student.lm_head.weight, teacher_hidden[:, :-1],
                                  teacher.lm_head.weight, labels[:, 1:], beta=0.5, temperature=0.9)

    (fused, fused_grads), (eager, eager_grads) = _both_backends(step, student)
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-6)
    assert len(fused_grads) == len(list(student.parameters())) and not any(p.grad is not None
                                                                           for p in teacher.parameters())
    for a, b in zip(fused_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_readme_grpo_and_dpo_losses():
    """README's GRPO and DPO losses on linear_log_probs: the Triton path equals the eager formulas."""
    import fusedloss.functional as FL

    policy, reference_model = _llama(64, 0), _llama(64, 2)
    input_ids, labels = batch()
    completion = labels
    old_logp = -torch.rand(completion.shape, device=DEVICE)
    ref_logp = -torch.rand(completion.shape, device=DEVICE)
    advantages = torch.randn(completion.shape[0], device=DEVICE)

    def grpo():
        hidden = policy.model(input_ids).last_hidden_state
        logp, entropy = FL.linear_log_probs(hidden, policy.lm_head.weight, completion, with_entropy=True)
        ratio = torch.exp(logp - old_logp)
        per_token = -torch.min(ratio * advantages[:, None], ratio.clamp(1 - 0.2, 1 + 0.2) * advantages[:, None])
        per_token = per_token + 0.04 * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1) - 0.001 * entropy
        mask = (completion != -100).float()
        return (per_token * mask).sum() / mask.sum()

    def sequence_logps(hidden, head, labels):
        return FL.linear_log_probs(hidden[:, :-1], head, labels[:, 1:]).sum(-1)

    def dpo():
        policy_logps = sequence_logps(policy.model(input_ids).last_hidden_state, policy.lm_head.weight, labels)
        with torch.no_grad():
            reference = sequence_logps(reference_model.model(input_ids).last_hidden_state,
                                       reference_model.lm_head.weight, labels)
        chosen, rejected = (policy_logps - reference).chunk(2)
        return -torch.nn.functional.logsigmoid(0.1 * (chosen - rejected)).mean()

    for step in (grpo, dpo):
        (fused, fused_grads), (eager, eager_grads) = _both_backends(step, policy)
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-6)
        for a, b in zip(fused_grads, eager_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
