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


def rank_hinge_loss(y_pred, y_true, num_neg, margin, reduction):
    """RankHingeLoss of a text-matching library: groups of one positive score followed by ``num_neg``
    negatives (rows [pos, neg_1, ..., neg_k, pos, ...] of y_pred (B * (num_neg + 1), 1)); per group
    max(0, margin - (s_pos - mean(s_neg))), through margin_ranking_loss as the reference. y_true is unused."""
    groups = y_pred.reshape(-1, num_neg + 1)
    y_pos = groups[:, :1]
    y_neg = groups[:, 1:].mean(dim=-1, keepdim=True)
    return F.margin_ranking_loss(y_pos, y_neg, torch.ones_like(y_pos), margin=margin, reduction=reduction)


def rank_cross_entropy_loss(y_pred, y_true, num_neg):
    """RankCrossEntropyLoss of the same library: per group of num_neg + 1 scores,
    -sum_j y_true_j log(softmax(s)_j + eps) with eps = float64's machine epsilon, mean over groups."""
    logits = y_pred.reshape(-1, num_neg + 1)
    labels = y_true.reshape(-1, num_neg + 1)
    return -torch.mean(torch.sum(labels * torch.log(F.softmax(logits, dim=-1) + torch.finfo(torch.float64).eps),
                                 dim=-1))


def _reduce(loss, reduction):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def multi_margin_loss(input, target, p, margin, weight, reduction):
    """torch's multi_margin_loss in differentiable torch ops (ATen's has no double backward): per row
    sum_{c != y} w_y max(0, margin - x_y + x_c)^p / C, the term's gradient 0 where it is exactly 0 (ATen's
    z > 0). A target outside [0, C) makes its row NaN (the Triton path's value; torch raises)."""
    x = input.reshape(-1, input.shape[-1] if input.dim() else 1)
    n_classes = x.shape[1]
    y = target.reshape(-1, 1)
    valid = (y >= 0) & (y < n_classes)
    y = torch.where(valid, y, torch.zeros_like(y))
    z = margin - x.gather(1, y) + x
    hinge = torch.where(z > 0, z, torch.zeros_like(z))
    if p == 2:
        hinge = hinge * hinge
    is_target = torch.arange(n_classes, device=x.device) == y
    hinge = torch.where(is_target, torch.zeros_like(hinge), hinge)
    if weight is not None:
        hinge = hinge * weight[y]
    loss = torch.where(valid.squeeze(1), hinge.sum(1) / n_classes, float("nan"))
    return _reduce(loss.reshape(target.shape), reduction)


def multilabel_margin_loss(input, target, reduction, list_block=64):
    """torch's multilabel_margin_loss in differentiable torch ops (ATen's has no double backward): per row,
    the targets up to the first negative entry, sum_j sum_{i not a target} max(0, 1 - x_{t_j} + x_i) / C.
    A row with an entry outside [-1, C) is NaN (the Triton path's value; torch raises). Memory: N x
    ``list_block`` x C per step over the list positions."""
    x = input.reshape(-1, input.shape[-1] if input.dim() else 1)
    n_classes = x.shape[1]
    t = target.reshape(x.shape)
    in_list = torch.cumprod((t >= 0).long(), dim=1).bool()  # before the first negative entry
    bad = ((t < -1) | (t >= n_classes)).any(dim=1)
    t = torch.where(in_list & (t < n_classes), t, torch.zeros_like(t))
    classes = torch.arange(n_classes, device=x.device)
    is_target = ((t.unsqueeze(2) == classes) & in_list.unsqueeze(2)).any(dim=1)  # (N, C)
    total = x.new_zeros(x.shape[0])
    for j0 in range(0, n_classes, list_block):
        tj, listed = t[:, j0:j0 + list_block], in_list[:, j0:j0 + list_block]
        z = 1 - x.gather(1, tj).unsqueeze(2) + x.unsqueeze(1)  # (N, list_block, C)
        counted = (z > 0) & listed.unsqueeze(2) & ~is_target.unsqueeze(1)
        total = total + torch.where(counted, z, torch.zeros_like(z)).sum(dim=(1, 2))
    loss = torch.where(bad, float("nan"), total / n_classes)
    return _reduce(loss if input.dim() == 2 else loss.reshape(()), reduction)
