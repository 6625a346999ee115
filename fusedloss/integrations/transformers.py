"""Hugging Face Transformers: train a causal LM with fusedloss.

    from fusedloss.integrations.transformers import use_fused_linear_cross_entropy, use_fused_loss, restore
    model = use_fused_loss(AutoModelForCausalLM.from_pretrained(...))   # the loss on fusedloss's kernels
    model = use_fused_linear_cross_entropy(model)                       # ... and the logits never whole
    restore(model)                                                      # back to transformers' own

``use_fused_loss(model)`` plugs fusedloss's cross entropy into transformers' public loss hook, the
settable ``model.loss_function`` (transformers >= 4.46; the registry ``LOSS_MAPPING`` picks it by the
model's ``loss_type``): the causal-LM loss keeps transformers' semantics exactly (labels shifted left and
padded with ``ignore_index``, -100 ignored, ``num_items_in_batch`` turning the mean into a sum divided
by that count for gradient accumulation, ``shift_labels`` when given, a float32 loss) without the float32
copy of the logits transformers makes (the kernels read 16-bit logits and compute in float32). It runs
after the model's own head, so every head transform and every auxiliary loss stays the model's.

``use_fused_linear_cross_entropy(model)`` goes further: in training, when labels are given, the loss is
computed from the decoder's last hidden states and the LM head's weight by
``fusedloss.functional.linear_cross_entropy``, so the logits (tokens x vocabulary) are never built and the
output's ``logits`` is None. Otherwise (no labels, evaluation, generation, ``skip_logits=False``) the
model's own forward runs, unchanged. The fused forward reproduces what the model's head does between the
decoder and the loss:

- the logit multiplier or divisor as ``logit_scale`` (Cohere's ``logit_scale``, Granite's and MiniCPM3's
  ``1 / logits_scaling``, HyperCLOVA X's ``logits_scaling``, Falcon-H1's ``lm_head_multiplier``, Muse's
  ``output_multiplier``), applied in the GEMMs, before the softcap;
- the final-logit softcap as ``softcap`` (Gemma 2/3/4's ``final_logit_softcapping``, RecurrentGemma's
  ``logits_soft_cap``, xLSTM's ``output_logit_soft_cap``);
- the MoE router load-balancing loss (``output_router_logits``, the model's ``router_aux_loss_coef``, its
  module's ``load_balancing_loss_func``), added to the loss and returned as ``aux_loss``;
- ``logits_to_keep``, ``num_items_in_batch``, ``shift_labels``, ``ignore_index``, tied embeddings, PEFT
  (pass the PeftModel; LoRA on the decoder, not on ``lm_head``).

What it reads from the model is checked against the model itself before the first fused step, at patch
time (``probe=True``): with the model in eval mode and no gradients, (1) the model's own forward runs on
synthetic hidden states whose logits span 0.5 to 200 in magnitude, and its logits must equal the fused
path's transform of ``lm_head`` (within a few roundings of the model's dtype); (2) the model's own
forward runs with labels and its ``loss_function`` replaced by a constant, and what it adds to or does
with that constant (an auxiliary loss, a rescale) must equal what the fused forward adds. A model whose
head does anything else (a new multiplier, a vocabulary slice, a z-loss, its own cross entropy) is refused
with a ValueError that names the class and what differs, instead of training another loss. The probe
costs two small forwards (2 x 8 tokens) once; ``probe=False`` skips it for a model that cannot run at
patch time (its weights not yet materialised), trusting the readers above alone.

transformers is imported by the functions that need it, never by ``import fusedloss``.
"""
import dataclasses
import inspect
import math
import sys
from typing import Callable, NamedTuple, Optional

import torch

from .. import functional as FL
from .._torch import F

_PREVIOUS_LOSS = "_fusedloss_previous_loss_function"


