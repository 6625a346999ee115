"""The softmax-rows family's distribution losses on the op scaffold: jsd_loss (forward/reverse KL, the
generalized JSD, a top-k teacher) and log_probs (+ entropy and TRL's other per-token statistics: log sum p^2,
the mean logit, whether the token is the top-1 class), over the rows of (..., V) logits.

One forward launch (kernels/distribution_rows.py: a sweep for the log-sum-exps, for the divergences a
second over both rows) writes the loss (per row, or reduced in the launch) and saves per row what the
backward needs (each log-softmax's max and log-sum, the divergence's row coefficients, the entropy);
log_probs' output is one tensor of planes (``token_planes``: [lp | H | log sum p^2 | mean logit | is_top1
as 0/1], those asked for), split by fusedloss.functional; the statistics have no gradient;
the backward is one launch that writes each gradient once for any grad_output. With
``grad_in_forward`` (jsd) the forward also writes the gradient for grad_output 1 (the denominator
computed first, on the device) and the backward only rescales rows whose grad_output is not 1.

Vocabulary parallel (``process_group``): the logits (the teacher's too) hold this rank's block of the
classes; labels, tokens and top-k classes are global. The forward launches the shard's sweep (1)
(kernels/distribution_rows.py, SHARD_STATS), combines the statistics over the ranks (one all_reduce MAX,
one SUM; log_probs' statistics ride in them: B in the MAX, Q and Z in the SUM), and for jsd launches the
shard's sweep (2) with the whole rows' log-sum-exps and SUMs its sums over the ranks (a third all_reduce);
the rows' losses follow in torch ops from those R-sized statistics. Every rank holds the global loss; the
backward (no collective) writes the gradient of its own block from the whole rows' state.
``grad_in_forward`` does not apply.

Saved for the backward: the inputs and the state (the kernel's state, the gradients written by a
grad_in_forward forward). Nothing syncs with the host.
"""
import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import _scaffold, _vocab_parallel
from .._validation import TOKEN_STATS  # log_probs' planes after lp, in order (the kernels' STAT_PLANES)
from ._scaffold import accumulation_dtype, lazy_kernels
from ._eager import distillation_loss, token_log_probs


class DistributionOptions(NamedTuple):
    mode: str  # "jsd" | "log_probs"
    reduction: str  # jsd: "none" | "batchmean" | "sum" | "mean"; log_probs: "none"
    out_dtype: torch.dtype  # the outputs' dtype: the input's, float32 under autocast
    beta: float = 0.5
    temperature: float = 1.0
    ignore_index: int = -100
    entropy: bool = False  # log_probs: the entropy too
    grad_in_forward: bool = False  # jsd: the gradient for grad_output 1 written by the forward
    process_group: str = ""  # vocabulary parallel: the group's name (fusedloss/ops/_vocab_parallel.py); "": none
    softcap: Optional[float] = None  # the linear forms: the student's logits softcapped first (None: not)
    teacher_softcap: Optional[float] = None  # the teacher's
    log_sum_sq: bool = False  # log_probs: log sum p^2 too (no gradient)
    mean_logits: bool = False  # log_probs: the mean of z = x / T over the vocabulary too (no gradient)
    is_top1: bool = False  # log_probs: whether the token is z's first maximum too, as 0/1 (no gradient)


NO_GRADIENT = frozenset(("log_sum_sq_probs", "mean_logits", "is_top1"))


def token_planes(options):
    """The planes of log_probs' (linear_log_probs') output, in order: "log_probs", then the statistics asked
    for (kernels/distribution_rows.py ``out_planes``, the same order)."""
    flags = (options.entropy, options.log_sum_sq, options.mean_logits, options.is_top1)
    return ("log_probs",) + tuple(name for name, on in zip(TOKEN_STATS, flags) if on)


def stats_flags(names):
    """The options' (entropy, log_sum_sq, mean_logits, is_top1) of the statistics' names."""
    return tuple(name in names for name in TOKEN_STATS)




kernels = lazy_kernels("distribution_rows")


def kl_kind(beta):
    return "forward" if beta == 0 else "reverse" if beta == 1 else "mixed"


