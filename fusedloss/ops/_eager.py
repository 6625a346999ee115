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
    input = softcapped(input, softcap)
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
        # an ignored row adds nothing and gets no gradient, whatever its logits (-inf, NaN: 0 * lse**2 would
        # be NaN), as torch ignores its loss; a 'mean' that counts no row is then NaN with zero gradients, as
        # torch's and the kernels' (lse is replaced, not multiplied by 0: where() would pass 0 * NaN back)
        lse = torch.where(counted, lse, torch.zeros_like(lse))
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


def linear_logits(input, linear_weight, linear_bias, logit_scale=1.0):
    """torch's reference path of linear_cross_entropy up to the logits: ``F.linear`` with the weight's
    middle dimensions (K-dimensional loss) folded into the rows, then the logits shaped (N, C, d1..dk),
    times ``logit_scale`` where it is not 1 (as Cohere's and Granite's heads scale theirs)."""
    n_classes, out_features, in_features = linear_weight.shape[0], linear_weight.shape[1:-1], linear_weight.shape[-1]
    if out_features:
        linear_weight = linear_weight.reshape(-1, in_features)
        linear_bias = linear_bias.reshape(-1) if linear_bias is not None else None
    logits = F.linear(input, linear_weight, linear_bias)
    if logit_scale != 1.0:
        logits = logits * logit_scale
    return logits.reshape(*input.shape[:-1], n_classes, *out_features)


def softcapped(logits, softcap):
    """softcap * tanh(logits / softcap), or the logits (None)."""
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def softcapped_wide(logits, softcap):
    """``softcapped`` of 16-bit logits computed and kept in float32, as the kernels (and TRL's fused head) cap
    them: rounding the capped values back to 16 bits would make ties the kernels do not see (is_top1)."""
    if softcap is not None and logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    return softcapped(logits, softcap)


def linear_cross_entropy(input, linear_weight, target, linear_bias, weight, reduction, ignore_index, label_smoothing,
                         z_loss, softcap, process_group, loss_dtype=None, logit_scale=1.0, token_stats=False):
    """linear_cross_entropy as torch 2.13's reference path computes it (the logits whole), plus the
    extras, or its vocabulary-parallel form (``process_group``: a registered group's name); the logits
    cast to ``loss_dtype`` first when given. With ``token_stats`` (class-index targets, no group):
    (loss, ``token_statistics`` of the same logits)."""
    logits = linear_logits(input, linear_weight, linear_bias, logit_scale)
    if loss_dtype is not None and logits.dtype != loss_dtype:
        logits = logits.to(loss_dtype)
        weight = weight.to(loss_dtype) if weight is not None and weight.is_floating_point() else weight
    if process_group:
        return vocab_parallel_cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                                            softcap, process_group)
    loss = eager_cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    if token_stats:
        stats = token_statistics(softcapped_wide(logits, softcap),
                                 target.reshape(()) if logits.dim() == 1 else target, ignore_index)
        return loss, stats.to(loss.dtype)
    return loss


def token_statistics(logits, target, ignore_index):
    """TRL's fused-head statistics of cross-entropy logits ((N, C, d1..dk) or (C,)) and class-index targets:
    (4, *target.shape) [entropy | log sum p^2 | mean logit | is_top1 as 0/1], no gradient (``token_log_probs``'
    rules: 0 for ignored rows, NaN (is_top1 0) for a target outside the classes)."""
    with torch.no_grad():
        rows = logits.detach().movedim(1, -1) if logits.dim() > 1 else logits.detach()
        return token_log_probs(rows, target.long(), 1.0, ignore_index, False,
                               stats=("entropy", "log_sum_sq_probs", "mean_logits", "is_top1"))[1:]


