"""Hugging Face Transformers integration (fusedloss.integrations.transformers), on tiny randomly initialised
models (no downloads): the loss and every parameter's gradient equal to the unpatched model's, with
num_items_in_batch and -100 padding, a few optimizer steps in lockstep, restore().

The families kept here are one per kind of head found by a survey of every *ForCausalLM in transformers
5.23 (README, "Train a Hugging Face model"): a plain lm_head (Llama, Mistral, Qwen2), a final-logit softcap
(Gemma 2), a logit multiplier (Cohere), a divisor (Granite), a divisor of the hidden states before the head
(MiniCPM3), and the MoE router load-balancing loss (Mixtral, with output_router_logits).

The vocabulary (1031) is larger than every other dimension, so a tensor of tokens x vocabulary elements
is easy to tell apart from the decoder's own activations."""
import copy
import math

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
    "cohere": lambda: transformers.CohereForCausalLM(transformers.CohereConfig(**COMMON, logit_scale=0.0625)),
    "granite": lambda: transformers.GraniteForCausalLM(transformers.GraniteConfig(**COMMON, logits_scaling=8.0)),
    "minicpm3": lambda: transformers.MiniCPM3ForCausalLM(transformers.MiniCPM3Config(
        **COMMON, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
        dim_model_base=16)),  # hidden states divided by logits_scaling = 64 / 16 before the head
    "mixtral": lambda: transformers.MixtralForCausalLM(transformers.MixtralConfig(
        **COMMON, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
        router_aux_loss_coef=0.5)),
}
HEAD_KINDS = ("gemma2", "cohere", "granite", "minicpm3", "mixtral")  # the families beyond lm_head(h)
# (family, num_items_in_batch): every family once, gradient accumulation's sum / count on two
CASES = [(family, None) for family in FAMILIES] + [("llama", 37), ("mixtral", 37)]


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


@pytest.mark.parametrize("family,num_items", CASES)
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
    """Records every tensor an op makes (views aside) whose last dimension is the vocabulary, or the vocabulary
    padded to 16 elements (a chunk buffer's rows: fusedloss/ops/_chunks.py), what a logits tensor looks like:
    the largest such numel seen."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.dim() and VOCAB <= t.shape[-1] < VOCAB + 16
                    and t.untyped_storage().data_ptr() not in inputs):  # a new tensor, not a view
                self.largest = max(self.largest, t.numel())
        return out


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 rows of logits (16 KiB at this vocabulary), so that 'never whole' means something at
    these tiny sizes."""
    from fusedloss.ops import _chunks

    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 16 << 10)


@pytest.mark.parametrize("family,num_items", CASES)
def test_fused_linear_cross_entropy_matches_transformers(family, num_items, small_chunks):
    """Training with labels: the loss and every parameter's gradient as transformers' own forward gives
    them (softcaps, logit multipliers and divisors, the MoE router loss included), the logits never built
    (None in the output)."""
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
    with fusedloss.backend("triton"), torch.no_grad():
        ours, theirs = model(input_ids=input_ids, labels=labels), reference(input_ids=input_ids, labels=labels)
    assert ours.logits is None and type(ours) is type(theirs)
    if family == "mixtral":  # the router's loss is returned as transformers returns it, and its logits
        assert theirs.aux_loss is not None and len(ours.router_logits) == len(theirs.router_logits)
        torch.testing.assert_close(ours.aux_loss, theirs.aux_loss, rtol=1e-6, atol=1e-7)


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


@pytest.mark.parametrize("family", HEAD_KINDS)
def test_fused_linear_cross_entropy_eager_fallback(family, small_chunks):
    """The same head transforms on the eager fallback (torch's ops, the logits per the formulas): loss and
    every gradient as the unpatched model's."""
    reference = make_model(family).train()
    model = hf.use_fused_linear_cross_entropy(copy.deepcopy(reference))
    input_ids, labels = batch()
    expected, expected_grads = loss_and_grads(reference, input_ids, labels)
    with fusedloss.backend("torch"):
        loss, grads = loss_and_grads(model, input_ids, labels)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("patch", ["use_fused_loss", "use_fused_linear_cross_entropy"])
