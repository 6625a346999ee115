"""Drop-in replacements for the ``torch.nn`` loss modules.

Each subclasses its torch module (so ``isinstance`` checks, ``state_dict`` buffers and ``repr`` stay
the same), keeps its constructor arguments and adds the keyword-only extras of ``fusedloss.functional``.
"""
from typing import Optional

import torch
from torch import Tensor

from . import functional as F

__all__ = ["CrossEntropyLoss", "NLLLoss"]


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
