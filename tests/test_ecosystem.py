"""fusedloss as a citizen of PyTorch beyond eager mode, for every loss (tests/losses.py):

  - second-order gradients: a gradient penalty equal to torch's, gradgradcheck in float64
  - torch.func: grad, vjp, vmap and vmap(grad) (per-sample gradients)
  - torch.compile(fullgraph=True): the Triton path under aot_eager (registered ops, fake
    implementations), torch's path under inductor (auto mode on the CPU), dynamic shapes without a
    recompile per batch size
  - autocast: the output dtype and values torch gives under autocast
  - CUDA graphs and torch.compile(mode="reduce-overhead") on a GPU
All on the Triton backend (forced; the interpreter on a machine without a GPU) unless said otherwise.
"""
import contextlib

import pytest
import torch

import fusedloss
from helpers import DEVICE
from losses import SAMPLES, test_every_loss_has_a_sample  # noqa: F401  (the table's own check runs here too)

IDS = list(SAMPLES)


def _loss(sample, args, kwargs, backend="triton"):
    with fusedloss.backend(backend):
        return sample.ours()(*args, **kwargs)


def _scalar(loss):
    """A scalar of every element (weights differ, so a 'none' loss is not just summed)."""
    if loss.dim() == 0:
        return loss
    return (loss * torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).view(loss.shape)).sum()


# ------------------------------------------------------------------ second-order gradients


@pytest.mark.parametrize("name", IDS)
def test_gradient_penalty_matches_torch(name):
    """loss + 10 * |d loss / d x|^2, differentiated again: torch's x.grad, for every differentiable input
    (the penalty that was silently wrong when the backward was once_differentiable). Where torch's own
    function has no double backward (multi_margin_loss, multilabel_margin_loss), against the loss's
    definition written in torch ops (tests/losses.py)."""
    sample = SAMPLES[name]
    results = []
    theirs = sample.second_order or sample.torch_fn()
    for fn in (lambda a, k: _loss(sample, a, k), lambda a, k: theirs(*a, **k)):
        torch.manual_seed(1)
        args, kwargs = sample.call()
        diff = [args[i] for i in sample.grad]
        loss = _scalar(fn(args, kwargs))
        grads = torch.autograd.grad(loss, diff, create_graph=True)
        (loss + 10 * sum(g.pow(2).sum() for g in grads)).backward()
        results.append([t.grad for t in diff])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", IDS)
def test_gradgradcheck(name):
    sample = SAMPLES[name]
    args, kwargs = sample.call()
    diff = tuple(args[i] for i in sample.grad)

    def fn(*inputs):
        full = list(args)
        for i, t in zip(sample.grad, inputs):
            full[i] = t
        return _loss(sample, full, kwargs)

    assert torch.autograd.gradgradcheck(fn, diff)


def test_gradient_with_create_graph_off_uses_the_fused_backward():
    """Without create_graph the gradient is the kernel's (no graph behind it): the fused path."""
    sample = SAMPLES["cross_entropy"]
    args, kwargs = sample.call(torch.float32)
    grad, = torch.autograd.grad(_loss(sample, args, kwargs), args[0])
    assert grad.grad_fn is None
    grad, = torch.autograd.grad(_loss(sample, args, kwargs), args[0], create_graph=True)
    assert grad.grad_fn is not None


