"""Benchmark entries of the objectives built on an LM head (fusedloss.objectives): linear_grpo_loss and
linear_dpo_loss, from the policy's hidden states and head, against TRL 1.16's own code on the whole logits.

The reference (the "torch" implementation of the tables, and the float64 parity reference of the demo) is TRL's:
the whole logits ``hidden @ W^T`` in the model's dtype, TRL's ``selective_log_softmax_and_entropy`` (its Triton
kernel on a GPU, torch ops on the CPU), then the trainer's own loss code (``GRPOTrainer._compute_loss``,
``DPOTrainer._compute_loss``), run on a trainer made with ``object.__new__`` that holds the attributes its
``__init__`` sets from the config's defaults, a single-process accelerator and a stub model returning those
log-probabilities (as tests/test_objectives_grpo.py and tests/test_objectives_preference.py do). On a GPU the
suite also races TRL 1.16's default path, its fused LM head (``trl.kernels.ChunkedLogProbFunction``: token chunks
of 4096 around cuBLAS, the backward recomputing the logits), under the same loss code, and Liger-Kernel's chunked
GRPO and DPO losses where Liger is installed (fusedloss/bench/peers.py). TRL's loss code reads its metrics with
``.item()`` (host syncs, as in training).

Shapes (N tokens, H hidden, V classes): Llama 3 8B's head at 8192 tokens (8 sequences of 1024; DPO 4 pairs of
1024), 256 x 128 x 2048 for the CPU fallback, 16 x 32 x 100 for the interpreter's traffic meter (2 sequences of
8). bf16; the policy's hidden states and head differentiated; 5% of the completion tokens padding (-100, at the
ends). GRPO with TRL's defaults (loss_type "dapo", beta 0: no reference); DPO "sigmoid", beta 0.1, a frozen
reference head.
"""
import dataclasses
import functools
import math
import os
from collections import defaultdict
from types import SimpleNamespace

import torch

from . import peers
from .cases_matmul_rows import linear_cross_entropy_footprint
from .entry import Inputs, LossBench

# The traffic table's footnote for these entries.
TRAFFIC_NOTE = (
    "the reference column is TRL 1.16's loss code on the whole logits (not torch eager); fusedloss makes the logits "
    "one chunk of rows at a time with GEMMs counted as reading their operands and writing their outputs in full, "
    "and at an interpreter's shape the head (V x H) outweighs the tokens: judge by peak memory and time on a GPU "
    "(bench/NOTES.md)")


def _sequences(n):
    """(B, T): n tokens as B sequences of T (8 where they divide n into sequences of at least 8 tokens)."""
    for b in (8, 4, 2):
        if n % b == 0 and n // b >= 8:
            return b, n // b
    return 1, n


def _completion_tokens(b, t, n_classes, device):
    """(B, T) token ids, the last 5% of each sequence's positions padding (-100), every sequence keeping one."""
    tokens = torch.randint(0, n_classes, (b, t), device=device)
    tokens[:, t - min(t - 1, round(0.05 * t)):] = -100
    return tokens


def _head(n_rows, hidden, n_classes, dtype, device, grad=True):
    scale = hidden ** 0.25
    x = (torch.randn(n_rows, hidden, device=device) / scale).to(dtype)
    w = (torch.randn(n_classes, hidden, device=device) / scale).to(dtype)
    return (x.requires_grad_(), w.requires_grad_()) if grad else (x, w)


def grpo_inputs(shape, dtype, device):
    """(hidden (B, T, H), weight (V, H), tokens, old_per_token_logps, advantages, completion_mask)."""
    n, hidden, n_classes = shape
    b, t = _sequences(n)
    x, w = _head(n, hidden, n_classes, dtype, device)
    x = x.detach().view(b, t, hidden).requires_grad_()
    tokens = _completion_tokens(b, t, n_classes, device)
    mask = (tokens != -100).long()
    old = (-math.log(n_classes) - 0.5 + 0.2 * torch.randn(b, t, device=device)) * mask  # about the policy's
    advantages = torch.randn(b, device=device)
    return Inputs((x, w, tokens, old, advantages, mask), {}, (x, w))


