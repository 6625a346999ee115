"""fusedloss: fused Triton kernels for PyTorch losses, drop-in for ``torch.nn``.

    import fusedloss.functional as FL
    loss = FL.cross_entropy(logits, target)            # Triton on CUDA tensors, eager torch elsewhere
    with fusedloss.backend("torch"): ...               # force a backend ("auto" | "triton" | "torch")
    fusedloss.explain(FL.cross_entropy, logits, target)  # which backend ran, and why
    fusedloss.patch()                                  # existing torch.nn code uses fusedloss's losses
"""
import os as _os

# In a source tree, kernels/ sits beside fusedloss/ and is installed as fusedloss.kernels by the
# package-dir mapping of pyproject.toml. Imported from the tree itself (a script run from a checkout, a
# second worktree, a regular install shadowed by the checkout), that subpackage is found here: the tree's
# root joins the package's search path, after fusedloss/ itself.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (not _os.path.isdir(_os.path.join(__path__[0], "kernels"))
        and _os.path.isfile(_os.path.join(_root, "kernels", "_launch.py"))):
    __path__.append(_root)

from . import functional, nn  # noqa: E402
from ._patch import is_patched, patch, patched, unpatch  # noqa: E402
from .dispatch import Decision, backend, decisions, explain  # noqa: E402

__version__ = "0.1.0"
__all__ = ["functional", "nn", "backend", "explain", "decisions", "Decision", "patch", "unpatch", "patched",
           "is_patched", "__version__"]