def test_inplace_backward_refuses_a_differentiable_backward_after_overwriting():
    x = torch.randn(4, 6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    y = torch.tensor([0, 5, 2, 1], device=DEVICE)
    loss = _loss(SAMPLES["cross_entropy"], [x, y], {"inplace_backward": True})
    loss.backward(retain_graph=True)  # overwrites the logits with their gradient
    with pytest.raises(RuntimeError, match="overwritten"):
        torch.autograd.grad(loss, x, create_graph=True)


# ------------------------------------------------------------------ torch.func


@pytest.mark.parametrize("name", IDS)
def test_torch_func_grad_and_vjp(name):
    sample = SAMPLES[name]
    args, kwargs = sample.call()
    position = sample.grad[0]

    def loss_of(fn):
        def f(t):
            full = list(args)
            full[position] = t
            return _scalar(fn(full))
        return f

    ours = loss_of(lambda full: _loss(sample, full, kwargs))
    theirs = loss_of(lambda full: sample.torch_fn()(*full, **kwargs))
    x = args[position].detach()
    torch.testing.assert_close(torch.func.grad(ours)(x), torch.func.grad(theirs)(x), rtol=1e-10, atol=1e-12)
    out, vjp = torch.func.vjp(ours, x)
    torch.testing.assert_close(vjp(torch.ones_like(out))[0], torch.func.grad(theirs)(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", IDS)
def test_torch_func_vmap_and_per_sample_grads(name):
    """vmap over a batch of three problems (every tensor stacked), and vmap(grad): per-sample gradients,
    against torch's function called on each problem in turn (the definition of vmap; torch's own
    gaussian_nll_loss cannot be vmapped: it checks var's values on the host)."""
    sample = SAMPLES[name]
    calls = [sample.call() for _ in range(3)]
    stacked = [torch.stack([c[0][i] for c in calls]).detach() if torch.is_tensor(calls[0][0][i]) else calls[0][0][i]
               for i in range(len(calls[0][0]))]
    kwargs = calls[0][1]  # tensors in kwargs (weights) are shared, not batched
    position = sample.grad[0]

    def ours(*tensors):
        return _scalar(_loss(sample, list(tensors), kwargs))

    def theirs(*tensors):
        return _scalar(sample.torch_fn()(*tensors, **kwargs))

    per_problem = [[t[i] if torch.is_tensor(t) else t for t in stacked] for i in range(3)]
    expected = torch.stack([theirs(*p) for p in per_problem])
    torch.testing.assert_close(torch.func.vmap(ours)(*stacked), expected, rtol=1e-10, atol=1e-12)
    expected_grads = torch.stack([torch.func.grad(theirs, argnums=position)(*p) for p in per_problem])
    per_sample = torch.func.vmap(torch.func.grad(ours, argnums=position))(*stacked)
    torch.testing.assert_close(per_sample, expected_grads, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ torch.compile


def _all_losses(dtype):
    """Every sample's (args, kwargs), and a function computing all of their losses at once (one compile)."""
    torch.manual_seed(0)
    calls = {name: sample.call(dtype) for name, sample in SAMPLES.items()}

    def all_losses(tensors):
        return [_scalar(SAMPLES[name].ours()(*tensors[name], **calls[name][1])) for name in SAMPLES]

    return calls, all_losses


def _losses_and_grads(fn, calls):
    tensors = {name: args for name, (args, _) in calls.items()}
    losses = fn(tensors)
    diff = [args[i] for name, (args, _) in calls.items() for i in SAMPLES[name].grad]
    return losses, torch.autograd.grad(sum(losses), diff)


def test_compile_fullgraph_triton_path():
    """Every loss on the Triton backend under torch.compile(fullgraph=True, backend="aot_eager"): the
    registered ops trace with no graph break, and values and gradients equal eager fusedloss's."""
    calls, all_losses = _all_losses(torch.float32)
    torch._dynamo.reset()
    with fusedloss.backend("triton"):
        eager = _losses_and_grads(all_losses, calls)
        compiled = _losses_and_grads(torch.compile(all_losses, fullgraph=True, backend="aot_eager"), calls)
    for ours, theirs, name in zip(compiled[0], eager[0], SAMPLES):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6, msg=name)
    for ours, theirs in zip(compiled[1], eager[1]):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def _transposed(calls):
    """The same calls with every 2-D floating tensor a view of a transposed buffer (strides (1, N))."""
    from helpers import strided_like

    def relayout(t):
        if not torch.is_tensor(t) or not t.is_floating_point() or t.dim() != 2:
            return t
        view = strided_like(t.detach(), "transposed")
        return view.requires_grad_(t.requires_grad)

    return {name: ([relayout(a) for a in args], {k: relayout(v) for k, v in kwargs.items()})
            for name, (args, kwargs) in calls.items()}


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_compile_inductor_triton_path(layout):
    """Every loss on the Triton backend under torch.compile's default backend, inductor, with gradients:
    inductor checks every custom op's output sizes and strides against its fake implementation (aot_eager
    does not), so a fake that disagrees with the real op fails here only. Two that did: the cross-entropy
    forward's workspace (the real one held the reduction's partial sums too) and every backward's
    gradients for transposed inputs (the fakes kept the input's strides, the kernels write contiguous)."""
    calls, all_losses = _all_losses(torch.float32)
    if layout == "transposed":
        calls = _transposed(calls)
        assert any(not a.is_contiguous() for args, _ in calls.values() for a in args if torch.is_tensor(a))
    torch._dynamo.reset()
    with fusedloss.backend("triton"):
        eager = _losses_and_grads(all_losses, calls)
        compiled = _losses_and_grads(torch.compile(all_losses, fullgraph=True), calls)
    for ours, theirs, name in zip(compiled[0], eager[0], SAMPLES):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6, msg=name)
    for ours, theirs in zip(compiled[1], eager[1]):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


INDUCTOR_ON_CPU = ("cross_entropy", "binary_cross_entropy_with_logits", "triplet_margin_loss", "jsd_loss")


def test_compile_auto_mode_on_cpu():
    """auto mode on CPU tensors (the eager torch path) compiles as torch does: every loss through Dynamo and
    AOTAutograd (aot_eager), fullgraph for every loss but gaussian_nll_loss, whose torch function checks
    var's values on the host (a graph break torch has too; the Triton path compiles it fullgraph, above);
    and a sample of the families through inductor, whose C++ compile of every loss would take minutes cold
    for what are torch's own operations (the Triton path runs every loss under inductor, above)."""
    if DEVICE != "cpu":
        pytest.skip("the CPU eager path; the GPU runs the Triton path under inductor in test_cuda_* below")
    calls, all_losses = _all_losses(torch.float32)
    torch._dynamo.reset()
    with fusedloss.backend("auto"):
        eager = _losses_and_grads(all_losses, calls)
        compiled = _losses_and_grads(torch.compile(all_losses, backend="aot_eager"), calls)
        fullgraph = {name: calls[name] for name in SAMPLES if name != "gaussian_nll_loss"}

        def some(names):
            return lambda tensors: [_scalar(SAMPLES[name].ours()(*tensors[name], **calls[name][1])) for name in names]

        torch.compile(some(fullgraph), fullgraph=True, backend="aot_eager")({n: c[0] for n, c in fullgraph.items()})
        sample = {name: calls[name] for name in INDUCTOR_ON_CPU}
        inductor = _losses_and_grads(torch.compile(some(sample), fullgraph=True, backend="inductor"), sample)
        sample_eager = _losses_and_grads(some(sample), sample)
    wrong_in_torch = {"multilabel_margin_loss"}  # torch's own decomposition: test_torch_inductor_multilabel_margin_bug
    for ours, theirs, name in zip(compiled[0], eager[0], SAMPLES):
        if name not in wrong_in_torch:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)
    grad_names = [name for name in SAMPLES for _ in SAMPLES[name].grad]
    for ours, theirs, name in zip(compiled[1], eager[1], grad_names):
        if name not in wrong_in_torch:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)
    for ours, theirs in zip(inductor[0] + list(inductor[1]), sample_eager[0] + list(sample_eager[1])):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_torch_inductor_multilabel_margin_bug():
    """torch 2.13's decomposition of multilabel_margin_loss (AOTAutograd's: inductor and aot_eager) adds the
    hinge terms of list positions after the first -1 (it masks target classes, not the padded positions),
    so torch.compile of torch's
    own function disagrees with eager torch; fusedloss's auto mode on the CPU calls torch's function and
    inherits that. The Triton path compiles to eager's values (test_compile_fullgraph_triton_path). When
    this test fails, torch has fixed it: drop ``wrong_in_torch`` above."""
    x = torch.randn(2, 5)
    target = torch.tensor([[-1, 0, 0, 0, 0], [3, -1, 1, 1, 1]])
    compiled = torch.compile(lambda a, b: torch.nn.functional.multilabel_margin_loss(a, b, reduction="none"),
                             backend="inductor")
    torch._dynamo.reset()
    eager = torch.nn.functional.multilabel_margin_loss(x, target, reduction="none")
    assert eager[0] == 0 and not torch.allclose(compiled(x, target), eager)