def dpo_inputs(shape, dtype, device):
    """(hidden (2B, T, H): the chosen completions, then the rejected; weight; tokens (2B, T); the frozen reference's
    hidden states and weight)."""
    n, hidden, n_classes = shape
    b, t = _sequences(n)
    b = max(b // 2, 1)
    t = n // (2 * b)
    x, w = _head(2 * b * t, hidden, n_classes, dtype, device)
    x = x.detach().view(2 * b, t, hidden).requires_grad_()
    ref_x, ref_w = _head(2 * b * t, hidden, n_classes, dtype, device, grad=False)
    tokens = _completion_tokens(2 * b, t, n_classes, device)
    return Inputs((x, w, tokens, ref_x.view(2 * b, t, hidden), ref_w), {}, (x, w))


def fused_grpo(hidden, weight, tokens, old, advantages, mask, **options):
    from fusedloss.objectives import linear_grpo_loss

    return linear_grpo_loss(hidden, weight, tokens, old, advantages, mask, **options).loss


def fused_dpo(hidden, weight, tokens, ref_hidden, ref_weight, **options):
    from fusedloss.objectives import linear_dpo_loss

    (h_c, h_r), (t_c, t_r), (r_c, r_r) = hidden.chunk(2), tokens.chunk(2), ref_hidden.chunk(2)
    return linear_dpo_loss(h_c, h_r, weight, t_c, t_r, ref_chosen_hidden=r_c, ref_rejected_hidden=r_r,
                           ref_weight=ref_weight, **options).loss


# ------------------------------------------------------------------ TRL's loss code, on a stub trainer


class _Accelerator:
    """One process: gather and reduce are the identity."""
    num_processes = 1
    process_index = 0
    sync_gradients = True

    def __init__(self, device):
        self.device = device

    def gather(self, tensor):
        return tensor

    gather_for_metrics = gather

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def unwrap_model(self, model):
        return model


class _Model(torch.nn.Module):
    """The trainer's ``self.model`` (its loss code reads the mode and the gradient-checkpointing flag)."""
    is_gradient_checkpointing = False


def _defaults(config):
    """A config's field defaults, without running its __init__ (TrainingArguments sets up accelerate there)."""
    values = {}
    for field in dataclasses.fields(config):
        if field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
    return SimpleNamespace(**values)


def _whole_logits_log_probs(hidden, weight, tokens, entropy):
    """TRL's per-token log-probabilities (and entropies) of the whole logits, 0 where tokens is -100."""
    from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

    logits = hidden @ weight.t()  # the model's lm_head: (B, T, V) in its dtype
    mask = tokens != -100
    if entropy:
        return selective_log_softmax_and_entropy(logits, tokens.clamp(min=0), row_mask=mask)
    return selective_log_softmax(logits, tokens.clamp(min=0), row_mask=mask)


def _chunked_lm_head_log_probs(hidden, weight, tokens, entropy):
    """TRL 1.16's fused LM head (``add_fused_lm_head``'s path on a Triton device): the counted tokens only."""
    from trl.kernels import ChunkedLogProbFunction

    mask = tokens != -100
    out = ChunkedLogProbFunction.apply(hidden[mask], weight, None, tokens[mask], 1.0, 32768, None, 1.0,
                                       ("log_probs", "entropy") if entropy else ("log_probs",))
    logps, entropies = (None if v is None else v.new_zeros(mask.shape).masked_scatter(mask, v) for v in out[:2])
    return (logps, entropies) if entropy else logps


def _trl_grpo(log_probs):
    """TRL's GRPOTrainer._compute_loss with GRPOConfig's defaults, on log-probabilities from ``log_probs``."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    args = _defaults(GRPOConfig)
    args.steps_per_generation = 1  # GRPOConfig.__post_init__'s: gradient_accumulation_steps (1)

    def call(hidden, weight, tokens, old, advantages, mask):
        t = object.__new__(GRPOTrainer)
        b = tokens.shape[0]
        t.__dict__.update(
            args=args, accelerator=_Accelerator(hidden.device), model=SimpleNamespace(training=True),
            _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, current_gradient_accumulation_steps=1,
            loss_type=args.loss_type, beta=args.beta, epsilon_low=args.epsilon,
            epsilon_high=args.epsilon if args.epsilon_high is None else args.epsilon_high,
            importance_sampling_level=args.importance_sampling_level,
            off_policy_mask_threshold=args.off_policy_mask_threshold, top_entropy_quantile=args.top_entropy_quantile,
            max_completion_length=args.max_completion_length, entropy_coef=args.entropy_coef,
            use_adaptive_entropy=args.use_adaptive_entropy, _entropy_bonus_enabled=False,
            _last_world_entropy=float("inf"), _entropy_window_stats=None, use_vllm=False,
            vllm_importance_sampling_correction=False, router_aux_loss_coef=0.0, aux_loss_enabled=False)
        logps, entropies = log_probs(hidden, weight, tokens, True)
        dtype = torch.promote_types(logps.dtype, torch.float32)  # TRL's fused head's: float32 for a 16-bit model
        t._get_per_token_logps_and_entropies = lambda *unused, **unused_kw: (logps.to(dtype), entropies.to(dtype),
                                                                             None)
        prompt = torch.zeros(b, 1, dtype=torch.long, device=tokens.device)
        inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": tokens.clamp(min=0),
                  "completion_mask": mask, "advantages": advantages, "old_per_token_logps": old,
                  "ref_per_token_logps": None, "sampling_per_token_logps": None, "num_items_in_batch": mask.sum()}
        return t._compute_loss(None, inputs)
    return call


def _trl_dpo(log_probs):
    """TRL's DPOTrainer._compute_loss (sigmoid, beta 0.1), its models stubs returning ``log_probs``'s
    log-probabilities of the policy's and the reference's heads (the metric-only outputs as zeros: not the loss's
    work)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.trainer.dpo_trainer import DPOTrainer

    def head(hidden, weight):
        def forward(*, labels, **unused):
            logps = log_probs(hidden, weight, labels[:, 1:], False)
            zero = torch.zeros_like(logps)
            return SimpleNamespace(log_probs=logps, entropy=zero, mean_logits=zero, is_top1=zero.bool(),
                                   log_sum_sq_probs=None, aux_loss=None)
        return forward

    def call(hidden, weight, tokens, ref_hidden, ref_weight):
        t = object.__new__(DPOTrainer)
        t.__dict__.update(
            accelerator=_Accelerator(hidden.device), aux_loss_enabled=False, _total_train_tokens=0, _tp_size=1,
            _metrics=defaultdict(lambda: defaultdict(list)), model=_Model(), precompute_ref_logps=False,
            args=SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=0.05), loss_types=["sigmoid"],
            loss_weights=[1.0], beta=0.1, label_smoothing=0.0, ld_alpha=None, f_divergence_type="reverse_kl",
            f_alpha_divergence_coef=0.5, use_weighting=False, ref_model=head(ref_hidden, ref_weight))
        prompt = torch.zeros(tokens.shape[0], 1, dtype=torch.long, device=tokens.device)
        ids = torch.cat([prompt, tokens.clamp(min=0)], 1)
        completion = torch.cat([prompt, (tokens != -100).long()], 1)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}
        return t._compute_loss(head(hidden, weight), inputs, return_outputs=False)
    return call


