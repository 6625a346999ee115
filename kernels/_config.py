"""Block-size heuristics shared by every launcher (one place, not one per kernel file).

Sizes are powers of two chosen from the problem size; ``num_warps`` follows the tile size. No autotuning:
the figures behind these choices are in bench/NOTES.md.
"""
import os

import torch
import triton

# Elements one program holds per tile. 16 KB of fp32 (4096) keeps registers free for the online softmax
# state on an H100 without spilling; 16-bit inputs get the same bytes per tile.
_ROW_TILE_BYTES = 16384
_POINTWISE_BLOCK = 4096


def interpreting():
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def num_warps_for(tile_elements):
    """Warps per program: about 8-16 elements per thread."""
    if tile_elements >= 8192:
        return 16
    if tile_elements >= 2048:
        return 8
    if tile_elements >= 512:
        return 4
    return 2


def softmax_rows_tile(n_classes, n_spatial, element_size):
    """(BLOCK_R, BLOCK_C, num_warps) for a [rows x classes] tile of the softmax-rows kernels.

    Classes contiguous (n_spatial == 1): one row per program with a wide class block, several rows per
    program when C is small. Classes strided by n_spatial (inputs (N, C, d1..dk)): consecutive spatial
    positions are contiguous, so the tile is tall (many rows) and narrow (few classes).
    """
    max_tile = max(_ROW_TILE_BYTES // max(element_size, 2), 1024)
    classes_pow2 = triton.next_power_of_2(max(n_classes, 1))
    if n_spatial == 1:
        block_c = min(classes_pow2, max_tile)
        block_r = max(1, min(16, 2048 // block_c))
    else:
        block_c = min(classes_pow2, 16)
        block_r = max(1, min(128, max_tile // (4 * block_c)))
    return block_r, block_c, num_warps_for(block_r * block_c)


def pointwise_block(n_elements):
    """(BLOCK, num_warps) for the flat pointwise kernels."""
    block = min(_POINTWISE_BLOCK, triton.next_power_of_2(max(n_elements, 1)))
    block = max(block, 128)
    return block, num_warps_for(block)


def split_float(value):
    """(hi, lo) float32 halves of a Python float: hi + lo carries ~48 bits, enough for float64 kernels."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    return hi, float(torch.tensor(value - hi, dtype=torch.float32))
