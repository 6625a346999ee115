"""What the CPU test setup promises about Triton's interpreter (skipped on a GPU, where the kernels run
compiled): float32 -> bfloat16 rounds to nearest even as the GPU does (tests/conftest.py), and the
numpy warnings of interpreted kernels do not reach the user."""
import warnings

import pytest
import torch

import fusedloss
import fusedloss.functional as FL
from helpers import DEVICE

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter runs only without a GPU")


def test_float32_to_bfloat16_rounds_to_nearest_even():
    """A bfloat16 loss is the float32 loss rounded to nearest even, bit for bit as torch's .to() rounds
    (the interpreter alone truncates: up to one ulp lower)."""
    x = torch.randn(4099) * 3
    y = torch.randn(4099) * 3
    with fusedloss.backend("triton"):
        loss32 = FL.mse_loss(x, y, reduction="none")
        loss16 = FL.mse_loss(x.bfloat16(), y.bfloat16(), reduction="none")
    exact = (x.bfloat16().float() - y.bfloat16().float()) ** 2  # what the kernel computes in float32
    assert torch.equal(loss16, exact.bfloat16())
    truncated = (exact.view(torch.int32) & ~0xFFFF).view(torch.float32).bfloat16()
    assert not torch.equal(loss16, truncated)  # the two roundings differ on these values
    assert loss32.dtype == torch.float32


def test_interpreted_kernels_do_not_warn():
    """-inf logits and masked lanes make numpy warn inside the interpreter; fusedloss silences that
    around its own launches only."""
    x = torch.randn(6, 37)
    x[:, ::3] = float("-inf")
    target = torch.tensor([1, 2, 4, 5, 7, 8])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fusedloss.backend("triton"):
            loss = FL.cross_entropy(x.requires_grad_(), target)
            loss.backward()
    assert torch.isfinite(loss)
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
