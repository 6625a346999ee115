"""Block-size heuristics shared by every launcher (one place, not one per kernel file).

Sizes are powers of two chosen from the problem size; ``num_warps`` follows the tile size. No autotuning:
the figures behind these choices are in bench/NOTES.md.
"""
import functools
import math
import os
import struct

import triton

_POINTWISE_BLOCK = 4096


def plan_cache(plan):
    """Memoise a launch plan (grid, num_warps, constexprs, and where a family has them, the kernel's scalar
    arguments: strides, sizes, split floats) by its signature: a repeated call does no heuristic work.
    Plans depend on sizes, strides, dtypes and options only, never on tensor values."""
    return functools.lru_cache(maxsize=4096)(plan)


def interpreting():
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


RBLOCK = 1024  # partial sums the last program of a grid reduction reads per step (kernels/_reduce.py)


def num_warps_for(tile_elements):
    """Warps per program: about 8-16 elements per thread."""
    if tile_elements >= 8192:
        return 16
    if tile_elements >= 2048:
        return 8
    if tile_elements >= 512:
        return 4
    return 2


def softmax_rows_tile(n_classes, n_spatial, element_size, gather_only=False, per_class_sums=False, token_stats=False,
                      write_grad=False):
    """(BLOCK_R, BLOCK_C, num_warps) for a [rows x classes] tile of the softmax-rows kernels.

    Classes contiguous (n_spatial == 1): one row per program with a wide class block, several rows per
    program when C is small. The H100 sweep (bench/NOTES.md): plain cross entropy is 1-3% faster with
    16384-element blocks than 4096-8192; with label smoothing or soft targets (``per_class_sums``: two more
    running sums and a weight load per element) 4096 elements and 4 warps are 10-25% faster in the forward.
    float64 tiles are half as wide (fusedloss/buildcheck.py: at the float32 widths its softcap, smoothing
    and grad-in-forward kernels spilled).
    Classes strided by n_spatial (inputs (N, C, d1..dk)): consecutive spatial positions are contiguous,
    so the tile is tall (many rows) and narrow (few classes). ``gather_only`` (the NLL forward reads one
    element per row): many rows per program. ``token_stats`` (four more running sums and the target's
    running values): blocks of at most 8192 classes (2048 float64), 16 elements per thread, 8 with per-class
    sums, 4 in float64 (fusedloss/buildcheck.py: 64 per thread with a softcap took 145 registers on sm_90; 32 spilled
    16-104 bytes on sm_100; 16 with smoothing, 24 bytes on sm_100; float64 at 16, 158-227 registers on sm_80).
    The class-strided layout with a gradient written in the forward (``write_grad``, the LM-head chunks of a
    K-dimensional head) or token statistics: at most 32 rows at 4 warps (128 x 16 at 2 warps spilled 848-1464
    bytes, 32 x 16 at 2 warps 8). Under the interpreter tiles stop at 4096 elements so that
    the tests' small odd shapes still cross column blocks.
    """
    if gather_only:
        return 256, 1, 4
    max_tile = 4096 if interpreting() or per_class_sums else 8192 if token_stats else 16384
    if element_size == 8 and not interpreting():  # float64: half the tile (a quarter with token statistics)
        max_tile //= 4 if token_stats else 2
    classes_pow2 = triton.next_power_of_2(max(n_classes, 1))
    if n_spatial == 1:
        block_c = min(classes_pow2, max_tile)
        block_r = max(1, min(16, 2048 // block_c))
    else:
        block_c = min(classes_pow2, 16)
        block_r = max(1, min(32 if token_stats or write_grad else 128, max_tile // (4 * block_c)))
    tile_bytes = block_r * block_c * element_size
    if per_class_sums:
        num_warps = max(2, min(4, tile_bytes // 2048))
    else:
        num_warps = max(2, min(16, tile_bytes // 4096))
    if token_stats:
        per_thread = 4 if element_size == 8 else 8 if per_class_sums else 16
        num_warps = max(num_warps, min(16, block_r * block_c // (32 * per_thread)))
    if n_spatial > 1 and (token_stats or write_grad):
        num_warps = max(num_warps, 4)
    return block_r, block_c, num_warps


def row_margin_tile(loss, n_cols, element_size):
    """(BLOCK_R, BLOCK_D, BLOCK_T, ONE_BLOCK, num_warps) for a [rows x D] tile of the row-margin kernels.

    Rows of up to 8192 elements (16-bit), 4096 (32-bit) or 2048 (float64) are one tile (ONE_BLOCK: an embedding row is read once and
    its gradient computed from registers); small rows share a program (about 2048
    elements a tile). multilabel_margin: one row per program and a [BLOCK_T targets x BLOCK_D classes]
    tile of hinge terms, so its tile is BLOCK_T times narrower. The rank losses hold a whole group (one
    positive and its negatives) in one tile. Not yet measured on a GPU (bench/NOTES.md). Under the
    interpreter rows stop at 256 elements and BLOCK_T at 8, so the tests' small odd shapes cross blocks.
    """
    cols_pow2 = triton.next_power_of_2(max(n_cols, 1))
    max_row = 256 if interpreting() else (8192 if element_size <= 2 else 4096 if element_size == 4 else 2048)
    if loss == "rank_hinge" or loss == "rank_cross_entropy":
        block_d = cols_pow2
        block_r = max(1, min(256, 2048 // block_d))
        return block_r, block_d, 1, True, num_warps_for(block_r * block_d)
    if loss == "multilabel_margin":  # 8 x 256 at 4 warps (fusedloss/buildcheck.py: 16 x 256 at 8 warps spilled)
        block_t = min(8, cols_pow2)
        block_d = min(cols_pow2, max(16, (1024 if interpreting() else 2048) // block_t))
        return 1, block_d, block_t, cols_pow2 <= block_d, num_warps_for(block_t * block_d // 2)
    if loss == "cosine_embedding" or loss == "cosine_similarity":
        # float-float gradients hold ~10 values per element: 8 elements per thread, 4 in float64
        # (fusedloss/buildcheck.py: at 16, a 4096-wide tile at 8 warps, 176-228 registers; float64 at 8,
        # 170-182); rows up to 4096 (2048 float64) in one tile; at most 2 rows a tile (with 4-16, Triton laid
        # the warps along the row and every thread ran every row's float-float finish: 178-255 registers at
        # D = 100-512)
        block_d = min(cols_pow2, max_row if interpreting() else 4096 if element_size <= 4 else 2048)
        # (the interpreter: up to 16 rows a tile, the same code in ~8x fewer programs)
        block_r = max(1, min(16 if interpreting() else 2, 2048 // block_d))
        per_thread = 4 if element_size == 8 else 8
        return block_r, block_d, 1, cols_pow2 <= block_d, max(2, min(16, block_r * block_d // (32 * per_thread)))
    block_d = min(cols_pow2, max_row)
    block_r = max(1, min(16, 2048 // block_d))
    return block_r, block_d, 1, cols_pow2 <= block_d, num_warps_for(block_r * block_d)


def distribution_rows_tile(n_cols, element_size, two_rows):
    """(BLOCK_R, BLOCK_V, num_warps) for the distribution losses (kernels/distribution_rows.py): a
    [rows x vocabulary] tile of each operand, half as wide when two rows (student, teacher) are read side
    by side; several rows per program for small vocabularies; float64 half as wide and at most 8 warps (16
    warps cap a thread at 128 registers: the mixed divergence's gradient spilled). Not yet measured on a
    GPU (bench/NOTES.md).
    Under the interpreter tiles stop at 512 elements so that the tests' small odd shapes cross blocks."""
    max_tile = 512 if interpreting() else (4096 if two_rows else 8192) // (2 if element_size == 8 else 1)
    block_v = min(triton.next_power_of_2(max(n_cols, 1)), max_tile)
    block_r = max(1, min(16, 2048 // block_v)) if not interpreting() else max(1, min(4, 512 // block_v))
    num_warps = num_warps_for(block_r * block_v * max(element_size, 2) // 2)
    return block_r, block_v, min(num_warps, 8) if element_size == 8 else num_warps  # float64: no spills


@functools.lru_cache(maxsize=1024)
def pointwise_block(n_elements, heavy=False):
    """(BLOCK, num_warps) for the flat pointwise kernels (cached: it runs on every launch). ``heavy`` (float64,
    or a formula of many transcendentals): half the block at the same warps, 8 elements per thread instead
    of 16 (fusedloss/buildcheck.py: at 16 the focal loss took 170-210 registers, float64 formulas spilled)."""
    block = min(_POINTWISE_BLOCK // (2 if heavy else 1), triton.next_power_of_2(max(n_elements, 1)))
    block = max(block, 128)
    return block, num_warps_for(block)


_FLOAT32 = struct.Struct("f")


def _round_to_float32(value):
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:  # beyond float32's range
        return math.copysign(math.inf, value)


@functools.lru_cache(maxsize=1024)
def split_float(value):
    """(hi, lo) float32 halves of a Python float: hi + lo carries ~48 bits, enough for float64 kernels.
    Pure Python and cached: it runs on every launch (torch.tensor-based rounding cost 12 us a call)."""
    hi = _round_to_float32(value)
    lo = _round_to_float32(value - hi) if math.isfinite(hi) else 0.0
    return hi, lo
