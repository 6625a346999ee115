"""Softmax-rows family: cross entropy (softmax + NLL fused) and NLL, forward and backward.

Layout. Logits of shape (C), (N, C) or (N, C, d1..dk) are viewed as (N, C, S) with S = d1*...*dk (1 for
(N, C)); a *row* is one (n, s) pair and holds C class scores at stride ``stride_xc``. Every kernel
takes strides, so (N, C) rows, transposed views and the class-strided (N, C, S) layout share one code path.

Math, per row r with logits x (after the optional softcap x <- cap * tanh(x / cap)), class weights w
(all 1 without ``weight``), smoothing eps, C classes, z-loss coefficient z:

  (1) lse = log sum_c exp(x_c) = m + log d          online: running max m and sum d of exp(x - m)
  (2) class-index target y (not ignored):
        loss = (1 - eps) w_y ((m - x_y) + log d) + (eps / C) (lse * sum_c w_c - sum_c w_c x_c) + z w_y lse**2
        row_weight = w_y                             (the row's share of the 'mean' denominator)
      (lse - x_y computed as torch does, (m - x_y) + log d: a confident row, x_y = m, does not cancel;
      the smoothing sums are kept relative to m too)
      probability target t, smoothed t' = (1 - eps) t + eps / C:
        loss = lse * sum_c w_c t'_c - sum_c w_c t'_c x_c + z lse**2,   row_weight = 1
  (3) gradient, with p = softmax(x) = exp((x - lse) - lse_lo) and g the row's grad_output (over the
      denominator for 'mean'), times (1 - (x_c / cap)**2) with a softcap. lse is stored rounded, with
      lse_lo = (m + log d) - lse, its rounding error (TwoSum): large logits (|x| ~ 1e3 in float32: an ulp
      of lse is 6e-5) keep the precision of torch's (x - m) - log d.
      class index:  dloss/dx_c = g * (y_coef (p_c - [c == y]) + coef p_c - (eps / C) w_c)
                    y_coef = (1 - eps) w_y,   coef = (eps / C) sum_c w_c + 2 z w_y lse
                    (the terms kept apart as torch's (1 - eps)(p - y) + eps (p - 1/C): exact cases
                    stay exact, e.g. C = 1 gives 0)
      probability:  dloss/dx_c = g * (coef p_c - w_c t'_c),   coef = sum_c w_c t'_c + 2 z lse
                    dloss/dt_c = g * (1 - eps) w_c (lse - x_c)      (when the target requires grad)
  NLL (input already log-probabilities): loss = -w_y x_y, gradient -g w_y [c == y].

A target outside [0, C) that is not ``ignore_index`` makes the row's loss, weight and gradient NaN:
no host sync, no out-of-bounds access.

WORKSPACE. The forward writes one float buffer (the accumulation dtype) that the backward reads, laid
out as [lse (n_saved) | coef (n_saved) | lse_lo (n_saved) | denom (1) | partial sums (2 per program)]:
n_saved is N*S
when a gradient will be needed (0 for NLL, whose gradient needs neither); denom is the 'mean'
denominator; the partial sums are the per-program sums of loss and row weight that the last program
reduces (kernels/_reduce.py). One allocation, no views on the host.

VOCAB PARALLEL. A rank may hold only the columns [o, o + C_r) of every row (o = ``class_offset``, the
classes of all ranks ``n_total``; targets and class weights stay global). Then (1) and the target's logit
cannot be finished on one rank. The forward runs twice: STATS "write" stores the shard's per-row
statistics [m_r | d_r | x_y (0 where the target is elsewhere) | sum_a | sum_ad (relative to m_r)]; the
caller combines them over the ranks (M = max_r m_r; d = sum_r d_r exp(m_r - M), sum_ad = sum_r
(sum_ad_r + (m_r - M) sum_a_r), x_y and sum_a summed: one all-reduce MAX and one SUM of N floats each,
fusedloss/ops/_vocab_parallel.py); STATS "read" loads them in place of (1) and finishes (2)-(4) as for
a whole row. The backward needs nothing more: lse and the coefficients are global, and (3) writes the
shard's columns.

Memory traffic (B bytes per logit, C classes per row, on top of a few bytes per row), two modes:
  two-pass (default)  forward reads C*B and saves lse, lse_lo and p_coef (12 bytes per row); backward reads C*B
                      and writes C*B. Forward+backward 3*C*B against the minimal 2*C*B (read once, write
                      the gradient once): 1.5x whatever grad_output is, since the gradient is written once
                      g is known.
  grad in forward     the forward also writes the gradient for g = 1 (a second sweep of each row, which
                      a program re-reads from L2 right after the first); the backward checks g on the
                      device and rescales only rows whose g is not 1 (read and write C*B). 1.0x when
                      grad_output is 1, 2.0x otherwise.
  Probability targets add C*Bt per pass that reads the row, and C*Bt written when they require grad.
  NLL: the forward reads one element per row; the backward writes C*B without reading the input.
"""
import triton
import triton.language as tl

from ._config import RBLOCK, plan_cache, softmax_rows_tile, split_float
from ._launch import accumulation_dtypes, launch, new_tensor, reduction_counter
from ._math import div_by_count, div_rn, join_float, offset64, online_softmax_stats, reciprocal_rn, tanh, tanh_with_slope
from ._reduce import finish_grid_mean


@triton.jit
def _softcapped(x, mask, softcap, inv_softcap, HAS_SOFTCAP: tl.constexpr):
    """x <- softcap * tanh(x / softcap) on the lanes in ``mask`` (x / softcap as x * (1 / softcap): a
    product per element, not a division); other lanes stay -inf."""
    if HAS_SOFTCAP:
        x = tl.where(mask, softcap * tanh(x * inv_softcap), float("-inf"))
    return x


