"""Pointwise family: every loss that is a sum (or mean) of a per-element formula, in one kernel.

Each element i of the broadcast shape holds up to three operands a, b, c (input, target, and the var of
the Gaussian NLL or the target of the margin ranking loss), an optional weight w and pos_weight pw.
One pass over the elements computes, per element, with the loss's formula f (step numbers as in the
kernel):

  (1) load a_i, b_i, c_i, w_i, pw_i through each operand's strides (broadcast operands have stride 0)
  (2) (l_i, da_i, db_i, dc_i) = f(a_i, b_i, c_i, pw_i; p, q) -- the loss and its derivatives
  (3) with a weight: l_i, da_i, db_i, dc_i all times w_i
  (4) for each operand that needs a gradient, store s * d_i: its gradient for a grad_output of 1, with s
      the reduction's scale (1/N for 'mean', 1/batch for 'batchmean', 1/sum(w) for a weighted mean,
      else 1)
  (5) reduction 'none': store l_i (output dtype); otherwise each program stores its sum of l_i and the
      last program to finish adds those partial sums in program order and divides by the reduction's
      divisor (kernels/_reduce.py: deterministic, no float atomics, one launch)

The backward then only has to apply grad_output: ``_scale_kernel`` multiplies a gradient buffer in place
by the one-element grad_output, and its programs skip every load and store when grad_output == 1
(a device-side check: no host sync, no traffic).

Formulas (x = a, y = b; d = x - y; p, q the loss's scalar parameters). Each is a ``@triton.jit``
function below whose docstring gives the derivatives:

  BCE                  -(y max(log x, -100) + (1 - y) max(log(1 - x), -100))           (torch's clamp)
  BCE_WITH_LOGITS      (1 - y) x - (1 + (pw - 1) y) log_sigmoid(x) = (1 - y) softplus(x) + pw y softplus(-x)
  SMOOTH_L1 (p=beta)   0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta
  HUBER (p=delta)      0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta)
  L1, MSE              |d|, d^2
  SOFT_MARGIN          log(1 + exp(-y x))
  KL_DIV               y log y - y x (0 where y = 0);   KL_DIV_LOG_TARGET: exp(y) (y - x)
  POISSON_NLL_LOG_INPUT  exp(x) - y x;   POISSON_NLL (p=eps): x - y log(x + eps);
                       FULL adds Stirling's y log y - y + 0.5 log(2 pi y) where y > 1
  GAUSSIAN_NLL (p=eps) 0.5 (log v + d^2 / v), v = max(c, eps) (c = var; the scalar q when var is a
                       float); FULL adds 0.5 log(2 pi)
  MARGIN_RANKING (p=margin)  max(0, -c (a - b) + margin)    (a, b = input1, input2; c = target)
  HINGE_EMBEDDING (p=margin) [y != 1] max(0, margin - x) + [y != -1] x
  SIGMOID_FOCAL (p=alpha, q=gamma)  alpha_t ce (1 - p_t)^gamma, torchvision's sigmoid_focal_loss

Values torch rejects on the host (a BCE input or target outside [0, 1], a negative var) give NaN in the
loss and every gradient of that element: never a silent number, never a host sync.

Memory traffic per element (B_k bytes of operand k, G_k of its gradient; the partial sums are 4 bytes
per BLOCK elements):
  forward             reads sum_k B_k; writes the loss (B_out, 'none') or the partial sums, and G_k for
                      each operand that needs a gradient (already scaled for grad_output == 1)
  backward, scalar    grad_output == 1: nothing (one 1-element load per program);
  grad_output         otherwise reads and writes each G_k once more
  backward, 'none'    reads and writes each G_k and reads grad_output (torch's in-place multiply)
  forward+backward against the minimal (read each operand once, write each gradient once):
                      1.0x for grad_output == 1; (sum B + 3 sum G) / (sum B + sum G) otherwise, e.g.
                      5/3 = 1.67x for one input and a target of the same dtype with one gradient.
"""
import triton
import triton.language as tl

from ._config import RBLOCK, plan_cache, pointwise_block, split_float
from ._launch import accumulation_dtypes, launch, new_tensor, reduction_counter
from ._math import join_float, log1p, logistic, pow_runtime
from ._reduce import finish_grid_sum