def _shifted(labels, ignore_index, shift_labels):
    """transformers' shift: token n predicts label n + 1, the last position none (flattened)."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return shift_labels.reshape(-1)


def _reduced(loss_fn, num_items_in_batch):
    """loss_fn(reduction) as transformers reduces: the mean, or with ``num_items_in_batch`` (gradient
    accumulation) the sum divided by that count."""
    if num_items_in_batch is None:
        return loss_fn("mean")
    loss = loss_fn("sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def causal_lm_loss(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, shift_labels=None,
                   **kwargs):
    """transformers' ``ForCausalLMLoss`` on fusedloss's cross entropy: the same arguments and result."""
    logits = logits.reshape(-1, vocab_size)
    target = _shifted(labels, ignore_index, shift_labels).to(logits.device)
    return _reduced(lambda reduction: FL.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction,
                                                       loss_dtype=torch.float32), num_items_in_batch)


def _check_causal_lm(model, caller="use_fused_loss"):
    if not hasattr(type(model), "loss_function") or not isinstance(getattr(type(model), "loss_function"), property) \
            or getattr(type(model), "loss_function").fset is None:
        raise TypeError(f"{caller}: {type(model).__name__} has no settable loss_function (transformers >= 4.46 has "
                        "it on every PreTrainedModel)")
    if getattr(model, "loss_type", None) not in ("ForCausalLM", None):
        raise ValueError(f"{caller} serves causal language models; {type(model).__name__} has loss_type "
                         f"{model.loss_type!r}")
    if getattr(model, "loss_type", None) is None and model.get_output_embeddings() is None:
        raise ValueError(f"{caller} serves causal language models; {type(model).__name__} has neither a causal-LM "
                         "loss_type nor an LM head (a base model: patch its *ForCausalLM)")


def use_fused_loss(model):
    """Compute ``model``'s causal-LM loss with fusedloss (see the module docstring). Returns ``model``;
    ``restore(model)`` undoes it; calling it twice is harmless. A PEFT model: its base model's."""
    inner = _unwrapped(model)
    _check_causal_lm(inner)
    if not hasattr(inner, _PREVIOUS_LOSS):
        setattr(inner, _PREVIOUS_LOSS, inner.__dict__.get("_loss_function"))
    inner.loss_function = causal_lm_loss
    return model


def causal_lm_linear_loss(hidden_states, lm_head, labels, num_items_in_batch=None, ignore_index=-100,
                          shift_labels=None, softcap=None, logit_scale=1.0, **kwargs):
    """``causal_lm_loss`` of ``softcap(logit_scale * lm_head(hidden_states))``, the logits never whole."""
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    target = _shifted(labels, ignore_index, shift_labels).to(hidden.device)
    return _reduced(lambda reduction: FL.linear_cross_entropy(
        hidden, lm_head.weight, target, linear_bias=lm_head.bias, ignore_index=ignore_index, reduction=reduction,
        softcap=softcap, logit_scale=logit_scale, loss_dtype=torch.float32), num_items_in_batch)


def _keep(hidden_states, logits_to_keep):
    """The positions transformers projects: the last ``logits_to_keep`` (0: all), or those listed."""
    if isinstance(logits_to_keep, int):
        return hidden_states if logits_to_keep == 0 else hidden_states[:, -logits_to_keep:, :]
    return hidden_states[:, logits_to_keep, :]


class HeadTransform(NamedTuple):
    """What a model's forward does to ``lm_head``'s output before its loss: ``softcap(logit_scale * x)``."""

    logit_scale: float = 1.0
    softcap: Optional[float] = None

    def apply(self, logits):
        """The transform in torch ops, in float32 (the probe's reference for the fused path)."""
        logits = logits.float() * self.logit_scale
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap


