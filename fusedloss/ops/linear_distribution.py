"""The matmul-rows family's distribution losses: linear_jsd_loss and linear_log_probs. The logits of one
or two LM heads are computed per chunk of tokens by the family's chunk driver (fusedloss/ops/_chunks.py)
and never whole; the distribution-rows kernels (kernels/distribution_rows.py) run on each chunk.

linear_jsd_loss, reduced ('batchmean', 'mean', 'sum': one grad_output for the loss): the denominator
(the counted rows) first, on the device; then per chunk the student's and the teacher's logits (GEMM 1
of each head), one kernel launch for the chunk's loss (over the denominator) that also writes
d loss / d logits for grad_output 1 over each head's buffer that needs a gradient, and the gradient
GEMMs of those heads (dX = dlogits W, dW += dlogits^T X in float32, db). The backward scales dX, dW, db
by grad_output in place (nothing moves when it is 1). A frozen teacher costs its one GEMM per chunk.
'none': the forward computes the rows' losses; the backward recomputes each chunk's logits and writes
the gradient for the rows' own grad_output.

linear_log_probs: the forward computes the log-probabilities (and entropies, and the per-token statistics
asked for: log sum p^2, the mean logit, is_top1; planes as log_probs') per chunk (GEMM 1); the backward
recomputes each chunk's logits (GEMM 1 again; the statistics not recomputed), writes d/d logits for the
rows' gradients of the log-probabilities and entropies, then GEMMs 2 and 3: four GEMMs in all.

Vocabulary parallel (``process_group``): each head's weight (and bias) holds this rank's block of the
classes (the same block for both heads). A first pass over the chunks writes each row's statistics over
the block (kernels/distribution_rows.py SHARD_STATS), combined over the ranks (fusedloss/ops/
distribution_rows.py: an all_reduce MAX and a SUM); linear_jsd_loss then passes again for the block's
share of the divergence's sums (a third all_reduce), and, for a reduced loss with gradients, once more
for d loss / d logits and the gradient GEMMs (three passes of GEMM 1 where the single process makes one:
the generalized JSD needs the whole rows' log-sum-exps before its sums, and its sums before the
gradient); with a single chunk the first pass's buffers are kept instead. linear_log_probs: one pass
forward, the combined statistics saved, the backward's pass as without shards. The input's gradient is
this rank's term (all-reduce it over the group, as linear_cross_entropy's); dW, db are the block's rows.

Peak extra memory: the chunk buffers, CHUNK_BYTES of logits for both heads together (or the rows of
``options.batch_chunk_size``), plus the float32 weight-gradient accumulators of 16-bit weights.
"""
import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import _chunks, _scaffold, _vocab_parallel
from ._scaffold import accumulation_dtype
from ._eager import distillation_loss, linear_logits, softcapped, softcapped_wide, token_log_probs
from .distribution_rows import (DistributionOptions, combine_shard_stats, count_rows, kernel_reduction, kernels,
                                new_shard_state, problem_of, set_shard_terms, shard_rows, token_planes)


class LinearJSDOptions(NamedTuple):
    reduction: str  # "none" | "batchmean" | "sum" | "mean"
    out_dtype: torch.dtype  # the loss's dtype: the input's, float32 under autocast
    beta: float = 0.5
    temperature: float = 1.0
    ignore_index: int = -100
    hard_weight: float = 0.0  # times the student's cross entropy at T = 1 against the labels
    soft_weight: float = 1.0  # times the divergence
    chunk_rows: int = 0  # rows per chunk; 0: as many as CHUNK_BYTES of both heads' logits hold
    process_group: str = ""  # vocabulary parallel: the group's name; "": none
    logit_scale: float = 1.0  # the student's logits are logit_scale * (input W^T + b), before the temperature
    teacher_logit_scale: float = 1.0  # the teacher's, likewise
    softcap: Optional[float] = None  # the student's scaled logits softcapped, before the temperature
    teacher_softcap: Optional[float] = None  # the teacher's


class LinearLogProbsOptions(NamedTuple):
    out_dtype: torch.dtype
    temperature: float = 1.0
    ignore_index: int = -100
    entropy: bool = False
    chunk_rows: int = 0
    process_group: str = ""
    logit_scale: float = 1.0  # the logits are logit_scale * (input W^T + b), before the temperature
    softcap: Optional[float] = None  # the scaled logits softcapped, before the temperature
    log_sum_sq: bool = False  # log sum p^2 too (no gradient)
    mean_logits: bool = False  # the mean of z (scaled, softcapped, over T) over the vocabulary too (no gradient)
    is_top1: bool = False  # whether the token is z's first maximum too, as 0/1 (no gradient)


