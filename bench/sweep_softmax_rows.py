"""Tile sweep for the softmax-rows kernels on a GPU: which (BLOCK_C, num_warps) is fastest, per pass.

    python bench/sweep_softmax_rows.py            # prints a table; the chosen heuristic is in kernels/_config.py

Each configuration times the forward kernel and the backward kernel separately (median of CUDA events)
at LLM shapes, and reports GB/s against the bytes the pass must move (forward: the logits once;
backward: the logits read once and the gradient written once).
"""
import itertools
import sys

import torch

from fusedloss.bench.harness import copy_bandwidth_gbps, time_fn
from fusedloss.kernels import softmax_rows as sr

SHAPES = [(16384, 32000), (8192, 128256), (4096, 262144)]
BLOCKS = [1024, 2048, 4096, 8192, 16384]
WARPS = [4, 8, 16, 32]


def main():
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    bandwidth = copy_bandwidth_gbps("cuda")
    print(f"copy bandwidth {bandwidth:.0f} GB/s")
    original = sr.softmax_rows_tile
    for (n, c), dtype in itertools.product(SHAPES, [torch.bfloat16, torch.float32]):
        logits = torch.randn(n, c, 1, device="cuda", dtype=dtype)
        target = torch.randint(0, c, (n, 1), device="cuda")
        grad = torch.empty_like(logits)
        g = torch.ones((), device="cuda").expand(n, 1)
        nbytes = logits.numel() * logits.element_size()
        default = original(c, 1, logits.element_size())
        rows = []
        for block_c, warps in itertools.product(BLOCKS, WARPS):
            sr.softmax_rows_tile = lambda *_: (1, block_c, warps)
            common = dict(ignore_index=-100, smoothing=0.0, softcap=None, prob_target=False, input_is_logprob=False)
            try:
                fwd = lambda: sr.softmax_rows_fwd(logits, target, None, z_loss=0.0, save_for_backward=True, **common)
                _, _, lse, p_coef = fwd()
                bwd = lambda: sr.softmax_rows_bwd(logits, target, None, lse, p_coef, g, None, grad, **common)
                t_fwd, t_bwd = time_fn(fwd, "cuda"), time_fn(bwd, "cuda")
            except Exception as exc:  # too many registers / shared memory for this tile
                print(f"  {block_c} x {warps}: {type(exc).__name__}")
                continue
            rows.append((t_fwd + t_bwd, block_c, warps, t_fwd, t_bwd))
        sr.softmax_rows_tile = original
        rows.sort()
        print(f"\n{dtype} {n}x{c}: default tile {default}; best first")
        for total, block_c, warps, t_fwd, t_bwd in rows[:6]:
            print(f"  BLOCK_C={block_c:>5} warps={warps:>2}  fwd {t_fwd:.3f} ms ({nbytes / t_fwd / 1e6:.0f} GB/s)  "
                  f"bwd {t_bwd:.3f} ms ({2 * nbytes / t_bwd / 1e6:.0f} GB/s)  fwd+bwd {total:.3f} ms "
                  f"({100 * 3 * nbytes / total / 1e6 / bandwidth:.0f}% of copy bandwidth for 3 passes)")
        for total, block_c, warps, t_fwd, t_bwd in rows:
            if (1, block_c, warps) == default:
                print(f"  default: fwd {t_fwd:.3f} bwd {t_bwd:.3f} total {total:.3f} ms")
        del logits, grad


if __name__ == "__main__":
    main()
