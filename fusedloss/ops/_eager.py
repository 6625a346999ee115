"""Eager torch formulas of the losses torch.nn.functional lacks or extends: the eager backend's
implementation and the differentiable reference of the fused ops (their second-order path)."""
import math

import torch

from .._torch import F


def eager_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap):
    """torch's cross_entropy plus the extras: ``softcap`` (logits -> c tanh(logits / c) first) and
    ``z_loss`` (z * lse**2 per counted row, weighted by the target's class weight, reduced with the loss's
    denominator). Under autocast the whole formula runs in float32, as torch runs cross_entropy there."""
    if input.dtype != torch.float64 and torch.is_autocast_enabled(input.device.type):
        input = input.float()
        weight = weight.float() if weight is not None else None
    if softcap is not None:
        input = softcap * torch.tanh(input / softcap)
    loss = F.cross_entropy(input, target, weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if not z_loss:
        return loss
    class_dim = 0 if input.dim() == 1 else 1
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    lse = torch.logsumexp(input.to(acc), dim=class_dim)
    if input.shape == target.shape:  # probability targets: every row counts once
        row_weight = torch.ones_like(lse)
    else:
        counted = target != ignore_index
        safe_target = torch.where(counted, target, torch.zeros_like(target)).long()
        row_weight = weight.to(acc)[safe_target] if weight is not None else torch.ones_like(lse)
        row_weight = row_weight * counted
    z_term = z_loss * row_weight * lse * lse
    if reduction == "none":
        return (loss.to(acc) + z_term).to(loss.dtype)
    if reduction == "sum":
        return (loss.to(acc) + z_term.sum()).to(loss.dtype)
    return (loss.to(acc) + z_term.sum() / row_weight.sum()).to(loss.dtype)


def sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction):
    """torchvision's sigmoid_focal_loss formula in eager torch ops: alpha_t * ce * (1 - p_t) ** gamma."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"Invalid Value for arg 'reduction': '{reduction} \n Supported reduction modes: 'none', "
                     "'mean', 'sum'")


def gaussian_nll_loss(input, target, var, full, eps, reduction):
    """torch's gaussian_nll_loss in torch ops, without its host check of var's values (so torch.func.vmap
    can run it): var clamped at eps for the value, with the gradient passed straight through the clamp as
    torch does (it clamps in place under no_grad)."""
    if not torch.is_tensor(var):
        var = var * torch.ones_like(input)
    elif var.size() != input.size() and input.size()[:-1] == var.size():
        var = var.unsqueeze(-1)
    clamped = var.clamp(min=eps).detach() + (var - var.detach())  # the value clamp(var), d/dvar = 1
    loss = 0.5 * (torch.log(clamped) + (input - target) ** 2 / clamped)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
