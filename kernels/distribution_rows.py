"""Softmax-rows family, distribution losses: distillation divergences and token log-probabilities over rows.

Layout. Every operand is a 2-D (R, V) view through strides (rows = every leading dimension of the
logits, V the vocabulary): the student's logits x (or the one model's, for log-probabilities), the
teacher's logits x' or the teacher's top-k log-probabilities (R, K) with their classes (R, K), per-row
labels (R,), gradients (R, V).

Math, per row, with z = x / T and z' = x' / T (T the temperature, a multiplication by 1/T here; the
linear forms' softcap first, x <- c tanh(x / c) with x / c as x * (1 / c), per head, its slope
1 - tanh(x / c)**2 multiplying that head's gradient in (3); not with a top-k teacher),
s = log_softmax(z), t = log_softmax(z'), p = exp(s), q = exp(t). Every log-softmax is kept as
(running max M, log of the sum of exp(z - M)) so that s_v = (z_v - M) - log D is exact where torch's is
(huge logits do not cancel), and a term with a probability of 0 counts 0 (its log may be -inf).

  (1) one sweep: online (M, D) of z, of z' and (a hard target at T != 1) of x; for log-probabilities
      also E = sum exp(z - M)(z - M), relative to the running max, for the entropy H = log D - E / D
      (= -sum p s: both terms >= 0, no cancellation), and the per-token statistics asked for:
      Q = sum exp(z - M)**2 (moved by exp(M - M')**2 as the max grows) for log sum p**2 = log Q - 2 log D;
      Z = sum z for the mean logit Z / V (of z: after the softcap and the temperature, TRL's
      ``mean_logits``); B = the max of z over the columns before the token, for is_top1 =
      (z_token >= M) and (z_token > B): the token is the first maximum (torch.argmax's tie rule, TRL's
      ``is_top1``). None of these three has a gradient.
  (2) the row's divergence, a second sweep over both rows (``KL`` constexpr):
        "forward"  (beta = 0)     L = sum_v q_v (t_v - s_v)                      KL(teacher || student)
        "reverse"  (beta = 1)     L = sum_v p_v (s_v - t_v)                      KL(student || teacher)
        "mixed"    (0 < beta < 1) mix_v = log(beta q_v + (1 - beta) p_v)        the generalized JSD (GKD)
                                  K' = sum q (t - mix), K = sum p (s - mix),  L = beta K' + (1 - beta) K
      top-k teacher (stored (t_j, c_j), j < K; forward KL only): L = sum_j exp(t_j) (t_j - s_{c_j}),
      from K gathers after (1), no second sweep
      log-probabilities: lp = s_token (a gather), H and the statistics from (1)
      hard target y (linear_jsd_loss's hard loss, at T = 1): ce = (M1 - x_y) + log D1
      A row's total is soft_w * L * soft_mean + hard_w * ce (soft_mean: 1/V for 'mean', else 1).
  (3) gradients, a sweep over the row, each times the row's scale (grad_output over the denominator,
      the weights, 1/T for the soft part):
        forward   d/dz = p - q                          d/dz' = q ((t - s) - L)
        reverse   d/dz = p ((s - t) - L)                d/dz' = q - p
        mixed     d/dz = (1 - beta) p ((s - mix) - K)   d/dz' = beta q ((t - mix) - K')
        top-k     d/dz_v = p_v P - sum_j exp(t_j) [v == c_j],   P = sum_j exp(t_j)
        hard      d/dx_v = p1_v - [v == y]              (p1 the softmax at T = 1)
        log-probs d/dz_v = g_lp ([v == token] - p_v) - g_H p_v (s_v + H)
  (4) the loss per row, or reduced in the same launch (kernels/_reduce.py): the sum of the rows' totals,
      for 'batchmean' and 'mean' divided by the count of counted rows (at least 1 for 'batchmean', as
      TRL's), the denominator, kept in the state for the backward; a row whose label is
      ``ignore_index`` counts nothing

A class index outside [0, V) (a hard target, a top-k class, a token) that is not ``ignore_index`` makes
its row NaN, loss and gradient: no host sync, no out-of-bounds access.

STATE. The forward saves, per row, N_STATS floats in planes of n_state (= R) elements: [M | log D]
of z, then of z' and the row's divergence coefficients (jsd), then [M1 | log D1] at T = 1 (a hard target
at T != 1); log-probabilities [M | log D | H] (their other statistics are outputs only, not state). Then
one slot: the denominator; then the reduction's partial sums (2 per program; not part of the state the
backward reads).

Memory traffic per row (B bytes per logit, V logits per row, each operand read once per sweep that
needs it; a program re-reads a row it swept right before: from L2 at small V, from HBM at large V, since a
150k-logit row in 4 bytes outgrows what L2 keeps for one program among hundreds):
  jsd forward     sweeps (1) and (2) read both rows; with the gradient for grad_output 1 (WRITE_GRAD,
                  linear_jsd_loss's chunks, ``grad_in_forward``) sweep (3) reads them again and writes
                  each gradient
  jsd backward    sweep (3): reads both rows, writes each gradient
  top-k           reads the student row (and K entries) per sweep; log-probabilities one sweep forward,
                  one backward; each statistic asked for adds one write of R values (no read)
Forward + backward, as the interpreter's meter counts (each address once per launch): both rows read
twice and each gradient written once (5/3 of the minimal for a frozen teacher, 6/4 with a teacher
gradient); with the gradient written in the forward for grad_output 1: 1.0x.
"""
import math

import triton
import triton.language as tl

from ._config import RBLOCK, _round_to_float32, distribution_rows_tile, interpreting, plan_cache, split_float
from ._launch import accumulation_dtypes, launch, new_tensor, reduction_counter
from ._math import div_by_count, div_rn, join_float, log1p, offset64, online_softmax_stats, tanh_with_slope
from ._reduce import finish_grid_mean

KL_KINDS = ("forward", "reverse", "mixed")
_CAP_ARGS = ("s_cap_hi", "s_cap_lo", "s_icap_hi", "s_icap_lo", "t_cap_hi", "t_cap_lo", "t_icap_hi", "t_icap_lo")


# ----------------------------------------------------------------------------------------------------
# the math of a block of a row
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _online(m, d, z):
    """(1) One column block of an online log-sum-exp: running max m, running sum d of exp(z - m), updated
    with the block z ([BLOCK_R, BLOCK_V], masked lanes -inf)."""
    m_new = tl.maximum(m, tl.max(z, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row of -inf so far
    d = d * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe[:, None]), axis=1)
    return m_new, d


@triton.jit
def _capped(x, mask, cap, inv_cap, other, CAP: tl.constexpr):
    """The softcap x <- cap tanh(x / cap) on the lanes in ``mask`` (``other`` elsewhere), and its slope
    1 - tanh(x / cap)**2 (1 without CAP)."""
    if CAP:
        capped, slope = tanh_with_slope(x * inv_cap)
        return tl.where(mask, cap * capped, other), slope
    else:
        return x, 1.0


@triton.jit
def _join_caps(s_cap_hi, s_cap_lo, s_icap_hi, s_icap_lo, t_cap_hi, t_cap_lo, t_icap_hi, t_icap_lo,
               ACC: tl.constexpr):
    """The student's and the teacher's softcaps and their reciprocals, from fp32 (hi, lo) pairs."""
    return (join_float(s_cap_hi, s_cap_lo, ACC), join_float(s_icap_hi, s_icap_lo, ACC),
            join_float(t_cap_hi, t_cap_lo, ACC), join_float(t_icap_hi, t_icap_lo, ACC))


@triton.jit
def _log_softmax(z, m, log_d):
    """s = (z - M) - log D: the difference first, as torch's log_softmax (no cancellation at 1e4)."""
    return (z - m[:, None]) - log_d[:, None]


@triton.jit
def _logaddexp(a, b):
    """log(exp(a) + exp(b)), -inf when both are."""
    hi = tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)
    lo = tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)
    return tl.where(hi == float("-inf"), float("-inf"), hi + log1p(tl.exp(lo - hi)))


@triton.jit
def _times_probability(prob, value):
    """prob * value, 0 where prob is 0 (value may be -inf - -inf there); NaN stays NaN."""
    return tl.where(prob == 0, 0.0, prob * value)


@triton.jit
def _divergence_terms(s, t, p, q, log_beta, log_1mbeta, KL: tl.constexpr):
    """(2) The summands of a block: forward q (t - s), reverse p (s - t) (returned twice), mixed
    (q (t - mix), p (s - mix))."""
    if KL == "forward":
        term = _times_probability(q, t - s)
        return term, term
    elif KL == "reverse":
        term = _times_probability(p, s - t)
        return term, term
    else:
        mix = _logaddexp(t + log_beta, s + log_1mbeta)
        return _times_probability(q, t - mix), _times_probability(p, s - mix)


