"""Triton's CPU interpreter as the tests and the CPU demo use it.

Triton 3.8's interpreter converts float32 to bfloat16 by truncation, while the GPU rounds to nearest
even: interpreted bf16 results would look up to one ulp worse than the kernels are. The test suite
(tests/conftest.py) and ``make demo`` patch the conversion so that bf16 figures judge the kernels.
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
