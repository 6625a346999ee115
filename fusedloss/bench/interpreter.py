"""Triton's CPU interpreter as the tests and the CPU demo use it.

Triton 3.8's interpreter converts float32 to bfloat16 by truncation, while the GPU rounds to nearest
even: interpreted bf16 results would look up to one ulp worse than the kernels are. The test suite
(tests/conftest.py) and ``make demo`` patch the conversion so that bf16 figures judge the kernels, and
``tl.fma`` to round once as the GPU's does (``interpret_like_the_gpu``).

Its float32 ``exp``, ``log``, ``/`` and ``sqrt`` are numpy's, correctly rounded, where the GPU runs
approximate instructions (``ex2.approx``, ``div.full.f32``...). ``gpu_arithmetic(mode)`` makes the
interpreter compute them with the GPU instructions' documented error, all pushed one way or spread, so
the tests can prove a kernel's accuracy for the GPU's arithmetic, not numpy's (tests/conftest.py:
FUSEDLOSS_GPU_ARITHMETIC=up|down|spread runs the suite so; tests/test_gpu_arithmetic.py always does).
"""
import numpy as np


def round_float32_to_bfloat16(data):
    """float32 values (numpy) to bfloat16 bit patterns, rounded to nearest even as the GPU does
    (Triton 3.8's interpreter truncates); NaN stays a quiet NaN of the same sign."""
    bits = np.ascontiguousarray(data, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return rounded.astype(np.uint16).reshape(np.shape(data))


def round_bfloat16_like_the_gpu():
    """Patch the interpreter's float32 -> bfloat16 conversion (casts and stores) to round to nearest
    even, so bf16 checks judge the kernels, not the emulator's truncation (up to one ulp worse)."""
    from triton import language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    cast_impl, fp_to_fp = builder.cast_impl, builder.create_fp_to_fp

    def float32_to_bfloat16(src, dst_type):
        return src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16

    def rounded_cast(self, src, dst_type):
        if float32_to_bfloat16(src, dst_type):
            return interpreter.TensorHandle(round_float32_to_bfloat16(src.data), dst_type.scalar)
        return cast_impl(self, src, dst_type)

    def rounded_fp_to_fp(self, src, dst_type, rounding_mode):
        if float32_to_bfloat16(src, dst_type):
            return interpreter.TensorHandle(round_float32_to_bfloat16(src.data), dst_type.scalar)
        return fp_to_fp(self, src, dst_type, rounding_mode)

    builder.cast_impl = rounded_cast
    builder.create_fp_trunc = rounded_cast
    builder.create_fp_to_fp = rounded_fp_to_fp


# ------------------------------------------------------------------ the GPU's float32 arithmetic

GPU_ARITHMETIC_MODES = ("up", "down", "spread")

# What Triton 3.8 emits for float32 on NVIDIA GPUs (PTX of sm_80/sm_90, read from triton.compile on the
# CPU), and each instruction's documented largest error, in ulp of the result (CUDA Programming Guide,
# mathematical functions: exp2f and x/y without -prec-div 2, logf 1, sqrtf without -prec-sqrt 1,
# rsqrtf 2). ``tl.div_rn`` (div.rn.f32) and ``tl.sqrt_rn`` (sqrt.rn.f32) are correctly rounded, as are
# +, -, * (the PTX uses no .ftz on them; an a * b + c the compiler fuses into one FMA rounds once, which
# is not modelled) and every float64 operation but exp and log (libdevice, 1 ulp: not modelled).
EXP_ULPS = 2  # tl.exp: ex2.approx.f32 of fp32(x * fp32(log2 e)); the product's rounding is reproduced
EXP2_ULPS = 2  # tl.exp2: ex2.approx.ftz.f32
LOG_ULPS = 1  # tl.log, tl.log2: libdevice's __nv_logf / __nv_log2f (polynomials; subnormal inputs kept)
DIV_ULPS = 2  # float32 /: div.full.f32
SQRT_ULPS = 1  # tl.sqrt: sqrt.approx.ftz.f32
RSQRT_ULPS = 2  # tl.rsqrt: rsqrt.approx.ftz.f32

LOG2E_FLOAT32 = np.float32(1.4426950408889634)  # the constant the GPU multiplies by before ex2

_stack = []  # the active modes' (mode, seed), innermost last
_saved = {}  # the interpreter's own methods while a mode is active


def _float32(handle):
    from triton import language as tl

    return handle.dtype.scalar == tl.float32


def _push(exact, ulps, operation, operands, flush=False):
    """float64 results -> the float32 ``ulps`` ulp away from ``exact`` (the documented bound, reached) in the
    active mode's direction: every magnitude up ("up": x (1 + e) for every result, so that errors of
    one sign never cancel in a sum or a square), every one down, or up or down per element ("spread").
    Exact zeros, infinities and NaN stay exact (the instructions return them exactly); ``flush``:
    subnormal results become zeros of the same sign (.ftz)."""
    mode, seed = _stack[-1]
    exact = np.asarray(exact, dtype=np.float64)
    nearest = exact.astype(np.float32)
    # the floats at or below and at or above exact, then ``ulps`` steps outwards from the other side:
    # above is the largest float within ``ulps`` ulp of exact, below the smallest
    floor = np.where(nearest.astype(np.float64) > exact, np.nextafter(nearest, np.float32(-np.inf)), nearest)
    ceil = np.where(nearest.astype(np.float64) < exact, np.nextafter(nearest, np.float32(np.inf)), nearest)
    above, below = floor, ceil
    for _ in range(ulps):
        above, below = np.nextafter(above, np.float32(np.inf)), np.nextafter(below, np.float32(-np.inf))
    if mode == "spread":
        larger = _coin(seed, operation, operands, exact.shape)
    else:
        larger = np.full(exact.shape, mode == "up")
    pushed = np.where(larger == (exact > 0), above, below)
    pushed = np.where(np.isfinite(exact) & (exact != 0), pushed, nearest).astype(np.float32)
    if flush:
        pushed = _flush(pushed)
    return pushed.reshape(exact.shape)


def _coin(seed, operation, operands, shape):
    """The direction of each element in mode "spread" (True: magnitude up): a hash of the seed, the operation
    and the operands' bits, so that it looks random across elements but, as on a GPU, the same operation
    on the same values gives the same result (kernels stay deterministic; a recomputation matches what
    the forward saved)."""
    h = np.full(shape, np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(operation), dtype=np.uint64)
    for operand in np.broadcast_arrays(*operands):
        h = (h ^ np.asarray(operand, dtype=np.float32).view(np.uint32).astype(np.uint64)).reshape(shape)
        for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):  # splitmix64's mixer
            h = (h ^ (h >> np.uint64(shift))) * np.uint64(factor)
    return (h >> np.uint64(63)).astype(bool)