class _CountingBackend:
    """aot_eager, counting how many graphs Dynamo hands it (one per compile)."""

    def __init__(self):
        self.graphs = 0
        self.fused = []  # per graph: whether it calls fusedloss's registered ops (the Triton path)

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        self.fused.append(any("fusedloss" in str(node.target) for node in gm.graph.nodes))
        from torch._dynamo.backends.debugging import aot_eager
        return aot_eager(gm, example_inputs)


def _rand(*shape, grad=False):
    return torch.randn(*shape, device=DEVICE, requires_grad=grad)


def _eager(fn):
    def call(*args, **kwargs):
        with fusedloss.backend("torch"):
            out = getattr(fusedloss.functional, fn)(*args, **kwargs)
        return torch.stack(out) if isinstance(out, tuple) else out
    return call


# fn -> make(n): (args, kwargs) at batch size n, the first argument differentiated; every family, and the
# layouts the row-margin family computes from sizes (which once went through a cache that symbolic sizes
# cannot enter)
DYNAMIC = {
    "cross_entropy": lambda n: ([_rand(n, 11, grad=True), torch.randint(0, 11, (n,), device=DEVICE)],
                                {"label_smoothing": 0.1}),
    "mse_loss": lambda n: ([_rand(n, 5, grad=True), _rand(n, 5)], {}),
    "binary_cross_entropy_with_logits": lambda n: ([_rand(n, 5, grad=True), torch.rand(n, 5, device=DEVICE)],
                                                   {"pos_weight": torch.rand(5, device=DEVICE)}),
    "triplet_margin_loss": lambda n: ([_rand(n, 4, grad=True), _rand(n, 4), _rand(n, 4)], {}),
    "cosine_similarity": lambda n: ([_rand(n, 4, grad=True), _rand(n, 4)], {}),
    "cosine_embedding_loss": lambda n: ([_rand(n, 4, grad=True), _rand(n, 4), torch.ones(n, device=DEVICE)], {}),
    "multilabel_soft_margin_loss": lambda n: ([_rand(n, 4, grad=True), torch.rand(n, 4, device=DEVICE)], {}),
    "multi_margin_loss": lambda n: ([_rand(n, 6, grad=True), torch.randint(0, 6, (n,), device=DEVICE)], {}),
    "jsd_loss": lambda n: ([_rand(n, 9, grad=True), _rand(n, 9), torch.randint(0, 9, (n,), device=DEVICE)],
                           {"beta": 0.3}),
    "log_probs": lambda n: ([_rand(n, 9, grad=True), torch.randint(0, 9, (n,), device=DEVICE)], {}),
    "linear_jsd_loss": lambda n: ([_rand(n, 3, grad=True), _rand(9, 3), _rand(n, 2), _rand(9, 2)], {}),
    "linear_log_probs": lambda n: ([_rand(n, 3, grad=True), _rand(9, 3), torch.randint(0, 9, (n,), device=DEVICE)],
                                   {}),
}


