"""``fusedloss.patch()``: code written against torch.nn uses fusedloss's losses without a change.

What is swapped (and restored exactly by ``unpatch()``):
  - ``torch.nn.functional.<loss>`` for every loss fusedloss implements: every call through the module
    attribute reaches fusedloss, including the ``forward`` of torch's own loss modules (they call
    ``F.<loss>`` at call time), so modules constructed *before* patching are covered too;
  - ``torch.nn.<Loss>`` (and ``torch.nn.modules.loss.<Loss>``) by fusedloss's subclass, so modules built
    after patching accept fusedloss's extras and are still instances of torch's class;
  - ``torch.jit.script``: while patched it scripts with torch's own loss functions, because TorchScript
    cannot compile fusedloss's Python (a scripted model runs torch's losses; ``torch.compile`` is the
    way to run the fused kernels in a compiled model).
Not covered: names bound before patching (``from torch.nn.functional import cross_entropy``, or a
reference kept in a variable) keep torch's function. Nothing else of torch is touched.
"""
import contextlib
import functools
import sys
import threading

import torch
import torch.nn.functional

from . import functional, nn

_lock = threading.Lock()
_originals = {}  # (namespace, name) -> torch's object, while patched


def _targets():
    """(namespace, name, fusedloss's object) for everything patch() swaps."""
    targets = [(torch.nn.functional, name, getattr(functional, name)) for name in functional.__all__
               if hasattr(torch.nn.functional, name)]
    for name in nn.__all__:
        original = _originals.get((torch.nn, name)) or getattr(torch.nn, name, None)  # torch's, if patched
        if not isinstance(original, type) or not issubclass(original, torch.nn.Module):
            continue  # not one of torch's modules (a class of fusedloss's own, torch's options dataclass)
        # torch.nn, torch.nn.modules, the module that defines the class (torch.nn.modules.loss for the
        # losses, .distance for CosineSimilarity and PairwiseDistance), and torch.nn.modules.loss where
        # it re-exports one (PairwiseDistance)
        defining = sys.modules[original.__module__]
        for namespace in dict.fromkeys((torch.nn, torch.nn.modules, defining, torch.nn.modules.loss)):
            if getattr(namespace, name, None) in (original, getattr(nn, name)):
                targets.append((namespace, name, getattr(nn, name)))
    targets.append((torch.jit, "script", _script_with_torch_losses))
    return targets


def _label(namespace, name):
    return f"{namespace.__name__}.{name}"


def patch():
    """Swap torch's loss functions and modules for fusedloss's (see the module docstring). Patching twice
    is harmless. Returns the names swapped, e.g. ``["torch.nn.functional.cross_entropy", ...]``."""
    with _lock:
        for namespace, name, replacement in _targets():
            key = (namespace, name)
            if key not in _originals:
                _originals[key] = getattr(namespace, name)
                setattr(namespace, name, replacement)
        return sorted(_label(namespace, name) for namespace, name in _originals)


def unpatch():
    """Restore exactly what ``patch()`` swapped (a no-op when nothing is patched). Returns the names."""
    with _lock:
        restored = sorted(_label(namespace, name) for namespace, name in _originals)
        for (namespace, name), original in _originals.items():
            setattr(namespace, name, original)
        _originals.clear()
        return restored


def is_patched():
    return bool(_originals)


@contextlib.contextmanager
def patched():
    """``with fusedloss.patched(): ...``: patch for the block (restored after, even on an exception; a
    block inside an outer ``patch()`` leaves it patched)."""
    already = is_patched()
    swapped = patch()
    try:
        yield swapped
    finally:
        if not already:
            unpatch()


def _torch_script(*args, **kwargs):
    return _originals.get((torch.jit, "script"), torch.jit.script)(*args, **kwargs)


@functools.wraps(torch.jit.script)
def _script_with_torch_losses(*args, **kwargs):
    """torch.jit.script with torch's own loss functions in torch.nn.functional for the time it compiles:
    TorchScript cannot compile fusedloss's Python, and the scripted code then calls torch's losses."""
    with _lock:
        swapped = {key: getattr(*key) for key in _originals if key[0] is torch.nn.functional}
        for (namespace, name) in swapped:
            setattr(namespace, name, _originals[(namespace, name)])
    try:
        return _torch_script(*args, **kwargs)
    finally:
        with _lock:
            for (namespace, name), replacement in swapped.items():
                if (namespace, name) in _originals:  # still patched
                    setattr(namespace, name, replacement)
