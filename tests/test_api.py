"""The public API as a whole: every function of ``fusedloss.functional.__all__`` and every module of
``fusedloss.nn.__all__`` keeps its signature (a snapshot, tests/data/api_signatures.json, taken before the
functional module became a package: a refactor must not change what users call), and every function that
torch.nn.functional (or torchvision) has takes torch's parameters, in torch's order, with torch's defaults,
its extras keyword-only after them. The behaviour per family (values, legacy reductions, modules as drop-ins,
determinism) is in each family's tests."""
import inspect
import json
import pathlib

import pytest
import torch
import torch.nn.functional as F

import fusedloss.functional as FL
import fusedloss.nn as FN

SNAPSHOT = json.loads((pathlib.Path(__file__).parent / "data" / "api_signatures.json").read_text())

# builtins, whose signatures inspect cannot read: as torch documents them
TORCH_BUILTINS = {
    "pairwise_distance": [("x1", inspect.Parameter.empty), ("x2", inspect.Parameter.empty), ("p", 2.0),
                          ("eps", 1e-6), ("keepdim", False)],
    "cosine_similarity": [("x1", inspect.Parameter.empty), ("x2", inspect.Parameter.empty), ("dim", 1),
                          ("eps", 1e-8)],
    # torchvision.ops.sigmoid_focal_loss
    "sigmoid_focal_loss": [("inputs", inspect.Parameter.empty), ("targets", inspect.Parameter.empty),
                           ("alpha", 0.25), ("gamma", 2), ("reduction", "none")],
}
# fusedloss's own functions (no torch counterpart): their options are keyword-only after these
OWN_POSITIONAL = {
    "rank_hinge_loss": 5, "rank_cross_entropy_loss": 3, "jsd_loss": 3, "log_probs": 2, "linear_jsd_loss": 5,
    "linear_log_probs": 3,
}


@pytest.mark.parametrize("name", FL.__all__)
def test_function_signature_unchanged(name):
    assert str(inspect.signature(getattr(FL, name))) == SNAPSHOT["functional"][name]


@pytest.mark.parametrize("name", FN.__all__)
def test_module_signature_unchanged(name):
    module = getattr(FN, name)
    assert str(inspect.signature(module)) == SNAPSHOT["nn"][name]
    if inspect.isclass(module):
        assert str(inspect.signature(module.forward)) == SNAPSHOT["nn_forward"][name]


def test_the_snapshot_covers_every_public_name():
    assert set(SNAPSHOT["functional"]) == set(FL.__all__) and set(SNAPSHOT["nn"]) == set(FN.__all__)


@pytest.mark.parametrize("name", FL.__all__)
def test_functional_signature_matches_torch(name):
    ours = list(inspect.signature(getattr(FL, name)).parameters.values())
    if name in TORCH_BUILTINS:
        assert [(p.name, p.default) for p in ours] == TORCH_BUILTINS[name]
        return
    if name in OWN_POSITIONAL:
        theirs_count = OWN_POSITIONAL[name]
        assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in ours[:theirs_count])
    else:
        if not hasattr(F, name):
            pytest.skip(f"this torch has no torch.nn.functional.{name}")
        theirs = list(inspect.signature(getattr(F, name)).parameters.values())
        assert [(p.name, p.default, p.kind) for p in ours[: len(theirs)]] == \
            [(p.name, p.default, p.kind) for p in theirs]
        theirs_count = len(theirs)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[theirs_count:]), name


@pytest.mark.parametrize("name", [n for n in FN.__all__ if inspect.isclass(getattr(FN, n))])
def test_modules_subclass_torchs_where_torch_has_them(name):
    module = getattr(FN, name)
    theirs = getattr(torch.nn, name, None)
    if theirs is not None and isinstance(theirs, type):
        assert issubclass(module, theirs), name
    assert issubclass(module, torch.nn.Module)
