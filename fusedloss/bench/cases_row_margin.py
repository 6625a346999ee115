"""Benchmark entries of the row-margin family: margin losses over classes, embedding losses and distances,
rank losses.

Margin losses over classes at N = 16384 rows, C in {100, 1000, 32000}; embedding losses at N = 16384,
D in {128, 1024, 8192}; the rank losses over groups of one positive and 3 negatives; 64 x 301 through
the traffic meter. grad_tensors: the scores or embeddings (targets are data; multilabel_soft_margin's
target is a label).
"""
import torch

from .entry import Inputs, LossBench, eager_reference
from .inputs import binary, class_index, class_lists, normal, positional, row_sign


def rank_groups(shape, dtype, device):
    """(y_pred, y_true) of ``shape`` (B * 4, 1): groups of a positive (label 1) and 3 negatives (label 0)."""
    y_pred = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
    y_true = (torch.arange(shape[0], device=device) % 4 == 0).to(dtype).reshape(shape)
    return Inputs((y_pred, y_true), {}, (y_pred,))


def rank_hinge_minimal_bytes(inputs, backward):
    """The hinge reads the scores (y_true is accepted and unused) and writes their gradient."""
    y_pred = inputs.args[0]
    return y_pred.numel() * y_pred.element_size() * (2 if backward else 1)


_MARGIN_SHAPES = dict(gpu_shapes=[(16384, 100), (16384, 1000), (16384, 32000)], quick_shapes=[(16384, 1000)],
                      cpu_shapes=[(512, 1000)], traffic_shapes=[(64, 301)])
_EMBEDDING_SHAPES = dict(gpu_shapes=[(16384, 128), (16384, 1024), (16384, 8192)], quick_shapes=[(16384, 1024)],
                         cpu_shapes=[(512, 1024)], traffic_shapes=[(64, 301)])
_RANK_SHAPES = dict(gpu_shapes=[(4 * 2**16, 1), (4 * 2**20, 1)], quick_shapes=[(4 * 2**16, 1)],
                    cpu_shapes=[(4 * 2**12, 1)], traffic_shapes=[(4 * 64, 1)])

# torch's CPU kernels of these two have no 16-bit versions: float32 first, the dtype the CPU runs (and the
# traffic meter) use
_FLOAT32_FIRST = (torch.float32, torch.bfloat16)

ENTRIES = [
    LossBench(name="multi_margin_loss", family="row margin", make_inputs=positional(normal, class_index),
              dtypes=_FLOAT32_FIRST, **_MARGIN_SHAPES),
    LossBench(name="multilabel_margin_loss", family="row margin", make_inputs=positional(normal, class_lists),
              dtypes=_FLOAT32_FIRST, **_MARGIN_SHAPES),
    LossBench(name="multilabel_soft_margin_loss", family="row margin", make_inputs=positional(normal, binary),
              **_MARGIN_SHAPES),
    LossBench(name="cosine_embedding_loss", family="row margin",
              make_inputs=positional(normal, normal, row_sign, grad=(0, 1)), **_EMBEDDING_SHAPES),
    LossBench(name="triplet_margin_loss", family="row margin",
              make_inputs=positional(normal, normal, normal, grad=(0, 1, 2)), **_EMBEDDING_SHAPES),
    LossBench(name="triplet_margin_with_distance_loss", family="row margin", kwargs={"swap": True},
              make_inputs=positional(normal, normal, normal, grad=(0, 1, 2)), **_EMBEDDING_SHAPES),
    LossBench(name="pairwise_distance", family="row margin", sum_output=True,
              make_inputs=positional(normal, normal, grad=(0, 1)), **_EMBEDDING_SHAPES),
    LossBench(name="cosine_similarity", family="row margin", sum_output=True,
              make_inputs=positional(normal, normal, grad=(0, 1)), **_EMBEDDING_SHAPES),
    LossBench(name="rank_hinge_loss", family="row margin", kwargs={"num_neg": 3}, make_inputs=rank_groups,
              reference=eager_reference("rank_hinge_loss"), minimal=rank_hinge_minimal_bytes, **_RANK_SHAPES),
    LossBench(name="rank_cross_entropy_loss", family="row margin", kwargs={"num_neg": 3}, make_inputs=rank_groups,
              reference=eager_reference("rank_cross_entropy_loss"), **_RANK_SHAPES),
]
