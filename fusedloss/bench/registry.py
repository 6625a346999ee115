"""What the benchmark measures: one ``LossBench`` entry per loss.

A loss joins the suite by adding one entry to ``REGISTRY``: how to make its inputs at a shape, the
shapes to run (GPU full grid, ``--quick``, CPU, the interpreter's traffic meter), its minimal traffic,
and any peer implementations. The harness, the traffic meter and the reports need no change.
"""
import dataclasses
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import fusedloss.functional as FL

Shape = Tuple[int, ...]


@dataclasses.dataclass
class Inputs:
    """One call's arguments. ``grad_tensors``: the inputs whose gradient the backward computes."""

    args: tuple
    kwargs: dict
    grad_tensors: tuple

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in self.args if torch.is_tensor(t))


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

    @property
    def label(self):
        return f"{self.name}[{self.variant}]" if self.variant else self.name

    def minimal_bytes(self, inputs, backward):
        """Each input read once, plus (with backward) each gradient written once."""
        if self.minimal is not None:
            return self.minimal(inputs, backward)
        written = sum(t.numel() * t.element_size() for t in inputs.grad_tensors) if backward else 0
        return inputs.nbytes() + written


# ------------------------------------------------------------------ implementations


def torch_impl(bench):
    fn = getattr(F, bench.name)
    return lambda *args, **kwargs: fn(*args, **bench.kwargs, **kwargs)


def fusedloss_impl(bench, **extra):
    fn = getattr(FL, bench.name)
    return lambda *args, **kwargs: fn(*args, **bench.kwargs, **bench.fusedloss_kwargs, **extra, **kwargs)


@functools.lru_cache(maxsize=None)
def _compiled(name):
    # default dynamic=None: the first shape compiles static, later shapes share one dynamic graph; the
    # raised cache limit keeps dynamo from silently falling back to eager after many shapes/dtypes
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(getattr(F, name))


def compile_impl(bench):
    fn = _compiled(bench.name)
    return lambda *args, **kwargs: fn(*args, **bench.kwargs, **kwargs)


def implementations(bench, device):
    """name -> callable for this device, plus {name: reason} for those skipped."""
    impls = {"fusedloss": fusedloss_impl(bench), "torch": torch_impl(bench)}
    skipped = dict(bench.peer_notes)
    if device == "cuda":
        for label, extra in bench.variants.items():
            impls[f"fusedloss ({label})"] = fusedloss_impl(bench, **extra)
        impls["torch.compile"] = compile_impl(bench)
        for peer, factory in bench.peers.items():
            try:
                impl = factory(bench)
            except Exception as exc:  # not installed, or incompatible with this torch/triton
                skipped[peer] = f"not importable ({type(exc).__name__}: {exc})"
                continue
            if impl is None:
                skipped[peer] = "does not support these options"
            else:
                impls[peer] = impl
    else:
        skipped["torch.compile"] = "GPU runs only"
        skipped.update({peer: "GPU only" for peer in bench.peers})
    return impls, skipped


# ------------------------------------------------------------------ cross entropy / NLL


def _class_targets(n_rows, n_classes, device, ignore_fraction=0.05):
    target = torch.randint(0, n_classes, (n_rows,), device=device)
    ignored = torch.rand(n_rows, device=device) < ignore_fraction
    return target.masked_fill(ignored, -100)


def cross_entropy_inputs(shape, dtype, device):
    n_rows, n_classes = shape
    logits = torch.randn(n_rows, n_classes, device=device, dtype=dtype).requires_grad_()
    return Inputs((logits, _class_targets(n_rows, n_classes, device)), {}, (logits,))


def weighted_cross_entropy_inputs(shape, dtype, device):
    inputs = cross_entropy_inputs(shape, dtype, device)
    weight = torch.rand(shape[1], device=device, dtype=dtype) + 0.5
    return Inputs(inputs.args, {"weight": weight}, inputs.grad_tensors)


def nll_inputs(shape, dtype, device):
    n_rows, n_classes = shape
    logp = torch.randn(n_rows, n_classes, device=device, dtype=dtype).log_softmax(1).detach().requires_grad_()
    return Inputs((logp, _class_targets(n_rows, n_classes, device)), {}, (logp,))


def nll_minimal_bytes(inputs, backward):
    """NLL reads one log-probability per row (a gather) and the targets; its gradient is the full input."""
    logp, target = inputs.args
    grad = logp.numel() * logp.element_size() if backward else 0
    return target.numel() * (target.element_size() + logp.element_size()) + grad


def liger_cross_entropy(bench):
    from liger_kernel.transformers.functional import liger_cross_entropy

    smoothing = bench.kwargs.get("label_smoothing", 0.0)
    return lambda logits, target, **kw: liger_cross_entropy(logits, target, label_smoothing=smoothing, **kw)


_CE_GPU_SHAPES = [(tokens, vocab) for vocab in (32000, 128256, 262144) for tokens in (4096, 16384, 65536)]
_CE_VARIANTS = {
    "inplace": {"inplace_backward": True},
    "grad in forward": {"grad_in_forward": True},
    "grad in forward, inplace": {"grad_in_forward": True, "inplace_backward": True},
}
_CE_NOTES = {"cut-cross-entropy": "fuses the classifier matmul (embeddings x weights -> loss), so it is not "
                                  "comparable on precomputed logits; it belongs with linear_cross_entropy"}

REGISTRY = [
    LossBench(
        name="cross_entropy", family="softmax rows", make_inputs=cross_entropy_inputs,
        gpu_shapes=_CE_GPU_SHAPES, quick_shapes=[(16384, 32000), (8192, 128256)],
        cpu_shapes=[(512, 32000)], traffic_shapes=[(64, 3001)],
        peers={"liger": liger_cross_entropy}, peer_notes=_CE_NOTES, variants=_CE_VARIANTS),
    LossBench(
        name="cross_entropy", family="softmax rows", variant="smoothing+weight",
        make_inputs=weighted_cross_entropy_inputs, kwargs={"label_smoothing": 0.1},
        gpu_shapes=[(16384, 32000), (16384, 128256)], quick_shapes=[(16384, 32000)],
        cpu_shapes=[(512, 32000)], traffic_shapes=[(64, 3001)], dtypes=(torch.bfloat16,),
        peers={"liger": liger_cross_entropy}, peer_notes=_CE_NOTES, variants=_CE_VARIANTS),
    LossBench(
        name="nll_loss", family="softmax rows", make_inputs=nll_inputs, minimal=nll_minimal_bytes,
        gpu_shapes=[(16384, 32000), (16384, 128256)], quick_shapes=[(16384, 32000)],
        cpu_shapes=[(512, 32000)], traffic_shapes=[(64, 3001)], dtypes=(torch.bfloat16,)),
]


def select(names=None):
    """Entries whose name or label is in ``names`` (all when None)."""
    if not names:
        return list(REGISTRY)
    chosen = [b for b in REGISTRY if b.name in names or b.label in names]
    unknown = set(names) - {b.name for b in REGISTRY} - {b.label for b in REGISTRY}
    if unknown:
        raise SystemExit(f"unknown loss {sorted(unknown)}; known: {sorted({b.label for b in REGISTRY})}")
    return chosen
