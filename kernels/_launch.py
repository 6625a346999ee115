"""The one place fusedloss launches a Triton kernel, and the counters its in-kernel reductions use.

``launch`` puts the launch on the tensors' device (Triton launches on the *current* device) and is the
single point the host-time benchmark stubs out (``fusedloss bench --host``), so that the Python around
the kernels can be timed on any machine. Triton's own front end (``JITFunction.run``: argument binding,
specialisation, the cache lookup) runs as is: bypassing it needs a measurement on a GPU with the Triton
versions in use (see bench/NOTES.md).

``reduction_counter`` hands out the int32 ticket counter of the grid-wide reductions (kernels/_reduce.py),
zero when a launch starts (the last program of every launch resets it):
  - launches on a device's default stream: one counter per device, shared by them. Safe because launches
    on one stream run one after another: each finds the counter at 0 and leaves it at 0, and no launch
    on another stream ever uses it. No memset precedes a launch.
  - launches on any other stream: a counter of the launch's own (allocated and zeroed: one fill, ~2 us
    of GPU time). This covers every CUDA-graph capture (never on the default stream): the counter is
    allocated inside the capture, in the graph's pool, and zeroed by a node of the graph, so graphs
    replayed at the same time on different streams share nothing (every capture runs on one capture
    stream: a counter per stream would have been shared by every graph). It also covers the side stream
    on which torch.compile's CUDA-graph trees warm up, where every allocation of the thread goes to the
    graph's pool: a counter kept there for later launches would be a live block the trees do not know.
  - the interpreter (CPU tensors): one per thread (it runs a launch's programs one after another).
"""
import contextlib
import threading

import numpy as np
import torch
import triton.language as tl

from ._config import interpreting

_STUB = None  # a callable(kernel, grid, args, constexprs, num_warps) that replaces every launch
_counters = {}  # CUDA device index -> the counter of its default stream
_counters_lock = threading.Lock()


class _ThreadCounters(threading.local):
    cpu = None  # the interpreter runs a launch's programs in this thread, one after another


_thread = _ThreadCounters()


def accumulation_dtypes(dtype):
    """(Triton, torch) dtype the kernels accumulate in for inputs of ``dtype``: float64 for float64, else
    float32 (bfloat16 and float16 inputs are read as they are and computed in float32)."""
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def new_tensor(like, shape, dtype):
    """An uninitialised contiguous tensor on ``like``'s device, by the cheapest allocation from Python:
    ``empty_like`` for ``like``'s own shape and dtype (``new_empty(torch.Size)`` costs ~1.5 us more on
    this CPU), else ``new_empty``, without a dtype argument where it is ``like``'s."""
    if dtype == like.dtype:
        if shape == like.shape:
            return torch.empty_like(like, memory_format=torch.contiguous_format)
        return like.new_empty(shape)
    return like.new_empty(shape, dtype=dtype)


def set_stub(stub):
    """Replace every launch by ``stub(kernel, grid, args, constexprs, num_warps)`` (None restores real
    launches). Outputs then hold whatever their allocation held. Users: the host-time benchmark (a no-op
    stub) and the build check (fusedloss/buildcheck.py: it records each launch's configuration)."""
    global _STUB
    _STUB = stub


# Under Triton's interpreter the kernels run as numpy code, which warns (RuntimeWarning) for the inf and
# NaN that masked-off lanes and -inf logits legitimately produce; those warnings are the emulator's, not
# the user's business, so they are silenced here, around fusedloss's own launches only.
_QUIET = (lambda: np.errstate(all="ignore")) if interpreting() else contextlib.nullcontext


def launch(kernel, grid, args, constexprs, num_warps, device):
    """``kernel[grid](*args, **constexprs, num_warps=num_warps)`` on ``device``."""
    if _STUB is not None:
        _STUB(kernel, grid, args, constexprs, num_warps)
        return
    if device.type == "cuda":
        if device.index != torch._C._cuda_getDevice():  # (torch.cuda.current_device() without its Python)
            with torch.cuda.device(device):
                kernel[grid](*args, **constexprs, num_warps=num_warps)
        else:
            kernel[grid](*args, **constexprs, num_warps=num_warps)
        return
    with _QUIET():
        kernel[grid](*args, **constexprs, num_warps=num_warps)


def reduction_counter(tensor):
    """The zeroed int32 ticket counter for a grid-wide reduction launched now on ``tensor``'s device."""
    if not tensor.is_cuda:
        if _thread.cpu is None:
            _thread.cpu = torch.zeros(1, dtype=torch.int32)
        return _thread.cpu
    index = tensor.get_device()
    if torch._C._cuda_getCurrentRawStream(index) != 0:  # not the default stream: a counter of its own
        return torch.zeros(1, dtype=torch.int32, device=tensor.device)
    counter = _counters.get(index)
    if counter is None:
        with _counters_lock:
            counter = _counters.get(index)
            if counter is None:
                counter = _counters[index] = torch.zeros(1, dtype=torch.int32, device=tensor.device)
    return counter
