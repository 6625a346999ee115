"""The matmul-rows family's one chunk driver: token chunks around the GEMMs, the logits never whole.

Every loss of the family (linear_cross_entropy, linear_jsd_loss, linear_log_probs) is a row loss over
the logits of one or two LM heads (``Head``: hidden states X (N, H), weight W (C, H), bias b (C,)).
``sweep`` runs over chunks of R rows in a fixed order:

    per chunk      logits_k = s_k (X_k[rows] W_k^T (+ b_k)) one GEMM per head, into a buffer per head
                                                            (s_k: the head's logit scale, the GEMM's alpha)
                   visit(...)                               the loss's kernel on the chunk; where a
                                                            gradient is wanted it overwrites logits_k
                                                            with d loss / d logits_k
                   dX_k[rows] = s_k dlogits_k W_k           GEMM 2, for a head with gradients
                   dW_k += s_k dlogits_k^T X_k[rows]        GEMM 3, into a float32 accumulator for
                   db_k += s_k (column sums of dlogits_k)   16-bit weights

so the largest temporaries are the chunk buffers (``CHUNK_BYTES`` of logits for all heads together, or
``chunk`` rows; each row padded to 16 elements, so every row starts aligned for the GEMMs and the row
kernels), every accumulation is a GEMM or a sum into one buffer (deterministic, no atomics), and
nothing syncs with the host. A head without gradients (a frozen teacher) costs one GEMM per chunk. A
logit scale (Cohere's ``logit_scale``, Granite's 1 / ``logits_scaling``...) rides in the GEMMs' alpha
and beta, so it costs no pass over the logits; the row kernels see the scaled logits.
"""
from typing import NamedTuple, Optional

import torch

from ._scaffold import accumulation_dtype

# Bytes of the chunks' logits buffers together, the one large temporary: 224 MiB keeps the peak extra
# memory (the buffers, a float32 column-sum for the bias, the kernels' workspaces) under 256 MiB.
CHUNK_BYTES = 224 << 20


class Head(NamedTuple):
    x: torch.Tensor  # (N, H) input rows
    w: torch.Tensor  # (C, H) weight
    b: Optional[torch.Tensor]  # (C,) bias
    scale: float = 1.0  # the logits are scale * (x W^T + b)


# A chunk buffer's row stride is a multiple of this many elements: its rows start 16-byte aligned (cuBLAS's
# aligned kernels), and Triton, which proves alignment only for integer arguments divisible by 16, sees the
# stride as such. (The row kernels' 128-bit loads also need C itself a multiple of 16: their masks.)
ROW_ALIGN_ELEMENTS = 16
GEMM_ROWS = 128  # chunk rows are a multiple of this (the GEMMs' M tile) where the budget holds one