@pytest.mark.parametrize("fn", DYNAMIC)
def test_compile_dynamic_shapes_one_graph(fn):
    """dynamic=True: a second batch size reuses the first one's graph (no recompile per size), with the
    right values. (Dynamo may restart its first analysis once, to specialise a float argument.)"""
    make = DYNAMIC[fn]
    backend = _CountingBackend()
    torch._dynamo.reset()
    ours = getattr(fusedloss.functional, fn)
    reference = getattr(torch.nn.functional, fn, None) or _eager(fn)
    graphs = []
    with fusedloss.backend("triton"):
        # (a per-row output summed: _scalar's linspace over the row count would specialise it)
        compiled = torch.compile(lambda *a, **k: ours(*a, **k).sum(), fullgraph=True, dynamic=True,
                                 backend=backend)
        for n in (7, 13):
            args, kwargs = make(n)
            loss = compiled(*args, **kwargs)
            grad, = torch.autograd.grad(loss, args[0])
            graphs.append(backend.graphs)
            expected = reference(*args, **kwargs).sum()
            torch.testing.assert_close(loss, expected)
            torch.testing.assert_close(grad, torch.autograd.grad(expected, args[0])[0])
    assert graphs[1] == graphs[0]


@pytest.mark.parametrize("first", ["outside", "torch", "triton"])
def test_compile_decision_follows_the_backend_context(first):
    """The dispatcher's decision is traced with guards: a call under another backend recompiles, never
    reuses a graph traced for another one, whether the first compile ran inside a ``backend()`` block or
    outside any (where the decision once went unguarded: the triton graph ran torch's path)."""
    x, y = torch.randn(4, 6, device=DEVICE), torch.randint(0, 6, (4,), device=DEVICE)
    torch._dynamo.reset()
    counter = _CountingBackend()
    compiled = torch.compile(lambda a, b: fusedloss.functional.cross_entropy(a, b, reduction="sum"), fullgraph=True,
                             backend=counter)
    order = {"outside": [None, "triton", "torch"], "torch": ["torch", "triton", None],
             "triton": ["triton", "torch", None]}[first]
    expected = torch.nn.functional.cross_entropy(x, y, reduction="sum")
    auto = "triton" if DEVICE == "cuda" else "torch"
    for name in order:
        graphs = counter.graphs
        with fusedloss.backend(name) if name else contextlib.nullcontext():
            torch.testing.assert_close(compiled(x, y), expected)
        if counter.graphs > graphs:  # a new graph: traced for this backend's path
            assert counter.fused[-1] == ((name or auto) == "triton"), (name, counter.fused)
        else:  # a graph reused: only between backends that take the same path
            assert (name or auto) == auto and order.index(name) > 0, (name, counter.fused)
    with fusedloss.backend("triton"), pytest.raises(Exception, match="TRITON_INTERPRET|different devices"):
        if DEVICE == "cpu":  # the eager call raises here: so must the compiled one, not return torch's value
            fusedloss.dispatch.ENV.interpret, saved = False, fusedloss.dispatch.ENV.interpret
            try:
                compiled(x, y)
            finally:
                fusedloss.dispatch.ENV.interpret = saved
        else:
            compiled(x, y.cpu())