@functools.cache
def _whole_logits_references():
    """TRL's GRPO and DPO on the whole logits, built on first use: importing TRL imports torch._dynamo and Triton,
    which must come after the CLI has set TRITON_INTERPRET (bench --traffic, the demo), and ``info`` or ``--help``
    must not need TRL (a test extra)."""
    return _trl_grpo(_whole_logits_log_probs), _trl_dpo(_whole_logits_log_probs)


def trl_grpo_whole_logits(*args):
    return _whole_logits_references()[0](*args)


def trl_dpo_whole_logits(*args):
    return _whole_logits_references()[1](*args)


def trl_grpo_fused_lm_head(bench):
    return _trl_grpo(_chunked_lm_head_log_probs)


def trl_dpo_fused_lm_head(bench):
    return _trl_dpo(_chunked_lm_head_log_probs)


# ------------------------------------------------------------------ FLOPs, memory


def grpo_flops(inputs, backward):
    """The policy's three GEMMs of 2 N H V (logits, dX, dW; the logits alone forward)."""
    x, w = inputs.args[:2]
    return 2 * x.shape[0] * x.shape[1] * x.shape[2] * w.shape[0] * (3 if backward else 1)


def dpo_flops(inputs, backward):
    """The floor: the policy's three GEMMs and the reference's logits (fusedloss recomputes the policy's logits in
    the backward: a 4th, left out)."""
    x, w, _, ref_x, ref_w = inputs.args
    n = x.shape[0] * x.shape[1]
    return 2 * n * w.shape[0] * (x.shape[2] * (3 if backward else 1) + ref_x.shape[2])


def dpo_footprint(shape, element_size):
    """TRL on whole logits at its peak: the policy's logits and gradient, the reference's logits, the heads."""
    n_rows, hidden, n_classes = shape
    return linear_cross_entropy_footprint(shape, element_size) + n_rows * n_classes * element_size + \
        n_classes * hidden * element_size


_SHAPES = dict(gpu_shapes=[(8192, 4096, 128256)], quick_shapes=[(8192, 4096, 128256)], cpu_shapes=[(256, 128, 2048)],
               traffic_shapes=[(16, 32, 100)], dtypes=(torch.bfloat16,), traffic_note=TRAFFIC_NOTE)

ENTRIES = [
    LossBench(name="linear_grpo_loss", family="objectives", make_inputs=grpo_inputs, implementation=fused_grpo,
              reference=trl_grpo_whole_logits, flops=grpo_flops, footprint=linear_cross_entropy_footprint,
              peers={"trl (fused LM head)": trl_grpo_fused_lm_head, "liger": peers.liger_fused_linear_grpo},
              **_SHAPES),
    LossBench(name="linear_dpo_loss", family="objectives", make_inputs=dpo_inputs, implementation=fused_dpo,
              fusedloss_kwargs={"beta": 0.1, "loss_type": "sigmoid"}, reference=trl_dpo_whole_logits,
              flops=dpo_flops, footprint=dpo_footprint,
              peers={"trl (fused LM head)": trl_dpo_fused_lm_head, "liger": peers.liger_fused_linear_dpo}, **_SHAPES),
]
