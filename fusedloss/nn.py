"""Drop-in replacements for the ``torch.nn`` loss modules.

Each subclasses its torch module (so ``isinstance`` checks, ``state_dict`` buffers and ``repr`` stay
the same), keeps its constructor arguments and adds the keyword-only extras of ``fusedloss.functional``.
"""
from typing import Optional, Union

import torch
from torch import Tensor

from . import functional as F

__all__ = ["CrossEntropyLoss", "NLLLoss",
           "BCELoss", "BCEWithLogitsLoss", "SmoothL1Loss", "HuberLoss", "L1Loss", "MSELoss", "SoftMarginLoss",
           "KLDivLoss", "PoissonNLLLoss", "GaussianNLLLoss", "MarginRankingLoss", "HingeEmbeddingLoss",
           "SigmoidFocalLoss",
           "MultiMarginLoss", "MultiLabelMarginLoss", "MultiLabelSoftMarginLoss", "CosineEmbeddingLoss",
           "TripletMarginLoss", "TripletMarginWithDistanceLoss", "PairwiseDistance", "CosineSimilarity", "CTCLoss",
           "RankHingeLoss", "RankCrossEntropyLoss"]


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` on the fused kernels; extras as in ``fusedloss.functional.cross_entropy``."""

    def __init__(self, weight: Optional[Tensor] = None, size_average=None, ignore_index: int = -100,
                 reduce=None, reduction: str = "mean", label_smoothing: float = 0.0, *,
                 z_loss: float = 0.0, softcap: Optional[float] = None, inplace_backward: bool = False,
                 grad_in_forward: bool = False):
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_backward = inplace_backward
        self.grad_in_forward = grad_in_forward

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               z_loss=self.z_loss, softcap=self.softcap,
                               inplace_backward=self.inplace_backward, grad_in_forward=self.grad_in_forward)

    def extra_repr(self) -> str:
        extras = [f"{name}={getattr(self, name)}" for name, default in
                  (("z_loss", 0.0), ("softcap", None), ("inplace_backward", False), ("grad_in_forward", False))
                  if getattr(self, name) != default]
        return ", ".join(extras)


class NLLLoss(torch.nn.NLLLoss):
    """``torch.nn.NLLLoss`` with the gather and the gradient on the Triton kernels."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


# ------------------------------------------------------------------ pointwise losses (one fused pass)


class BCELoss(torch.nn.BCELoss):
    """``torch.nn.BCELoss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` on the fused pointwise kernel (sigmoid fused in)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class SmoothL1Loss(torch.nn.SmoothL1Loss):
    """``torch.nn.SmoothL1Loss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(torch.nn.HuberLoss):
    """``torch.nn.HuberLoss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class L1Loss(torch.nn.L1Loss):
    """``torch.nn.L1Loss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class MSELoss(torch.nn.MSELoss):
    """``torch.nn.MSELoss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class SoftMarginLoss(torch.nn.SoftMarginLoss):
    """``torch.nn.SoftMarginLoss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.soft_margin_loss(input, target, reduction=self.reduction)


class KLDivLoss(torch.nn.KLDivLoss):
    """``torch.nn.KLDivLoss`` on the fused pointwise kernel (every reduction, 'batchmean' included)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class PoissonNLLLoss(torch.nn.PoissonNLLLoss):
    """``torch.nn.PoissonNLLLoss`` on the fused pointwise kernel."""

    def forward(self, log_input: Tensor, target: Tensor) -> Tensor:
        return F.poisson_nll_loss(log_input, target, log_input=self.log_input, full=self.full, eps=self.eps,
                                  reduction=self.reduction)


class GaussianNLLLoss(torch.nn.GaussianNLLLoss):
    """``torch.nn.GaussianNLLLoss`` on the fused pointwise kernel (gradients for input, target and var)."""

    def forward(self, input: Tensor, target: Tensor, var: Union[Tensor, float]) -> Tensor:
        return F.gaussian_nll_loss(input, target, var, full=self.full, eps=self.eps, reduction=self.reduction)


class MarginRankingLoss(torch.nn.MarginRankingLoss):
    """``torch.nn.MarginRankingLoss`` on the fused pointwise kernel."""

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return F.margin_ranking_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)