@triton.jit
def _rounding_error(a, b, s):
    """(a + b) - s for s = a + b rounded (Knuth's TwoSum, exact in any order of magnitude); 0 where s is
    not finite (a row of -inf logits: no correction to make)."""
    b_virtual = s - a
    error = (a - (s - b_virtual)) + (b - b_virtual)
    return tl.where((s == s) & (tl.abs(s) != float("inf")), error, 0.0)


@triton.jit
def _class_targets(target_ptr, t_row, weight_ptr, row_mask, ignore_index, n_total, HAS_WEIGHT: tl.constexpr,
                   ACC: tl.constexpr):
    """Per row: the target class y, whether it counts (not ignore_index), whether it is a class (of all
    ``n_total`` classes, every shard's), and w_y (0 when it does not count or is out of range; the class
    weight vector holds every class)."""
    y = tl.load(target_ptr + t_row, mask=row_mask, other=0).to(tl.int64)
    counted = y != ignore_index
    in_range = (y >= 0) & (y < n_total)
    gather = row_mask & counted & in_range
    if HAS_WEIGHT:
        w_y = tl.load(weight_ptr + y, mask=gather, other=0.0).to(ACC)
    else:
        w_y = tl.where(gather, 1.0, 0.0).to(ACC)
    return y, counted, in_range, w_y


@triton.jit
def _write_row_gradients(
    logits_ptr, target_ptr, weight_ptr, grad_ptr, tgrad_ptr,
    x_row, t_row, d_row, e_row, row_mask, stride_xc, stride_tc, stride_dc, stride_ec, n_classes, class_offset,
    n_total, lse, lse_lo, coef, y, y_coef, g, smoothing, softcap, inv_softcap,
    BLOCK_C: tl.constexpr, PROB_TARGET: tl.constexpr, INPUT_IS_LOGPROB: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    GRAD_INPUT: tl.constexpr, GRAD_TARGET: tl.constexpr, ACC: tl.constexpr,
):
    """(3) One sweep over the rows' columns, with p = exp((x - lse) - lse_lo) recomputed from the logits
    (lse + lse_lo: the log-sum-exp to twice the working precision) and g the row's grad_output over the
    'mean' denominator (0 for ignored rows, NaN for invalid targets):

      class index y   grad_c = g * (y_coef (p_c - [c == y]) + coef p_c - (eps / C) w_c) * softcap'
                      (y_coef = (1 - eps) w_y, coef = (eps / C) sum_c w_c + 2 z w_y lse: kept apart so
                      that exact cases stay exact, e.g. C = 1: 0, as torch)
      probabilities   grad_c = g * (coef p_c - w_c t'_c) * softcap'      (coef = sum_c w_c t'_c + 2 z lse)
                      and, with GRAD_TARGET, d loss / d t_c = g (1 - eps) w_c (lse - x_c)
      NLL             grad_c = -g w_y at c == y, ``coef`` elsewhere: 0 (NaN for an invalid target), not
                      g * 0: torch writes only the target's column, so the others stay 0 also where g is
                      infinite (a 'mean' whose counted class weights sum to 0)

    Column c of these logits is class ``class_offset + c`` of ``n_total`` (a vocabulary shard; 0 and C
    otherwise): the class weights and the target are global, lse and the coefficients too.
    Reads C*B (nothing for NLL; the targets too for probabilities), writes C*B (and C*Bt for the target).
    """
    y_local = y - class_offset
    for c0 in range(0, n_classes, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_mask = cols < n_classes
        mask = row_mask[:, None] & col_mask[None, :]
        cols64 = cols[None, :].to(tl.int64)
        if INPUT_IS_LOGPROB:
            grad = tl.where(cols64 == y_local[:, None], -(y_coef * g)[:, None], coef[:, None])  # g applied
        else:
            x = tl.load(logits_ptr + x_row[:, None] + cols64 * stride_xc, mask=mask, other=0.0).to(ACC)
            if HAS_SOFTCAP:
                capped, slope = tanh_with_slope(x * inv_softcap)  # the capped logit over softcap, softcap'
                x = softcap * capped
            x_lse = (x - lse[:, None]) - lse_lo[:, None]  # x - lse, exact where they are close
            p = tl.exp(x_lse)
            if PROB_TARGET or HAS_SMOOTHING:
                if HAS_WEIGHT:
                    w = tl.load(weight_ptr + class_offset + cols, mask=col_mask, other=0.0).to(ACC)
                else:
                    w = tl.full([BLOCK_C], 1.0, ACC)
            if PROB_TARGET:
                t = tl.load(target_ptr + t_row[:, None] + cols64 * stride_tc, mask=mask, other=0.0).to(ACC)
                if HAS_SMOOTHING:
                    t = t * (1.0 - smoothing) + smoothing / n_total
                grad = coef[:, None] * p - w[None, :] * t
                if GRAD_TARGET:
                    tgrad = -x_lse * w[None, :] * g[:, None]
                    if HAS_SMOOTHING:
                        tgrad = tgrad * (1.0 - smoothing)
                    tl.store(tgrad_ptr + e_row[:, None] + cols64 * stride_ec, tgrad.to(tgrad_ptr.dtype.element_ty),
                             mask=mask)
            else:
                is_y = cols64 == y_local[:, None]
                grad = tl.where(is_y, y_coef[:, None] * (p - 1.0) + coef[:, None] * p,
                                (y_coef + coef)[:, None] * p)
                if HAS_SMOOTHING:
                    grad -= (smoothing / n_total) * w[None, :]
            if HAS_SOFTCAP:
                grad = grad * slope  # 4e / (1 + e)**2: 1 - capped**2 cancels near the cap
        if GRAD_INPUT:
            if not INPUT_IS_LOGPROB:
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
                            "softcap_hi", "softcap_lo", "class_offset", "n_total", "n_saved", "stats_stride",
                            "token_stats_stride"])