def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def head_transform(model):
    """The head transform of ``model``'s forward, read from where transformers' *ForCausalLM keep it (the
    survey of transformers 5.23's forwards, tests/test_transformers.py). The probe checks it against the
    model's own forward; a reader missing here fails the probe, never trains silently."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    if _number(getattr(model, "logit_scale", None)) is not None:  # Cohere, Cohere 2: self.logit_scale
        scale = _number(model.logit_scale)
    elif _number(getattr(text, "output_multiplier", None)) is not None:  # Muse
        scale = _number(text.output_multiplier)
    elif _number(getattr(getattr(model, "model", None), "lm_head_multiplier", None)) is not None:  # Falcon-H1
        scale = _number(model.model.lm_head_multiplier)
    elif _number(getattr(text, "logits_scaling", None)) is not None:  # Granite, MiniCPM3 divide; HyperCLOVA X
        scaling = _number(text.logits_scaling)
        scale = scaling if getattr(text, "model_type", "") == "hyperclovax" else 1.0 / scaling
    softcap = None
    for name in ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap"):
        if _number(getattr(text, name, None)):
            softcap = _number(getattr(text, name))
            break
    return HeadTransform(scale, softcap)


class _Router(NamedTuple):
    """An MoE model's load-balancing loss, as its forward adds it: ``coefficient * loss(router_logits,
    num_experts, num_experts_per_tok, attention_mask)``."""

    loss: Callable
    coefficient: float


def _router(model):
    """The load-balancing loss of a model whose forward takes ``output_router_logits`` (None otherwise)."""
    if "output_router_logits" not in inspect.signature(type(model).forward).parameters:
        return None
    name = type(model).__name__
    loss = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
    coefficient = next((getattr(model, a) for a in ("router_aux_loss_coef", "aux_loss_coef") if hasattr(model, a)),
                       None)
    if loss is None or _number(coefficient) is None or not hasattr(model, "num_experts") or not hasattr(
            model, "num_experts_per_tok"):
        raise ValueError(f"use_fused_linear_cross_entropy: {name} takes output_router_logits but fusedloss does not "
                         "find its load-balancing loss (load_balancing_loss_func, router_aux_loss_coef, num_experts, "
                         "num_experts_per_tok); use use_fused_loss, which keeps the model's own forward")
    return _Router(loss, _number(coefficient))


class _Plan(NamedTuple):
    """What the fused forward runs for one model: where its decoder is (looked up on each call: FSDP or PEFT
    may replace it after patching), the head transform, the router loss, the forward's parameter names
    (positional arguments map onto them) and its output class."""

    decoder: str
    transform: HeadTransform
    router: Optional[_Router]
    parameters: tuple
    output_type: type


def _output_type(model, router):
    from transformers.modeling_outputs import CausalLMOutputWithPast, MoeCausalLMOutputWithPast
    from transformers.utils import ModelOutput

    annotation = inspect.signature(type(model).forward).return_annotation
    if isinstance(annotation, type) and issubclass(annotation, ModelOutput) and "logits" in {
            f.name for f in dataclasses.fields(annotation)}:
        return annotation
    return MoeCausalLMOutputWithPast if router is not None else CausalLMOutputWithPast


def _decoder(model, name):
    decoder = getattr(model, name, None)
    if not isinstance(decoder, torch.nn.Module) or decoder is model:
        raise ValueError(f"use_fused_linear_cross_entropy needs a decoder at .{name}; {type(model).__name__} has "
                         "another structure (use use_fused_loss)")
    return decoder


def _distributed(head):
    """Whether ``head`` is laid out by torch's tensor parallel or FSDP2 (its weight a DTensor, or an
    FSDPModule): their hooks only move shards, and the fused path takes the DTensor weight itself
    (vocabulary parallel over its row shards: fusedloss/_dtensor.py)."""
    from .._dtensor import is_dtensor

    fsdp = getattr(sys.modules.get("torch.distributed.fsdp"), "FSDPModule", None)
    return is_dtensor(head.weight) or (fsdp is not None and isinstance(head, fsdp))


def _linear_head(model):
    """The model's LM head, a plain torch.nn.Linear (its forward neither overridden nor hooked: the fused path
    reads its weight and bias, not its forward), or a ValueError naming what it is."""
    head = model.get_output_embeddings()
    plain = (isinstance(head, torch.nn.Linear) and type(head).forward is torch.nn.Linear.forward
             and "forward" not in head.__dict__)
    if not plain:
        raise ValueError(f"use_fused_linear_cross_entropy needs a torch.nn.Linear LM head; {type(model).__name__}'s "
                         f"is {type(head).__module__}.{type(head).__qualname__} (a LoRA adapter or a PEFT wrapper on "
                         "lm_head, an overridden forward, or another head: use use_fused_loss)")
    if (head._forward_hooks or head._forward_pre_hooks) and not _distributed(head):
        raise ValueError(f"use_fused_linear_cross_entropy: {type(model).__name__}'s lm_head has forward hooks, which "
                         "the fused path (reading its weight) would skip: use use_fused_loss")
    return head


def _plan(model):
    """The fused forward's plan, or a ValueError naming the class and what it does not serve."""
    name = type(model).__name__
    decoder = getattr(model, "base_model_prefix", "") or "model"
    _decoder(model, decoder)
    _linear_head(model)
    z_loss = _number(getattr(model.config, "z_loss_coefficient", None))
    if z_loss:  # Bamba: a z-loss over every position, ignored ones included
        raise ValueError(f"use_fused_linear_cross_entropy: {name} adds a z-loss over every position "
                         f"(z_loss_coefficient={z_loss}), which fusedloss's z_loss (counted rows only) does not "
                         "reproduce; use use_fused_loss")
    router = _router(model)
    parameters = tuple(p.name for p in inspect.signature(type(model).forward).parameters.values()
                       if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))[1:]  # self dropped
    return _Plan(decoder, head_transform(model), router, parameters, _output_type(model, router))