def _head(input, weight, bias, logit_scale=1.0):
    return _chunks.Head(input.reshape(-1, input.shape[-1]), weight, bias, logit_scale)


def _jsd_heads(options, x, w, b, xt, wt, bt):
    """The student's head and the teacher's, each with its logit scale."""
    return _head(x, w, b, options.logit_scale), _head(xt, wt, bt, options.teacher_logit_scale)


def _distribution_options(options):
    return DistributionOptions("jsd", options.reduction, options.out_dtype, options.beta, options.temperature,
                               options.ignore_index, softcap=options.softcap, teacher_softcap=options.teacher_softcap)


def _flat(labels):
    return None if labels is None else labels.reshape(-1)




def _sharded_statistics(problem, heads, n, chunk, flat, group, shard, acc):
    """Pass 1 over the chunks (vocabulary parallel): the whole rows' statistics and the state built from
    them. Returns (combined statistics, state, the single chunk's buffers or None)."""
    first = heads[0].x
    stats = first.new_empty((len(kernels().SHARD_STATS), n), dtype=acc)

    def visit(i, r0, rows, logits):
        kernels().distribution_shard_stats(problem, logits[0], logits[1] if len(logits) > 1 else None,
                                           flat[r0:r0 + rows] if flat is not None else None, shard[0],
                                           stats[:, r0:r0 + rows])

    kept = _chunks.sweep(heads, n, chunk, visit)
    combined = combine_shard_stats(problem, stats, group)
    return combined, new_shard_state(problem, combined, n, acc), kept


def _sharded_gradients(problem, heads, n, chunk, flat, state, shard, grads, grad_output, strides, kept):
    """The gradient pass (vocabulary parallel): per chunk d loss / d logits from the whole rows' state for
    ``grad_output`` (addressed by ``strides``), then the heads' gradient GEMMs into ``grads``."""

    def visit(i, r0, rows, logits):
        g = grad_output[..., r0:] if strides[0] else grad_output
        kernels().distribution_bwd(problem, logits[0], logits[1] if len(logits) > 1 else None, None,
                                   flat[r0:r0 + rows] if flat is not None else None, state[r0:], g, strides, False,
                                   grad=logits[0] if grads[0] is not None else None,
                                   teacher_grad=logits[1] if len(grads) > 1 and grads[1] is not None else None,
                                   shard=shard, n_state=n)

    _chunks.sweep(heads, n, chunk, visit, grads, kept=kept)


