"""Small ``@triton.jit`` math helpers built from core ``tl`` ops only.

Under Triton's interpreter the functions of ``triton.language.extra.libdevice`` are unavailable, so the
few transcendental functions the losses need beyond ``exp``/``log``/``sigmoid`` are written here once,
with their precision stated (measured against float64 over [-3, 3] in float32 arithmetic, through the
interpreter: numpy's exp, log and division are correctly rounded; compiled for a GPU, float32 ``tl.exp``
is ``ex2.approx`` and ``/`` is ``div.full.f32``, a few ulp more). Where exactness matters, ``sqrt_rn``
and ``div_rn`` below are correctly rounded on the GPU too.
"""
import triton
import triton.language as tl


@triton.jit
def _tanh_near_zero(ax):
    """tanh(ax) for small ax >= 0: the odd Taylor series to ax**15 (truncation 1e-8 below 0.55, 1e-20 below
    0.1), where tanh's 1 - exp(-2 ax) cancels."""
    x2 = ax * ax
    p = -929569.0 / 638512875.0
    p = 21844.0 / 6081075.0 + x2 * p
    p = -1382.0 / 155925.0 + x2 * p
    p = 62.0 / 2835.0 + x2 * p
    p = -17.0 / 315.0 + x2 * p
    p = 2.0 / 15.0 + x2 * p
    p = -1.0 / 3.0 + x2 * p
    p = 1.0 + x2 * p
    return ax * p


@triton.jit
def _tanh_parts(x):
    """|x|, e = exp(-2|x|), and whether |x| is below the Taylor series' range (0.55 in float32, 0.1 in
    float64): what tanh and tanh_with_slope share."""
    if x.dtype == tl.float64:
        near_zero = 0.1
    else:
        near_zero = 0.55
    ax = tl.abs(x)
    return ax, tl.exp(-2.0 * ax), ax < near_zero


@triton.jit
def tanh(x):
    """tanh(x), max relative error 2.0e-7 in float32 with correctly rounded exp and division (the
    interpreter), up to 4.2e-7 with the GPU's ex2.approx and div.full (the GPU-arithmetic mode); about
    1e-15 in float64.

    Far from 0: sign(x) * (1 - e) / (1 + e) with e = exp(-2|x|) (no overflow). Near 0, where 1 - e
    cancels: the odd Taylor series to x**15, used below |x| = 0.55 in float32 (truncation 1e-8 there)
    and below 0.1 in float64 (truncation 1e-20; the cancellation above it costs < 1e-15).
    """
    ax, e, near = _tanh_parts(x)
    t = tl.where(near, _tanh_near_zero(ax), (1.0 - e) / (1.0 + e))
    return tl.where(x < 0, -t, t)


@triton.jit
def tanh_with_slope(x):
    """(tanh(x), 1 - tanh(x)**2): a softcap's value and slope. Far from 0 both from e = exp(-2|x|) and
    r = 1 / (1 + e): tanh = (1 - e) r, slope = 4 e r**2, accurate to a few ulp for every |x| and never
    negative (1 - t**2 cancels where t is near 1: with the GPU's ex2.approx it lost 1.4e-2 relative at
    |x| = 5, and went below 0 past 9); near 0, as ``tanh``, with 1 - t**2 (t small: no cancellation)."""
    ax, e, near = _tanh_parts(x)
    r = 1.0 / (1.0 + e)
    t = tl.where(near, _tanh_near_zero(ax), (1.0 - e) * r)
    slope = tl.where(near, 1.0 - t * t, 4.0 * e * r * r)
    return tl.where(x < 0, -t, t), slope


@triton.jit
def log1p(x):
    """log(1 + x) for x > -1, accurate to a few ulp also for tiny |x| (where log(1 + x) rounds to 0).

    u = 1 + x rounds; log(u) - ((u - 1) - x) / u corrects for that rounding to first order.
    x = -1 gives -inf (u = 0: the correction alone would be 0 / 0).
    """
    u = 1.0 + x
    corrected = tl.where(u == 0.0, float("-inf"), tl.log(u) - ((u - 1.0) - x) / u)
    return tl.where(u == 1.0, x, corrected)


@triton.jit
def logistic(x):
    """(sigmoid(x), sigmoid(-x), log(1 + exp(-|x|))) from one exp, one division and one ``log1p``: what
    the sigmoid and softplus of +x and -x share (softplus(+-x) = max(+-x, 0) + the third term, without
    overflow). With e = exp(-|x|) and r = 1 / (1 + e) the sigmoids are r and e r (no cancellation:
    sigmoid(-x) stays accurate where 1 - sigmoid(x) rounds to 0). A few ulp relative for each term."""
    e = tl.exp(-tl.abs(x))
    r = 1.0 / (1.0 + e)
    positive = x >= 0
    return tl.where(positive, r, e * r), tl.where(positive, e * r, r), log1p(e)