def _softmax_rows_fwd_kernel(
    # pointers
    logits_ptr,  # (N, C, S) logits, or log-probabilities when INPUT_IS_LOGPROB
    target_ptr,  # (N, S) int64/uint8 class indices, or (N, C, S) probabilities when PROB_TARGET
    weight_ptr,  # (n_total,) class weights, read when HAS_WEIGHT
    out_ptr,  # REDUCTION "none": (N*S,) per-row loss; else () the reduced loss; in the output dtype (out)
    work_ptr,  # float workspace (out), see WORKSPACE: [lse | p_coef | lse_lo | denom | partial sums]
    grad_ptr,  # (N, C, S) gradient for grad_output = 1 (out, when WRITE_GRAD); may alias logits_ptr
    given_denom_ptr,  # () float: the 'mean' denominator computed before the launch (DENOM_GIVEN)
    counter_ptr,  # () int32 ticket counter, zero between launches (REDUCTION != "none")
    stats_ptr,  # (5, stats_stride) float row statistics [m | d | x_y | sum_a | sum_ad] (STATS, see VOCAB PARALLEL)
    grad_scale_ptr,  # (N, S) grad_output of the rows, multiplies the written gradient (SCALE_GRAD)
    token_stats_ptr,  # (4, token_stats_stride) per-row statistics (out, TOKEN_STATS): entropy, log sum p^2,
    #                   mean logit, is_top1, in that pointer's dtype
    # strides, in elements
    stride_xn, stride_xc, stride_xs,  # logits
    stride_tn, stride_tc, stride_ts,  # target (stride_tc unused for class indices)
    stride_dn, stride_dc, stride_ds,  # gradient
    stride_gn, stride_gs,  # grad_scale
    # sizes
    n_rows, n_classes, n_spatial,  # N*S, C, S
    n_saved,  # N*S when the backward needs lse and p_coef (SAVE_FOR_BACKWARD, not NLL), else 0
    class_offset, n_total,  # column c is class class_offset + c of n_total (0 and C without a shard)
    stats_stride,  # distance between the statistics' rows
    token_stats_stride,  # distance between the token statistics' planes
    # per-call scalars; each float as an fp32 (hi, lo) pair so float64 inputs keep full precision
    ignore_index, smoothing_hi, smoothing_lo, z_loss_hi, z_loss_lo, softcap_hi, softcap_lo,
    # constexprs
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, RBLOCK: tl.constexpr,
    PROB_TARGET: tl.constexpr, INPUT_IS_LOGPROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr, HAS_ZLOSS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    SAVE_FOR_BACKWARD: tl.constexpr, WRITE_GRAD: tl.constexpr,
    REDUCTION: tl.constexpr,  # "none" | "sum" | "mean"
    DENOM_GIVEN: tl.constexpr,  # 'mean' with WRITE_GRAD: the denominator was computed before the launch
    STATS: tl.constexpr,  # "": compute (1) here; "write": store (1) and x_y and stop; "read": load them instead
    SCALE_GRAD: tl.constexpr,  # WRITE_GRAD for each row's grad_output (read from grad_scale_ptr), not 1
    TOKEN_STATS: tl.constexpr,  # class-index targets, no shard: the row statistics of TRL's fused head too
    ACC: tl.constexpr,
):
    smoothing = join_float(smoothing_hi, smoothing_lo, ACC)
    z_loss = join_float(z_loss_hi, z_loss_lo, ACC)
    softcap = join_float(softcap_hi, softcap_lo, ACC)
    inv_softcap = reciprocal_rn(softcap)  # once per program: x / softcap per element becomes a product
    pid = tl.program_id(0)
    rows, row_mask, n, s, x_row = _row_offsets(pid, n_rows, n_spatial, stride_xn, stride_xs, BLOCK_R)
    t_row = n * stride_tn + s * stride_ts

    # (1) online log-sum-exp over column blocks. Smoothing and soft targets also need, for a per-class
    #     coefficient a_c (w_c for smoothing, w_c t'_c for soft targets), sum_a = sum_c a_c and
    #     sum_ad = sum_c a_c (x_c - m), kept relative to the running max m so that huge logits neither
    #     overflow nor cancel: sum_c a_c (lse - x_c) = log(d) * sum_a - sum_ad.
    #     (STATS "read": the statistics of every shard, combined after the launch that wrote them.)
    m = tl.full([BLOCK_R], float("-inf"), ACC)  # running max
    d = tl.zeros([BLOCK_R], ACC)  # running sum of exp(x - m)
    sum_a = tl.zeros([BLOCK_R], ACC)
    sum_ad = tl.zeros([BLOCK_R], ACC)
    # TOKEN_STATS: e = sum exp(x - m)(x - m), q = sum exp(x - m)^2, the sum of x and its max over the classes
    # before the target (same sweep, no extra read: entropy log d - e / d, log sum p^2 = log q - 2 log d)
    e = tl.zeros([BLOCK_R], ACC)
    q = tl.zeros([BLOCK_R], ACC)
    x_sum = tl.zeros([BLOCK_R], ACC)
    max_before = tl.full([BLOCK_R], float("-inf"), ACC)
    at_target = tl.full([BLOCK_R], float("-inf"), ACC)  # the target's logit as this sweep compared it
    y_first = tl.zeros([BLOCK_R], tl.int32)
    if TOKEN_STATS:
        y_first, _, _, _ = _class_targets(target_ptr, t_row, weight_ptr, row_mask, ignore_index, n_total, False, ACC)
        y_first = tl.where((y_first >= 0) & (y_first < n_classes), y_first, -1).to(tl.int32)
    if STATS == "read":
        m = tl.load(stats_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        d = tl.load(stats_ptr + stats_stride + rows, mask=row_mask, other=1.0).to(ACC)
        sum_a = tl.load(stats_ptr + offset64(stats_stride, 3) + rows, mask=row_mask, other=0.0).to(ACC)
        sum_ad = tl.load(stats_ptr + offset64(stats_stride, 4) + rows, mask=row_mask, other=0.0).to(ACC)
    elif not INPUT_IS_LOGPROB:
        for c0 in range(0, n_classes, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            col_mask = cols < n_classes
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(logits_ptr + x_row[:, None] + cols[None, :].to(tl.int64) * stride_xc,
                        mask=mask, other=float("-inf")).to(ACC)
            x = _softcapped(x, mask, softcap, inv_softcap, HAS_SOFTCAP)
            if TOKEN_STATS:
                x_sum += tl.sum(tl.where(mask, x, 0.0), axis=1)
                before = mask & (cols[None, :] < y_first[:, None])
                max_before = tl.maximum(max_before, tl.max(tl.where(before, x, float("-inf")), axis=1))
                at = mask & (cols[None, :] == y_first[:, None])
                at_target = tl.maximum(at_target, tl.max(tl.where(at, x, float("-inf")), axis=1))
            m_new, d, e, q = online_softmax_stats(m, d, e, q, x, TOKEN_STATS, TOKEN_STATS)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row of only -inf so far
            if PROB_TARGET or HAS_SMOOTHING:
                if HAS_WEIGHT:
                    a = tl.load(weight_ptr + class_offset + cols, mask=col_mask, other=0.0).to(ACC)[None, :]
                else:
                    a = tl.full([1, BLOCK_C], 1.0, ACC)
                if PROB_TARGET:
                    t = tl.load(target_ptr + t_row[:, None] + cols[None, :].to(tl.int64) * stride_tc,
                                mask=mask, other=0.0).to(ACC)
                    if HAS_SMOOTHING:
                        t = t * (1.0 - smoothing) + smoothing / n_total
                    a = a * t
                a = tl.where(mask, a, 0.0)
                shift = tl.where((m_new > m) & (sum_a != 0), (m_new - m) * sum_a, 0.0)
                sum_ad = sum_ad - shift + tl.sum(tl.where(mask, a * (x - m_safe[:, None]), 0.0), axis=1)
                sum_a += tl.sum(a, axis=1)
            m = m_new
    if INPUT_IS_LOGPROB:
        log_d = d  # unused: NLL needs no log-sum-exp
        lse = d
        lse_lo = d
    else:
        log_d = tl.log(d)
        lse = m + log_d
        lse_lo = _rounding_error(m, log_d, lse)  # lse + lse_lo = m + log d to twice the precision

    # (2) the row's loss, its share of the 'mean' denominator, and the gradient's row coefficients
    g = tl.full([BLOCK_R], 1.0, ACC)  # the row's gradient scale for grad_output = 1 (WRITE_GRAD)
    if DENOM_GIVEN:
        g = div_rn(g, tl.load(given_denom_ptr).to(ACC))
    if SCALE_GRAD:
        g = g * tl.load(grad_scale_ptr + n * stride_gn + s * stride_gs, mask=row_mask, other=0.0).to(ACC)
    if PROB_TARGET:
        loss = log_d * sum_a - sum_ad
        row_weight = tl.full([BLOCK_R], 1.0, ACC)
        p_coef = sum_a
        if HAS_ZLOSS:
            loss += z_loss * lse * lse
            p_coef += 2.0 * z_loss * lse
        y = rows  # unused for probability targets
        y_coef = p_coef
        x_y = tl.zeros([BLOCK_R], ACC)  # unused
    else:
        y, counted, in_range, w_y = _class_targets(target_ptr, t_row, weight_ptr, row_mask, ignore_index,
                                                   n_total, HAS_WEIGHT, ACC)
        y_local = y - class_offset
        gather = row_mask & counted & in_range & (y_local >= 0) & (y_local < n_classes)  # the target is here
        if STATS == "read":
            x_y = tl.load(stats_ptr + offset64(stats_stride, 2) + rows, mask=row_mask, other=0.0).to(ACC)
        else:
            x_y = tl.load(logits_ptr + x_row + y_local * stride_xc, mask=gather, other=0.0).to(ACC)
            x_y = tl.where(gather, _softcapped(x_y, gather, softcap, inv_softcap, HAS_SOFTCAP), 0.0)
        y_coef = w_y  # coefficient of (p_c - [c == y]) in the gradient
        p_coef = tl.zeros([BLOCK_R], ACC)  # the further coefficient of p_c (see _write_row_gradients)
        if INPUT_IS_LOGPROB:
            loss = -w_y * x_y
        else:
            # lse - x_y as torch computes it, (m - x_y) + log(d): a confident row does not cancel
            loss = w_y * ((m - x_y) + log_d)
            if HAS_SMOOTHING:
                smooth = (log_d * sum_a - sum_ad) * (smoothing / n_total)
                loss = (1.0 - smoothing) * loss + smooth
                p_coef = (smoothing / n_total) * sum_a
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
        if TOKEN_STATS:  # ignored rows: 0 (is_top1 0); a target that is not a class: NaN (is_top1 0)
            entropy = tl.where(invalid, float("nan"), tl.where(counted, log_d - div_rn(e, d), 0.0))
            log_sum_sq = tl.where(invalid, float("nan"), tl.where(counted, tl.log(q) - 2.0 * log_d, 0.0))
            mean_logit = tl.where(invalid, float("nan"), tl.where(counted, div_by_count(x_sum, n_classes), 0.0))
            top1 = tl.where(counted & in_range & (at_target >= m) & (at_target > max_before), 1.0, 0.0)
            out_ty = token_stats_ptr.dtype.element_ty
            tl.store(token_stats_ptr + rows, entropy.to(out_ty), mask=row_mask)
            tl.store(token_stats_ptr + token_stats_stride + rows, log_sum_sq.to(out_ty), mask=row_mask)
            tl.store(token_stats_ptr + offset64(token_stats_stride, 2) + rows, mean_logit.to(out_ty), mask=row_mask)
            tl.store(token_stats_ptr + offset64(token_stats_stride, 3) + rows, top1.to(out_ty), mask=row_mask)
    if STATS == "write":  # this shard's statistics (x_y: 0 unless the target is one of its classes)
        tl.store(stats_ptr + rows, m, mask=row_mask)
        tl.store(stats_ptr + stats_stride + rows, d, mask=row_mask)
        tl.store(stats_ptr + offset64(stats_stride, 2) + rows, x_y, mask=row_mask)
        tl.store(stats_ptr + offset64(stats_stride, 3) + rows, sum_a, mask=row_mask)
        tl.store(stats_ptr + offset64(stats_stride, 4) + rows, sum_ad, mask=row_mask)
    else:
        if SAVE_FOR_BACKWARD and not INPUT_IS_LOGPROB:
            tl.store(work_ptr + rows, lse, mask=row_mask)
            tl.store(work_ptr + n_saved + rows, p_coef, mask=row_mask)
            tl.store(work_ptr + offset64(n_saved, 2) + rows, lse_lo, mask=row_mask)

        # (3) gradient for grad_output = 1 (or the rows' own, SCALE_GRAD), while the row is still in L2
        if WRITE_GRAD:
            d_row = n * stride_dn + s * stride_ds
            _write_row_gradients(logits_ptr, target_ptr, weight_ptr, grad_ptr, grad_ptr, x_row, t_row, d_row, d_row,
                                 row_mask, stride_xc, stride_tc, stride_dc, stride_dc, n_classes, class_offset,
                                 n_total, lse, lse_lo, p_coef, y, y_coef, g, smoothing, softcap, inv_softcap, BLOCK_C,
                                 PROB_TARGET, INPUT_IS_LOGPROB, HAS_WEIGHT, HAS_SMOOTHING, HAS_SOFTCAP, True, False,
                                 ACC)

        # (4) the loss: per row, or reduced over the whole grid in this launch (kernels/_reduce.py): every
        #     program stores its sums of loss and row weight; the last one adds them in program order and
        #     divides by the 'mean' denominator (the summed weights of counted rows: NaN if any row is NaN,
        #     0 / 0 = NaN if none counts, as torch), which it also stores for the backward.
        if REDUCTION == "none":
            tl.store(out_ptr + rows, loss.to(out_ptr.dtype.element_ty), mask=row_mask)
        else:
            finish_grid_mean(tl.sum(tl.where(row_mask, loss, 0.0), axis=0),
                             tl.sum(tl.where(row_mask, row_weight, 0.0), axis=0), out_ptr,
                             work_ptr + offset64(n_saved, 3), given_denom_ptr, counter_ptr, float("-inf"),
                             REDUCTION == "mean",
                             DENOM_GIVEN, RBLOCK, ACC)


@triton.jit(do_not_specialize=["ignore_index", "smoothing_hi", "smoothing_lo", "softcap_hi", "softcap_lo",
                            "class_offset", "n_total", "n_saved"])
def _softmax_rows_bwd_kernel(
    # pointers
    logits_ptr,  # (N, C, S) logits (log-probabilities when INPUT_IS_LOGPROB: not read)
    target_ptr,  # (N, S) class indices, or (N, C, S) probabilities when PROB_TARGET
    weight_ptr,  # (n_total,) class weights, read when HAS_WEIGHT
    work_ptr,  # float workspace of the forward, see WORKSPACE: lse, p_coef, lse_lo, denom (read when MEAN)
    grad_out_ptr,  # grad_output: (N, S) for reduction 'none', a single element otherwise (strides 0)
    grad_ptr,  # (N, C, S) gradient of the logits (out, GRAD_INPUT); may alias logits_ptr (in-place backward)
    tgrad_ptr,  # (N, C, S) gradient of probability targets (out, GRAD_TARGET)
    # strides, in elements
    stride_xn, stride_xc, stride_xs,  # logits
    stride_tn, stride_tc, stride_ts,  # target
    stride_gn, stride_gs,  # grad_output
    stride_dn, stride_dc, stride_ds,  # gradient of the logits
    stride_en, stride_ec, stride_es,  # gradient of the target
    # sizes
    n_rows, n_classes, n_spatial,
    n_saved,  # as in the forward: N*S, or 0 for NLL
    class_offset, n_total,  # column c is class class_offset + c of n_total (0 and C without a shard)
    # per-call scalars, floats as (hi, lo) pairs
    ignore_index, smoothing_hi, smoothing_lo, softcap_hi, softcap_lo,
    # constexprs
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    PROB_TARGET: tl.constexpr, INPUT_IS_LOGPROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, MEAN: tl.constexpr,
    GRAD_INPUT: tl.constexpr, GRAD_TARGET: tl.constexpr, ACC: tl.constexpr,
):
    smoothing = join_float(smoothing_hi, smoothing_lo, ACC)
    softcap = join_float(softcap_hi, softcap_lo, ACC)
    inv_softcap = reciprocal_rn(softcap)  # once per program: x / softcap per element becomes a product
    pid = tl.program_id(0)
    rows, row_mask, n, s, x_row = _row_offsets(pid, n_rows, n_spatial, stride_xn, stride_xs, BLOCK_R)
    t_row = n * stride_tn + s * stride_ts
    d_row = n * stride_dn + s * stride_ds
    e_row = n * stride_en + s * stride_es

    # the row's grad_output g (over the denominator for 'mean'), and what (3) needs from the forward
    g = tl.load(grad_out_ptr + n * stride_gn + s * stride_gs, mask=row_mask, other=0.0).to(ACC)
    if MEAN:
        g = div_rn(g, tl.load(work_ptr + offset64(n_saved, 3)).to(ACC))
    if INPUT_IS_LOGPROB:
        lse = tl.zeros([BLOCK_R], ACC)  # unused: the NLL gradient needs no softmax
        p_coef = lse
        lse_lo = lse
    else:
        lse = tl.load(work_ptr + rows, mask=row_mask, other=0.0).to(ACC)
        p_coef = tl.load(work_ptr + n_saved + rows, mask=row_mask, other=0.0).to(ACC)
        lse_lo = tl.load(work_ptr + offset64(n_saved, 2) + rows, mask=row_mask, other=0.0).to(ACC)
    if PROB_TARGET:
        y = rows  # unused for probability targets
        y_coef = p_coef
    else:
        y, counted, in_range, w_y = _class_targets(target_ptr, t_row, weight_ptr, row_mask, ignore_index,
                                                   n_total, HAS_WEIGHT, ACC)
        g = tl.where(counted, g, 0.0)
        g = tl.where(counted & ~in_range, float("nan"), g)
        if INPUT_IS_LOGPROB:  # NLL: the gradient of the columns other than the target's
            p_coef = tl.where(counted & ~in_range, float("nan"), 0.0).to(ACC)
        y_coef = w_y
        if HAS_SMOOTHING:
            y_coef = (1.0 - smoothing) * w_y
    _write_row_gradients(logits_ptr, target_ptr, weight_ptr, grad_ptr, tgrad_ptr, x_row, t_row, d_row, e_row,
                         row_mask, stride_xc, stride_tc, stride_dc, stride_ec, n_classes, class_offset, n_total, lse,
                         lse_lo, p_coef, y, y_coef, g, smoothing, softcap, inv_softcap, BLOCK_C, PROB_TARGET,
                         INPUT_IS_LOGPROB, HAS_WEIGHT, HAS_SMOOTHING, HAS_SOFTCAP, GRAD_INPUT, GRAD_TARGET, ACC)


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
# launchers: a plan per signature (tile, grid, constexprs, scalar arguments; cached), the outputs, one launch
# ----------------------------------------------------------------------------------------------------

# The build check's written exceptions (fusedloss/buildcheck.py): a budget that the configurations matching
# ``kernel`` and ``where`` (constexpr values; a tuple: any of them) may exceed, on ``archs`` (default all),
# and why: what it costs, on which GPUs.
BUILD_BUDGET_EXCEPTIONS = tuple(
    dict(kernel=kernel, budget="spills", where={"HAS_SOFTCAP": True, "ACC": "fp64"},
         reason="float64 logits with a softcap: the float64 tanh of every logit (a polynomial, or an exp and a "
                "division) at 16 warps, where a thread has at most 128 registers, spills 8-72 bytes per thread "
                "(sm_80 and sm_100; the backward on sm_90 too): local memory that stays in L1, a few percent of a "
                "kernel bound by FP64 throughput on every GPU but A100/H100/B200 (not measured). Softcapped "
                "float64 logits are a testing configuration, not worth a tile of their own.")
    for kernel in ("_softmax_rows_fwd_kernel", "_softmax_rows_bwd_kernel")) + (
    dict(kernel="_softmax_rows_fwd_kernel", budget="spills", where={"WRITE_GRAD": True, "ACC": "fp32",
                                                                     "TOKEN_STATS": False},
         archs=("sm_80", "sm_100"),
         reason="the forward that also writes the gradient (grad_in_forward, the LM-head chunks): ptxas for sm_80 "
                "and sm_100 holds it to 64 registers (four 256-thread blocks per SM) and spills 8 bytes per "
                "thread rather than run three blocks; sm_90 takes 64-128 registers and spills nothing. The spill "
                "stays in L1: negligible against the 3 x C x B bytes the kernel moves per row (not measured)."),)



def saved_rows(n_rows, save_for_backward, input_is_logprob, stats_mode=""):
    """n_saved of WORKSPACE: the rows whose lse, coefficient and lse_lo the forward saves."""
    return n_rows if save_for_backward and not input_is_logprob and stats_mode != "write" else 0


def state_size(n_saved):
    """The elements of WORKSPACE that the backward reads ([lse | coef | lse_lo | denom]): the forward's
    state, as the launcher returns it and as torch.compile's fake implementation sizes it (the partial
    sums after them depend on the launch grid and stay the launcher's)."""
    return 3 * n_saved + 1


@plan_cache
def _fwd_plan(rows, dtype, reduction, ignore_index, smoothing, z_loss, softcap, prob_target, input_is_logprob,
              has_weight, save_for_backward, grad_strides, denom_given, shard, stats_stride, stats_mode,
              grad_scale_strides, token_stats_stride=0):
    """The forward launch of one signature: (grid, num_warps, constexprs, (workspace size, state size),
    the kernel's scalar arguments). ``reduction``: "none" when the loss is not reduced in the kernel; ``grad_strides`` /
    ``grad_scale_strides``: None without that buffer; ``token_stats_stride``: 0 without token statistics."""
    n_batch, n_classes, n_spatial, x_strides, t_strides = rows
    n_rows = n_batch * n_spatial
    write_grad = grad_strides is not None
    per_class_sums = prob_target or smoothing > 0
    block_r, block_c, num_warps = softmax_rows_tile(n_classes, n_spatial, dtype.itemsize,
                                                    gather_only=(input_is_logprob and not write_grad
                                                                 or stats_mode == "read" and not write_grad),
                                                    per_class_sums=per_class_sums,
                                                    token_stats=token_stats_stride > 0, write_grad=write_grad)
    constexprs = dict(
        BLOCK_R=block_r, BLOCK_C=block_c, RBLOCK=RBLOCK, PROB_TARGET=prob_target,
        INPUT_IS_LOGPROB=input_is_logprob, HAS_WEIGHT=has_weight, HAS_SMOOTHING=smoothing > 0,
        HAS_ZLOSS=z_loss != 0, HAS_SOFTCAP=softcap is not None, SAVE_FOR_BACKWARD=save_for_backward,
        WRITE_GRAD=write_grad, REDUCTION=reduction, DENOM_GIVEN=denom_given, STATS=stats_mode,
        SCALE_GRAD=grad_scale_strides is not None, TOKEN_STATS=token_stats_stride > 0,
        ACC=accumulation_dtypes(dtype)[0])
    n_programs = triton.cdiv(n_rows, block_r)
    n_saved = saved_rows(n_rows, save_for_backward, input_is_logprob, stats_mode)
    work_size = state_size(n_saved) + (2 * n_programs if reduction != "none" else 0)
    class_offset, n_total = shard or (0, n_classes)
    scalars = (*x_strides, *t_strides, *(grad_strides or (0, 0, 0)), *(grad_scale_strides or (0, 0)),
               n_rows, n_classes, n_spatial, n_saved, class_offset, n_total, stats_stride, token_stats_stride,
               ignore_index, *split_float(smoothing), *split_float(z_loss), *split_float(softcap or 1.0))
    return (n_programs,), num_warps, constexprs, (work_size, state_size(n_saved)), scalars


@plan_cache
def _bwd_plan(rows, dtype, prob_target, input_is_logprob, has_weight, smoothing, softcap, mean, grad_output_strides,
              grad_strides, target_grad_strides, ignore_index, shard):
    """The backward launch of one signature: (grid, num_warps, constexprs, the kernel's scalar arguments).
    ``grad_strides`` / ``target_grad_strides``: None without that gradient."""
    n_batch, n_classes, n_spatial, x_strides, t_strides = rows
    n_rows = n_batch * n_spatial
    block_r, block_c, num_warps = softmax_rows_tile(n_classes, n_spatial, dtype.itemsize,
                                                    per_class_sums=prob_target or smoothing > 0)
    constexprs = dict(
        BLOCK_R=block_r, BLOCK_C=block_c, PROB_TARGET=prob_target, INPUT_IS_LOGPROB=input_is_logprob,
        HAS_WEIGHT=has_weight, HAS_SMOOTHING=smoothing > 0, HAS_SOFTCAP=softcap is not None, MEAN=mean,
        GRAD_INPUT=grad_strides is not None, GRAD_TARGET=target_grad_strides is not None,
        ACC=accumulation_dtypes(dtype)[0])
    scalars = (*x_strides, *t_strides, *grad_output_strides, *(grad_strides or (0, 0, 0)),
               *(target_grad_strides or (0, 0, 0)),
               n_rows, n_classes, n_spatial, 0 if input_is_logprob else n_rows, *(shard or (0, n_classes)),
               ignore_index, *split_float(smoothing), *split_float(softcap or 1.0))
    return (triton.cdiv(n_rows, block_r),), num_warps, constexprs, scalars


@plan_cache
def _rescale_plan(n_rows, n_classes, n_spatial, element_size, dtype):
    block_r, block_c, num_warps = softmax_rows_tile(n_classes, n_spatial, element_size)
    # at most 16 elements per thread (fusedloss/buildcheck.py: [16 x 128] bfloat16 at 2 warps, 32 per thread,
    # spilled 32 bytes on sm_80: the row-margin losses' rescale at D = 100)
    num_warps = max(num_warps, min(16, block_r * block_c // (32 * 16)))
    constexprs = dict(BLOCK_R=block_r, BLOCK_C=block_c, ACC=accumulation_dtypes(dtype)[0])
    return (triton.cdiv(n_rows, block_r),), num_warps, constexprs


def _unit_stride(weight):
    """The class weights as the kernels address them, w[c] at ``weight_ptr + c``: a copy of a strided view
    (a slice with a step, a column, an expanded scalar: C elements, rare) that would otherwise be read at
    the wrong addresses."""
    return weight if weight is None or weight.stride(0) == 1 or weight.numel() <= 1 else weight.contiguous()


def softmax_rows_fwd(logits, target, weight, rows, reduction, out_dtype, out_shape, ignore_index, smoothing, z_loss,
                     softcap, prob_target, input_is_logprob, save_for_backward, *, grad=None, grad_strides=None,
                     denom=None, out=None, shard=None, stats=None, stats_mode="", grad_scale=None,
                     grad_scale_strides=(0, 0), token_stats=None):
    """Cross entropy (or NLL when ``input_is_logprob``) over the rows of ``logits``, in one launch.

    ``rows``: (N, C, S, logits strides, target strides), the (N, C, S) view of the logits and the
    (N, S) view of class-index targets (target strides (n, 0, s)) or (N, C, S) view of probabilities,
    strides in elements. Returns (out, work): out is the loss per row, shaped ``out_shape``, for reduction
    "none", else the reduced loss (0-d), in ``out_dtype`` (written into ``out`` when given: a view of a
    larger buffer); work is the part of the float workspace (WORKSPACE) that the backward reads, the
    ``state_size`` first elements. With ``grad`` (a buffer
    addressed by ``grad_strides``, possibly the logits themselves) the kernel also writes the gradient for
    grad_output = 1, or for the rows' own grad_output with ``grad_scale`` (addressed over (N, S) by
    ``grad_scale_strides``); for 'mean' the denominator must then be given as ``denom``.

    Vocabulary shards (VOCAB PARALLEL): ``shard`` = (class_offset, n_total) says that column c is class
    class_offset + c of n_total. ``stats_mode`` "write" stores the shard's row statistics into ``stats``
    (a (5, >= N*S) float view: [m | d | x_y | sum_a | sum_ad]) and nothing else; "read" takes them from
    there (combined over the shards) instead of sweeping the logits for them.

    ``token_stats``: a (4, >= N*S) view (class-index targets, no shard) that gets each row's entropy, log sum
    p^2, mean logit and is_top1 (1/0; argmax's first maximum is the target), from the same sweep; ignored
    rows 0, a target outside the classes NaN (is_top1 0).
    """
    weight = _unit_stride(weight)
    reduce = reduction != "none" and stats_mode != "write"
    if out is None and stats_mode != "write":
        out = new_tensor(logits, () if reduce else out_shape, out_dtype)
    if rows[0] * rows[2] == 0:  # nothing to launch: torch's value of an empty reduction (sum 0, mean 0 / 0)
        if reduce:
            out.fill_(float("nan") if reduction == "mean" else 0.0)
        return out, logits.new_zeros(1, dtype=accumulation_dtypes(logits.dtype)[1])
    grid, num_warps, constexprs, (work_size, saved), scalars = _fwd_plan(
        rows, logits.dtype, reduction if reduce else "none", ignore_index, smoothing, z_loss, softcap, prob_target,
        input_is_logprob, weight is not None, save_for_backward, None if grad is None else grad_strides,
        denom is not None, shard, 0 if stats is None else stats.stride(0), stats_mode,
        None if grad_scale is None else grad_scale_strides, 0 if token_stats is None else token_stats.stride(0))
    work = new_tensor(logits, work_size, accumulation_dtypes(logits.dtype)[1])
    launch(_softmax_rows_fwd_kernel, grid, (
        logits, target, weight if weight is not None else logits, out if out is not None else work, work,
        grad if grad is not None else logits, denom if denom is not None else work,
        reduction_counter(logits) if reduce else work, stats if stats is not None else work,
        grad_scale if grad_scale is not None else work, token_stats if token_stats is not None else work, *scalars), constexprs, num_warps, logits.device)
    return out, (work if work_size == saved else work[:saved])


def softmax_rows_bwd(logits, target, weight, rows, work, grad_output, grad_output_strides, grad, grad_strides,
                     mean, ignore_index, smoothing, softcap, prob_target, input_is_logprob, target_grad=None,
                     target_grad_strides=None, shard=None):
    """Write d(loss)/d(logits) into ``grad`` (addressed by ``grad_strides`` over (N, C, S); it may be the
    logits themselves; None: no gradient for the logits), and with ``target_grad`` d(loss)/d(target) of
    probability targets. ``grad_output`` is addressed by ``grad_output_strides`` over (N, S): (0, 0) for
    a reduced loss. ``mean``: divide by the denominator the forward left in ``work``. ``shard``: as in
    ``softmax_rows_fwd`` (``work`` then holds the lse of every shard's classes).
    """
    if rows[0] * rows[2] == 0 or rows[1] == 0:
        return
    weight = _unit_stride(weight)
    grid, num_warps, constexprs, scalars = _bwd_plan(
        rows, logits.dtype, prob_target, input_is_logprob, weight is not None, smoothing, softcap, mean,
        grad_output_strides, None if grad is None else grad_strides,
        None if target_grad is None else target_grad_strides, ignore_index, shard)
    launch(_softmax_rows_bwd_kernel, grid, (
        logits, target, weight if weight is not None else logits, work, grad_output,
        grad if grad is not None else logits, target_grad if target_grad is not None else logits, *scalars,
    ), constexprs, num_warps, logits.device)


def softmax_rows_rescale(grad, grad_strides, rows, grad_output, grad_output_strides):
    """grad (addressed by ``grad_strides`` over (N, C, S)) *= grad_output per row, in place, skipping rows
    whose grad_output is 1."""
    n_batch, n_classes, n_spatial = rows[:3]
    n_rows = n_batch * n_spatial
    if n_rows == 0 or n_classes == 0:
        return grad
    grid, num_warps, constexprs = _rescale_plan(n_rows, n_classes, n_spatial, grad.element_size(), grad.dtype)
    launch(_softmax_rows_rescale_kernel, grid, (
        grad, grad_output, *grad_strides, *grad_output_strides, n_rows, n_classes, n_spatial,
    ), constexprs, num_warps, grad.device)
    return grad
