"""Shared test helpers: the one tolerance table, the parity assertion, input makers."""
import contextlib
import dataclasses
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fusedloss

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOW_PRECISION = (torch.bfloat16, torch.float16)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# (rtol, atol relative to the reference's largest magnitude) against a float64 reference.
# float32/float64: tight. bf16/fp16: about two ulp (the kernels compute in float32 and round once; the
# interpreter rounds to nearest even as the GPU does, tests/conftest.py), plus "no further from float64
# than torch at the same dtype, to the ulp" (assert_matches_torch). fp16's atol stays at two ulp of the
# largest value because 'mean' gradients of 4097 elements fall among fp16's subnormals.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.bfloat16: (1.6e-2, 8e-3),
    torch.float16: (2e-3, 2e-3),
}


def _scale(reference):
    finite = reference[torch.isfinite(reference)]
    return float(finite.abs().max()) if finite.numel() else 1.0


def assert_matches(actual, reference64, dtype, what=""):
    """``actual`` within the dtype's tolerance of the float64 reference; NaN exactly where it has NaN. Values
    among the dtype's subnormals are spaced ``tiny * eps`` apart (float16: 6e-8), so half of that is allowed
    on top: a correctly rounded subnormal result passes."""
    assert actual.shape == reference64.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(reference64.shape)}"
    rtol, atol = TOLERANCES[dtype]
    half_subnormal_spacing = torch.finfo(dtype).tiny * torch.finfo(dtype).eps / 2
    torch.testing.assert_close(actual.detach().double().cpu(), reference64.detach().double().cpu(),
                               rtol=rtol, atol=atol * _scale(reference64.detach()) + half_subnormal_spacing,
                               equal_nan=True, msg=lambda m: f"{what}: {m}")


def max_error(actual, reference64):
    diff = (actual.detach().double() - reference64.detach().double()).abs()
    diff = diff[torch.isfinite(diff)]
    return float(diff.max()) if diff.numel() else 0.0


def assert_matches_torch(actual, torch_same_dtype, reference64, dtype, what=""):
    """Parity check: the tolerance table, and for bf16/fp16 also "no worse than torch at this dtype".

    A result bit-identical to torch's at the same dtype passes as it is (the eager path, or torch's own
    fp16 overflow that the kernels' float32 accumulation avoids would fail the float64 comparison).
    """
    _assert_parity(actual, torch_same_dtype, reference64, dtype, what, ulps=1)


def assert_twice_rounded_matches_torch(actual, torch_same_dtype, reference64, dtype, what=""):
    """``assert_matches_torch`` for a value rounded to a low-precision dtype twice where torch rounds once
    (a gradient stored by the forward for grad_output 1, then multiplied by another grad_output): one
    more ulp at the largest magnitude allowed on top of torch's error."""
    _assert_parity(actual, torch_same_dtype, reference64, dtype, what, ulps=2)


def _assert_parity(actual, torch_same_dtype, reference64, dtype, what, ulps):
    if actual.dtype == torch_same_dtype.dtype and torch.equal(
            actual.detach().nan_to_num(), torch_same_dtype.detach().nan_to_num()):
        return
    assert_matches(actual, reference64, dtype, what)
    if dtype in LOW_PRECISION:
        ours, theirs = max_error(actual, reference64), max_error(torch_same_dtype, reference64)
        ulp = torch.finfo(dtype).eps * _scale(reference64.detach())
        assert ours <= theirs + ulps * ulp, f"{what}: error {ours:.3g} vs torch's {theirs:.3g} at {dtype}"


def backend_context(name):
    return fusedloss.backend(name) if name else contextlib.nullcontext()


def strided_like(tensor, layout):
    """The same values in another memory layout: "contiguous", "transposed" (column-major (N, C)),
    or "sliced" (every other element along the last dim of a wider buffer)."""
    if layout == "contiguous" or tensor.dim() < 2:
        return tensor.contiguous()
    if layout == "transposed":
        return tensor.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "sliced":
        wide = torch.empty(*tensor.shape[:-1], 2 * tensor.shape[-1], dtype=tensor.dtype, device=tensor.device)
        wide[..., ::2] = tensor
        return wide[..., ::2]
    raise ValueError(layout)


