"""Backend choice, per call: "triton" (fused kernels) or "torch" (eager ``torch.nn.functional``).

Rules, in order:
  1. The requested backend is the innermost ``fusedloss.backend(name)`` context of this thread, else the
     environment variable ``FUSEDLOSS_BACKEND`` as it was when fusedloss was imported (``auto`` when
     unset; ``reload_environment()`` reads it again): ``auto``, ``triton`` or ``torch``, in any case.
  2. ``torch``: always eager torch.
  3. ``triton`` (forced): the fused kernels, or a ``RuntimeError`` saying why they cannot run (an option
     the kernels do not support, Triton missing, CPU tensors without ``TRITON_INTERPRET=1``). Never a
     silent fallback.
  4. ``auto``: the fused kernels when every tensor is on one CUDA device, Triton imports and every option
     is supported; eager torch otherwise.

The front end is lean: a call whose backend is eager torch costs one thread-local read and one device
check before torch's own function runs with the caller's arguments (its checks, warnings and errors);
the "supported?" checks run only for calls that may take the kernels. Decisions are built only when
someone looks: ``fusedloss.explain(fn, *args, **kwargs)`` / ``fusedloss.decisions(...)`` record them, and
each is logged at DEBUG level on the ``fusedloss`` logger when that level is enabled. Under
``torch.compile`` the decision is traced (the thread-local read and device checks are guarded) and nothing
is logged.
"""
import contextlib
import dataclasses
import importlib.util
import logging
import os
import threading
from typing import Callable, Tuple

import torch

from . import _dtensor, _validation

BACKENDS = ("auto", "triton", "torch")
_log = logging.getLogger("fusedloss")


@dataclasses.dataclass(frozen=True)
class Decision:
    """Which backend ran ``op`` and why."""

    op: str
    backend: str  # "triton" | "torch"
    reason: str

    def __str__(self):
        return f"{self.op}: {self.backend} ({self.reason})"


def _backend_name(name, source):
    canonical = str(name).strip().lower() or "auto"
    if canonical not in BACKENDS:
        raise ValueError(f"fusedloss: unknown backend {name!r} ({source}); expected one of {', '.join(BACKENDS)} "
                         "(any case)")
    return canonical


class _Environment:
    """The environment variables fusedloss reads, read once (``reload_environment`` reads them again)."""

    def __init__(self):
        self.backend = _backend_name(os.environ.get("FUSEDLOSS_BACKEND", "auto"), "FUSEDLOSS_BACKEND")
        self.debug = os.environ.get("FUSEDLOSS_DEBUG", "0") not in ("", "0")
        self.interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class _ThreadState(threading.local):
    def __init__(self):
        # set on the instance, not as class defaults: torch.compile guards a traced read of an instance
        # attribute, so a call compiled outside ``backend()`` recompiles inside one (a class default
        # read was not guarded: the first graph was reused under another backend)
        self.backend = None  # the innermost backend() context of this thread, or None
        self.recorders = ()  # lists that explain()/decisions() collect Decisions into


ENV = _Environment()
_state = _ThreadState()


def reload_environment():
    """Read ``FUSEDLOSS_BACKEND``, ``FUSEDLOSS_DEBUG`` and ``TRITON_INTERPRET`` again (they are read once,
    at import; Triton itself reads ``TRITON_INTERPRET`` when fusedloss.kernels is first imported)."""
    global ENV
    ENV = _Environment()


def requested_backend():
    """The backend asked for now: the innermost ``backend()`` context, else ``FUSEDLOSS_BACKEND``."""
    return _state.backend or ENV.backend


def debug_enabled():
    """``FUSEDLOSS_DEBUG=1``: check tensor values on the host (a sync) and raise torch's exceptions."""
    return ENV.debug


@contextlib.contextmanager
def backend(name):
    """Use backend ``name`` ("auto", "triton" or "torch", any case) for fusedloss calls of this thread
    inside the block."""
    name = _backend_name(name, "fusedloss.backend()")
    previous, _state.backend = _state.backend, name
    try:
        yield
    finally:
        _state.backend = previous


