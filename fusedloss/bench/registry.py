"""What the benchmark measures: one ``LossBench`` entry per loss.

A loss joins the suite by adding one entry to ``REGISTRY``: how to make its inputs at a shape, the
shapes to run (GPU full grid, ``--quick``, CPU, the interpreter's traffic meter), its minimal traffic,
and any peer implementations. The harness, the traffic meter and the reports need no change.
"""
import dataclasses
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import fusedloss
import fusedloss.functional as FL

Shape = Tuple[int, ...]


@dataclasses.dataclass
class Inputs:
    """One call's arguments. ``grad_tensors``: the inputs whose gradient the backward computes."""

    args: tuple
    kwargs: dict
    grad_tensors: tuple

    def nbytes(self):
        tensors = [*self.args, *self.kwargs.values()]
        return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


@dataclasses.dataclass
class LossBench:
    name: str  # the function's name in torch.nn.functional and fusedloss.functional
    family: str
    make_inputs: Callable[[Shape, torch.dtype, str], Inputs]
    gpu_shapes: Sequence[Shape]
    quick_shapes: Sequence[Shape]
    cpu_shapes: Sequence[Shape]
    traffic_shapes: Sequence[Shape]
    dtypes: Sequence[torch.dtype] = (torch.bfloat16, torch.float32)
    kwargs: dict = dataclasses.field(default_factory=dict)  # options every implementation gets
    variant: str = ""  # label of an option set ("smoothing+weight")
    fusedloss_kwargs: dict = dataclasses.field(default_factory=dict)  # extras for fusedloss only
    peers: Dict[str, Callable[[], Optional[Callable]]] = dataclasses.field(default_factory=dict)
    peer_notes: Dict[str, str] = dataclasses.field(default_factory=dict)  # peers never run, and why
    minimal: Optional[Callable[[Inputs, bool], int]] = None  # when less than every input in full is needed
    # fusedloss option sets also measured, as "fusedloss (<label>)"
    variants: Dict[str, dict] = dataclasses.field(default_factory=dict)
    # the eager torch implementation when torch.nn.functional has no ``name`` (torchvision's focal loss)
    reference: Optional[Callable] = None
    # floating-point operations of one call (forward, or forward+backward): the compute-bound losses
    flops: Optional[Callable[[Inputs, bool], int]] = None
    # bytes the largest implementation needs at a shape and element size (default: 3 x the shape's elements)
    footprint: Optional[Callable[[Shape, int], int]] = None
    # a function with a per-row output (pairwise_distance, cosine_similarity): every implementation's
    # output is summed, so forward+backward differentiates a scalar (grad_output 1 per row)
    sum_output: bool = False

    @property
    def ndim(self):
        """The number of dimensions of this entry's shapes."""
        return len((self.traffic_shapes or self.cpu_shapes or self.quick_shapes)[0])

    @property
    def label(self):
        return f"{self.name}[{self.variant}]" if self.variant else self.name

    def minimal_bytes(self, inputs, backward):
        """Each input read once, plus (with backward) each gradient written once."""
        if self.minimal is not None:
            return self.minimal(inputs, backward)
        written = sum(t.numel() * t.element_size() for t in inputs.grad_tensors) if backward else 0
        return inputs.nbytes() + written


# ------------------------------------------------------------------ implementations


def _total(out):
    """The sum of a per-row output (of each output, for a function returning several: log_probs' entropy)."""
    return sum(t.sum() for t in out) if isinstance(out, tuple) else out.sum()


def _summed(bench, fn):
    return (lambda *args, **kwargs: _total(fn(*args, **kwargs))) if bench.sum_output else fn


def torch_impl(bench):
    fn = bench.reference or getattr(F, bench.name)
    return _summed(bench, lambda *args, **kwargs: fn(*args, **bench.kwargs, **kwargs))


def fusedloss_impl(bench, **extra):
    fn = getattr(FL, bench.name)
    return _summed(bench, lambda *args, **kwargs: fn(*args, **bench.kwargs, **bench.fusedloss_kwargs, **extra,
                                                     **kwargs))


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    # default dynamic=None: the first shape compiles static, later shapes share one dynamic graph; the
    # raised cache limit keeps dynamo from silently falling back to eager after many shapes/dtypes
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(fn)


