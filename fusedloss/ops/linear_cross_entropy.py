"""The matmul-rows family: linear_cross_entropy = cross_entropy(input @ linear_weight^T + bias, target), the
logits never whole.

Design: token chunks around the GEMMs (cuBLAS on a GPU), with the softmax-rows kernel of cross entropy
on each chunk (bench/NOTES.md has the bytes and FLOPs of this design and of a CCE-style kernel):

  reduction 'mean' / 'sum' (one grad_output for the whole loss, so the gradient for grad_output 1 can be
  finished in the forward; the 'mean' denominator is computed on the device before the chunks):
    per chunk of R rows (R from CHUNK_BYTES, one logits buffer of R x C reused by every chunk)
      logits = X_c W^T (+ b)                         GEMM 1, written into the buffer
      the softmax-rows forward: the chunk's loss (reduced in the launch) and, over the logits,
        d loss / d logits for grad_output 1
      dX_c = dlogits W                               GEMM 2, into dX's rows
      dW += dlogits^T X_c                            GEMM 3, into a float32 accumulator for 16-bit weights
      db += the column sums of dlogits
    backward: dX, dW and db times grad_output, in place on the device (nothing moves when it is 1).
  reduction 'none' (a grad_output per row, known only in the backward): the forward computes the loss
    only; the backward recomputes each chunk's logits (a 4th GEMM) and writes the gradient for the rows'
    own grad_output, then GEMMs 2 and 3.

The chunk driver is fusedloss/ops/_chunks.py (shared by every loss of the family). The largest
temporary is the chunk buffer (CHUNK_BYTES, or ``chunk_rows`` rows): all N x C logits only when every
row fits in one chunk. The chunks run in a fixed order, each accumulation is a GEMM or a sum into one
buffer (deterministic, no atomics), nothing syncs with the host, and the kernels index with 64-bit
offsets.

Vocabulary parallel (``process_group``): rank r holds rows [o_r, o_r + C_r) of the linear weight (and of
the bias). A first pass over the chunks writes each row's statistics over this rank's classes (the
softmax-rows forward's STATS "write": max, sum of exp, target logit, per-class sums); they are combined
over the ranks (fusedloss/ops/_vocab_parallel.py: one all_reduce MAX, one SUM); a second pass recomputes
the logits (with a single chunk, the first pass's buffer is kept instead) and finishes as above. The input's
gradient is this rank's term (all-reduce it over the group, as for a column-parallel linear's input); dW
and db are this rank's rows. The backward needs no collective: the combined statistics are saved.

Saved for the backward: the inputs, and the state (dX, dW, db for grad_output 1 when the forward wrote
them; the combined row statistics when vocab parallel). The first backward hands dX/dW/db over (scaled
in place); a second backward through the same graph finds None and recomputes.
"""
import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import _chunks, _scaffold, _vocab_parallel
from .. import _validation as check
from ._scaffold import accumulation_dtype
from ._eager import linear_logits, softcapped_wide, token_statistics
from .softmax_rows import unsupported as unsupported_softmax_rows
from .softmax_rows import launch_forward, mean_denominator, per_class_sums, reference_loss, shard_of


class LinearCrossEntropyOpOptions(NamedTuple):
    """linear_cross_entropy's options as its registered op takes them (internal; users pass torch's
    ``LinearCrossEntropyOptions``, whose chunk size becomes ``chunk_rows`` here)."""

    reduction: str  # "none" | "mean" | "sum"
    out_dtype: torch.dtype  # the loss's dtype: the input's, float32 under autocast
    ignore_index: int = -100
    label_smoothing: float = 0.0  # applied when > 0
    z_loss: float = 0.0
    softcap: Optional[float] = None
    prob_target: bool = False
    chunk_rows: int = 0  # rows per chunk; 0: as many as CHUNK_BYTES of logits hold
    process_group: str = ""  # vocabulary-parallel: the group's name; "": none
    logit_scale: float = 1.0  # the logits are logit_scale * (input W^T + b), before the softcap
    token_stats: bool = False  # also TRL's per-token statistics (class-index targets, no process group)