def problem_of(options, teacher, indices, labels, n_classes, batch, hard_weight=0.0, soft_weight=1.0):
    """The kernels' Problem of a call (also linear_jsd_loss's and linear_log_probs', on their chunks);
    ``batch``: the input's first dimension ('batchmean' without labels divides by it, as TRL and kl_div)."""
    problem = kernels().Problem
    if options.mode == "log_probs":
        return problem("log_probs", has_labels=True, entropy=options.entropy, ignore_index=options.ignore_index,
                       temperature=options.temperature, softcap=options.softcap, log_sum_sq=options.log_sum_sq,
                       mean_logits=options.mean_logits, is_top1=options.is_top1)
    return problem("jsd", "topk" if indices is not None else "logits", kl_kind(options.beta), labels is not None,
                   hard_weight != 0, False, options.ignore_index if labels is not None else 0, options.temperature,
                   options.beta, soft_weight, hard_weight, _soft_mean(options.reduction, labels, n_classes, batch),
                   1.0 if options.reduction == "batchmean" else -math.inf, options.softcap, options.teacher_softcap)


def _soft_mean(reduction, labels, n_classes, batch):
    """What each row's divergence is multiplied by: 1/V for 'mean'; 1/max(batch, 1) for 'batchmean'
    without labels (a fixed denominator: the kernel sums); else 1."""
    if reduction == "mean":
        return 1.0 / n_classes
    if reduction == "batchmean" and labels is None:
        return 1.0 / max(batch, 1)
    return 1.0


def kernel_reduction(reduction, labels):
    """The kernel's reduction of a jsd reduction: 'mean', and 'batchmean' with labels, divide by the
    counted rows ('mean' scales each row by 1/V first: ``problem_of``); 'batchmean' without labels sums
    rows already divided by the batch (TRL's and kl_div's size(0), not the rows of 3-D logits)."""
    if reduction == "batchmean" and labels is None:
        return "sum"
    return {"none": "none", "sum": "sum", "batchmean": "mean", "mean": "mean"}[reduction]


def _rows(tensor):
    """(R, last) rows of a (..., last) tensor: a view where the leading dimensions merge, else a copy."""
    if tensor is None:
        return None
    return tensor.reshape(math.prod(tensor.shape[:-1]), tensor.shape[-1])


def _flat(labels):
    return None if labels is None else labels.reshape(-1)


def out_shape(options, input):
    lead = tuple(input.shape[:-1])
    if options.mode == "log_probs":
        n_planes = len(token_planes(options))
        return (n_planes, *lead) if n_planes > 1 else lead
    return lead if options.reduction == "none" else ()


def count_rows(labels, ignore_index, n_rows, acc, device, reduction):
    """The counted rows (labels not ``ignore_index``; all without labels) as a 0-d float on the device: the
    'batchmean'/'mean' denominator of a gradient written before the loss is reduced ('batchmean': at least
    1, as TRL's, so that a batch with no counted row gives 0, not 0 / 0)."""
    if labels is None:
        count = torch.full((), n_rows, dtype=acc, device=device)
    else:
        count = (labels != ignore_index).sum(dtype=acc)
    return count.clamp_min(1) if reduction == "batchmean" else count


def _batch(input):
    """The input's first dimension (a 1-D input: its one row's V, as kl_div's size(0))."""
    return input.shape[0]