def compile_impl(bench):
    fn = _compiled(bench.reference or getattr(F, bench.name))
    return _summed(bench, lambda *args, **kwargs: fn(*args, **bench.kwargs, **kwargs))


def implementations(bench, device):
    """name -> callable for this device, plus {name: reason} for those skipped."""
    impls = {"fusedloss": fusedloss_impl(bench), "torch": torch_impl(bench)}
    skipped = dict(bench.peer_notes)
    if device == "cuda":
        for label, extra in bench.variants.items():
            impls[f"fusedloss ({label})"] = fusedloss_impl(bench, **extra)
        impls["torch.compile"] = compile_impl(bench)
        for peer, factory in bench.peers.items():
            try:
                impl = factory(bench)
            except Exception as exc:  # not installed, or incompatible with this torch/triton
                skipped[peer] = f"not importable ({type(exc).__name__}: {exc})"
                continue
            if impl is None:
                skipped[peer] = "does not support these options"
            else:
                impls[peer] = impl
    else:
        skipped["torch.compile"] = "GPU runs only"
        skipped.update({peer: "GPU only" for peer in bench.peers})
    return impls, skipped


# ------------------------------------------------------------------ cross entropy / NLL


def _class_targets(n_rows, n_classes, device, ignore_fraction=0.05):
    target = torch.randint(0, n_classes, (n_rows,), device=device)
    ignored = torch.rand(n_rows, device=device) < ignore_fraction
    return target.masked_fill(ignored, -100)


def cross_entropy_inputs(shape, dtype, device):
    n_rows, n_classes = shape
    logits = torch.randn(n_rows, n_classes, device=device, dtype=dtype).requires_grad_()
    return Inputs((logits, _class_targets(n_rows, n_classes, device)), {}, (logits,))


def weighted_cross_entropy_inputs(shape, dtype, device):
    inputs = cross_entropy_inputs(shape, dtype, device)
    weight = torch.rand(shape[1], device=device, dtype=dtype) + 0.5
    return Inputs(inputs.args, {"weight": weight}, inputs.grad_tensors)


def nll_inputs(shape, dtype, device):
    n_rows, n_classes = shape
    logp = torch.randn(n_rows, n_classes, device=device, dtype=dtype).log_softmax(1).detach().requires_grad_()
    return Inputs((logp, _class_targets(n_rows, n_classes, device)), {}, (logp,))


def nll_minimal_bytes(inputs, backward):
    """NLL reads one log-probability per row (a gather) and the targets; its gradient is the full input."""
    logp, target = inputs.args
    grad = logp.numel() * logp.element_size() if backward else 0
    return target.numel() * (target.element_size() + logp.element_size()) + grad


def liger_cross_entropy(bench):
    from liger_kernel.transformers.functional import liger_cross_entropy

    smoothing = bench.kwargs.get("label_smoothing", 0.0)
    return lambda logits, target, **kw: liger_cross_entropy(logits, target, label_smoothing=smoothing, **kw)


_CE_GPU_SHAPES = [(tokens, vocab) for vocab in (32000, 128256, 262144) for tokens in (4096, 16384, 65536)]
_CE_VARIANTS = {
    "inplace": {"inplace_backward": True},
    "grad in forward": {"grad_in_forward": True},
    "grad in forward, inplace": {"grad_in_forward": True, "inplace_backward": True},
}
_CE_NOTES = {"cut-cross-entropy": "fuses the classifier matmul (embeddings x weights -> loss), so it is not "
                                  "comparable on precomputed logits; it belongs with linear_cross_entropy"}