@triton.jit
def _divergence_gradients(s, t, p, q, k_s, k_t, beta, log_beta, log_1mbeta, KL: tl.constexpr):
    """(3) d L / dz and d L / dz' of a block (k_s, k_t: the row coefficients saved by (2))."""
    if KL == "forward":
        return p - q, _times_probability(q, (t - s) - k_t[:, None])
    elif KL == "reverse":
        return _times_probability(p, (s - t) - k_s[:, None]), q - p
    else:
        mix = _logaddexp(t + log_beta, s + log_1mbeta)
        return ((1.0 - beta) * _times_probability(p, (s - mix) - k_s[:, None]),
                beta * _times_probability(q, (t - mix) - k_t[:, None]))


@triton.jit
def _rows(pid, n_rows, BLOCK_R: tl.constexpr):
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    return rows, rows < n_rows


@triton.jit
def _join_scalars(inv_t_hi, inv_t_lo, beta_hi, beta_lo, log_beta_hi, log_beta_lo, log_1mbeta_hi, log_1mbeta_lo,
                  soft_w_hi, soft_w_lo, hard_w_hi, hard_w_lo, soft_mean_hi, soft_mean_lo, ACC: tl.constexpr):
    """The per-call scalars, each passed as an fp32 (hi, lo) pair, in ACC: (1/T, beta, log beta,
    log(1 - beta), the soft and hard weights, the soft part's 'mean' scale)."""
    return (join_float(inv_t_hi, inv_t_lo, ACC), join_float(beta_hi, beta_lo, ACC),
            join_float(log_beta_hi, log_beta_lo, ACC), join_float(log_1mbeta_hi, log_1mbeta_lo, ACC),
            join_float(soft_w_hi, soft_w_lo, ACC), join_float(hard_w_hi, hard_w_lo, ACC),
            join_float(soft_mean_hi, soft_mean_lo, ACC))


@triton.jit
def _row_labels(y_ptr, rows, row_mask, y_r, ignore_index, n_cols, HAS_LABELS: tl.constexpr, CLASSES: tl.constexpr):
    """The rows' label (or token), whether the row counts (a label other than ``ignore_index``; every row
    without labels) and whether its label is valid: a class in [0, V) when CLASSES (a token, a hard
    target), any value otherwise (jsd's labels only mask)."""
    if HAS_LABELS:
        y = tl.load(y_ptr + rows * y_r, mask=row_mask, other=ignore_index).to(tl.int64)
        counted = row_mask & (y != ignore_index)
    else:
        y = rows * 0
        counted = row_mask
    if CLASSES:
        valid = (y >= 0) & (y < n_cols)
    else:
        valid = counted | ~counted
    return y, counted, valid


@triton.jit
def _stat(work_ptr, k, n_state, rows):
    """The address of state plane k for ``rows`` (see STATE)."""
    return work_ptr + offset64(n_state, k) + rows