# ------------------------------------------------------------------ the parity check of a fused function


def as_float64(args, kwargs):
    def convert(t):
        if not torch.is_tensor(t) or not t.is_floating_point():
            return t
        return t.detach().double().requires_grad_(t.requires_grad)
    return [convert(a) for a in args], {k: convert(v) for k, v in kwargs.items()}


def loss_and_grads(fn, args, kwargs, upstream, backend=None):
    """fn(*args, **kwargs) under ``backend`` (None: as it is) and the gradients of sum(loss * upstream)."""
    with backend_context(backend):
        loss = fn(*args, **kwargs)
    diff = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    grads = torch.autograd.grad(loss, diff, upstream.to(loss.dtype)) if diff else ()
    return loss, grads


def check_parity(torch_fn, ours, args, kwargs, backend, grad_scale=0.37, upstream=None):
    """``ours`` vs ``torch_fn`` at the same dtype vs ``torch_fn`` in float64: the loss and the gradient of
    every argument that requires grad, for sum(loss * upstream) (random, times ``grad_scale``, unless
    given). Gradients may be rounded twice (stored by the forward for grad_output 1, then multiplied).

    Where torch has no kernel for the dtype on this device (the CPU's multi_margin_loss and
    multilabel_margin_loss in 16 bits: NotImplementedError), only the float64 comparison is made.
    """
    dtype = args[0].dtype
    args64, kwargs64 = as_float64(args, kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings have their own tests
        if upstream is None:
            with torch.no_grad():
                shape = torch_fn(*args64, **kwargs64).shape
            upstream = (torch.rand(shape, dtype=torch.float64, device=DEVICE) + 0.5) * grad_scale
        ref, ref_grads = loss_and_grads(torch_fn, args64, kwargs64, upstream)
        try:
            same, same_grads = loss_and_grads(torch_fn, args, kwargs, upstream)
        except NotImplementedError:
            if DEVICE != "cpu" or dtype not in LOW_PRECISION:
                raise
            same = same_grads = None
        loss, grads = loss_and_grads(ours, args, kwargs, upstream, backend)
    assert len(grads) == len(ref_grads)
    if same is None:
        assert loss.dtype == dtype
        assert_matches(loss, ref, dtype, "loss")
        for i, (grad, ref_grad) in enumerate(zip(grads, ref_grads)):
            assert grad.dtype == dtype, f"grad {i}"
            assert_matches(grad, ref_grad, dtype, f"grad {i}")
        return
    assert loss.dtype == same.dtype
    assert_matches_torch(loss, same, ref, dtype, "loss")
    for i, (grad, same_grad, ref_grad) in enumerate(zip(grads, same_grads, ref_grads)):
        assert grad.dtype == same_grad.dtype, f"grad {i}"
        # the forward stores the gradient for grad_output 1, the backward multiplies it: rounded twice
        assert_twice_rounded_matches_torch(grad, same_grad, ref_grad, dtype, f"grad {i}")


# ------------------------------------------------------------------ value makers (float64) and parity cases


def normal(shape):
    return torch.randn(shape, dtype=torch.float64, device=DEVICE)


def probability(shape):
    return torch.rand(shape, dtype=torch.float64, device=DEVICE) * 0.98 + 0.01


def positive(shape):
    return torch.rand(shape, dtype=torch.float64, device=DEVICE) + 0.1


def scaled(scale):
    """A maker of normal values times ``scale`` (logits, scores)."""
    def make(shape):
        return scale * normal(shape)
    return make


def sign(shape):
    """+1 or -1, evenly, as float64 (the pointwise and embedding losses' targets)."""
    return torch.randint(0, 2, shape, device=DEVICE).double() * 2 - 1


def class_labels(shape, n_classes, ignore=True):
    """Class indices of ``shape`` (the rows of a (..., n_classes) input); with ``ignore``, the second one is
    -100 (ignored) when there are two or more."""
    target = torch.randint(0, n_classes, shape, device=DEVICE)
    if ignore and target.numel() > 1:
        target.view(-1)[1] = -100
    return target


def class_targets(shape, n_classes, ignore_fraction=0.2, ignore_index=-100):
    """Class indices of ``shape``, about ``ignore_fraction`` of them ``ignore_index`` (the benchmark's
    maker, fusedloss/bench/inputs.py, on this device)."""
    from fusedloss.bench import inputs

    return inputs.class_targets(shape, n_classes, DEVICE, ignore_fraction, ignore_index)


def probability_targets(shape, dtype=torch.float32):
    """Class probabilities of a (C,) or (N, C, d1, ...) input (the classes: dim 0 or 1), from logits ~ 3."""
    return torch.softmax(3 * torch.randn(shape, device=DEVICE), dim=0 if len(shape) == 1 else 1).to(dtype)


@dataclasses.dataclass
class Case:
    """One call of a parity grid: a function, its tensors' value makers (given a shape) and options."""

    fn: str  # the name in torch.nn.functional and fusedloss.functional
    makers: tuple  # one value maker per positional tensor
    grad: tuple  # positions of the tensors torch differentiates
    kwargs: dict = dataclasses.field(default_factory=dict)
    tensor_kwargs: dict = dataclasses.field(default_factory=dict)  # name -> maker (weight, pos_weight)
    reductions: tuple = ("none", "mean", "sum")  # (None,): a function without a reduction argument


def make_call(case, shape, dtype, layout="contiguous"):
    """(args, kwargs) at ``dtype`` (floating tensors; integer targets stay as they are) in ``layout``; the
    tensors torch differentiates require grad."""
    def make(maker):
        tensor = maker(shape)
        return strided_like(tensor.to(dtype) if tensor.is_floating_point() else tensor, layout)

    args = [make(maker).requires_grad_(i in case.grad) for i, maker in enumerate(case.makers)]
    kwargs = dict(case.kwargs)
    kwargs.update({name: make(maker) for name, maker in case.tensor_kwargs.items()})
    return args, kwargs


def parity_grid(cases, shapes, eager_shape, low_precision_shapes=None):
    """pytest params (case_id, reduction, shape, dtype, backend): every case, reduction and shape on the
    Triton backend in float32, and in 16 bits at ``low_precision_shapes`` (every shape when None); the
    eager backend (torch's own function: one shape checks the plumbing) at ``eager_shape`` in float32."""
    for case_id, case in cases.items():
        for reduction in case.reductions:
            for shape in shapes:
                for dtype in DTYPES:
                    if dtype != torch.float32 and low_precision_shapes is not None and shape not in low_precision_shapes:
                        continue
                    for backend in ("triton", "torch"):
                        if backend == "torch" and (shape != eager_shape or dtype != torch.float32):
                            continue
                        yield pytest.param(case_id, reduction, shape, dtype, backend,
                                           id=f"{case_id}-{reduction}-{shape}-{str(dtype)[6:]}-{backend}")


def grid_call(case, shape, dtype, strided_shape):
    """make_call at a grid point; the shape "strided" is ``strided_shape`` as views of transposed buffers."""
    if shape != "strided":
        return make_call(case, shape, dtype)
    args, kwargs = make_call(case, strided_shape, dtype, layout="transposed")
    assert not args[0].is_contiguous()
    return args, kwargs


def check_module_drop_in(name, kwargs, makers, shape=(5, 7)):
    """fusedloss.nn.<name> against torch.nn.<name> built with ``kwargs``: a subclass with torch's repr and
    state_dict, fused on the Triton backend, with torch's loss and input gradient for tensors of ``makers``."""
    import fusedloss.nn

    kwargs = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    theirs, ours = getattr(torch.nn, name)(**kwargs), getattr(fusedloss.nn, name)(**kwargs)
    assert isinstance(ours, type(theirs)) and repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    args = [maker(shape) for maker in makers]
    args = [a.float() if a.is_floating_point() else a for a in args]
    args[0].requires_grad_()
    with fusedloss.backend("triton"):
        got = ours(*args)
        assert fusedloss.explain(ours, *args).backend == "triton"
    expected = theirs(*args)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), args[0])[0],
                               torch.autograd.grad(expected.sum(), args[0])[0])


