"""Small ``@triton.jit`` math helpers built from core ``tl`` ops only.

Under Triton's interpreter the functions of ``triton.language.extra.libdevice`` are unavailable, so the
few transcendental functions the losses need beyond ``exp``/``log``/``sigmoid`` are written here once,
with their precision stated (measured against float64 over [-3, 3] in float32 arithmetic).
"""
import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """tanh(x), max relative error 2.0e-7 in float32, about 1e-15 in float64.

    Far from 0: sign(x) * (1 - e) / (1 + e) with e = exp(-2|x|) (no overflow). Near 0, where 1 - e
    cancels: the odd Taylor series to x**15, used below |x| = 0.55 in float32 (truncation 1e-8 there)
    and below 0.1 in float64 (truncation 1e-20; the cancellation above it costs < 1e-15).
    """
    if x.dtype == tl.float64:
        near_zero = 0.1
    else:
        near_zero = 0.55
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    far = (1.0 - e) / (1.0 + e)
    x2 = x * x
    p = -929569.0 / 638512875.0
    p = 21844.0 / 6081075.0 + x2 * p
    p = -1382.0 / 155925.0 + x2 * p
    p = 62.0 / 2835.0 + x2 * p
    p = -17.0 / 315.0 + x2 * p
    p = 2.0 / 15.0 + x2 * p
    p = -1.0 / 3.0 + x2 * p
    p = 1.0 + x2 * p
    t = tl.where(ax < near_zero, ax * p, far)
    return tl.where(x < 0, -t, t)


@triton.jit
def log1p(x):
    """log(1 + x) for x > -1, accurate to a few ulp also for tiny |x| (where log(1 + x) rounds to 0).

    u = 1 + x rounds; log(u) - ((u - 1) - x) / u corrects for that rounding to first order.
    """
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) - ((u - 1.0) - x) / u)
