"""Random inputs of the benchmark's entries, the one definition for every family.

A value maker takes ``(shape, dtype, device)`` and returns a tensor of that shape (the target makers of
the row losses use the shape's rows and classes); ``positional`` builds an entry's ``make_inputs`` from one
maker per positional argument. Values are chosen for the losses' domains (probabilities inside (0, 1),
positive variances, signs, class indices with 5% ignored), not for exactness tests: the test suite's
float64 parity makers (tests/helpers.py, tests/losses.py) keep away from kinks and clamps instead.
"""
import torch

from .entry import Inputs

IGNORE_INDEX = -100


def normal(shape, dtype, device):
    return torch.randn(shape, device=device, dtype=dtype)


def probability(shape, dtype, device):
    return torch.rand(shape, device=device).clamp(1e-3, 1 - 1e-3).to(dtype)


def positive(shape, dtype, device):
    return (torch.rand(shape, device=device) + 0.1).to(dtype)


def sign(shape, dtype, device):
    return (torch.randint(0, 2, shape, device=device) * 2 - 1).to(dtype)


def counts(shape, dtype, device):
    return torch.poisson(4 * torch.rand(shape, device=device)).to(dtype)


def log_probability(shape, dtype, device):
    return torch.randn(shape, device=device).log_softmax(-1).to(dtype)


def last_dim_weight(shape, dtype, device):
    """A weight broadcast along the last dimension (pos_weight), around 1."""
    return (torch.rand(shape[-1], device=device) + 0.5).to(dtype)


def binary(shape, dtype, device):
    """Multi-label targets: 10% ones."""
    return (torch.rand(shape, device=device) < 0.1).to(dtype)


def row_sign(shape, dtype, device):
    """One sign per row (cosine_embedding_loss's target)."""
    return sign(shape[:1], dtype, device)


def class_index(shape, dtype, device):
    """One class per row of a (rows, classes) shape, none ignored."""
    return torch.randint(0, shape[1], shape[:1], device=device)


def class_targets(shape, n_classes, device, ignore_fraction=0.05, ignore_index=IGNORE_INDEX):
    """Class indices of ``shape`` (one per row), about ``ignore_fraction`` of them ``ignore_index`` (the test
    suite's class targets too: tests/helpers.py)."""
    target = torch.randint(0, n_classes, shape, device=device)
    ignored = torch.rand(shape, device=device) < ignore_fraction
    return target.masked_fill(ignored, ignore_index)


def class_lists(shape, dtype, device):
    """multilabel_margin_loss targets: 1 to 8 distinct classes per row, then -1 padding."""
    n_rows, n_classes = shape
    labels = torch.rand(n_rows, n_classes, device=device).argsort(dim=1)[:, :8]
    lengths = torch.randint(1, 9, (n_rows, 1), device=device)
    lists = torch.where(torch.arange(8, device=device) < lengths, labels, -1)
    if n_classes <= 8:
        return lists[:, :n_classes]
    return torch.cat([lists, lists.new_full((n_rows, n_classes - 8), -1)], dim=1)


def positional(*makers, grad=(0,)):
    """make_inputs from one maker per positional argument (or its value, when not callable); the
    arguments at ``grad`` require grad."""
    def make(shape, dtype, device):
        args = [maker(shape, dtype, device) if callable(maker) else maker for maker in makers]
        for i in grad:
            args[i].requires_grad_()
        return Inputs(tuple(args), {}, tuple(args[i] for i in grad))
    return make


def logits_and_targets(shape, dtype, device):
    """(logits (N, C) differentiated, class targets (N,) with 5% ignored): cross entropy, log_probs."""
    n_rows, n_classes = shape
    logits = torch.randn(n_rows, n_classes, device=device, dtype=dtype).requires_grad_()
    return Inputs((logits, class_targets((n_rows,), n_classes, device)), {}, (logits,))


def hidden_and_head(shape, dtype, device):
    """(hidden states (N, H), an LM head (C, H), both differentiated; class targets with 5% ignored) at a
    (N, H, C) shape, scaled so that the logits have unit variance."""
    n_rows, hidden, n_classes = shape
    x = (torch.randn(n_rows, hidden, device=device) / hidden**0.25).to(dtype).requires_grad_()
    w = (torch.randn(n_classes, hidden, device=device) / hidden**0.25).to(dtype).requires_grad_()
    return Inputs((x, w, class_targets((n_rows,), n_classes, device)), {}, (x, w))