class LinearJSD(_scaffold.Family):
    name = "linear_jsd"
    options_type = LinearJSDOptions
    n_inputs = 7  # input, weight, bias, teacher_input, teacher_weight, teacher_bias, labels

    @staticmethod
    def _sweep(options, inputs, grads, out, grad_scale=None, denom=None):
        """One pass over the chunks: the loss into ``out(i, r0, rows)``; with ``grads`` ([student's, teacher's]
        [dX, dW, db] lists or None) the gradient for grad_output 1, over ``denom`` (or for the rows'
        ``grad_scale`` = (tensor, row stride)), accumulated into them."""
        x, w, b, xt, wt, bt, labels = inputs
        student, teacher = _jsd_heads(options, x, w, b, xt, wt, bt)
        n, v = student.x.shape[0], w.shape[0]
        chunk = _chunks.chunk_rows(n, v + wt.shape[0], x.element_size(), options.chunk_rows)
        flat = _flat(labels)
        problem = problem_of(_distribution_options(options), wt, None, labels, v, x.shape[0] if x.dim() > 1 else v,
                             options.hard_weight,
                             options.soft_weight)
        grads = grads or [None, None]

        def visit(i, r0, rows, logits):
            chunk_out = out(i, r0, rows)
            scale = {}
            if grad_scale is not None:
                g, stride = grad_scale
                scale = dict(grad_scale=g[r0:] if stride else g, grad_scale_strides=(stride, 0))
            kernels().distribution_fwd(
                problem, logits[0], logits[1], None, flat[r0:r0 + rows] if flat is not None else None,
                "none" if chunk_out.dim() else kernel_reduction(options.reduction, labels), chunk_out.dtype, False,
                out=chunk_out, denom=denom, grad=logits[0] if grads[0] is not None else None,
                teacher_grad=logits[1] if grads[1] is not None else None, **scale)

        _chunks.sweep([student, teacher], n, chunk, visit, grads)
        return n, chunk

    @staticmethod
    def forward(options, inputs, needs_grad):
        x, w, b, xt, wt, bt, labels = inputs
        if options.process_group and x.numel() // max(x.shape[-1], 1):
            with torch.autocast(x.device.type, enabled=False):
                return LinearJSD._sharded_forward(options, inputs, needs_grad)
        with torch.autocast(x.device.type, enabled=False):  # the GEMMs run in the inputs' dtype
            reduced = options.reduction != "none"
            want = ((needs_grad[0], needs_grad[1], needs_grad[2]), (needs_grad[3], needs_grad[4], needs_grad[5]))
            heads = _jsd_heads(options, x, w, b, xt, wt, bt)
            grads = [_chunks.new_grads(head, t, wanted) if reduced and any(wanted) else None
                     for head, t, wanted in zip(heads, (x, xt), want)]
            n = heads[0].x.shape[0]
            acc = accumulation_dtype(x.dtype)
            mean = kernel_reduction(options.reduction, labels) == "mean"
            denom = (count_rows(_flat(labels), options.ignore_index, n, acc, x.device, options.reduction)
                     if mean else None)
            if reduced:
                chunk = _chunks.chunk_rows(n, w.shape[0] + wt.shape[0], x.element_size(), options.chunk_rows)
                partials = x.new_empty(-(-n // chunk), dtype=acc)  # one per chunk, summed in order
                LinearJSD._sweep(options, inputs, grads, lambda i, r0, rows: partials[i], denom=denom)
                empty = math.nan if options.reduction == "mean" else 0.0  # 0 / 0; 'batchmean': 0 / max(0, 1)
                loss = (partials.sum() if n else partials.new_full((), empty)).to(options.out_dtype)
            else:
                loss = x.new_empty(n, dtype=options.out_dtype)
                LinearJSD._sweep(options, inputs, None, lambda i, r0, rows: loss[r0:r0 + rows])
                loss = loss.view(x.shape[:-1])
            finished = [_chunks.finish(g, *t) if g is not None else (None, None, None)
                        for g, t in zip(grads, ((x, w, b), (xt, wt, bt)))]
        return loss, (*finished[0], *finished[1], None)

    @staticmethod
    def _sharded_problem(options, inputs):
        x, w, b, xt, wt, bt, labels = inputs
        shard = _vocab_parallel.shard_layout(options.process_group, w.shape[0], x.device)
        problem = problem_of(_distribution_options(options), wt, None, labels, shard[1],
                             x.shape[0] if x.dim() > 1 else shard[1], options.hard_weight, options.soft_weight)
        n = x.numel() // x.shape[-1]
        chunk = _chunks.chunk_rows(n, w.shape[0] + wt.shape[0], x.element_size(), options.chunk_rows)
        return problem, shard, n, chunk, _jsd_heads(options, x, w, b, xt, wt, bt), _flat(labels)

    @staticmethod
    def _sharded_forward(options, inputs, needs_grad):
        """Vocabulary parallel (module docstring): (loss, state) as ``forward``'s, the state's last entry the
        whole rows' statistics for the backward of 'none'."""
        x, w, b, xt, wt, bt, labels = inputs
        problem, shard, n, chunk, heads, flat = LinearJSD._sharded_problem(options, inputs)
        group, acc = options.process_group, accumulation_dtype(x.dtype)
        combined, state, kept = _sharded_statistics(problem, heads, n, chunk, flat, group, shard, acc)
        terms = x.new_empty((2, n), dtype=acc)

        def visit(i, r0, rows, logits):
            kernels().distribution_shard_terms(problem, logits[0], logits[1], None, state[r0:], n, shard,
                                               terms[:, r0:r0 + rows])

        kept = _chunks.sweep(heads, n, chunk, visit, kept=kept)
        terms = _vocab_parallel.all_reduce(terms, "sum", _vocab_parallel.group_of(group))
        set_shard_terms(problem, state, terms, n)
        total, _ = shard_rows(problem, combined, state, terms, flat, None, n, shard[1])
        if options.reduction == "none":
            return total.to(options.out_dtype).view(x.shape[:-1]), (None,) * 6 + (state,)
        if kernel_reduction(options.reduction, labels) == "mean":
            denom = count_rows(flat, options.ignore_index, n, acc, x.device, options.reduction)
            state[-1] = denom
            loss = total.sum() / denom
        else:
            denom = state[-1]  # 1
            loss = total.sum()
        want = ((needs_grad[0], needs_grad[1], needs_grad[2]), (needs_grad[3], needs_grad[4], needs_grad[5]))
        grads = [_chunks.new_grads(head, t, wanted) if any(wanted) else None
                 for head, t, wanted in zip(heads, (x, xt), want)]
        if any(g is not None for g in grads):  # for grad_output 1, scaled by the backward
            _sharded_gradients(problem, heads, n, chunk, flat, state, shard, grads, denom.reciprocal(), (0, 0), kept)
        finished = [_chunks.finish(g, *t) if g is not None else (None, None, None)
                    for g, t in zip(grads, ((x, w, b), (xt, wt, bt)))]
        return loss.to(options.out_dtype), (*finished[0], *finished[1], state)  # state: for a second backward

    @staticmethod
    def backward(options, inputs, state, grad_output, needs_grad, in_place):
        x, w, b, xt, wt, bt, labels = inputs
        operands = (x, w, b, xt, wt, bt)
        if state[6] is not None and all(g is None for g in state[:6]):  # vocabulary parallel: from the statistics
            with torch.autocast(x.device.type, enabled=False):
                problem, shard, n, chunk, heads, flat = LinearJSD._sharded_problem(options, inputs)
                want = ((needs_grad[0], needs_grad[1], needs_grad[2]), (needs_grad[3], needs_grad[4], needs_grad[5]))
                grads = [_chunks.new_grads(head, t, wanted) if any(wanted) else None
                         for head, t, wanted in zip(heads, (x, xt), want)]
                if options.reduction == "none":
                    g = grad_output.reshape(-1)
                    strides = (g.stride(0), 0)
                else:  # over the denominator the forward kept
                    g, strides = grad_output / state[6][-1], (0, 0)
                _sharded_gradients(problem, heads, n, chunk, flat, state[6], shard, grads, g, strides, None)
                finished = [_chunks.finish(g, *t) if g is not None else (None, None, None)
                            for g, t in zip(grads, ((x, w, b), (xt, wt, bt)))]
            return (*finished[0], *finished[1], None)
        if any(g is not None for g in state[:6]):  # written by the forward for grad_output 1
            precomputed = list(state[:6])
            if in_place:
                state[:6] = [None] * 6  # handed over: a second backward recomputes
                grads = [_chunks.scale_in_place(g, grad_output) if g is not None else None for g in precomputed]
            else:  # the registered op (torch.compile): its outputs are not to be written
                grads = [g * grad_output if g is not None else None for g in precomputed]
            return (*(g if g is not None or not need else torch.zeros_like(t)
                      for g, need, t in zip(grads, needs_grad, operands)), None)
        with torch.autocast(x.device.type, enabled=False):
            heads = _jsd_heads(options, x, w, b, xt, wt, bt)
            want = ((needs_grad[0], needs_grad[1], needs_grad[2]), (needs_grad[3], needs_grad[4], needs_grad[5]))
            grads = [_chunks.new_grads(head, t, wanted) if any(wanted) else None
                     for head, t, wanted in zip(heads, (x, xt), want)]
            n = heads[0].x.shape[0]
            acc = accumulation_dtype(x.dtype)
            if options.reduction == "none":
                g = grad_output.reshape(-1)
                scale, denom = (g, g.stride(0)), None
            else:
                mean = kernel_reduction(options.reduction, labels) == "mean"
                scale = (grad_output, 0)
                denom = (count_rows(_flat(labels), options.ignore_index, n, acc, x.device, options.reduction)
                         if mean else None)
            scratch = x.new_empty(n, dtype=acc)  # the recomputed loss, not needed
            LinearJSD._sweep(options, inputs, grads, lambda i, r0, rows: scratch[r0:r0 + rows], grad_scale=scale,
                             denom=denom)
            finished = [_chunks.finish(g, *t) if g is not None else (None, None, None)
                        for g, t in zip(grads, ((x, w, b), (xt, wt, bt)))]
        return (*finished[0], *finished[1], None)

    @staticmethod
    def reference(options, x, w, b, xt, wt, bt, labels):
        logits = softcapped(linear_logits(x, w, b, options.logit_scale), options.softcap)
        teacher = softcapped(linear_logits(xt, wt, bt, options.teacher_logit_scale), options.teacher_softcap)
        return distillation_loss(logits, teacher, None, labels, options.beta, options.temperature, options.ignore_index,
                                 options.reduction, options.hard_weight, options.soft_weight,
                                 options.process_group).to(options.out_dtype)

    @staticmethod
    def fake(options, inputs, needs_grad):
        x, w, b, xt, wt, bt, labels = inputs
        reduced = options.reduction != "none"
        out = x.new_empty(x.shape[:-1] if not reduced else (), dtype=options.out_dtype)
        grads = [t.new_empty(t.shape) if reduced and need and t is not None else None
                 for t, need in zip((x, w, b, xt, wt, bt), needs_grad)]
        saved = None
        if options.process_group and x.numel():
            n = x.numel() // x.shape[-1]
            planes = kernels().n_stats("jsd", "logits", options.hard_weight != 0 and options.temperature != 1.0)
            saved = x.new_empty(planes * n + 1, dtype=accumulation_dtype(x.dtype))
        return out, (*grads, saved)


class LinearLogProbs(_scaffold.Family):
    name = "linear_log_probs"
    options_type = LinearLogProbsOptions
    n_inputs = 4  # input, weight, bias, tokens

    @staticmethod
    def _sweep(options, inputs, out, out_plane, grads=None, grad_scale=None):
        """One pass over the chunks: each chunk's log-probabilities (and statistics, planes ``out_plane``
        elements apart) into ``out(r0, rows)``; with ``grads`` ([dX, dW, db]) the gradient for the rows'
        gradients ``grad_scale`` = (tensor, (row stride, plane stride)) accumulated into them."""
        x, w, b, tokens = inputs
        head = _head(x, w, b, options.logit_scale)
        n, chunk = head.x.shape[0], LinearLogProbs._chunk(options, inputs)
        flat = tokens.reshape(-1)
        problem = LinearLogProbs._problem(options, tokens, 0)

        def visit(i, r0, rows, logits):
            scale = {}
            if grad_scale is not None:
                g, strides = grad_scale
                scale = dict(grad=logits[0], grad_scale=g[..., r0:], grad_scale_strides=strides)
            kernels().distribution_fwd(problem, logits[0], None, None, flat[r0:r0 + rows], "none", options.out_dtype,
                                       False, out=out(r0, rows), out_plane=out_plane, **scale)

        _chunks.sweep([head], n, chunk, visit, [grads] if grads is not None else None)

    @staticmethod
    def _chunk(options, inputs):
        x, w = inputs[:2]
        return _chunks.chunk_rows(inputs[3].numel(), w.shape[0], x.element_size(), options.chunk_rows)

    @staticmethod
    def _problem(options, tokens, n_classes):
        return problem_of(_log_probs_options(options), None, None, tokens, n_classes, 1)

    @staticmethod
    def forward(options, inputs, needs_grad):
        x, w, b, tokens = inputs
        n = tokens.numel()
        lead = tuple(tokens.shape)
        with torch.autocast(x.device.type, enabled=False):
            if options.process_group and n:  # vocabulary parallel: pass 1, the statistics kept
                shard = _vocab_parallel.shard_layout(options.process_group, w.shape[0], x.device)
                problem = LinearLogProbs._problem(options, tokens, shard[1])
                flat = tokens.reshape(-1)
                combined, state, _ = _sharded_statistics(problem, [_head(x, w, b, options.logit_scale)], n,
                                                         LinearLogProbs._chunk(options, inputs), flat,
                                                         options.process_group, shard, accumulation_dtype(x.dtype))
                lp, planes = shard_rows(problem, combined, state, None, flat, None, n, shard[1])
                out = (torch.stack([lp, *planes]) if planes else lp).to(options.out_dtype)
                return out.view(_out_shape(options, lead)), (state,)
            n_planes = len(token_planes(options))
            out = x.new_empty((n_planes, n) if n_planes > 1 else (n,), dtype=options.out_dtype)
            LinearLogProbs._sweep(options, inputs, lambda r0, rows: out[..., r0:r0 + rows], n)
        return out.view(_out_shape(options, lead)), ()

    @staticmethod
    def backward(options, inputs, state, grad_output, needs_grad, in_place):
        x, w, b, tokens = inputs
        n = tokens.numel()
        n_planes = len(token_planes(options))
        options = options._replace(log_sum_sq=False, mean_logits=False, is_top1=False)  # no gradient: not recomputed
        with torch.autocast(x.device.type, enabled=False):
            g = grad_output.reshape(n_planes, n) if n_planes > 1 else grad_output.reshape(n)
            strides = (g.stride(-1), g.stride(0) if options.entropy else 0)  # [g_lp | g_H | ...]
            head = _head(x, w, b, options.logit_scale)
            grads = _chunks.new_grads(head, x, (needs_grad[0], needs_grad[1], needs_grad[2]))
            chunk = LinearLogProbs._chunk(options, inputs)
            if state:  # vocabulary parallel: from the whole rows' statistics
                shard = _vocab_parallel.shard_layout(options.process_group, w.shape[0], x.device)
                _sharded_gradients(LinearLogProbs._problem(options, tokens, shard[1]), [head], n, chunk,
                                   tokens.reshape(-1), state[0], shard, [grads], g, strides, None)
                return (*_chunks.finish(grads, x, w, b), None)
            scratch = x.new_empty((2, chunk) if options.entropy else (chunk,), dtype=options.out_dtype)  # not needed
            LinearLogProbs._sweep(options, inputs, lambda r0, rows: scratch[..., :rows], chunk, grads, (g, strides))
            dx, dw, db = _chunks.finish(grads, x, w, b)
        return dx, dw, db, None

    @staticmethod
    def reference(options, x, w, b, tokens):
        return token_log_probs(softcapped_wide(linear_logits(x, w, b, options.logit_scale), options.softcap), tokens,
                               options.temperature, options.ignore_index, options.entropy, options.process_group,
                               stats=token_planes(options)[1:]).to(options.out_dtype)

    @staticmethod
    def fake(options, inputs, needs_grad):
        x, w, b, tokens = inputs
        out = x.new_empty(_out_shape(options, tuple(tokens.shape)), dtype=options.out_dtype)
        if options.process_group and tokens.numel():
            return out, (x.new_empty(kernels().n_stats("log_probs", "", False) * tokens.numel() + 1,
                                     dtype=accumulation_dtype(x.dtype)),)
        return out, ()


def _log_probs_options(options):
    """log_probs' DistributionOptions of a linear_log_probs call (its chunks' kernels take log_probs' Problem)."""
    return DistributionOptions("log_probs", "none", options.out_dtype, 0.0, options.temperature, options.ignore_index,
                               options.entropy, softcap=options.softcap, log_sum_sq=options.log_sum_sq,
                               mean_logits=options.mean_logits, is_top1=options.is_top1)


def _out_shape(options, lead):
    """linear_log_probs' output shape: the tokens' (``lead``), with a first dimension of planes when
    statistics are asked for (``token_planes``)."""
    n_planes = len(token_planes(options))
    return (n_planes, *lead) if n_planes > 1 else lead


JSD_FAMILY = _scaffold.register(LinearJSD())
LOG_PROBS_FAMILY = _scaffold.register(LinearLogProbs())


def linear_jsd_loss(options, input, weight, bias, teacher_input, teacher_weight, teacher_bias, labels):
    return _scaffold.run(JSD_FAMILY, options, (input, weight, bias, teacher_input, teacher_weight, teacher_bias,
                                               labels))


def linear_log_probs(options, input, weight, bias, tokens):
    return _scaffold.run(LOG_PROBS_FAMILY, options, (input, weight, bias, tokens))


# ----------------------------------------------------------------------------------------------------
# the kernels' reach: why they cannot serve a call (None when they can), asked by fusedloss.functional's routes
# ----------------------------------------------------------------------------------------------------

def unsupported_head(input, weight, bias):
    """Why the chunked path cannot take one LM head (None when it can)."""
    if not all(isinstance(t, Tensor) for t in (input, weight)):
        return "a non-tensor input or weight"
    operands = [t for t in (input, weight, bias) if t is not None]
    if not torch.is_autocast_enabled(input.device.type) and any(t.dtype != input.dtype for t in operands):
        return "operands of different dtypes (torch's linear raises on the eager path)"
    return None


def unsupported_jsd(input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, *unused):
    return (unsupported_head(input, weight, bias)
            or unsupported_head(teacher_input, teacher_weight, teacher_bias))
