"""Softmax-rows family: cross entropy (softmax + NLL fused) and NLL, forward and backward.

Layout. Logits of shape (C), (N, C) or (N, C, d1..dk) are viewed as (N, C, S) with S = d1*...*dk (1 for
(N, C)); a *row* is one (n, s) pair and holds C class scores at stride ``stride_xc``. Every kernel
takes strides, so (N, C) rows, transposed views and the class-strided (N, C, S) layout share one code path.

Math, per row r with logits x (after the optional softcap x <- cap * tanh(x / cap)), class weights w
(all 1 without ``weight``), smoothing eps, C classes, z-loss coefficient z:

  (1) lse = log sum_c exp(x_c)                      online: running max m and sum d of exp(x - m)
  (2) class-index target y (not ignored):
        loss = (1 - eps) w_y (lse - x_y) + (eps / C) (lse * sum_c w_c - sum_c w_c x_c) + z w_y lse**2
        row_weight = w_y                             (the row's share of the 'mean' denominator)
      probability target t, smoothed t' = (1 - eps) t + eps / C:
        loss = lse * sum_c w_c t'_c - sum_c w_c t'_c x_c + z lse**2,   row_weight = 1
  (3) gradient, with p = softmax(x) = exp(x - lse) and g the row's grad_output (over the denominator
      for 'mean'):
        dloss/dx_c = g * (p_coef * p_c - target_part_c) * (1 - (x_c / cap)**2 if softcap)
      class index: p_coef = (1 - eps) w_y + (eps / C) sum_c w_c + 2 z w_y lse
                   target_part_c = (1 - eps) w_y [c == y] + (eps / C) w_c
      probability: p_coef = sum_c w_c t'_c + 2 z lse,   target_part_c = w_c t'_c
  NLL (input already log-probabilities): loss = -w_y x_y, gradient -g w_y [c == y].

A target outside [0, C) that is not ``ignore_index`` makes the row's loss, weight and gradient NaN:
no host sync, no out-of-bounds access.

Memory traffic (B bytes per logit, C classes per row, on top of a few bytes per row), two modes:
  two-pass (default)  forward reads C*B and saves lse and p_coef (8 bytes per row); backward reads C*B
                      and writes C*B. Forward+backward 3*C*B against the minimal 2*C*B (read once, write
                      the gradient once): 1.5x whatever grad_output is, since the gradient is written once
                      g is known.
  grad in forward     the forward also writes the gradient for g = 1 (a second sweep of each row, which
                      a program re-reads from L2 right after the first); the backward checks g on the
                      device and rescales only rows whose g is not 1 (read and write C*B). 1.0x when
                      grad_output is 1, 2.0x otherwise.
  Probability targets add C*Bt per pass that reads the row. NLL: the forward reads one element per
  row; the backward writes C*B without reading the input.
"""
from contextlib import nullcontext

import torch
import triton
import triton.language as tl

from ._config import softmax_rows_tile, split_float
from ._math import join_float, tanh


@triton.jit
def _softcapped(x, mask, softcap, HAS_SOFTCAP: tl.constexpr):
    """x <- softcap * tanh(x / softcap) on the lanes in ``mask``; other lanes stay -inf."""
    if HAS_SOFTCAP:
        x = tl.where(mask, softcap * tanh(x / softcap), float("-inf"))
    return x


@triton.jit
def _class_targets(target_ptr, t_row, weight_ptr, row_mask, ignore_index, n_classes, HAS_WEIGHT: tl.constexpr,
                   ACC: tl.constexpr):
    """Per row: the target class y, whether it counts (not ignore_index), whether it is a class, and w_y
    (0 when it does not count or is out of range)."""
    y = tl.load(target_ptr + t_row, mask=row_mask, other=0).to(tl.int64)
    counted = y != ignore_index
    in_range = (y >= 0) & (y < n_classes)
    gather = row_mask & counted & in_range
    if HAS_WEIGHT:
        w_y = tl.load(weight_ptr + y, mask=gather, other=0.0).to(ACC)
    else:
        w_y = tl.where(gather, 1.0, 0.0).to(ACC)
    return y, counted, in_range, w_y


