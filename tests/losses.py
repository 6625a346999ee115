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
from helpers import DEVICE, class_labels, normal, sign

# The samples' makers take the shape's sizes as arguments (``_normal(5, 7)``). Normal values, signs and class
# labels are tests/helpers.py's; probabilities and positive values keep further from 0 and 1 than the parity
# makers there, so that second derivatives stay moderate.


def _normal(*shape):
    """Sizes as torch.randn takes them: ``_normal(5, 7)`` or ``_normal((5, 7))``."""
    return normal(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)


def _probability(*shape):
    return torch.rand(*shape, dtype=torch.float64, device=DEVICE) * 0.9 + 0.05


def _positive(*shape):
    return torch.rand(*shape, dtype=torch.float64, device=DEVICE) + 0.5


def _sign(*shape):
    return sign(shape)


def _classes(n, c, ignore=True):
    """n class labels, the second one ignored (-100) with ``ignore``."""
    return class_labels((n,), c, ignore)


@dataclasses.dataclass
class Sample:
    fn: str  # the name in fusedloss.functional (and torch.nn.functional unless ``reference`` is given)
    make: Callable[[], Tuple[list, dict]]  # float64 (args, kwargs)
    grad: Tuple[int, ...]  # positions of the differentiable args
    reference: Optional[Callable] = None
    # for the gradient penalty where torch's own function has no double backward: the loss's definition
    # in differentiable torch ops, written here from the documented formula
    second_order: Optional[Callable] = None
    # fusedloss's call when it is not ``FL.<fn>`` as it is (a function returning a tuple, stacked)
    fused: Optional[Callable] = None

    def torch_fn(self):
        if self.reference is not None:
            return self.reference
        return getattr(F, self.fn)

    def ours(self):
        return self.fused or getattr(FL, self.fn)

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


def _class_lists(n, c, lengths):
    """multilabel_margin_loss targets: row i lists lengths[i] distinct classes, then -1 pads."""
    target = torch.full((n, c), -1, dtype=torch.long, device=DEVICE)
    for i, k in enumerate(lengths):
        target[i, :k] = torch.randperm(c, device=DEVICE)[:k]
    return target


def _reduced(losses, reduction):
    loss = torch.stack(losses)
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


def _multi_margin_definition(input, target, p=1, margin=1.0, weight=None, reduction="mean"):
    """torch's documented multi_margin_loss, one row and one class at a time."""
    losses = []
    for x, y in zip(input, target.tolist()):
        w = weight[y] if weight is not None else 1.0
        terms = [w * (margin - x[y] + x[i]).clamp_min(0) ** p for i in range(len(x)) if i != y]
        losses.append(sum(terms) / len(x))
    return _reduced(losses, reduction)


def _multilabel_margin_definition(input, target, reduction="mean"):
    """torch's documented multilabel_margin_loss: each row's targets end at its first -1."""
    losses = []
    for x, row in zip(input, target.tolist()):
        targets = row[:row.index(-1)] if -1 in row else row
        terms = [(1 - x[j] + x[i]).clamp_min(0) for j in targets for i in range(len(x)) if i not in targets]
        losses.append(sum(terms, x.new_zeros(())) / len(x))
    return _reduced(losses, reduction)


def _groups(n_groups, num_neg):
    return [_normal(n_groups * (num_neg + 1), 1), _probability(n_groups * (num_neg + 1), 1)]


