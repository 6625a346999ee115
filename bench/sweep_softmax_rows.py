"""Tile sweep for the softmax-rows kernels on a GPU: which (BLOCK_R, BLOCK_C, num_warps) is fastest.

    python bench/sweep_softmax_rows.py            # prints tables; the chosen heuristic is in kernels/_config.py

For each option set and LLM shape it times the forward kernel, the backward kernel, and the single-pass
forward that also writes the gradient (grad_in_forward), median of CUDA events, and reports GB/s
against the bytes each must move (forward: the logits once; backward and single pass: the logits read
once and the gradient written once).
"""
import itertools
import sys

import torch

from fusedloss.bench.harness import copy_bandwidth_gbps, time_fn
from fusedloss.kernels import softmax_rows as sr

SHAPES = [(16384, 32000), (8192, 128256)]
TILES = [(1, 16384, 8), (1, 16384, 16), (1, 8192, 8), (1, 4096, 4), (2, 8192, 8), (2, 8192, 16),
         (4, 4096, 8), (4, 4096, 16), (8, 2048, 8)]
OPTIONS = {"plain": dict(), "smoothing": dict(smoothing=0.1), "smoothing+weight": dict(smoothing=0.1, weight=True)}


def main():
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    bandwidth = copy_bandwidth_gbps("cuda")
    print(f"copy bandwidth {bandwidth:.0f} GB/s")
    original = sr.softmax_rows_tile
    for (n, c), dtype, option in itertools.product(SHAPES, [torch.bfloat16, torch.float32], OPTIONS):
        if dtype == torch.float32 and option != "plain":
            continue
        logits = torch.randn(n, c, device="cuda", dtype=dtype)
        target = torch.randint(0, c, (n,), device="cuda")
        weight = torch.rand(c, device="cuda", dtype=dtype) if OPTIONS[option].get("weight") else None
        smoothing = OPTIONS[option].get("smoothing", 0.0)
        grad = torch.empty_like(logits)
        g = torch.ones((), device="cuda")
        rows_view = (n, c, 1, (c, 1, 0), (1, 0, 0))  # (N, C, S, logits strides, target strides)
        nbytes = logits.numel() * logits.element_size()
        default = original(c, 1, logits.element_size())
        common = dict(ignore_index=-100, smoothing=smoothing, softcap=None, prob_target=False, input_is_logprob=False)
        rows = []
        for tile in TILES:
            sr.softmax_rows_tile = lambda *_, **__: tile
            for plan in (sr._fwd_plan, sr._bwd_plan):
                plan.cache_clear()
            try:
                def fwd(grad=None):
                    return sr.softmax_rows_fwd(logits, target, weight, rows_view, reduction="mean", out_dtype=dtype,
                                               out_shape=(n,), z_loss=0.0, save_for_backward=True, grad=grad,
                                               grad_strides=(c, 1, 0) if grad is not None else None, **common)
                _, work = fwd()
                bwd = lambda: sr.softmax_rows_bwd(logits, target, weight, rows_view, work, g, (0, 0), grad,  # noqa: E731
                                                  (c, 1, 0), False, **{k: v for k, v in common.items()})
                t_fwd, t_bwd = time_fn(fwd, "cuda"), time_fn(bwd, "cuda")
                t_single = time_fn(lambda: fwd(grad), "cuda") if weight is None else float("nan")
            except Exception as exc:  # too many registers / shared memory for this tile
                print(f"  {tile}: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            rows.append((t_fwd + t_bwd, tile, t_fwd, t_bwd, t_single))
        sr.softmax_rows_tile = original
        for plan in (sr._fwd_plan, sr._bwd_plan):
            plan.cache_clear()
        rows.sort()
        print(f"\n{dtype} {n}x{c} {option}: default tile {default}; best two-pass first")
        for total, tile, t_fwd, t_bwd, t_single in rows:
            mark = " <- default" if tile == default else ""
            print(f"  {str(tile):<16} fwd {t_fwd:.3f} ms ({nbytes / t_fwd / 1e6:.0f} GB/s)  bwd {t_bwd:.3f} ms "
                  f"({2 * nbytes / t_bwd / 1e6:.0f} GB/s)  two-pass {total:.3f} ms "
                  f"({100 * 2 * nbytes / total / 1e6 / bandwidth:.0f}% of floor)  single pass {t_single:.3f} ms "
                  f"({100 * 2 * nbytes / t_single / 1e6 / bandwidth:.0f}% of floor){mark}")
        del logits, grad


if __name__ == "__main__":
    main()
