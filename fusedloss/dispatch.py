"""Backend choice, per call: "triton" (fused kernels) or "torch" (eager ``torch.nn.functional``).

Rules, in order:
  1. The requested backend is the innermost ``fusedloss.backend(name)`` context, else the environment
     variable ``FUSEDLOSS_BACKEND`` (``auto`` when unset): ``auto``, ``triton`` or ``torch``.
  2. ``torch``: always eager torch.
  3. ``triton`` (forced): the fused kernels, or a ``RuntimeError`` saying why they cannot run (an option
     the kernels do not support, Triton missing, CPU tensors without ``TRITON_INTERPRET=1``). Never a
     silent fallback.
  4. ``auto``: the fused kernels when every tensor is on a CUDA device, Triton imports and every option is
     supported; eager torch otherwise.

Every decision is logged at DEBUG level on the ``fusedloss`` logger and can be captured with
``fusedloss.explain(fn, *args, **kwargs)``.
"""
import contextlib
import contextvars
import dataclasses
import functools
import logging
import os

import torch

BACKENDS = ("auto", "triton", "torch")
_log = logging.getLogger("fusedloss")
_backend_override = contextvars.ContextVar("fusedloss_backend", default=None)
_recorders = contextvars.ContextVar("fusedloss_recorders", default=())


@dataclasses.dataclass(frozen=True)
class Decision:
    """Which backend ran ``op`` and why."""

    op: str
    backend: str  # "triton" | "torch"
    reason: str

    def __str__(self):
        return f"{self.op}: {self.backend} ({self.reason})"


def requested_backend():
    """The backend asked for now: the innermost ``backend()`` context, else ``FUSEDLOSS_BACKEND``."""
    name = _backend_override.get()
    if name is None:
        name = os.environ.get("FUSEDLOSS_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"fusedloss: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def backend(name):
    """Use backend ``name`` ("auto", "triton" or "torch") for fusedloss calls inside the block."""
    if name not in BACKENDS:
        raise ValueError(f"fusedloss: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    token = _backend_override.set(name)
    try:
        yield
    finally:
        _backend_override.reset(token)


def interpreter_enabled():
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def triton_import_error():
    """None when Triton imports, else the reason it does not (computed once)."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


def _device_problem(tensors):
    """Why the Triton kernels cannot take these tensors, or None."""
    devices = {t.device for t in tensors if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        return "tensors are on different devices: " + ", ".join(sorted(str(d) for d in devices))
    device = next(iter(devices), None)
    if device is None:
        return "no tensor arguments"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreter_enabled():
        return None
    if device.type == "cpu":
        return "tensors are on the CPU and TRITON_INTERPRET=1 is not set (the kernels need CUDA or Triton's interpreter)"
    return f"tensors are on {device.type}, which the Triton kernels do not target"


def decide(op, tensors, unsupported=None):
    """Choose the backend for one call of ``op``.

    ``tensors``: the call's tensor arguments (None entries are skipped). ``unsupported``: None when the
    kernels support every option of this call, else a short reason ("target requires grad").
    """
    requested = requested_backend()
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    if requested == "torch":
        decision = Decision(op, "torch", "backend 'torch' requested")
    elif requested == "triton":
        problem = unsupported or triton_import_error() or _device_problem(tensors)
        if problem:
            raise RuntimeError(f"fusedloss: backend 'triton' was requested for {op}, but {problem}")
        decision = Decision(op, "triton", "backend 'triton' requested")
    else:
        on_cuda = bool(tensors) and all(t.is_cuda for t in tensors)
        if not on_cuda:
            devices = sorted({t.device.type for t in tensors}) or ["no tensors"]
            decision = Decision(op, "torch", f"tensors on {', '.join(devices)}, not CUDA")
        elif unsupported:
            decision = Decision(op, "torch", f"option not supported by the kernels: {unsupported}")
        elif triton_import_error():
            decision = Decision(op, "torch", triton_import_error())
        else:
            decision = Decision(op, "triton", "CUDA tensors and every option supported")
    _log.debug("%s", decision)
    for record in _recorders.get():
        record.append(decision)
    return decision


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
    token = _recorders.set(_recorders.get() + (recorded,))
    try:
        fn(*args, **kwargs)
    finally:
        _recorders.reset(token)
    return recorded