def _fused_forward(model, plan, given, loss_fn=causal_lm_linear_loss):
    """The model's forward with labels (``given``: its arguments by name), the logits never whole: the
    decoder as the model calls it, then ``loss_fn`` of the kept hidden states and the head (plus the router
    loss), in the model's output class (``logits`` None: absent from the tuple of ``return_dict=False``)."""
    given = dict(given)
    labels = given.pop("labels")
    logits_to_keep = given.pop("logits_to_keep", 0)
    return_dict = given.pop("return_dict", None)
    loss_kwargs = {k: v for k, v in given.items() if k not in plan.parameters}  # the forward's **kwargs
    output_router_logits = False
    if plan.router is not None:
        output_router_logits = given.get("output_router_logits")
        if output_router_logits is None:
            output_router_logits = bool(getattr(model.config, "output_router_logits", False))
        given["output_router_logits"] = output_router_logits
    outputs = _decoder(model, plan.decoder)(**given)
    hidden_states = _keep(outputs.last_hidden_state, logits_to_keep)
    loss = loss_fn(hidden_states, _linear_head(model), labels, softcap=plan.transform.softcap,
                   logit_scale=plan.transform.logit_scale, **loss_kwargs)
    fields = {f.name for f in dataclasses.fields(plan.output_type)}
    result = {k: v for k, v in outputs.items() if k in fields and k not in ("loss", "logits", "last_hidden_state")}
    if output_router_logits:
        aux_loss = plan.router.loss(outputs.router_logits, model.num_experts, model.num_experts_per_tok,
                                    given.get("attention_mask"))
        loss = loss + plan.router.coefficient * aux_loss.to(loss.device)
        result["aux_loss"] = aux_loss
    output = plan.output_type(loss=loss, logits=None, **result)
    return output.to_tuple() if return_dict is False else output


_PROBE_TOKENS = (2, 8)  # the probe's batch: 2 sequences of 8 tokens


def _probe_tolerance(dtype):
    """How far the model's logits and the fused path's transform of the same raw logits may differ, relative
    to the row's largest magnitude: a few roundings of the model's dtype (the model rounds after each op,
    the fused path computes in float32); a missing multiplier or softcap is off by far more."""
    return 16 * torch.finfo(dtype).eps if dtype in (torch.float16, torch.bfloat16) else 1e-5


