"""What the benchmark measures: the list of entries (``REGISTRY``, one ``LossBench`` per loss and option
set), its selection by name, and the implementations each entry runs on a device.

A loss joins the suite by adding one entry to its family's module (``cases_<family>``: how to make its
inputs at a shape, the shapes to run (GPU full grid, ``--quick``, CPU, the interpreter's traffic meter),
its minimal traffic, and any peer implementations from ``peers``). The harness, the traffic meter and the
reports need no change. ``Inputs``, ``LossBench``, ``torch_impl`` and ``fusedloss_impl`` (``entry``) are
importable from here as well.
"""
from . import (cases_distribution, cases_matmul_rows, cases_objectives, cases_pointwise, cases_row_margin,
               cases_softmax_rows, peers)
from .entry import Inputs, LossBench, Shape, fusedloss_impl, torch_impl  # noqa: F401  (the registry's API)

# In the order the reports list them: the families from the logits' rows to the LM head's GEMMs.
REGISTRY = [*cases_softmax_rows.ENTRIES, *cases_distribution.ENTRIES, *cases_pointwise.ENTRIES,
            *cases_row_margin.ENTRIES, *cases_matmul_rows.ENTRIES, *cases_objectives.ENTRIES]


def select(names=None):
    """Entries whose name or label is in ``names`` (all when None)."""
    if not names:
        return list(REGISTRY)
    chosen = [b for b in REGISTRY if b.name in names or b.label in names]
    unknown = set(names) - {b.name for b in REGISTRY} - {b.label for b in REGISTRY}
    if unknown:
        raise SystemExit(f"unknown loss {sorted(unknown)}; known: {sorted({b.label for b in REGISTRY})}")
    return chosen


def implementation_names():
    """Every implementation name the suite knows (which ones run depends on the device and what is installed)."""
    names = ["fusedloss", "torch", "torch.compile"]
    for bench in REGISTRY:
        names += [f"fusedloss ({label})" for label in bench.variants] + list(bench.peers)
    return list(dict.fromkeys(names))


def implementations(bench, device):
    """name -> callable for this device, plus {name: reason} for those skipped."""
    impls = {"fusedloss": fusedloss_impl(bench), "torch": torch_impl(bench)}
    skipped = dict(bench.peer_notes)
    if device == "cuda":
        for label, extra in bench.variants.items():
            impls[f"fusedloss ({label})"] = fusedloss_impl(bench, **extra)
        impls["torch.compile"] = peers.compile_impl(bench)
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