REGISTRY = [
    LossBench(
        name="cross_entropy", family="softmax rows", make_inputs=cross_entropy_inputs,
        gpu_shapes=_CE_GPU_SHAPES, quick_shapes=[(16384, 32000), (8192, 128256)],
        cpu_shapes=[(512, 32000)], traffic_shapes=[(64, 3001)],
        peers={"liger": liger_cross_entropy}, peer_notes=_CE_NOTES, variants=_CE_VARIANTS),
    LossBench(
        name="cross_entropy", family="softmax rows", variant="smoothing+weight",
        make_inputs=weighted_cross_entropy_inputs, kwargs={"label_smoothing": 0.1},
        gpu_shapes=[(16384, 32000), (16384, 128256)], quick_shapes=[(16384, 32000)],
        cpu_shapes=[(512, 32000)], traffic_shapes=[(64, 3001)], dtypes=(torch.bfloat16,),
        peers={"liger": liger_cross_entropy}, peer_notes=_CE_NOTES, variants=_CE_VARIANTS),
    LossBench(
        name="nll_loss", family="softmax rows", make_inputs=nll_inputs, minimal=nll_minimal_bytes,
        gpu_shapes=[(16384, 32000), (16384, 128256)], quick_shapes=[(16384, 32000)],
        cpu_shapes=[(512, 32000)], traffic_shapes=[(64, 3001)], dtypes=(torch.bfloat16,)),
]


def implementation_names():
    """Every implementation name the suite knows (which ones run depends on the device and what is installed)."""
    names = ["fusedloss", "torch", "torch.compile"]
    for bench in REGISTRY:
        names += [f"fusedloss ({label})" for label in bench.variants] + list(bench.peers)
    return list(dict.fromkeys(names))


def select(names=None):
    """Entries whose name or label is in ``names`` (all when None)."""
    if not names:
        return list(REGISTRY)
    chosen = [b for b in REGISTRY if b.name in names or b.label in names]
    unknown = set(names) - {b.name for b in REGISTRY} - {b.label for b in REGISTRY}
    if unknown:
        raise SystemExit(f"unknown loss {sorted(unknown)}; known: {sorted({b.label for b in REGISTRY})}")
    return chosen


# ------------------------------------------------------------------ pointwise losses
# Inputs are flat vectors (pointwise losses see only the element count), 2-D where a pos_weight broadcasts
# along the last dimension. grad_tensors: what a training step differentiates -- the prediction (input),
# plus var for the Gaussian NLL (a predicted variance) and both scores of the margin ranking loss; targets
# are data. Tensors that the minimal traffic must count are passed positionally (Inputs.nbytes counts args).


def _normal(shape, dtype, device):
    return torch.randn(shape, device=device, dtype=dtype)


def _probability(shape, dtype, device):
    return torch.rand(shape, device=device).clamp(1e-3, 1 - 1e-3).to(dtype)


def _positive(shape, dtype, device):
    return (torch.rand(shape, device=device) + 0.1).to(dtype)


def _sign(shape, dtype, device):
    return (torch.randint(0, 2, shape, device=device) * 2 - 1).to(dtype)


def _counts(shape, dtype, device):
    return torch.poisson(4 * torch.rand(shape, device=device)).to(dtype)


def _log_probability(shape, dtype, device):
    return torch.randn(shape, device=device).log_softmax(-1).to(dtype)


def _last_dim_weight(shape, dtype, device):
    return (torch.rand(shape[-1], device=device) + 0.5).to(dtype)


def pointwise_inputs(*makers, grad=(0,)):
    """make_inputs from one maker per positional argument (or its value, when not callable); the
    arguments at ``grad`` require grad."""
    def make(shape, dtype, device):
        args = [maker(shape, dtype, device) if callable(maker) else maker for maker in makers]
        for i in grad:
            args[i].requires_grad_()
        return Inputs(tuple(args), {}, tuple(args[i] for i in grad))
    return make


def eager_sigmoid_focal_loss(*args, **kwargs):
    """torchvision.ops.sigmoid_focal_loss (torchvision is not a dependency): fusedloss's eager path."""
    with fusedloss.backend("torch"):
        return FL.sigmoid_focal_loss(*args, **kwargs)


_PW_SHAPES = dict(gpu_shapes=[(2**20,), (2**24,), (2**26,), (2**28,)], quick_shapes=[(2**24,)],
                  cpu_shapes=[(2**20,)], traffic_shapes=[(3001,)])
