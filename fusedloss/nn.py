"""Drop-in replacements for the ``torch.nn`` loss modules.

Each subclasses its torch module (so ``isinstance`` checks, ``state_dict`` buffers and ``repr`` stay
the same), keeps its constructor arguments and adds the keyword-only extras of ``fusedloss.functional``.

``torch.jit.script`` of a module (or of a model holding one) scripts torch's own module in its place,
with the same parameters and options: TorchScript cannot compile fusedloss's Python, so a scripted model
computes the loss with torch's kernels (values identical). A module using a fusedloss extra has no
torch equivalent and raises, naming torch.compile, which runs the fused kernels in a compiled model.

``LinearCrossEntropyOptions`` is torch's (torch >= 2.13), or a stand-in with its fields on older torches:
what ``linear_cross_entropy(options=...)`` and ``LinearCrossEntropyLoss(options=...)`` take. The stand-ins
for what older torches lack live in fusedloss/_backports.py.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from . import _validation as check
from . import _backports
from ._backports import LinearCrossEntropyOptions  # noqa: F401  (public: torch's, or the stand-in)
from . import functional as F
from .functional.row_margin import register_pairwise_distance_forward


class _Scriptable:
    """``__prepare_scriptable__``: the torch module this one extends, sharing its parameters and buffers."""

    _extras = {}  # keyword-only extras and their defaults: a module using one cannot be scripted

    def __prepare_scriptable__(self):
        if type(self).__module__ != __name__:
            return self  # a user's subclass: its own forward is what TorchScript must compile
        used = {name: getattr(self, name) for name, default in self._extras.items() if getattr(self, name) != default}
        if used:
            raise RuntimeError(
                f"torch.jit.script cannot compile fusedloss.nn.{type(self).__name__} with "
                f"{', '.join(f'{k}={v}' for k, v in used.items())}: TorchScript runs torch's own losses, which "
                "lack these extras. Use torch.compile to run fusedloss's kernels in a compiled model.")
        torch_class = next(c for c in type(self).__mro__[1:] if c.__module__.startswith("torch."))
        module = torch_class.__new__(torch_class)
        module.__dict__.update({k: v for k, v in self.__dict__.items() if k not in self._extras})
        return module


def _not_scriptable(module, why="it has no torch equivalent for TorchScript to compile"):
    return RuntimeError(f"torch.jit.script cannot compile fusedloss.nn.{type(module).__name__} ({why}). Use "
                        "torch.compile, which runs fusedloss's kernels in a compiled model.")


def _extras_repr(module):
    """The extras that differ from their defaults, for ``extra_repr``."""
    return ", ".join(f"{name}={getattr(module, name)}" for name, default in module._extras.items()
                     if getattr(module, name) != default)


__all__ = ["CrossEntropyLoss", "NLLLoss", "LinearCrossEntropyLoss",
           "BCELoss", "BCEWithLogitsLoss", "SmoothL1Loss", "HuberLoss", "L1Loss", "MSELoss", "SoftMarginLoss",
           "KLDivLoss", "PoissonNLLLoss", "GaussianNLLLoss", "MarginRankingLoss", "HingeEmbeddingLoss",
           "SigmoidFocalLoss",
           "MultiMarginLoss", "MultiLabelMarginLoss", "MultiLabelSoftMarginLoss", "CosineEmbeddingLoss",
           "TripletMarginLoss", "TripletMarginWithDistanceLoss", "PairwiseDistance", "CosineSimilarity", "CTCLoss",
           "RankHingeLoss", "RankCrossEntropyLoss", "JSDLoss", "LinearJSDLoss"]


class CrossEntropyLoss(_Scriptable, torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` on the fused kernels; extras as in ``fusedloss.functional.cross_entropy``."""

    _extras = {"z_loss": 0.0, "softcap": None, "inplace_backward": False, "grad_in_forward": False, "loss_dtype": None,
               "process_group": None}

    def __init__(self, weight: Optional[Tensor] = None, size_average=None, ignore_index: int = -100,
                 reduce=None, reduction: str = "mean", label_smoothing: float = 0.0, *,
                 z_loss: float = 0.0, softcap: Optional[float] = None, inplace_backward: bool = False,
                 grad_in_forward: bool = False, loss_dtype: Optional[torch.dtype] = None, process_group=None):
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_backward = inplace_backward
        self.grad_in_forward = grad_in_forward
        check.check_loss_dtype(loss_dtype)
        self.loss_dtype = loss_dtype
        self.process_group = process_group

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               z_loss=self.z_loss, softcap=self.softcap, inplace_backward=self.inplace_backward,
                               grad_in_forward=self.grad_in_forward, loss_dtype=self.loss_dtype,
                               process_group=self.process_group)

    def extra_repr(self) -> str:
        return _extras_repr(self)


