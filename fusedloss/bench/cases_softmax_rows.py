"""Benchmark entries of the softmax-rows family: cross_entropy (plain, and with label smoothing and class
weights), nll_loss.

Shapes (N rows, C classes): LLM vocabularies (32000, Llama 3's 128256, Gemma's 262144) at 4k-64k tokens
on a GPU; 512 x 32000 for the CPU fallback; 64 x 3001 (C odd: masked column blocks) through the
interpreter's traffic meter. The logits (or log-probabilities) are differentiated, 5% of the targets
ignored.
"""
import torch

from . import inputs, peers
from .entry import Inputs, LossBench


def weighted_cross_entropy_inputs(shape, dtype, device):
    base = inputs.logits_and_targets(shape, dtype, device)
    weight = torch.rand(shape[1], device=device, dtype=dtype) + 0.5
    return Inputs(base.args, {"weight": weight}, base.grad_tensors)


def nll_inputs(shape, dtype, device):
    n_rows, n_classes = shape
    logp = torch.randn(n_rows, n_classes, device=device, dtype=dtype).log_softmax(1).detach().requires_grad_()
    return Inputs((logp, inputs.class_targets((n_rows,), n_classes, device)), {}, (logp,))


def nll_minimal_bytes(inputs, backward):
    """NLL reads one log-probability per row (a gather) and the targets; its gradient is the full input."""
    logp, target = inputs.args
    grad = logp.numel() * logp.element_size() if backward else 0
    return target.numel() * (target.element_size() + logp.element_size()) + grad


_GPU_SHAPES = [(tokens, vocab) for vocab in (32000, 128256, 262144) for tokens in (4096, 16384, 65536)]
_VARIANTS = {
    "inplace": {"inplace_backward": True},
    "grad in forward": {"grad_in_forward": True},
    "grad in forward, inplace": {"grad_in_forward": True, "inplace_backward": True},
}
_NOTES = {"cut-cross-entropy": "fuses the classifier matmul (embeddings x weights -> loss), so it is not "
                               "comparable on precomputed logits; it belongs with linear_cross_entropy"}

ENTRIES = [
    LossBench(
        name="cross_entropy", family="softmax rows", make_inputs=inputs.logits_and_targets,
        gpu_shapes=_GPU_SHAPES, quick_shapes=[(16384, 32000), (8192, 128256)],
        cpu_shapes=[(512, 32000)], traffic_shapes=[(64, 3001)],
        peers={"liger": peers.liger_cross_entropy}, peer_notes=_NOTES, variants=_VARIANTS),
    LossBench(
        name="cross_entropy", family="softmax rows", variant="smoothing+weight",
        make_inputs=weighted_cross_entropy_inputs, kwargs={"label_smoothing": 0.1},
        gpu_shapes=[(16384, 32000), (16384, 128256)], quick_shapes=[(16384, 32000)],
        cpu_shapes=[(512, 32000)], traffic_shapes=[(64, 3001)], dtypes=(torch.bfloat16,),
        peers={"liger": peers.liger_cross_entropy}, peer_notes=_NOTES, variants=_VARIANTS),
    LossBench(
        name="nll_loss", family="softmax rows", make_inputs=nll_inputs, minimal=nll_minimal_bytes,
        gpu_shapes=[(16384, 32000), (16384, 128256)], quick_shapes=[(16384, 32000)],
        cpu_shapes=[(512, 32000)], traffic_shapes=[(64, 3001)], dtypes=(torch.bfloat16,)),
]