def chunk_rows(n, columns, element_size, requested):
    """Rows per chunk: ``requested``, else as many as CHUNK_BYTES of logits (``columns`` per row, all heads
    together, each row padded to ROW_ALIGN_ELEMENTS) hold, spread evenly over the fewest chunks that hold
    them and rounded up to a multiple of GEMM_ROWS where that stays within the budget; otherwise the even
    split (rounding down would add a chunk: W read twice more and the float32 dW accumulator read and
    written again, ~1.9 ms on an H100 at 8192 x 4096 x 128256, against a partial GEMM tile)."""
    if requested:
        return max(1, min(requested, n))
    limit = max(1, CHUNK_BYTES // max(padded_columns(columns) * element_size, 1))
    if n <= limit:
        return max(n, 1)
    rows = -(-n // -(-n // limit))
    if rows <= GEMM_ROWS:
        return rows
    up = -(-rows // GEMM_ROWS) * GEMM_ROWS
    return up if up <= limit else rows


def padded_columns(columns):
    """A chunk buffer's row stride: ``columns`` rounded up to ROW_ALIGN_ELEMENTS (C = 50257: 50272, so every
    row, not every eighth in bfloat16, starts 16-byte aligned)."""
    return -(-columns // ROW_ALIGN_ELEMENTS) * ROW_ALIGN_ELEMENTS


def chunk_buffer(x, rows, columns):
    """A (rows, columns) logits buffer whose rows are padded (``padded_columns``): a view of a slightly wider
    allocation; the GEMMs write it through their leading dimension and the row kernels take its strides."""
    return x.new_empty((rows, padded_columns(columns)))[:, :columns]


def sweep(heads, n, chunk, visit, grads=None, kept=None):
    """One pass over the chunks of ``n`` rows, in order: the heads' logits of each chunk (or ``kept``: the
    buffers of a single chunk, already computed), ``visit(i, r0, rows, logits)`` (logits: one (rows, C_k)
    view per head), then for each head whose entry of ``grads`` is [dX, dW, db] (None entries: not
    wanted) the gradient accumulation from its buffer, which ``visit`` overwrote with d loss / d logits.
    Returns the buffers when there was a single chunk (a later sweep may reuse them as ``kept``)."""
    buffers = kept if kept is not None else [chunk_buffer(h.x, min(chunk, n), h.w.shape[0]) for h in heads]
    # a scaled head's bias scaled once (C elements), so that its GEMM adds it with beta 1, in the epilogue
    biases = [h.b * h.scale if h.b is not None and h.scale != 1.0 else h.b for h in heads]
    starts = range(0, n, chunk)
    for i, r0 in enumerate(starts):
        rows = min(chunk, n - r0)
        logits = [buffer[:rows] for buffer in buffers]
        if kept is None:
            for head, bias, out in zip(heads, biases, logits):
                xc = head.x[r0:r0 + rows]
                if bias is None and head.scale != 1.0:  # alpha scales the product (beta 0: out not read)
                    torch.addmm(out, xc, head.w.t(), out=out, beta=0.0, alpha=head.scale)
                elif bias is None:
                    torch.mm(xc, head.w.t(), out=out)
                else:
                    torch.addmm(bias, xc, head.w.t(), out=out, alpha=head.scale)
        visit(i, r0, rows, logits)
        for head, head_grads, dlogits in zip(heads, grads or (), logits):
            if head_grads is not None:
                _accumulate(head_grads, dlogits, head.x[r0:r0 + rows], head.w, r0, head.scale)
    return buffers if len(starts) == 1 else None


def _accumulate(grads, dlogits, xc, w, r0, scale):
    """dX rows = s dlogits W, dW += s dlogits^T X_c, db += s (column sums of dlogits): ``dlogits`` is the
    gradient of the scaled logits, the chain rule's factor s rides in the GEMMs' alpha."""
    dx, dw, db = grads
    if dx is not None:
        rows = dx[r0:r0 + dlogits.shape[0]]
        if scale != 1.0:
            torch.addmm(rows, dlogits, w, beta=0.0, alpha=scale, out=rows)
        else:
            torch.mm(dlogits, w, out=rows)
    if dw is not None:
        _add_weight_gradient(dw, dlogits, xc, scale)
    if db is not None:
        db.add_(dlogits.sum(0, dtype=db.dtype), alpha=scale)


_MIXED_ADDMM = {}  # (device, dtype) -> whether addmm(float32, 16-bit, 16-bit, out_dtype=float32) works there


def _add_weight_gradient(acc, dlogits, xc, scale=1.0):
    """acc += scale dlogits^T X_c with acc in float32 and 16-bit operands: on CUDA one GEMM that reads and
    writes the float32 accumulator (``addmm(..., out_dtype=torch.float32)``, where this torch has it);
    elsewhere (the CPU, a torch without it) float32 copies of a quarter of the chunk at a time."""
    if acc.dtype == dlogits.dtype:
        acc.addmm_(dlogits.t(), xc, alpha=scale)
    elif acc.is_cuda and _mixed_addmm(acc.device, dlogits.dtype):
        torch.addmm(acc, dlogits.t(), xc, out_dtype=acc.dtype, alpha=scale, out=acc)
    else:  # float32 copies of a quarter of the chunk's rows at a time: half the chunk buffer's bytes
        step = max(1, dlogits.shape[0] // 4)
        for r0 in range(0, dlogits.shape[0], step):
            acc.addmm_(dlogits[r0:r0 + step].t().to(acc.dtype), xc[r0:r0 + step].to(acc.dtype), alpha=scale)


def _mixed_addmm(device, dtype):
    """Whether this torch accumulates 16-bit GEMMs into a float32 output on ``device`` (tried once per
    device and dtype on tiny tensors; an exception means no; nothing is read back, so no host sync)."""
    key = (device, dtype)
    if key not in _MIXED_ADDMM:
        try:
            a = torch.ones(2, 3, dtype=dtype, device=device)
            torch.addmm(torch.ones(2, 2, dtype=torch.float32, device=device), a, a.t(), out_dtype=torch.float32,
                        alpha=0.5, out=torch.empty(2, 2, dtype=torch.float32, device=device))  # as the real call
            _MIXED_ADDMM[key] = True
        except (RuntimeError, TypeError, NotImplementedError):
            _MIXED_ADDMM[key] = False
    return _MIXED_ADDMM[key]


def new_grads(head, input, want):
    """[dX (N, H) in the input's dtype, dW and db accumulators (zeros) in the accumulation dtype], None
    where no gradient is wanted (``want``: (input, weight, bias))."""
    acc = accumulation_dtype(input.dtype)
    return [input.new_empty(head.x.shape) if want[0] else None,
            head.w.new_zeros(head.w.shape, dtype=acc) if want[1] else None,
            head.w.new_zeros(head.w.shape[0], dtype=acc) if want[2] else None]


def finish(grads, input, weight, bias):
    """The gradients in the inputs' shapes and dtypes (the float32 accumulators cast once, then freed)."""
    dx, dw, db = grads
    return (dx.view(input.shape) if dx is not None else None,
            dw.to(weight.dtype).view(weight.shape) if dw is not None else None,
            db.to(bias.dtype).view(bias.shape) if db is not None else None)


def scale_in_place(grad, grad_output):
    """grad *= grad_output (a 0-d tensor) on the device, nothing moved when it is 1 (the pointwise
    family's flat rescale kernel: the gradients here are contiguous)."""
    from fusedloss.kernels.pointwise import scale_by_grad_output

    return scale_by_grad_output(grad, grad_output)