def vocab_parallel_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                                 process_group):
    """Cross entropy of logits whose classes are sharded over the ranks of ``process_group`` (its
    registered name; fusedloss/ops/_vocab_parallel.py): this rank's block of every row, global targets
    and class weights; the global loss on every rank, differentiable with respect to this rank's block.
    The same collectives as the fused path: one all_reduce MAX of the row maxima, one all_reduce SUM of
    the packed row sums (sum of exp, target logit, and the per-class sums of smoothing / soft targets).
    The formulas are the kernel's (kernels/softmax_rows.py, steps (1)-(2)), over the whole vocabulary."""
    from . import _vocab_parallel

    prob_target = input.shape == target.shape
    if input.dtype != torch.float64 and torch.is_autocast_enabled(input.device.type):
        input = input.float()
        weight = weight.float() if weight is not None else None
    out_dtype = input.dtype
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    n_local = input.shape[0 if input.dim() == 1 else 1]
    offset, n_total = _vocab_parallel.shard_layout(process_group, n_local, input.device)
    _vocab_parallel.check_class_weight(weight, n_total)
    loss_shape = ((input.shape[0], *input.shape[2:]) if input.dim() > 1 else ()) if prob_target else target.shape
    # rows (R, C_local): the class dimension last
    x = input.reshape(1, -1) if input.dim() == 1 else input.movedim(1, -1).reshape(-1, n_local)
    x = softcapped(x.to(acc), softcap)
    n_rows = x.shape[0]
    # (1) the row max over every rank (a shift: not differentiated), then this rank's sums relative to it
    local_max = x.detach().amax(1) if n_local else x.new_full((n_rows,), float("-inf"))
    row_max = _vocab_parallel.max_over_ranks(local_max, process_group)
    row_max = torch.where(row_max == float("-inf"), 0.0, row_max)
    shifted = x - row_max[:, None]
    sums = [shifted.exp().sum(1)]
    w_local = weight[offset:offset + n_local].to(acc) if weight is not None else None
    if prob_target:
        t = target.reshape(1, -1) if target.dim() == 1 else target.movedim(1, -1).reshape(-1, n_local)
        t = t.to(acc)
        if label_smoothing > 0:
            t = t * (1 - label_smoothing) + label_smoothing / n_total
        sums.append(torch.zeros_like(sums[0]))  # no target logit
    else:
        y = target.reshape(-1).long()
        counted = y != ignore_index
        in_range = (y >= 0) & (y < n_total)
        here = counted & in_range & (y >= offset) & (y < offset + n_local)
        x_y = x.gather(1, (y - offset).clamp(0, max(n_local - 1, 0))[:, None])[:, 0] if n_local else sums[0] * 0
        sums.append(torch.where(here, x_y, 0.0))
    per_class_sums = prob_target or label_smoothing > 0
    if per_class_sums:
        a = t if prob_target else torch.ones_like(x[:1])
        if w_local is not None:
            a = a * w_local
        sums.append(a.sum(1).expand(n_rows))
        sums.append(torch.where(a != 0, a * shifted, 0.0).sum(1))
    total = _vocab_parallel.sum_over_ranks(torch.stack(sums), process_group)
    log_d = total[0].log()
    lse = row_max + log_d
    smooth = (log_d * total[2] - total[3]) if per_class_sums else None
    # (2) the loss of each row and its share of the 'mean' denominator
    if prob_target:
        loss = smooth
        if z_loss:
            loss = loss + z_loss * lse * lse
        row_weight = torch.ones_like(loss)
    else:
        w_y = weight.to(acc)[torch.where(counted & in_range, y, 0)] if weight is not None else torch.ones_like(lse)
        w_y = torch.where(counted & in_range, w_y, 0.0)
        loss = w_y * ((row_max - total[1]) + log_d)
        if label_smoothing > 0:
            loss = (1 - label_smoothing) * loss + (label_smoothing / n_total) * smooth
        if z_loss:
            loss = loss + z_loss * w_y * lse * lse
        invalid = counted & ~in_range
        loss = torch.where(invalid, float("nan"), torch.where(counted, loss, 0.0))
        row_weight = torch.where(invalid, float("nan"), w_y)
    if reduction == "none":
        return loss.reshape(loss_shape).to(out_dtype)
    if reduction == "sum":
        return loss.sum().to(out_dtype)
    return (loss.sum() / row_weight.sum()).to(out_dtype)


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


# ----------------------------------------------------------------------------------------------------
# distillation and token log-probabilities (fusedloss.functional.jsd_loss, log_probs and their linear forms)
# ----------------------------------------------------------------------------------------------------


