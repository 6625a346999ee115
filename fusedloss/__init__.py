"""fusedloss: fused Triton kernels for PyTorch losses, drop-in for ``torch.nn``.

    import fusedloss.functional as FL
    loss = FL.cross_entropy(logits, target)            # Triton on CUDA tensors, eager torch elsewhere
    with fusedloss.backend("torch"): ...               # force a backend ("auto" | "triton" | "torch")
    fusedloss.explain(FL.cross_entropy, logits, target)  # which backend ran, and why
"""
from . import functional, nn
from .dispatch import Decision, backend, decisions, explain

__version__ = "0.1.0"
__all__ = ["functional", "nn", "backend", "explain", "decisions", "Decision", "__version__"]