# The formulas, by name: the LOSS constexpr is one of these strings. (Not module-level tl.constexpr
# globals: Triton re-checks every global a kernel uses on every launch.)
FORMULAS = ("bce", "bce_with_logits", "smooth_l1", "huber", "l1", "mse", "soft_margin", "kl_div",
            "kl_div_log_target", "poisson_nll", "poisson_nll_log_input", "gaussian_nll", "margin_ranking",
            "hinge_embedding", "sigmoid_focal")


# ----------------------------------------------------------------------------------------------------
# per-loss formulas: (loss, d/dx, d/dy) or (loss, d/da, d/db, d/dc) of one element, in the ACC dtype
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _nan_where(invalid, value):
    return tl.where(invalid, float("nan"), value)


@triton.jit
def _exact(value: tl.constexpr, like):
    """A constant in ``like``'s dtype, exact in float64 too (a bare literal would be rounded to fp32)."""
    return tl.full(like.shape, value, like.dtype)


@triton.jit
def _bce(x, y):
    """-(y log x + (1 - y) log(1 - x)), each log clamped at -100 as torch does.

    d/dx = (x - y) / max(x (1 - x), 1e-12f) (torch's guard at x in {0, 1});  d/dy = log(1 - x) - log(x).
    x or y outside [0, 1] (torch raises on the host): NaN.
    """
    log_x = tl.log(x)
    log_1mx = log1p(-x)
    loss = (y - 1.0) * tl.where(log_1mx < -100.0, -100.0, log_1mx) - y * tl.where(log_x < -100.0, -100.0, log_x)
    x_1mx = x * (1.0 - x)
    tiny = tl.full(x.shape, 1e-12, tl.float32).to(x.dtype)  # torch's EPSILON is a float, in float64 too
    dx = (x - y) / tl.where(x_1mx < tiny, tiny, x_1mx)
    dy = log_1mx - log_x
    invalid = (x < 0) | (x > 1) | (y < 0) | (y > 1)
    return _nan_where(invalid, loss), _nan_where(invalid, dx), _nan_where(invalid, dy)


@triton.jit
def _bce_with_logits(x, y, pw):
    """torch's (1 - y) x - (1 + (pw - 1) y) log_sigmoid(x) (pw = 1 without pos_weight), written as
    (1 - y) softplus(x) + pw y softplus(-x): two non-negative terms, so no cancellation where torch's
    form loses the small loss of a confident logit.

    d/dx = (1 - y) sigmoid(x) - pw y sigmoid(-x)  (torch's lw sigmoid(x) - pw y, without cancellation);
    d/dy = pw softplus(-x) - softplus(x)  (torch's -x - (pw - 1) log_sigmoid(x)).
    """
    sig_pos, sig_neg, log1p_exp = logistic(x)
    sp_pos = tl.where(x > 0, x, 0.0) + log1p_exp  # softplus(x)
    sp_neg = tl.where(x < 0, -x, 0.0) + log1p_exp  # softplus(-x)
    loss = (1.0 - y) * sp_pos + pw * y * sp_neg
    return loss, (1.0 - y) * sig_pos - pw * y * sig_neg, pw * sp_neg - sp_pos


@triton.jit
def _smooth_l1(x, y, beta):
    """0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta, d = x - y (beta > 0; beta = 0 is L1).

    d/dx = -1 if d <= -beta, 1 if d >= beta, else d / beta (torch's order: NaN stays NaN); d/dy = -d/dx.
    """
    d = x - y
    ad = tl.abs(d)
    loss = tl.where(ad < beta, 0.5 * d * d / beta, ad - 0.5 * beta)
    dx = tl.where(d <= -beta, -1.0, tl.where(d >= beta, 1.0, d / beta))
    return loss, dx, -dx


@triton.jit
def _huber(x, y, delta):
    """0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta), d = x - y.

    d/dx = -delta if d < -delta, delta if d > delta, else d;  d/dy = -d/dx.
    """
    d = x - y
    ad = tl.abs(d)
    loss = tl.where(ad < delta, 0.5 * d * d, delta * (ad - 0.5 * delta))
    dx = tl.where(d < -delta, -delta, tl.where(d > delta, delta, d))
    return loss, dx, -dx