class _LinearCrossEntropyMixin:
    """fusedloss's constructor extras, forward and repr for ``LinearCrossEntropyLoss``, on torch's class or on
    the stand-in (fusedloss/_backports.py)."""

    _extras = {"z_loss": 0.0, "softcap": None, "logit_scale": 1.0, "loss_dtype": None, "process_group": None}

    def __init__(self, in_features: int, num_classes: int, *, out_features: Tuple[int, ...] = (), bias: bool = False,
                 device=None, dtype=None, reduction: str = "mean", weight: Optional[Tensor] = None,
                 ignore_index: Optional[int] = None, label_smoothing: float = 0.0, options=None,
                 z_loss: float = 0.0, softcap: Optional[float] = None, logit_scale: float = 1.0,
                 loss_dtype: Optional[torch.dtype] = None, process_group=None):
        super().__init__(in_features, num_classes, out_features=out_features, bias=bias, device=device, dtype=dtype,
                         reduction=reduction, weight=weight, ignore_index=ignore_index,
                         label_smoothing=label_smoothing, options=options)
        self.z_loss = z_loss
        self.softcap = softcap
        self.logit_scale = check.check_logit_scale(logit_scale)
        check.check_loss_dtype(loss_dtype)
        self.loss_dtype = loss_dtype
        self.process_group = process_group

    def __prepare_scriptable__(self):
        raise _not_scriptable(self, "nor torch's own: its options and chunked path are Python")

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        linear = self.linear
        linear_weight = linear.weight.reshape((self.num_classes, *self.out_features, linear.in_features))
        linear_bias = (linear.bias.reshape((self.num_classes, *self.out_features)) if linear.bias is not None
                       else None)
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
                                      reduction=self.reduction, ignore_index=self.ignore_index,
                                      label_smoothing=self.label_smoothing, options=self.options,
                                      z_loss=self.z_loss, softcap=self.softcap, logit_scale=self.logit_scale,
                                      loss_dtype=self.loss_dtype, process_group=self.process_group)

    def extra_repr(self) -> str:
        extras = _extras_repr(self)
        return f"{super().extra_repr()}, {extras}" if extras else super().extra_repr()


class StandaloneLinearCrossEntropyLoss(_LinearCrossEntropyMixin, _backports.LinearCrossEntropyLossStandIn):
    """torch 2.13's ``nn.LinearCrossEntropyLoss`` for torches without it (``LinearCrossEntropyLoss`` is this
    class there): the same constructor, checks, parameters (``linear``: a ``Linear(in_features,
    num_classes * prod(out_features))``), buffers and repr."""


if _backports.TORCH_HAS_LINEAR_CROSS_ENTROPY_LOSS:
    class LinearCrossEntropyLoss(_LinearCrossEntropyMixin, torch.nn.LinearCrossEntropyLoss):
        """``torch.nn.LinearCrossEntropyLoss`` (it owns its linear weight) on fusedloss's
        ``linear_cross_entropy``; extras as there (``z_loss``, ``softcap``, ``process_group``: the module's
        linear then holds this rank's block of the classes)."""
else:
    LinearCrossEntropyLoss = StandaloneLinearCrossEntropyLoss