def _flush(values):
    """float32 subnormals to zeros of the same sign, as .ftz instructions read and write them."""
    values = np.asarray(values, dtype=np.float32)
    return np.where(np.abs(values) < np.finfo(np.float32).tiny, np.copysign(np.float32(0), values), values)


def _approximate_methods():
    """The InterpreterBuilder methods of the float32 operations whose GPU instruction is approximate."""
    from triton.runtime.interpreter import TensorHandle

    original = {name: getattr(_builder(), name)
                for name in ("create_exp", "create_exp2", "create_log", "create_log2", "create_fdiv",
                             "create_sqrt", "create_rsqrt")}

    def unary(name, gpu):
        def method(self, arg):
            if not _float32(arg):
                return original[name](self, arg)
            with np.errstate(all="ignore"):
                return TensorHandle(gpu(np.asarray(arg.data, dtype=np.float32)), arg.dtype.scalar)
        return method

    def ex2(power, ulps, flush=False):
        # ex2.approx of +-0 (and of subnormals, which it reads as 0) is exactly 1 (PTX ISA's table)
        result = _push(np.exp2(power.astype(np.float64)), ulps, 1, (power,), flush)
        return np.where(np.abs(power) < np.finfo(np.float32).tiny, np.float32(1), result)

    def exp(x):
        return ex2(x * LOG2E_FLOAT32, EXP_ULPS)

    def exp2(x):
        return ex2(x, EXP2_ULPS, flush=True)

    def log(x):
        return _push(np.log(x.astype(np.float64)), LOG_ULPS, 2, (x,))

    def log2(x):
        return _push(np.log2(x.astype(np.float64)), LOG_ULPS, 3, (x,))

    def sqrt(x):
        return _push(np.sqrt(_flush(x).astype(np.float64)), SQRT_ULPS, 4, (x,), flush=True)

    def rsqrt(x):
        return _push(1.0 / np.sqrt(_flush(x).astype(np.float64)), RSQRT_ULPS, 5, (x,), flush=True)

    def fdiv(self, lhs, rhs):
        if not _float32(lhs):
            return original["create_fdiv"](self, lhs, rhs)
        with np.errstate(all="ignore"):
            exact = np.asarray(lhs.data, dtype=np.float64) / np.asarray(rhs.data, dtype=np.float64)
            return TensorHandle(_push(exact, DIV_ULPS, 6, (lhs.data, rhs.data)), lhs.dtype.scalar)

    patched = {"create_exp": unary("create_exp", exp), "create_exp2": unary("create_exp2", exp2),
               "create_log": unary("create_log", log), "create_log2": unary("create_log2", log2),
               "create_sqrt": unary("create_sqrt", sqrt), "create_rsqrt": unary("create_rsqrt", rsqrt),
               "create_fdiv": fdiv}
    return original, patched