class DistributionRows(_scaffold.Family):
    name = "distribution_rows"
    options_type = DistributionOptions
    n_inputs = 4  # input, target (teacher logits / top-k log-probabilities; None for log_probs), indices, labels

    @staticmethod
    def forward(options, inputs, needs_grad):
        input, target, indices, labels = inputs
        rows, teacher, top, flat_labels = _rows(input), _rows(target), _rows(indices), _flat(labels)
        if options.process_group and rows.shape[0]:
            return _sharded_forward(options, input, rows, teacher, top, labels, any(needs_grad[:2]))
        problem = problem_of(options, target, indices, labels, _shard(options, rows)[1], _batch(input))
        reduction = "none" if options.mode == "log_probs" else kernel_reduction(options.reduction, labels)
        save = any(needs_grad[:2])
        extra, grads = {}, [None, None]
        if options.grad_in_forward and options.mode == "jsd" and reduction != "none" and save:
            if needs_grad[0]:
                grads[0] = extra["grad"] = torch.empty_like(rows, memory_format=torch.contiguous_format)
            if needs_grad[1] and indices is None:
                grads[1] = extra["teacher_grad"] = torch.empty_like(teacher, memory_format=torch.contiguous_format)
            if reduction == "mean":
                extra["denom"] = count_rows(flat_labels, options.ignore_index, rows.shape[0], accumulation_dtype(input.dtype),
                                            input.device, options.reduction)
        out, work = kernels().distribution_fwd(problem, rows, teacher, top, flat_labels, reduction,
                                               options.out_dtype, save, **extra)
        if reduction == "none":
            out = out.view(out_shape(options, input))
        return out, (work, *(g if g is None else g.view(t.shape) for g, t in zip(grads, (input, target))))

    @staticmethod
    def backward(options, inputs, state, grad_output, needs_grad, in_place):
        input, target, indices, labels = inputs
        work, grad, teacher_grad = state
        want_teacher = needs_grad[1] and indices is None
        reduced = options.mode == "jsd" and options.reduction != "none"
        if grad is not None or teacher_grad is not None:  # written by the forward for grad_output 1
            if in_place:
                state[1] = state[2] = None  # handed to autograd; a second backward recomputes
                scale = _scale_in_place
            else:
                scale = _scaled_copy
            return (scale(grad, grad_output) if needs_grad[0] else None,
                    scale(teacher_grad, grad_output) if want_teacher else None, None, None)
        rows, teacher, top, flat_labels = _rows(input), _rows(target), _rows(indices), _flat(labels)
        n_planes = len(token_planes(options)) if options.mode == "log_probs" else 1
        if reduced or grad_output.dim() == 0:
            g, g_strides = grad_output, (0, 0)
        elif n_planes > 1:  # [g_lp | g_H | ...]: the statistics' planes have no gradient and are not read
            g = grad_output.reshape(n_planes, -1)
            g_strides = (g.stride(1), g.stride(0))
        else:
            g = grad_output.reshape(-1)
            g_strides = (g.stride(0), 0)
        grad = torch.empty_like(rows, memory_format=torch.contiguous_format) if needs_grad[0] else None
        teacher_grad = (torch.empty_like(teacher, memory_format=torch.contiguous_format) if want_teacher else None)
        shard = _shard(options, rows)
        problem = problem_of(options, target, indices, labels, shard[1], _batch(input))
        kernels().distribution_bwd(problem, rows, teacher, top, flat_labels, work, g, g_strides,
                                   reduced and kernel_reduction(options.reduction, labels) == "mean", grad,
                                   teacher_grad, shard=shard if options.process_group else None)
        return (grad.view(input.shape) if grad is not None else None,
                teacher_grad.view(target.shape) if teacher_grad is not None else None, None, None)

    @staticmethod
    def compile_options(options):
        """Under torch.compile the gradient is computed in the backward (same values): the registered
        ops own no buffers across calls."""
        return options._replace(grad_in_forward=False)

    @staticmethod
    def reference(options, input, target, indices, labels):
        if options.mode == "log_probs":
            return token_log_probs(input, labels, options.temperature, options.ignore_index, options.entropy,
                                   options.process_group, stats=token_planes(options)[1:])
        return distillation_loss(input, target, indices, labels, options.beta, options.temperature,
                                 options.ignore_index, options.reduction, group=options.process_group
                                 ).to(options.out_dtype)

    @staticmethod
    def fake(options, inputs, needs_grad):
        input, target, indices, labels = inputs
        n_rows = math.prod(input.shape[:-1])
        problem = problem_of(options, target, indices, labels, input.shape[-1], 1)
        size = kernels().state_size(n_rows, problem.mode, problem.teacher, problem.hard, problem.temperature,
                                    any(needs_grad[:2]))
        out = input.new_empty(out_shape(options, input), dtype=options.out_dtype)
        return out, (input.new_empty(size, dtype=accumulation_dtype(input.dtype)), None, None)


def _shard(options, rows):
    """(first class, classes in all) of the logits' block: the whole row without a process group."""
    if not options.process_group:
        return 0, rows.shape[1]
    return _vocab_parallel.shard_layout(options.process_group, rows.shape[1], rows.device)


# ----------------------------------------------------------------------------------------------------
# vocabulary parallel (also linear_jsd_loss's and linear_log_probs', over their chunks)
# ----------------------------------------------------------------------------------------------------

_SUM_MAX = {"d_s": "m_s", "e_s": "m_s", "q_s": "m_s", "d_t": "m_t", "d_1": "m_1"}  # each sum relative to that max
_MAXIMA = ("m_s", "m_t", "m_1", "b_s")  # MAX'd over the ranks; the other planes are SUMmed


def _used_stats(problem):
    """The SHARD_STATS planes a problem needs: maxima first, then the sums."""
    names = ["m_s"] + (["m_t"] if problem.teacher == "logits" else [])
    own_lse = problem.hard and problem.temperature != 1.0
    names += ["m_1"] if own_lse else []
    names += ["b_s"] if problem.is_top1 else []
    names += ["d_s"] + (["e_s"] if problem.entropy else []) + (["q_s"] if problem.log_sum_sq else [])
    names += ["d_t"] if problem.teacher == "logits" else []
    names += (["d_1"] if own_lse else []) + (["x_y"] if problem.hard or problem.mode == "log_probs" else [])
    names += ["z_s"] if problem.mean_logits else []
    return names