@triton.jit
def pow_runtime(base, exponent):
    """base ** exponent for a runtime scalar exponent, as torch's pow: exact products for exponents
    0 (1 for every base), 1 and 2 (any sign of base); otherwise exp(exponent * log(base)): NaN for
    base < 0, 0 or inf for base 0, relative error about |exponent * log(base)| * 2**-24 in float32
    (2**-53 in float64) plus exp's 2 ulp."""
    general = tl.exp(exponent * tl.log(base))
    general = tl.where(base == 0, tl.where(exponent > 0, 0.0, float("inf")), general)
    result = tl.where(exponent == 2.0, base * base, general)
    result = tl.where(exponent == 1.0, base, result)
    return tl.where(exponent == 0.0, 1.0, result)


@triton.jit
def join_float(hi, lo, ACC: tl.constexpr):
    """A host float passed as two fp32 halves (``_config.split_float``: Triton passes Python floats as
    fp32), rejoined in ACC: exact to about 48 bits, so float64 kernels keep their parameters."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def sqrt_rn(x):
    """sqrt(x) correctly rounded, as torch's: float32's ``tl.sqrt`` is approximate on the GPU
    (``sqrt.approx``), float64's is correctly rounded already (``sqrt_rn`` takes float32 only)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def div_rn(x, y):
    """x / y correctly rounded, as torch's: float32's ``/`` is ``div.full.f32`` on the GPU (up to 2 ulp),
    float64's is correctly rounded already. x and y of one dtype (broadcast shapes)."""
    if x.dtype == tl.float32:
        return tl.div_rn(x, y)
    else:
        return x / y


@triton.jit
def reciprocal_rn(x):
    """1 / x correctly rounded, for a scalar computed once per program: a division of every element by x
    then becomes a product by this (one more rounding, < 1 ulp, against ``div.full.f32``'s 2)."""
    return div_rn(tl.full([], 1.0, x.dtype), x)


@triton.jit
def offset64(n, k):
    """n * k as a 64-bit element offset. Integer arguments below 2**31 arrive in a kernel as int32, and so
    does a product of them: 3 * n wraps from n = 715,827,883. (``n``: a runtime argument or constexpr:
    ``tl.cast``: a value-specialised 1 arrives as a constexpr, which has no ``.to``)."""
    return tl.cast(n, tl.int64) * k


@triton.jit
def div_by_count(x, n):
    """x / n for an integer argument n (a size; a constexpr where Triton specialised it), correctly rounded."""
    return div_rn(x, tl.cast(n, x.dtype))


# ----------------------------------------------------------------------------------------------------
# float-float ("double-single") arithmetic: a value as an unevaluated sum hi + lo of two floats of the
# ACC dtype, |lo| <= ulp(hi) / 2, about 48 bits in float32. Error-free transformations (Knuth's two-sum,
# the FMA product). Triton never reassociates, but it contracts a product and an add that reads it into
# one FMA (fp fusion is on by default): a rounded product p = a * b that two_prod's error term describes
# must never be an fmul, or every add of p becomes fma(a, b, .) and the error is counted twice (compiled
# for sm_90 the cosine gradients fell back to plain float32 accuracy). two_prod therefore makes p with
# fma(a, b, 0), which LLVM cannot turn back into an fmul (it differs for a product of -0).
# Used where float32 loses to torch by cancellation (the cosine losses' gradients) and float64 would cost
# the FP64 rate of consumer GPUs (1/64).
# Under the interpreter ``tl.fma`` must round once: fusedloss/bench/interpreter.py patches it.
# A result that overflows is (inf, 0), as a plain float would be: an error term of an infinite value
# (inf - inf) would otherwise turn it into NaN where torch returns a number.
# ----------------------------------------------------------------------------------------------------

@triton.jit
def _finite(x):
    return x - x == 0  # False for +-inf and NaN


@triton.jit
def two_sum(a, b):
    """(s, e) with s = fl(a + b) and s + e = a + b exactly."""
    s = a + b
    b_part = s - a
    return s, tl.where(_finite(s), (a - (s - b_part)) + (b - b_part), 0.0)


@triton.jit
def _renormalize(s, e):
    """Fast two-sum for |s| >= |e| (or s = 0): the pair as hi + lo with |lo| <= ulp(hi) / 2."""
    hi = s + e
    return hi, tl.where(_finite(hi), e - (hi - s), 0.0)


