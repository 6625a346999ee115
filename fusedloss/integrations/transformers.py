"""Hugging Face Transformers: train a causal LM with fusedloss.

    from fusedloss.integrations.transformers import use_fused_loss
    model = use_fused_loss(AutoModelForCausalLM.from_pretrained(...))   # the loss on fusedloss's kernels
    restore(model)                                                      # back to transformers' own

``use_fused_loss(model)`` plugs fusedloss's cross entropy into transformers' public loss hook, the
settable ``model.loss_function`` (transformers >= 4.46; the registry ``LOSS_MAPPING`` picks it by the
model's ``loss_type``): the causal-LM loss keeps transformers' semantics exactly (labels shifted left and
padded with ``ignore_index``, -100 ignored, ``num_items_in_batch`` turning the mean into a sum divided
by that count for gradient accumulation, ``shift_labels`` when given, a float32 loss) without the float32
copy of the logits transformers makes (the kernels read 16-bit logits and compute in float32).

transformers is imported by the functions that need it, never by ``import fusedloss``.
"""
import torch

from .. import functional as FL
from .._torch import F

_PREVIOUS_LOSS = "_fusedloss_previous_loss_function"


def causal_lm_loss(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100, shift_labels=None,
                   **kwargs):
    """transformers' ``ForCausalLMLoss`` on fusedloss's cross entropy: the same arguments and result."""
    if shift_labels is None:
        labels = F.pad(labels, (0, 1), value=ignore_index)  # tokens < n predict n; the last one nothing
        shift_labels = labels[..., 1:]
    logits = logits.reshape(-1, vocab_size)
    shift_labels = shift_labels.reshape(-1).to(logits.device)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = FL.cross_entropy(logits, shift_labels, ignore_index=ignore_index, reduction=reduction,
                            loss_dtype=torch.float32)
    if reduction == "sum":
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


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