_PW_2D_SHAPES = dict(gpu_shapes=[(2**10, 1024), (2**14, 1024), (2**16, 1024), (2**18, 1024)],
                     quick_shapes=[(2**14, 1024)], cpu_shapes=[(2**10, 1024)], traffic_shapes=[(5, 1001)])
_BCE_LOGITS_POS_WEIGHT = (_normal, _probability, None, None, None, "mean", _last_dim_weight)

REGISTRY.extend([
    LossBench(name="binary_cross_entropy", family="pointwise",
              make_inputs=pointwise_inputs(_probability, _probability), **_PW_SHAPES),
    LossBench(name="binary_cross_entropy_with_logits", family="pointwise",
              make_inputs=pointwise_inputs(_normal, _probability), **_PW_SHAPES),
    LossBench(name="binary_cross_entropy_with_logits", family="pointwise", variant="pos_weight",
              make_inputs=pointwise_inputs(*_BCE_LOGITS_POS_WEIGHT), **_PW_2D_SHAPES),
    LossBench(name="smooth_l1_loss", family="pointwise", make_inputs=pointwise_inputs(_normal, _normal),
              **_PW_SHAPES),
    LossBench(name="huber_loss", family="pointwise", make_inputs=pointwise_inputs(_normal, _normal), **_PW_SHAPES),
    LossBench(name="l1_loss", family="pointwise", make_inputs=pointwise_inputs(_normal, _normal), **_PW_SHAPES),
    LossBench(name="mse_loss", family="pointwise", make_inputs=pointwise_inputs(_normal, _normal), **_PW_SHAPES),
    LossBench(name="soft_margin_loss", family="pointwise", make_inputs=pointwise_inputs(_normal, _sign),
              **_PW_SHAPES),
    LossBench(name="kl_div", family="pointwise", kwargs={"reduction": "batchmean"},
              make_inputs=pointwise_inputs(_log_probability, _probability), **_PW_2D_SHAPES),
    LossBench(name="poisson_nll_loss", family="pointwise", make_inputs=pointwise_inputs(_normal, _counts),
              **_PW_SHAPES),
    LossBench(name="gaussian_nll_loss", family="pointwise",
              make_inputs=pointwise_inputs(_normal, _normal, _positive, grad=(0, 2)), **_PW_SHAPES),
    LossBench(name="margin_ranking_loss", family="pointwise",
              make_inputs=pointwise_inputs(_normal, _normal, _sign, grad=(0, 1)), **_PW_SHAPES),
    LossBench(name="hinge_embedding_loss", family="pointwise", make_inputs=pointwise_inputs(_positive, _sign),
              **_PW_SHAPES),
    LossBench(name="sigmoid_focal_loss", family="pointwise", kwargs={"reduction": "mean"},
              reference=eager_sigmoid_focal_loss, make_inputs=pointwise_inputs(_normal, _probability),
              **_PW_SHAPES),
])


# ------------------------------------------------------------------ linear_cross_entropy (matmul rows)
# Shapes (N tokens, H features, C classes): Llama 3 (H 4096, C 128256) at 8192 and 16384 tokens, Gemma 2 2B
# (H 2304, C 256000: the shape Cut Cross-Entropy publishes), a 32000-token vocabulary. bf16, the input and
# the linear weight differentiated, 5% of the targets ignored.


def linear_cross_entropy_inputs(shape, dtype, device):
    n_rows, hidden, n_classes = shape
    x = (torch.randn(n_rows, hidden, device=device) / hidden**0.25).to(dtype).requires_grad_()
    w = (torch.randn(n_classes, hidden, device=device) / hidden**0.25).to(dtype).requires_grad_()
    return Inputs((x, w, _class_targets(n_rows, n_classes, device)), {}, (x, w))


def linear_cross_entropy_reference(input, linear_weight, target, **kwargs):
    """torch's reference path (F.linear_cross_entropy with options=None): the logits whole; also on
    torches without linear_cross_entropy."""
    return F.cross_entropy(F.linear(input, linear_weight), target, **kwargs)