def test_compiled_model_matches_transformers(patch, small_chunks):
    """torch.compile of a patched model (Granite: a logit divisor) on the Triton path: the loss and every
    gradient as the unpatched model's."""
    reference = make_model("granite").train()
    model = getattr(hf, patch)(copy.deepcopy(reference))
    input_ids, labels = batch()
    expected, expected_grads = loss_and_grads(reference, input_ids, labels)
    compiled = torch.compile(model, backend="aot_eager")
    with fusedloss.backend("triton"):
        loss, grads = loss_and_grads(compiled, input_ids, labels)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert {n.removeprefix("_orig_mod.") for n in grads} == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(grads["_orig_mod." + name] if "_orig_mod." + name in grads else grads[name],
                                   expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_peft_lora_model(small_chunks):
    """A PEFT LoRA model (adapters on the attention projections) through both patches: the loss and every
    trainable (adapter) gradient as the unpatched PeftModel's; restore() takes the PeftModel too."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    torch.manual_seed(3)
    reference = peft.get_peft_model(make_model("cohere"), config).train()
    input_ids, labels = batch()
    expected, expected_grads = loss_and_grads(reference, input_ids, labels)
    assert expected_grads and all("lora_" in name for name in expected_grads)
    for patch in (hf.use_fused_loss, hf.use_fused_linear_cross_entropy):
        model = copy.deepcopy(reference)
        assert patch(model) is model
        with fusedloss.backend("triton"):
            loss, grads = loss_and_grads(model, input_ids, labels)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        assert grads.keys() == expected_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
        assert hf.restore(model) is model and "forward" not in model.get_base_model().__dict__


def test_lora_on_the_head_is_refused():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(make_model("llama"), peft.LoraConfig(r=4, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="LlamaForCausalLM.s is peft.tuners.lora.*Linear"):
        hf.use_fused_linear_cross_entropy(model)


def test_the_probe_refuses_a_head_it_was_not_told_about(monkeypatch):
    """Without its reader (as for a future model with a new head), Cohere's multiplier is found by the
    probe, not trained over: a ValueError naming the class and the difference."""
    monkeypatch.setattr(hf, "head_transform", lambda model: hf.HeadTransform())
    with pytest.raises(ValueError, match="CohereForCausalLM transforms its logits"):
        hf.use_fused_linear_cross_entropy(make_model("cohere"))
    model = make_model("cohere")
    assert hf.use_fused_linear_cross_entropy(model, probe=False) is model  # trusted as asked


class _DoubledLogits(transformers.LlamaForCausalLM):
    """A head the readers know nothing of: the logits doubled after lm_head."""

    def forward(self, input_ids=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        hidden = self.model(input_ids=input_ids, use_cache=use_cache).last_hidden_state
        logits = 2 * self.lm_head(hidden)
        loss = None if labels is None else self.loss_function(logits, labels, self.vocab_size, **kwargs)
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


class _ExtraLoss(transformers.LlamaForCausalLM):
    """An auxiliary loss the fused forward does not add: the model's loss plus 0.01 (and a rescale)."""

    def forward(self, *args, labels=None, **kwargs):
        output = super().forward(*args, labels=labels, **kwargs)
        if labels is not None:
            output.loss = output.loss * 1.0 + 0.01
        return output


class _OwnCrossEntropy(transformers.LlamaForCausalLM):
    """A loss computed without model.loss_function (as Bart's decoder-only class does)."""

    def forward(self, input_ids=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        logits = self.lm_head(self.model(input_ids=input_ids, use_cache=use_cache).last_hidden_state)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


@pytest.mark.parametrize("cls,message", [
    (_DoubledLogits, "_DoubledLogits transforms its logits"),
    (_ExtraLoss, "_ExtraLoss adds to or rescales its loss"),
    (_OwnCrossEntropy, "_OwnCrossEntropy calls model.loss_function 0 times"),
    (transformers.BartForCausalLM, "BartForCausalLM does not run its decoder .model"),  # it runs .model.decoder
])
def test_the_probe_refuses_what_the_fused_forward_would_change(cls, message):
    torch.manual_seed(0)
    if cls is transformers.BartForCausalLM:
        config = transformers.BartConfig(vocab_size=VOCAB, d_model=64, encoder_layers=1, decoder_layers=1,
                                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96,
                                         decoder_ffn_dim=96, max_position_embeddings=64)
    else:
        config = transformers.LlamaConfig(**COMMON)
    model = cls(config).to(DEVICE)
    training = model.train().training
    with pytest.raises(ValueError, match=message):
        hf.use_fused_linear_cross_entropy(model)
    assert model.training == training and "forward" not in model.__dict__ and "_loss_function" not in model.__dict__


def test_a_deep_copy_runs_itself(small_chunks):
    """A deep copy of a patched model (TRL's frozen reference, an EMA copy) runs its own weights, fused and
    unfused, and pickles; the original is untouched."""
    import io
    import pickle

    model = hf.use_fused_linear_cross_entropy(make_model("cohere").train())
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        copy_.lm_head.weight.zero_()
    input_ids, labels = batch()
    with fusedloss.backend("triton"):
        loss = copy_(input_ids=input_ids, labels=labels).loss
        assert copy_(input_ids=input_ids).logits.abs().max() == 0  # its own head, unfused too
    counted = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(loss, torch.tensor(math.log(VOCAB)), rtol=1e-6, atol=1e-6)  # zero logits: log V
    assert counted and model.lm_head.weight.abs().max() > 0
    buffer = io.BytesIO()
    torch.save(model, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    with fusedloss.backend("triton"), torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=input_ids, labels=labels).loss,
                                   model(input_ids=input_ids, labels=labels).loss, rtol=0, atol=0)
    assert isinstance(pickle.loads(pickle.dumps(model.forward)), type(model.forward))


def test_changes_after_patching_are_followed_or_refused():
    """The decoder and the head are looked up on each call: a decoder replaced after patching is the one
    that runs; a head that stops being a plain Linear (LoRA on lm_head added afterwards, a forward hook)
    makes the fused call raise instead of skipping it."""
    peft = pytest.importorskip("peft")
    model = hf.use_fused_linear_cross_entropy(make_model("llama").train())
    input_ids, labels = batch()
    other = make_model("llama", seed=5)
    model.model = other.model
    with torch.no_grad():  # the fused path against the class's own forward, both with the new decoder
        torch.testing.assert_close(model(input_ids=input_ids, labels=labels).loss,
                                   model(input_ids=input_ids, labels=labels, skip_logits=False).loss, rtol=1e-6,
                                   atol=1e-6)
        assert model(input_ids=input_ids, labels=labels).logits is None
    hook = model.lm_head.register_forward_hook(lambda module, inputs, output: 3 * output)
    with pytest.raises(ValueError, match="forward hooks"):
        model(input_ids=input_ids, labels=labels)
    hook.remove()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match="Linear LM head"):
        lora(input_ids=input_ids, labels=labels)


