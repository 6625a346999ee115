"""The build check: every kernel configuration fusedloss launches at realistic shapes, compiled for real
GPUs on any machine (no GPU needed), and held to its budgets.

1. Record. ``cases(family)`` lists calls at realistic shapes. Each runs forward and backward through the
   public functions with the Triton backend forced, on meta tensors (shapes, strides and dtypes, no
   memory), while the launch stub of kernels/_launch.py records every launch instead of running it: the
   kernel, its arguments, constexprs and num_warps exactly as the launchers chose them. No configuration
   is written down by hand. (Inside ``_recording`` only, the dispatcher lets meta tensors through and
   autocast reads as off for them; vocabulary-parallel calls run over torch's "fake" process group,
   whose collectives do nothing.)
2. Specialise. Triton's own binder turns the recorded arguments into what a GPU launch compiles: pointer
   dtypes, integers specialised as the JIT does (1 -> constexpr, multiples of 16 -> divisible), pointers
   16-byte aligned or not (a meta view's ``data_ptr`` is its offset in bytes; allocations are aligned, as
   CUDA's allocator makes them).
3. Compile with ``triton.compile(ASTSource(...), target=GPUTarget(...))`` and read the result:
     registers, spills   ``cuobjdump -res-usage`` on the cubin. Triton inlines every function and keeps no
                         local arrays, so the stack frame holds spills only (ptxas -v agrees): its bytes
                         per thread are the spill figure
     shared memory       the compiled kernel's metadata
     load width          the widest global load (bits) of the hot code: the PTX's loops that move global
                         memory (a branch back to an earlier label closes a loop; the volatile loads of the
                         grid-wide reduction's tail do not count), or the whole kernel when no loop does
     approximate math    static counts in the PTX of div.full.f32, ex2.approx, lg2.approx, rcp, sqrt and
                         rsqrt approximations, and of float64 instructions
     AMD                 VGPRs and scratch bytes from the AMDGCN metadata, the widest global/buffer load
   Triton's wheel ships ptxas (ptxas-blackwell for sm_100) and cuobjdump, and its HIP backend links AMDGCN
   with the LLD inside libtriton: every target compiles on a CPU-only machine, no CUDA or ROCm installed.
4. Budgets (``violations``), per configuration and target: it compiles; no spills (no scratch on AMD);
   at most 128 registers per thread at 8 warps or more (two 256-thread blocks per SM, or one of 512);
   shared memory within the target's per-block limit; NVIDIA: 128-bit global loads in the hot code when
   the case's rows are 16-byte aligned (every size below is a multiple of 16 elements, so the JIT can
   prove the alignment and anything narrower is the kernel's doing), and no float64 instruction when
   every floating input is 16- or 32-bit (most GPUs run FP64 at 1/64 rate). A kernel module may excuse a
   configuration with a written reason (``BUILD_BUDGET_EXCEPTIONS``, see ``exceptions``).

The check needs a process where Triton compiles (not its interpreter: ``TRITON_INTERPRET`` unset) and
where the launch stub, the dispatcher's meta path and the fake process group harm nothing: ``run``
starts one (``python -m fusedloss.buildcheck``) and reads its rows back as JSON. Compiled kernels land in
Triton's cache (~/.triton/cache), which makes a second run fast.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile

import torch

# Targets: NVIDIA (compute capability) and AMD (gfx name, 64-lane wavefronts).
ARCHS = {"sm_80": ("cuda", 80, 32), "sm_90": ("cuda", 90, 32), "sm_100": ("cuda", 100, 32),
         "gfx942": ("hip", "gfx942", 64), "gfx950": ("hip", "gfx950", 64)}
# Largest shared memory one block may use (bytes): the CUDA programming guide's per-block opt-in maxima;
# AMD's LDS per workgroup.
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024, "sm_100": 227 * 1024, "gfx942": 64 * 1024,
                "gfx950": 160 * 1024}
MAX_REGISTERS_AT_8_WARPS = 128
FAMILIES = ("softmax_rows", "pointwise", "row_margin", "distribution_rows", "matmul_rows")
BUDGETS = ("compiles", "spills", "registers", "shared_memory", "load_width", "float64")


# ----------------------------------------------------------------------------------------------------
# 1. the calls, per family, at realistic shapes
# ----------------------------------------------------------------------------------------------------
# Every row below is a multiple of 16 elements long, so its rows are 16-byte aligned (the load-width
# budget applies) unless a case says otherwise. Gradients are taken for the inputs a training step
# differentiates.

@dataclasses.dataclass
class Case:
    """One call: ``fn(*args, **kwargs)`` forward and backward, on meta tensors."""

    label: str
    fn: object
    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    aligned: bool = True  # its rows are 16-byte aligned

    @property
    def wide(self):
        """True when a floating input is float64 (workspaces the kernels choose do not count)."""
        tensors = [t for a in (*self.args, *self.kwargs.values()) for t in (a if isinstance(a, tuple) else (a,))]
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tensors)

    def run(self):
        """The call, then the gradient of every output for every argument that requires one."""
        out = self.fn(*self.args, **self.kwargs)
        outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
        inputs = [a for a in (*self.args, *self.kwargs.values()) if isinstance(a, torch.Tensor) and a.requires_grad]
        if outs and inputs:
            torch.autograd.grad(outs, inputs, [torch.ones_like(o) for o in outs])


def _meta(*shape, dtype=torch.float32, grad=False):
    return torch.empty(shape, dtype=dtype, device="meta", requires_grad=grad)


def _labels(*shape):
    return torch.empty(shape, dtype=torch.int64, device="meta")


def _name(dtype):
    return str(dtype).removeprefix("torch.")


_LLM_DTYPES = (torch.bfloat16, torch.float32)  # what LLM training feeds the losses; float64 added where served


def _softmax_rows_cases(FL, group):
    # cross entropy at the Llama-3 vocabulary (8192 tokens) and a 32k one (16384 tokens), each option on
    # its own and softcap with z_loss (Gemma-style); nll_loss; the vocabulary-parallel shard path
    cases = []
    for n, c in ((8192, 128256), (16384, 32000)):
        for dtype in _LLM_DTYPES + ((torch.float64,) if c == 32000 else ()):
            name = f"{_name(dtype)} {n}x{c}"
            options = {"": {}, " smoothing": {"label_smoothing": 0.1}, " z_loss": {"z_loss": 1e-4},
                       " softcap": {"softcap": 30.0}, " softcap+z_loss": {"softcap": 30.0, "z_loss": 1e-4},
                       " reduction none": {"reduction": "none"}, " grad_in_forward": {"grad_in_forward": True}}
            if dtype != torch.float64:
                options[" loss_dtype float32"] = {"loss_dtype": torch.float32}
            for label, kwargs in options.items():
                cases.append(Case(f"cross_entropy {name}{label}", FL.cross_entropy,
                                  (_meta(n, c, dtype=dtype, grad=True), _labels(n)), kwargs))
            cases += [
                Case(f"cross_entropy {name} weight", FL.cross_entropy,
                     (_meta(n, c, dtype=dtype, grad=True), _labels(n), _meta(c, dtype=dtype))),
                Case(f"cross_entropy {name} probabilities", FL.cross_entropy,
                     (_meta(n, c, dtype=dtype, grad=True), _meta(n, c, dtype=dtype))),
                Case(f"nll_loss {name}", FL.nll_loss, (_meta(n, c, dtype=dtype, grad=True), _labels(n)))]
            if dtype != torch.float64:
                for label, kwargs in (("", {}), (" smoothing", {"label_smoothing": 0.1})):
                    cases.append(Case(f"cross_entropy vocab-parallel {name}{label}", FL.cross_entropy,
                                      (_meta(n, c // 2, dtype=dtype, grad=True), _labels(n)),
                                      dict(kwargs, process_group=group(c))))
    return cases


def _pointwise_cases(FL):
    # every pointwise loss at 2**26 elements (8192 x 8192), gradient for the input; the extra operands
    # (BCE's weight and pos_weight, Gaussian NLL's var) and variants (log targets, Stirling's term)
    n = 8192
    cases = []
    for dtype in _LLM_DTYPES + (torch.float64,):
        def x(grad=True):
            return _meta(n, n, dtype=dtype, grad=grad)

        flat = [_meta(n * n, dtype=dtype, grad=True), _meta(n * n, dtype=dtype, grad=True), _meta(n * n, dtype=dtype)]
        calls = [
            ("binary_cross_entropy", FL.binary_cross_entropy, (x(), x(False)), {}),
            ("binary_cross_entropy weight", FL.binary_cross_entropy, (x(), x(False), x(False)), {}),
            ("binary_cross_entropy_with_logits", FL.binary_cross_entropy_with_logits, (x(), x(False)), {}),
            ("binary_cross_entropy_with_logits pos_weight", FL.binary_cross_entropy_with_logits, (x(), x(False)),
             {"pos_weight": _meta(n, dtype=dtype)}),
            ("smooth_l1_loss", FL.smooth_l1_loss, (x(), x(False)), {}),
            ("huber_loss", FL.huber_loss, (x(), x(False)), {}),
            ("l1_loss", FL.l1_loss, (x(), x(False)), {}),
            ("mse_loss", FL.mse_loss, (x(), x(False)), {}),
            ("mse_loss reduction none", FL.mse_loss, (x(), x(False)), {"reduction": "none"}),
            ("soft_margin_loss", FL.soft_margin_loss, (x(), x(False)), {}),
            ("kl_div", FL.kl_div, (x(), x(False)), {"reduction": "batchmean"}),
            ("kl_div log_target", FL.kl_div, (x(), x(False)), {"reduction": "batchmean", "log_target": True}),
            ("poisson_nll_loss", FL.poisson_nll_loss, (x(), x(False)), {}),
            ("poisson_nll_loss full", FL.poisson_nll_loss, (x(), x(False)), {"log_input": False, "full": True}),
            ("gaussian_nll_loss", FL.gaussian_nll_loss, (x(), x(False), x()), {}),
            ("margin_ranking_loss", FL.margin_ranking_loss, tuple(flat), {}),
            ("hinge_embedding_loss", FL.hinge_embedding_loss, (x(), x(False)), {}),
            ("sigmoid_focal_loss", FL.sigmoid_focal_loss, (x(), x(False)), {}),
            ("sigmoid_focal_loss mean", FL.sigmoid_focal_loss, (x(), x(False)), {"reduction": "mean"}),
        ]
        cases += [Case(f"{label} {_name(dtype)} 2**26", fn, args, kwargs) for label, fn, args, kwargs in calls]
    return cases


def _row_margin_cases(FL):
    # 4096 rows of 1024 (a classifier's scores, sentence embeddings) and of 8192 (wide embeddings, many
    # classes); the rank losses over 4096 groups of one positive and 4 negatives
    cases = []
    for dtype in _LLM_DTYPES + (torch.float64,):
        for n, d in ((4096, 1024), (4096, 8192)):
            def x(grad=True):
                return _meta(n, d, dtype=dtype, grad=grad)

            calls = [
                ("multi_margin_loss", FL.multi_margin_loss, (x(), _labels(n)), {}),
                ("multi_margin_loss p=2 weight", FL.multi_margin_loss, (x(), _labels(n)),
                 {"p": 2, "weight": _meta(d, dtype=dtype)}),
                ("multilabel_margin_loss", FL.multilabel_margin_loss, (x(), _labels(n, d)), {}),
                ("multilabel_soft_margin_loss", FL.multilabel_soft_margin_loss, (x(), x(False)), {}),
                ("cosine_embedding_loss", FL.cosine_embedding_loss, (x(), x(), _meta(n, dtype=dtype)), {}),
                ("triplet_margin_loss", FL.triplet_margin_loss, (x(), x(), x()), {}),
                ("triplet_margin_with_distance_loss", FL.triplet_margin_with_distance_loss, (x(), x(), x()), {}),
                ("pairwise_distance", FL.pairwise_distance, (x(), x()), {}),
                ("cosine_similarity", FL.cosine_similarity, (x(), x()), {}),
            ]
            cases += [Case(f"{label} {_name(dtype)} {n}x{d}", fn, args, kwargs) for label, fn, args, kwargs in calls]
        # the cosine losses at the embedding widths where a tile holds several rows (100: small heads; 300:
        # word vectors; 384: MiniLM; 512; 768: BERT-base): their float-float finish runs once per row. A row
        # counts as aligned for the load-width budget when D is a multiple of 16 elements: Triton vectorises
        # a masked load only when it can prove the mask uniform over the vector (D = 100, 300: 32-bit loads)
        if dtype != torch.float64:
            for d in (100, 300, 384, 512, 768):
                def e(grad=True):
                    return _meta(4096, d, dtype=dtype, grad=grad)

                cases += [Case(f"cosine_embedding_loss {_name(dtype)} 4096x{d}", FL.cosine_embedding_loss,
                               (e(), e(), _meta(4096, dtype=dtype)), {}, aligned=d % 16 == 0),
                          Case(f"cosine_similarity {_name(dtype)} 4096x{d}", FL.cosine_similarity, (e(), e()), {},
                               aligned=d % 16 == 0)]
        # a group of 5 scores is a 10-20-40 byte row: not 16-byte aligned
        scores = _meta(4096 * 5, 1, dtype=dtype, grad=True)
        cases += [Case(f"rank_hinge_loss {_name(dtype)} 4096 groups of 5", FL.rank_hinge_loss, (scores, None, 4),
                       aligned=False),
                  Case(f"rank_cross_entropy_loss {_name(dtype)} 4096 groups of 5", FL.rank_cross_entropy_loss,
                       (scores, _meta(4096 * 5, 1, dtype=dtype), 4), aligned=False)]
    return cases


_ALL_STATS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")  # log_probs' per-token statistics


def _present(fn):
    """``fn`` returning only the outputs asked for (a TokenStats' fields that are not None; a loss beside a
    TokenStats first)."""
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        if type(out) is tuple:  # (loss, TokenStats)
            out = (out[0], *out[1])
        return tuple(o for o in out if o is not None)
    return call


def _distribution_rows_cases(FL, group):
    # distillation and token log-probabilities at 8192 tokens of the Llama-3 vocabulary: forward KL,
    # reverse KL, the generalized JSD, labels, a temperature, the teacher's stored top-64, a teacher that
    # takes gradients, grad_in_forward; log_probs with and without the entropy; the shard kernels
    n, v = 8192, 128256
    cases = []
    for dtype in _LLM_DTYPES + (torch.float64,):
        def s(grad=True, v=v):
            return _meta(n, v, dtype=dtype, grad=grad)

        calls = [
            ("jsd_loss beta=0.5", FL.jsd_loss, (s(), s(False)), {}),
            ("jsd_loss beta=0 (forward KL)", FL.jsd_loss, (s(), s(False)), {"beta": 0.0}),
            ("jsd_loss beta=1 (reverse KL)", FL.jsd_loss, (s(), s(False)), {"beta": 1.0}),
            ("jsd_loss labels temperature", FL.jsd_loss, (s(), s(False), _labels(n)), {"temperature": 2.0}),
            ("jsd_loss teacher grad", FL.jsd_loss, (s(), s()), {}),
            ("jsd_loss grad_in_forward", FL.jsd_loss, (s(), s(False)), {"grad_in_forward": True}),
            ("jsd_loss top-64 teacher", FL.jsd_loss, (s(), (_meta(n, 64, dtype=dtype), _labels(n, 64))),
             {"beta": 0.0}),
            ("log_probs", FL.log_probs, (s(), _labels(n)), {}),
            ("log_probs entropy", FL.log_probs, (s(), _labels(n)), {"with_entropy": True}),
            ("log_probs stats=all", _present(FL.log_probs), (s(), _labels(n)), {"stats": _ALL_STATS}),
            ("log_probs stats=is_top1", _present(FL.log_probs), (s(), _labels(n)), {"stats": ("is_top1",)}),
            ("log_probs stats=log_sum_sq,mean T=0.7", _present(FL.log_probs), (s(), _labels(n)),
             {"stats": ("log_sum_sq_probs", "mean_logits"), "temperature": 0.7}),
        ]
        if dtype != torch.float64:
            calls += [("jsd_loss vocab-parallel", FL.jsd_loss, (s(v=v // 2), s(False, v=v // 2)),
                       {"process_group": group(v)}),
                      ("log_probs vocab-parallel entropy", FL.log_probs, (s(v=v // 2), _labels(n)),
                       {"with_entropy": True, "process_group": group(v)}),
                      ("log_probs vocab-parallel stats=all", _present(FL.log_probs), (s(v=v // 2), _labels(n)),
                       {"stats": _ALL_STATS, "process_group": group(v)})]
        cases += [Case(f"{label} {_name(dtype)} {n}x{v}", fn, args, kwargs) for label, fn, args, kwargs in calls]
    return cases


def _matmul_rows_cases(FL, group):
    # the LM-head losses: 8192 tokens of hidden size 4096 against the Llama-3 vocabulary in bfloat16, as
    # trained (the chunk driver picks the chunks); the vocabulary-parallel head
    n, h, v = 8192, 4096, 128256
    bf16 = torch.bfloat16

    def hidden(grad=True):
        return _meta(n, h, dtype=bf16, grad=grad)

    def head(rows=v, grad=True):
        return _meta(rows, h, dtype=bf16, grad=grad)

    calls = [
        ("linear_cross_entropy", FL.linear_cross_entropy, (hidden(), head(), _labels(n)), {}),
        ("linear_cross_entropy smoothing z_loss", FL.linear_cross_entropy, (hidden(), head(), _labels(n)),
         {"label_smoothing": 0.1, "z_loss": 1e-4}),
        ("linear_cross_entropy vocab-parallel", FL.linear_cross_entropy, (hidden(), head(v // 2), _labels(n)),
         {"process_group": group(v)}),
        ("linear_log_probs entropy", FL.linear_log_probs, (hidden(), head(), _labels(n)), {"with_entropy": True}),
        ("linear_log_probs stats=all softcap", _present(FL.linear_log_probs), (hidden(), head(), _labels(n)),
         {"stats": _ALL_STATS, "logit_scale": 0.0625, "softcap": 30.0}),
        ("linear_jsd_loss hard_weight", FL.linear_jsd_loss,
         (hidden(), head(), hidden(False), head(grad=False), _labels(n)), {"hard_weight": 0.5}),
        # the heads of Cohere/Granite (a logit scale) and Gemma 2/3 (a softcap), as the HF integration passes
        ("linear_cross_entropy logit_scale softcap", FL.linear_cross_entropy, (hidden(), head(), _labels(n)),
         {"logit_scale": 0.0625, "softcap": 30.0}),
        ("linear_cross_entropy stats=all softcap", _present(FL.linear_cross_entropy), (hidden(), head(), _labels(n)),
         {"stats": _ALL_STATS, "softcap": 30.0}),
        ("linear_log_probs entropy softcap", FL.linear_log_probs, (hidden(), head(), _labels(n)),
         {"with_entropy": True, "logit_scale": 0.0625, "softcap": 30.0}),
        ("linear_jsd_loss softcaps", FL.linear_jsd_loss,
         (hidden(), head(), hidden(False), head(grad=False), _labels(n)),
         {"softcap": 30.0, "teacher_softcap": 50.0, "beta": 0.5}),
        ("linear_jsd_loss softcaps teacher grad hard T", FL.linear_jsd_loss,
         (hidden(), head(), hidden(), head(), _labels(n)),
         {"softcap": 30.0, "teacher_softcap": 50.0, "beta": 0.5, "hard_weight": 0.5, "temperature": 2.0}),
        ("linear_jsd_loss softcaps vocab-parallel", FL.linear_jsd_loss,
         (hidden(), head(v // 2), hidden(False), head(v // 2, grad=False), _labels(n)),
         {"softcap": 30.0, "teacher_softcap": 50.0, "process_group": group(v)}),
    ]
    # a K-dimensional head (torch's out_features: 1000 classes x 8 positions; the chunk's logits class-strided,
    # 8000-element rows: every row's first element 16-byte aligned, not the class columns)
    k_dim = [
        ("linear_cross_entropy K-dimensional", FL.linear_cross_entropy,
         (hidden(), _meta(1000, 8, h, dtype=bf16, grad=True), _labels(n, 8)), {}),
        ("linear_cross_entropy K-dimensional stats=all", _present(FL.linear_cross_entropy),
         (hidden(), _meta(1000, 8, h, dtype=bf16, grad=True), _labels(n, 8)), {"stats": _ALL_STATS}),
    ]
    return ([Case(f"{label} bfloat16 {n}x{h} @ {v}x{h}", fn, args, kwargs) for label, fn, args, kwargs in calls]
            + [Case(f"{label} bfloat16 {n}x{h} @ 1000x8x{h}", fn, args, kwargs, aligned=False)
               for label, fn, args, kwargs in k_dim])


def cases(family, group=None):
    """The Cases of ``family``. ``group(n_total)``: the process group of the vocabulary-parallel cases
    (default: ``_fake_group``, which starts torch's fake process group in this process)."""
    import fusedloss.functional as FL

    group = group or _fake_group
    return {"softmax_rows": lambda: _softmax_rows_cases(FL, group), "pointwise": lambda: _pointwise_cases(FL),
            "row_margin": lambda: _row_margin_cases(FL),
            "distribution_rows": lambda: _distribution_rows_cases(FL, group),
            "matmul_rows": lambda: _matmul_rows_cases(FL, group)}[family]()


def _fake_group(n_total):
    """A process-group name under which this process holds the first half of ``n_total`` classes of two
    ranks: torch's "fake" process group (its collectives return at once), the layout declared as a
    DTensor call declares it (no gather of block sizes)."""
    import torch.distributed as dist

    from fusedloss.ops import _vocab_parallel

    if not dist.is_initialized():
        dist.init_process_group("fake", rank=0, world_size=2)
    return _vocab_parallel.declare_layout(dist.group.WORLD, n_total // 2, 0, n_total)


# ----------------------------------------------------------------------------------------------------
# recording the launches
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Config:
    """One kernel configuration: what a launch compiles (the kernel, its argument types and
    specialisation, constexprs, num_warps) and the first case that launched it."""

    family: str
    case: str
    aligned: bool  # the case's rows are 16-byte aligned
    wide: bool  # the case has float64 inputs
    kernel: object  # the JITFunction
    args: tuple  # the recorded arguments (meta tensors, ints, floats)
    constexprs: dict
    num_warps: int

    @property
    def name(self):
        return self.kernel.fn.__name__

    def describe(self):
        """The configuration in a few words: the floating pointer dtypes, then the constexprs that are set
        (flags by name, False and empty strings left out), then the warps."""
        dtypes = sorted({_name(a.dtype) for a in self.args if isinstance(a, torch.Tensor) and a.is_floating_point()})
        parts = ["/".join(dtypes)]
        for key, value in self.constexprs.items():
            if value is True:
                parts.append(key)
            elif value is not False and value != "" and key != "ACC":
                parts.append(f"{key}={getattr(value, 'name', value)}")
        parts.append(f"w{self.num_warps}")
        return " ".join(parts)


@contextlib.contextmanager
def _recording(launches):
    """Inside: the Triton backend forced, meta tensors let through the dispatcher's device check, and every
    launch appended to ``launches`` as (kernel, args, constexprs, num_warps) instead of run."""
    import fusedloss
    from fusedloss import dispatch
    from fusedloss.kernels import _launch

    device_problem = dispatch._device_problem

    def meta_allowed(route, args, requested):
        tensors = [args[i] for i in route.tensors if isinstance(args[i], torch.Tensor)]
        if tensors and all(t.device.type == "meta" for t in tensors):
            return None
        return device_problem(route, args, requested)

    # autocast knows no meta device (asking about it raises): these calls run without autocast
    is_autocast_enabled, autocast = torch.is_autocast_enabled, torch.autocast

    def meta_is_autocast_enabled(*args):
        return False if args == ("meta",) else is_autocast_enabled(*args)

    def meta_autocast(device_type, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else autocast(device_type, *args, **kwargs)

    dispatch._device_problem = meta_allowed
    torch.is_autocast_enabled, torch.autocast = meta_is_autocast_enabled, meta_autocast
    _launch.set_stub(lambda kernel, grid, args, constexprs, num_warps: launches.append(
        (kernel, args, constexprs, num_warps)))
    try:
        with fusedloss.backend("triton"):
            yield
    finally:
        _launch.set_stub(None)
        dispatch._device_problem = device_problem
        torch.is_autocast_enabled, torch.autocast = is_autocast_enabled, autocast


def record(families=FAMILIES, loss_names=None):
    """The distinct configurations the written cases of ``families`` launch (those calling ``loss_names``;
    all when None), in the order first seen."""
    configs = {}
    for family in families:
        for case in cases(family):
            if loss_names is not None and case.label.split()[0] not in loss_names:
                continue
            launches = []
            with _recording(launches):
                case.run()
            for kernel, args, constexprs, num_warps in launches:
                config = Config(family, case.label, case.aligned, case.wide, kernel, tuple(args), dict(constexprs),
                                num_warps)
                configs.setdefault(_key(config), config)
    return list(configs.values())


def _key(config):
    """Configurations that compile to the same code share a key: the kernel, the specialisation of its
    arguments (as the JIT computes it for an NVIDIA target), constexprs and warps."""
    _, signature, constexprs, attrs = specialise(config, "sm_90")
    return (config.name, tuple(signature.items()), tuple(sorted((k, str(v)) for k, v in constexprs.items())),
            tuple(sorted((k, str(v)) for k, v in attrs.items())), config.num_warps)


# ----------------------------------------------------------------------------------------------------
# 2-3. specialising and compiling
# ----------------------------------------------------------------------------------------------------

def _target(arch):
    from triton.backends.compiler import GPUTarget

    return GPUTarget(*ARCHS[arch])


def specialise(config, arch):
    """(options, signature, constexprs, attrs) a launch of ``config`` compiles with on ``arch``: Triton's
    own JIT binder and argument packing (``JITFunction.run``'s steps in Triton 3.8), run for that target."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = config.kernel
    backend = make_backend(_target(arch))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(config.constexprs, num_warps=config.num_warps)
    bound, specialization, options = binder(*config.args, **kwargs)
    return kernel._pack_args(backend, kwargs, bound, specialization, options)


@dataclasses.dataclass
class Row:
    """One configuration compiled for one architecture, with what the budgets look at."""

    family: str
    kernel: str
    module: str  # the kernel's module (where its written exceptions live)
    config: str
    case: str
    arch: str
    num_warps: int
    aligned: bool  # the case's rows are 16-byte aligned (the load-width budget applies)
    wide_inputs: bool  # a floating input is float64 (the float64 budget does not apply)
    constexprs: dict
    error: str = ""  # why it did not compile
    registers: int = 0
    spill_bytes: int = 0  # NVIDIA: the stack frame (spills only, see the module docstring); AMD: scratch
    shared: int = 0
    load_bits: int = None  # the widest global load in the hot loop (None: it loads nothing)
    counts: dict = dataclasses.field(default_factory=dict)  # approximate and float64 instructions


_COUNTED = {  # PTX instruction (by prefix) -> the column it is counted in
    "div.full.f32": "div.full", "ex2.approx": "ex2", "lg2.approx": "lg2", "rcp.approx": "rcp",
    "sqrt.approx": "sqrt", "rsqrt.approx": "rsqrt",
}
_PTX_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.:]*)", re.M)


def compile_config(config, arch):
    """``config`` compiled for ``arch``: a Row with its resources, or its compile error."""
    import triton
    from triton.compiler import ASTSource

    options, signature, constexprs, attrs = specialise(config, arch)
    row = Row(config.family, config.name, config.kernel.fn.__module__, config.describe(), config.case, arch,
              config.num_warps, config.aligned, config.wide,
              {k: getattr(v, "name", v) for k, v in config.constexprs.items()})
    try:
        compiled = triton.compile(ASTSource(config.kernel, signature, constexprs, attrs), target=_target(arch),
                                  options=options.__dict__)
    except Exception as error:  # the "compiles" budget: reported, never raised
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        row.error = " ... ".join([type(error).__name__] + lines[:1] + lines[-1:])[:400]
        return row
    row.shared = compiled.metadata.shared
    if ARCHS[arch][0] == "cuda":
        row.registers, row.spill_bytes = _cubin_resources(compiled.asm["cubin"])
        row.load_bits = hot_loop_load_bits(compiled.asm["ptx"])
        row.counts = instruction_counts(compiled.asm["ptx"])
    else:
        row.registers, row.spill_bytes = _amdgcn_resources(compiled.asm["amdgcn"])
        row.load_bits = _amdgcn_load_bits(compiled.asm["amdgcn"])
    return row


def _cubin_resources(cubin):
    """(registers per thread, stack frame bytes per thread) of a cubin, from ``cuobjdump -res-usage``."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.remove(f.name)
    usage = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", out))
    return int(usage["REG"]), int(usage["STACK"]) + int(usage["LOCAL"])


def _amdgcn_resources(asm):
    """(VGPRs, scratch bytes per lane: where AMD spills) from the AMDGCN assembly's kernel metadata."""
    vgprs = int(re.search(r"\.vgpr_count:\s+(\d+)", asm).group(1))
    return vgprs, int(re.search(r"\.private_segment_fixed_size:\s+(\d+)", asm).group(1))


_GLOBAL_LOAD = re.compile(r"\bld\.global((?:\.[\w:]+)*)")


def _load_bits(modifiers):
    """Bits moved by one PTX load with these modifiers (".v4.b32" -> 128), 0 for a volatile load."""
    if ".volatile" in modifiers:
        return 0
    vector = re.search(r"\.v(\d+)", modifiers)
    width = re.search(r"\.[bfsu](\d+)\b", modifiers)
    return (int(vector.group(1)) if vector else 1) * int(width.group(1)) if width else 0


def hot_loop_load_bits(ptx):
    """The widest non-volatile global load of the hot code: the PTX's loops that move global memory (a
    branch back to an earlier label closes a loop; the volatile loads of the reduction's tail do not
    count), or the whole kernel when no loop does. None when those loops only store (nothing to load)."""
    lines = ptx.splitlines()
    labels, loops = {}, []
    for i, line in enumerate(lines):
        label = re.match(r"^(\$L__\w+):", line)
        if label:
            labels[label.group(1)] = i
        branch = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if branch and branch.group(1) in labels:  # a backward branch: its label..here is a loop body
            loops.append("\n".join(lines[labels[branch.group(1)]:i]))
    streaming = [body for body in loops if re.search(r"\bst\.global", body)
                 or any(_load_bits(m) for m in _GLOBAL_LOAD.findall(body))]
    widths = [_load_bits(m) for body in (streaming or [ptx]) for m in _GLOBAL_LOAD.findall(body)]
    return max(widths) if any(widths) else None


def _amdgcn_load_bits(asm):
    """The widest global/buffer load of the AMDGCN assembly (informational: no AMD load budget)."""
    sizes = {"ubyte": 8, "sbyte": 8, "ushort": 16, "sshort": 16, "short_d16": 16, "dword": 32, "dwordx2": 64,
             "dwordx3": 96, "dwordx4": 128, "b32": 32, "b64": 64, "b96": 96, "b128": 128}
    found = re.findall(r"\b(?:global|buffer)_load_(\w+?)(?:_hi)?\b", asm)
    return max([0] + [sizes.get(kind, 0) for kind in found])


def instruction_counts(ptx):
    """Static counts of the approximate instructions and of float64 instructions in the PTX."""
    counts = dict.fromkeys(list(_COUNTED.values()) + ["f64"], 0)
    for instruction in _PTX_INSTRUCTION.findall(ptx):
        for prefix, column in _COUNTED.items():
            if instruction.startswith(prefix):
                counts[column] += 1
        if ".f64" in instruction and not instruction.startswith(("ld.", "st.", "mov.")):
            counts["f64"] += 1
    return counts


# ----------------------------------------------------------------------------------------------------
# 4. budgets and their written exceptions
# ----------------------------------------------------------------------------------------------------

def violations(row):
    """The budgets ``row`` exceeds: [(budget, what was measured)]."""
    if row.error:
        return [("compiles", row.error)]
    found = []
    nvidia = ARCHS[row.arch][0] == "cuda"
    if row.spill_bytes:
        found.append(("spills", f"{row.spill_bytes} bytes of {'stack' if nvidia else 'scratch'} per thread"))
    if nvidia and row.num_warps >= 8 and row.registers > MAX_REGISTERS_AT_8_WARPS:
        found.append(("registers", f"{row.registers} registers at {row.num_warps} warps"))
    if row.shared > SHARED_LIMIT[row.arch]:
        found.append(("shared_memory", f"{row.shared} bytes, the limit {SHARED_LIMIT[row.arch]}"))
    if nvidia and row.aligned and row.load_bits is not None and row.load_bits < 128:
        found.append(("load_width", f"{row.load_bits}-bit loads at most in the hot loop of aligned rows"))
    if nvidia and not row.wide_inputs and row.counts.get("f64"):
        found.append(("float64", f"{row.counts['f64']} float64 instructions for 16/32-bit inputs"))
    return found


def exceptions(kernel_module):
    """The written exceptions of a kernel module: its ``BUILD_BUDGET_EXCEPTIONS``, entries of the form
    dict(kernel=name, budget=one of BUDGETS or a tuple of them, where={constexpr: value or tuple of values,
    ...}, archs=(...), reason=text); ``where`` and ``archs`` optional (every configuration, every architecture).
    Constexpr values as the table shows them (dtypes by name: "fp64")."""
    return getattr(kernel_module, "BUILD_BUDGET_EXCEPTIONS", ())


def excused(row, budget):
    """The reason written for ``row`` exceeding ``budget``, or None."""
    import importlib

    for entry in exceptions(importlib.import_module(row.module)):
        budgets = entry["budget"] if isinstance(entry["budget"], tuple) else (entry["budget"],)
        if (entry["kernel"] == row.kernel and budget in budgets
                and all(row.constexprs.get(k) in (v if isinstance(v, tuple) else (v,))
                        for k, v in entry.get("where", {}).items())
                and row.arch in entry.get("archs", ARCHS)):
            return entry["reason"]
    return None


def unexcused(row):
    """The budgets ``row`` exceeds with no written reason."""
    return [(budget, measured) for budget, measured in violations(row) if excused(row, budget) is None]


# ----------------------------------------------------------------------------------------------------
# running it, and the table
# ----------------------------------------------------------------------------------------------------

def losses(families=FAMILIES):
    """The loss names the cases of ``families`` call (the first word of their labels)."""
    return sorted({case.label.split()[0] for family in families for case in cases(family, lambda n_total: "")})


def heaviest(rows, per_dtype=True):
    """The sample compiled for further architectures: per kernel (and input dtypes), the row with the most
    registers (the configuration that meets a register or spill budget first)."""
    chosen = {}
    for row in rows:
        key = (row.kernel, row.config.split()[0] if per_dtype else "")
        if key not in chosen or row.registers > chosen[key].registers:
            chosen[key] = row
    return list(chosen.values())


def check(archs, sampled_archs=(), families=FAMILIES, loss_names=None, progress=None):
    """Rows: every recorded configuration of ``families`` (of the cases calling ``loss_names``: all when
    None) compiled for each arch of ``archs``, then the ``heaviest`` of the first arch's compiled for each
    of ``sampled_archs``: per kernel and input dtypes for NVIDIA, per kernel for AMD (whose budgets stop
    at compiling, scratch and shared memory). ``progress``: a callable taking a line of text. Runs in this
    process, which must not run Triton's interpreter."""
    from fusedloss.kernels import _config

    if _config.interpreting():
        raise RuntimeError("the build check compiles for GPUs: run it without TRITON_INTERPRET "
                           "(fusedloss.buildcheck.run starts such a process)")
    configs = record(families, loss_names)
    rows, first = [], None
    for arch in archs:
        if progress:
            progress(f"{arch}: compiling {len(configs)} configurations")
        arch_rows = [compile_config(config, arch) for config in configs]
        first = first or arch_rows
        rows += arch_rows
    for arch in sampled_archs:
        sample = {id(row) for row in heaviest(first, per_dtype=ARCHS[arch][0] == "cuda")}
        picked = [config for config, row in zip(configs, first) if id(row) in sample]
        if progress:
            progress(f"{arch}: compiling a sample of {len(picked)} configurations")
        rows += [compile_config(config, arch) for config in picked]
    return rows


def run(archs, sampled_archs=(), families=FAMILIES, loss_names=None, progress=False, timeout=3600):
    """``check`` in a fresh Python process without Triton's interpreter: the rows, as Rows. ``progress``:
    the process's progress lines go to this process's stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "fusedloss.buildcheck", "--arch", ",".join(archs), "--family",
               ",".join(families)]
    if sampled_archs:
        command += ["--sample-arch", ",".join(sampled_archs)]
    if loss_names:
        command += ["--loss", ",".join(loss_names)]
    if progress:
        command.append("--progress")
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the build check's process failed (exit status {done.returncode}):\n{done.stderr or ''}")
    return [Row(**fields) for fields in json.loads(done.stdout)]


_COLUMNS = ("kernel", "configuration", "arch", "regs", "spill B", "smem B", "load bits", "div.full", "ex2",
            "lg2", "rcp", "sqrt", "rsqrt", "f64", "budgets")
_COUNT_COLUMNS = ("div.full", "ex2", "lg2", "rcp", "sqrt", "rsqrt", "f64")


def table(rows):
    """The Markdown table of ``rows``: one line per configuration and architecture. "budgets" says ok, or
    names each budget exceeded, "(excused)" where the kernel's module gives a reason. NVIDIA rows count
    registers per thread and stack bytes; AMD rows VGPRs and scratch bytes (their instruction counts are
    not taken)."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in rows:
        verdicts = "; ".join(f"{budget}{' (excused)' if excused(row, budget) else ''}"
                             for budget, _ in violations(row)) or "ok"
        if row.error:
            figures = ["-"] * (len(_COLUMNS) - 4)
        else:
            load = "-" if row.load_bits is None else str(row.load_bits)
            figures = [str(row.registers), str(row.spill_bytes), str(row.shared),
                       load + ("" if row.aligned else " (unaligned rows)"),
                       *(str(row.counts.get(k, "-")) for k in _COUNT_COLUMNS)]
        lines.append("| " + " | ".join([row.kernel, row.config, row.arch, *figures, verdicts]) + " |")
    return "\n".join(lines)


def summary(rows):
    """One line: what was compiled, and how many rows exceed a budget without a written reason."""
    failing = [row for row in rows if unexcused(row)]
    excused_rows = [row for row in rows if violations(row) and not unexcused(row)]
    archs = ", ".join(dict.fromkeys(row.arch for row in rows))
    return (f"{len(rows)} compiles ({archs}): {len(failing)} exceed a budget without a written reason, "
            f"{len(excused_rows)} exceed one with its reason written in the kernel's module")


def parse_list(text, valid):
    """Comma-separated names, each one of ``valid``; otherwise an argparse error (argparse names the option)
    listing the valid names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in valid]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown) or '(empty list)'}; valid: "
                                         f"{', '.join(valid)}")
    return names


def _main(argv=None):
    """The worker ``run`` starts: prints the rows as JSON."""
    parser = argparse.ArgumentParser(prog="python -m fusedloss.buildcheck",
                                     description="the build check's worker (`fusedloss buildcheck` runs it)")
    parser.add_argument("--arch", type=lambda t: parse_list(t, tuple(ARCHS)), required=True)
    parser.add_argument("--sample-arch", type=lambda t: parse_list(t, tuple(ARCHS)), default=())
    parser.add_argument("--family", type=lambda t: parse_list(t, FAMILIES), default=list(FAMILIES))
    parser.add_argument("--loss", type=lambda t: [name.strip() for name in t.split(",")], default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.progress else None
    rows = check(args.arch, args.sample_arch, args.family, args.loss, progress)
    print(json.dumps([dataclasses.asdict(row) for row in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
