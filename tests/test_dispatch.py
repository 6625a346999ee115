"""The dispatcher: backend per call, the controls, the reasons it gives, and its errors."""
import logging

import pytest
import torch
import torch.nn.functional as F

import fusedloss
import fusedloss.functional as FL
from fusedloss import dispatch
from helpers import DEVICE


def sample():
    return torch.randn(4, 6, device=DEVICE), torch.tensor([0, 5, 2, 1], device=DEVICE)


def test_auto_picks_by_device():
    decision = fusedloss.explain(FL.cross_entropy, *sample())
    assert decision.op == "cross_entropy"
    if DEVICE == "cuda":
        assert decision.backend == "triton" and "CUDA" in decision.reason
    else:
        assert decision.backend == "torch" and "cpu" in decision.reason


def test_cpu_tensors_go_to_torch_in_auto_mode_even_with_interpreter():
    x, y = torch.randn(4, 6), torch.tensor([0, 5, 2, 1])
    assert fusedloss.explain(FL.cross_entropy, x, y).backend == "torch"


def test_context_manager_forces_and_nests():
    x, y = sample()
    with fusedloss.backend("torch"):
        assert fusedloss.explain(FL.cross_entropy, x, y).backend == "torch"
        with fusedloss.backend("triton"):
            assert fusedloss.explain(FL.cross_entropy, x, y).backend == "triton"
        assert fusedloss.explain(FL.nll_loss, x.log_softmax(1), y).backend == "torch"


def test_environment_variable(fusedloss_env, monkeypatch):
    x, y = sample()
    fusedloss_env("FUSEDLOSS_BACKEND", "triton")
    assert fusedloss.explain(FL.cross_entropy, x, y).backend == "triton"
    fusedloss_env("FUSEDLOSS_BACKEND", "Torch")  # any case, as backend() takes it
    assert fusedloss.explain(FL.cross_entropy, x, y).backend == "torch"
    with fusedloss.backend("triton"):  # the context wins over the environment
        assert fusedloss.explain(FL.cross_entropy, x, y).backend == "triton"
    monkeypatch.setenv("FUSEDLOSS_BACKEND", "auto")  # read once: no effect until fusedloss reads it again
    assert fusedloss.explain(FL.cross_entropy, x, y).backend == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        fusedloss_env("FUSEDLOSS_BACKEND", "cuda")


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend"):
        with fusedloss.backend("tpu"):
            pass
    x, y = sample()
    with fusedloss.backend("TORCH"):  # names are case-insensitive, as in FUSEDLOSS_BACKEND
        assert fusedloss.explain(FL.cross_entropy, x, y).backend == "torch"


def test_forced_triton_on_cpu_without_interpreter_says_why(fusedloss_env):
    fusedloss_env("TRITON_INTERPRET", "0")
    with fusedloss.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        FL.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]))


def test_forced_triton_with_unsupported_option_says_why():
    """A trainable class weight with probability targets (torch differentiates it; the kernels do not)."""
    x = torch.randn(3, 4, device=DEVICE)
    soft = torch.softmax(torch.randn(3, 4, device=DEVICE), 1)
    weight = torch.rand(4, device=DEVICE).requires_grad_()
    with fusedloss.backend("triton"), pytest.raises(RuntimeError, match="class weight that requires grad"):
        FL.cross_entropy(x, soft, weight)
    decision = fusedloss.explain(FL.cross_entropy, x, soft, weight)  # auto: eager torch, with the reason
    if DEVICE == "cuda":
        assert decision.backend == "torch" and "class weight that requires grad" in decision.reason


def test_unsupported_option_falls_back_to_torch_with_correct_result():
    x = torch.randn(3, 4, device=DEVICE, requires_grad=True)
    soft = torch.softmax(torch.randn(3, 4, device=DEVICE), 1)
    weight = torch.rand(4, device=DEVICE).requires_grad_()
    loss = FL.cross_entropy(x, soft, weight)
    torch.testing.assert_close(loss, F.cross_entropy(x, soft, weight))
    loss.backward()
    expected = torch.autograd.grad(F.cross_entropy(x, soft, weight), weight)[0]
    torch.testing.assert_close(weight.grad, expected)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_class_weight_requiring_grad_with_class_targets_raises_as_torch(backend):
    x = torch.randn(3, 4, device=DEVICE, requires_grad=True)
    y = torch.tensor([0, 3, 1], device=DEVICE)
    weight = torch.rand(4, device=DEVICE).requires_grad_()
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        F.cross_entropy(x, y, weight)
    for fn in (FL.cross_entropy, FL.nll_loss):
        with fusedloss.backend(backend), pytest.raises(RuntimeError, match="not differentiable with respect to"):
            fn(x, y, weight)