def _masked_product(prob, value):
    """prob * value, 0 where prob is 0, differentiable twice (value may be -inf - -inf there: it is
    replaced before the product, so no NaN reaches a gradient; a NaN probability stays NaN, as in the
    kernel)."""
    live = prob != 0
    return torch.where(live, prob * torch.where(live, value, torch.zeros_like(value)), torch.zeros_like(prob))


def _rows_of(tensor, last):
    """(R, last) rows of a (..., last) tensor."""
    return tensor.reshape(-1, last)


def _computed_in(tensor):
    """A 16-bit floating tensor in float32 (the kernels' accumulation; torch's 16-bit softmax would differ
    from them by a 16-bit rounding), anything else as it is."""
    if tensor is not None and tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


def _only_counted(rows, counted):
    """``rows`` (R, ...) with the rows that do not count replaced by zeros: their loss is 0 and their
    gradient exactly 0 whatever their values (an all -inf row would otherwise send NaN back)."""
    if rows is None or counted is None:
        return rows
    return torch.where(counted.view(-1, *([1] * (rows.dim() - 1))), rows, torch.zeros_like(rows))


class _Classes:
    """The classes a row's tensors hold: all of them (``group`` ""), or this rank's block of a vocabulary
    sharded over the group ``group`` (its registered name; fusedloss/ops/_vocab_parallel.py). The torch
    ops below reach the whole row only through it: a log-softmax over the whole row, a sum over the whole
    row, the values at given (global) classes. Sharded, every rank computes the same rows' losses and
    differentiates them with respect to its own block: the row statistics are all-reduced, and the
    whole-row values a rank uses on its own block (the log-sum-exp) go through ``copy_to_group`` so that
    their gradient is summed over the ranks."""

    def __init__(self, n_local, device, group=""):
        self.group, self.n_local = group, n_local
        if group:
            from . import _vocab_parallel

            self._vp = _vocab_parallel
            self.offset, self.total = _vocab_parallel.shard_layout(group, n_local, device)
        else:
            self.offset, self.total = 0, n_local

    def log_softmax(self, z):
        if not self.group:
            return torch.log_softmax(z, dim=-1)
        if self.n_local:
            top = z.detach().amax(-1)
        else:
            top = z.new_full(z.shape[:-1], -math.inf)
        top = self._vp.max_over_ranks(top, self.group)
        shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        lse = shift + torch.log(self.row_sum(torch.exp(z - shift[:, None])))
        return z - self._vp.copy_to_group(lse, self.group)[:, None]

    def row_sum(self, terms):
        """(R, V_local) -> (R,): the sum over the whole row."""
        total = terms.sum(-1)
        return self._vp.sum_over_ranks(total, self.group) if self.group else total

    def pick(self, values, classes):
        """``values`` (R, V_local) at the global ``classes`` (R, K): where this block holds the class, else 0."""
        if classes.dtype != torch.int64 and classes.dtype != torch.int32:
            classes = classes.long()  # uint8/int16 tokens, as the kernels take them (gather takes int32/int64)
        local = classes - self.offset
        here = (local >= 0) & (local < self.n_local)
        if not self.n_local:
            return values.new_zeros(classes.shape)
        picked = values.gather(-1, torch.where(here, local, torch.zeros_like(local)))
        return torch.where(here, picked, torch.zeros_like(picked))