@triton.jit
def _l1(x, y):
    """|x - y|;  d/dx = sign(x - y) (0 at 0, NaN for NaN, as torch's sgn);  d/dy = -d/dx."""
    d = x - y
    dx = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, d * 0.0))
    return tl.abs(d), dx, -dx


@triton.jit
def _mse(x, y):
    """(x - y)^2;  d/dx = 2 (x - y);  d/dy = -d/dx."""
    d = x - y
    return d * d, 2.0 * d, -2.0 * d


@triton.jit
def _soft_margin(x, y):
    """log(1 + exp(-y x)) = softplus(-y x) (stable where torch's fp32 exp overflows);
    d/dx = -y sigmoid(-y x); torch gives no gradient for y."""
    z = -y * x
    sig_z, _, log1p_exp = logistic(z)
    dx = -y * sig_z
    return tl.where(z > 0, z, 0.0) + log1p_exp, dx, dx


@triton.jit
def _kl_div(x, y):
    """y log y - y x, with 0 log 0 = 0 (torch's xlogy).

    d/dx = -y;  d/dy = log y + y / y - x (xlogy's derivatives: NaN at y = 0 and for y < 0, as torch).
    """
    log_y = tl.log(y)
    loss = tl.where(y == 0, 0.0, y * log_y) - y * x
    return loss, -y, tl.where(y == 0, 0.0, log_y) + y / y - x


@triton.jit
def _kl_div_log_target(x, y):
    """exp(y) (y - x), y a log-probability;  d/dx = -exp(y);  d/dy = exp(y) (y - x + 1)."""
    exp_y = tl.exp(y)
    return exp_y * (y - x), -exp_y, exp_y * (y - x + 1.0)


@triton.jit
def _poisson_nll(x, y, eps, LOG_INPUT: tl.constexpr, FULL: tl.constexpr):
    """log input: exp(x) - y x, d/dx = exp(x) - y, d/dy = -x.
    rate input: x - y log(x + eps), d/dx = 1 - y / (x + eps), d/dy = -log(x + eps).

    FULL adds Stirling's term s(y) = y log y - y + 0.5 log(2 pi y) where y > 1 (0 elsewhere, torch's
    masked_fill), d s/dy = log y + 0.5 / y there; torch's masked gradient is 0 for 0 < y <= 1 and
    0 * inf = NaN for y <= 0, mirrored here.
    """
    if LOG_INPUT:
        exp_x = tl.exp(x)
        loss = exp_x - y * x
        dx = exp_x - y
        dy = -x
    else:
        log_x = tl.log(x + eps)
        loss = x - y * log_x
        dx = 1.0 - y / (x + eps)
        dy = -log_x
    if FULL:
        log_y = tl.log(y)
        stirling = y * log_y - y + 0.5 * log_y + _exact(0.9189385332046727, y)  # 0.5 log(2 pi)
        loss += tl.where(y <= 1.0, 0.0, stirling)
        dy += tl.where(y <= 1.0, tl.where(y > 0, 0.0, float("nan")), log_y + 0.5 / y)
    return loss, dx, dy


@triton.jit
def _gaussian_nll(x, y, var, eps, FULL: tl.constexpr):
    """0.5 (log v + d^2 / v), d = x - y, v = max(var, eps) (torch clamps without a gradient).

    d/dx = d / v;  d/dy = -d / v;  d/dvar = 0.5 (1 / v - d^2 / v^2), passed straight through the clamp as
    torch does. FULL adds the constant 0.5 log(2 pi). A negative var (torch raises on the host): NaN.
    """
    v = tl.where(var < eps, eps, var)
    d = x - y
    d_v = d / v
    loss = 0.5 * (tl.log(v) + d * d_v)
    if FULL:
        loss += _exact(0.9189385332046727, x)  # 0.5 log(2 pi)
    dvar = 0.5 * (1.0 - d_v * d_v * v) / v
    invalid = var < 0
    return _nan_where(invalid, loss), _nan_where(invalid, d_v), _nan_where(invalid, -d_v), _nan_where(invalid, dvar)


