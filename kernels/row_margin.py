"""Row-margin family: losses whose value for a row needs the whole row (class scores, or embeddings).

LAYOUT. Every operand is addressed as (N, D, S) through strides: D is the row's dimension (classes, or
embedding features), a *row* is one (n, s) pair, r = n * S + s. (C) and (N, C) inputs have S = 1; a
cosine_similarity over a middle dimension has S > 1. Broadcast operands have stride 0. Gradients are
new contiguous tensors of the (broadcast) shape: element (n, d, s) at n*D*S + d*S + s. Per-row
targets are (N, S) through strides (stride 0 along D), class lists (N, D, S).

Math per row (D = C classes or features, s the reduction's scale for grad_output 1: 1/rows for 'mean',
else 1; every gradient below is written times s; step numbers as in the kernels):

  multi_margin (p in {1, 2}, margin m, class weight w, target y):
    (1) x_y, w_y gathered (an out-of-range y reads class 0 and makes the row NaN)
    (2) z_c = m - x_y + x_c for c != y;  loss = w_y / C * sum_{c != y, z_c > 0} z_c^p
        d/dx_c = w_y / C * (1 or 2 z_c) [z_c > 0] for c != y;  d/dx_y = -sum_{c != y} d/dx_c
  multilabel_margin (targets t_1..t_k: the row's list up to its first negative entry; S = set(t)):
    (1) scan the whole target row: k, and whether an entry is outside [-1, C) (torch rejects the
        tensor then: the row is NaN)
    (2) per target t_j: z_ji = 1 - x_{t_j} + x_i for i not in S;  loss = 1/C sum_j sum_i max(0, z_ji)
        d/dx_i = 1/C #{j: z_ji > 0} (i not in S);  d/dx_t = -mult(t)/C #{i not in S: z_ti > 0} (t in S,
        mult(t) its occurrences in the list: duplicates count twice, as in torch)
  multilabel_soft_margin (target y, weight w broadcast to the input):
    (1) l_c = w_c ((1 - y_c) softplus(x_c) + y_c softplus(-x_c));  loss = 1/C sum_c l_c
        d/dx_c = w_c/C ((1 - y_c) sigmoid(x_c) - y_c sigmoid(-x_c));  d/dy_c = w_c/C (softplus(-x_c) - softplus(x_c))
  cosine_embedding (x1 = a, x2 = b, target y per row, eps = 1e-12f as torch: the float32 value):
    (1) sums s = <a, b>, m1 = |a|^2 + eps, m2 = |b|^2 + eps;  cos = s / sqrt(m1 m2)
    (2) loss = [y == 1] (1 - cos) + [y == -1] max(0, cos - margin);  G = dloss/dcos (clamp: >= 0 passes)
    (3) d/da = G / sqrt(m1 m2) (b - (s / m1) a);  d/db = G / sqrt(m1 m2) (a - (s / m2) b)
  cosine_similarity (dim, eps; torch's normalise-first form with its no-grad clamp):
    (1) s = <a, b>, n1 = |a|, n2 = |b|;  c_i = max(n_i, eps);  u = a / c1, v = b / c2;  out = <u, v> = s / c1 / c2
    (3) d/da = (v - out u q1) / c1 with q1 = c1 / n1 (0 where n1 = 0);  d/db likewise. With one feature
        (D = 1) u, v and out are +-1 exactly, so the gradient is exactly 0, as torch's
  The cosine losses compute in float-float (kernels/_math.py: every value a pair hi + lo, ~48 bits from
  float32, each product exact by FMA): their gradient subtracts two nearly equal terms (b / |a||b| -
  cos a / |a|^2), which float32 leaves with an error of a few ulp of the terms, up to 4x torch's; float-float
  holds it below torch's, and every result is rounded once. Float64 did the same at 1/64 of the float32
  rate on most consumer GPUs; float-float costs ~60 float32 instructions per element pair, under the
  memory bound on every GPU (bench/NOTES.md). Roots and quotients start from the correctly rounded ones
  (``sqrt_rn``, ``div_rn``), so exact cases stay exact (parallel vectors: a cosine of exactly +-1).
  pairwise_distance (p > 0, eps):  out = |a - b + eps|_p;  d/da = grad_p(a - b + eps) = -d/db
  triplet (anchor a, positive b, negative c, margin, p, eps, swap):
    (1) d_ap = |a - b + eps|_p, d_an = |a - c + eps|_p, with swap d_pn = |b - c + eps|_p and
        d_neg = min(d_an, d_pn) (a tie splits the gradient in halves, as torch.minimum), else d_an
    (2) loss = max(0, margin + d_ap - d_neg);  G = [margin + d_ap - d_neg >= 0]
    (3) gradients through grad_p of each distance: d/da = G (g_ap - w_an g_an), d/db = G (-g_ap - w_pn g_pn),
        d/dc = G (w_an g_an + w_pn g_pn)
    grad_p(u) with r = |u|_p:  p = 1: sign(u);  p = 2: u / r (0 where r = 0);
      else sign(u) |u|^(p-1) r^(1-p) (0 where u = 0, and where r = 0): torch's norm_backward
  rank_hinge (a row = a group: score 0 the positive, 1..k the negatives, k = num_neg):
    u = margin - (x_0 - mean(x_1..x_k));  loss = max(0, u);  d/dx_0 = -[u >= 0], d/dx_j = [u >= 0] / k
  rank_cross_entropy (labels y of the group, eps = float64's machine epsilon, as the reference):
    p = softmax(x);  loss = -sum_j y_j log(p_j + eps);  with q_j = y_j p_j / (p_j + eps):
    d/dx_j = p_j sum(q) - q_j

(4) the loss per row, or reduced over the grid in the same launch (kernels/_reduce.py: partial sums in
program order, the last program divides by the reduction's divisor).

GRADIENT IN THE FORWARD. Every gradient above depends on the row only, so the forward writes it for
grad_output 1 while it holds the row; the backward (softmax rows' rescale kernel) multiplies by
grad_output only the rows whose grad_output is not 1 (a device-side check: no host sync, no traffic when it is 1).

Memory traffic per row (B bytes per element of each operand, D elements; a few bytes per row for
targets, the loss, the partial sums):
  forward   reads every operand's row once (rows of up to BLOCK_D elements stay in registers between the
            statistics and the gradient; longer embedding rows are swept twice, the second time from L2)
            and, when gradients are needed, writes each gradient row once. multilabel_margin reads its
            int64 target row (8 D bytes) once in full (torch rejects an out-of-range entry anywhere in it)
            and its prefix again from L1/L2; with more than BLOCK_T targets a row also re-reads its scores
            (from L1/L2) once per further block of targets; its gradient row is written once.
  backward  grad_output 1 (scalar, or a row's entry): nothing but grad_output's element; otherwise reads
            and writes each gradient row once more.
  forward+backward over the minimal (read each input once, write each gradient once): 1.0x at
  grad_output 1; (I + 3G) / (I + G) for another grad_output (I input bytes, G gradient bytes).
"""
import triton
import triton.language as tl

from ._config import RBLOCK, plan_cache, row_margin_tile, split_float
from ._launch import accumulation_dtypes, launch, new_tensor, reduction_counter
from ._math import (div_by_count, div_rn, ff_add, ff_div, ff_mul, ff_mul_float, ff_row_sum, ff_sqrt, join_float,
                    pow_runtime, sqrt_rn, two_prod)