def _builder():
    from triton.runtime import interpreter

    return interpreter.InterpreterBuilder


class gpu_arithmetic:
    """``with gpu_arithmetic(mode):`` Triton's interpreter computes float32 ``tl.exp``, ``tl.exp2``,
    ``tl.log``, ``tl.log2``, ``/``, ``tl.sqrt`` and ``tl.rsqrt`` as an NVIDIA GPU may: each result the
    documented bound of its instruction away from the correctly rounded one (numpy's), in the direction
    ``mode`` says: "up" (every magnitude up), "down", or "spread" (up or down per element, from a hash of
    ``seed`` and the operands: the same values always move the same way, as a GPU's results are
    deterministic). ``tl.exp`` first rounds x * log2(e) to float32, as the GPU does. ``tl.div_rn`` and
    ``tl.sqrt_rn`` stay correctly rounded, as on the GPU. Modes nest; leaving the outermost restores the
    interpreter's own arithmetic."""

    def __init__(self, mode, seed=0):
        if mode not in GPU_ARITHMETIC_MODES:
            raise ValueError(f"gpu_arithmetic mode {mode!r}: expected one of {', '.join(GPU_ARITHMETIC_MODES)}")
        self.mode, self.seed = mode, seed

    def __enter__(self):
        if not _patched:
            interpret_like_the_gpu()  # the GPU's bf16 rounding and single-rounding fma, as the tests have them
        if not _stack:
            original, patched = _approximate_methods()
            _saved.update(original)
            for name, method in patched.items():
                setattr(_builder(), name, method)
        _stack.append((self.mode, self.seed))
        return self

    def __exit__(self, *exc):
        _stack.pop()
        if not _stack:
            for name, method in _saved.items():
                setattr(_builder(), name, method)
            _saved.clear()
        return False


# ------------------------------------------------------------------ the GPU's fused multiply-add