# ------------------------------------------------------------------ autocast

# the losses torch refuses under autocast on this device raise the same way (binary_cross_entropy on CUDA)
@pytest.mark.parametrize("name", IDS)
def test_autocast_follows_torch(name):
    """Under torch.autocast (bfloat16) with bfloat16 inputs, the loss has torch's dtype and value and the
    gradients torch's dtype; the 16-bit inputs are never copied to float32 by fusedloss."""
    sample = SAMPLES[name]
    torch.manual_seed(3)
    args, kwargs = sample.call(torch.bfloat16)
    device_type = "cuda" if DEVICE == "cuda" else "cpu"
    outputs = []
    for fn in (lambda: _loss(sample, args, kwargs), lambda: sample.torch_fn()(*args, **kwargs)):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            try:
                loss = fn()
            except RuntimeError as error:
                outputs.append(type(error))
                continue
        grads = torch.autograd.grad(_scalar(loss), [args[i] for i in sample.grad])
        outputs.append((loss, grads))
    ours, theirs = outputs
    if not isinstance(theirs, tuple):
        assert ours is theirs  # torch refuses this loss under autocast: so does fusedloss, with the same error
        return
    (loss, grads), (expected, expected_grads) = ours, theirs
    assert loss.dtype == expected.dtype, (loss.dtype, expected.dtype)
    assert all(g.dtype == e.dtype for g, e in zip(grads, expected_grads))
    # values: no further from the float64 result than torch's own autocast result (torch rounds some
    # intermediates of composite losses to 16 bits; the kernels compute in float32 throughout)
    args64 = [a.detach().double().requires_grad_(a.requires_grad) if torch.is_tensor(a) and a.is_floating_point()
              else a for a in args]
    kwargs64 = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
    exact = sample.torch_fn()(*args64, **kwargs64)
    exact_grads = torch.autograd.grad(_scalar(exact), [args64[i] for i in sample.grad])
    for got, torch_got, reference in [(loss, expected, exact), *zip(grads, expected_grads, exact_grads)]:
        error = (got.double() - reference).abs().max().item()
        torch_error = (torch_got.double() - reference).abs().max().item()
        floor = 2 ** -20 if got.dtype == torch.float32 else 2 ** -7  # a few float32 / one bfloat16 ulp
        assert error <= 1.5 * torch_error + floor * max(reference.abs().max().item(), 1e-3), (error, torch_error)