def interpreter_enabled():
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on the CPU through its interpreter."""
    return ENV.interpret


# Triton itself is imported on the first Triton-backed call (a CPU-only user never pays for it)
_TRITON_MISSING = None if importlib.util.find_spec("triton") else "triton is not installed"


def triton_import_error():
    """None when Triton is installed, else why the kernels cannot run (checked once, at import)."""
    return _TRITON_MISSING


# ----------------------------------------------------------------------------------------------------
# one call
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Route:
    """How fusedloss serves one loss. Every callable takes the function's arguments, positionally.

    ``eager``: torch's implementation (the function of ``torch.nn.functional``, or fusedloss's eager
    formula for an extra). ``fused``: validates as torch would and runs the fused op; None for a loss
    fusedloss never fuses (``eager`` serves every call, on every backend, and ``unsupported`` says why).
    ``unsupported``: why the kernels cannot serve this call (an option, a dtype), or None. ``tensors``: the positions of the
    tensor arguments, whose devices decide. ``broadcast``: the pairs of argument positions in the order
    torch's function combines them elementwise, for torch's message when their shapes do not broadcast.
    ``dtensor``: the call when a tensor argument is a DTensor (it unwraps them and calls the function on
    local tensors); None: such a call runs torch's DTensor implementation (or raises, with triton forced).
    """

    op: str
    eager: Callable
    fused: Callable
    unsupported: Callable
    tensors: Tuple[int, ...]
    broadcast: tuple = ((0, 1),)  # torch's elementwise operations, in order (_validation.torch_broadcast_error)
    dtensor: Callable = None  # the call with DTensor arguments (fusedloss/_dtensor.py), for vocabulary-parallel losses


def call(route, *args):
    """Run one call of ``route.op`` on the backend the rules above choose."""
    if route.dtensor is not None and _dtensor.any_dtensor(args, route.tensors):
        return route.dtensor(*args)  # unwrapped at the boundary; the local call comes back here
    requested = _state.backend or ENV.backend
    first = args[0]
    if requested == "torch" or (requested == "auto" and not (isinstance(first, torch.Tensor) and first.is_cuda)):
        if _observed():
            _record(route.op, "torch", _eager_reason(route, requested, args))
        return route.eager(*args)
    return _call_fused(route, requested, args)


def _call_fused(route, requested, args):
    if route.fused is None:  # a loss without kernels (ctc_loss): torch's, on every backend, with the reason
        if _observed():
            _record(route.op, "torch", route.unsupported(*args))
        return route.eager(*args)
    problem = _device_problem(route, args, requested) or triton_import_error()
    if problem is None and _dtensor.any_dtensor(args, route.tensors):
        problem = "DTensor inputs (torch's DTensor implementation serves them)"
    if problem is None:
        unsupported = route.unsupported(*args)
        problem = None if unsupported is None else f"not supported by the kernels: {unsupported}"
    if problem is not None and requested == "triton":
        raise RuntimeError(f"fusedloss: backend 'triton' was requested for {route.op}, but {problem}")
    if problem is not None:
        if _observed():
            _record(route.op, "torch", problem)
        return route.eager(*args)
    if _observed():
        _record(route.op, "triton", "backend 'triton' requested" if requested == "triton"
                else "CUDA tensors and every option supported")
    try:
        return route.fused(*args)
    except _validation.BroadcastError as error:  # torch's own error for these shapes, message included
        raise (_validation.torch_broadcast_error(args, route.broadcast) or RuntimeError(str(error))) from None


def _device_problem(route, args, requested):
    """Why the Triton kernels cannot take the call's tensors, or None. (``get_device``: the CUDA index, -1
    for every other device, read without building device objects.)"""
    first = None
    for i in route.tensors:
        t = args[i]
        if isinstance(t, torch.Tensor):
            if first is None:
                first, index = t, t.get_device()
            elif t.get_device() != index or (index < 0 and t.device.type != first.device.type):
                devices = sorted({str(args[j].device) for j in route.tensors if isinstance(args[j], torch.Tensor)})
                return "tensors are on different devices: " + ", ".join(devices)
    if first is None:
        return "no tensor arguments"
    if index >= 0 and first.is_cuda:
        return None
    device_type = first.device.type
    if requested == "auto":
        return f"tensors on {device_type}, not CUDA"
    if device_type == "cpu" and ENV.interpret:
        return None
    if device_type == "cpu":
        return "tensors are on the CPU and TRITON_INTERPRET=1 is not set (the kernels need CUDA or Triton's interpreter)"
    return f"tensors are on {device_type}, which the Triton kernels do not target"


def _eager_reason(route, requested, args):
    if requested == "torch":
        return "backend 'torch' requested"
    if route.fused is None:  # a loss without kernels: that, not the device, is why torch runs it
        return route.unsupported(*args)
    devices = sorted({args[i].device.type for i in route.tensors if isinstance(args[i], torch.Tensor)})
    return f"tensors on {', '.join(devices) or 'no tensors'}, not CUDA"


def _observed():
    """True when a decision must be built: explain()/decisions() is recording, or DEBUG logging is on."""
    if torch.compiler.is_compiling():
        return False
    return bool(_state.recorders) or _log.isEnabledFor(logging.DEBUG)


def _record(op, backend_name, reason):
    decision = Decision(op, backend_name, reason)
    _log.debug("%s", decision)
    for recorded in _state.recorders:
        recorded.append(decision)


def explain(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` (a fusedloss function or module) and return its backend ``Decision``.

    A call that makes several decisions returns the last; ``decisions(fn, ...)`` returns them all.
    """
    recorded = decisions(fn, *args, **kwargs)
    if not recorded:
        raise ValueError(f"{getattr(fn, '__name__', fn)!r} made no fusedloss backend decision")
    return recorded[-1]


def decisions(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` and return the list of every backend ``Decision`` it made."""
    recorded = []
    previous, _state.recorders = _state.recorders, _state.recorders + (recorded,)
    try:
        fn(*args, **kwargs)
    finally:
        _state.recorders = previous
    return recorded