class _Geometry(NamedTuple):
    x: torch.Tensor  # (N, H) input rows
    w: torch.Tensor  # (C*D, H) linear weight (D: the product of out_features, 1 without)
    b: Optional[torch.Tensor]  # (C*D,) bias
    target: torch.Tensor  # (N, D) class indices, or (N, C, D) probabilities
    n: int
    c: int
    d: int
    chunk: int  # rows per chunk

    def chunk_rows(self, n_rows, row_stride):
        """(N, C, S, logits strides, target strides) of a chunk of ``n_rows`` rows, for the softmax-rows
        kernels: the chunk buffer is (rows, C*D) with rows ``row_stride`` apart (padded), i.e. (rows, C, D)
        class-strided."""
        x_strides = (row_stride, self.d, 1) if self.d > 1 else (row_stride, 1, 0)
        t = self.target
        t_strides = t.stride() if t.dim() == 3 else (t.stride(0), 0, t.stride(1))
        return n_rows, self.c, self.d, x_strides, t_strides


def _geometry(input, linear_weight, target, bias, options):
    h = input.shape[-1]
    x = input.reshape(-1, h)
    n, c = x.shape[0], linear_weight.shape[0]
    d = math.prod(linear_weight.shape[1:-1])
    w = linear_weight.reshape(c * d, h)
    b = bias.reshape(c * d) if bias is not None else None
    t = target.reshape(n, c, d) if options.prob_target else target.reshape(n, d)
    return _Geometry(x, w, b, t, n, c, d, _chunks.chunk_rows(n, c * d, x.element_size(), options.chunk_rows))




def _loss_shape(input, target, options):
    """torch's shape of the unreduced loss: the target's (class indices), or (N, d1..dk) (probabilities)."""
    if options.prob_target:
        return (input.shape[0], *target.shape[2:]) if input.dim() == 2 else ()
    return target.shape


# ----------------------------------------------------------------------------------------------------
# the sweep over the chunks
# ----------------------------------------------------------------------------------------------------


def _sweep(geo, options, weight, *, shard=None, stats=None, mode="", out=None, denom=None, grads=None,
           grad_scale=None, kept=None, token_stats=None):
    """One pass over the chunks (fusedloss/ops/_chunks.py). ``mode`` "write": the row statistics of a
    vocabulary shard into ``stats``; otherwise the loss into ``out(chunk, first_row, rows)`` (from ``stats``
    in mode "read"), and with ``grads`` = [dX (N, H), dW accumulator (C*D, H), db accumulator (C*D,)] (None
    entries: not wanted) the gradient for grad_output 1 (or ``grad_scale`` = (tensor, strides over (N, D)
    rows)) accumulated into them. ``kept``: the logits of a single chunk, already computed. Returns the
    logits buffer when there was a single chunk, else None. ``token_stats``: a (4, N*D) buffer for the rows'
    statistics (entropy, log sum p^2, mean logit, is_top1), written in the same launches."""
    t = geo.target

    def visit(i, r0, rows, buffers):
        logits = buffers[0]
        spec = geo.chunk_rows(rows, logits.stride(0))
        stats_view = stats[:, r0 * geo.d:] if stats is not None else None
        if mode == "write":
            launch_forward(logits, t[r0:], weight, spec, options, False, reduction="none", shard=shard,
                           stats=stats_view, stats_mode="write")
            return
        scale = {}
        if grad_scale is not None:
            g, (stride_n, stride_s) = grad_scale
            scale = dict(grad_scale=g[r0:] if stride_n else g, grad_scale_strides=(stride_n, stride_s))
        if token_stats is not None:
            scale["token_stats"] = token_stats[:, r0 * geo.d:]
        chunk_out = out(i, r0, rows)
        launch_forward(logits, t[r0:], weight, spec, options, False, reduction="none" if chunk_out.dim() else None,
                       out_dtype=chunk_out.dtype, out=chunk_out, grad=logits if grads is not None else None,
                       grad_strides=spec[3], denom=denom, shard=shard, stats=stats_view, stats_mode=mode, **scale)

    kept = _chunks.sweep([_chunks.Head(geo.x, geo.w, geo.b, options.logit_scale)], geo.n, geo.chunk, visit,
                         [grads] if grads is not None and mode != "write" else None,
                         [kept] if kept is not None else None)
    return kept[0] if kept is not None else None