@triton.jit
def _write_row_gradients(
    logits_ptr, target_ptr, weight_ptr, grad_ptr,
    x_row, t_row, d_row, row_mask, stride_xc, stride_tc, stride_dc, n_classes,
    lse, p_coef, y, y_coef, g, smoothing, softcap,
    BLOCK_C: tl.constexpr, PROB_TARGET: tl.constexpr, INPUT_IS_LOGPROB: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, ACC: tl.constexpr,
):
    """(3) One sweep over the rows' columns: grad_c = g * (p_coef * p_c - target_part_c) * softcap'.

    p = exp(x - lse) is recomputed from the logits; y_coef is the coefficient of [c == y] (class-index
    targets); g is the row's grad_output over the 'mean' denominator (0 for ignored rows, NaN for
    invalid targets). Reads C*B (nothing for NLL), writes C*B.
    """
    for c0 in range(0, n_classes, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_mask = cols < n_classes
        mask = row_mask[:, None] & col_mask[None, :]
        cols64 = cols[None, :].to(tl.int64)
        if INPUT_IS_LOGPROB:
            grad = tl.where(cols64 == y[:, None], -y_coef[:, None], 0.0)
        else:
            x = tl.load(logits_ptr + x_row[:, None] + cols64 * stride_xc, mask=mask, other=0.0).to(ACC)
            if HAS_SOFTCAP:
                x = softcap * tanh(x / softcap)
            grad = p_coef[:, None] * tl.exp(x - lse[:, None])
            if PROB_TARGET or HAS_SMOOTHING:
                if HAS_WEIGHT:
                    w = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(ACC)
                else:
                    w = tl.full([BLOCK_C], 1.0, ACC)
            if PROB_TARGET:
                t = tl.load(target_ptr + t_row[:, None] + cols64 * stride_tc, mask=mask, other=0.0).to(ACC)
                if HAS_SMOOTHING:
                    t = t * (1.0 - smoothing) + smoothing / n_classes
                grad -= w[None, :] * t
            else:
                grad -= tl.where(cols64 == y[:, None], y_coef[:, None], 0.0)
                if HAS_SMOOTHING:
                    grad -= (smoothing / n_classes) * w[None, :]
            if HAS_SOFTCAP:
                capped = x / softcap
                grad = grad * (1.0 - capped * capped)
        grad = grad * g[:, None]
        tl.store(grad_ptr + d_row[:, None] + cols64 * stride_dc, grad.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _row_offsets(pid, n_rows, n_spatial, stride_n, stride_s, BLOCK_R: tl.constexpr):
    """Rows handled by program ``pid``, their mask, and their 64-bit element offsets (n*stride_n + s*stride_s)."""
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < n_rows
    n = rows // n_spatial
    s = rows % n_spatial
    return rows, row_mask, n, s, n * stride_n + s * stride_s


@triton.jit(do_not_specialize=["ignore_index", "smoothing_hi", "smoothing_lo", "z_loss_hi", "z_loss_lo",
                            "softcap_hi", "softcap_lo"])
def _softmax_rows_fwd_kernel(
    # pointers
    logits_ptr,  # (N, C, S) logits, or log-probabilities when INPUT_IS_LOGPROB
    target_ptr,  # (N, S) int64/uint8 class indices, or (N, C, S) probabilities when PROB_TARGET
    weight_ptr,  # (C,) class weights, read when HAS_WEIGHT
    loss_ptr,  # (N*S,) float: per-row loss (out)
    row_weight_ptr,  # (N*S,) float: per-row share of the 'mean' denominator (out)
    lse_ptr,  # (N*S,) float: per-row log-sum-exp (out, when SAVE_FOR_BACKWARD)
    p_coef_ptr,  # (N*S,) float: per-row coefficient of softmax in the gradient (out, when SAVE_FOR_BACKWARD)
    grad_ptr,  # (N, C, S) gradient for grad_output = 1 (out, when WRITE_GRAD); may alias logits_ptr
    denom_ptr,  # () float: the 'mean' denominator, read when WRITE_GRAD and MEAN
    # strides, in elements
    stride_xn, stride_xc, stride_xs,  # logits
    stride_tn, stride_tc, stride_ts,  # target (stride_tc unused for class indices)
    stride_dn, stride_dc, stride_ds,  # gradient
    # sizes
    n_rows, n_classes, n_spatial,  # N*S, C, S
    # per-call scalars; each float as an fp32 (hi, lo) pair so float64 inputs keep full precision
    ignore_index, smoothing_hi, smoothing_lo, z_loss_hi, z_loss_lo, softcap_hi, softcap_lo,
    # constexprs
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    PROB_TARGET: tl.constexpr, INPUT_IS_LOGPROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr, HAS_ZLOSS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    SAVE_FOR_BACKWARD: tl.constexpr, WRITE_GRAD: tl.constexpr, MEAN: tl.constexpr, ACC: tl.constexpr,
):
    smoothing = join_float(smoothing_hi, smoothing_lo, ACC)
    z_loss = join_float(z_loss_hi, z_loss_lo, ACC)
    softcap = join_float(softcap_hi, softcap_lo, ACC)
    pid = tl.program_id(0)
    rows, row_mask, n, s, x_row = _row_offsets(pid, n_rows, n_spatial, stride_xn, stride_xs, BLOCK_R)
    t_row = n * stride_tn + s * stride_ts

    # (1) online log-sum-exp over column blocks. Smoothing and soft targets also need, for a per-class
    #     coefficient a_c (w_c for smoothing, w_c t'_c for soft targets), sum_a = sum_c a_c and
    #     sum_ad = sum_c a_c (x_c - m), kept relative to the running max m so that huge logits neither
    #     overflow nor cancel: sum_c a_c (lse - x_c) = log(d) * sum_a - sum_ad.
    m = tl.full([BLOCK_R], float("-inf"), ACC)  # running max
    d = tl.zeros([BLOCK_R], ACC)  # running sum of exp(x - m)
    sum_a = tl.zeros([BLOCK_R], ACC)
    sum_ad = tl.zeros([BLOCK_R], ACC)
    if not INPUT_IS_LOGPROB:
        for c0 in range(0, n_classes, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            col_mask = cols < n_classes
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(logits_ptr + x_row[:, None] + cols[None, :].to(tl.int64) * stride_xc,
                        mask=mask, other=float("-inf")).to(ACC)
            x = _softcapped(x, mask, softcap, HAS_SOFTCAP)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row of only -inf so far
            d = d * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe[:, None]), axis=1)
            if PROB_TARGET or HAS_SMOOTHING:
                if HAS_WEIGHT:
                    a = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
                else:
                    a = tl.full([1, BLOCK_C], 1.0, ACC)
                if PROB_TARGET:
                    t = tl.load(target_ptr + t_row[:, None] + cols[None, :].to(tl.int64) * stride_tc,
                                mask=mask, other=0.0).to(ACC)
                    if HAS_SMOOTHING:
                        t = t * (1.0 - smoothing) + smoothing / n_classes
                    a = a * t
                a = tl.where(mask, a, 0.0)
                shift = tl.where((m_new > m) & (sum_a != 0), (m_new - m) * sum_a, 0.0)
                sum_ad = sum_ad - shift + tl.sum(tl.where(mask, a * (x - m_safe[:, None]), 0.0), axis=1)
                sum_a += tl.sum(a, axis=1)
            m = m_new
        log_d = tl.log(d)
        lse = m + log_d
    else:
        log_d = d  # unused: NLL needs no log-sum-exp
        lse = d

    # (2) the row's loss, its share of the 'mean' denominator, and the gradient's row coefficients
    g = tl.full([BLOCK_R], 1.0, ACC)  # the row's gradient scale for grad_output = 1 (WRITE_GRAD)
    if MEAN:
        g = g / tl.load(denom_ptr).to(ACC)
    if PROB_TARGET:
        loss = log_d * sum_a - sum_ad
        row_weight = tl.full([BLOCK_R], 1.0, ACC)
        p_coef = sum_a
        if HAS_ZLOSS:
            loss += z_loss * lse * lse
            p_coef += 2.0 * z_loss * lse
        y = rows  # unused for probability targets
        y_coef = p_coef
    else:
        y, counted, in_range, w_y = _class_targets(target_ptr, t_row, weight_ptr, row_mask, ignore_index,
                                                   n_classes, HAS_WEIGHT, ACC)
        gather = row_mask & counted & in_range
        x_y = tl.load(logits_ptr + x_row + y * stride_xc, mask=gather, other=0.0).to(ACC)
        x_y = tl.where(gather, _softcapped(x_y, gather, softcap, HAS_SOFTCAP), 0.0)
        y_coef = w_y  # coefficient of [c == y] in the gradient
        if INPUT_IS_LOGPROB:
            loss = -w_y * x_y
            p_coef = w_y  # unused: the NLL gradient needs no softmax
        else:
            loss = w_y * (lse - x_y)
            p_coef = w_y
            if HAS_SMOOTHING:
                smooth = (log_d * sum_a - sum_ad) * (smoothing / n_classes)
                loss = (1.0 - smoothing) * loss + smooth
                p_coef = (1.0 - smoothing) * w_y + (smoothing / n_classes) * sum_a
                y_coef = (1.0 - smoothing) * w_y
            if HAS_ZLOSS:
                loss += z_loss * w_y * lse * lse
                p_coef += 2.0 * z_loss * w_y * lse
        loss = tl.where(counted, loss, 0.0)
        p_coef = tl.where(counted, p_coef, 0.0)
        row_weight = w_y
        # a target that is neither ignored nor a class: NaN, never a silent number
        invalid = counted & ~in_range
        loss = tl.where(invalid, float("nan"), loss)
        row_weight = tl.where(invalid, float("nan"), row_weight)
        g = tl.where(counted, g, 0.0)
        g = tl.where(invalid, float("nan"), g)
    tl.store(loss_ptr + rows, loss, mask=row_mask)
    tl.store(row_weight_ptr + rows, row_weight, mask=row_mask)
    if SAVE_FOR_BACKWARD:
        tl.store(lse_ptr + rows, lse, mask=row_mask)
        tl.store(p_coef_ptr + rows, p_coef, mask=row_mask)

    # (3) gradient for grad_output = 1, while the row is still in L2
    if WRITE_GRAD:
        d_row = n * stride_dn + s * stride_ds
        _write_row_gradients(logits_ptr, target_ptr, weight_ptr, grad_ptr, x_row, t_row, d_row, row_mask,
                             stride_xc, stride_tc, stride_dc, n_classes, lse, p_coef, y, y_coef, g,
                             smoothing, softcap, BLOCK_C, PROB_TARGET, INPUT_IS_LOGPROB, HAS_WEIGHT,
                             HAS_SMOOTHING, HAS_SOFTCAP, ACC)


@triton.jit(do_not_specialize=["ignore_index", "smoothing_hi", "smoothing_lo", "softcap_hi", "softcap_lo"])
def _softmax_rows_bwd_kernel(
    # pointers
    logits_ptr,  # (N, C, S) logits (log-probabilities when INPUT_IS_LOGPROB: not read)
    target_ptr,  # (N, S) class indices, or (N, C, S) probabilities when PROB_TARGET
    weight_ptr,  # (C,) class weights, read when HAS_WEIGHT
    lse_ptr,  # (N*S,) float: per-row log-sum-exp from the forward
    p_coef_ptr,  # (N*S,) float: per-row coefficient of softmax from the forward
    grad_out_ptr,  # grad_output: (N, S) for reduction 'none', a single element otherwise (strides 0)
    denom_ptr,  # () float: the 'mean' denominator, read when MEAN
    grad_ptr,  # (N, C, S) gradient (out); may alias logits_ptr (in-place backward)
    # strides, in elements
    stride_xn, stride_xc, stride_xs,  # logits
    stride_tn, stride_tc, stride_ts,  # target
    stride_gn, stride_gs,  # grad_output
    stride_dn, stride_dc, stride_ds,  # gradient
    # sizes
    n_rows, n_classes, n_spatial,
    # per-call scalars, floats as (hi, lo) pairs
    ignore_index, smoothing_hi, smoothing_lo, softcap_hi, softcap_lo,
    # constexprs
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    PROB_TARGET: tl.constexpr, INPUT_IS_LOGPROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, MEAN: tl.constexpr, ACC: tl.constexpr,
):
    smoothing = join_float(smoothing_hi, smoothing_lo, ACC)
    softcap = join_float(softcap_hi, softcap_lo, ACC)
    pid = tl.program_id(0)
    rows, row_mask, n, s, x_row = _row_offsets(pid, n_rows, n_spatial, stride_xn, stride_xs, BLOCK_R)
    t_row = n * stride_tn + s * stride_ts
    d_row = n * stride_dn + s * stride_ds

    # the row's grad_output g (over the denominator for 'mean'), and what (3) needs from the forward
    g = tl.load(grad_out_ptr + n * stride_gn + s * stride_gs, mask=row_mask, other=0.0).to(ACC)
    if MEAN:
        g = g / tl.load(denom_ptr).to(ACC)
    if INPUT_IS_LOGPROB:
        lse = tl.zeros([BLOCK_R], ACC)  # unused: the NLL gradient needs no softmax
        p_coef = lse
    else:
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        p_coef = tl.load(p_coef_ptr + rows, mask=row_mask, other=0.0).to(ACC)
    if PROB_TARGET:
        y = rows  # unused for probability targets
        y_coef = p_coef
    else:
        y, counted, in_range, w_y = _class_targets(target_ptr, t_row, weight_ptr, row_mask, ignore_index,
                                                   n_classes, HAS_WEIGHT, ACC)
        g = tl.where(counted, g, 0.0)
        g = tl.where(counted & ~in_range, float("nan"), g)
        y_coef = w_y
        if HAS_SMOOTHING:
            y_coef = (1.0 - smoothing) * w_y
    _write_row_gradients(logits_ptr, target_ptr, weight_ptr, grad_ptr, x_row, t_row, d_row, row_mask,
                         stride_xc, stride_tc, stride_dc, n_classes, lse, p_coef, y, y_coef, g,
                         smoothing, softcap, BLOCK_C, PROB_TARGET, INPUT_IS_LOGPROB, HAS_WEIGHT,
                         HAS_SMOOTHING, HAS_SOFTCAP, ACC)


@triton.jit
def _softmax_rows_rescale_kernel(
    grad_ptr,  # (N, C, S) gradient written by the forward for grad_output = 1; scaled in place
    grad_out_ptr,  # grad_output: (N, S) for reduction 'none', one element otherwise (strides 0)
    stride_dn, stride_dc, stride_ds,  # gradient
    stride_gn, stride_gs,  # grad_output
    n_rows, n_classes, n_spatial,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """grad[r, :] *= g[r], only for rows whose g is not 1: rows with g == 1 are masked out, so a
    grad_output of 1 costs one 4-byte load per row and moves nothing else. Otherwise reads and writes
    C*B per row."""
    pid = tl.program_id(0)
    rows, row_mask, n, s, d_row = _row_offsets(pid, n_rows, n_spatial, stride_dn, stride_ds, BLOCK_R)
    g = tl.load(grad_out_ptr + n * stride_gn + s * stride_gs, mask=row_mask, other=1.0).to(ACC)
    rescale = row_mask & (g != 1.0)
    for c0 in range(0, n_classes, BLOCK_C):
        cols64 = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask = rescale[:, None] & (cols64 < n_classes)[None, :]
        ptrs = grad_ptr + d_row[:, None] + cols64[None, :] * stride_dc
        grad = tl.load(ptrs, mask=mask, other=0.0).to(ACC)
        tl.store(ptrs, (grad * g[:, None]).to(grad_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------

def _acc_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _grid(n_rows, block_r):
    return (triton.cdiv(n_rows, block_r),)


def _device_of(tensor):
    return torch.cuda.device(tensor.device) if tensor.is_cuda else nullcontext()


def _target_strides(target, prob_target):
    return target.stride() if prob_target else (target.stride(0), 0, target.stride(1))


def softmax_rows_fwd(logits, target, weight, *, ignore_index, smoothing, z_loss, softcap,
                     prob_target, input_is_logprob, save_for_backward, grad=None, denom=None):
    """Per-row loss of cross entropy (or NLL when ``input_is_logprob``) over logits viewed as (N, C, S).

    ``target`` is (N, S) class indices or, with ``prob_target``, (N, C, S) probabilities.
    Returns float32 (float64 for float64 logits) tensors of N*S elements: loss, row_weight, and when
    ``save_for_backward`` also lse and p_coef (else None). With ``grad`` (an (N, C, S) buffer, possibly
    the logits themselves) the kernel also writes the gradient for grad_output = 1, divided by ``denom``
    (the 'mean' denominator, a one-element device tensor) when given.
    """
    n_batch, n_classes, n_spatial = logits.shape
    n_rows = n_batch * n_spatial
    acc_torch = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = torch.empty(n_rows, dtype=acc_torch, device=logits.device)
    row_weight = torch.empty_like(loss)
    lse = torch.empty_like(loss) if save_for_backward else loss
    p_coef = torch.empty_like(loss) if save_for_backward else loss
    if n_rows > 0:
        block_r, block_c, num_warps = softmax_rows_tile(n_classes, n_spatial, logits.element_size(),
                                                        gather_only=input_is_logprob and grad is None,
                                                        per_class_sums=prob_target or smoothing > 0)
        grad_strides = grad.stride() if grad is not None else (0, 0, 0)
        with _device_of(logits):
            _softmax_rows_fwd_kernel[_grid(n_rows, block_r)](
                logits, target, weight if weight is not None else logits, loss, row_weight, lse, p_coef,
                grad if grad is not None else logits, denom if denom is not None else loss,
                *logits.stride(), *_target_strides(target, prob_target), *grad_strides,
                n_rows, n_classes, n_spatial,
                ignore_index, *split_float(smoothing), *split_float(z_loss), *split_float(softcap or 1.0),
                BLOCK_R=block_r, BLOCK_C=block_c,
                PROB_TARGET=prob_target, INPUT_IS_LOGPROB=input_is_logprob, HAS_WEIGHT=weight is not None,
                HAS_SMOOTHING=smoothing > 0, HAS_ZLOSS=z_loss != 0, HAS_SOFTCAP=softcap is not None,
                SAVE_FOR_BACKWARD=save_for_backward, WRITE_GRAD=grad is not None, MEAN=denom is not None,
                ACC=_acc_dtype(logits.dtype), num_warps=num_warps,
            )
    if not save_for_backward:
        lse = p_coef = None
    return loss, row_weight, lse, p_coef


def softmax_rows_bwd(logits, target, weight, lse, p_coef, grad_output, denom, grad, *, ignore_index,
                     smoothing, softcap, prob_target, input_is_logprob):
    """Write d(loss)/d(logits) into ``grad`` (N, C, S), which may be ``logits`` itself.

    ``grad_output`` is (N, S) (reduction 'none') or expanded from one element (strides 0); ``denom`` is
    the 'mean' denominator as a one-element device tensor, or None for 'none'/'sum'.
    """
    n_batch, n_classes, n_spatial = logits.shape
    n_rows = n_batch * n_spatial
    if n_rows == 0 or n_classes == 0:
        return grad
    block_r, block_c, num_warps = softmax_rows_tile(n_classes, n_spatial, logits.element_size(),
                                                    per_class_sums=prob_target or smoothing > 0)
    with _device_of(logits):
        _softmax_rows_bwd_kernel[_grid(n_rows, block_r)](
            logits, target, weight if weight is not None else logits,
            lse if lse is not None else grad_output, p_coef if p_coef is not None else grad_output,
            grad_output, denom if denom is not None else grad_output, grad,
            *logits.stride(), *_target_strides(target, prob_target), *grad_output.stride(), *grad.stride(),
            n_rows, n_classes, n_spatial,
            ignore_index, *split_float(smoothing), *split_float(softcap or 1.0),
            BLOCK_R=block_r, BLOCK_C=block_c,
            PROB_TARGET=prob_target, INPUT_IS_LOGPROB=input_is_logprob, HAS_WEIGHT=weight is not None,
            HAS_SMOOTHING=smoothing > 0, HAS_SOFTCAP=softcap is not None, MEAN=denom is not None,
            ACC=_acc_dtype(grad.dtype), num_warps=num_warps,
        )
    return grad


def softmax_rows_rescale(grad, grad_output):
    """grad (N, C, S) *= grad_output per row, in place, skipping rows whose grad_output is 1."""
    n_batch, n_classes, n_spatial = grad.shape
    n_rows = n_batch * n_spatial
    if n_rows == 0 or n_classes == 0:
        return grad
    block_r, block_c, num_warps = softmax_rows_tile(n_classes, n_spatial, grad.element_size())
    with _device_of(grad):
        _softmax_rows_rescale_kernel[_grid(n_rows, block_r)](
            grad, grad_output, *grad.stride(), *grad_output.stride(), n_rows, n_classes, n_spatial,
            BLOCK_R=block_r, BLOCK_C=block_c, ACC=_acc_dtype(grad.dtype), num_warps=num_warps,
        )
    return grad