def jsd_rows(student, teacher, indices, beta, temperature, classes=None):
    """Each row's divergence (kernels/distribution_rows.py (2)) in torch ops, differentiable twice: forward
    KL (beta 0), reverse KL (beta 1), the generalized JSD otherwise; ``indices``: the teacher as top-k
    (log-probabilities ``teacher`` at classes ``indices``, forward KL; a class outside [0, V): the row's
    loss and gradient NaN, as the kernel's). Rows (R, V) in, (R,) out; ``classes``: a ``_Classes`` (a
    vocabulary shard)."""
    classes = classes or _Classes(student.shape[-1], student.device)
    s = classes.log_softmax(student / temperature)
    if indices is not None:
        t = teacher
        here = ((indices - classes.offset) >= 0) & ((indices - classes.offset) < classes.n_local)
        terms = torch.where(here, _masked_product(t.exp(), t - classes.pick(s, indices)), torch.zeros_like(t))
        valid = ((indices >= 0) & (indices < classes.total)).all(-1)
        return classes.row_sum(terms) * torch.where(valid, 1.0, math.nan).to(terms.dtype)
    t = classes.log_softmax(teacher / temperature)
    p, q = s.exp(), t.exp()
    if beta == 0:
        return classes.row_sum(_masked_product(q, t - s))
    if beta == 1:
        return classes.row_sum(_masked_product(p, s - t))
    live = (p != 0) | (q != 0)
    zero = torch.zeros_like(s)
    mix = torch.logaddexp(torch.where(live, t, zero) + math.log(beta), torch.where(live, s, zero) + math.log1p(-beta))
    return (beta * classes.row_sum(_masked_product(q, t - mix))
            + (1 - beta) * classes.row_sum(_masked_product(p, s - mix)))


def distillation_loss(student, teacher, indices, labels, beta, temperature, ignore_index, reduction,
                      hard_weight=0.0, soft_weight=1.0, group=""):
    """jsd_loss (and linear_jsd_loss on its logits) in torch ops: the rows' divergences, masked by labels,
    plus ``hard_weight`` times the student's cross entropy at T = 1 against the labels, reduced over the
    counted rows: 'batchmean' sum / counted (at least 1, TRL's: no counted row gives 0), 'mean' the
    divergence's sum / (counted x V) (torch's kl_div 'mean') and the cross entropy's / counted, 'sum',
    'none' (the rows' shape); 'batchmean' without labels divides by the input's first dimension, as TRL's
    and kl_div's (the batch of (B, L, V) logits). 16-bit logits are computed in float32. ``group``: the
    logits hold this rank's block of the classes (``_Classes``)."""
    if student.dtype != torch.float64 and torch.is_autocast_enabled(student.device.type):
        student = student.float()
        teacher = teacher.float() if teacher.is_floating_point() else teacher
    student, teacher = _computed_in(student), _computed_in(teacher)
    classes = _Classes(student.shape[-1], student.device, group)
    n_classes = classes.total
    lead = student.shape[:-1]
    y = labels.reshape(-1) if labels is not None else None
    counted = y != ignore_index if y is not None else None
    rows = _only_counted(_rows_of(student, student.shape[-1]), counted)
    teacher_rows = _only_counted(_rows_of(teacher, teacher.shape[-1]), counted)
    index_rows = _only_counted(_rows_of(indices, indices.shape[-1]), counted) if indices is not None else None
    soft = jsd_rows(rows, teacher_rows, index_rows, beta, temperature, classes)
    if counted is None:
        counted = torch.ones(soft.shape, dtype=torch.bool, device=soft.device)
    total = soft_weight * soft * (1.0 / n_classes if reduction == "mean" else 1.0)
    if hard_weight:
        valid = (y >= 0) & (y < n_classes)
        target = torch.where(counted & valid, y, 0)[:, None]
        ce = -classes.row_sum(classes.pick(classes.log_softmax(rows), target))
        total = total + hard_weight * torch.where(valid | ~counted, ce, float("nan"))
    total = torch.where(counted, total, torch.zeros_like(total))
    if reduction == "none":
        return total.reshape(lead)
    if reduction == "sum":
        return total.sum()
    if reduction == "batchmean" and labels is None:
        return total.sum() / max(student.shape[0], 1)
    count = counted.sum()
    return total.sum() / (count.clamp_min(1) if reduction == "batchmean" else count)


