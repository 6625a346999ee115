"""linear_cross_entropy(..., stats=...): TRL's per-token statistics (entropy, log sum p^2, mean logit,
is_top1) from the kernel that reads each chunk of logits for the loss, without gradient, beside a loss and
gradients unchanged by asking for them."""
import pytest
import torch
import torch.nn.functional as F

import fusedloss
import fusedloss.functional as FL
from fusedloss.ops import _chunks
from helpers import ALL_STATS, DEVICE, assert_matches, assert_stats_match, backend_context, stats_reference

BACKENDS = ["triton", "torch"]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """16 KiB of logits per chunk: 13 rows of 301 float32 classes (37 rows: three chunks)."""
    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 16 << 10)


def head_inputs(dtype, n=37, h=19, c=301, out_features=(), ties=True):
    """Hidden states, a head giving logits ~3 (up to ~15 where scaled), targets with ignored rows, rows whose
    target is the argmax, and (``ties``) rows whose maximum is tied (an identity block of the head: the logits
    of rows 0-3 are their hidden states exactly)."""
    g = torch.Generator(device="cpu").manual_seed(7)
    x = torch.randn(n, h, generator=g, dtype=torch.float64)
    w = torch.randn(c, *out_features, h, generator=g, dtype=torch.float64) * (3 / h**0.5)
    y = torch.randint(0, c, (n, *out_features), generator=g)
    y[::5] = -100
    if ties and not out_features:
        w[:h] = torch.eye(h, dtype=torch.float64)
        w[h:] *= 0.01
        x[:4] = 0.0
        x[:4, 3] = x[:4, 11] = 4.0  # classes 3 and 11 tie: argmax is 3
    logits = torch.einsum("nh,c...h->nc...", x, w)
    y[1::5] = torch.where(y[1::5] >= 0, logits[1::5].argmax(1), y[1::5])  # targets that are the top class
    if ties and not out_features:
        y[:4] = torch.tensor([3, 11, 11, 3])
    return (x.to(DEVICE, dtype).requires_grad_(), w.to(DEVICE, dtype).requires_grad_(), y.to(DEVICE))


def whole_logits(x, w, logit_scale=1.0, softcap=None):
    z = torch.einsum("nh,c...h->nc...", x.double(), w.double()) * logit_scale
    return z if softcap is None else softcap * torch.tanh(z / softcap)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_statistics_and_unchanged_loss(dtype, reduction, backend):
    """Every statistic against whole float64 logits (after logit_scale and a softcap that bends), ties
    resolved as torch.argmax, ignored rows 0 / False; the loss and gradients identical to the call without
    ``stats``; none of the statistics differentiable."""
    x, w, y = head_inputs(dtype)
    kwargs = dict(reduction=reduction, logit_scale=1.3, softcap=6.0)
    with backend_context(backend):
        loss, stats = FL.linear_cross_entropy(x, w, y, stats=ALL_STATS, **kwargs)
        plain = FL.linear_cross_entropy(x, w, y, **kwargs)
    z = whole_logits(x, w, 1.3, 6.0)
    reference = stats_reference(z, y)._replace(log_probs=None)
    if dtype == torch.bfloat16:  # the statistics of the 16-bit logits the GEMM wrote (argmax among them)
        z16 = whole_logits(x, w, 1.3).to(dtype).double()
        reference = reference._replace(is_top1=stats_reference(6.0 * torch.tanh(z16 / 6.0), y).is_top1)
    assert stats.log_probs is None
    assert stats.is_top1[:4].tolist() == [True, False, False, True]
    assert_stats_match(stats, reference, dtype, backend)
    assert all(not s.requires_grad for s in stats[1:])
    assert all(s.dtype == loss.dtype for s in stats[1:4])
    assert loss.shape == plain.shape and loss.dtype == plain.dtype
    torch.testing.assert_close(loss, plain, rtol=0, atol=0)
    upstream = torch.rand(loss.shape, device=DEVICE, dtype=loss.dtype) + 0.5
    got = torch.autograd.grad(loss, (x, w), upstream)
    expected = torch.autograd.grad(plain, (x, w), upstream)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_dimensional_and_unbatched(backend):
    """A (C, 2, H) weight (the K-dimensional loss: targets (N, 2), statistics (N, 2)) and a 1-D input
    (statistics 0-d), in float64."""
    x, w, y = head_inputs(torch.float64, n=11, c=29, out_features=(2,), ties=False)
    with backend_context(backend):
        loss, stats = FL.linear_cross_entropy(x, w, y, reduction="sum", stats=("is_top1", "entropy"))
    z = whole_logits(x, w).movedim(1, -1)
    reference = stats_reference(z, y)
    assert stats.entropy.shape == y.shape and stats.mean_logits is None and stats.log_sum_sq_probs is None
    assert_matches(stats.entropy, reference.entropy, torch.float64, "entropy")
    assert torch.equal(stats.is_top1, reference.is_top1)
    torch.testing.assert_close(loss, F.cross_entropy(whole_logits(x, w), y, reduction="sum"))
    with backend_context(backend):
        loss, stats = FL.linear_cross_entropy(x[0], w[:, 0], y[0, :1], stats="mean_logits")
    assert stats.mean_logits.shape == () and loss.shape == ()
    expected = torch.where(y[0, 0] != -100, (x[0] @ w[:, 0].T).mean(), 0.0)
    assert_matches(stats.mean_logits, expected.double(), torch.float64)