def _wide_hidden_states(head, shape, generator):
    """Hidden states whose raw logits' largest magnitudes run from 0.5 to 200 over the positions, so that a
    softcap or a multiplier shows."""
    h = torch.randn(shape, generator=generator, dtype=torch.float32).to(head.weight.device, head.weight.dtype)
    raw = torch.nn.functional.linear(h.float(), head.weight.float())
    peak = raw.abs().amax(-1, keepdim=True).clamp_min(1e-6)
    targets = torch.logspace(math.log10(0.5), math.log10(200.0), shape[0] * shape[1], device=h.device)
    return (h.float() * targets.view(shape[0], shape[1], 1) / peak).to(head.weight.dtype)


def _refuse(model, what):
    raise ValueError(f"use_fused_linear_cross_entropy: {type(model).__name__} {what}; fusedloss refuses rather than "
                     "train another loss (use_fused_loss keeps the model's own head and loss)")


def _probe(model, plan, original):
    """Check the plan against the model's own forward (the module docstring): raise if they differ."""
    head = model.get_output_embeddings()
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(f"use_fused_linear_cross_entropy: {type(model).__name__} has weights on the meta device, "
                         "so the probe cannot run its forward: materialise them first, or pass probe=False to "
                         "trust the head readers alone")
    device = head.weight.device
    vocab = head.out_features
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, _PROBE_TOKENS, generator=generator).to(device)
    labels = input_ids.clone()
    labels[0, :2] = -100
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # 1. the head transform, over a wide range of logits
            hidden = _wide_hidden_states(head, (*_PROBE_TOKENS, head.in_features), generator)

            fired = []

            def replace_hidden(module, inputs, output):
                fired.append(True)
                size = output["last_hidden_state"].shape[-1]
                if size != head.in_features:
                    _refuse(model, f"puts more between its decoder and its lm_head (hidden states of size {size}, "
                                   f"lm_head's input {head.in_features})")
                output["last_hidden_state"] = hidden
                return output

            hook = _decoder(model, plan.decoder).register_forward_hook(replace_hidden)
            try:
                theirs = original(input_ids=input_ids, use_cache=False).logits
            finally:
                hook.remove()
            if not fired:
                _refuse(model, f"does not run its decoder .{plan.decoder} as a module in its forward (it calls "
                               "a part of it, or another module)")
            # the head as the fused path reads it: its weight and bias, not its forward (hooks, overrides)
            ours = plan.transform.apply(torch.nn.functional.linear(hidden, head.weight, head.bias))
            if theirs is None or tuple(theirs.shape) != tuple(ours.shape):
                _refuse(model, f"returns logits of shape {None if theirs is None else tuple(theirs.shape)} where "
                               f"its lm_head gives {tuple(ours.shape)} (a vocabulary slice or another head)")
            error = ((theirs.float() - ours).abs().amax(-1) / ours.abs().amax(-1).clamp_min(1e-30)).max().item()
            if not error <= _probe_tolerance(theirs.dtype):
                _refuse(model, f"transforms its logits otherwise than fusedloss reads it "
                               f"({plan.transform}): relative difference {error:.3g} on the probe")
            # 2. what the forward does with its loss_function's result: a constant c in, c plus the router
            # loss out (the model's output and the fused forward's, both with the cross entropy replaced by c)
            constant = 1.25
            calls = []

            def constant_loss(*args, **kwargs):
                calls.append(args)
                return torch.tensor(constant, device=device)

            router = {"output_router_logits": True} if plan.router is not None else {}
            previous = model.__dict__.get("_loss_function")
            model.loss_function = constant_loss
            try:
                theirs = original(input_ids=input_ids, labels=labels, use_cache=False, **router)
            finally:
                if previous is None:
                    model.__dict__.pop("_loss_function", None)
                else:
                    model.loss_function = previous
            if len(calls) != 1:
                _refuse(model, f"calls model.loss_function {len(calls)} times with labels (transformers' causal LMs "
                               "call it once; this one computes its loss otherwise)")
            try:
                ours = _fused_forward(model, plan, dict(input_ids=input_ids, labels=labels, use_cache=False, **router),
                                      loss_fn=lambda *args, **kwargs: torch.tensor(constant, device=device))
            except Exception as error:  # e.g. a router loss with another signature
                _refuse(model, f"fails in the fused forward ({type(error).__name__}: {error})")
            their_loss, our_loss = theirs.loss.float().item(), ours.loss.float().item()
            if not math.isclose(their_loss, our_loss, rel_tol=1e-5, abs_tol=1e-6):
                _refuse(model, f"adds to or rescales its loss otherwise than fusedloss does (with the cross entropy "
                               f"replaced by {constant}: the model gives {their_loss}, the fused forward {our_loss})")
    finally:
        model.train(training)