from ._reduce import finish_grid_sum
from .pointwise import _bce_with_logits
from .softmax_rows import softmax_rows_rescale

# The losses, by name: the LOSS constexpr is one of these strings.
LOSSES = ("multi_margin", "multilabel_margin", "multilabel_soft_margin", "cosine_embedding", "cosine_similarity",
          "pairwise_distance", "triplet", "rank_hinge", "rank_cross_entropy")
# the norm of the distance losses, by p: P_KIND "l1" (p = 1), "l2" (p = 2), "lp" (any other p > 0)
NORM_KINDS = ("l1", "l2", "lp")


# ----------------------------------------------------------------------------------------------------
# small math of the losses (ACC dtype)
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _sign(u):
    """torch's sign: 0 at 0, NaN for NaN."""
    return tl.where(u > 0, 1.0, tl.where(u < 0, -1.0, u * 0.0))


@triton.jit
def _norm_term(u, p, P_KIND: tl.constexpr):
    """The summand of |u|_p: |u|, u^2 or |u|^p."""
    if P_KIND == "l1":
        return tl.abs(u)
    elif P_KIND == "l2":
        return u * u
    else:
        return pow_runtime(tl.abs(u), p)


@triton.jit
def _norm_of(total, p, P_KIND: tl.constexpr):
    """|u|_p from the sum of its terms."""
    if P_KIND == "l1":
        return total
    elif P_KIND == "l2":
        return sqrt_rn(total)  # correctly rounded, as torch's norm (a row's, once: free)
    else:
        # 1 / p correctly rounded: exactly 2 for p = 0.5, pow_runtime's exact square; the GPU's div.full.f32 (2 ulp)
        # sent it through exp(2.0000002 log(total)) instead, 13 ulp off (measured under gpu_arithmetic)
        return pow_runtime(total, div_rn(tl.full([], 1.0, p.dtype), p))


@triton.jit
def _norm_scale(r, p, P_KIND: tl.constexpr):
    """The per-row factor of grad_p (see _norm_grad): r itself (l2), r^(1-p) (lp); 0 where r = 0."""
    if P_KIND == "l1":
        return r * 0.0  # unused: sign(u) needs no norm
    elif P_KIND == "l2":
        return r
    else:
        return tl.where(r == 0, 0.0, pow_runtime(r, 1.0 - p))


@triton.jit
def _norm_grad(u, r_scale, p, P_KIND: tl.constexpr):
    """d|u|_p / du (torch's norm_backward): sign(u) (l1), u / r (l2), sign(u) |u|^(p-1) r^(1-p) (lp; 0 at
    u = 0). ``r_scale``: _norm_scale of the row, broadcast along the row."""
    if P_KIND == "l1":
        return _sign(u)
    elif P_KIND == "l2":
        # u / r correctly rounded, not u * (1 / r): the GPU's 1 / r (div.full.f32, 2 ulp) made D = 1's +-1 terms
        # unequal, so triplet's exact cancellations (swap) gave 2e-7 where torch gives 0
        return tl.where(r_scale == 0, 0.0, div_rn(u, r_scale))
    else:
        return tl.where(u == 0, 0.0, _sign(u) * pow_runtime(tl.abs(u), p - 1.0)) * r_scale


@triton.jit
def _nan_unless(ok, value):
    return tl.where(ok, value, float("nan"))