def test_matches_trls_chunked_logprob():
    """TRL's fused LM head (ChunkedLogProbFunction, its torch tiles on the CPU): the same entropy and is_top1
    (SFT's ``mean_token_accuracy``), log sum p^2 and mean logit, logit_scale and softcap applied."""
    chunked = pytest.importorskip("trl.kernels.chunked_logprob")
    x, w, y = head_inputs(torch.float32, n=13)
    y = torch.where(y == -100, 0, y)  # TRL's function has no ignored rows
    with fusedloss.backend("triton"):
        _, ours = FL.linear_cross_entropy(x, w, y, logit_scale=1.3, softcap=6.0, stats=ALL_STATS)
    theirs = chunked.ChunkedLogProbFunction.apply(x.detach(), w.detach(), None, y, 1.0, 128, 6.0, 1.3,
                                                  chunked.OPTIONAL_OUTPUTS)
    assert torch.equal(ours.is_top1, theirs[4])
    for got, expected in zip(ours[1:4], theirs[1:4]):
        torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_double_backward_and_func(reduction):
    """torch.compile(fullgraph=True) gives the same loss, statistics and gradients; a second-order gradient
    and torch.func.grad go through the reference with the statistics in its output."""
    x, w, y = head_inputs(torch.float64, n=17, c=23, ties=False)

    def call(x, w):
        loss, stats = FL.linear_cross_entropy(x, w, y, reduction=reduction, stats=ALL_STATS)
        return loss.sum(), stats.entropy, stats.is_top1

    with fusedloss.backend("triton"):
        eager = call(x, w)
        torch._dynamo.reset()
        compiled = torch.compile(call, backend="aot_eager", fullgraph=True)(x, w)
        for a, b in zip(compiled, eager):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad(eager[0], (x, w), create_graph=True)
        second = torch.autograd.grad(grads[0].square().sum(), w)[0]
        func_grad = torch.func.grad(lambda x: call(x, w)[0])(x)
    z = x @ w.T
    ref = F.cross_entropy(z, y, reduction=reduction).sum()
    ref_grads = torch.autograd.grad(ref, (x, w), create_graph=True)
    ref_second = torch.autograd.grad(ref_grads[0].square().sum(), w)[0]
    torch.testing.assert_close(compiled[0], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], ref_grads[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(second, ref_second, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(func_grad, ref_grads[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend):
    """Probability targets and vocabulary-parallel heads: ValueError naming stats; unknown names ValueError,
    non-strings TypeError (log_probs' rules)."""
    x, w, y = head_inputs(torch.float32, n=5, c=7, ties=False)
    with backend_context(backend):
        with pytest.raises(ValueError, match="stats need class-index targets"):
            FL.linear_cross_entropy(x, w, torch.rand(5, 7).softmax(-1), stats="entropy")
        with pytest.raises(ValueError, match="stats are not served with a vocabulary-parallel head"):
            FL.linear_cross_entropy(x, w, y, stats="entropy", process_group=object())
        with pytest.raises(ValueError, match="linear_cross_entropy: stats .*'top1'"):
            FL.linear_cross_entropy(x, w, y, stats=("top1",))
        with pytest.raises(TypeError, match="stats"):
            FL.linear_cross_entropy(x, w, y, stats=(1,))
        assert torch.is_tensor(FL.linear_cross_entropy(x, w, y, stats=()))


def test_16_bit_softcap_ties_as_the_kernels_see_them():
    """bfloat16 logits 3.0 and 3.015625 capped at 6 round to one bfloat16 value but not to one float32 one: both
    backends (and linear_log_probs') cap in float32, as the kernels and TRL's fused head do, so the target 1 is
    the top class on each."""
    x = torch.tensor([[3.0, 3.015625, 0.0, 0.0]], dtype=torch.bfloat16, device=DEVICE)
    w = torch.eye(4, dtype=torch.bfloat16, device=DEVICE)
    y = torch.tensor([1], device=DEVICE)
    assert (6.0 * torch.tanh(x / 6.0))[0, 0] == (6.0 * torch.tanh(x / 6.0))[0, 1]  # the 16-bit tie
    for backend in BACKENDS:
        with backend_context(backend):
            _, stats = FL.linear_cross_entropy(x, w, y, softcap=6.0, stats="is_top1")
            lp_stats = FL.linear_log_probs(x, w, y, softcap=6.0, stats="is_top1")
        assert stats.is_top1.tolist() == [True] and lp_stats.is_top1.tolist() == [True], backend
