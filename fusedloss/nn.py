"""Drop-in replacements for the ``torch.nn`` loss modules.

Each subclasses its torch module (so ``isinstance`` checks, ``state_dict`` buffers and ``repr`` stay
the same), keeps its constructor arguments and adds the keyword-only extras of ``fusedloss.functional``.

``torch.jit.script`` of a module (or of a model holding one) scripts torch's own module in its place,
with the same parameters and options: TorchScript cannot compile fusedloss's Python, so a scripted model
computes the loss with torch's kernels (values identical). A module using a fusedloss extra has no
torch equivalent and raises, naming torch.compile, which runs the fused kernels in a compiled model.
"""
from typing import Optional, Union

import torch
from torch import Tensor

from . import functional as F


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

__all__ = ["CrossEntropyLoss", "NLLLoss",
           "BCELoss", "BCEWithLogitsLoss", "SmoothL1Loss", "HuberLoss", "L1Loss", "MSELoss", "SoftMarginLoss",
           "KLDivLoss", "PoissonNLLLoss", "GaussianNLLLoss", "MarginRankingLoss", "HingeEmbeddingLoss",
           "SigmoidFocalLoss"]


class CrossEntropyLoss(_Scriptable, torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` on the fused kernels; extras as in ``fusedloss.functional.cross_entropy``."""

    _extras = {"z_loss": 0.0, "softcap": None, "inplace_backward": False, "grad_in_forward": False, "loss_dtype": None}

    def __init__(self, weight: Optional[Tensor] = None, size_average=None, ignore_index: int = -100,
                 reduce=None, reduction: str = "mean", label_smoothing: float = 0.0, *,
                 z_loss: float = 0.0, softcap: Optional[float] = None, inplace_backward: bool = False,
                 grad_in_forward: bool = False, loss_dtype: Optional[torch.dtype] = None):
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_backward = inplace_backward
        self.grad_in_forward = grad_in_forward
        self.loss_dtype = loss_dtype

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               z_loss=self.z_loss, softcap=self.softcap, inplace_backward=self.inplace_backward,
                               grad_in_forward=self.grad_in_forward, loss_dtype=self.loss_dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)}" for name, default in self._extras.items()
                         if getattr(self, name) != default)


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