@triton.jit
def _margin_ranking(x1, x2, y, margin):
    """max(0, u), u = -y (x1 - x2) + margin. Where u >= 0 (torch's clamp_min passes the gradient at 0):
    d/dx1 = -y, d/dx2 = y, d/dy = -(x1 - x2); 0 elsewhere."""
    diff = x1 - x2
    u = margin - y * diff
    active = u >= 0
    return tl.where(u < 0, 0.0, u), tl.where(active, -y, 0.0), tl.where(active, y, 0.0), tl.where(active, -diff, 0.0)


@triton.jit
def _hinge_embedding(x, y, margin):
    """[y != 1] max(0, margin - x) + [y != -1] x;  d/dx = -[y != 1][margin - x >= 0] + [y != -1].
    torch gives no gradient for y (it only selects)."""
    m = margin - x
    not_pos = y != 1.0
    not_neg = y != -1.0
    loss = tl.where(not_pos, tl.where(m < 0, 0.0, m), 0.0) + tl.where(not_neg, x, 0.0)
    dx = tl.where(not_pos & (m >= 0), -1.0, 0.0) + tl.where(not_neg, 1.0, 0.0)
    return loss, dx, dx


@triton.jit
def _sigmoid_focal(x, y, alpha, gamma):
    """torchvision's sigmoid_focal_loss: alpha_t ce q^gamma with p = sigmoid(x), ce = the BCE with logits
    (1 - y) softplus(x) + y softplus(-x) (no cancellation), q = 1 - p_t = p (1 - y) + (1 - p) y,
    alpha_t = alpha y + (1 - alpha)(1 - y) when alpha >= 0, else 1.

    d/dx = alpha_t (q^gamma ((1 - y) p - y (1 - p)) + ce gamma q^(gamma-1) p (1 - p) (1 - 2y))
    d/dy = alpha_t (-x q^gamma + ce gamma q^(gamma-1) (1 - 2p)) + (2 alpha - 1) ce q^gamma  [alpha >= 0]
    gamma q^(gamma-1) is taken as 0 for gamma = 0 (torch's pow backward).
    """
    p, p_neg, log1p_exp = logistic(x)  # p_neg = 1 - p without cancellation
    ce = (1.0 - y) * tl.where(x > 0, x, 0.0) + y * tl.where(x < 0, -x, 0.0) + log1p_exp
    q = p * (1.0 - y) + p_neg * y
    # q^gamma as q * q^(gamma-1): one pow serves both terms (no exp or log at all for gamma = 1, 2, 3;
    # otherwise one rounding more, after an exponent smaller by one); q = 0 and gamma = 0 as torch's pow
    q_gamma1 = pow_runtime(q, gamma - 1.0)
    q_gamma = tl.where(gamma == 0.0, 1.0, tl.where(q == 0.0, tl.where(gamma > 0.0, 0.0, 1.0), q * q_gamma1))
    dq_gamma = tl.where(gamma == 0.0, 0.0, gamma * q_gamma1)  # d(q^gamma)/dq
    has_alpha = alpha >= 0
    alpha_t = tl.where(has_alpha, alpha * y + (1.0 - alpha) * (1.0 - y), 1.0)
    loss = alpha_t * ce * q_gamma
    dce_dx = (1.0 - y) * p - y * p_neg
    dx = alpha_t * (q_gamma * dce_dx + ce * dq_gamma * p * p_neg * (1.0 - 2.0 * y))
    dy = alpha_t * (-x * q_gamma + ce * dq_gamma * (p_neg - p)) + tl.where(has_alpha, 2.0 * alpha - 1.0, 0.0) * ce * q_gamma
    return loss, dx, dy