def linear_cross_entropy_flops(inputs, backward):
    """2 N H C per GEMM: the logits (forward), dInput and dWeight (backward). Recomputing the logits in
    the backward (reduction 'none', CCE) is a 4th that this count leaves out: it is the floor."""
    x, w, _ = inputs.args
    return 2 * x.shape[0] * x.shape[1] * w.shape[0] * (3 if backward else 1)


def linear_cross_entropy_footprint(shape, element_size):
    """torch's reference path at its peak: the logits, their float32 log-softmax and gradient, plus the
    weight and its gradient."""
    n_rows, hidden, n_classes = shape
    return n_rows * n_classes * (element_size + 8) + 2 * n_classes * hidden * element_size


class _ThreeGemms(torch.autograd.Function):
    """The time floor of linear cross entropy: its three GEMMs with cuBLAS and nothing else (the
    "dlogits" are the logits themselves; the loss is a placeholder)."""

    @staticmethod
    def forward(ctx, input, linear_weight):
        logits = input @ linear_weight.t()
        ctx.save_for_backward(input, linear_weight, logits)
        return logits.new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_output):
        input, linear_weight, dlogits = ctx.saved_tensors
        return dlogits @ linear_weight, dlogits.t() @ input


def three_gemm_floor(bench):
    return lambda input, linear_weight, target: _ThreeGemms.apply(input, linear_weight)


def torch_chunked_linear_cross_entropy(bench):
    """torch's chunked path (torch >= 2.13): ``options=LinearCrossEntropyOptions()``."""
    options = torch.nn.LinearCrossEntropyOptions()
    return lambda input, linear_weight, target: F.linear_cross_entropy(input, linear_weight, target, options=options)


def liger_fused_linear_cross_entropy(bench):
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)

    def call(input, linear_weight, target):
        out = loss(linear_weight, input, target)
        return out[0] if isinstance(out, tuple) else out
    return call


def cut_cross_entropy(bench):
    from cut_cross_entropy import linear_cross_entropy

    return lambda input, linear_weight, target: linear_cross_entropy(input, linear_weight, target, ignore_index=-100)


REGISTRY.append(LossBench(
    name="linear_cross_entropy", family="matmul rows", make_inputs=linear_cross_entropy_inputs,
    gpu_shapes=[(8192, 4096, 128256), (16384, 4096, 128256), (8192, 2304, 256000), (16384, 4096, 32000)],
    quick_shapes=[(8192, 4096, 128256)], cpu_shapes=[(256, 128, 2048)], traffic_shapes=[],
    dtypes=(torch.bfloat16,), reference=linear_cross_entropy_reference, flops=linear_cross_entropy_flops,
    footprint=linear_cross_entropy_footprint,
    peers={"cuBLAS 3-GEMM floor": three_gemm_floor, "torch chunked": torch_chunked_linear_cross_entropy,
           "liger": liger_fused_linear_cross_entropy, "cut-cross-entropy": cut_cross_entropy}))
# ------------------------------------------------------------------ row-margin losses
# Margin losses over classes at N = 16384 rows, C in {100, 1000, 32000}; embedding losses at N = 16384,
# D in {128, 1024, 8192}; the rank losses over groups of one positive and 3 negatives. grad_tensors: the
# scores or embeddings (targets are data; multilabel_soft_margin's target is a label).


def _class_index(shape, dtype, device):
    return torch.randint(0, shape[1], shape[:1], device=device)


def _class_lists(shape, dtype, device):
    """multilabel_margin_loss targets: 1 to 8 distinct classes per row, then -1 padding."""
    n_rows, n_classes = shape
    labels = torch.rand(n_rows, n_classes, device=device).argsort(dim=1)[:, :8]
    lengths = torch.randint(1, 9, (n_rows, 1), device=device)
    lists = torch.where(torch.arange(8, device=device) < lengths, labels, -1)
    return torch.cat([lists, lists.new_full((n_rows, n_classes - 8), -1)], dim=1) if n_classes > 8 else lists[:, :n_classes]