def _fma_rounded_once(x, y, z):
    """float32 x * y + z rounded once, as the GPU's fma.rn.f32: the product is exact in float64, the sum is
    rounded to float64 towards odd (its error from two-sum decides), and a round-to-odd float64 rounds to
    the correct float32 (53 >= 24 + 2 bits)."""
    with np.errstate(all="ignore"):
        x64, y64, z64 = (np.asarray(v, dtype=np.float32).astype(np.float64) for v in (x, y, z))
        product = x64 * y64
        total = product + z64
        z_part = total - product
        error = (product - (total - z_part)) + (z64 - z_part)
        even = (total.view(np.int64) & 1) == 0
        towards = np.where(error > 0, np.inf, -np.inf)
        odd = np.where((error != 0) & even & np.isfinite(total), np.nextafter(total, towards), total)
        return odd.astype(np.float32)


def _split64(x):
    """Veltkamp's split of float64 x into two halves of 26 bits (hi + lo = x exactly)."""
    t = x * 134217729.0  # 2**27 + 1
    hi = t - (t - x)
    return hi, x - hi


def _fma64(x, y, z):
    """float64 x * y + z: the product exact as a pair (Dekker), added to z with the pair's error carried:
    exact for x * y - fl(x * y) (what two_prod asks), within an ulp otherwise."""
    with np.errstate(all="ignore"):
        x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
        product = x * y
        x_hi, x_lo = _split64(x)
        y_hi, y_lo = _split64(y)
        product_error = ((x_hi * y_hi - product) + x_hi * y_lo + x_lo * y_hi) + x_lo * y_lo
        total = product + z
        z_part = total - product
        sum_error = (product - (total - z_part)) + (z - z_part)
        exact = np.where(np.isfinite(product) & (np.abs(x) < 1e300) & (np.abs(y) < 1e300),
                         total + (sum_error + product_error), x * y + z)
        return exact


def fuse_multiply_add_like_the_gpu():
    """Patch the interpreter's ``tl.fma`` (it computes x * y + z in the operands' dtype, rounding twice) to
    round once in float32 and to carry the product's exact error in float64: the float-float helpers of
    kernels/_math.py take the product's rounding error from it, as the GPU's fma.rn gives it."""
    from triton import language as tl
    from triton.runtime.interpreter import TensorHandle

    builder = _builder()
    fma = builder.create_fma

    def rounded_once(self, x, y, z):
        if _float32(x) and _float32(y) and _float32(z):
            return TensorHandle(_fma_rounded_once(x.data, y.data, z.data), z.dtype.scalar)
        if x.dtype.scalar == tl.float64 and y.dtype.scalar == tl.float64 and z.dtype.scalar == tl.float64:
            return TensorHandle(_fma64(x.data, y.data, z.data), z.dtype.scalar)
        return fma(self, x, y, z)

    builder.create_fma = rounded_once


def patch_the_language_once_per_launch():
    """Speed only, no arithmetic: the interpreter patches ``triton.language`` at each launch (and restores it
    after) and again at every call of a ``@triton.jit`` helper inside the kernel, scanning the modules' hundreds
    of members each time (~0.7 ms a call: 60% of the interpreted float-float cosine kernel's time). A helper
    called while its modules are still patched by the launch now skips that scan; a launch patches as before."""
    import inspect

    from triton import language as tl
    from triton.runtime import interpreter

    original = interpreter._patch_lang
    if getattr(original, "fusedloss_once_per_launch", False):
        return

    def patch_lang(fn):
        langs = [value for value in fn.__globals__.values() if inspect.ismodule(value) and value in (tl, tl.core)]
        if langs and all(not tl.core.is_builtin(getattr(lang, "load", None)) for lang in langs):
            return interpreter._LangPatchScope()  # patched by the running launch, which restores it
        return original(fn)

    patch_lang.fusedloss_once_per_launch = True
    interpreter._patch_lang = patch_lang


_patched = []  # non-empty once interpret_like_the_gpu has run in this process


def interpret_like_the_gpu():
    """The patches the tests and the CPU demo apply: bf16 rounded to nearest even, ``tl.fma`` rounded once,
    the language patched once per launch (speed). Once per process (a second call does nothing)."""
    if _patched:
        return
    round_bfloat16_like_the_gpu()
    fuse_multiply_add_like_the_gpu()
    patch_the_language_once_per_launch()
    _patched.append(True)