SAMPLES.update({
    "multi_margin_loss": Sample("multi_margin_loss", lambda: ([_normal(5, 7), _classes(5, 7, ignore=False)],
                                                              {"p": 2, "margin": 0.5, "weight": _positive(7)}), (0,),
                                  second_order=_multi_margin_definition),
    "multilabel_margin_loss": Sample("multilabel_margin_loss", lambda: ([_normal(4, 5), _class_lists(4, 5, [2, 0, 5, 3])],
                                                                        {}), (0,), second_order=_multilabel_margin_definition),
    "multilabel_soft_margin_loss": Sample("multilabel_soft_margin_loss", lambda: (
        [_normal(3, 5), _probability(3, 5)], {"weight": _positive(5), "reduction": "sum"}), (0, 1)),
    "cosine_embedding_loss": Sample("cosine_embedding_loss", lambda: ([_normal(4, 5), _normal(4, 5), _sign(4)],
                                                                      {"margin": -0.9}), (0, 1)),
    "triplet_margin_loss": Sample("triplet_margin_loss", lambda: ([_normal(3, 5), _normal(3, 5), _normal(3, 5)],
                                                                  {"margin": 2.0, "swap": True}), (0, 1, 2)),
    "triplet_margin_with_distance_loss": Sample("triplet_margin_with_distance_loss", lambda: (
        [_normal(3, 5), _normal(3, 5), _normal(3, 5)], {"margin": 2.0, "reduction": "none"}), (0, 1, 2)),
    "pairwise_distance": Sample("pairwise_distance", lambda: ([_normal(3, 5), _normal(3, 5)], {"p": 3.0}), (0, 1)),
    "cosine_similarity": Sample("cosine_similarity", lambda: ([_normal(3, 5), _normal(3, 5)], {"dim": 1}), (0, 1)),
    "rank_hinge_loss": Sample("rank_hinge_loss", lambda: (_groups(3, 3), {"num_neg": 3, "margin": 2.0}), (0,),
                              reference=_eager_fusedloss("rank_hinge_loss")),
    "rank_cross_entropy_loss": Sample("rank_cross_entropy_loss", lambda: (_groups(3, 3), {"num_neg": 3}), (0,),
                                      reference=_eager_fusedloss("rank_cross_entropy_loss")),
})

def _stacked(call):
    """A function returning (log-probabilities, entropy), as one stacked tensor."""
    def stacked(*args, **kwargs):
        return torch.stack(call(*args, **kwargs))
    return stacked


# fusedloss's own large-vocabulary functions: the reference is fusedloss's eager formula (torch ops; tests/
# test_trl.py checks it against TRL's)
SAMPLES.update({
    "jsd_loss": Sample("jsd_loss", lambda: ([_normal(4, 5), _normal(4, 5), _classes(4, 5)],
                                            {"beta": 0.3, "temperature": 1.5}), (0, 1),
                       reference=_eager_fusedloss("jsd_loss")),
    "jsd_loss[forward KL,none]": Sample("jsd_loss", lambda: ([_normal(2, 2, 5), _normal(2, 2, 5)],
                                                             {"beta": 0.0, "reduction": "none"}), (0, 1),
                                        reference=_eager_fusedloss("jsd_loss")),
    "log_probs": Sample("log_probs", lambda: ([_normal(5, 7), _classes(5, 7)], {"temperature": 0.8}), (0,),
                        reference=_eager_fusedloss("log_probs")),
    "log_probs[entropy]": Sample("log_probs", lambda: ([_normal(5, 7), _classes(5, 7)], {}), (0,),
                                 reference=_stacked(lambda *a, **k: _eager_fusedloss("log_probs")(
                                     *a, with_entropy=True, **k)),
                                 fused=_stacked(lambda *a, **k: FL.log_probs(*a, with_entropy=True, **k))),
    "linear_jsd_loss": Sample("linear_jsd_loss", lambda: ([_normal(3, 2), _normal(5, 2), _normal(3, 3), _normal(5, 3),
                                                           _classes(3, 5)],
                                                          {"beta": 0.4, "hard_weight": 0.2, "temperature": 1.3}),
                              (0, 1, 2, 3), reference=_eager_fusedloss("linear_jsd_loss")),
    "linear_log_probs": Sample("linear_log_probs", lambda: ([_normal(5, 4), _normal(7, 4), _classes(5, 7)],
                                                            {"bias": _normal(7)}), (0, 1),
                               reference=_eager_fusedloss("linear_log_probs")),
})

# functions fusedloss routes to torch on every backend (no kernel), with the reason: their own tests
# check the routing; the properties above are torch's own there
NOT_FUSED = {"ctc_loss"}


def test_every_loss_has_a_sample():
    assert {s.fn for s in SAMPLES.values()} == set(FL.__all__) - NOT_FUSED