def _binary(shape, dtype, device):
    return (torch.rand(shape, device=device) < 0.1).to(dtype)


def _row_sign(shape, dtype, device):
    return _sign(shape[:1], dtype, device)


def _rank_groups(shape, dtype, device):
    """(y_pred, y_true) of ``shape`` (B * 4, 1): groups of a positive (label 1) and 3 negatives (label 0)."""
    y_pred = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
    y_true = (torch.arange(shape[0], device=device) % 4 == 0).to(dtype).reshape(shape)
    return Inputs((y_pred, y_true), {}, (y_pred,))


def rank_hinge_minimal_bytes(inputs, backward):
    """The hinge reads the scores (y_true is accepted and unused) and writes their gradient."""
    y_pred = inputs.args[0]
    return y_pred.numel() * y_pred.element_size() * (2 if backward else 1)


def eager_rank_loss(name):
    """fusedloss's eager formula of a rank loss (the library's definition in torch ops)."""
    def reference(*args, **kwargs):
        with fusedloss.backend("torch"):
            return getattr(FL, name)(*args, **kwargs)
    return reference


_MARGIN_SHAPES = dict(gpu_shapes=[(16384, 100), (16384, 1000), (16384, 32000)], quick_shapes=[(16384, 1000)],
                      cpu_shapes=[(512, 1000)], traffic_shapes=[(64, 301)])
_EMBEDDING_SHAPES = dict(gpu_shapes=[(16384, 128), (16384, 1024), (16384, 8192)], quick_shapes=[(16384, 1024)],
                         cpu_shapes=[(512, 1024)], traffic_shapes=[(64, 301)])
_RANK_SHAPES = dict(gpu_shapes=[(4 * 2**16, 1), (4 * 2**20, 1)], quick_shapes=[(4 * 2**16, 1)],
                    cpu_shapes=[(4 * 2**12, 1)], traffic_shapes=[(4 * 64, 1)])

# torch's CPU kernels of these two have no 16-bit versions: float32 first, the dtype the CPU runs (and the
# traffic meter) use
_FLOAT32_FIRST = (torch.float32, torch.bfloat16)

REGISTRY.extend([
    LossBench(name="multi_margin_loss", family="row margin", make_inputs=pointwise_inputs(_normal, _class_index),
              dtypes=_FLOAT32_FIRST, **_MARGIN_SHAPES),
    LossBench(name="multilabel_margin_loss", family="row margin",
              make_inputs=pointwise_inputs(_normal, _class_lists), dtypes=_FLOAT32_FIRST, **_MARGIN_SHAPES),
    LossBench(name="multilabel_soft_margin_loss", family="row margin",
              make_inputs=pointwise_inputs(_normal, _binary), **_MARGIN_SHAPES),
    LossBench(name="cosine_embedding_loss", family="row margin",
              make_inputs=pointwise_inputs(_normal, _normal, _row_sign, grad=(0, 1)), **_EMBEDDING_SHAPES),
    LossBench(name="triplet_margin_loss", family="row margin",
              make_inputs=pointwise_inputs(_normal, _normal, _normal, grad=(0, 1, 2)), **_EMBEDDING_SHAPES),
    LossBench(name="triplet_margin_with_distance_loss", family="row margin", kwargs={"swap": True},
              make_inputs=pointwise_inputs(_normal, _normal, _normal, grad=(0, 1, 2)), **_EMBEDDING_SHAPES),
    LossBench(name="pairwise_distance", family="row margin", sum_output=True,
              make_inputs=pointwise_inputs(_normal, _normal, grad=(0, 1)), **_EMBEDDING_SHAPES),
    LossBench(name="cosine_similarity", family="row margin", sum_output=True,
              make_inputs=pointwise_inputs(_normal, _normal, grad=(0, 1)), **_EMBEDDING_SHAPES),
    LossBench(name="rank_hinge_loss", family="row margin", kwargs={"num_neg": 3}, make_inputs=_rank_groups,
              reference=eager_rank_loss("rank_hinge_loss"), minimal=rank_hinge_minimal_bytes, **_RANK_SHAPES),
    LossBench(name="rank_cross_entropy_loss", family="row margin", kwargs={"num_neg": 3}, make_inputs=_rank_groups,
              reference=eager_rank_loss("rank_cross_entropy_loss"), **_RANK_SHAPES),
])