class HingeEmbeddingLoss(torch.nn.HingeEmbeddingLoss):
    """``torch.nn.HingeEmbeddingLoss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.hinge_embedding_loss(input, target, margin=self.margin, reduction=self.reduction)


class SigmoidFocalLoss(torch.nn.Module):
    """torchvision's ``sigmoid_focal_loss`` as a module (torchvision has only the function); arguments and
    defaults as there, reduction 'none' by default."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2, reduction: str = "none"):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = reduction

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        return F.sigmoid_focal_loss(inputs, targets, alpha=self.alpha, gamma=self.gamma, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction}"


# ------------------------------------------------------------------ row-margin losses (one pass per row)


class MultiMarginLoss(torch.nn.MultiMarginLoss):
    """``torch.nn.MultiMarginLoss`` on the fused row kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multi_margin_loss(input, target, p=self.p, margin=self.margin, weight=self.weight,
                                   reduction=self.reduction)


class MultiLabelMarginLoss(torch.nn.MultiLabelMarginLoss):
    """``torch.nn.MultiLabelMarginLoss`` on the fused row kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multilabel_margin_loss(input, target, reduction=self.reduction)


class MultiLabelSoftMarginLoss(torch.nn.MultiLabelSoftMarginLoss):
    """``torch.nn.MultiLabelSoftMarginLoss`` on the fused row kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multilabel_soft_margin_loss(input, target, weight=self.weight, reduction=self.reduction)


class CosineEmbeddingLoss(torch.nn.CosineEmbeddingLoss):
    """``torch.nn.CosineEmbeddingLoss`` on the fused row kernel."""

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return F.cosine_embedding_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)


class TripletMarginLoss(torch.nn.TripletMarginLoss):
    """``torch.nn.TripletMarginLoss`` on the fused row kernel."""

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p, eps=self.eps,
                                     swap=self.swap, reduction=self.reduction)


class TripletMarginWithDistanceLoss(torch.nn.TripletMarginWithDistanceLoss):
    """``torch.nn.TripletMarginWithDistanceLoss``: fused for its default distance (a PairwiseDistance) and
    for pairwise_distance; torch runs any other distance function."""

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return F.triplet_margin_with_distance_loss(anchor, positive, negative, distance_function=self.distance_function,
                                                   margin=self.margin, swap=self.swap, reduction=self.reduction)


class PairwiseDistance(torch.nn.PairwiseDistance):
    """``torch.nn.PairwiseDistance`` on the fused row kernel."""

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return F.pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)


class CosineSimilarity(torch.nn.CosineSimilarity):
    """``torch.nn.CosineSimilarity`` on the fused row kernel."""

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return F.cosine_similarity(x1, x2, self.dim, self.eps)


class CTCLoss(torch.nn.CTCLoss):
    """``torch.nn.CTCLoss``: not fused; torch's implementation runs on every backend (see
    ``fusedloss.functional.ctc_loss``)."""

    def forward(self, log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
        return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction,
                          self.zero_infinity)


class RankHingeLoss(torch.nn.Module):
    """The ranking hinge loss of a text-matching library (``fusedloss.functional.rank_hinge_loss``):
    groups of one positive followed by ``num_neg`` negatives in ``y_pred`` (B * (num_neg + 1), 1);
    ``y_true`` is accepted and unused."""

    def __init__(self, num_neg: int = 1, margin: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.num_neg = num_neg
        self.margin = margin
        self.reduction = reduction

    def forward(self, y_pred: Tensor, y_true: Optional[Tensor] = None) -> Tensor:
        return F.rank_hinge_loss(y_pred, y_true, num_neg=self.num_neg, margin=self.margin, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"num_neg={self.num_neg}, margin={self.margin}, reduction={self.reduction}"


class RankCrossEntropyLoss(torch.nn.Module):
    """The ranking cross entropy of a text-matching library (``fusedloss.functional.rank_cross_entropy_loss``)."""

    def __init__(self, num_neg: int = 1):
        super().__init__()
        self.num_neg = num_neg

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return F.rank_cross_entropy_loss(y_pred, y_true, num_neg=self.num_neg)

    def extra_repr(self) -> str:
        return f"num_neg={self.num_neg}"