def test_call_forms_and_messages():
    """Labels passed positionally as the class forward takes them; too many values raise as Python does;
    a model on the meta device, a base model without a head: messages that say what to do."""
    reference = make_model("llama").train()
    model = hf.use_fused_linear_cross_entropy(copy.deepcopy(reference))
    input_ids, labels = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids, None, None, None, None, labels).loss,
                                   reference(input_ids, None, None, None, None, labels).loss, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="multiple values"):
        model(input_ids, input_ids=input_ids)
    with torch.device("meta"):
        meta = transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON))
    with pytest.raises(ValueError, match="meta device.*probe=False"):
        hf.use_fused_linear_cross_entropy(meta)
    with pytest.raises(ValueError, match="base model"):
        hf.use_fused_loss(transformers.LlamaModel(transformers.LlamaConfig(**COMMON)))


def test_head_transform_readers():
    """What each surveyed family's head does, as read from its config (the probe checks each on the
    real forward in the tests above)."""
    def transform(family):
        return hf.head_transform(FAMILIES[family]())
    assert transform("llama") == hf.HeadTransform(1.0, None)
    assert transform("gemma2") == hf.HeadTransform(1.0, 5.0)
    assert transform("cohere") == hf.HeadTransform(0.0625, None)
    assert transform("granite") == hf.HeadTransform(0.125, None)
    assert transform("minicpm3") == hf.HeadTransform(0.25, None)
    hyperclovax = transformers.HyperCLOVAXForCausalLM(transformers.HyperCLOVAXConfig(**COMMON, logits_scaling=2.0))
    assert hf.head_transform(hyperclovax) == hf.HeadTransform(2.0, None)  # multiplies where Granite divides


def test_use_fused_linear_cross_entropy_arguments():
    with pytest.raises(TypeError, match="probe"):
        hf.use_fused_linear_cross_entropy(make_model("llama"), probe="yes")


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
