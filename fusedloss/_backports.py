"""torch 2.13's linear cross entropy classes for torches without them (fusedloss supports older torches).

``LinearCrossEntropyOptions``: torch's ``nn.LinearCrossEntropyOptions`` where torch has it, else a stand-in
with its fields and checks: what ``linear_cross_entropy(options=...)`` and ``LinearCrossEntropyLoss(options=...)``
take (``fusedloss.nn`` exports it).

``LinearCrossEntropyLossStandIn``: the state of torch 2.13's ``nn.LinearCrossEntropyLoss`` (its constructor,
checks, ``linear`` parameter, buffers and repr) without a forward: ``fusedloss.nn.StandaloneLinearCrossEntropyLoss``
gives it fusedloss's forward and extras, and is ``fusedloss.nn.LinearCrossEntropyLoss`` on a torch without
torch's (``TORCH_HAS_LINEAR_CROSS_ENTROPY_LOSS`` False).

The functional back-port (``F.linear_cross_entropy`` missing: fusedloss's eager reference) lives with the
function, in fusedloss/functional/matmul_rows.py and fusedloss/ops/_eager.py.
"""
import dataclasses
import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn.modules.loss import _WeightedLoss

TORCH_HAS_LINEAR_CROSS_ENTROPY_LOSS = hasattr(torch.nn, "LinearCrossEntropyLoss")  # torch >= 2.13


class LinearCrossEntropyLossStandIn(_WeightedLoss):
    """torch 2.13's ``nn.LinearCrossEntropyLoss`` without its forward: the same constructor, checks,
    parameters (``linear``: a ``Linear(in_features, num_classes * prod(out_features))``), buffers and repr."""

    def __init__(self, in_features: int, num_classes: int, *, out_features: Tuple[int, ...] = (), bias: bool = False,
                 device=None, dtype=None, reduction: str = "mean", weight: Optional[Tensor] = None,
                 ignore_index: Optional[int] = None, label_smoothing: float = 0.0, options=None):
        if weight is not None and weight.shape != (num_classes,):
            raise RuntimeError(f"expected weight shape to be {(num_classes,)}, got {tuple(weight.shape)}")
        if label_smoothing < 0 or label_smoothing > 1.0:
            raise RuntimeError(f"expected label_smoothing to be in range [0, 1], got {label_smoothing}")
        super().__init__(weight=weight, size_average=None, reduce=None, reduction=reduction)
        self.num_classes = num_classes
        self.out_features = out_features
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.linear = torch.nn.Linear(in_features, math.prod(out_features, start=num_classes), bias=bias,
                                      device=device, dtype=dtype)
        self.options = options

    def extra_repr(self) -> str:
        return (f"in_features={self.linear.in_features}, num_classes={self.num_classes},"
                f" out_features={self.out_features}, bias={self.linear.bias is not None},"
                f" reduction={self.reduction}, ignore_index={self.ignore_index},"
                f" label_smoothing={self.label_smoothing}, options={self.options}")


if hasattr(torch.nn, "LinearCrossEntropyOptions"):  # torch >= 2.13
    LinearCrossEntropyOptions = torch.nn.LinearCrossEntropyOptions
else:
    @dataclasses.dataclass(frozen=True)
    class LinearCrossEntropyOptions:
        """torch 2.13's ``nn.LinearCrossEntropyOptions`` for torches without it: the same fields. fusedloss's
        fused path reads ``batch_chunk_size`` (rows per chunk; None: a 224 MiB chunk of logits) and always
        accumulates in float32; the other fields configure torch's own chunked path."""

        allow_retain_graph: bool = False
        batch_chunk_size: Optional[int] = None
        chunking_method: Optional[str] = "auto"
        acc_policy: str = "auto"
        acc_dtype: Optional[torch.dtype] = None

        def __post_init__(self):
            rows = self.batch_chunk_size
            if rows is not None and not (isinstance(rows, int) and not isinstance(rows, bool) and rows > 0):
                raise ValueError(f"batch_chunk_size must be positive int or None, got {rows!r}")
            if self.acc_policy not in ("auto", "accurate", "balanced", "compact"):
                raise ValueError(f"invalid acc_policy: {self.acc_policy!r}")

    LinearCrossEntropyOptions.__module__ = "fusedloss.nn"  # where users find it (its repr, pickles)
