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
copy of the logits transformers makes (the kernels read 16-bit logits and compute in float32).

``use_fused_linear_cross_entropy(model)`` goes further for decoder-only causal LMs whose ``forward`` runs
``self.model`` (the decoder) and ``self.lm_head`` then the loss (Llama, Mistral, Qwen2, Gemma 2 and most
*ForCausalLM of transformers): in training, when labels are given, the loss is computed from the last
hidden states and ``lm_head.weight`` by ``fusedloss.functional.linear_cross_entropy`` (Gemma 2's
``final_logit_softcapping`` as its ``softcap``), so the logits (tokens x vocabulary) are never built and
the output's ``logits`` is None. Otherwise (no labels, evaluation, generation, ``skip_logits=False``) the
model's own forward runs, unchanged. The hook is the least invasive transformers allows for that: a
``forward`` on the model *instance* (its class and every other instance untouched; ``restore`` removes it);
``loss_function`` cannot serve, since transformers builds the logits before calling it. An architecture
whose forward does more between the decoder and the loss (extra heads, MoE auxiliary losses added to
the loss, logits scaled otherwise) needs its own wrapper: ``use_fused_linear_cross_entropy`` refuses
models without ``model``/``lm_head`` or with a ``loss_type`` other than causal LM.

transformers is imported by the functions that need it, never by ``import fusedloss``.
"""
import functools

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


def _check_causal_lm(model):
    if not hasattr(type(model), "loss_function") or not isinstance(getattr(type(model), "loss_function"), property) \
            or getattr(type(model), "loss_function").fset is None:
        raise TypeError(f"{type(model).__name__} has no settable loss_function (transformers >= 4.46 has it on "
                        "every PreTrainedModel)")
    if getattr(model, "loss_type", None) not in ("ForCausalLM", None):
        raise ValueError(f"use_fused_loss serves causal language models; {type(model).__name__} has loss_type "
                         f"{model.loss_type!r}")


def use_fused_loss(model):
    """Compute ``model``'s causal-LM loss with fusedloss (see the module docstring). Returns ``model``;
    ``restore(model)`` undoes it; calling it twice is harmless."""
    _check_causal_lm(model)
    if not hasattr(model, _PREVIOUS_LOSS):
        setattr(model, _PREVIOUS_LOSS, model.__dict__.get("_loss_function"))
    model.loss_function = causal_lm_loss
    return model


def causal_lm_linear_loss(hidden_states, lm_head, labels, num_items_in_batch=None, ignore_index=-100,
                          shift_labels=None, softcap=None, **kwargs):
    """``causal_lm_loss`` of ``lm_head(hidden_states)`` (softcapped), with the logits never whole."""
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    target = _shifted(labels, ignore_index, shift_labels).to(hidden.device)
    return _reduced(lambda reduction: FL.linear_cross_entropy(
        hidden, lm_head.weight, target, linear_bias=lm_head.bias, ignore_index=ignore_index, reduction=reduction,
        softcap=softcap, loss_dtype=torch.float32), num_items_in_batch)


def _keep(hidden_states, logits_to_keep):
    """The positions transformers projects: the last ``logits_to_keep`` (0: all), or those listed."""
    if isinstance(logits_to_keep, int):
        return hidden_states if logits_to_keep == 0 else hidden_states[:, -logits_to_keep:, :]
    return hidden_states[:, logits_to_keep, :]


def use_fused_linear_cross_entropy(model):
    """In training with labels, compute ``model``'s causal-LM loss from its last hidden states without
    the logits (see the module docstring). Returns ``model``; ``restore(model)`` undoes it."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    _check_causal_lm(model)
    if not isinstance(getattr(model, "model", None), torch.nn.Module) or not isinstance(
            getattr(model, "lm_head", None), torch.nn.Linear):
        raise ValueError(f"use_fused_linear_cross_entropy needs a decoder at .model and a Linear at .lm_head; "
                         f"{type(model).__name__} has another structure (wrap its forward the same way)")
    original = type(model).forward.__get__(model)  # the class's forward, bound: what the model runs unpatched

    @functools.wraps(original)
    def forward(input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, skip_logits=None, **kwargs):
        fused = labels is not None and (model.training if skip_logits is None else skip_logits)
        if not fused:
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                            use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        outputs = model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                              **kwargs)
        hidden_states = _keep(outputs.last_hidden_state, logits_to_keep)
        loss = causal_lm_linear_loss(hidden_states, model.lm_head, labels,
                                     softcap=getattr(model.config, "final_logit_softcapping", None), **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    model.forward = forward
    return model


def restore(model):
    """Undo ``use_fused_loss`` (and ``use_fused_linear_cross_entropy``): transformers' own loss and forward."""
    if hasattr(model, _PREVIOUS_LOSS):
        previous = getattr(model, _PREVIOUS_LOSS)
        if previous is None:
            model.__dict__.pop("_loss_function", None)
        else:
            model.loss_function = previous
        delattr(model, _PREVIOUS_LOSS)
    model.__dict__.pop("forward", None)
    return model