# ----------------------------------------------------------------------------------------------------
# the family
# ----------------------------------------------------------------------------------------------------


class LinearCrossEntropy(_scaffold.Family):
    name = "linear_cross_entropy"
    options_type = LinearCrossEntropyOpOptions
    n_inputs = 5  # input, linear_weight, target, linear_bias, weight (class weights)

    @staticmethod
    def forward(options, inputs, needs_grad):
        input, linear_weight, target, bias, weight = inputs
        with torch.autocast(input.device.type, enabled=False):  # the GEMMs run in the inputs' dtype
            geo = _geometry(input, linear_weight, target, bias, options)
            acc = accumulation_dtype(input.dtype)
            shard = shard_of(options, geo.c, weight, input.device)
            reduced = options.reduction != "none"
            want = (needs_grad[0], needs_grad[1], needs_grad[3])
            grads = _chunks.new_grads(_chunks.Head(geo.x, geo.w, geo.b), input, want) if reduced and any(want) else None
            stats = kept = None
            if shard is not None:
                stats = input.new_empty((5, geo.n * geo.d), dtype=acc)
                kept = _sweep(geo, options, weight, shard=shard, stats=stats, mode="write")
                _vocab_parallel.combine_statistics(stats, options.process_group, per_class_sums(options))
            denom = (mean_denominator(geo.target, weight, options, geo.n * geo.d, shard[1] if shard else geo.c, acc)
                     if options.reduction == "mean" else None)
            # with token_stats, one flat output [the loss (1 or N*D) | 4 planes of N*D statistics]
            n_loss = 1 if reduced else geo.n * geo.d
            flat = input.new_empty(n_loss + (4 * geo.n * geo.d if options.token_stats else 0),
                                   dtype=options.out_dtype)
            token_stats = flat[n_loss:].view(4, geo.n * geo.d) if options.token_stats else None
            if reduced:
                partials = input.new_empty(-(-geo.n // geo.chunk), dtype=acc)  # one per chunk, summed in order

                def out(i, r0, rows):
                    return partials[i]
            else:
                def out(i, r0, rows):
                    return flat[r0 * geo.d:(r0 + rows) * geo.d]
            _sweep(geo, options, weight, shard=shard, stats=stats, mode="read" if shard else "", out=out,
                   denom=denom, grads=grads, kept=kept, token_stats=token_stats)
            if reduced:
                loss = partials.sum() if geo.n else partials.new_full((), math.nan if denom is not None else 0.0)
                loss = loss.to(options.out_dtype)
                if options.token_stats:
                    flat[0] = loss
                    loss = flat
            else:
                loss = flat if options.token_stats else flat.view(_loss_shape(input, target, options))
            finished = _chunks.finish(grads, input, linear_weight, bias) if grads is not None else (None, None, None)
        return loss, (*finished, stats)

    @staticmethod
    def backward(options, inputs, state, grad_output, needs_grad, in_place):
        input, linear_weight, target, bias, weight = inputs
        if options.token_stats:  # the flat output's loss part (the statistics have no gradient)
            grad_output = grad_output[0] if options.reduction != "none" else grad_output[:grad_output.numel() // 5]
        want = (needs_grad[0], needs_grad[1], needs_grad[3])
        precomputed = state[:3]
        if any(g is not None for g in precomputed):  # written by the forward for grad_output 1
            if in_place:
                state[0] = state[1] = state[2] = None  # handed over: a second backward recomputes
                grads = [_chunks.scale_in_place(g, grad_output) if g is not None else None for g in precomputed]
            else:  # the registered op (torch.compile): its outputs are not to be written
                grads = [g * grad_output if g is not None else None for g in precomputed]
            grads = [g if g is not None or not w else torch.zeros_like(t)  # empty: absent (compile)
                     for g, w, t in zip(grads, want, (input, linear_weight, bias))]
            return grads[0], grads[1], None, grads[2], None
        with torch.autocast(input.device.type, enabled=False):
            geo = _geometry(input, linear_weight, target, bias, options)
            acc = accumulation_dtype(input.dtype)
            shard = shard_of(options, geo.c, weight, input.device)
            grads = _chunks.new_grads(_chunks.Head(geo.x, geo.w, geo.b), input, want)
            denom = (mean_denominator(geo.target, weight, options, geo.n * geo.d, shard[1] if shard else geo.c, acc)
                     if options.reduction == "mean" else None)
            if options.reduction == "none" and grad_output.dim():
                g = grad_output.reshape(geo.n, geo.d)
                g_strides = (g.stride(0), g.stride(1))
            else:
                g, g_strides = grad_output, (0, 0)
            scratch = input.new_empty(geo.chunk * geo.d, dtype=acc)  # the recomputed loss, not needed
            _sweep(geo, options, weight, shard=shard, stats=state[3], mode="read" if shard else "",
                   out=lambda i, r0, rows: scratch[:rows * geo.d], denom=denom, grads=grads,
                   grad_scale=(g, g_strides))
            dx, dw, db = _chunks.finish(grads, input, linear_weight, bias)
        return dx, dw, None, db, None

    @staticmethod
    def reference(options, input, linear_weight, target, bias, weight):
        logits = linear_logits(input, linear_weight, bias, options.logit_scale)
        loss = reference_loss(options, logits, target, weight)
        if not options.token_stats:
            return loss
        logits = softcapped_wide(logits.to(options.out_dtype), options.softcap)
        stats = token_statistics(logits, target, options.ignore_index).to(loss.dtype)
        return torch.cat([loss.reshape(-1), stats.reshape(-1)])

    @staticmethod
    def fake(options, inputs, needs_grad):
        input, linear_weight, target, bias, _ = inputs
        reduced = options.reduction != "none"
        if options.token_stats:  # [loss | 4 planes of statistics], flat
            n_rows = math.prod(target.shape)
            out = input.new_empty((1 if reduced else n_rows) + 4 * n_rows, dtype=options.out_dtype)
        else:
            out = input.new_empty(_loss_shape(input, target, options) if not reduced else (),
                                  dtype=options.out_dtype)
        dx = input.new_empty(input.shape) if reduced and needs_grad[0] else None
        dw = linear_weight.new_empty(linear_weight.shape) if reduced and needs_grad[1] else None
        db = bias.new_empty(bias.shape) if reduced and needs_grad[3] else None
        n_rows = (input.shape[0] if input.dim() == 2 else 1) * math.prod(linear_weight.shape[1:-1])
        stats = input.new_empty((5, n_rows), dtype=accumulation_dtype(input.dtype)) if options.process_group else None
        return out, (dx, dw, db, stats)


FAMILY = _scaffold.register(LinearCrossEntropy())


def linear_cross_entropy_loss(input, linear_weight, target, linear_bias, weight, options):
    """linear_cross_entropy of validated arguments, in torch's output shape."""
    return _scaffold.run(FAMILY, options, (input, linear_weight, target, linear_bias, weight))


# ----------------------------------------------------------------------------------------------------
# the kernels' reach: why they cannot serve a call (None when they can), asked by fusedloss.functional's routes
# ----------------------------------------------------------------------------------------------------

def unsupported(input, linear_weight, target, linear_bias, weight, *unused):
    tensors = (input, linear_weight, target)
    if not all(isinstance(t, Tensor) for t in tensors):
        return "a non-tensor input, linear_weight or target"
    if not input.is_floating_point():
        return f"a {check.c10_name(input.dtype)} input"
    operands = [t for t in (input, linear_weight, linear_bias) if t is not None]
    if not torch.is_autocast_enabled(input.device.type) and any(t.dtype != input.dtype for t in operands):
        return "operands of different dtypes (torch's linear raises on the eager path)"
    if target.requires_grad and target.is_floating_point() and torch.is_grad_enabled():
        return "probability targets that require grad"
    return unsupported_softmax_rows(input, target, weight)


def autocast_linear(input, linear_weight, linear_bias):
    """torch.autocast's casts of the linear's operands (16-bit GEMMs), or the operands as they are."""
    device_type = input.device.type
    if input.dtype == torch.float64 or not torch.is_autocast_enabled(device_type):
        return input, linear_weight, linear_bias
    dtype = torch.get_autocast_dtype(device_type)
    cast = [t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
            for t in (input, linear_weight, linear_bias)]
    return tuple(cast)