@triton.jit
def two_prod(a, b):
    """(p, e) with p = fl(a * b) and p + e = a * b exactly (the FMA computes a * b - p rounded once: exact).
    p as fma(a, b, 0), not a * b: the compiler cannot contract it into the adds that read it (see above)."""
    p = tl.fma(a, b, tl.zeros_like(a))
    return p, tl.where(_finite(p), tl.fma(a, b, -p), 0.0)


@triton.jit
def ff_add(a_hi, a_lo, b_hi, b_lo):
    """(a + b) as a float-float pair (the accurate sum: relative error ~2 ulp of 48 bits)."""
    s, e = two_sum(a_hi, b_hi)
    t, f = two_sum(a_lo, b_lo)
    s, e = _renormalize(s, e + t)
    return _renormalize(s, e + f)


@triton.jit
def ff_mul(a_hi, a_lo, b_hi, b_lo):
    """(a * b) as a float-float pair."""
    p, e = two_prod(a_hi, b_hi)
    return _renormalize(p, e + tl.where(_finite(p), a_hi * b_lo + a_lo * b_hi, 0.0))


@triton.jit
def ff_div(a_hi, a_lo, b_hi, b_lo):
    """(a / b) as a float-float pair: the quotient of the high parts (correctly rounded) corrected by the
    remainder. Exact when a / b is a float (equal or opposite vectors' cosines stay exactly +-1)."""
    q = div_rn(a_hi, b_hi)
    p, e = two_prod(q, b_hi)
    remainder = tl.where(_finite(q) & _finite(b_hi), ((a_hi - p) - e + a_lo) - q * b_lo, 0.0)
    return _renormalize(q, div_rn(remainder, b_hi))


@triton.jit
def ff_sqrt(a_hi, a_lo):
    """sqrt(a) as a float-float pair (0 for a = 0): the correctly rounded root corrected by the remainder.
    Exact for an exact square: sqrt(fl(x^2)) = |x| in binary floating point."""
    root = sqrt_rn(a_hi)
    p, e = two_prod(root, root)
    correction = div_rn((a_hi - p) - e + a_lo, tl.where(root == 0, 1.0, 2.0 * root))
    return _renormalize(root, tl.where((root == 0) | ~_finite(root), 0.0, correction))


@triton.jit
def ff_row_sum(hi, lo, WIDTH: tl.constexpr):
    """The float-float sum of each row of [rows, WIDTH] pairs (WIDTH a power of two): a pairwise tree of
    ff_add, adjacent elements first (fixed order: deterministic). Written as halvings, not ``tl.reduce``
    with a combine function, which the interpreter runs one element at a time in Python."""
    if WIDTH == 1:
        return tl.reshape(hi, [hi.shape[0]]), tl.reshape(lo, [lo.shape[0]])
    else:
        even_hi, odd_hi = tl.split(tl.reshape(hi, [hi.shape[0], WIDTH // 2, 2]))
        even_lo, odd_lo = tl.split(tl.reshape(lo, [lo.shape[0], WIDTH // 2, 2]))
        half_hi, half_lo = ff_add(even_hi, even_lo, odd_hi, odd_lo)
        return ff_row_sum(half_hi, half_lo, WIDTH // 2)


@triton.jit
def ff_mul_float(a_hi, a_lo, b):
    """(a * b) for a pair a and a float b, as a pair."""
    p, e = two_prod(a_hi, b)
    return _renormalize(p, e + tl.where(_finite(p), a_lo * b, 0.0))


@triton.jit
def online_softmax_stats(m, d, e, q, z, ENTROPY: tl.constexpr, SQ_SUM: tl.constexpr):
    """One column block of an online log-sum-exp (running max m, running sum d of exp(z - m); z a
    [BLOCK_R, BLOCK_V] block, masked lanes -inf) plus, with ENTROPY, e = sum exp(z - m)(z - m), moved to
    the new max as the max grows: e <- exp(m - m') (e - (m' - m) d) (lanes of -inf add nothing: their 0 * -inf would be NaN); with SQ_SUM,
    q = sum exp(z - m)**2, moved by exp(m - m')**2 (the row's max adds 1: q >= 1, no underflow that counts).
    Without either, the log-sum-exp alone."""
    m_new = tl.maximum(m, tl.max(z, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    w = tl.exp(z - m_safe[:, None])
    if ENTROPY:
        shift = tl.where(d > 0, (m_safe - m) * d, 0.0)
        terms = tl.where(w > 0, w * (z - m_safe[:, None]), 0.0)
        e = alpha * (e - shift) + tl.sum(terms, axis=1)
    if SQ_SUM:
        q = (alpha * alpha) * q + tl.sum(w * w, axis=1)
    d = alpha * d + tl.sum(w, axis=1)
    return m_new, d, e, q