class NLLLoss(_Scriptable, torch.nn.NLLLoss):
    """``torch.nn.NLLLoss`` with the gather and the gradient on the Triton kernels."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


# ------------------------------------------------------------------ pointwise losses (one fused pass)


class BCELoss(_Scriptable, torch.nn.BCELoss):
    """``torch.nn.BCELoss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_Scriptable, torch.nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` on the fused pointwise kernel (sigmoid fused in)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class SmoothL1Loss(_Scriptable, torch.nn.SmoothL1Loss):
    """``torch.nn.SmoothL1Loss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(_Scriptable, torch.nn.HuberLoss):
    """``torch.nn.HuberLoss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class L1Loss(_Scriptable, torch.nn.L1Loss):
    """``torch.nn.L1Loss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class MSELoss(_Scriptable, torch.nn.MSELoss):
    """``torch.nn.MSELoss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class SoftMarginLoss(_Scriptable, torch.nn.SoftMarginLoss):
    """``torch.nn.SoftMarginLoss`` on the fused pointwise kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.soft_margin_loss(input, target, reduction=self.reduction)


class KLDivLoss(_Scriptable, torch.nn.KLDivLoss):
    """``torch.nn.KLDivLoss`` on the fused pointwise kernel (every reduction, 'batchmean' included)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class PoissonNLLLoss(_Scriptable, torch.nn.PoissonNLLLoss):
    """``torch.nn.PoissonNLLLoss`` on the fused pointwise kernel."""

    def forward(self, log_input: Tensor, target: Tensor) -> Tensor:
        return F.poisson_nll_loss(log_input, target, log_input=self.log_input, full=self.full, eps=self.eps,
                                  reduction=self.reduction)


class GaussianNLLLoss(_Scriptable, torch.nn.GaussianNLLLoss):
    """``torch.nn.GaussianNLLLoss`` on the fused pointwise kernel (gradients for input, target and var)."""

    def forward(self, input: Tensor, target: Tensor, var: Union[Tensor, float]) -> Tensor:
        return F.gaussian_nll_loss(input, target, var, full=self.full, eps=self.eps, reduction=self.reduction)


class MarginRankingLoss(_Scriptable, torch.nn.MarginRankingLoss):
    """``torch.nn.MarginRankingLoss`` on the fused pointwise kernel."""

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return F.margin_ranking_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)


class HingeEmbeddingLoss(_Scriptable, torch.nn.HingeEmbeddingLoss):
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

    def __prepare_scriptable__(self):
        """torchvision has no module to script in its place: the same formula, in TorchScript."""
        return _ScriptedSigmoidFocalLoss(self.alpha, self.gamma, self.reduction)


class _ScriptedSigmoidFocalLoss(torch.nn.Module):
    """torchvision's sigmoid_focal_loss as a scriptable module (what ``torch.jit.script`` compiles for
    ``SigmoidFocalLoss``): alpha_t * ce * (1 - p_t) ** gamma."""

    def __init__(self, alpha: float, gamma: float, reduction: str):
        super().__init__()
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.reduction = reduction

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        p = torch.sigmoid(inputs)
        ce_loss = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = ce_loss * ((1 - p_t) ** self.gamma)
        if self.alpha >= 0:
            loss = (self.alpha * targets + (1 - self.alpha) * (1 - targets)) * loss
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        if self.reduction != "none":
            raise ValueError("Invalid Value for arg 'reduction': '" + self.reduction
                             + " \n Supported reduction modes: 'none', 'mean', 'sum'")
        return loss


# ------------------------------------------------------------------ row-margin losses (one pass per row)


class MultiMarginLoss(_Scriptable, torch.nn.MultiMarginLoss):
    """``torch.nn.MultiMarginLoss`` on the fused row kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multi_margin_loss(input, target, p=self.p, margin=self.margin, weight=self.weight,
                                   reduction=self.reduction)


class MultiLabelMarginLoss(_Scriptable, torch.nn.MultiLabelMarginLoss):
    """``torch.nn.MultiLabelMarginLoss`` on the fused row kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multilabel_margin_loss(input, target, reduction=self.reduction)


class MultiLabelSoftMarginLoss(_Scriptable, torch.nn.MultiLabelSoftMarginLoss):
    """``torch.nn.MultiLabelSoftMarginLoss`` on the fused row kernel."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multilabel_soft_margin_loss(input, target, weight=self.weight, reduction=self.reduction)


class CosineEmbeddingLoss(_Scriptable, torch.nn.CosineEmbeddingLoss):
    """``torch.nn.CosineEmbeddingLoss`` on the fused row kernel."""

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return F.cosine_embedding_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)


class TripletMarginLoss(_Scriptable, torch.nn.TripletMarginLoss):
    """``torch.nn.TripletMarginLoss`` on the fused row kernel."""

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p, eps=self.eps,
                                     swap=self.swap, reduction=self.reduction)


class TripletMarginWithDistanceLoss(_Scriptable, torch.nn.TripletMarginWithDistanceLoss):
    """``torch.nn.TripletMarginWithDistanceLoss``: fused for its default distance (a PairwiseDistance) and
    for pairwise_distance; torch runs any other distance function."""

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return F.triplet_margin_with_distance_loss(anchor, positive, negative, distance_function=self.distance_function,
                                                   margin=self.margin, swap=self.swap, reduction=self.reduction)


class PairwiseDistance(_Scriptable, torch.nn.PairwiseDistance):
    """``torch.nn.PairwiseDistance`` on the fused row kernel."""

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return F.pairwise_distance(x1, x2, self.norm, self.eps, self.keepdim)


register_pairwise_distance_forward(PairwiseDistance.forward)  # a default distance of the fused triplet loss


class CosineSimilarity(_Scriptable, torch.nn.CosineSimilarity):
    """``torch.nn.CosineSimilarity`` on the fused row kernel."""

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return F.cosine_similarity(x1, x2, self.dim, self.eps)


class CTCLoss(_Scriptable, torch.nn.CTCLoss):
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

    def __prepare_scriptable__(self):
        raise _not_scriptable(self)


class RankCrossEntropyLoss(torch.nn.Module):
    """The ranking cross entropy of a text-matching library (``fusedloss.functional.rank_cross_entropy_loss``)."""

    def __init__(self, num_neg: int = 1):
        super().__init__()
        self.num_neg = num_neg

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        return F.rank_cross_entropy_loss(y_pred, y_true, num_neg=self.num_neg)

    def extra_repr(self) -> str:
        return f"num_neg={self.num_neg}"

    def __prepare_scriptable__(self):
        raise _not_scriptable(self)


def _set_jsd_options(module, beta, temperature, ignore_index, reduction, loss_dtype):
    """The distillation modules' shared options, checked as the functions check them."""
    check.check_mixture_beta(beta)
    check.check_positive_temperature(temperature)
    check.check_loss_dtype(loss_dtype)
    if reduction not in check.JSD_REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    module.beta, module.temperature, module.ignore_index, module.reduction = beta, temperature, ignore_index, reduction
    module.loss_dtype = loss_dtype


class JSDLoss(torch.nn.Module):
    """Knowledge distillation between a student's and a teacher's logits
    (``fusedloss.functional.jsd_loss``): ``forward(input, target, labels=None)``, target the teacher's
    logits or its top-k (log-probabilities, classes)."""

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, ignore_index: int = -100,
                 reduction: str = "batchmean", *, grad_in_forward: bool = False,
                 loss_dtype: Optional[torch.dtype] = None):
        super().__init__()
        _set_jsd_options(self, beta, temperature, ignore_index, reduction, loss_dtype)
        self.grad_in_forward = grad_in_forward

    def forward(self, input: Tensor, target, labels: Optional[Tensor] = None) -> Tensor:
        return F.jsd_loss(input, target, labels, beta=self.beta, temperature=self.temperature,
                          ignore_index=self.ignore_index, reduction=self.reduction,
                          grad_in_forward=self.grad_in_forward, loss_dtype=self.loss_dtype)

    def extra_repr(self) -> str:
        return (f"beta={self.beta}, temperature={self.temperature}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction}")

    def __prepare_scriptable__(self):
        raise _not_scriptable(self)


class LinearJSDLoss(torch.nn.Module):
    """Distillation from the two LM heads, the logits never whole (``fusedloss.functional.linear_jsd_loss``):
    ``forward(input, weight, teacher_input, teacher_weight, labels=None, bias=None, teacher_bias=None)``."""

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, ignore_index: int = -100,
                 hard_weight: float = 0.0, soft_weight: float = 1.0, reduction: str = "batchmean", options=None, *,
                 drop_teacher_extra_classes: bool = False, logit_scale: float = 1.0,
                 teacher_logit_scale: float = 1.0, softcap: Optional[float] = None,
                 teacher_softcap: Optional[float] = None, loss_dtype: Optional[torch.dtype] = None):
        super().__init__()
        _set_jsd_options(self, beta, temperature, ignore_index, reduction, loss_dtype)
        self.logit_scale = check.check_logit_scale(logit_scale)
        self.teacher_logit_scale = check.check_logit_scale(teacher_logit_scale, "teacher_logit_scale")
        self.softcap = check.check_softcap(softcap)
        self.teacher_softcap = check.check_softcap(teacher_softcap, "teacher_softcap")
        check.linear_cross_entropy_chunk_rows(options, op="LinearJSDLoss")
        check.check_distillation_weights(hard_weight, soft_weight)
        self.hard_weight, self.soft_weight, self.options = hard_weight, soft_weight, options
        self.drop_teacher_extra_classes = drop_teacher_extra_classes

    def forward(self, input: Tensor, weight: Tensor, teacher_input: Tensor, teacher_weight: Tensor,
                labels: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                teacher_bias: Optional[Tensor] = None) -> Tensor:
        return F.linear_jsd_loss(input, weight, teacher_input, teacher_weight, labels, bias=bias,
                                 teacher_bias=teacher_bias, beta=self.beta, temperature=self.temperature,
                                 ignore_index=self.ignore_index, hard_weight=self.hard_weight,
                                 soft_weight=self.soft_weight, reduction=self.reduction, options=self.options,
                                 drop_teacher_extra_classes=self.drop_teacher_extra_classes,
                                 logit_scale=self.logit_scale, teacher_logit_scale=self.teacher_logit_scale,
                                 softcap=self.softcap, teacher_softcap=self.teacher_softcap, loss_dtype=self.loss_dtype)

    def extra_repr(self) -> str:
        return (f"beta={self.beta}, temperature={self.temperature}, ignore_index={self.ignore_index}, "
                f"hard_weight={self.hard_weight}, soft_weight={self.soft_weight}, reduction={self.reduction}"
                + "".join(f", {name}={getattr(self, name)}" for name, default in (
                    ("logit_scale", 1.0), ("teacher_logit_scale", 1.0), ("softcap", None), ("teacher_softcap", None))
                          if getattr(self, name) != default))

    def __prepare_scriptable__(self):
        raise _not_scriptable(self)