def combine_shard_stats(problem, stats, group):
    """Each rank's SHARD_STATS planes (len(SHARD_STATS), R) -> the whole rows' statistics, a dict of (R,)
    tensors: the maxima MAX'd over the ranks (one all_reduce; B, the max before the token, with them), each
    sum moved to its new max (the entropy's E <- exp(m - M)(E + (m - M) D), Q <- exp(m - M)**2 Q) and SUMmed
    (one all_reduce). The label's logit x_y: one rank's, summed; Z (the sum of z) summed as it is."""
    index = {name: i for i, name in enumerate(kernels().SHARD_STATS)}
    used = _used_stats(problem)
    maxima = [name for name in used if name in _MAXIMA]
    sums = [name for name in used if name not in _MAXIMA]
    local = torch.stack([stats[index[name]] for name in maxima])  # (a list index would copy from the host)
    top = _vocab_parallel.all_reduce(local, "max", _vocab_parallel.group_of(group))
    shift = torch.where(local == top, torch.zeros_like(top), local - top)  # -inf - -inf: 0
    moved = []
    for name in sums:
        value = stats[index[name]]
        if name not in _SUM_MAX:  # x_y, z_s
            moved.append(value)
            continue
        k = maxima.index(_SUM_MAX[name])
        if name == "e_s":
            d = stats[index["d_s"]]
            value = value + torch.where(d > 0, shift[k] * d, torch.zeros_like(d))
        moved.append((2 * shift[k] if name == "q_s" else shift[k]).exp() * value)
    summed = _vocab_parallel.all_reduce(torch.stack(moved), "sum", _vocab_parallel.group_of(group))
    combined = {name: top[i] for i, name in enumerate(maxima)}
    combined.update({name: summed[i] for i, name in enumerate(sums)})
    if "m_1" not in combined:
        combined["m_1"], combined["d_1"] = combined["m_s"], combined["d_s"]
    return combined


def new_shard_state(problem, combined, n_rows, acc):
    """The state the backward (and the terms launch) reads (kernels/distribution_rows.py STATE) from the
    combined statistics: the divergence's planes zero until ``set_shard_terms``; the denominator slot 1."""
    ld_s = combined["d_s"].log()
    if problem.mode == "log_probs":
        entropy = ld_s - combined["e_s"] / combined["d_s"] if problem.entropy else torch.zeros_like(ld_s)
        planes = [combined["m_s"], ld_s, entropy]
    else:
        planes = [combined["m_s"], ld_s]
        if problem.teacher == "logits":
            zero = torch.zeros_like(ld_s)
            planes += [combined["m_t"], combined["d_t"].log(), zero, zero]
        if problem.hard and problem.temperature != 1.0:
            planes += [combined["m_1"], combined["d_1"].log()]
    state = torch.ones(len(planes) * n_rows + 1, dtype=acc, device=ld_s.device)
    state[:-1].view(len(planes), n_rows).copy_(torch.stack(planes))
    return state


def set_shard_terms(problem, state, terms, n_rows):
    """The divergence's row sums [K | K'] (summed over the ranks) into the state's planes 4 and 5."""
    if problem.teacher == "logits":
        state[4 * n_rows:6 * n_rows].view(2, n_rows).copy_(terms)


