"""What every objective shares: the result type and the argument checks.

An objective is small torch code over log-probabilities a user already has (``fusedloss.functional.log_probs``,
``linear_log_probs``, or their own): it returns the loss and the metrics the matching TRL trainer logs, all as
device tensors (no ``.item()``, no host sync), so ``torch.compile(fullgraph=True)`` and CUDA graphs take it.
"""
from typing import NamedTuple

import torch


class ObjectiveResult(NamedTuple):
    """``loss``: a 0-dim tensor (the value to call ``backward()`` on). ``metrics``: name -> tensor, named as
    the TRL trainer logs them (``"rewards/chosen"``, ``"clip_ratio/region_mean"``...), detached, on the loss's
    device; per-example where TRL gathers them per example, else 0-dim."""
    loss: torch.Tensor
    metrics: dict


def check_choice(name, value, choices):
    """A string option among ``choices``: ValueError naming the argument otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_number(name, value, *, low=None, high=None, low_open=False, high_open=False):
    """A real number within [low, high] (open ends where asked): TypeError/ValueError naming the argument.
    Comparisons only (no math.isfinite), so Dynamo traces it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value