# ------------------------------------------------------------------ distillation and token log-probabilities
# (fusedloss's own functions: the reference is their definition in torch ops, TRL's formulas, evaluated by
# torch at the benchmark's dtype; torch.compile compiles that). Shapes (N tokens, V vocabulary): a 32000 and
# a Llama 3 128256 vocabulary; the linear forms at (N, H, V) as linear_cross_entropy's. The student's logits
# (or hidden states and LM head) differentiated; the teacher frozen; 5% of the labels ignored.


def eager_fusedloss(name):
    """fusedloss's eager formula of one of its own functions (the definition in torch ops)."""
    def reference(*args, **kwargs):
        with fusedloss.backend("torch"):
            out = getattr(FL, name)(*args, **kwargs)
        return torch.stack(out) if isinstance(out, tuple) else out
    return reference


def jsd_inputs(shape, dtype, device):
    n_rows, n_classes = shape
    student = torch.randn(n_rows, n_classes, device=device, dtype=dtype).requires_grad_()
    teacher = torch.randn(n_rows, n_classes, device=device, dtype=dtype)
    return Inputs((student, teacher, _class_targets(n_rows, n_classes, device)), {}, (student,))


def log_probs_inputs(shape, dtype, device):
    n_rows, n_classes = shape
    logits = torch.randn(n_rows, n_classes, device=device, dtype=dtype).requires_grad_()
    return Inputs((logits, _class_targets(n_rows, n_classes, device)), {}, (logits,))


def liger_jsd(bench):
    """Liger-Kernel's LigerJSD takes log-probabilities: the log-softmaxes at T run in torch first."""
    from liger_kernel.transformers.jsd import LigerJSD

    beta, temperature = bench.kwargs.get("beta", 0.5), bench.kwargs.get("temperature", 1.0)
    loss = LigerJSD(beta=beta, ignore_index=-100)

    def call(student, teacher, labels, **unused):
        return loss(torch.log_softmax(student.float() / temperature, -1),
                    torch.log_softmax(teacher.float() / temperature, -1), labels)
    return call


def linear_jsd_inputs(shape, dtype, device):
    n_rows, hidden, n_classes = shape
    scale = hidden ** 0.25
    x = (torch.randn(n_rows, hidden, device=device) / scale).to(dtype).requires_grad_()
    w = (torch.randn(n_classes, hidden, device=device) / scale).to(dtype).requires_grad_()
    xt = (torch.randn(n_rows, hidden, device=device) / scale).to(dtype)
    wt = (torch.randn(n_classes, hidden, device=device) / scale).to(dtype)
    return Inputs((x, w, xt, wt, _class_targets(n_rows, n_classes, device)), {}, (x, w))


def linear_jsd_flops(inputs, backward):
    """The student's logits (and, backward, its two gradient GEMMs) plus the frozen teacher's logits."""
    x, w, xt, wt, _ = inputs.args
    n, v = x.shape[0], w.shape[0]
    return 2 * n * v * (x.shape[1] * (3 if backward else 1) + xt.shape[1])


def linear_jsd_footprint(shape, element_size):
    """The reference at its peak: both logits, their float32 log-softmaxes and the student's gradient."""
    n_rows, hidden, n_classes = shape
    return n_rows * n_classes * (2 * element_size + 12) + 4 * n_classes * hidden * element_size


class _FourGemms(torch.autograd.Function):
    """The time floor of linear_jsd_loss with a frozen teacher: its four GEMMs and nothing else."""

    @staticmethod
    def forward(ctx, input, weight, teacher_input, teacher_weight):
        logits = input @ weight.t()
        teacher_input @ teacher_weight.t()
        ctx.save_for_backward(input, weight, logits)
        return logits.new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, dlogits = ctx.saved_tensors
        return dlogits @ weight, dlogits.t() @ input, None, None


