"""The implementations fusedloss races against on a GPU, besides torch eager: torch.compile of torch's own
function, the installed peers (Liger-Kernel, Cut Cross-Entropy, torch's chunked linear_cross_entropy) and
the cuBLAS GEMM floors of the matmul-rows losses.

A peer adapter takes the entry (``LossBench``) and returns a callable with the entry's signature (the
arguments of its ``make_inputs``), or None when the peer does not support the entry's options; an
ImportError (or any exception) while building it means "not available here", which the run records.
TRL has no kernel of its own to race (its losses are torch code: tests/test_trl.py checks fusedloss's
values against TRL's functions instead).
"""
import functools

import torch
import torch.nn.functional as F

from .entry import summed

# ------------------------------------------------------------------ torch.compile


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    # default dynamic=None: the first shape compiles static, later shapes share one dynamic graph; the
    # raised cache limit keeps dynamo from silently falling back to eager after many shapes/dtypes
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(fn)


def compile_impl(bench):
    """torch.compile of the entry's torch implementation (torch.nn.functional's, or its eager reference)."""
    fn = _compiled(bench.reference or getattr(F, bench.name))
    return summed(bench, lambda *args, **kwargs: fn(*args, **bench.kwargs, **kwargs))


# ------------------------------------------------------------------ Liger-Kernel


def liger_cross_entropy(bench):
    from liger_kernel.transformers.functional import liger_cross_entropy

    smoothing = bench.kwargs.get("label_smoothing", 0.0)
    return lambda logits, target, **kw: liger_cross_entropy(logits, target, label_smoothing=smoothing, **kw)


def liger_jsd(bench):
    """Liger-Kernel's LigerJSD takes log-probabilities: the log-softmaxes at T run in torch first."""
    from liger_kernel.transformers.jsd import LigerJSD

    beta, temperature = bench.kwargs.get("beta", 0.5), bench.kwargs.get("temperature", 1.0)
    loss = LigerJSD(beta=beta, ignore_index=-100)

    def call(student, teacher, labels, **unused):
        return loss(torch.log_softmax(student.float() / temperature, -1),
                    torch.log_softmax(teacher.float() / temperature, -1), labels)
    return call


def liger_fused_linear_grpo(bench):
    """Liger-Kernel's chunked GRPO (``LigerFusedLinearGRPOLoss``: the LM head fused, logits per chunk) at the
    entry's options, TRL's defaults (loss "dapo", beta 0: no reference head). Liger gathers every position's token:
    the padding's -100 is clamped to class 0 (its mask leaves them out of the loss)."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    loss = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, loss_type="dapo")

    def call(hidden, weight, tokens, old, advantages, mask):
        out = loss(hidden, weight, tokens.clamp(min=0), mask, advantages, None, None, old)
        return out[0] if isinstance(out, tuple) else out
    return call


def liger_fused_linear_dpo(bench):
    """Liger-Kernel's chunked DPO (``LigerFusedLinearDPOLoss``, sigmoid) with a frozen reference head: its input is
    the chosen sequences then the rejected, as the entry's."""
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    loss = LigerFusedLinearDPOLoss(beta=bench.fusedloss_kwargs.get("beta", 0.1), compute_nll_loss=False,
                                   use_ref_model=True)

    def call(hidden, weight, tokens, ref_hidden, ref_weight):
        out = loss(weight, hidden, tokens, None, ref_hidden, ref_weight)
        return out[0] if isinstance(out, tuple) else out
    return call


def liger_fused_linear_cross_entropy(bench):
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)

    def call(input, linear_weight, target):
        out = loss(linear_weight, input, target)
        return out[0] if isinstance(out, tuple) else out
    return call


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


# ------------------------------------------------------------------ Cut Cross-Entropy, torch's chunked path


def cut_cross_entropy(bench):
    from cut_cross_entropy import linear_cross_entropy

    return lambda input, linear_weight, target: linear_cross_entropy(input, linear_weight, target, ignore_index=-100)


def torch_chunked_linear_cross_entropy(bench):
    """torch's chunked path (torch >= 2.13): ``options=LinearCrossEntropyOptions()``."""
    options = torch.nn.LinearCrossEntropyOptions()
    return lambda input, linear_weight, target: F.linear_cross_entropy(input, linear_weight, target, options=options)


# ------------------------------------------------------------------ cuBLAS floors of the matmul-rows losses


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
        # the gradients of input and weight; the frozen teacher's two operands get none
        return dlogits @ weight, dlogits.t() @ input, None, None


def four_gemm_floor(bench):
    return lambda input, weight, teacher_input, teacher_weight, labels, **unused: _FourGemms.apply(
        input, weight, teacher_input, teacher_weight)
