"""One small sample call of every fused loss (and of its main option sets), for the tests that check a
property across all of them: torch.compile, double backward, torch.func, autocast, CUDA graphs.

Each sample makes its tensors in float64 (cast by the test), the differentiable ones listed by position
in ``grad``; ``reference`` is torch's own function (or fusedloss's eager formula for an extra). Shapes are
tiny and odd (the parity tests of each family cover sizes); values stay off every kink, clamp and
domain edge so that second derivatives exist.
"""
import dataclasses
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

import fusedloss
import fusedloss.functional as FL
from helpers import DEVICE


def _normal(*shape):
    return torch.randn(*shape, dtype=torch.float64, device=DEVICE)


def _probability(*shape):
    return torch.rand(*shape, dtype=torch.float64, device=DEVICE) * 0.9 + 0.05


def _positive(*shape):
    return torch.rand(*shape, dtype=torch.float64, device=DEVICE) + 0.5


def _sign(*shape):
    return torch.randint(0, 2, shape, device=DEVICE).double() * 2 - 1


def _classes(n, c, ignore=True):
    target = torch.randint(0, c, (n,), device=DEVICE)
    if ignore:
        target[1] = -100
    return target


@dataclasses.dataclass
class Sample:
    fn: str  # the name in fusedloss.functional (and torch.nn.functional unless ``reference`` is given)
    make: Callable[[], Tuple[list, dict]]  # float64 (args, kwargs)
    grad: Tuple[int, ...]  # positions of the differentiable args
    reference: Optional[Callable] = None

    def torch_fn(self):
        if self.reference is not None:
            return self.reference
        return getattr(F, self.fn)

    def ours(self):
        return getattr(FL, self.fn)

    def call(self, dtype=torch.float64):
        """(args, kwargs) at ``dtype`` (floating tensors), the differentiable ones requiring grad."""
        args, kwargs = self.make()
        cast = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        cast = [a.requires_grad_() if i in self.grad else a for i, a in enumerate(cast)]
        kwargs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
        return cast, kwargs


def _eager_fusedloss(name):
    """fusedloss's own eager path: the reference for its extras (z-loss, softcap, focal loss)."""
    def reference(*args, **kwargs):
        with fusedloss.backend("torch"):
            return getattr(FL, name)(*args, **kwargs)
    return reference


SAMPLES = {
    "cross_entropy": Sample("cross_entropy", lambda: ([_normal(5, 7), _classes(5, 7)], {}), (0,)),
    "cross_entropy[weight+smoothing,sum]": Sample(
        "cross_entropy", lambda: ([_normal(5, 7), _classes(5, 7)],
                                  {"weight": _positive(7), "label_smoothing": 0.2, "reduction": "sum"}), (0,)),
    "cross_entropy[probabilities,none]": Sample(
        "cross_entropy", lambda: ([_normal(5, 7), torch.softmax(_normal(5, 7), 1)], {"reduction": "none"}), (0,)),
    "cross_entropy[(N,C,d)]": Sample("cross_entropy", lambda: ([_normal(3, 4, 5), torch.randint(0, 4, (3, 5),
                                                                                                device=DEVICE)], {}), (0,)),
    "cross_entropy[z_loss+softcap]": Sample(
        "cross_entropy", lambda: ([_normal(5, 7), _classes(5, 7)], {"z_loss": 0.01, "softcap": 3.0}), (0,),
        reference=_eager_fusedloss("cross_entropy")),
    "linear_cross_entropy": Sample(
        "linear_cross_entropy", lambda: ([_normal(5, 4), _normal(7, 4), _classes(5, 7)],
                                         {"linear_bias": _normal(7), "weight": _positive(7)}), (0, 1),
        reference=None if hasattr(F, "linear_cross_entropy") else _eager_fusedloss("linear_cross_entropy")),
    "linear_cross_entropy[z_loss+softcap+smoothing,none]": Sample(
        "linear_cross_entropy", lambda: ([_normal(5, 4), _normal(7, 4), _classes(5, 7)],
                                         {"z_loss": 0.01, "softcap": 3.0, "label_smoothing": 0.1,
                                          "reduction": "none"}), (0, 1),
        reference=_eager_fusedloss("linear_cross_entropy")),
    "nll_loss": Sample("nll_loss", lambda: ([_normal(5, 7).log_softmax(1), _classes(5, 7)],
                                            {"weight": _positive(7)}), (0,)),
    "binary_cross_entropy": Sample("binary_cross_entropy", lambda: ([_probability(4, 6), _probability(4, 6)], {}),
                                   (0, 1)),
    "binary_cross_entropy_with_logits": Sample(
        "binary_cross_entropy_with_logits", lambda: ([_normal(4, 6), _probability(4, 6)],
                                                     {"pos_weight": _positive(6)}), (0, 1)),
    "smooth_l1_loss": Sample("smooth_l1_loss", lambda: ([_normal(4, 6), _normal(4, 6)], {"beta": 0.5}), (0, 1)),
    "huber_loss": Sample("huber_loss", lambda: ([_normal(4, 6), _normal(4, 6)], {"delta": 0.7}), (0, 1)),
    "l1_loss": Sample("l1_loss", lambda: ([_normal(4, 6), _normal(4, 6)], {}), (0, 1)),
    "mse_loss": Sample("mse_loss", lambda: ([_normal(4, 6), _normal(4, 6)], {"reduction": "sum"}), (0, 1)),
    "soft_margin_loss": Sample("soft_margin_loss", lambda: ([_normal(4, 6), _sign(4, 6)], {}), (0,)),
    "kl_div": Sample("kl_div", lambda: ([_probability(4, 6).log(), _probability(4, 6)],
                                        {"reduction": "batchmean"}), (0, 1)),
    "poisson_nll_loss": Sample("poisson_nll_loss", lambda: ([_normal(4, 6), _positive(4, 6) * 3],
                                                            {"full": True}), (0, 1)),
    "gaussian_nll_loss": Sample("gaussian_nll_loss", lambda: ([_normal(4, 6), _normal(4, 6), _positive(4, 1)], {}),
                                (0, 1, 2)),
    "margin_ranking_loss": Sample("margin_ranking_loss", lambda: ([_normal(9), _normal(9), _sign(9)],
                                                                  {"margin": 0.1}), (0, 1)),
    "hinge_embedding_loss": Sample("hinge_embedding_loss", lambda: ([_normal(4, 6), _sign(4, 6)], {"margin": 0.5}),
                                   (0,)),
    "sigmoid_focal_loss": Sample("sigmoid_focal_loss", lambda: ([_normal(4, 6), _probability(4, 6)],
                                                                {"reduction": "mean"}), (0, 1),
                                 reference=_eager_fusedloss("sigmoid_focal_loss")),
}


def test_every_loss_has_a_sample():
    assert {s.fn for s in SAMPLES.values()} == set(FL.__all__)