def four_gemm_floor(bench):
    return lambda input, weight, teacher_input, teacher_weight, labels, **unused: _FourGemms.apply(
        input, weight, teacher_input, teacher_weight)


def liger_fused_linear_jsd(bench):
    from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD

    loss = LigerFusedLinearJSD(jsd_beta=bench.kwargs.get("beta", 0.5), ignore_index=-100,
                               temperature=bench.kwargs.get("temperature", 1.0))
    return lambda x, w, xt, wt, labels, **unused: loss(x, w, xt, wt, labels)


def liger_chunked_jsd(bench):
    """Liger-Kernel's chunked distillation loss (torch.compile'd per chunk), soft loss only."""
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    loss = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=bench.kwargs.get("beta", 0.5),
                                   ignore_index=-100, temperature=bench.kwargs.get("temperature", 1.0))
    return lambda x, w, xt, wt, labels, **unused: loss(x, w, xt, wt, labels)


def linear_log_probs_flops(inputs, backward):
    """The logits, and backward: their recomputation and the two gradient GEMMs (four in all)."""
    x, w, _ = inputs.args
    return 2 * x.shape[0] * x.shape[1] * w.shape[0] * (4 if backward else 1)


_JSD_SHAPES = dict(gpu_shapes=[(8192, 32000), (8192, 128256), (16384, 128256)], quick_shapes=[(8192, 128256)],
                   cpu_shapes=[(256, 32000)], traffic_shapes=[(64, 3001)])
_LINEAR_DISTRIBUTION_SHAPES = dict(gpu_shapes=[(8192, 4096, 128256), (8192, 2304, 256000)],
                                   quick_shapes=[(8192, 4096, 128256)], cpu_shapes=[(256, 128, 2048)],
                                   traffic_shapes=[])
_NO_GRPO_PEER = {"liger (GRPO)": "Liger-Kernel's GRPO loss fuses its own policy objective around the log-probs: "
                                 "not comparable on the per-token log-probabilities alone"}

REGISTRY.extend([
    LossBench(name="jsd_loss", family="softmax rows", make_inputs=jsd_inputs, kwargs={"beta": 0.5},
              reference=eager_fusedloss("jsd_loss"), peers={"liger": liger_jsd},
              variants={"grad in forward": {"grad_in_forward": True}}, **_JSD_SHAPES),
    LossBench(name="jsd_loss", family="softmax rows", variant="forward KL, T=2", make_inputs=jsd_inputs,
              kwargs={"beta": 0.0, "temperature": 2.0}, reference=eager_fusedloss("jsd_loss"),
              peers={"liger": liger_jsd}, dtypes=(torch.bfloat16,), **_JSD_SHAPES),
    LossBench(name="log_probs", family="softmax rows", variant="entropy", make_inputs=log_probs_inputs,
              kwargs={"with_entropy": True}, reference=eager_fusedloss("log_probs"), sum_output=True,
              peer_notes=_NO_GRPO_PEER, **_JSD_SHAPES),
    LossBench(name="linear_jsd_loss", family="matmul rows", make_inputs=linear_jsd_inputs, kwargs={"beta": 0.5},
              reference=eager_fusedloss("linear_jsd_loss"), flops=linear_jsd_flops, footprint=linear_jsd_footprint,
              dtypes=(torch.bfloat16,),
              peers={"cuBLAS 4-GEMM floor": four_gemm_floor, "liger": liger_fused_linear_jsd,
                     "liger (chunked)": liger_chunked_jsd}, **_LINEAR_DISTRIBUTION_SHAPES),
    LossBench(name="linear_log_probs", family="matmul rows", variant="entropy", make_inputs=linear_cross_entropy_inputs,
              kwargs={"with_entropy": True}, reference=eager_fusedloss("linear_log_probs"), sum_output=True,
              flops=linear_log_probs_flops, footprint=linear_cross_entropy_footprint, dtypes=(torch.bfloat16,),
              peer_notes=_NO_GRPO_PEER, **_LINEAR_DISTRIBUTION_SHAPES),
])