def shard_rows(problem, combined, state, terms, labels, indices, n_rows, n_classes):
    """The rows' totals and log-probabilities' statistics (a list in ``out_planes`` order after the first,
    empty for jsd) from the whole rows' statistics, as the kernel's (2): the divergence (its sums
    ``terms``) or the log-probability, weighted; ignored rows 0 (is_top1 0), a label, token or class outside
    [0, n_classes) NaN (is_top1 0)."""
    ld_s = state[n_rows:2 * n_rows]
    inv_t = kernels().kernel_float(1.0 / problem.temperature, ld_s.dtype)  # the sweep's 1 / T, bit for bit
    ones = torch.ones(n_rows, dtype=torch.bool, device=ld_s.device)
    counted = labels != problem.ignore_index if problem.has_labels else ones
    valid = (labels >= 0) & (labels < n_classes) if problem.hard or problem.mode == "log_probs" else ones
    if problem.teacher == "topk":
        valid = valid & ((indices >= 0) & (indices < n_classes)).all(-1)
    entropy, extras = None, []
    if problem.mode == "log_probs":
        total = (combined["x_y"] * inv_t - combined["m_s"]) - ld_s
        if problem.entropy:
            entropy = state[2 * n_rows:3 * n_rows]
        if problem.log_sum_sq:
            extras.append(combined["q_s"].log() - 2 * ld_s)
        if problem.mean_logits:
            extras.append(combined["z_s"] / n_classes)
    else:
        sum_s, sum_t = terms
        if problem.teacher == "topk" or problem.kl == "forward":
            value = sum_t
        elif problem.kl == "reverse":
            value = sum_s
        else:
            value = problem.beta * sum_t + (1.0 - problem.beta) * sum_s
        total = (problem.soft_w * problem.soft_mean) * value
        if problem.hard:
            ld_1 = combined["d_1"].log()
            total = total + problem.hard_w * ((combined["m_1"] - combined["x_y"]) + ld_1)
    bad = counted & ~valid

    def masked(value):
        return torch.where(bad, math.nan, torch.where(counted, value, torch.zeros_like(value)))

    planes = [masked(value) for value in ([entropy] if entropy is not None else []) + extras]
    if entropy is not None:  # the backward reads the rows' entropy as the forward gave it
        state[2 * n_rows:3 * n_rows].copy_(planes[0])
    if problem.is_top1:  # 0 (False) where the row is ignored or bad
        z_y = combined["x_y"] * inv_t
        planes.append(((z_y >= combined["m_s"]) & (z_y > combined["b_s"]) & counted & valid).to(ld_s.dtype))
    return masked(total), planes


def _sharded_forward(options, input, rows, teacher, top, labels, save):
    """The vocabulary-parallel forward: (out, state) as the single-process forward's (module docstring)."""
    group = options.process_group
    n_rows = rows.shape[0]
    shard = _vocab_parallel.shard_layout(group, rows.shape[1], rows.device)
    flat_labels = _flat(labels)
    problem = problem_of(options, teacher, top, labels, shard[1], _batch(input))
    acc = accumulation_dtype(input.dtype)
    k = kernels()
    stats = k.distribution_shard_stats(problem, rows, teacher if top is None else None, flat_labels, shard[0],
                                       rows.new_empty((len(k.SHARD_STATS), n_rows), dtype=acc))
    combined = combine_shard_stats(problem, stats, group)
    state = new_shard_state(problem, combined, n_rows, acc)
    terms = None
    if options.mode == "jsd":
        terms = k.distribution_shard_terms(problem, rows, teacher, top, state, n_rows, shard,
                                           rows.new_empty((2, n_rows), dtype=acc))
        terms = _vocab_parallel.all_reduce(terms, "sum", _vocab_parallel.group_of(group))
        set_shard_terms(problem, state, terms, n_rows)
    total, planes = shard_rows(problem, combined, state, terms, flat_labels, top, n_rows, shard[1])
    reduction = "none" if options.mode == "log_probs" else kernel_reduction(options.reduction, labels)
    if reduction == "none":
        out = torch.stack([total, *planes]) if planes else total
        out = out.to(options.out_dtype).view(out_shape(options, input))
    elif reduction == "sum":
        out = total.sum().to(options.out_dtype)
    else:
        denom = count_rows(flat_labels, options.ignore_index, n_rows, acc, rows.device, options.reduction)
        state[-1] = denom
        out = (total.sum() / denom).to(options.out_dtype)
    return out, (state if save else state[-1:], None, None)


def _scale_in_place(grad, grad_output):
    """grad *= grad_output (one element) on the device, nothing moved when it is 1."""
    from fusedloss.kernels.pointwise import scale_by_grad_output

    return scale_by_grad_output(grad, grad_output)


def _scaled_copy(grad, grad_output):
    return grad * grad_output


FAMILY = _scaffold.register(DistributionRows())


def distribution_loss(options, input, target=None, indices=None, labels=None):
    """jsd_loss / log_probs of validated arguments, in their output shape."""
    return _scaffold.run(FAMILY, options, (input, target, indices, labels))


# ----------------------------------------------------------------------------------------------------
# the kernels' reach: why they cannot serve a call (None when they can), asked by fusedloss.functional's routes
# ----------------------------------------------------------------------------------------------------

def unsupported_jsd(input, target, indices, labels, *unused):
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        return "a non-tensor input or target"
    if indices is not None and target.requires_grad and torch.is_grad_enabled():
        return "top-k teacher log-probabilities that require grad"
    return None


def unsupported_log_probs(input, tokens, *unused):
    if not isinstance(input, Tensor) or not isinstance(tokens, Tensor):
        return "a non-tensor input or tokens"
    return None
