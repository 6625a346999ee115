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

linear_log_probs: the forward computes the log-probabilities (and entropies) per chunk (GEMM 1); the
backward recomputes each chunk's logits (GEMM 1 again), writes d/d logits for the rows' gradients of
both outputs, then GEMMs 2 and 3: four GEMMs in all.

Peak extra memory: the chunk buffers, CHUNK_BYTES of logits for both heads together (or the rows of
``options.batch_chunk_size``), plus the float32 weight-gradient accumulators of 16-bit weights.
"""
import math
from typing import NamedTuple

import torch

from . import _chunks, _scaffold
from ._eager import distillation_loss, linear_logits, token_log_probs
from .distribution_rows import DistributionOptions, count_rows, kernel_reduction, kernels, problem_of


class LinearJSDOptions(NamedTuple):
    reduction: str  # "none" | "batchmean" | "sum" | "mean"
    out_dtype: torch.dtype  # the loss's dtype: the input's, float32 under autocast
    beta: float = 0.5
    temperature: float = 1.0
    ignore_index: int = -100
    hard_weight: float = 0.0  # times the student's cross entropy at T = 1 against the labels
    soft_weight: float = 1.0  # times the divergence
    chunk_rows: int = 0  # rows per chunk; 0: as many as CHUNK_BYTES of both heads' logits hold


class LinearLogProbsOptions(NamedTuple):
    out_dtype: torch.dtype
    temperature: float = 1.0
    ignore_index: int = -100
    entropy: bool = False
    chunk_rows: int = 0


def _head(input, weight, bias):
    return _chunks.Head(input.reshape(-1, input.shape[-1]), weight, bias)


def _distribution_options(options):
    return DistributionOptions("jsd", options.reduction, options.out_dtype, options.beta, options.temperature,
                               options.ignore_index)


def _flat(labels):
    return None if labels is None else labels.reshape(-1)


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
        student, teacher = _head(x, w, b), _head(xt, wt, bt)
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
        with torch.autocast(x.device.type, enabled=False):  # the GEMMs run in the inputs' dtype
            reduced = options.reduction != "none"
            want = ((needs_grad[0], needs_grad[1], needs_grad[2]), (needs_grad[3], needs_grad[4], needs_grad[5]))
            heads = (_head(x, w, b), _head(xt, wt, bt))
            grads = [_chunks.new_grads(head, t, wanted) if reduced and any(wanted) else None
                     for head, t, wanted in zip(heads, (x, xt), want)]
            n = heads[0].x.shape[0]
            acc = _chunks.accumulation_dtype(x.dtype)
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
        return loss, (*finished[0], *finished[1])

    @staticmethod
    def backward(options, inputs, state, grad_output, needs_grad, in_place):
        x, w, b, xt, wt, bt, labels = inputs
        operands = (x, w, b, xt, wt, bt)
        if any(g is not None for g in state):  # written by the forward for grad_output 1
            precomputed = list(state)
            if in_place:
                state[:] = [None] * len(state)  # handed over: a second backward recomputes
                grads = [_chunks.scale_in_place(g, grad_output) if g is not None else None for g in precomputed]
            else:  # the registered op (torch.compile): its outputs are not to be written
                grads = [g * grad_output if g is not None else None for g in precomputed]
            return (*(g if g is not None or not need else torch.zeros_like(t)
                      for g, need, t in zip(grads, needs_grad, operands)), None)
        with torch.autocast(x.device.type, enabled=False):
            heads = (_head(x, w, b), _head(xt, wt, bt))
            want = ((needs_grad[0], needs_grad[1], needs_grad[2]), (needs_grad[3], needs_grad[4], needs_grad[5]))
            grads = [_chunks.new_grads(head, t, wanted) if any(wanted) else None
                     for head, t, wanted in zip(heads, (x, xt), want)]
            n = heads[0].x.shape[0]
            acc = _chunks.accumulation_dtype(x.dtype)
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
        logits = linear_logits(x, w, b)
        teacher = linear_logits(xt, wt, bt)
        return distillation_loss(logits, teacher, None, labels, options.beta, options.temperature, options.ignore_index,
                                 options.reduction, options.hard_weight, options.soft_weight).to(options.out_dtype)

    @staticmethod
    def fake(options, inputs, needs_grad):
        x, w, b, xt, wt, bt, labels = inputs
        reduced = options.reduction != "none"
        out = x.new_empty(x.shape[:-1] if not reduced else (), dtype=options.out_dtype)
        grads = [t.new_empty(t.shape) if reduced and need and t is not None else None
                 for t, need in zip((x, w, b, xt, wt, bt), needs_grad)]
        return out, tuple(grads)


class LinearLogProbs(_scaffold.Family):
    name = "linear_log_probs"
    options_type = LinearLogProbsOptions
    n_inputs = 4  # input, weight, bias, tokens

    @staticmethod
    def _sweep(options, inputs, out, out_plane, grads=None, grad_scale=None):
        """One pass over the chunks: each chunk's log-probabilities (and entropies, ``out_plane`` elements
        apart) into ``out(r0, rows)``; with ``grads`` ([dX, dW, db]) the gradient for the rows' gradients ``grad_scale``
        = (tensor, (row stride, plane stride)) accumulated into them."""
        x, w, b, tokens = inputs
        head = _head(x, w, b)
        n, chunk = head.x.shape[0], LinearLogProbs._chunk(options, inputs)
        flat = tokens.reshape(-1)
        problem = problem_of(DistributionOptions("log_probs", "none", options.out_dtype, 0.0, options.temperature,
                                                 options.ignore_index, options.entropy), None, None, tokens, 0, 1)

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
    def forward(options, inputs, needs_grad):
        x, w, b, tokens = inputs
        n = tokens.numel()
        with torch.autocast(x.device.type, enabled=False):
            out = x.new_empty((2, n) if options.entropy else (n,), dtype=options.out_dtype)
            LinearLogProbs._sweep(options, inputs, lambda r0, rows: out[..., r0:r0 + rows], n)
        lead = tuple(tokens.shape)
        return out.view((2, *lead) if options.entropy else lead), ()

    @staticmethod
    def backward(options, inputs, state, grad_output, needs_grad, in_place):
        x, w, b, tokens = inputs
        n = tokens.numel()
        with torch.autocast(x.device.type, enabled=False):
            g = grad_output.reshape(2, n) if options.entropy else grad_output.reshape(n)
            strides = (g.stride(-1), g.stride(0) if options.entropy else 0)
            grads = _chunks.new_grads(_head(x, w, b), x, (needs_grad[0], needs_grad[1], needs_grad[2]))
            chunk = LinearLogProbs._chunk(options, inputs)
            scratch = x.new_empty((2, chunk) if options.entropy else (chunk,), dtype=options.out_dtype)  # not needed
            LinearLogProbs._sweep(options, inputs, lambda r0, rows: scratch[..., :rows], chunk, grads, (g, strides))
            dx, dw, db = _chunks.finish(grads, x, w, b)
        return dx, dw, db, None

    @staticmethod
    def reference(options, x, w, b, tokens):
        return token_log_probs(linear_logits(x, w, b), tokens, options.temperature, options.ignore_index,
                               options.entropy).to(options.out_dtype)

    @staticmethod
    def fake(options, inputs, needs_grad):
        x, w, b, tokens = inputs
        lead = tuple(tokens.shape)
        return x.new_empty((2, *lead) if options.entropy else lead, dtype=options.out_dtype), ()


JSD_FAMILY = _scaffold.register(LinearJSD())
LOG_PROBS_FAMILY = _scaffold.register(LinearLogProbs())


def linear_jsd_loss(options, input, weight, bias, teacher_input, teacher_weight, teacher_bias, labels):
    return _scaffold.run(JSD_FAMILY, options, (input, weight, bias, teacher_input, teacher_weight, teacher_bias,
                                               labels))


def linear_log_probs(options, input, weight, bias, tokens):
    return _scaffold.run(LOG_PROBS_FAMILY, options, (input, weight, bias, tokens))