@triton.jit
def _sweep_log_sum_exps(s_ptr, t_ptr, s_row, t_row, row_mask, s_v, t_v, n_cols, y_local, inv_t, s_cap, s_icap, t_cap,
                        t_icap, GATHER_Y: tl.constexpr, ENTROPY: tl.constexpr, SQ_SUM: tl.constexpr,
                        Z_SUM: tl.constexpr, TOP1: tl.constexpr, HARD_OWN_LSE: tl.constexpr,
                        TEACHER_LOGITS: tl.constexpr, S_CAP: tl.constexpr, T_CAP: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    """(1) One sweep over the row's (a shard's) V columns: online (M, D) of z = x / T, with ENTROPY also E
    and with SQ_SUM Q (``online_softmax_stats``), with Z_SUM the sum of z, with TOP1 the max of z over the columns
    before ``y_local`` (B), with HARD_OWN_LSE (M, D) of x, with TEACHER_LOGITS of z'; with GATHER_Y the logit
    x at column ``y_local`` (0 where no column of the row is it: a label on another shard). Returns
    (m_s, d_s, e_s, q_s, z_s, b_s, m_t, d_t, m_1, d_1, x_y), each [BLOCK_R]."""
    zero = tl.zeros([BLOCK_R], ACC)
    m_s = zero + float("-inf")
    d_s = zero
    m_t = zero + float("-inf")
    d_t = zero
    m_1 = zero + float("-inf")
    d_1 = zero
    e_s = zero
    q_s = zero
    z_s = zero
    b_s = zero + float("-inf")
    x_y = zero
    for c0 in range(0, n_cols, BLOCK_V):
        cols = (c0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        mask = row_mask[:, None] & (cols < n_cols)[None, :]
        x = tl.load(s_ptr + s_row[:, None] + cols[None, :] * s_v, mask=mask, other=float("-inf")).to(ACC)
        x, _ = _capped(x, mask, s_cap, s_icap, float("-inf"), S_CAP)
        if GATHER_Y:
            x_y += tl.sum(tl.where(mask & (cols[None, :] == y_local[:, None]), x, 0.0), axis=1)
        z = x * inv_t  # masked lanes -inf
        if Z_SUM:
            z_s += tl.sum(tl.where(mask, z, 0.0), axis=1)
        if TOP1:
            b_s = tl.maximum(b_s, tl.max(tl.where(cols[None, :] < y_local[:, None], z, float("-inf")), axis=1))
        m_s, d_s, e_s, q_s = online_softmax_stats(m_s, d_s, e_s, q_s, z, ENTROPY, SQ_SUM)
        if HARD_OWN_LSE:
            m_1, d_1 = _online(m_1, d_1, x)
        if TEACHER_LOGITS:
            xt = tl.load(t_ptr + t_row[:, None] + cols[None, :] * t_v, mask=mask, other=float("-inf")).to(ACC)
            xt, _ = _capped(xt, mask, t_cap, t_icap, float("-inf"), T_CAP)
            m_t, d_t = _online(m_t, d_t, xt * inv_t)
    return m_s, d_s, e_s, q_s, z_s, b_s, m_t, d_t, m_1, d_1, x_y


@triton.jit
def _sweep_divergence(s_ptr, t_ptr, s_row, t_row, row_mask, s_v, t_v, n_cols, m_s, ld_s, m_t, ld_t, inv_t, log_beta,
                      log_1mbeta, s_cap, s_icap, t_cap, t_icap, KL: tl.constexpr, S_CAP: tl.constexpr,
                      T_CAP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    """(2) A second sweep over both rows (a shard's columns), given the whole rows' (M, log D): the sums
    (K, K') of ``_divergence_terms`` (forward and reverse: the one sum, twice)."""
    sum_t = tl.zeros([BLOCK_R], ACC)
    sum_s = tl.zeros([BLOCK_R], ACC)
    for c0 in range(0, n_cols, BLOCK_V):
        cols = (c0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        mask = row_mask[:, None] & (cols < n_cols)[None, :]
        x = tl.load(s_ptr + s_row[:, None] + cols[None, :] * s_v, mask=mask, other=float("-inf")).to(ACC)
        xt = tl.load(t_ptr + t_row[:, None] + cols[None, :] * t_v, mask=mask, other=float("-inf")).to(ACC)
        x, _ = _capped(x, mask, s_cap, s_icap, float("-inf"), S_CAP)
        xt, _ = _capped(xt, mask, t_cap, t_icap, float("-inf"), T_CAP)
        s = _log_softmax(x * inv_t, m_s, ld_s)
        t = _log_softmax(xt * inv_t, m_t, ld_t)
        term_t, term_s = _divergence_terms(s, t, tl.exp(s), tl.exp(t), log_beta, log_1mbeta, KL)
        sum_t += tl.sum(tl.where(mask, term_t, 0.0), axis=1)
        sum_s += tl.sum(tl.where(mask, term_s, 0.0), axis=1)
    return sum_s, sum_t


@triton.jit
def _top_k_value(s_ptr, t_ptr, idx_ptr, s_row, t_row, i_row, row_mask, s_v, t_v, i_k, n_cols, n_topk, col_offset,
                 n_classes, m_s, ld_s, inv_t, ACC: tl.constexpr):
    """(2) top-k teacher: sum_j exp(t_j) (t_j - s_{c_j}) over the entries whose class lies in this shard's
    columns [col_offset, col_offset + n_cols) (K gathers, no sweep), and whether every class is in
    [0, n_classes). A NaN t_j stays NaN; t_j = -inf counts 0."""
    value = tl.zeros(row_mask.shape, ACC)
    in_range = row_mask | ~row_mask
    for j in range(0, n_topk):
        c_j = tl.load(idx_ptr + i_row + j * i_k, mask=row_mask, other=0).to(tl.int64)
        in_range = in_range & ((c_j >= 0) & (c_j < n_classes))
        c_local = c_j - col_offset
        here = row_mask & (c_local >= 0) & (c_local < n_cols)
        t_j = tl.load(t_ptr + t_row + j * t_v, mask=here, other=float("-inf")).to(ACC)
        x_j = tl.load(s_ptr + s_row + tl.where(here, c_local, 0) * s_v, mask=here, other=0.0).to(ACC)
        s_j = (x_j * inv_t - m_s) - ld_s
        value += tl.where(t_j == float("-inf"), 0.0, tl.exp(t_j) * (t_j - s_j))
    return value, in_range


@triton.jit
def _write_top_k_gradients(s_ptr, t_ptr, idx_ptr, gs_ptr, s_row, t_row, i_row, gs_row, row_mask, live, s_v, t_v,
                           i_k, gs_v, n_cols, n_topk, col_offset, m_s, ld_s, soft, top_mass, inv_t, BLOCK_R: tl.constexpr,
                           BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """(3), top-k teacher: at each class c of the support, d/dz_c = p_c P - sum_{j: c_j = c} exp(t_j), over
    the dense p P the sweep wrote there (a class listed twice: the same value, stored twice). O(K^2) per row,
    not O(K V); nothing read back from the gradient (one rounding). Classes of this shard's columns only.
    It reads the logits again after the dense stores: the gradient must not be the logits' own buffer
    (top-k calls never write in place)."""
    for k0 in range(0, n_topk, BLOCK_K):
        ks = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        k_mask = row_mask[:, None] & (ks < n_topk)[None, :]
        c_k = tl.load(idx_ptr + i_row[:, None] + ks[None, :] * i_k, mask=k_mask, other=0).to(tl.int64)
        c_local = c_k - col_offset
        k_mask = k_mask & (c_local >= 0) & (c_local < n_cols)  # a row with a class out of range is NaN already
        c_local = tl.where(k_mask, c_local, 0)
        x_k = tl.load(s_ptr + s_row[:, None] + c_local * s_v, mask=k_mask, other=0.0).to(ACC)
        p_k = tl.exp((x_k * inv_t - m_s[:, None]) - ld_s[:, None])
        listed = tl.zeros([BLOCK_R, BLOCK_K], ACC)  # sum of exp(t_j) over the entries j of the same class
        for j0 in range(0, n_topk, BLOCK_K):
            js = (j0 + tl.arange(0, BLOCK_K)).to(tl.int64)
            j_mask = row_mask[:, None] & (js < n_topk)[None, :]
            c_j = tl.load(idx_ptr + i_row[:, None] + js[None, :] * i_k, mask=j_mask, other=-1).to(tl.int64)
            q_j = tl.exp(tl.load(t_ptr + t_row[:, None] + js[None, :] * t_v, mask=j_mask,
                                 other=float("-inf")).to(ACC))
            same = c_k[:, :, None] == c_j[:, None, :]
            listed += tl.sum(tl.where(same, q_j[:, None, :], 0.0), axis=2)
        grad = tl.where(live[:, None], soft[:, None] * (p_k * top_mass[:, None] - listed), 0.0)
        tl.store(gs_ptr + gs_row[:, None] + c_local * gs_v, grad.to(gs_ptr.dtype.element_ty), mask=k_mask)


@triton.jit
def _write_gradients(
    s_ptr, t_ptr, idx_ptr, gs_ptr, gt_ptr, s_row, t_row, i_row, gs_row, gt_row, row_mask, live,
    s_v, t_v, i_k, gs_v, gt_v, n_cols, n_topk, col_offset,
    m_s, ld_s, m_t, ld_t, k_s, k_t, m_1, ld_1, y, soft, hard, g_lp, g_h, entropy, inv_t, beta, log_beta, log_1mbeta,
    s_cap, s_icap, t_cap, t_icap,
    MODE: tl.constexpr, TEACHER: tl.constexpr, KL: tl.constexpr, HARD: tl.constexpr, HARD_OWN_LSE: tl.constexpr,
    GRAD_STUDENT: tl.constexpr, GRAD_TEACHER: tl.constexpr, S_CAP: tl.constexpr, T_CAP: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
):
    """(3) One sweep over the rows writing the student's gradient (GRAD_STUDENT) and the teacher's
    (GRAD_TEACHER): ``soft`` multiplies the soft part (already times 1/T), ``hard`` the hard target's;
    log-probabilities take g_lp and g_h (times 1/T); ``y``: the label's column in this shard (none of its
    columns when the label is on another shard). Rows not ``live`` (ignored) get exactly 0 whatever their
    logits (an all -inf row's p is NaN), NaN rows NaN."""
    y_local = y.to(tl.int64)
    top_mass = tl.zeros([BLOCK_R], ACC)
    if TEACHER == "topk":  # P = sum_j exp(t_j), the teacher's mass on its support
        for k0 in range(0, n_topk, BLOCK_K):
            ks = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
            k_mask = row_mask[:, None] & (ks < n_topk)[None, :]
            t_k = tl.load(t_ptr + t_row[:, None] + ks[None, :] * t_v, mask=k_mask, other=float("-inf")).to(ACC)
            top_mass += tl.sum(tl.exp(t_k), axis=1)
    for c0 in range(0, n_cols, BLOCK_V):
        cols = (c0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        mask = row_mask[:, None] & (cols < n_cols)[None, :]
        x = tl.load(s_ptr + s_row[:, None] + cols[None, :] * s_v, mask=mask, other=0.0).to(ACC)
        x, s_slope = _capped(x, mask, s_cap, s_icap, 0.0, S_CAP)
        z = x * inv_t
        s = _log_softmax(z, m_s, ld_s)
        p = tl.exp(s)
        if MODE == "log_probs":
            is_token = cols[None, :] == y_local[:, None]
            gs = g_lp[:, None] * (tl.where(is_token, 1.0, 0.0) - p) - g_h[:, None] * _times_probability(
                p, s + entropy[:, None])
        elif TEACHER == "topk":
            gs = soft[:, None] * (p * top_mass[:, None])  # the classes of the support: the pass below
        else:
            xt = tl.load(t_ptr + t_row[:, None] + cols[None, :] * t_v, mask=mask, other=0.0).to(ACC)
            xt, t_slope = _capped(xt, mask, t_cap, t_icap, 0.0, T_CAP)
            t = _log_softmax(xt * inv_t, m_t, ld_t)
            q = tl.exp(t)
            d_s, d_t = _divergence_gradients(s, t, p, q, k_s, k_t, beta, log_beta, log_1mbeta, KL)
            gs = soft[:, None] * d_s
            if GRAD_TEACHER:
                gt = tl.where(live[:, None], (soft[:, None] * d_t) * t_slope, 0.0)
                tl.store(gt_ptr + gt_row[:, None] + cols[None, :] * gt_v, gt.to(gt_ptr.dtype.element_ty), mask=mask)
        if HARD:
            if HARD_OWN_LSE:
                p1 = tl.exp(_log_softmax(x, m_1, ld_1))
            else:
                p1 = p
            gs += hard[:, None] * (p1 - tl.where(cols[None, :] == y_local[:, None], 1.0, 0.0))
        if GRAD_STUDENT:
            gs = tl.where(live[:, None], gs * s_slope, 0.0)
            tl.store(gs_ptr + gs_row[:, None] + cols[None, :] * gs_v, gs.to(gs_ptr.dtype.element_ty), mask=mask)
    if TEACHER == "topk" and GRAD_STUDENT:
        tl.debug_barrier()  # the dense stores above precede these, to the same addresses
        _write_top_k_gradients(s_ptr, t_ptr, idx_ptr, gs_ptr, s_row, t_row, i_row, gs_row, row_mask, live, s_v, t_v,
                               i_k, gs_v, n_cols, n_topk, col_offset, m_s, ld_s, soft, top_mass, inv_t, BLOCK_R,
                               BLOCK_K, ACC)


# ----------------------------------------------------------------------------------------------------
# the kernels
# ----------------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["n_state", "out_plane", "n_rows", "ignore_index", "inv_t_hi", "inv_t_lo", "beta_hi",
                               "beta_lo", "log_beta_hi", "log_beta_lo", "log_1mbeta_hi", "log_1mbeta_lo", "soft_w_hi",
                               "soft_w_lo", "hard_w_hi", "hard_w_lo", "soft_mean_hi", "soft_mean_lo", "min_denom",
                               *_CAP_ARGS])
def _distribution_fwd_kernel(
    # pointers
    s_ptr,  # (R, V) student logits (log-probabilities: the logits)
    t_ptr,  # (R, V) teacher logits (TEACHER "logits"); (R, K) teacher log-probabilities (TEACHER "topk")
    idx_ptr,  # (R, K) int teacher classes (TEACHER "topk")
    y_ptr,  # (R,) int labels (HAS_LABELS: the mask, and the hard targets with HARD; log-probabilities: tokens)
    out_ptr,  # REDUCTION "none": the rows' totals (R,) (log-probabilities: planes out_plane apart, [lp | H |
    #           log sum p^2 | mean logit | is_top1 (0/1)], the ones asked for, in this order); else () the loss
    work_ptr,  # float state and partial sums (STATE)
    gs_ptr, gt_ptr,  # (R, V) gradients of the student's and the teacher's logits (WRITE_GRAD)
    denom_ptr,  # () the denominator computed before the launch (DENOM_GIVEN)
    counter_ptr,  # () int32 ticket counter, zero between launches (REDUCTION != "none")
    scale_ptr,  # (R,) the rows' grad_output, multiplies the written gradient (SCALE_GRAD); log-probabilities:
    #             [g_lp | g_H] planes sc_plane apart
    # strides, in elements
    s_r, s_v, t_r, t_v, i_r, i_k, y_r, gs_r, gs_v, gt_r, gt_v, sc_r, sc_plane,
    # sizes
    n_rows, n_cols, n_topk,
    n_state,  # the state's plane size: R when SAVE, else 0
    out_plane,  # log-probabilities with statistics: the distance between out's planes (lp's to H's)
    # per-call scalars; floats as fp32 (hi, lo) pairs
    ignore_index, inv_t_hi, inv_t_lo, beta_hi, beta_lo, log_beta_hi, log_beta_lo, log_1mbeta_hi, log_1mbeta_lo,
    soft_w_hi, soft_w_lo, hard_w_hi, hard_w_lo, soft_mean_hi, soft_mean_lo,
    min_denom,  # the denominator's floor: 1 for 'batchmean' (TRL's: no rows counted gives 0, not 0 / 0), else -inf
    s_cap_hi, s_cap_lo, s_icap_hi, s_icap_lo, t_cap_hi, t_cap_lo, t_icap_hi, t_icap_lo,  # softcaps, 1 / softcaps
    # constexprs
    MODE: tl.constexpr,  # "jsd" | "log_probs"
    TEACHER: tl.constexpr,  # "logits" | "topk" (jsd)
    KL: tl.constexpr,  # "forward" | "reverse" | "mixed" (jsd)
    HAS_LABELS: tl.constexpr, HARD: tl.constexpr, HARD_OWN_LSE: tl.constexpr, ENTROPY: tl.constexpr,
    REDUCTION: tl.constexpr,  # "none" | "sum" | "mean" (divided by the counted rows)
    DENOM_GIVEN: tl.constexpr, SAVE: tl.constexpr, N_STATS: tl.constexpr,
    WRITE_GRAD: tl.constexpr, GRAD_STUDENT: tl.constexpr, GRAD_TEACHER: tl.constexpr, SCALE_GRAD: tl.constexpr,
    S_CAP: tl.constexpr, T_CAP: tl.constexpr,  # the student's (the teacher's) logits softcapped first
    SQ_PLANE: tl.constexpr, MEAN_PLANE: tl.constexpr, TOP1_PLANE: tl.constexpr,  # log-probabilities: out's plane of
    #                      log sum p^2, of the mean logit, of is_top1 (0: not asked for; H's is 1 with ENTROPY)
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, RBLOCK: tl.constexpr, ACC: tl.constexpr,
):
    inv_t, beta, log_beta, log_1mbeta, soft_w, hard_w, soft_mean = _join_scalars(
        inv_t_hi, inv_t_lo, beta_hi, beta_lo, log_beta_hi, log_beta_lo, log_1mbeta_hi, log_1mbeta_lo, soft_w_hi,
        soft_w_lo, hard_w_hi, hard_w_lo, soft_mean_hi, soft_mean_lo, ACC)
    s_cap, s_icap, t_cap, t_icap = _join_caps(s_cap_hi, s_cap_lo, s_icap_hi, s_icap_lo, t_cap_hi, t_cap_lo,
                                              t_icap_hi, t_icap_lo, ACC)
    pid = tl.program_id(0)
    rows, row_mask = _rows(pid, n_rows, BLOCK_R)
    s_row = rows * s_r
    t_row = rows * t_r
    i_row = rows * i_r
    y, counted, valid = _row_labels(y_ptr, rows, row_mask, y_r, ignore_index, n_cols, HAS_LABELS,
                                    HARD or MODE == "log_probs")
    y_safe = tl.where(counted & valid, y, 0)

    # (1) online log-sum-exps (and the entropy's sum); the label's (token's) logit picked up on the way:
    # sweep (3) may overwrite the row
    m_s, d_s, e_s, q_s, z_s, b_s, m_t, d_t, m_1, d_1, x_y = _sweep_log_sum_exps(
        s_ptr, t_ptr, s_row, t_row, row_mask, s_v, t_v, n_cols, y_safe, inv_t, s_cap, s_icap, t_cap, t_icap,
        HARD or MODE == "log_probs", ENTROPY, SQ_PLANE > 0, MEAN_PLANE > 0, TOP1_PLANE > 0, HARD_OWN_LSE,
        TEACHER == "logits", S_CAP, T_CAP, BLOCK_R, BLOCK_V, ACC)
    ld_s = tl.log(d_s)
    ld_t = tl.log(d_t)
    ld_1 = tl.log(d_1)
    if not HARD_OWN_LSE:
        m_1 = m_s
        ld_1 = ld_s

    # (2) the row's values
    zero = tl.zeros([BLOCK_R], ACC)
    k_s = zero
    k_t = zero
    entropy = zero
    log_sum_sq = zero
    mean_logit = zero
    top1 = zero
    if MODE == "log_probs":
        value = (x_y * inv_t - m_s) - ld_s  # lp
        if ENTROPY:
            entropy = ld_s - div_rn(e_s, d_s)
        if SQ_PLANE > 0:
            log_sum_sq = tl.log(q_s) - 2.0 * ld_s
        if MEAN_PLANE > 0:
            mean_logit = div_by_count(z_s, n_cols)
        if TOP1_PLANE > 0:
            z_y = x_y * inv_t  # the product the sweep compared
            top1 = tl.where((z_y >= m_s) & (z_y > b_s), 1.0, 0.0).to(ACC)
    elif TEACHER == "topk":
        value, in_range = _top_k_value(s_ptr, t_ptr, idx_ptr, s_row, t_row, i_row, row_mask, s_v, t_v, i_k, n_cols,
                                       n_topk, 0, n_cols, m_s, ld_s, inv_t, ACC)
        valid = valid & in_range
    else:
        sum_s, sum_t = _sweep_divergence(s_ptr, t_ptr, s_row, t_row, row_mask, s_v, t_v, n_cols, m_s, ld_s, m_t, ld_t,
                                         inv_t, log_beta, log_1mbeta, s_cap, s_icap, t_cap, t_icap, KL, S_CAP, T_CAP,
                                         BLOCK_R, BLOCK_V, ACC)
        if KL == "forward":
            value = sum_t
            k_t = sum_t
        elif KL == "reverse":
            value = sum_s
            k_s = sum_s
        else:
            value = beta * sum_t + (1.0 - beta) * sum_s
            k_s = sum_s
            k_t = sum_t
    ce = zero
    if HARD:
        ce = (m_1 - x_y) + ld_1
    if MODE == "log_probs":
        total = value
    else:
        total = soft_w * soft_mean * value
        if HARD:
            total += hard_w * ce
    # ignored rows: 0 (whatever their logits); a label, token or class outside [0, V): NaN
    total = tl.where(counted, total, 0.0)
    entropy = tl.where(counted, entropy, 0.0)
    bad = counted & ~valid
    total = tl.where(bad, float("nan"), total)
    entropy = tl.where(bad, float("nan"), entropy)
    log_sum_sq = tl.where(bad, float("nan"), tl.where(counted, log_sum_sq, 0.0))
    mean_logit = tl.where(bad, float("nan"), tl.where(counted, mean_logit, 0.0))
    top1 = tl.where(counted & valid, top1, 0.0)  # a boolean: False for ignored and bad rows

    if SAVE:
        tl.store(_stat(work_ptr, 0, n_state, rows), m_s, mask=row_mask)
        tl.store(_stat(work_ptr, 1, n_state, rows), ld_s, mask=row_mask)
        if MODE == "log_probs":
            tl.store(_stat(work_ptr, 2, n_state, rows), entropy, mask=row_mask)
        elif TEACHER == "logits":
            tl.store(_stat(work_ptr, 2, n_state, rows), m_t, mask=row_mask)
            tl.store(_stat(work_ptr, 3, n_state, rows), ld_t, mask=row_mask)
            tl.store(_stat(work_ptr, 4, n_state, rows), k_s, mask=row_mask)
            tl.store(_stat(work_ptr, 5, n_state, rows), k_t, mask=row_mask)
        if HARD_OWN_LSE:
            tl.store(_stat(work_ptr, N_STATS - 2, n_state, rows), m_1, mask=row_mask)
            tl.store(_stat(work_ptr, N_STATS - 1, n_state, rows), ld_1, mask=row_mask)

    # (3) the gradient for grad_output 1 (or the rows' own, SCALE_GRAD), over the denominator
    if WRITE_GRAD:
        g = tl.full([BLOCK_R], 1.0, ACC)
        if DENOM_GIVEN:
            g = div_rn(g, tl.load(denom_ptr).to(ACC))
        if SCALE_GRAD:
            g = g * tl.load(scale_ptr + rows * sc_r, mask=row_mask, other=0.0).to(ACC)
        g_h = zero
        if ENTROPY:
            g_h = tl.load(scale_ptr + sc_plane + rows * sc_r, mask=row_mask, other=0.0).to(ACC)
        g = tl.where(bad, float("nan"), tl.where(counted, g, 0.0))
        g_h = tl.where(bad, float("nan"), tl.where(counted, g_h, 0.0))
        tl.debug_barrier()  # every read of sweeps (1) and (2) precedes the stores (the buffer may be the logits)
        _write_gradients(s_ptr, t_ptr, idx_ptr, gs_ptr, gt_ptr, s_row, t_row, i_row, rows * gs_r, rows * gt_r,
                         row_mask, counted, s_v, t_v, i_k, gs_v, gt_v, n_cols, n_topk, 0, m_s, ld_s, m_t, ld_t, k_s,
                         k_t, m_1, ld_1, y_safe, g * soft_w * soft_mean * inv_t, g * hard_w, g * inv_t, g_h * inv_t, entropy,
                         inv_t, beta, log_beta, log_1mbeta, s_cap, s_icap, t_cap, t_icap, MODE, TEACHER, KL, HARD,
                         HARD_OWN_LSE, GRAD_STUDENT, GRAD_TEACHER, S_CAP, T_CAP, BLOCK_R, BLOCK_V, BLOCK_K, ACC)

    # (4) per row, or reduced over the grid in this launch
    if REDUCTION == "none":
        tl.store(out_ptr + rows, total.to(out_ptr.dtype.element_ty), mask=row_mask)
        if ENTROPY:
            tl.store(out_ptr + offset64(out_plane, 1) + rows, entropy.to(out_ptr.dtype.element_ty), mask=row_mask)
        if SQ_PLANE > 0:
            tl.store(out_ptr + offset64(out_plane, SQ_PLANE) + rows, log_sum_sq.to(out_ptr.dtype.element_ty),
                     mask=row_mask)
        if MEAN_PLANE > 0:
            tl.store(out_ptr + offset64(out_plane, MEAN_PLANE) + rows, mean_logit.to(out_ptr.dtype.element_ty),
                     mask=row_mask)
        if TOP1_PLANE > 0:
            tl.store(out_ptr + offset64(out_plane, TOP1_PLANE) + rows, top1.to(out_ptr.dtype.element_ty),
                     mask=row_mask)
    else:
        finish_grid_mean(tl.sum(tl.where(row_mask, total, 0.0), axis=0),
                         tl.sum(tl.where(counted, 1.0, 0.0).to(ACC), axis=0), out_ptr,
                         _stat(work_ptr, N_STATS, n_state, 0), denom_ptr, counter_ptr, min_denom, REDUCTION == "mean",
                         DENOM_GIVEN, RBLOCK, ACC)


@triton.jit(do_not_specialize=["n_state", "n_rows", "col_offset", "n_classes", "ignore_index", "inv_t_hi", "inv_t_lo", "beta_hi", "beta_lo",
                               "log_beta_hi", "log_beta_lo", "log_1mbeta_hi", "log_1mbeta_lo", "soft_w_hi",
                               "soft_w_lo", "hard_w_hi", "hard_w_lo", "soft_mean_hi", "soft_mean_lo", "min_denom",
                               *_CAP_ARGS])
def _distribution_bwd_kernel(
    # pointers
    s_ptr, t_ptr, idx_ptr, y_ptr,  # as in the forward
    work_ptr,  # the forward's state (STATE); the denominator read when MEAN
    g_ptr,  # grad_output: one element (a reduced loss), (R,) per row, or log-probabilities' [g_lp | g_H]
    gs_ptr, gt_ptr,  # (R, V) gradients (out)
    # strides
    s_r, s_v, t_r, t_v, i_r, i_k, y_r, g_r, g_plane, gs_r, gs_v, gt_r, gt_v,
    # sizes
    n_rows, n_cols, n_topk, n_state,
    col_offset, n_classes,  # this shard's columns are classes [col_offset, col_offset + n_cols) of n_classes
    # per-call scalars, floats as (hi, lo)
    ignore_index, inv_t_hi, inv_t_lo, beta_hi, beta_lo, log_beta_hi, log_beta_lo, log_1mbeta_hi, log_1mbeta_lo,
    soft_w_hi, soft_w_lo, hard_w_hi, hard_w_lo, soft_mean_hi, soft_mean_lo, min_denom,
    s_cap_hi, s_cap_lo, s_icap_hi, s_icap_lo, t_cap_hi, t_cap_lo, t_icap_hi, t_icap_lo,
    # constexprs
    MODE: tl.constexpr, TEACHER: tl.constexpr, KL: tl.constexpr, HAS_LABELS: tl.constexpr, HARD: tl.constexpr,
    HARD_OWN_LSE: tl.constexpr, ENTROPY: tl.constexpr, MEAN: tl.constexpr, N_STATS: tl.constexpr,
    GRAD_STUDENT: tl.constexpr, GRAD_TEACHER: tl.constexpr, S_CAP: tl.constexpr, T_CAP: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
):
    """(3) alone, from the forward's state, for the grad_output the backward receives (vocabulary parallel:
    this shard's columns, from the whole rows' state)."""
    inv_t, beta, log_beta, log_1mbeta, soft_w, hard_w, soft_mean = _join_scalars(
        inv_t_hi, inv_t_lo, beta_hi, beta_lo, log_beta_hi, log_beta_lo, log_1mbeta_hi, log_1mbeta_lo, soft_w_hi,
        soft_w_lo, hard_w_hi, hard_w_lo, soft_mean_hi, soft_mean_lo, ACC)
    s_cap, s_icap, t_cap, t_icap = _join_caps(s_cap_hi, s_cap_lo, s_icap_hi, s_icap_lo, t_cap_hi, t_cap_lo,
                                              t_icap_hi, t_icap_lo, ACC)
    pid = tl.program_id(0)
    rows, row_mask = _rows(pid, n_rows, BLOCK_R)
    zero = tl.zeros([BLOCK_R], ACC)
    y, counted, valid = _row_labels(y_ptr, rows, row_mask, y_r, ignore_index, n_classes, HAS_LABELS,
                                    HARD or MODE == "log_probs")
    if TEACHER == "topk":
        for j in range(0, n_topk):
            c_j = tl.load(idx_ptr + rows * i_r + j * i_k, mask=row_mask, other=0).to(tl.int64)
            valid = valid & ((c_j >= 0) & (c_j < n_classes))
    bad = counted & ~valid
    y_safe = tl.where(counted & valid, y, 0)

    m_s = tl.load(_stat(work_ptr, 0, n_state, rows), mask=row_mask, other=0.0).to(ACC)
    ld_s = tl.load(_stat(work_ptr, 1, n_state, rows), mask=row_mask, other=0.0).to(ACC)
    m_t = zero
    ld_t = zero
    k_s = zero
    k_t = zero
    entropy = zero
    m_1 = m_s
    ld_1 = ld_s
    if MODE == "log_probs":
        entropy = tl.load(_stat(work_ptr, 2, n_state, rows), mask=row_mask, other=0.0).to(ACC)
    elif TEACHER == "logits":
        m_t = tl.load(_stat(work_ptr, 2, n_state, rows), mask=row_mask, other=0.0).to(ACC)
        ld_t = tl.load(_stat(work_ptr, 3, n_state, rows), mask=row_mask, other=0.0).to(ACC)
        k_s = tl.load(_stat(work_ptr, 4, n_state, rows), mask=row_mask, other=0.0).to(ACC)
        k_t = tl.load(_stat(work_ptr, 5, n_state, rows), mask=row_mask, other=0.0).to(ACC)
    if HARD_OWN_LSE:
        m_1 = tl.load(_stat(work_ptr, N_STATS - 2, n_state, rows), mask=row_mask, other=0.0).to(ACC)
        ld_1 = tl.load(_stat(work_ptr, N_STATS - 1, n_state, rows), mask=row_mask, other=0.0).to(ACC)

    g = tl.load(g_ptr + rows * g_r, mask=row_mask, other=0.0).to(ACC)
    if MEAN:
        g = div_rn(g, tl.load(_stat(work_ptr, N_STATS, n_state, 0)).to(ACC))
    g_h = zero
    if ENTROPY:
        g_h = tl.load(g_ptr + g_plane + rows * g_r, mask=row_mask, other=0.0).to(ACC)
    g = tl.where(counted, g, 0.0)
    g = tl.where(bad, float("nan"), g)
    g_h = tl.where(counted, g_h, 0.0)
    g_h = tl.where(bad, float("nan"), g_h)
    _write_gradients(s_ptr, t_ptr, idx_ptr, gs_ptr, gt_ptr, rows * s_r, rows * t_r, rows * i_r, rows * gs_r,
                     rows * gt_r, row_mask, counted, s_v, t_v, i_k, gs_v, gt_v, n_cols, n_topk, col_offset, m_s, ld_s,
                     m_t, ld_t, k_s, k_t, m_1, ld_1, y_safe - col_offset, g * soft_w * soft_mean * inv_t, g * hard_w,
                     g * inv_t, g_h * inv_t, entropy, inv_t, beta, log_beta, log_1mbeta, s_cap, s_icap, t_cap, t_icap,
                     MODE, TEACHER, KL, HARD, HARD_OWN_LSE, GRAD_STUDENT, GRAD_TEACHER, S_CAP, T_CAP, BLOCK_R,
                     BLOCK_V, BLOCK_K, ACC)


@triton.jit(do_not_specialize=["st_plane", "n_rows", "col_offset", "ignore_index", "inv_t_hi", "inv_t_lo", *_CAP_ARGS])
def _distribution_shard_stats_kernel(
    s_ptr, t_ptr, y_ptr,  # as in the forward: this shard's columns of the student's (teacher's) logits
    stats_ptr,  # out: SHARD_STATS planes, st_plane elements apart
    s_r, s_v, t_r, t_v, y_r, st_plane,
    n_rows, n_cols, col_offset,  # this shard's columns: classes [col_offset, col_offset + n_cols)
    ignore_index, inv_t_hi, inv_t_lo,
    s_cap_hi, s_cap_lo, s_icap_hi, s_icap_lo, t_cap_hi, t_cap_lo, t_icap_hi, t_icap_lo,
    HAS_LABELS: tl.constexpr, GATHER_Y: tl.constexpr, ENTROPY: tl.constexpr, SQ_SUM: tl.constexpr,
    Z_SUM: tl.constexpr, TOP1: tl.constexpr, HARD_OWN_LSE: tl.constexpr,
    TEACHER_LOGITS: tl.constexpr, S_CAP: tl.constexpr, T_CAP: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr, ACC: tl.constexpr,
):
    """Vocabulary parallel, launch 1: sweep (1) over this shard's columns, its row statistics written as
    the SHARD_STATS planes (sums relative to the shard's own maxima; x_y the label's logit where this
    shard holds that class, else 0; b_s the max of z over this shard's columns before the label's class,
    -inf when the label lies on an earlier shard), to be combined over the ranks. The planes of q_s, z_s and
    b_s are written only with SQ_SUM, Z_SUM, TOP1."""
    inv_t = join_float(inv_t_hi, inv_t_lo, ACC)
    s_cap, s_icap, t_cap, t_icap = _join_caps(s_cap_hi, s_cap_lo, s_icap_hi, s_icap_lo, t_cap_hi, t_cap_lo,
                                              t_icap_hi, t_icap_lo, ACC)
    rows, row_mask = _rows(tl.program_id(0), n_rows, BLOCK_R)
    y_local = rows * 0 - 1
    if HAS_LABELS:
        y_local = tl.load(y_ptr + rows * y_r, mask=row_mask, other=ignore_index).to(tl.int64) - col_offset
    m_s, d_s, e_s, q_s, z_s, b_s, m_t, d_t, m_1, d_1, x_y = _sweep_log_sum_exps(
        s_ptr, t_ptr, rows * s_r, rows * t_r, row_mask, s_v, t_v, n_cols, y_local, inv_t, s_cap, s_icap, t_cap,
        t_icap, GATHER_Y, ENTROPY, SQ_SUM, Z_SUM, TOP1, HARD_OWN_LSE, TEACHER_LOGITS, S_CAP, T_CAP, BLOCK_R,
        BLOCK_V, ACC)
    tl.store(_stat(stats_ptr, 0, st_plane, rows), m_s, mask=row_mask)
    tl.store(_stat(stats_ptr, 1, st_plane, rows), d_s, mask=row_mask)
    tl.store(_stat(stats_ptr, 2, st_plane, rows), e_s, mask=row_mask)
    tl.store(_stat(stats_ptr, 3, st_plane, rows), m_t, mask=row_mask)
    tl.store(_stat(stats_ptr, 4, st_plane, rows), d_t, mask=row_mask)
    tl.store(_stat(stats_ptr, 5, st_plane, rows), m_1, mask=row_mask)
    tl.store(_stat(stats_ptr, 6, st_plane, rows), d_1, mask=row_mask)
    tl.store(_stat(stats_ptr, 7, st_plane, rows), x_y, mask=row_mask)
    if SQ_SUM:
        tl.store(_stat(stats_ptr, 8, st_plane, rows), q_s, mask=row_mask)
    if Z_SUM:
        tl.store(_stat(stats_ptr, 9, st_plane, rows), z_s, mask=row_mask)
    if TOP1:
        tl.store(_stat(stats_ptr, 10, st_plane, rows), b_s, mask=row_mask)


@triton.jit(do_not_specialize=["n_state", "tm_plane", "n_rows", "col_offset", "n_classes", "inv_t_hi", "inv_t_lo",
                               "log_beta_hi", "log_beta_lo", "log_1mbeta_hi", "log_1mbeta_lo", *_CAP_ARGS])
def _distribution_shard_terms_kernel(
    s_ptr, t_ptr, idx_ptr,  # as in the forward: this shard's columns; the top-k (R, K) whole
    work_ptr,  # the state (STATE) holding the whole rows' [M | log D] of z (and z')
    terms_ptr,  # out: [K | K'] planes, tm_plane elements apart
    s_r, s_v, t_r, t_v, i_r, i_k, tm_plane,
    n_rows, n_cols, n_topk, n_state, col_offset, n_classes,
    inv_t_hi, inv_t_lo, log_beta_hi, log_beta_lo, log_1mbeta_hi, log_1mbeta_lo,
    s_cap_hi, s_cap_lo, s_icap_hi, s_icap_lo, t_cap_hi, t_cap_lo, t_icap_hi, t_icap_lo,
    TEACHER: tl.constexpr, KL: tl.constexpr, S_CAP: tl.constexpr, T_CAP: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr, ACC: tl.constexpr,
):
    """Vocabulary parallel, launch 2 (jsd): this shard's share of the divergence's sums (2) given the whole
    rows' log-sum-exps: sweep (2) over its columns (top-k: its classes' entries, in the K' plane), to be
    summed over the ranks."""
    inv_t = join_float(inv_t_hi, inv_t_lo, ACC)
    log_beta = join_float(log_beta_hi, log_beta_lo, ACC)
    log_1mbeta = join_float(log_1mbeta_hi, log_1mbeta_lo, ACC)
    s_cap, s_icap, t_cap, t_icap = _join_caps(s_cap_hi, s_cap_lo, s_icap_hi, s_icap_lo, t_cap_hi, t_cap_lo,
                                              t_icap_hi, t_icap_lo, ACC)
    rows, row_mask = _rows(tl.program_id(0), n_rows, BLOCK_R)
    m_s = tl.load(_stat(work_ptr, 0, n_state, rows), mask=row_mask, other=0.0).to(ACC)
    ld_s = tl.load(_stat(work_ptr, 1, n_state, rows), mask=row_mask, other=0.0).to(ACC)
    if TEACHER == "topk":
        sum_t, _ = _top_k_value(s_ptr, t_ptr, idx_ptr, rows * s_r, rows * t_r, rows * i_r, row_mask, s_v, t_v, i_k,
                                n_cols, n_topk, col_offset, n_classes, m_s, ld_s, inv_t, ACC)
        sum_s = sum_t * 0.0
    else:
        m_t = tl.load(_stat(work_ptr, 2, n_state, rows), mask=row_mask, other=0.0).to(ACC)
        ld_t = tl.load(_stat(work_ptr, 3, n_state, rows), mask=row_mask, other=0.0).to(ACC)
        sum_s, sum_t = _sweep_divergence(s_ptr, t_ptr, rows * s_r, rows * t_r, row_mask, s_v, t_v, n_cols, m_s, ld_s,
                                         m_t, ld_t, inv_t, log_beta, log_1mbeta, s_cap, s_icap, t_cap, t_icap, KL,
                                         S_CAP, T_CAP, BLOCK_R, BLOCK_V, ACC)
    tl.store(_stat(terms_ptr, 0, tm_plane, rows), sum_s, mask=row_mask)
    tl.store(_stat(terms_ptr, 1, tm_plane, rows), sum_t, mask=row_mask)


# ----------------------------------------------------------------------------------------------------
# launchers: a plan per signature (cached), the outputs, one launch
# ----------------------------------------------------------------------------------------------------

# The build check's written exceptions (fusedloss/buildcheck.py): a budget that the configurations matching
# ``kernel`` and ``where`` (constexpr values; a tuple: any of them) may exceed, on ``archs`` (default all),
# and why: what it costs, on which GPUs.
BUILD_BUDGET_EXCEPTIONS = tuple(
    dict(kernel=kernel, budget="registers", where={"KL": "mixed", "ACC": "fp64"},
         reason="the float64 generalized JSD (beta strictly between 0 and 1: a float64 logaddexp of both "
                "distributions per element, libdevice's exp and log) holds 164-224 registers at 8 warps, one "
                "256-thread block per SM; at 16 warps (128 registers a thread) it spills on sm_100 (_config). "
                "Costs latency hiding on full-rate FP64 GPUs (A100, H100, B200; not measured); on the others the "
                "1/64-rate FP64 pipe bounds it anyway. float64 distillation is a testing configuration.")
    for kernel in ("_distribution_fwd_kernel", "_distribution_bwd_kernel")) + (
    dict(kernel="_distribution_fwd_kernel", budget="spills", where={"KL": "mixed", "ACC": "fp32"}, archs=("sm_100",),
         reason="the 16/32-bit generalized JSD forward on sm_100 only: ptxas-blackwell holds it to 80 registers "
                "(three 256-thread blocks per SM) and spills 16 bytes per thread; sm_80 and sm_90 take 78-80 "
                "registers and spill nothing. The spill stays in L1, against 2 x V x B bytes read per row: "
                "negligible on B200 (not measured)."),
    dict(kernel="_distribution_fwd_kernel", budget="registers",
         where={"S_CAP": True, "T_CAP": True, "GRAD_TEACHER": True, "HARD_OWN_LSE": True}, archs=("sm_100",),
         reason="linear_jsd_loss with both heads softcapped, the teacher's gradient and a hard loss at T != 1 "
                "(every option at once) on sm_100 only: 179 registers at 8 warps (sm_80/sm_90: 80-110), one "
                "256-thread block per SM. A half-width tile was tried: 146 registers on sm_100 and a new spill "
                "on sm_90. The capped kernel is bound by its tanh work (bench/NOTES.md: ~21 SFU operations per "
                "element pair), which occupancy does not relieve; costs latency hiding on B200 (not measured)."),
    dict(kernel="_distribution_shard_terms_kernel", budget="spills", where={"S_CAP": True, "T_CAP": True},
         archs=("sm_80",),
         reason="vocabulary-parallel linear_jsd_loss with both heads softcapped, sweep (2) on sm_80 only: "
                "ptxas holds it to 80 registers and spills 8 bytes a thread, in L1, against 2 x V x B bytes read "
                "per row: negligible on A100 (not measured); sm_90/sm_100 spill nothing."),)



def _block_k(n_topk):
    """Top-k entries a step of the sparse gradient pass holds ([K x K] compares of a row: 16 x 16)."""
    return max(1, min(16, triton.next_power_of_2(max(n_topk, 1))))


class Problem:
    """What a launch computes, independent of tensors: mode ("jsd" | "log_probs"), teacher ("logits" |
    "topk" | ""), kl kind, labels, hard target, entropy; and the per-call scalars. Log-probabilities' other
    per-token statistics (outputs without gradient): ``log_sum_sq`` (log sum p**2), ``mean_logits``,
    ``is_top1``."""

    __slots__ = ("mode", "teacher", "kl", "has_labels", "hard", "entropy", "ignore_index", "temperature", "beta",
                 "soft_w", "hard_w", "soft_mean", "min_denom", "softcap", "teacher_softcap", "log_sum_sq",
                 "mean_logits", "is_top1")

    def __init__(self, mode, teacher="", kl="forward", has_labels=False, hard=False, entropy=False,
                 ignore_index=-100, temperature=1.0, beta=0.0, soft_w=1.0, hard_w=0.0, soft_mean=1.0,
                 min_denom=-math.inf, softcap=None, teacher_softcap=None, log_sum_sq=False, mean_logits=False,
                 is_top1=False):
        self.mode, self.teacher, self.kl, self.has_labels = mode, teacher, kl, has_labels
        self.hard, self.entropy, self.ignore_index, self.temperature = hard, entropy, ignore_index, temperature
        self.beta, self.soft_w, self.hard_w, self.soft_mean = beta, soft_w, hard_w, soft_mean
        self.min_denom = min_denom
        if teacher == "topk" and (softcap is not None or teacher_softcap is not None):
            raise ValueError("distribution rows: a softcap is served with teacher logits, not a top-k teacher")
        self.softcap, self.teacher_softcap = softcap, teacher_softcap  # None: no softcap
        if mode != "log_probs" and (log_sum_sq or mean_logits or is_top1):
            raise ValueError("distribution rows: the per-token statistics are log-probabilities' outputs")
        self.log_sum_sq, self.mean_logits, self.is_top1 = log_sum_sq, mean_logits, is_top1

    def key(self):
        return tuple(getattr(self, name) for name in self.__slots__)


def out_planes(problem):
    """The planes of a log-probabilities launch's per-row output, in order: "log_probs", then those asked
    for among "entropy", "log_sum_sq_probs", "mean_logits", "is_top1" (TRL's names). jsd: ("loss",)."""
    if problem.mode != "log_probs":
        return ("loss",)
    flags = (problem.entropy, problem.log_sum_sq, problem.mean_logits, problem.is_top1)
    return ("log_probs",) + tuple(name for name, on in zip(STAT_PLANES, flags) if on)


STAT_PLANES = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")  # out_planes' order after log_probs


def _plane_constexprs(problem):
    """The fwd kernel's SQ_PLANE, MEAN_PLANE, TOP1_PLANE: each statistic's plane of out (0: not asked for)."""
    planes = out_planes(problem)
    return {constexpr: planes.index(name) if name in planes else 0
            for constexpr, name in (("SQ_PLANE", "log_sum_sq_probs"), ("MEAN_PLANE", "mean_logits"),
                                    ("TOP1_PLANE", "is_top1"))}


def n_stats(mode, teacher, hard_own_lse):
    """State planes per row (STATE)."""
    count = 3 if mode == "log_probs" else 6 if teacher == "logits" else 2
    return count + (2 if hard_own_lse else 0)


def state_size(n_rows, mode, teacher, hard, temperature, save):
    """The elements of the state the backward reads (planes, then the denominator): what the launcher
    returns and what torch.compile's fake implementation allocates."""
    planes = n_stats(mode, teacher, hard and temperature != 1.0)
    return planes * (n_rows if save else 0) + 1


def _scalars(problem):
    beta = problem.beta
    log_beta = math.log(beta) if 0.0 < beta < 1.0 else 0.0
    log_1mbeta = math.log1p(-beta) if 0.0 < beta < 1.0 else 0.0
    return (problem.ignore_index, *split_float(1.0 / problem.temperature), *split_float(beta), *split_float(log_beta),
            *split_float(log_1mbeta), *split_float(problem.soft_w), *split_float(problem.hard_w),
            *split_float(problem.soft_mean), float(problem.min_denom), *_cap_scalars(problem))


def _cap_scalars(problem):
    """(cap, 1 / cap) of the student's and the teacher's softcaps as (hi, lo) pairs (1 where none)."""
    caps = [problem.softcap or 1.0, problem.teacher_softcap or 1.0]
    return tuple(part for cap in caps for value in (cap, 1.0 / cap) for part in split_float(value))


def _cap_constexprs(problem):
    return dict(S_CAP=problem.softcap is not None, T_CAP=problem.teacher_softcap is not None)


@plan_cache
def _fwd_plan(key, n_rows, n_cols, n_topk, dtype, reduction, save, denom_given, grad_student, grad_teacher,
              scale_grad):
    problem = Problem(*key)
    hard_own_lse = problem.hard and problem.temperature != 1.0
    block_r, block_v, num_warps = distribution_rows_tile(n_cols, dtype.itemsize, problem.teacher == "logits")
    constexprs = dict(
        MODE=problem.mode, TEACHER=problem.teacher, KL=problem.kl, HAS_LABELS=problem.has_labels, HARD=problem.hard,
        HARD_OWN_LSE=hard_own_lse, ENTROPY=problem.entropy, REDUCTION=reduction, DENOM_GIVEN=denom_given,
        SAVE=save, N_STATS=n_stats(problem.mode, problem.teacher, hard_own_lse),
        WRITE_GRAD=grad_student or grad_teacher, GRAD_STUDENT=grad_student, GRAD_TEACHER=grad_teacher,
        SCALE_GRAD=scale_grad, BLOCK_R=block_r, BLOCK_V=block_v, BLOCK_K=_block_k(n_topk), RBLOCK=RBLOCK,
        ACC=accumulation_dtypes(dtype)[0], **_cap_constexprs(problem), **_plane_constexprs(problem))
    n_programs = triton.cdiv(n_rows, block_r)
    saved = state_size(n_rows, problem.mode, problem.teacher, problem.hard, problem.temperature, save)
    work_size = saved + (2 * n_programs if reduction != "none" else 0)
    return (n_programs,), num_warps, constexprs, (work_size, saved), _scalars(problem)


@plan_cache
def _bwd_plan(key, n_rows, n_cols, n_topk, dtype, mean, grad_student, grad_teacher):
    problem = Problem(*key)
    hard_own_lse = problem.hard and problem.temperature != 1.0
    block_r, block_v, num_warps = distribution_rows_tile(n_cols, dtype.itemsize, problem.teacher == "logits")
    constexprs = dict(
        MODE=problem.mode, TEACHER=problem.teacher, KL=problem.kl, HAS_LABELS=problem.has_labels, HARD=problem.hard,
        HARD_OWN_LSE=hard_own_lse, ENTROPY=problem.entropy, MEAN=mean,
        N_STATS=n_stats(problem.mode, problem.teacher, hard_own_lse), GRAD_STUDENT=grad_student,
        GRAD_TEACHER=grad_teacher, BLOCK_R=block_r, BLOCK_V=block_v, BLOCK_K=_block_k(n_topk),
        ACC=accumulation_dtypes(dtype)[0], **_cap_constexprs(problem))
    return (triton.cdiv(n_rows, block_r),), num_warps, constexprs, _scalars(problem)


def _strides(tensor):
    return (0, 0) if tensor is None else (tensor.stride(0), tensor.stride(1) if tensor.dim() > 1 else 0)


def distribution_fwd(problem, student, teacher, indices, labels, reduction, out_dtype, save, *, out=None,
                     out_plane=None, denom=None, grad=None, teacher_grad=None, grad_scale=None,
                     grad_scale_strides=(0, 0)):
    """One forward launch over the rows of ``student`` (R, V): returns (out, state).

    ``teacher``: (R, V) logits, (R, K) log-probabilities (with ``indices`` (R, K)), or None; ``labels``:
    (R,) or None. ``reduction``: "none" (out: (R,), or (P, R), the ``out_planes`` of log-probabilities with
    statistics: [lp | H | ...]), "sum" or "mean" (a 0-d loss; 'mean' divides by the counted rows, or by
    ``denom`` when given); written into ``out`` when given (its planes ``out_plane`` elements apart, R by
    default). ``save``: keep the state the backward reads. ``grad``
    (``teacher_grad``): (R, V) buffers that receive the gradient for grad_output 1 (or the rows'
    ``grad_scale``, addressed by ``grad_scale_strides`` = (row stride, plane stride): log-probabilities'
    [g_lp | g_H]), over ``denom`` when given.
    """
    n_rows, n_cols = student.shape
    n_topk = indices.shape[1] if indices is not None else 0
    if out is None:
        n_planes = len(out_planes(problem))
        shape = () if reduction != "none" else ((n_planes, n_rows) if n_planes > 1 else (n_rows,))
        out = new_tensor(student, shape, out_dtype)
    acc = accumulation_dtypes(student.dtype)[1]
    if n_rows == 0:
        if reduction != "none":
            out.fill_(float("nan") if reduction == "mean" and problem.min_denom < 1 else 0.0)  # 0 / max(0, floor)
        return out, student.new_zeros(state_size(0, problem.mode, problem.teacher, problem.hard,
                                                 problem.temperature, save), dtype=acc)
    grid, num_warps, constexprs, (work_size, saved), scalars = _fwd_plan(
        problem.key(), n_rows, n_cols, n_topk, student.dtype, reduction, save, denom is not None, grad is not None,
        teacher_grad is not None, grad_scale is not None)
    work = new_tensor(student, work_size, acc)
    t_strides = _strides(teacher)
    launch(_distribution_fwd_kernel, grid, (
        student, teacher if teacher is not None else student, indices if indices is not None else student,
        labels if labels is not None else student, out, work, grad if grad is not None else student,
        teacher_grad if teacher_grad is not None else student, denom if denom is not None else work,
        reduction_counter(student) if reduction != "none" else work,
        grad_scale if grad_scale is not None else work,
        *student.stride(), *t_strides, *_strides(indices), labels.stride(0) if labels is not None else 0,
        *_strides(grad), *_strides(teacher_grad), *grad_scale_strides,
        n_rows, n_cols, n_topk, n_rows if save else 0, n_rows if out_plane is None else out_plane, *scalars,
    ), constexprs, num_warps, student.device)
    return out, (work if work_size == saved else work[:saved])


def distribution_bwd(problem, student, teacher, indices, labels, state, grad_output, grad_output_strides, mean,
                     grad=None, teacher_grad=None, shard=None, n_state=None):
    """Write the gradients of the student's (``grad``) and the teacher's (``teacher_grad``) logits for
    ``grad_output``, addressed by ``grad_output_strides`` = (row stride, plane stride) ((0, 0): one
    element; log-probabilities: the entropy's plane). ``mean``: divide by the denominator in the state.
    ``shard`` = (first class, classes in all): the logits hold that block of the classes (vocabulary
    parallel; the state the whole rows'); ``n_state``: the state's plane size (default the rows: a chunk
    of a longer state passes the state from its first row and the whole's plane size)."""
    n_rows, n_cols = student.shape
    if n_rows == 0 or n_cols == 0:
        return
    if mean and n_state not in (None, n_rows):
        raise ValueError("distribution_bwd: 'mean' reads the denominator at the end of a whole state; a chunk's "
                         "view of a longer one takes grad_output over the denominator instead")
    col_offset, n_classes = shard if shard is not None else (0, n_cols)
    n_topk = indices.shape[1] if indices is not None else 0
    grid, num_warps, constexprs, scalars = _bwd_plan(problem.key(), n_rows, n_cols, n_topk, student.dtype, mean,
                                                     grad is not None, teacher_grad is not None)
    launch(_distribution_bwd_kernel, grid, (
        student, teacher if teacher is not None else student, indices if indices is not None else student,
        labels if labels is not None else student, state, grad_output, grad if grad is not None else student,
        teacher_grad if teacher_grad is not None else student,
        *student.stride(), *_strides(teacher), *_strides(indices), labels.stride(0) if labels is not None else 0,
        *grad_output_strides, *_strides(grad), *_strides(teacher_grad),
        n_rows, n_cols, n_topk, n_rows if n_state is None else n_state, col_offset, n_classes, *scalars,
    ), constexprs, num_warps, student.device)


# vocabulary parallel: the two launches of the forward around the collectives (fusedloss/ops/distribution_rows.py)


def kernel_float(value, acc):
    """``value`` as the kernels hold it when they accumulate in ``acc`` (a torch dtype): ``join_float`` of
    ``split_float``, the fp32 halves summed in float64, or in float32 (then it is float32's ``value``), as a
    Python float. The torch ops that finish a vocabulary-parallel row multiply by exactly this, so that
    z_token = x_token * (1 / T) is bit for bit the product the sweep compared (is_top1's z_token >= max z)."""
    hi, lo = split_float(value)
    return hi + lo if acc.itemsize == 8 else _round_to_float32(hi + lo)  # hi + lo: exact in a Python float

# the stats launch's planes, in order (q_s, z_s, b_s: log-probabilities' Q, Z and B of sweep (1))
SHARD_STATS = ("m_s", "d_s", "e_s", "m_t", "d_t", "m_1", "d_1", "x_y", "q_s", "z_s", "b_s")


@plan_cache
def _shard_stats_plan(key, n_rows, n_cols, dtype):
    problem = Problem(*key)
    block_r, block_v, num_warps = distribution_rows_tile(n_cols, dtype.itemsize, problem.teacher == "logits")
    constexprs = dict(
        HAS_LABELS=problem.has_labels, GATHER_Y=problem.hard or problem.mode == "log_probs", ENTROPY=problem.entropy,
        SQ_SUM=problem.log_sum_sq, Z_SUM=problem.mean_logits, TOP1=problem.is_top1,
        HARD_OWN_LSE=problem.hard and problem.temperature != 1.0, TEACHER_LOGITS=problem.teacher == "logits",
        BLOCK_R=block_r, BLOCK_V=block_v, ACC=accumulation_dtypes(dtype)[0], **_cap_constexprs(problem))
    return (triton.cdiv(n_rows, block_r),), num_warps, constexprs


def distribution_shard_stats(problem, student, teacher, labels, col_offset, stats):
    """Write this shard's row statistics (the SHARD_STATS planes) into ``stats`` (len(SHARD_STATS), R) (a
    view whose planes may lie further apart than R: a chunk of a longer buffer). ``student`` (R, V_r)
    holds classes [col_offset, col_offset + V_r); ``teacher``: its logits' same block, or None."""
    n_rows, n_cols = student.shape
    if n_rows == 0:
        return stats
    assert stats.stride(1) == 1, "the stats planes are addressed as contiguous rows"
    grid, num_warps, constexprs = _shard_stats_plan(problem.key(), n_rows, n_cols, student.dtype)
    launch(_distribution_shard_stats_kernel, grid, (
        student, teacher if teacher is not None else student, labels if labels is not None else student, stats,
        *student.stride(), *_strides(teacher), labels.stride(0) if labels is not None else 0, stats.stride(0),
        n_rows, n_cols, col_offset, problem.ignore_index, *split_float(1.0 / problem.temperature),
        *_cap_scalars(problem),
    ), constexprs, num_warps, student.device)
    return stats


@plan_cache
def _shard_terms_plan(key, n_rows, n_cols, dtype):
    problem = Problem(*key)
    block_r, block_v, num_warps = distribution_rows_tile(n_cols, dtype.itemsize, problem.teacher == "logits")
    if problem.teacher == "topk":  # K gathers per row, no sweep: many rows per program, few warps
        block_r, block_v, num_warps = (4 if interpreting() else 128), 16, 4
    constexprs = dict(TEACHER=problem.teacher, KL=problem.kl, BLOCK_R=block_r, BLOCK_V=block_v,
                      ACC=accumulation_dtypes(dtype)[0], **_cap_constexprs(problem))
    scalars = _scalars(problem)
    return (triton.cdiv(n_rows, block_r),), num_warps, constexprs, (*scalars[1:3], *scalars[5:9],
                                                                     *_cap_scalars(problem))


def distribution_shard_terms(problem, student, teacher, indices, state, n_state, shard, terms):
    """Write this shard's share of the divergence's sums, planes [K | K'] ([0 | top-k sum] for a top-k
    teacher), into ``terms`` (2, R) from the whole rows' log-sum-exps in ``state`` (planes ``n_state``
    apart). ``shard`` = (first class, classes in all)."""
    n_rows, n_cols = student.shape
    if n_rows == 0:
        return terms
    assert terms.stride(1) == 1 and state.stride(0) == 1, "planes are addressed as contiguous rows"
    n_topk = indices.shape[1] if indices is not None else 0
    grid, num_warps, constexprs, scalars = _shard_terms_plan(problem.key(), n_rows, n_cols, student.dtype)
    launch(_distribution_shard_terms_kernel, grid, (
        student, teacher, indices if indices is not None else student, state, terms,
        *student.stride(), *_strides(teacher), *_strides(indices), terms.stride(0),
        n_rows, n_cols, n_topk, n_state, shard[0], shard[1], *scalars,
    ), constexprs, num_warps, student.device)
    return terms