def _unwrapped(model):
    """The transformers model inside a PEFT wrapper (whose forward reaches the inner model's), or itself."""
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model) and not hasattr(type(model), "loss_function"):
        return get_base_model()
    return model


class _FusedForward:
    """The ``forward`` set on a model instance: the fused path in training with labels, the class's own
    forward otherwise. It holds the model and a plan of plain values, so a deep copy of the model (a frozen
    reference, an EMA copy) gets a forward of its own copy, and the model pickles; its signature is the
    class forward's (``generate`` validates keyword arguments against it)."""

    def __init__(self, model, plan):
        self.model, self.plan = model, plan

    @property
    def __signature__(self):
        return inspect.signature(type(self.model).forward.__get__(self.model))

    def __call__(self, *args, **kwargs):
        model = self.model
        given = dict(zip(self.plan.parameters, args))
        if len(args) > len(self.plan.parameters) or given.keys() & kwargs.keys():
            raise TypeError(f"{type(model).__name__}.forward() got too many positional arguments or multiple "
                            f"values for {sorted(given.keys() & kwargs.keys())}")
        given.update(kwargs)
        skip_logits = given.pop("skip_logits", None)
        original = type(model).forward.__get__(model)
        if given.get("labels") is None or not (model.training if skip_logits is None else skip_logits):
            return original(**given)
        return _fused_forward(model, self.plan, given)


def use_fused_linear_cross_entropy(model, *, probe=True):
    """In training with labels, compute ``model``'s causal-LM loss from its last hidden states without
    the logits (see the module docstring). Returns ``model``; ``restore(model)`` undoes it. A model whose
    head or loss fusedloss cannot reproduce raises a ValueError naming it (``probe``: check the model's own
    forward first, on 2 x 8 tokens; False only where the model cannot run yet). The decoder and the head
    are looked up on each call, and a head that stops being a plain Linear (a LoRA adapter added to
    lm_head afterwards, a hook) makes the fused call raise instead of skipping it."""
    if not isinstance(probe, bool):
        raise TypeError(f"probe must be True or False, got {probe!r}")
    inner = _unwrapped(model)
    _check_causal_lm(inner, "use_fused_linear_cross_entropy")
    plan = _plan(inner)
    if probe:
        _probe(inner, plan, type(inner).forward.__get__(inner))
    inner.forward = _FusedForward(inner, plan)
    return model


def restore(model):
    """Undo ``use_fused_loss`` (and ``use_fused_linear_cross_entropy``): transformers' own loss and forward."""
    inner = _unwrapped(model)
    if hasattr(inner, _PREVIOUS_LOSS):
        previous = getattr(inner, _PREVIOUS_LOSS)
        if previous is None:
            inner.__dict__.pop("_loss_function", None)
        else:
            inner.loss_function = previous
        delattr(inner, _PREVIOUS_LOSS)
    inner.__dict__.pop("forward", None)
    return model