@pytest.mark.gpu
def test_mixed_devices_forced_triton_raises():
    with fusedloss.backend("triton"), pytest.raises(RuntimeError, match="different devices"):
        FL.cross_entropy(torch.randn(3, 4, device="cuda"), torch.tensor([0, 1, 2]))


def test_debug_log_records_each_decision(caplog):
    x, y = sample()
    with caplog.at_level(logging.DEBUG, logger="fusedloss"), fusedloss.backend("torch"):
        FL.cross_entropy(x, y)
        FL.nll_loss(x.log_softmax(1), y)
    messages = [r.getMessage() for r in caplog.records if r.name == "fusedloss"]
    assert messages == ["cross_entropy: torch (backend 'torch' requested)",
                        "nll_loss: torch (backend 'torch' requested)"]


def test_decisions_lists_every_call():
    x, y = sample()

    def two_losses():
        return FL.cross_entropy(x, y) + FL.nll_loss(x.log_softmax(1), y)

    assert [d.op for d in fusedloss.decisions(two_losses)] == ["cross_entropy", "nll_loss"]
    with pytest.raises(ValueError, match="no fusedloss backend decision"):
        fusedloss.explain(lambda: None)


def test_triton_missing_is_reported(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_import_error", lambda: "triton is not importable (test)")
    x, y = sample()
    with fusedloss.backend("triton"), pytest.raises(RuntimeError, match="not importable"):
        FL.cross_entropy(x, y)
    if DEVICE == "cuda":
        assert "not importable" in fusedloss.explain(FL.cross_entropy, x, y).reason


def _t(*shape):
    return torch.rand(*shape, device=DEVICE)


# (function, argument shapes, kwargs): shapes that do not broadcast, the mismatch in each operand pair torch
# combines (its message names them "tensor a" / "tensor b" in its order of operations)
SHAPE_MISMATCHES = [
    ("mse_loss", [(4, 3), (4, 5)], {}), ("l1_loss", [(4, 3), (5,)], {}), ("smooth_l1_loss", [(2, 4, 3), (4, 5)], {}),
    ("huber_loss", [(4, 3), (4, 5)], {}), ("soft_margin_loss", [(4, 3), (4, 5)], {}),
    ("kl_div", [(4, 3), (4, 5)], {}), ("poisson_nll_loss", [(4, 3), (4, 5)], {}),
    ("gaussian_nll_loss", [(4, 3), (4, 5), (4, 3)], {}), ("margin_ranking_loss", [(3,), (5,), (3,)], {}),
    ("margin_ranking_loss", [(3,), (3,), (5,)], {}), ("hinge_embedding_loss", [(4, 3), (4, 5)], {}),
    ("multilabel_soft_margin_loss", [(4, 3), (4, 5)], {}), ("multilabel_soft_margin_loss", [(4, 3), (4, 3)],
                                                             {"weight": (5,)}),
    ("cosine_embedding_loss", [(4, 3), (4, 5), (4,)], {}), ("cosine_embedding_loss", [(3, 5), (3, 5), (4,)], {}),
    ("triplet_margin_loss", [(4, 3), (4, 5), (4, 3)], {}),
    ("triplet_margin_loss", [(4, 3), (4, 3), (4, 5)], {}), ("triplet_margin_with_distance_loss", [(4, 3), (4, 3), (4, 6)],
                                                            {}),
    ("pairwise_distance", [(4, 3), (4, 5)], {}), ("cosine_similarity", [(4, 3), (4, 5)], {}),
    ("binary_cross_entropy_with_logits", [(4, 3), (4, 3)], {"pos_weight": (5,)}),
    ("binary_cross_entropy_with_logits", [(4, 5), (4, 5)], {"weight": (6,)}),
    ("binary_cross_entropy_with_logits", [(5,), (5,)], {"weight": (6,)}),
]


@pytest.mark.parametrize("fn,shapes,kwargs", SHAPE_MISMATCHES, ids=lambda v: str(v))
def test_shape_mismatch_raises_torchs_error_and_message(fn, shapes, kwargs):
    """The Triton path raises torch's exception for shapes that do not broadcast, with torch's message
    (it said "Attempting to broadcast a dimension of length 5" where torch says "The size of tensor a (3)
    must match the size of tensor b (5) at non-singleton dimension 1")."""
    args = [_t(*shape) for shape in shapes]
    if fn in ("margin_ranking_loss", "cosine_embedding_loss"):
        args[-1] = torch.ones(shapes[-1], device=DEVICE)
    kwargs = {k: _t(*v) for k, v in kwargs.items()}
    errors = []
    for backend in ("torch", "triton"):
        with fusedloss.backend(backend), pytest.raises(Exception) as caught:
            getattr(FL, fn)(*args, **kwargs)
        errors.append((type(caught.value), str(caught.value)))
    assert errors[1] == errors[0]
    assert errors[0][0] is RuntimeError or errors[0][0] is ValueError