def token_log_probs(input, tokens, temperature, ignore_index, with_entropy, group="", *, stats=()):
    """log_softmax(input / T)[token] per row (0 for ignored rows), and with ``with_entropy`` also the rows'
    entropy -sum p log p (0 for ignored rows): (2, *rows) stacked, else the rows' shape. In torch ops,
    differentiable twice. A token outside [0, V) that is not ignore_index: NaN. ``group``: the logits hold
    this rank's block of the classes (``_Classes``). ``stats``: names among "entropy", "log_sum_sq_probs"
    (log sum p**2), "mean_logits" (the mean of z = input / T over the vocabulary) and "is_top1" (whether the
    token is z's first maximum, torch.argmax's tie rule: z_token >= max z and z_token > max over earlier
    classes; as 0/1): planes stacked after the log-probabilities in that order (the kernels' order), the
    last three without gradient, 0 for ignored rows (is_top1 also 0 for a token outside [0, V), the others
    NaN there)."""
    if input.dtype != torch.float64 and torch.is_autocast_enabled(input.device.type):
        input = input.float()
    input = _computed_in(input)
    classes = _Classes(input.shape[-1], input.device, group)
    wanted = set(stats) | ({"entropy"} if with_entropy else set())
    y = tokens.reshape(-1)
    counted = y != ignore_index
    valid = (y >= 0) & (y < classes.total)
    z = _only_counted(_rows_of(input, input.shape[-1]), counted) / temperature
    s = classes.log_softmax(z)
    y_safe = torch.where(counted & valid, y, 0)
    lp = classes.row_sum(classes.pick(s, y_safe[:, None]))
    lp = torch.where(counted, torch.where(valid, lp, float("nan")), torch.zeros_like(lp))
    if not wanted:
        return lp.reshape(tokens.shape)
    planes = [lp]
    if "entropy" in wanted:
        planes.append(-classes.row_sum(_masked_product(s.exp(), s)))
    z, s = z.detach(), s.detach()  # the statistics below have no gradient (TRL's)
    if "log_sum_sq_probs" in wanted:
        planes.append(torch.log(classes.row_sum(torch.exp(2 * s))))
    if "mean_logits" in wanted:
        planes.append(classes.row_sum(z) / classes.total)
    planes = [torch.where(counted, torch.where(valid, p, float("nan")), torch.zeros_like(p)) for p in planes]
    if "is_top1" in wanted:
        local = torch.arange(classes.n_local, device=z.device) + classes.offset
        earlier = torch.where(local < y_safe[:, None], z, float("-inf"))
        if classes.n_local:
            top, before = z.amax(-1), earlier.amax(-1)
        else:
            top = before = z.new_full(z.shape[:-1], float("-inf"))
        if group:
            top = classes._vp.max_over_ranks(top, group)
            before = classes._vp.max_over_ranks(before, group)
        z_y = classes.row_sum(classes.pick(z, y_safe[:, None]))
        top1 = (z_y >= top) & (z_y > before) & counted & valid
        planes.append(top1.to(lp.dtype))
    return torch.stack(planes).reshape(len(planes), *tokens.shape)


def sharded_nll_loss(input, target, weight, ignore_index, reduction, process_group, class_dim):
    """nll_loss of log-probabilities whose classes are sharded over ``process_group`` (its registered name;
    "" for none): each rank gathers the target's log-probability where it holds that class (0 elsewhere),
    one all-reduce SUM gives every rank the rows' losses (differentiable: each rank's gradient is its own
    classes'). Global targets and class weights; a target outside [0, C) that is not ignore_index: NaN."""
    from . import _vocab_parallel

    if not process_group:
        return F.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)
    n_local = input.shape[class_dim]
    offset, n_total = _vocab_parallel.shard_layout(process_group, n_local, input.device)
    _vocab_parallel.check_class_weight(weight, n_total)
    counted = target != ignore_index
    valid = (target >= 0) & (target < n_total)
    here = counted & valid & (target >= offset) & (target < offset + n_local)
    local_index = torch.where(here, target - offset, 0).long()
    if n_local:
        picked = input.gather(class_dim, local_index.unsqueeze(class_dim)).squeeze(class_dim)
    else:
        picked = input.new_zeros(target.shape)
    w = weight[torch.where(counted & valid, target, 0).long()].to(input.dtype) if weight is not None \
        else torch.ones_like(picked)
    w = torch.where(counted & valid, w, torch.zeros_like(w))
    rows = torch.where(here, -w * picked, torch.zeros_like(picked))
    rows = _vocab_parallel.sum_over_ranks(rows, process_group)
    rows = torch.where(counted & ~valid, float("nan"), rows)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / torch.where(counted & ~valid, float("nan"), w).sum()