class AllocationRecorder(TorchDispatchMode):
    """The element count of every new tensor an aten op returns (views and out= results share their
    arguments' storage and are not counted). Under Triton's interpreter a launch copies its arguments'
    storages through torch ops: those are the emulator's, not fusedloss's, and are not counted."""

    def __init__(self):
        super().__init__()
        self.sizes = [0]
        self._in_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self._in_kernel:
            leaves = torch.utils._pytree.tree_leaves((args, kwargs))
            inputs = {t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)}
            self.sizes += [t.numel() for t in torch.utils._pytree.tree_leaves(out)
                           if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs]
        return out

    def __enter__(self):
        if DEVICE == "cpu":
            from triton.runtime import interpreter

            self._executor, self._call = interpreter.GridExecutor, interpreter.GridExecutor.__call__
            recorder = self

            def launch(executor, *args, **kwargs):
                recorder._in_kernel = True
                try:
                    return recorder._call(executor, *args, **kwargs)
                finally:
                    recorder._in_kernel = False

            self._executor.__call__ = launch
        return super().__enter__()

    def __exit__(self, *exc):
        if DEVICE == "cpu":
            self._executor.__call__ = self._call
        return super().__exit__(*exc)


def run_world(run, world_size, folder, timeout):
    """Start ``run(rank, world_size, rendezvous file, folder)`` in ``world_size`` spawned processes (a gloo
    group; each saves folder/rank{r}.pt), wait at most ``timeout`` seconds (a hung collective fails the
    test instead of the suite) and return every rank's saved results."""
    import torch.multiprocessing as mp

    context = mp.start_processes(run, args=(world_size, str(folder / "rendezvous"), str(folder)),
                                 nprocs=world_size, join=False, start_method="spawn")
    try:
        finished = False
        for _ in range(timeout):
            finished = context.join(timeout=1)
            if finished:
                break
        assert finished, f"the {world_size} ranks did not finish in {timeout} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(folder / f"rank{r}.pt") for r in range(world_size)]


