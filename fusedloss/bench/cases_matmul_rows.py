"""Benchmark entries of the matmul-rows family: linear_cross_entropy, linear_jsd_loss, linear_log_probs
(an LM head's GEMMs around the row kernels, in chunks of tokens: the logits one chunk at a time).

Shapes (N tokens, H features, C classes): Llama 3 (H 4096, C 128256) at 8192 and 16384 tokens, Gemma 2 2B
(H 2304, C 256000: the shape Cut Cross-Entropy publishes), a 32000-token vocabulary; 256 x 128 x 2048 for
the CPU fallback; 16 x 32 x 100 through the interpreter's traffic meter and the demo's parity (the
interpreter runs the row kernels, the CPU the GEMMs). bf16, the input and the head's weight
differentiated (linear_jsd_loss: the student's; the teacher frozen), 5% of the targets ignored.
"""
import torch
import torch.nn.functional as F

from . import peers
from .cases_distribution import NO_GRPO_PEER
from .entry import Inputs, LossBench, eager_reference
from .inputs import class_targets, hidden_and_head

# The traffic table's footnote for these entries: their ratio is not a fusion score like the others'.
TRAFFIC_NOTE = (
    "trades traffic for memory: the logits are made one chunk of rows at a time (at most 224 MiB; torch holds all "
    "N x C logits, their log-softmax and their gradient at once) by GEMMs counted as reading their operands and "
    "writing their outputs in full; the weight's gradient accumulates in float32 over the chunks (read and written "
    "once per chunk, cast at the end; on the CPU, where this meter runs, as four GEMMs on float32 copies per chunk, "
    "one mixed-precision GEMM on CUDA); linear_log_probs recomputes the logits in the backward (its grad_output is "
    "per token). The minimal counts no logits at all, and at an interpreter's shape the head (C x H) outweighs the "
    "tokens: judge these functions by peak memory and time on a GPU (bench, bench/NOTES.md), not by this ratio.")


def linear_cross_entropy_reference(input, linear_weight, target, **kwargs):
    """torch's reference path (F.linear_cross_entropy with options=None): the logits whole; also on
    torches without linear_cross_entropy."""
    return F.cross_entropy(F.linear(input, linear_weight), target, **kwargs)


def linear_cross_entropy_flops(inputs, backward):
    """2 N H C per GEMM: the logits (forward), dInput and dWeight (backward). Recomputing the logits in
    the backward (reduction 'none', CCE) is a 4th that this count leaves out: it is the floor."""
    x, w, _ = inputs.args
    return 2 * x.shape[0] * x.shape[1] * w.shape[0] * (3 if backward else 1)


def linear_cross_entropy_footprint(shape, element_size):
    """torch's reference path at its peak: the logits, their float32 log-softmax and gradient, plus the
    weight and its gradient."""
    n_rows, hidden, n_classes = shape
    return n_rows * n_classes * (element_size + 8) + 2 * n_classes * hidden * element_size


def linear_jsd_inputs(shape, dtype, device):
    n_rows, hidden, n_classes = shape
    scale = hidden ** 0.25
    x = (torch.randn(n_rows, hidden, device=device) / scale).to(dtype).requires_grad_()
    w = (torch.randn(n_classes, hidden, device=device) / scale).to(dtype).requires_grad_()
    xt = (torch.randn(n_rows, hidden, device=device) / scale).to(dtype)
    wt = (torch.randn(n_classes, hidden, device=device) / scale).to(dtype)
    return Inputs((x, w, xt, wt, class_targets((n_rows,), n_classes, device)), {}, (x, w))


def linear_jsd_flops(inputs, backward):
    """The student's logits (and, backward, its two gradient GEMMs) plus the frozen teacher's logits."""
    x, w, xt, wt, _ = inputs.args
    n, v = x.shape[0], w.shape[0]
    return 2 * n * v * (x.shape[1] * (3 if backward else 1) + xt.shape[1])


def linear_jsd_footprint(shape, element_size):
    """The reference at its peak: both logits, their float32 log-softmaxes and the student's gradient."""
    n_rows, hidden, n_classes = shape
    return n_rows * n_classes * (2 * element_size + 12) + 4 * n_classes * hidden * element_size


def linear_log_probs_flops(inputs, backward):
    """The logits, and backward: their recomputation and the two gradient GEMMs (four in all)."""
    x, w, _ = inputs.args
    return 2 * x.shape[0] * x.shape[1] * w.shape[0] * (4 if backward else 1)


_SHAPES = dict(gpu_shapes=[(8192, 4096, 128256), (8192, 2304, 256000)], quick_shapes=[(8192, 4096, 128256)],
               cpu_shapes=[(256, 128, 2048)], traffic_shapes=[(16, 32, 100)], dtypes=(torch.bfloat16,),
               traffic_note=TRAFFIC_NOTE)

ENTRIES = [
    LossBench(
        name="linear_cross_entropy", family="matmul rows", make_inputs=hidden_and_head,
        reference=linear_cross_entropy_reference, flops=linear_cross_entropy_flops,
        footprint=linear_cross_entropy_footprint,
        peers={"cuBLAS 3-GEMM floor": peers.three_gemm_floor, "torch chunked": peers.torch_chunked_linear_cross_entropy,
               "liger": peers.liger_fused_linear_cross_entropy, "cut-cross-entropy": peers.cut_cross_entropy},
        **dict(_SHAPES, gpu_shapes=[(8192, 4096, 128256), (16384, 4096, 128256), (8192, 2304, 256000),
                                    (16384, 4096, 32000)])),
    LossBench(name="linear_jsd_loss", family="matmul rows", make_inputs=linear_jsd_inputs, kwargs={"beta": 0.5},
              reference=eager_reference("linear_jsd_loss"), flops=linear_jsd_flops, footprint=linear_jsd_footprint,
              peers={"cuBLAS 4-GEMM floor": peers.four_gemm_floor, "liger": peers.liger_fused_linear_jsd,
                     "liger (chunked)": peers.liger_chunked_jsd}, **_SHAPES),
    LossBench(name="linear_log_probs", family="matmul rows", variant="entropy", make_inputs=hidden_and_head,
              kwargs={"with_entropy": True}, reference=eager_reference("linear_log_probs"), sum_output=True,
              flops=linear_log_probs_flops, footprint=linear_cross_entropy_footprint, peer_notes=NO_GRPO_PEER,
              **_SHAPES),
]