@triton.jit
def _loss_terms(a, b, c, pw, p, q, LOSS: tl.constexpr, FULL: tl.constexpr):
    """(2) the formula selected by LOSS: (loss, d/da, d/db, d/dc); d/dc is 0 for two-operand losses."""
    dc = a * 0.0
    if LOSS == "bce":
        loss, da, db = _bce(a, b)
    elif LOSS == "bce_with_logits":
        loss, da, db = _bce_with_logits(a, b, pw)
    elif LOSS == "smooth_l1":
        loss, da, db = _smooth_l1(a, b, p)
    elif LOSS == "huber":
        loss, da, db = _huber(a, b, p)
    elif LOSS == "l1":
        loss, da, db = _l1(a, b)
    elif LOSS == "mse":
        loss, da, db = _mse(a, b)
    elif LOSS == "soft_margin":
        loss, da, db = _soft_margin(a, b)
    elif LOSS == "kl_div":
        loss, da, db = _kl_div(a, b)
    elif LOSS == "kl_div_log_target":
        loss, da, db = _kl_div_log_target(a, b)
    elif LOSS == "poisson_nll":
        loss, da, db = _poisson_nll(a, b, p, False, FULL)
    elif LOSS == "poisson_nll_log_input":
        loss, da, db = _poisson_nll(a, b, p, True, FULL)
    elif LOSS == "gaussian_nll":
        loss, da, db, dc = _gaussian_nll(a, b, c, p, FULL)
    elif LOSS == "margin_ranking":
        loss, da, db, dc = _margin_ranking(a, b, c, p)
    elif LOSS == "hinge_embedding":
        loss, da, db = _hinge_embedding(a, b, p)
    else:
        tl.static_assert(LOSS == "sigmoid_focal", "unknown LOSS")
        loss, da, db = _sigmoid_focal(a, b, p, q)
    return loss, da, db, dc