# ----------------------------------------------------------------------------------------------------
# class rows: one pass over the row's classes writes the loss's terms and the gradient
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _multi_margin(a_ptr, t_ptr, w_ptr, ga_ptr, a_row, t_row, g_row, row_mask, sa_d, sw_d, g_col, n_cols, margin,
                  scale, P: tl.constexpr, HAS_WEIGHT: tl.constexpr, GRAD: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """multi_margin_loss of BLOCK_R rows (see the module docstring); returns the rows' losses."""
    # (1) the target class, its score and weight (clamped gathers: a target outside [0, C) reads class 0)
    y = tl.load(t_ptr + t_row, mask=row_mask, other=0)
    valid = (y >= 0) & (y < n_cols)
    y = tl.where(valid, y, 0)
    x_y = tl.load(a_ptr + a_row + y * sa_d, mask=row_mask, other=0.0).to(ACC)
    if HAS_WEIGHT:
        w_y = tl.load(w_ptr + y * sw_d, mask=row_mask, other=0.0).to(ACC)
    else:
        w_y = tl.full([BLOCK_R], 1.0, ACC)
    coef = div_by_count(w_y, n_cols)
    g_coef = _nan_unless(valid, coef * scale)
    # (2) every class c != y: the hinge term and its gradient; the target's gradient is their negated sum
    total = tl.zeros([BLOCK_R], ACC)
    g_y = tl.zeros([BLOCK_R], ACC)
    for c0 in range(0, n_cols, BLOCK_D):
        cols = (c0 + tl.arange(0, BLOCK_D)).to(tl.int64)
        mask = row_mask[:, None] & (cols < n_cols)[None, :]
        x = tl.load(a_ptr + a_row[:, None] + cols[None, :] * sa_d, mask=mask, other=0.0).to(ACC)
        z = margin - x_y[:, None] + x
        other = mask & (cols[None, :] != y[:, None])
        active = other & (z > 0)
        if P == 1:
            total += tl.sum(tl.where(active, z, 0.0), axis=1)
            d = tl.where(active, 1.0, 0.0) * g_coef[:, None]
        else:
            total += tl.sum(tl.where(active, z * z, 0.0), axis=1)
            d = tl.where(active, 2.0 * z, 0.0) * g_coef[:, None]
        if GRAD:
            g_y += tl.sum(tl.where(other, d, 0.0), axis=1)
            tl.store(ga_ptr + g_row[:, None] + cols[None, :] * g_col, d.to(ga_ptr.dtype.element_ty), mask=other)
    if GRAD:
        tl.store(ga_ptr + g_row + y * g_col, (-g_y).to(ga_ptr.dtype.element_ty), mask=row_mask)
    return _nan_unless(valid, total * coef)


@triton.jit
def _is_target(t_ptr, t_row, st_d, cols, n_targets, BLOCK_T: tl.constexpr):
    """[BLOCK_D] whether each class in ``cols`` is one of the row's first ``n_targets`` targets."""
    hit = cols < 0
    for j0 in range(0, n_targets, BLOCK_T):
        j = (j0 + tl.arange(0, BLOCK_T)).to(tl.int64)
        jm = j < n_targets
        t = tl.load(t_ptr + t_row + j * st_d, mask=jm, other=-1)
        hit = hit | (tl.max((t[:, None] == cols[None, :]).to(tl.int32), axis=0) > 0)
    return hit


@triton.jit
def _multiplicity(t_ptr, t_row, st_d, tj, n_targets, BLOCK_T: tl.constexpr, ACC: tl.constexpr):
    """[BLOCK_T] how often each target in ``tj`` occurs among the row's first ``n_targets``."""
    mult = tl.zeros([BLOCK_T], ACC)
    for j0 in range(0, n_targets, BLOCK_T):
        j = (j0 + tl.arange(0, BLOCK_T)).to(tl.int64)
        jm = j < n_targets
        t = tl.load(t_ptr + t_row + j * st_d, mask=jm, other=-1)
        mult += tl.sum(((tj[:, None] == t[None, :]) & jm[None, :]).to(ACC), axis=1)
    return mult


@triton.jit
def _class_block(a_ptr, t_ptr, a_row, t_row, sa_d, st_d, n_cols, n_targets, c0, BLOCK_D: tl.constexpr,
                 BLOCK_T: tl.constexpr, ACC: tl.constexpr):
    """Classes c0 .. c0 + BLOCK_D of the row: (their offsets, which are classes that are not among the
    row's ``n_targets`` targets, their scores)."""
    cols = (c0 + tl.arange(0, BLOCK_D)).to(tl.int64)
    others = (cols < n_cols) & ~_is_target(t_ptr, t_row, st_d, cols, n_targets, BLOCK_T)
    x = tl.load(a_ptr + a_row + cols * sa_d, mask=cols < n_cols, other=0.0).to(ACC)
    return cols, others, x


@triton.jit
def _target_block(a_ptr, t_ptr, a_row, t_row, sa_d, st_d, n_cols, n_targets, j0, BLOCK_T: tl.constexpr,
                  ACC: tl.constexpr):
    """Targets j0 .. j0 + BLOCK_T of the row's list: (their classes, clamped into [0, C) for the gathers;
    which are in the list; their scores)."""
    j = (j0 + tl.arange(0, BLOCK_T)).to(tl.int64)
    jm = j < n_targets
    tj = tl.load(t_ptr + t_row + j * st_d, mask=jm, other=0)
    tj = tl.where((tj >= 0) & (tj < n_cols), tj, 0)
    x_t = tl.load(a_ptr + a_row + tj * sa_d, mask=jm, other=0.0).to(ACC)
    return tj, jm, x_t


@triton.jit
def _multilabel_margin(a_ptr, t_ptr, ga_ptr, a_row, t_row, g_row, sa_d, st_d, g_col, n_cols, scale,
                       GRAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, ACC: tl.constexpr):
    """multilabel_margin_loss of one row (scalar offsets); returns its loss. Every gradient element is a
    count of active hinge terms times 1/C, counted in float32 registers and stored once (never a 16-bit
    buffer read back and added to)."""
    # (1) the whole target row: k = the position of its first negative entry, bad = an entry outside [-1, C)
    k = tl.zeros((), tl.int64) + n_cols
    bad = tl.zeros((), tl.int32)
    for c0 in range(0, n_cols, BLOCK_D):
        cols = (c0 + tl.arange(0, BLOCK_D)).to(tl.int64)
        m = cols < n_cols
        t = tl.load(t_ptr + t_row + cols * st_d, mask=m, other=0)
        k = tl.minimum(k, tl.min(tl.where(m & (t < 0), cols, n_cols), axis=0))
        bad = tl.maximum(bad, tl.max(tl.where(m & ((t < -1) | (t >= n_cols)), 1, 0), axis=0))
    ok = bad == 0
    g_scale = _nan_unless(ok, div_by_count(scale, n_cols))
    # (2) class blocks, each against every block of targets: the loss, and a non-target class's gradient
    #     (its active targets, counted over the whole list) stored once per class block; the first
    #     BLOCK_T targets' counts (their active classes) add up over the class blocks in registers.
    #     With k = 0 this writes the zero gradient.
    total = tl.zeros((), ACC)
    tj_first, jm_first, _ = _target_block(a_ptr, t_ptr, a_row, t_row, sa_d, st_d, n_cols, k, 0, BLOCK_T, ACC)
    count_first = tl.zeros([BLOCK_T], ACC)
    for c0 in range(0, n_cols, BLOCK_D):
        cols, others, x = _class_block(a_ptr, t_ptr, a_row, t_row, sa_d, st_d, n_cols, k, c0, BLOCK_D, BLOCK_T, ACC)
        class_count = tl.zeros([BLOCK_D], ACC)
        for j0 in range(0, k, BLOCK_T):
            tj, jm, x_t = _target_block(a_ptr, t_ptr, a_row, t_row, sa_d, st_d, n_cols, k, j0, BLOCK_T, ACC)
            z = 1.0 - x_t[:, None] + x[None, :]  # the hinge terms of [targets x classes]
            active = (z > 0) & jm[:, None] & others[None, :]
            total += tl.sum(tl.sum(tl.where(active, z, 0.0), axis=1), axis=0)
            hits = active.to(ACC)
            class_count += tl.sum(hits, axis=0)
            if j0 == 0:
                count_first += tl.sum(hits, axis=1)
        if GRAD:
            tl.store(ga_ptr + g_row + cols * g_col, (class_count * g_scale).to(ga_ptr.dtype.element_ty), mask=others)
    # (3) a target's gradient: -(its multiplicity) x (its active classes) / C; the first block's counts are
    #     complete, each further block of targets (k > BLOCK_T) counts its own over the classes again.
    if GRAD:
        mult = _multiplicity(t_ptr, t_row, st_d, tj_first, k, BLOCK_T, ACC)
        tl.store(ga_ptr + g_row + tj_first * g_col, (-(mult * count_first) * g_scale).to(ga_ptr.dtype.element_ty),
                 mask=jm_first)
        for j0 in range(BLOCK_T, k, BLOCK_T):
            tj, jm, x_t = _target_block(a_ptr, t_ptr, a_row, t_row, sa_d, st_d, n_cols, k, j0, BLOCK_T, ACC)
            count = tl.zeros([BLOCK_T], ACC)
            for c0 in range(0, n_cols, BLOCK_D):
                cols, others, x = _class_block(a_ptr, t_ptr, a_row, t_row, sa_d, st_d, n_cols, k, c0, BLOCK_D,
                                               BLOCK_T, ACC)
                active = ((1.0 - x_t[:, None] + x[None, :]) > 0) & jm[:, None] & others[None, :]
                count += tl.sum(active.to(ACC), axis=1)
            mult = _multiplicity(t_ptr, t_row, st_d, tj, k, BLOCK_T, ACC)
            tl.store(ga_ptr + g_row + tj * g_col, (-(mult * count) * g_scale).to(ga_ptr.dtype.element_ty), mask=jm)
    return _nan_unless(ok, div_by_count(total, n_cols))


@triton.jit
def _multilabel_soft_margin(a_ptr, b_ptr, c_ptr, ga_ptr, gb_ptr, a_row, b_row, c_row, g_row, row_mask, sa_d, sb_d,
                            sc_d, g_col, n_cols, scale, HAS_WEIGHT: tl.constexpr, GRAD_A: tl.constexpr,
                            GRAD_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """multilabel_soft_margin_loss of BLOCK_R rows: the BCE-with-logits terms (kernels/pointwise.py),
    weighted, averaged over the row."""
    g_scale = div_by_count(scale, n_cols)
    total = tl.zeros([BLOCK_R], ACC)
    for c0 in range(0, n_cols, BLOCK_D):
        cols = (c0 + tl.arange(0, BLOCK_D)).to(tl.int64)
        mask = row_mask[:, None] & (cols < n_cols)[None, :]
        x = tl.load(a_ptr + a_row[:, None] + cols[None, :] * sa_d, mask=mask, other=0.0).to(ACC)
        y = tl.load(b_ptr + b_row[:, None] + cols[None, :] * sb_d, mask=mask, other=0.0).to(ACC)
        # (1) the terms and both derivatives
        loss, dx, dy = _bce_with_logits(x, y, 1.0)
        if HAS_WEIGHT:
            w = tl.load(c_ptr + c_row[:, None] + cols[None, :] * sc_d, mask=mask, other=0.0).to(ACC)
            loss = loss * w
            dx = dx * w
            dy = dy * w
        total += tl.sum(tl.where(mask, loss, 0.0), axis=1)
        g_ptrs = g_row[:, None] + cols[None, :] * g_col
        if GRAD_A:
            tl.store(ga_ptr + g_ptrs, (dx * g_scale).to(ga_ptr.dtype.element_ty), mask=mask)
        if GRAD_B:
            tl.store(gb_ptr + g_ptrs, (dy * g_scale).to(gb_ptr.dtype.element_ty), mask=mask)
    return div_by_count(total, n_cols)


# ----------------------------------------------------------------------------------------------------
# embedding rows: (1) row statistics, (2) the loss and per-row coefficients, (3) the gradients
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _load_tile(a_ptr, b_ptr, c_ptr, a_row, b_row, c_row, row_mask, sa_d, sb_d, sc_d, c0, n_cols, HAS_C: tl.constexpr,
               BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    cols = (c0 + tl.arange(0, BLOCK_D)).to(tl.int64)
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    a = tl.load(a_ptr + a_row[:, None] + cols[None, :] * sa_d, mask=mask, other=0.0).to(ACC)
    b = tl.load(b_ptr + b_row[:, None] + cols[None, :] * sb_d, mask=mask, other=0.0).to(ACC)
    if HAS_C:
        c = tl.load(c_ptr + c_row[:, None] + cols[None, :] * sc_d, mask=mask, other=0.0).to(ACC)
    else:
        c = a
    return a, b, c, cols, mask


@triton.jit
def _row_sums(a, b, c, mask, eps, p, LOSS: tl.constexpr, P_KIND: tl.constexpr, SWAP: tl.constexpr):
    """(1) the norm terms of a tile's a - b + eps, a - c + eps and b - c + eps, summed per row (the second
    for triplet, the third with swap only)."""
    t0 = _norm_term(a - b + eps, p, P_KIND)
    if LOSS == "triplet":
        t1 = _norm_term(a - c + eps, p, P_KIND)
    else:
        t1 = t0
    if SWAP:
        t2 = _norm_term(b - c + eps, p, P_KIND)
    else:
        t2 = t0
    return (tl.sum(tl.where(mask, t0, 0.0), axis=1), tl.sum(tl.where(mask, t1, 0.0), axis=1),
            tl.sum(tl.where(mask, t2, 0.0), axis=1))


@triton.jit
def _row_finish(s0, s1, s2, margin, p, scale, LOSS: tl.constexpr, P_KIND: tl.constexpr, SWAP: tl.constexpr):
    """(2) the row's loss and the coefficients k0..k5 of its gradients (scaled for grad_output 1): k0, k1, k2
    multiply the gradients of |a - b + eps|, |a - c + eps|, |b - c + eps| (by _norm_grad), whose
    _norm_scale are k3, k4, k5."""
    if LOSS == "pairwise_distance":
        r = _norm_of(s0, p, P_KIND)
        zero = s0 * 0.0
        return r, zero + scale, zero, zero, _norm_scale(r, p, P_KIND), zero, zero
    else:
        tl.static_assert(LOSS == "triplet", "unknown LOSS")
        d_pos = _norm_of(s0, p, P_KIND)
        d_an = _norm_of(s1, p, P_KIND)
        if SWAP:
            d_pn = _norm_of(s2, p, P_KIND)
            # torch.minimum: NaN if either is NaN; a tie splits its gradient in halves
            d_neg = tl.where((d_an != d_an) | (d_pn != d_pn), float("nan"), tl.where(d_pn < d_an, d_pn, d_an))
            tie = d_an == d_pn
            w_an = tl.where(tie, 0.5, tl.where(d_an > d_pn, 0.0, 1.0))
            w_pn = tl.where(tie, 0.5, tl.where(d_an < d_pn, 0.0, 1.0))
        else:
            d_pn = d_an
            d_neg = d_an
            w_an = d_an * 0.0 + 1.0
            w_pn = d_an * 0.0
        u = margin + d_pos - d_neg
        g = tl.where(u >= 0, scale, 0.0)  # torch's clamp_min passes the gradient at 0
        return (tl.where(u < 0, 0.0, u), g, g * w_an, g * w_pn, _norm_scale(d_pos, p, P_KIND),
                _norm_scale(d_an, p, P_KIND), _norm_scale(d_pn, p, P_KIND))


@triton.jit
def _row_gradients(a, b, c, k0, k1, k2, k3, k4, k5, eps, p, LOSS: tl.constexpr, P_KIND: tl.constexpr,
                   SWAP: tl.constexpr):
    """(3) d/da, d/db, d/dc of a tile from the row coefficients of _row_finish."""
    if LOSS == "pairwise_distance":
        g_ab = k0[:, None] * _norm_grad(a - b + eps, k3[:, None], p, P_KIND)
        return g_ab, -g_ab, a
    else:
        g_ab = k0[:, None] * _norm_grad(a - b + eps, k3[:, None], p, P_KIND)
        g_ac = k1[:, None] * _norm_grad(a - c + eps, k4[:, None], p, P_KIND)
        if SWAP:
            g_bc = k2[:, None] * _norm_grad(b - c + eps, k5[:, None], p, P_KIND)
            return g_ab - g_ac, -g_ab - g_bc, g_ac + g_bc
        else:
            return g_ab - g_ac, -g_ab, g_ac


@triton.jit
def _store_gradients(ga_ptr, gb_ptr, gc_ptr, g_row, cols, mask, g_col, da, db, dc, GRAD_A: tl.constexpr,
                     GRAD_B: tl.constexpr, GRAD_C: tl.constexpr):
    g_ptrs = g_row[:, None] + cols[None, :] * g_col
    if GRAD_A:
        tl.store(ga_ptr + g_ptrs, da.to(ga_ptr.dtype.element_ty), mask=mask)
    if GRAD_B:
        tl.store(gb_ptr + g_ptrs, db.to(gb_ptr.dtype.element_ty), mask=mask)
    if GRAD_C:
        tl.store(gc_ptr + g_ptrs, dc.to(gc_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _distance(a_ptr, b_ptr, c_ptr, ga_ptr, gb_ptr, gc_ptr, a_row, b_row, c_row, g_row, row_mask, sa_d, sb_d, sc_d,
              g_col, n_cols, margin, eps, p, scale, LOSS: tl.constexpr, P_KIND: tl.constexpr, SWAP: tl.constexpr,
              GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, GRAD_C: tl.constexpr, ONE_BLOCK: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """pairwise_distance / triplet of BLOCK_R rows: (1) statistics, (2) loss and coefficients, (3) gradients.
    ONE_BLOCK: the row fits one tile, read once and kept in registers for (3)."""
    HAS_C: tl.constexpr = LOSS == "triplet"
    GRAD: tl.constexpr = GRAD_A or GRAD_B or GRAD_C
    # (1) statistics
    if ONE_BLOCK:
        a, b, c, cols, mask = _load_tile(a_ptr, b_ptr, c_ptr, a_row, b_row, c_row, row_mask, sa_d, sb_d, sc_d, 0,
                                         n_cols, HAS_C, BLOCK_D, ACC)
        s0, s1, s2 = _row_sums(a, b, c, mask, eps, p, LOSS, P_KIND, SWAP)
    else:
        s0 = tl.zeros([BLOCK_R], ACC)
        s1 = tl.zeros([BLOCK_R], ACC)
        s2 = tl.zeros([BLOCK_R], ACC)
        for c0 in range(0, n_cols, BLOCK_D):
            a, b, c, cols, mask = _load_tile(a_ptr, b_ptr, c_ptr, a_row, b_row, c_row, row_mask, sa_d, sb_d, sc_d,
                                             c0, n_cols, HAS_C, BLOCK_D, ACC)
            t0, t1, t2 = _row_sums(a, b, c, mask, eps, p, LOSS, P_KIND, SWAP)
            s0 += t0
            s1 += t1
            s2 += t2
    # (2) the loss and the gradients' row coefficients
    loss, k0, k1, k2, k3, k4, k5 = _row_finish(s0, s1, s2, margin, p, scale, LOSS, P_KIND, SWAP)
    # (3) gradients
    if GRAD:
        if ONE_BLOCK:
            da, db, dc = _row_gradients(a, b, c, k0, k1, k2, k3, k4, k5, eps, p, LOSS, P_KIND, SWAP)
            _store_gradients(ga_ptr, gb_ptr, gc_ptr, g_row, cols, mask, g_col, da, db, dc, GRAD_A, GRAD_B, GRAD_C)
        else:
            for c0 in range(0, n_cols, BLOCK_D):
                a, b, c, cols, mask = _load_tile(a_ptr, b_ptr, c_ptr, a_row, b_row, c_row, row_mask, sa_d, sb_d,
                                                 sc_d, c0, n_cols, HAS_C, BLOCK_D, ACC)
                da, db, dc = _row_gradients(a, b, c, k0, k1, k2, k3, k4, k5, eps, p, LOSS, P_KIND, SWAP)
                _store_gradients(ga_ptr, gb_ptr, gc_ptr, g_row, cols, mask, g_col, da, db, dc, GRAD_A, GRAD_B,
                                 GRAD_C)
    return loss


# ----------------------------------------------------------------------------------------------------
# cosine rows, in float-float (kernels/_math.py): (1) the three sums, (2) the loss and per-row pairs,
# (3) the gradients; every quantity a pair hi + lo, rounded once where it is stored
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _cosine_sums(a, b, BLOCK_D: tl.constexpr):
    """(1) <a, b>, |a|^2, |b|^2 of a tile's rows as pairs: every product exact (two_prod), summed in pairs.
    Masked elements were loaded as 0 and add 0."""
    ab_hi, ab_lo = two_prod(a, b)
    aa_hi, aa_lo = two_prod(a, a)
    bb_hi, bb_lo = two_prod(b, b)
    s0_hi, s0_lo = ff_row_sum(ab_hi, ab_lo, BLOCK_D)
    s1_hi, s1_lo = ff_row_sum(aa_hi, aa_lo, BLOCK_D)
    s2_hi, s2_lo = ff_row_sum(bb_hi, bb_lo, BLOCK_D)
    return s0_hi, s0_lo, s1_hi, s1_lo, s2_hi, s2_lo


@triton.jit
def _cosine_finish(s0_hi, s0_lo, s1_hi, s1_lo, s2_hi, s2_lo, y, margin, eps, scale, LOSS: tl.constexpr):
    """(2) the row's loss (rounded) and ten values for (3).
    cosine_embedding: the pairs k0 = G / sqrt(m1 m2), k1 = s / m1, k2 = s / m2 (d/da = k0 (b - k1 a),
    d/db = k0 (a - k2 b): the cancellation between an exact element and a pair; for equal vectors
    b - k1 a = a eps / m1, resolved), G = dloss/dcos times the scale. cosine_similarity: out's low part, then the pairs
    c1, c2, q1, q2 (out's high part is the returned loss)."""
    zero = s0_hi * 0.0
    if LOSS == "cosine_embedding":
        m1_hi, m1_lo = ff_add(s1_hi, s1_lo, eps, zero)
        m2_hi, m2_lo = ff_add(s2_hi, s2_lo, eps, zero)
        n1_hi, n1_lo = ff_sqrt(m1_hi, m1_lo)  # sqrt(m1) sqrt(m2), not sqrt(m1 m2): no overflow of the product
        n2_hi, n2_lo = ff_sqrt(m2_hi, m2_lo)  # (torch's m1 m2 overflows from norms of ~4e9: cos 0 there)
        den_hi, den_lo = ff_mul(n1_hi, n1_lo, n2_hi, n2_lo)
        cos_hi, cos_lo = ff_div(s0_hi, s0_lo, den_hi, den_lo)
        one_minus, _ = ff_add(zero + 1.0, zero, -cos_hi, -cos_lo)
        hinge, _ = ff_add(cos_hi, cos_lo, zero - margin, zero)
        pos = y == 1.0
        neg = y == -1.0
        loss = tl.where(pos, one_minus, 0.0) + tl.where(neg, tl.where(hinge < 0, 0.0, hinge), 0.0)
        g = (tl.where(pos, -1.0, 0.0) + tl.where(neg & (hinge >= 0), 1.0, 0.0)) * scale
        k0_hi, k0_lo = ff_div(g, zero, den_hi, den_lo)
        k1_hi, k1_lo = ff_div(s0_hi, s0_lo, m1_hi, m1_lo)
        k2_hi, k2_lo = ff_div(s0_hi, s0_lo, m2_hi, m2_lo)
        return loss, k0_hi, k0_lo, k1_hi, k1_lo, k2_hi, k2_lo, zero, zero, zero, zero
    else:
        tl.static_assert(LOSS == "cosine_similarity", "unknown LOSS")
        # torch's normalise-first form: u = a / c1, v = b / c2 (c_i = max(|x_i|, eps), a clamp without a
        # gradient), out = <u, v> = <a, b> / (c1 c2)
        n1_hi, n1_lo = ff_sqrt(s1_hi, s1_lo)
        n2_hi, n2_lo = ff_sqrt(s2_hi, s2_lo)
        c1_hi = tl.where(n1_hi < eps, eps, n1_hi)
        c1_lo = tl.where(n1_hi < eps, 0.0, n1_lo)
        c2_hi = tl.where(n2_hi < eps, eps, n2_hi)
        c2_lo = tl.where(n2_hi < eps, 0.0, n2_lo)
        t_hi, t_lo = ff_div(s0_hi, s0_lo, c1_hi, c1_lo)
        out_hi, out_lo = ff_div(t_hi, t_lo, c2_hi, c2_lo)
        # a norm that overflows: torch's u = a / inf is 0, and so is <u, v> (its gradients too, below)
        overflow = ~(c1_hi - c1_hi == 0) | ~(c2_hi - c2_hi == 0)
        out_hi = tl.where(overflow & (n1_hi == n1_hi) & (n2_hi == n2_hi), 0.0, out_hi)
        out_lo = tl.where(overflow, 0.0, out_lo)
        # q_i = c_i / n_i: exactly 1 unless clamped (also for an infinite norm), eps / n_i if clamped, 0 where n_i = 0
        q1_hi, q1_lo = ff_div(c1_hi, c1_lo, tl.where(n1_hi == 0, 1.0, n1_hi), n1_lo)
        q2_hi, q2_lo = ff_div(c2_hi, c2_lo, tl.where(n2_hi == 0, 1.0, n2_hi), n2_lo)
        q1_hi = tl.where(n1_hi == 0, 0.0, tl.where(n1_hi < eps, q1_hi, 1.0))
        q1_lo = tl.where(n1_hi < eps, q1_lo, 0.0) * (n1_hi != 0)
        q2_hi = tl.where(n2_hi == 0, 0.0, tl.where(n2_hi < eps, q2_hi, 1.0))
        q2_lo = tl.where(n2_hi < eps, q2_lo, 0.0) * (n2_hi != 0)
        return out_hi, out_lo, c1_hi, c1_lo, c2_hi, c2_lo, q1_hi, q1_lo, q2_hi, q2_lo, zero


@triton.jit
def _ff_scaled_difference(k_hi, k_lo, x, r_hi, r_lo, z):
    """k (x - r z) for row pairs k, r and tile elements x, z, rounded once."""
    t_hi, t_lo = ff_mul_float(r_hi[:, None], r_lo[:, None], z)
    d_hi, d_lo = ff_add(x, x * 0.0, -t_hi, -t_lo)
    g_hi, _ = ff_mul(d_hi, d_lo, k_hi[:, None], k_lo[:, None])
    return g_hi


@triton.jit
def _cosine_similarity_gradient(x, z, out_hi, out_lo, cx_hi, cx_lo, cz_hi, cz_lo, qx_hi, qx_lo, scale):
    """d out / dx = (w - out u qx) / cx with u = x / cx, w = z / cz, rounded once: where the vectors are
    parallel w = out u exactly (D = 1: +-1), so the gradient is exactly 0, as torch's."""
    u_hi, u_lo = ff_div(x, x * 0.0, cx_hi[:, None], cx_lo[:, None])
    w_hi, w_lo = ff_div(z, z * 0.0, cz_hi[:, None], cz_lo[:, None])
    uq_hi, uq_lo = ff_mul(u_hi, u_lo, qx_hi[:, None], qx_lo[:, None])
    t_hi, t_lo = ff_mul(uq_hi, uq_lo, out_hi[:, None], out_lo[:, None])
    d_hi, d_lo = ff_add(w_hi, w_lo, -t_hi, -t_lo)
    g_hi, g_lo = ff_div(d_hi, d_lo, cx_hi[:, None], cx_lo[:, None])
    gradient, _ = ff_mul_float(g_hi, g_lo, scale)
    return gradient


@triton.jit
def _cosine(a_ptr, b_ptr, t_ptr, ga_ptr, gb_ptr, a_row, b_row, t_row, g_row, row_mask, sa_d, sb_d, g_col, n_cols,
            margin, eps, scale, LOSS: tl.constexpr, GRAD_A: tl.constexpr, GRAD_B: tl.constexpr,
            ONE_BLOCK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """cosine_embedding / cosine_similarity of BLOCK_R rows in float-float: (1) sums, (2) loss and row pairs,
    (3) gradients. ONE_BLOCK: the row fits one tile, read once and kept in registers for (3)."""
    if LOSS == "cosine_embedding":
        y = tl.load(t_ptr + t_row, mask=row_mask, other=0).to(ACC)
    else:
        y = tl.zeros([BLOCK_R], ACC)
    # (1) the sums
    if ONE_BLOCK:
        a, b, _, cols, mask = _load_tile(a_ptr, b_ptr, a_ptr, a_row, b_row, a_row, row_mask, sa_d, sb_d, sa_d, 0,
                                         n_cols, False, BLOCK_D, ACC)
        s0_hi, s0_lo, s1_hi, s1_lo, s2_hi, s2_lo = _cosine_sums(a, b, BLOCK_D)
    else:
        s0_hi = tl.zeros([BLOCK_R], ACC)
        s0_lo = tl.zeros([BLOCK_R], ACC)
        s1_hi = tl.zeros([BLOCK_R], ACC)
        s1_lo = tl.zeros([BLOCK_R], ACC)
        s2_hi = tl.zeros([BLOCK_R], ACC)
        s2_lo = tl.zeros([BLOCK_R], ACC)
        for c0 in range(0, n_cols, BLOCK_D):
            a, b, _, cols, mask = _load_tile(a_ptr, b_ptr, a_ptr, a_row, b_row, a_row, row_mask, sa_d, sb_d, sa_d,
                                             c0, n_cols, False, BLOCK_D, ACC)
            t0_hi, t0_lo, t1_hi, t1_lo, t2_hi, t2_lo = _cosine_sums(a, b, BLOCK_D)
            s0_hi, s0_lo = ff_add(s0_hi, s0_lo, t0_hi, t0_lo)
            s1_hi, s1_lo = ff_add(s1_hi, s1_lo, t1_hi, t1_lo)
            s2_hi, s2_lo = ff_add(s2_hi, s2_lo, t2_hi, t2_lo)
    # (2) the loss and the row pairs
    loss, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9 = _cosine_finish(s0_hi, s0_lo, s1_hi, s1_lo, s2_hi, s2_lo, y,
                                                                  margin, eps, scale, LOSS)
    # (3) gradients
    if GRAD_A or GRAD_B:
        for c0 in range(0, n_cols, BLOCK_D):
            if not ONE_BLOCK:
                a, b, _, cols, mask = _load_tile(a_ptr, b_ptr, a_ptr, a_row, b_row, a_row, row_mask, sa_d, sb_d,
                                                 sa_d, c0, n_cols, False, BLOCK_D, ACC)
            if LOSS == "cosine_embedding":  # d/da = k0 (b - k1 a), d/db = k0 (a - k2 b)
                da = _ff_scaled_difference(r0, r1, b, r2, r3, a)
                db = _ff_scaled_difference(r0, r1, a, r4, r5, b)
            else:  # out = (loss, r0), c1 = (r1, r2), c2 = (r3, r4), q1 = (r5, r6), q2 = (r7, r8)
                da = _cosine_similarity_gradient(a, b, loss, r0, r1, r2, r3, r4, r5, r6, scale)
                db = _cosine_similarity_gradient(b, a, loss, r0, r3, r4, r1, r2, r7, r8, scale)
            _store_gradients(ga_ptr, gb_ptr, ga_ptr, g_row, cols, mask, g_col, da, db, da, GRAD_A, GRAD_B, False)
    return loss


# ----------------------------------------------------------------------------------------------------
# groups of ranked scores (one row = one positive and its num_neg negatives, a strided view)
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _rank(a_ptr, b_ptr, ga_ptr, a_row, b_row, g_row, row_mask, sa_d, sb_d, g_col, n_cols, margin, eps, scale,
          LOSS: tl.constexpr, GRAD: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """rank_hinge / rank_cross_entropy of BLOCK_R groups, each in one tile."""
    cols = tl.arange(0, BLOCK_D).to(tl.int64)
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    if LOSS == "rank_hinge":
        x = tl.load(a_ptr + a_row[:, None] + cols[None, :] * sa_d, mask=mask, other=0.0).to(ACC)
        is_pos = (cols == 0)[None, :]
        k = n_cols - 1
        neg_mean = tl.sum(tl.where(mask & ~is_pos, x, 0.0), axis=1) / k
        u = margin - (tl.sum(tl.where(is_pos, x, 0.0), axis=1) - neg_mean)
        loss = tl.where(u < 0, 0.0, u)
        g = tl.where(u >= 0, scale, 0.0)
        d = tl.where(is_pos, -g[:, None], g[:, None] / k)
    else:
        x = tl.load(a_ptr + a_row[:, None] + cols[None, :] * sa_d, mask=mask, other=0.0).to(ACC)
        x = tl.where((cols < n_cols)[None, :], x, float("-inf"))  # rows past the end stay finite
        y = tl.load(b_ptr + b_row[:, None] + cols[None, :] * sb_d, mask=mask, other=0.0).to(ACC)
        m = tl.max(x, axis=1)
        e = tl.where(mask, tl.exp(x - m[:, None]), 0.0)
        prob = e / tl.sum(e, axis=1)[:, None]
        shifted = prob + eps
        loss = -tl.sum(tl.where(mask, y * tl.log(shifted), 0.0), axis=1)
        q = tl.where(mask, y * prob / shifted, 0.0)
        d = (prob * tl.sum(q, axis=1)[:, None] - q) * scale
    if GRAD:
        tl.store(ga_ptr + g_row[:, None] + cols[None, :] * g_col, d.to(ga_ptr.dtype.element_ty), mask=mask)
    return loss


# ----------------------------------------------------------------------------------------------------
# the kernels
# ----------------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["margin_hi", "margin_lo", "p_hi", "p_lo", "eps_hi", "eps_lo", "scale_hi", "scale_lo",
                               "divisor_hi", "divisor_lo"])
def _row_margin_fwd_kernel(
    # pointers
    a_ptr, b_ptr, c_ptr,  # (N, D, S) operands through strides: input | x1 | anchor; target | x2 | positive;
    #                       weight | negative (read when the loss uses them)
    t_ptr,  # targets: (N, S) class per row (multi_margin) or +-1 per row (cosine_embedding); (N, D, S) class lists
    #         (multilabel_margin)
    w_ptr,  # (D,) class weights (multi_margin, HAS_WEIGHT)
    out_ptr,  # REDUCE: () the reduced loss; else (N*S,) the loss per row; in the output dtype (out)
    partials_ptr,  # (n_programs,) float: per-program loss sums (REDUCE)
    counter_ptr,  # () int32 ticket counter, zero between launches (REDUCE)
    ga_ptr, gb_ptr, gc_ptr,  # (N, D, S) contiguous gradients of a, b, c (out, GRAD_A/B/C)
    # strides, in elements
    sa_n, sa_d, sa_s, sb_n, sb_d, sb_s, sc_n, sc_d, sc_s, st_n, st_d, st_s, sw_d,
    # sizes
    n_rows, n_cols, n_spatial,  # n_rows = N * S; n_cols = D
    # per-call scalars as fp32 (hi, lo) pairs: margin, p (a norm's order), eps, the gradients' scale for
    # grad_output 1, the reduced loss's divisor
    margin_hi, margin_lo, p_hi, p_lo, eps_hi, eps_lo, scale_hi, scale_lo, divisor_hi, divisor_lo,
    # constexprs
    LOSS: tl.constexpr, P: tl.constexpr, P_KIND: tl.constexpr, HAS_WEIGHT: tl.constexpr, SWAP: tl.constexpr,
    REDUCE: tl.constexpr, GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, GRAD_C: tl.constexpr,
    ONE_BLOCK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    RBLOCK: tl.constexpr, ACC: tl.constexpr,
):
    margin = join_float(margin_hi, margin_lo, ACC)
    p = join_float(p_hi, p_lo, ACC)
    eps = join_float(eps_hi, eps_lo, ACC)
    scale = join_float(scale_hi, scale_lo, ACC)
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # 64-bit: row * stride may pass 2**31
    row_mask = rows < n_rows
    n = rows // n_spatial
    s = rows % n_spatial
    a_row = n * sa_n + s * sa_s
    b_row = n * sb_n + s * sb_s
    c_row = n * sc_n + s * sc_s
    t_row = n * st_n + s * st_s
    g_row = n * n_cols * n_spatial + s  # the contiguous gradients
    g_col = n_spatial

    # (1)-(3) the loss of each row, its gradients written for grad_output 1
    if LOSS == "multi_margin":
        loss = _multi_margin(a_ptr, t_ptr, w_ptr, ga_ptr, a_row, t_row, g_row, row_mask, sa_d, sw_d, g_col, n_cols,
                             margin, scale, P, HAS_WEIGHT, GRAD_A, BLOCK_R, BLOCK_D, ACC)
    elif LOSS == "multilabel_margin":
        tl.static_assert(BLOCK_R == 1, "multilabel_margin: one row per program")
        row_loss = _multilabel_margin(a_ptr, t_ptr, ga_ptr, tl.sum(a_row, axis=0), tl.sum(t_row, axis=0),
                                      tl.sum(g_row, axis=0), sa_d, st_d, g_col, n_cols, scale, GRAD_A, BLOCK_D,
                                      BLOCK_T, ACC)
        loss = tl.zeros([BLOCK_R], ACC) + row_loss
    elif LOSS == "multilabel_soft_margin":
        loss = _multilabel_soft_margin(a_ptr, b_ptr, c_ptr, ga_ptr, gb_ptr, a_row, b_row, c_row, g_row, row_mask,
                                       sa_d, sb_d, sc_d, g_col, n_cols, scale, HAS_WEIGHT, GRAD_A, GRAD_B, BLOCK_R,
                                       BLOCK_D, ACC)
    elif LOSS == "rank_hinge" or LOSS == "rank_cross_entropy":
        loss = _rank(a_ptr, b_ptr, ga_ptr, a_row, b_row, g_row, row_mask, sa_d, sb_d, g_col, n_cols, margin, eps,
                     scale, LOSS, GRAD_A, BLOCK_D, ACC)
    elif LOSS == "cosine_embedding" or LOSS == "cosine_similarity":
        loss = _cosine(a_ptr, b_ptr, t_ptr, ga_ptr, gb_ptr, a_row, b_row, t_row, g_row, row_mask, sa_d, sb_d, g_col,
                       n_cols, margin, eps, scale, LOSS, GRAD_A, GRAD_B, ONE_BLOCK, BLOCK_R, BLOCK_D, ACC)
    else:
        loss = _distance(a_ptr, b_ptr, c_ptr, ga_ptr, gb_ptr, gc_ptr, a_row, b_row, c_row, g_row, row_mask, sa_d,
                         sb_d, sc_d, g_col, n_cols, margin, eps, p, scale, LOSS, P_KIND, SWAP, GRAD_A, GRAD_B, GRAD_C,
                         ONE_BLOCK, BLOCK_R, BLOCK_D, ACC)

    # (4) the loss per row, or reduced over the grid in this launch (kernels/_reduce.py)
    if REDUCE:
        finish_grid_sum(tl.sum(tl.where(row_mask, loss, 0.0), axis=0), out_ptr, partials_ptr, counter_ptr,
                        join_float(divisor_hi, divisor_lo, ACC), RBLOCK, ACC)
    else:
        tl.store(out_ptr + rows, loss.to(out_ptr.dtype.element_ty), mask=row_mask)


# ----------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------



# The build check's written exceptions (fusedloss/buildcheck.py): a budget that the configurations matching
# ``kernel`` and ``where`` (constexpr values; a tuple: any of them) may exceed, on ``archs`` (default all),
# and why: what it costs, on which GPUs.
BUILD_BUDGET_EXCEPTIONS = (
    dict(kernel="_row_margin_fwd_kernel", budget="spills", where={"LOSS": ("cosine_embedding", "cosine_similarity"),
                                                                  "ACC": "fp32"},
         archs=("sm_80",),
         reason="the float-float cosine losses on sm_80 only: ptxas keeps 64-80 registers at 8-16 warps and spills "
                "8 bytes per thread, which stay in L1 (sm_90 and sm_100 spill nothing at the same tiles); against "
                "8-16 bytes of input per element, negligible on A100-class GPUs (not measured)."),
    dict(kernel="_row_margin_fwd_kernel", budget=("registers", "spills"),
         where={"LOSS": ("cosine_embedding", "cosine_similarity"), "ACC": "fp64"},
         reason="float64 inputs of the cosine losses run the same float-float code in float64 pairs (~2,000 float64 "
                "instructions per tile row): 128-182 registers, up to 40 bytes of spills in L1 at a 2048-element "
                "tile. float64 is a testing dtype for these losses; on consumer GPUs the 1/64-rate FP64 pipe bounds "
                "it whatever the registers."),
    dict(kernel="_row_margin_fwd_kernel", budget="load_width", where={"LOSS": "multilabel_margin"},
         reason="multilabel_margin's innermost loop (a block of 8 targets against a block of 256 classes) gathers "
                "the targets' scores by index, one scalar load each by nature, and reads their int64 indices "
                "(64-bit loads); the class scores are loaded outside it, once per class block. On every GPU the "
                "k x C hinge terms per row, not these L1/L2-resident loads, set its time (not measured)."),
    dict(kernel="_row_margin_fwd_kernel", budget="spills", where={"LOSS": "multilabel_margin", "ACC": "fp64"},
         archs=("sm_80",),
         reason="float64 multilabel_margin on sm_80 only: 16 bytes per thread of spills that stay in L1 (ptxas "
                "keeps 80 registers there at 4 warps; sm_90 and sm_100 take 96 and spill nothing); a few percent "
                "at most of a kernel bound by its k x C hinge terms, on A100-class GPUs (not measured)."),
    dict(kernel="_row_margin_fwd_kernel", budget="spills", where={"LOSS": "multi_margin", "ACC": "fp64"},
         reason="float64 multi_margin (p = 1): ptxas holds it to 48-64 registers and spills 8-16 bytes per thread "
                "(sm_80 and sm_100 at rows of 1024, sm_90 at rows longer than one tile), in L1, against 8 bytes "
                "of input per element: negligible (not measured). float64 is a testing dtype here."),
    dict(kernel="_row_margin_fwd_kernel", budget="registers",
         where={"LOSS": "multilabel_soft_margin", "ACC": "fp64"},
         reason="float64 multilabel_soft_margin (a float64 log-sigmoid per element: libdevice's exp and log1p): "
                "174-190 registers at 8 warps, one 256-thread block per SM. Costs latency hiding on full-rate FP64 "
                "GPUs (A100, H100, B200; not measured); elsewhere the 1/64-rate FP64 pipe bounds it anyway."),
)

@plan_cache
def _fwd_plan(loss, n_rows, n_cols, dtype, p_int, p_kind, has_weight, swap, reduce, grads):
    """(grid, num_warps, constexprs) of the forward kernel for one signature."""
    block_r, block_d, block_t, one_block, num_warps = row_margin_tile(loss, n_cols, dtype.itemsize)
    constexprs = dict(
        LOSS=loss, P=p_int, P_KIND=p_kind, HAS_WEIGHT=has_weight, SWAP=swap, REDUCE=reduce, GRAD_A=grads[0],
        GRAD_B=grads[1], GRAD_C=grads[2], ONE_BLOCK=one_block, BLOCK_R=block_r, BLOCK_D=block_d, BLOCK_T=block_t,
        RBLOCK=RBLOCK, ACC=accumulation_dtypes(dtype)[0])
    return (triton.cdiv(n_rows, block_r),), num_warps, constexprs


_NO_STRIDES = (0, 0, 0)


def row_margin_fwd(loss, operands, strides, target, target_strides, weight, rows, *, out_shape, out_dtype, reduce,
                   divisor, grad_scale, grad_dtypes, grad_shape, margin=0.0, p=2.0, eps=0.0, swap=False):
    """One launch of the fused row loss ``loss`` (a name in LOSSES).

    ``operands``: (a, b, c), tensors or None, each addressed by its ``strides`` (stride_n, stride_d,
    stride_s) over ``rows`` = (N, D, S) (multilabel_soft_margin's weight is c); ``target`` (or None) by
    ``target_strides``; ``weight`` (D,) class weights or None. ``reduce``: the loss summed over the rows and divided by ``divisor`` into a 0-d tensor; else
    the loss per row, shaped ``out_shape``; both in ``out_dtype``. ``grad_dtypes``: (dtype or None) per
    operand: its gradient, a new contiguous tensor of ``grad_shape`` (N*D*S elements) in that dtype,
    written for grad_output 1 times ``grad_scale``. Returns (out, [grad_a, grad_b, grad_c]).
    """
    n_batch, n_cols, n_spatial = rows
    n_rows = n_batch * n_spatial
    a = operands[0]
    out = new_tensor(a, () if reduce else out_shape, out_dtype)
    grads = [None if dt is None else new_tensor(a, grad_shape, dt) for dt in grad_dtypes]
    if n_rows == 0:  # nothing to launch: torch's value of an empty reduction (sum 0, mean 0 / 0)
        if reduce:
            out.fill_(0.0 if divisor == 1 else float("nan"))
        return out, grads
    p_kind = "l1" if p == 1 else "l2" if p == 2 else "lp"
    grid, num_warps, constexprs = _fwd_plan(
        loss, n_rows, n_cols, a.dtype, int(p) if p in (1, 2) else 0, p_kind,
        weight is not None or (loss == "multilabel_soft_margin" and operands[2] is not None), swap, reduce,
        (grads[0] is not None, grads[1] is not None, grads[2] is not None))
    partials = new_tensor(a, grid[0], accumulation_dtypes(a.dtype)[1]) if reduce else out
    ga, gb, gc = grads
    launch(_row_margin_fwd_kernel, grid, (
        *(t if t is not None else a for t in operands), target if target is not None else a,
        weight if weight is not None else a, out, partials, reduction_counter(a) if reduce else out,
        ga if ga is not None else a, gb if gb is not None else a, gc if gc is not None else a,  # absent: never written
        *(v for st in strides for v in (st if st is not None else _NO_STRIDES)), *(target_strides or _NO_STRIDES),
        weight.stride(0) if weight is not None else 0,
        n_rows, n_cols, n_spatial,
        *split_float(margin), *split_float(p), *split_float(eps), *split_float(grad_scale), *split_float(divisor),
    ), constexprs, num_warps, a.device)
    return out, grads


def rescale_rows(grad, rows, grad_output, grad_output_strides):
    """grad (contiguous over ``rows`` = (N, D, S)) *= grad_output per row, in place, skipping on the device
    the rows whose grad_output is 1 (softmax rows' rescale kernel: the same row layout).
    ``grad_output_strides``: its (n, s) strides, (0, 0) for one element."""
    n_batch, n_cols, n_spatial = rows
    return softmax_rows_rescale(grad, (n_cols * n_spatial, n_spatial, 1), rows, grad_output, grad_output_strides)