def test_autocast_mixed_dtypes_cross_entropy():
    """Autocast's usual case: bfloat16 logits from an autocast matmul and a float32 class weight."""
    x = torch.randn(6, 9, device=DEVICE).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, 9, (6,), device=DEVICE)
    weight = torch.rand(9, device=DEVICE) + 0.5
    device_type = "cuda" if DEVICE == "cuda" else "cpu"
    with torch.autocast(device_type, dtype=torch.bfloat16):
        with fusedloss.backend("triton"):
            loss = fusedloss.functional.cross_entropy(x, target, weight, label_smoothing=0.1)
        expected = torch.nn.functional.cross_entropy(x, target, weight, label_smoothing=0.1)
    assert loss.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    grad, expected_grad = (torch.autograd.grad(v, x)[0] for v in (loss, expected))
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------ CUDA graphs (GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("name", IDS)
def test_cuda_graph_capture_and_replay(name):
    """Forward+backward of every loss captured in a CUDA graph and replayed on new values: the same
    results as eager (no host sync in either pass; the reduction counters reset themselves)."""
    sample = SAMPLES[name]
    args, kwargs = sample.call(torch.float32)
    diff = [args[i] for i in sample.grad]

    def step():
        loss = _scalar(_loss(sample, args, kwargs))
        return (loss, *torch.autograd.grad(loss, diff))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()  # warm-up: compile, plans, counters
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for _ in range(2):
        fresh, _ = sample.call(torch.float32)
        with torch.no_grad():
            for old, new in zip(args, fresh):
                if torch.is_tensor(old) and old.is_floating_point():
                    old.copy_(new)
        graph.replay()
        expected = step()
        for c, e in zip(captured, expected):
            torch.testing.assert_close(c, e)


@pytest.mark.gpu
def test_compile_reduce_overhead_cuda():
    calls, all_losses = _all_losses(torch.float32)
    torch._dynamo.reset()
    with fusedloss.backend("triton"):
        eager = _losses_and_grads(all_losses, calls)
        compiled_fn = torch.compile(all_losses, mode="reduce-overhead")
        for _ in range(3):
            compiled = _losses_and_grads(compiled_fn, calls)
    for ours, theirs in zip(compiled[0] + list(compiled[1]), eager[0] + list(eager[1])):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_graphs_replayed_concurrently_share_no_counter():
    """Two graphs captured one after the other (on torch's one capture stream), each with reductions
    finished in the kernel, replayed at the same time on two streams many times: each gives its eager
    result every time (a ticket counter shared between them would let a program of one count as the
    last of the other, before every partial sum is written), and reductions launched eagerly afterwards
    on either stream still write their result (a counter left non-zero would make them skip it)."""
    torch.manual_seed(0)
    problems = [(torch.randn(4096, 513, device="cuda"), torch.randint(0, 513, (4096,), device="cuda")),
                (torch.randn(8191, 100, device="cuda"), torch.randn(8191, 100, device="cuda"))]

    def loss(i):
        x, y = problems[i]
        with fusedloss.backend("triton"):
            if i == 0:
                return fusedloss.functional.cross_entropy(x, y) + fusedloss.functional.cross_entropy(x, y, reduction="sum")
            return fusedloss.functional.mse_loss(x, y) + fusedloss.functional.l1_loss(x, y, reduction="sum")

    expected = [loss(0), loss(1)]
    graphs, outputs = [], []
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        loss(0), loss(1)
    torch.cuda.current_stream().wait_stream(warm)
    for i in range(2):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs.append(loss(i))
        graphs.append(graph)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    results = [[], []]
    for _ in range(50):
        for i in range(2):
            streams[i].wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(streams[i]):
                graphs[i].replay()
                results[i].append(outputs[i].clone())
        for i in range(2):
            torch.cuda.current_stream().wait_stream(streams[i])
    torch.cuda.synchronize()
    for i in range(2):
        for got in results[i]:
            torch.testing.assert_close(got, expected[i], rtol=0, atol=0)
        with torch.cuda.stream(streams[i]):
            after = loss(i)
        torch.cuda.synchronize()
        torch.testing.assert_close(after, expected[i], rtol=0, atol=0)