# ----------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _strided(offs, n1, n2, s0, s1, s2, NDIM: tl.constexpr):
    """Element offset of flat (row-major) indices ``offs`` over a shape (n0[, n1[, n2]]) with strides s."""
    if NDIM == 1:
        return offs * s0
    elif NDIM == 2:
        return (offs // n1) * s0 + (offs % n1) * s1
    else:
        inner = offs % n2
        outer = offs // n2
        return (outer // n1) * s0 + (outer % n1) * s1 + inner * s2


@triton.jit
def _load(ptr, offs, mask, n1, n2, s0, s1, s2, NDIM: tl.constexpr, ACC: tl.constexpr):
    # masked lanes read 0.5, a value inside every formula's domain (no inf/NaN computed there)
    return tl.load(ptr + _strided(offs, n1, n2, s0, s1, s2, NDIM), mask=mask, other=0.5).to(ACC)


@triton.jit(do_not_specialize=["p_hi", "p_lo", "q_hi", "q_lo", "scale_hi", "scale_lo", "divisor_hi",
                               "divisor_lo"])
def _pointwise_fwd_kernel(
    # pointers
    a_ptr, b_ptr, c_ptr,  # operands over the broadcast shape (through strides); c read when HAS_C
    w_ptr, pw_ptr,  # weight, pos_weight (through strides), read when HAS_WEIGHT / HAS_POS_WEIGHT
    denom_ptr,  # () the weighted-mean denominator sum(w), read when DEVICE_DENOM
    out_ptr,  # REDUCE: () the reduced loss; else (n,) the loss per element; in the output dtype (out)
    partials_ptr,  # (n_programs,) float: per-program loss sums (REDUCE)
    counter_ptr,  # () int32 ticket counter, zero between launches (REDUCE)
    ga_ptr, gb_ptr, gc_ptr,  # (n,) gradients (out), contiguous over the broadcast shape (GRAD_A/B/C)
    # strides in elements over the coalesced broadcast shape (n0, n1, n2), zero where broadcast
    sa0, sa1, sa2, sb0, sb1, sb2, sc0, sc1, sc2, sw0, sw1, sw2, spw0, spw1, spw2,
    # sizes
    n_elements, n1, n2,  # n = n0 * n1 * n2; n1, n2 used when NDIM >= 2, 3
    # per-call scalars, each an fp32 (hi, lo) pair so float64 keeps full precision: the formula's
    # parameters p, q (q is also c's value when not HAS_C), the gradients' scale s for grad_output 1,
    # and the divisor of the reduced loss (the element count for 'mean', the batch for 'batchmean', 1)
    p_hi, p_lo, q_hi, q_lo, scale_hi, scale_lo, divisor_hi, divisor_lo,
    # constexprs
    LOSS: tl.constexpr, FULL: tl.constexpr, NDIM: tl.constexpr,
    HAS_C: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_POS_WEIGHT: tl.constexpr, REDUCE: tl.constexpr,
    GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, GRAD_C: tl.constexpr, DEVICE_DENOM: tl.constexpr,
    BLOCK: tl.constexpr, RBLOCK: tl.constexpr, ACC: tl.constexpr,
):
    p = join_float(p_hi, p_lo, ACC)
    q = join_float(q_hi, q_lo, ACC)
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # 64-bit: n may pass 2**31
    mask = offs < n_elements

    # (1) operands through their strides
    a = _load(a_ptr, offs, mask, n1, n2, sa0, sa1, sa2, NDIM, ACC)
    b = _load(b_ptr, offs, mask, n1, n2, sb0, sb1, sb2, NDIM, ACC)
    if HAS_C:
        c = _load(c_ptr, offs, mask, n1, n2, sc0, sc1, sc2, NDIM, ACC)
    else:
        c = tl.full([BLOCK], 0.0, ACC) + q
    if HAS_POS_WEIGHT:
        pw = _load(pw_ptr, offs, mask, n1, n2, spw0, spw1, spw2, NDIM, ACC)
    else:
        pw = tl.full([BLOCK], 1.0, ACC)

    # (2) the loss's formula
    loss, da, db, dc = _loss_terms(a, b, c, pw, p, q, LOSS, FULL)

    # (3) the weight multiplies the loss and every derivative
    if HAS_WEIGHT:
        w = _load(w_ptr, offs, mask, n1, n2, sw0, sw1, sw2, NDIM, ACC)
        loss = loss * w
        da = da * w
        db = db * w
        dc = dc * w

    # (4) gradients, scaled as for grad_output == 1: s = 1/N ('mean'), 1/batch, 1/sum(w), or 1
    scale = join_float(scale_hi, scale_lo, ACC)
    if DEVICE_DENOM:
        scale = scale / tl.load(denom_ptr).to(ACC)
    if GRAD_A:
        tl.store(ga_ptr + offs, (da * scale).to(ga_ptr.dtype.element_ty), mask=mask)
    if GRAD_B:
        tl.store(gb_ptr + offs, (db * scale).to(gb_ptr.dtype.element_ty), mask=mask)
    if GRAD_C:
        tl.store(gc_ptr + offs, (dc * scale).to(gc_ptr.dtype.element_ty), mask=mask)

    # (5) the loss, per element, or reduced over the grid in this launch (kernels/_reduce.py): the last
    #     program adds the per-program sums in program order and divides by the reduction's divisor
    if REDUCE:
        if DEVICE_DENOM:
            divisor = tl.load(denom_ptr).to(ACC)
        else:
            divisor = join_float(divisor_hi, divisor_lo, ACC)
        finish_grid_sum(tl.sum(tl.where(mask, loss, 0.0), axis=0), out_ptr, partials_ptr, counter_ptr, divisor, RBLOCK,
                        ACC)
    else:
        tl.store(out_ptr + offs, loss.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale_kernel(
    grad_ptr,  # (n,) a gradient buffer, scaled in place
    grad_output_ptr,  # () the reduced loss's grad_output
    n_elements,
    BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    """grad *= grad_output. Every program first loads grad_output; when it is 1 the loads and stores
    are masked off entirely (no traffic, no host sync). Reads and writes n elements otherwise."""
    g = tl.load(grad_output_ptr).to(ACC)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < tl.where(g != 1.0, n_elements, 0)  # grad_output == 1: every lane masked off
    grad = tl.load(grad_ptr + offs, mask=mask).to(ACC)
    tl.store(grad_ptr + offs, (grad * g).to(grad_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------

_MAX_DIMS = 3  # dimensions the kernel addresses through strides (after coalescing)





def _coalesce(shape, strides):
    """Merge adjacent dimensions that every tensor walks contiguously, dropping size-1 dimensions.

    ``strides``: one stride tuple per tensor over ``shape``. Returns (sizes, per-tensor strides), at
    least one dimension. A contiguous tensor, a sliced one (every k-th element) and one broadcast
    along leading or trailing dimensions all come out with one or two dimensions.
    """
    dims = [(size, [s[d] for s in strides]) for d, size in enumerate(shape) if size != 1]
    if not dims:
        return [1], [[0] for _ in strides]
    merged = [dims[0]]
    for size, inner in dims[1:]:
        outer_size, outer = merged[-1]
        if all(o == i * size for o, i in zip(outer, inner)):
            merged[-1] = (outer_size * size, inner)
        else:
            merged.append((size, inner))
    sizes = [size for size, _ in merged]
    return sizes, [[s[d] for _, s in merged] for d in range(len(strides))]


def _layout(operands):
    """(operands, sizes, strides) for the kernel: operands all of one broadcast shape (expanded views).

    More than three dimensions left after coalescing (rare: a non-contiguous view broadcast along
    interleaved dimensions) cannot be addressed by the kernel's strides; the operands are then copied
    to contiguous full-size tensors, which addresses them with one dimension.
    """
    if all(t.is_contiguous() for t in operands):  # the common case, without the general bookkeeping
        return operands, [operands[0].numel()], [[1] for _ in operands]
    shape = operands[0].shape
    sizes, strides = _coalesce(shape, [t.stride() for t in operands])
    if len(sizes) > _MAX_DIMS:
        operands = [t.contiguous() for t in operands]
        sizes, strides = _coalesce(shape, [t.stride() for t in operands])
    return operands, sizes, strides


# The build check's written exceptions (fusedloss/buildcheck.py): a budget that the configurations matching
# ``kernel`` and ``where`` (constexpr values; a tuple: any of them) may exceed, on ``archs`` (default all),
# and why: what it costs, on which GPUs.
BUILD_BUDGET_EXCEPTIONS = (
    dict(kernel="_pointwise_fwd_kernel", budget="registers",
         where={"ACC": "fp64", "LOSS": ("bce", "bce_with_logits", "soft_margin", "sigmoid_focal")},
         reason="float64 formulas of logarithms and exponentials (libdevice's float64 log, exp and log1p are long "
                "polynomial code): 134-248 registers at 8 warps with 8 elements per thread, so one 256-thread "
                "block per SM (8 of its 64 warps). That costs latency hiding on the GPUs with full-rate FP64 "
                "(A100, H100, B200; not measured); on the others the 1/64-rate FP64 pipe bounds these formulas "
                "whatever the occupancy. float64 is a testing dtype for these losses, not a training one."),
)

_HEAVY_FORMULAS = ("sigmoid_focal",)  # a sigmoid, a log1p and a pow per element: half the block (_config)


@plan_cache
def _fwd_plan(loss, n, layout, dtype, full, has_c, has_weight, has_pos_weight, reduce, grads, device_denom, p, q,
              grad_scale, divisor):
    """The forward launch of one signature: (grid, num_warps, constexprs, the kernel's scalar arguments).
    ``layout``: (ndim, n1, n2, stride arguments) of strided operands, None for contiguous ones (one flat
    dimension)."""
    if layout is None:
        present = (True, True, has_c, has_weight, has_pos_weight)
        layout = (1, 1, 1, tuple(stride for here in present for stride in ((1, 0, 0) if here else _NO_STRIDES)))
    ndim, n1, n2, strides = layout
    block, num_warps = pointwise_block(n, heavy=dtype.itemsize == 8 or loss in _HEAVY_FORMULAS)
    constexprs = dict(
        LOSS=loss, FULL=full, NDIM=ndim, HAS_C=has_c, HAS_WEIGHT=has_weight, HAS_POS_WEIGHT=has_pos_weight,
        REDUCE=reduce, GRAD_A=grads[0], GRAD_B=grads[1], GRAD_C=grads[2], DEVICE_DENOM=device_denom,
        BLOCK=block, RBLOCK=RBLOCK, ACC=accumulation_dtypes(dtype)[0])
    scalars = (*strides, n, n1, n2, *split_float(p), *split_float(q), *split_float(grad_scale),
               *split_float(divisor or 1.0))
    return (triton.cdiv(n, block),), num_warps, constexprs, scalars


@plan_cache
def _scale_plan(n, dtype):
    block, num_warps = pointwise_block(n)
    return (triton.cdiv(n, block),), num_warps, dict(BLOCK=block, ACC=accumulation_dtypes(dtype)[0])


_NO_STRIDES = (0,) * _MAX_DIMS


def pointwise_fwd(loss, a, b, c, weight, pos_weight, shape, p, q, full, out_dtype, reduce, grad_scale, divisor, denom,
                  grad_dtypes):
    """One pass of the fused pointwise loss over tensors of one broadcast ``shape`` (expanded views).

    ``loss``: a name in FORMULAS. ``c``, ``weight``, ``pos_weight``: tensors or None. ``p``, ``q``: the
    formula's scalars. ``reduce``: the loss summed over every element and divided by ``divisor`` (or by
    the one-element device tensor ``denom`` when given), a 0-d tensor; else the loss per element. Both
    in ``out_dtype``. ``grad_dtypes``: (dtype or None) per operand a, b, c: its gradient is written in
    that dtype, scaled by ``grad_scale`` (divided by ``denom`` when given).
    Returns (out, [grad_a, grad_b, grad_c]), each gradient a new contiguous tensor of ``shape``, or None.
    """
    n = a.numel()
    out = new_tensor(a, () if reduce else shape, out_dtype)
    ga, gb, gc = [None if dt is None else new_tensor(a, shape, dt) for dt in grad_dtypes]
    if n == 0:  # nothing to launch: torch's value of an empty reduction (0, or 0 / 0 for a mean)
        if reduce:
            out.fill_(0.0 if divisor and denom is None else float("nan"))
        return out, [ga, gb, gc]
    layout = None  # the common case: contiguous operands, one flat dimension
    if not (a.is_contiguous() and b.is_contiguous() and (c is None or c.is_contiguous())
            and (weight is None or weight.is_contiguous()) and (pos_weight is None or pos_weight.is_contiguous())):
        (a, b, c, weight, pos_weight), ndim, n1, n2, strides = _strided_layout((a, b, c, weight, pos_weight))
        layout = (ndim, n1, n2, tuple(strides))
    grid, num_warps, constexprs, scalars = _fwd_plan(
        loss, n, layout, a.dtype, full, c is not None, weight is not None, pos_weight is not None, reduce,
        (ga is not None, gb is not None, gc is not None), denom is not None, p, q, grad_scale, divisor)
    partials = new_tensor(a, grid[0], accumulation_dtypes(a.dtype)[1]) if reduce else out
    launch(_pointwise_fwd_kernel, grid, (
        a, b, a if c is None else c, a if weight is None else weight, a if pos_weight is None else pos_weight,
        a if denom is None else denom, out, partials, reduction_counter(a) if reduce else out,
        a if ga is None else ga, a if gb is None else gb, a if gc is None else gc,  # absent operands: never read
        *scalars), constexprs, num_warps, a.device)  # ... nor written
    return out, [ga, gb, gc]


def _strided_layout(operands):
    """(operands, ndim, n1, n2, stride arguments) for operands that are not all contiguous: their shape
    coalesced to at most three dimensions, each operand addressed through its strides."""
    present = [t for t in operands if t is not None]
    laid_out, sizes, strides = _layout(present)
    by_id = {id(t): (new, st) for t, new, st in zip(present, laid_out, strides)}
    out_operands, stride_args = [], []
    for t in operands:
        if t is None:
            out_operands.append(None)
            stride_args += _NO_STRIDES
        else:
            new, st = by_id[id(t)]
            out_operands.append(new)
            stride_args += list(st) + [0] * (_MAX_DIMS - len(sizes))
    n1 = sizes[1] if len(sizes) > 1 else 1
    n2 = sizes[2] if len(sizes) > 2 else 1
    return out_operands, len(sizes), n1, n2, stride_args


def scale_by_grad_output(grad, grad_output):
    """grad *= grad_output (one element) in place, skipped on the device when grad_output == 1."""
    n = grad.numel()
    if n == 0:
        return grad
    grid, num_warps, constexprs = _scale_plan(n, grad.dtype)
    launch(_scale_kernel, grid, (grad, grad_output, n), constexprs, num_warps, grad.device)
    return grad
