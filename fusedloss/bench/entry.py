"""What one benchmark entry is: ``LossBench`` (a loss, its inputs at a shape, its shapes, its minimal traffic,
its peers) and ``Inputs`` (one call's arguments), and how an entry becomes the callables that are timed or
metered (fusedloss, and torch's own function or the loss's eager definition).

The entries themselves are in the ``cases_<family>`` modules, the peers' adapters in ``peers``, the list
and its selection in ``registry``.
"""
import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import fusedloss
import fusedloss.functional as FL

Shape = Tuple[int, ...]


@dataclasses.dataclass
class Inputs:
    """One call's arguments. ``grad_tensors``: the inputs whose gradient the backward computes."""

    args: tuple
    kwargs: dict
    grad_tensors: tuple

    def nbytes(self):
        tensors = [*self.args, *self.kwargs.values()]
        return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


@dataclasses.dataclass
class LossBench:
    name: str  # the function's name in torch.nn.functional and fusedloss.functional
    family: str
    make_inputs: Callable[[Shape, torch.dtype, str], Inputs]
    gpu_shapes: Sequence[Shape]
    quick_shapes: Sequence[Shape]
    cpu_shapes: Sequence[Shape]
    traffic_shapes: Sequence[Shape]
    dtypes: Sequence[torch.dtype] = (torch.bfloat16, torch.float32)
    kwargs: dict = dataclasses.field(default_factory=dict)  # options every implementation gets
    variant: str = ""  # label of an option set ("smoothing+weight")
    fusedloss_kwargs: dict = dataclasses.field(default_factory=dict)  # extras for fusedloss only
    peers: Dict[str, Callable[[], Optional[Callable]]] = dataclasses.field(default_factory=dict)
    peer_notes: Dict[str, str] = dataclasses.field(default_factory=dict)  # peers never run, and why
    minimal: Optional[Callable[[Inputs, bool], int]] = None  # when less than every input in full is needed
    # fusedloss option sets also measured, as "fusedloss (<label>)"
    variants: Dict[str, dict] = dataclasses.field(default_factory=dict)
    # the eager torch implementation when torch.nn.functional has no ``name`` (``eager_reference``)
    reference: Optional[Callable] = None
    # fusedloss's function when fusedloss.functional has no ``name`` (the objectives: fusedloss.objectives)
    implementation: Optional[Callable] = None
    # floating-point operations of one call (forward, or forward+backward): the compute-bound losses
    flops: Optional[Callable[[Inputs, bool], int]] = None
    # bytes the largest implementation needs at a shape and element size (default: 3 x the shape's elements)
    footprint: Optional[Callable[[Shape, int], int]] = None
    # a function with a per-row output (pairwise_distance, cosine_similarity): every implementation's
    # output is summed, so forward+backward differentiates a scalar (grad_output 1 per row)
    sum_output: bool = False
    # what a reader of this entry's traffic ratio must know (shown as a footnote of the traffic table)
    traffic_note: str = ""

    @property
    def ndim(self):
        """The number of dimensions of this entry's shapes."""
        return len((self.traffic_shapes or self.cpu_shapes or self.quick_shapes)[0])

    @property
    def label(self):
        return f"{self.name}[{self.variant}]" if self.variant else self.name

    def minimal_bytes(self, inputs, backward):
        """Each input read once, plus (with backward) each gradient written once."""
        if self.minimal is not None:
            return self.minimal(inputs, backward)
        written = sum(t.numel() * t.element_size() for t in inputs.grad_tensors) if backward else 0
        return inputs.nbytes() + written


# ------------------------------------------------------------------ the entry's own implementations


def _total(out):
    """The sum of a per-row output; of several outputs (log_probs' entropy) stacked and summed once, as the
    reference does (summing each in its dtype and then adding rounded the nearly cancelling total at each
    output's own ulp: the demo's parity figure read that as the kernel's error)."""
    return torch.stack(out).sum() if isinstance(out, tuple) else out.sum()


def summed(bench, fn):
    """``fn``, its output summed when the entry has a per-row output (``sum_output``)."""
    return (lambda *args, **kwargs: _total(fn(*args, **kwargs))) if bench.sum_output else fn


def torch_impl(bench):
    fn = bench.reference or getattr(F, bench.name)
    return summed(bench, lambda *args, **kwargs: fn(*args, **bench.kwargs, **kwargs))


def fusedloss_impl(bench, **extra):
    fn = bench.implementation or getattr(FL, bench.name)
    return summed(bench, lambda *args, **kwargs: fn(*args, **bench.kwargs, **bench.fusedloss_kwargs, **extra,
                                                    **kwargs))


def eager_reference(name):
    """fusedloss's eager formula of ``name`` (its definition in torch ops), the reference of the losses
    torch.nn.functional does not have (fusedloss's extras, torchvision's focal loss: torchvision is not a
    dependency); a tuple output (log_probs' entropy) stacked into one tensor."""
    def reference(*args, **kwargs):
        with fusedloss.backend("torch"):
            out = getattr(FL, name)(*args, **kwargs)
        return torch.stack(out) if isinstance(out, tuple) else out
    reference.__name__ = f"eager_{name}"
    return reference
