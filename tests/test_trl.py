"""Parity with TRL's own functions (trl is a test dependency): GKD's generalized JSD
(``GKDTrainer.generalized_jsd_loss``), ``selective_log_softmax`` and ``entropy_from_logits``, against
fusedloss's jsd_loss and log_probs on the Triton path (and the eager backend), float32."""
import os

import pytest
import torch

import fusedloss
import fusedloss.functional as FL
from helpers import DEVICE

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
from trl.experimental.gkd.gkd_trainer import GKDTrainer  # noqa: E402
from trl.trainer.utils import entropy_from_logits, selective_log_softmax  # noqa: E402


def _inputs(shape, ignore=True):
    x = (2 * torch.randn(shape, device=DEVICE)).requires_grad_()
    t = (2 * torch.randn(shape, device=DEVICE)).requires_grad_()
    labels = torch.randint(0, shape[-1], shape[:-1], device=DEVICE)
    if ignore:
        labels.view(-1)[::3] = -100
    return x, t, labels


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape,with_labels", [((6, 700), False), ((6, 700), True), ((2, 5, 301), True),
                                               ((2, 5, 301), False)], ids=["2d", "2d-labels", "3d-labels", "3d"])
def test_generalized_jsd_loss(shape, with_labels, beta, reduction, backend):
    """The values and gradients of TRL's GKD loss ('batchmean' and 'sum'; rows with label -100 masked;
    'batchmean' of (B, L, V) logits without labels: over B, TRL's and kl_div's size(0))."""
    x, t, labels = _inputs(shape)
    labels = labels if with_labels else None
    expected = GKDTrainer.generalized_jsd_loss(x, t, labels, beta=beta, temperature=1.7, reduction=reduction)
    with fusedloss.backend(backend):
        got = FL.jsd_loss(x, t, labels, beta=beta, temperature=1.7, reduction=reduction)
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=1e-6)
    for ours, theirs in zip(torch.autograd.grad(got, (x, t)), torch.autograd.grad(expected, (x, t))):
        torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("rows", [4, 0])
def test_generalized_jsd_loss_no_counted_rows(rows, backend):
    """No counted row (all labels -100, or an empty batch, with or without labels): 0, as TRL's."""
    x, t, labels = _inputs((rows, 50))
    labels[:] = -100
    for y in (labels, None) if rows == 0 else (labels,):
        expected = GKDTrainer.generalized_jsd_loss(x, t, y, beta=0.5)
        with fusedloss.backend(backend):
            got = FL.jsd_loss(x, t, y, beta=0.5)
            linear = FL.linear_jsd_loss(x, torch.eye(50, device=DEVICE), t, torch.eye(50, device=DEVICE), y, beta=0.5)
        assert got.item() == linear.item() == expected.item() == 0.0


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_selective_log_softmax_and_entropy(temperature, backend):
    x, _, tokens = _inputs((3, 7, 500), ignore=False)
    expected_lp = selective_log_softmax(x, tokens, temperature=temperature)
    expected_entropy = entropy_from_logits(x / temperature)
    with fusedloss.backend(backend):
        lp, entropy = FL.log_probs(x, tokens, temperature=temperature, with_entropy=True)
    torch.testing.assert_close(lp, expected_lp, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(entropy, expected_entropy, rtol=2e-6, atol=2e-6)
    upstream = torch.rand(2, 3, 7, device=DEVICE)
    ours = torch.autograd.grad((lp * upstream[0] + entropy * upstream[1]).sum(), x)[0]
    theirs = torch.autograd.grad((expected_lp * upstream[0] + expected_entropy * upstream[1]).sum(), x)[0]
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-7)