# per-token statistics (TRL's fused LM head): log_probs, linear_log_probs, linear_cross_entropy

ALL_STATS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def stats_reference(z, tokens, ignore_index=-100):
    """TRL's per-token statistics of the logits ``z`` as the loss sees them (scaled, capped, over T), on
    whole rows in torch ops: log_softmax[token], -sum p log p, log sum p**2, mean z, argmax(z) == token
    (torch.argmax: the first maximum); ignored rows 0 / False. A TokenStats shaped as the tokens."""
    rows, y = z.reshape(-1, z.shape[-1]), tokens.reshape(-1)
    counted = y != ignore_index
    s = rows.log_softmax(-1)
    values = (s.gather(-1, torch.where(counted, y, 0)[:, None])[:, 0], -(s.exp() * s).sum(-1),
              torch.logsumexp(2 * s, -1), rows.mean(-1))
    values = [torch.where(counted, v, torch.zeros_like(v)).reshape(tokens.shape) for v in values]
    top1 = ((rows.argmax(-1) == y) & counted).reshape(tokens.shape)
    return fusedloss.functional.distribution_rows.TokenStats(*values, top1)


def assert_stats_match(out, reference, dtype, what=""):
    """Every field of a TokenStats within ``dtype``'s tolerance of the float64 reference (is_top1 equal)."""
    assert type(out).__name__ == "TokenStats", type(out)
    for name, got, expected in zip(out._fields, out, reference):
        if got is None or expected is None:  # not asked for (linear_cross_entropy's log_probs)
            assert got is None and expected is None, (what, name)
            continue
        assert got.shape == expected.shape, (what, name, got.shape)
        if name == "is_top1":
            assert got.dtype == torch.bool and torch.equal(got, expected), (what, got, expected)
        else:
            assert_matches(got, expected, dtype, f"{what} {name}")
    for name in ("log_sum_sq_probs", "mean_logits", "is_top1"):  # TRL's: no gradient
        assert getattr(out, name) is None or not getattr(out, name).requires_grad, name
