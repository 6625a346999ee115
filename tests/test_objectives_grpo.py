"""Parity of ``fusedloss.objectives.grpo`` with TRL 1.16's own ``GRPOTrainer`` code (trl is a test dependency).

TRL's code runs unchanged: a ``GRPOTrainer`` made with ``object.__new__`` carries a real ``GRPOConfig`` and the
attributes ``__init__`` copies from it, a single-process accelerator stub (gather/reduce are the identity) and
an instance-level ``_get_per_token_logps_and_entropies`` returning the test's tensors in place of a model.
``_compute_loss`` then gives the loss and its ``_metrics``; ``_generate_and_score_completions`` (with
generation and rewards stubbed) gives the vLLM importance-sampling ratio. Nothing of TRL's math is re-typed here.

Inputs always hold a fully masked sequence and a one-token completion. float64 agrees to 1e-10; float32 and the
16-bit dtypes are judged against TRL in float64 on the same values, "no worse than TRL at that dtype".
"""
import copy
import math
import os
import tempfile
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from fusedloss.objectives import ObjectiveResult
from fusedloss.objectives.grpo import LOSS_TYPES, grpo_loss, vllm_importance_sampling_ratio
from helpers import assert_matches, assert_matches_torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
import trl.trainer.grpo_trainer as trl_grpo  # noqa: E402
from trl import GRPOConfig  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402

F64 = torch.float64
DIFFERENTIABLE = ("logps", "old", "advantages", "ref", "entropies", "is_ratio", "sampling", "aux")
CLIPPED = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


@pytest.fixture(scope="module")
def base_args():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GRPOConfig(output_dir=tempfile.gettempdir(), report_to="none", bf16=False, use_cpu=True,
                          max_completion_length=9)


class _Accelerator:
    """One process: gather/reduce/pad are the identity (``num_processes`` only scales dapo's normaliser)."""
    device = torch.device("cpu")
    process_index = 0
    sync_gradients = True

    def __init__(self, num_processes=1):
        self.num_processes = num_processes

    def gather(self, tensor):
        return tensor

    gather_for_metrics = gather

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def pad_across_processes(self, tensor, dim=0, pad_index=0):
        return tensor


def _trainer(args, *, training=True, ga=1, processes=1, use_vllm=False, aux=False):
    """A GRPOTrainer without __init__: the attributes __init__ sets from ``args`` (grpo_trainer.py), no model."""
    t = object.__new__(GRPOTrainer)
    t.args, t.accelerator, t.model = args, _Accelerator(processes), SimpleNamespace(training=training)
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t.current_gradient_accumulation_steps = ga
    t.loss_type, t.beta, t.epsilon_low = args.loss_type, args.beta, args.epsilon
    t.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    t.importance_sampling_level = args.importance_sampling_level
    t.off_policy_mask_threshold = args.off_policy_mask_threshold
    t.top_entropy_quantile, t.max_completion_length = args.top_entropy_quantile, args.max_completion_length
    t.entropy_coef, t.use_adaptive_entropy = args.entropy_coef, args.use_adaptive_entropy
    t._entropy_bonus_enabled = t.entropy_coef != 0.0 or t.use_adaptive_entropy
    t._last_world_entropy, t._entropy_window_stats = float("inf"), None
    t.use_vllm, t.vllm_importance_sampling_correction = use_vllm, args.vllm_importance_sampling_correction
    t.vllm_importance_sampling_mode = args.vllm_importance_sampling_mode
    t.vllm_importance_sampling_clip_min = args.vllm_importance_sampling_clip_min
    t.vllm_importance_sampling_clip_max = args.vllm_importance_sampling_clip_max
    t.router_aux_loss_coef, t.aux_loss_enabled = args.router_aux_loss_coef or 0.0, aux
    return t


def _inputs(T=7, seed=0, log_ratio=0.3, advantages_shape="B", is_shape="token"):
    """Six sequences with completion lengths T, 1, 0 (fully masked), T - 2, 3, T (float64)."""
    g = torch.Generator().manual_seed(seed)
    B = 6

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)
    logps = -3 * torch.rand(B, T, generator=g, dtype=F64)
    lengths = torch.tensor([T, 1, 0, max(T - 2, 0), min(3, T), T])
    return {"logps": logps, "old": logps + log_ratio * randn(B, T), "ref": logps + 0.5 * randn(B, T),
            "sampling": logps + log_ratio * randn(B, T) + 0.05,
            "entropies": 4 * torch.rand(B, T, generator=g, dtype=F64),
            "advantages": randn(B) if advantages_shape == "B" else randn(B, T),
            "mask": (torch.arange(T) < lengths[:, None]).int(),
            "is_ratio": torch.exp(0.2 * randn(B, T if is_shape == "token" else 1)),
            "aux": torch.tensor(0.7, dtype=F64)}


def _leaves(inputs, dtype):
    return {k: v.to(dtype).clone().requires_grad_() if k in DIFFERENTIABLE else v for k, v in inputs.items()}


def _run_trl(trainer, x, *, vllm=False, num_items=None):
    """TRL's ``_compute_loss`` on ``x`` (leaves): (loss, metrics as floats, gradients of every leaf)."""
    B, T = x["logps"].shape
    entropies = x["entropies"]
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (x["logps"], entropies, x["aux"])
    inputs = {"prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": x["mask"],
              "advantages": x["advantages"], "old_per_token_logps": x["old"], "ref_per_token_logps": x["ref"],
              "sampling_per_token_logps": x["sampling"],
              "num_items_in_batch": x["mask"].sum() if num_items is None else num_items}
    if vllm:
        inputs["importance_sampling_ratio"] = x["is_ratio"]
    loss = trainer._compute_loss(None, inputs)
    mode = "train" if trainer.model.training else "eval"
    metrics = {k: v[-1] for k, v in trainer._metrics[mode].items() if k != "entropy_coef"}  # a config value
    return loss, metrics, _grads(loss, x)


def _grads(loss, x):
    leaves = [x[k] for k in DIFFERENTIABLE]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for k, v, g in zip(DIFFERENTIABLE, leaves, grads)}


def _run_ours(x, options, *, vllm=False, num_items=None):
    result = grpo_loss(x["logps"], x["old"], x["advantages"], x["mask"], ref_per_token_logps=x["ref"],
                       entropies=x["entropies"], sampling_per_token_logps=x["sampling"], aux_loss=x["aux"],
                       importance_sampling_ratio=x["is_ratio"] if vllm else None, num_items_in_batch=num_items,
                       **options)
    assert isinstance(result, ObjectiveResult)
    assert all(not v.requires_grad for v in result.metrics.values())
    return result.loss, result.metrics, _grads(result.loss, x)


def _parity(base_args, loss_type, case, inputs, dtype=F64):
    """Run TRL and fusedloss on the same case; returns ((ours), (TRL at dtype), (TRL in float64))."""
    case = dict(case)
    training, ga, processes = case.pop("training", True), case.pop("ga", 1), case.pop("processes", 1)
    vllm, num_items = case.pop("vllm", False), case.pop("num_items", None)
    args = copy.copy(base_args)
    options = {"loss_type": loss_type, **case}
    options.setdefault("steps_per_generation", ga)
    for name, value in options.items():
        setattr(args, name, value)
    options["max_completion_length"] = args.max_completion_length
    if case.get("steps_per_generation") is None:
        del options["steps_per_generation"]  # fusedloss's default: S = GA, as GRPOConfig's
    ours_kwargs = dict(gradient_accumulation_steps=ga if training else 1, num_processes=processes)
    if not training:
        ours_kwargs["steps_per_generation"] = 1
    inputs = {k: v.to(dtype).to(v.dtype) if v.is_floating_point() else v for k, v in inputs.items()}  # same values
    trl_runs = []
    for run_dtype in (dtype, F64) if dtype != F64 else (F64,):
        trainer = _trainer(args, training=training, ga=ga, processes=processes, use_vllm=vllm,
                           aux=args.router_aux_loss_coef not in (None, 0.0))
        trl_runs.append(_run_trl(trainer, _leaves(inputs, run_dtype), vllm=vllm, num_items=num_items))
    ours = _run_ours(_leaves(inputs, dtype), {**options, **ours_kwargs}, vllm=vllm, num_items=num_items)
    return ours, trl_runs[0], trl_runs[-1]


def _assert_parity(ours, trl_same, trl64, dtype, what):
    (loss, metrics, grads), (t_loss, t_metrics, t_grads), (r_loss, r_metrics, r_grads) = ours, trl_same, trl64
    assert set(metrics) == set(r_metrics), f"{what}: metrics {sorted(metrics)} vs TRL's {sorted(r_metrics)}"
    assert loss.dtype == (F64 if dtype == F64 else torch.float32)
    triples = [("loss", loss, t_loss, r_loss)]
    triples += [(k, metrics[k], torch.tensor(t_metrics[k], dtype=F64), torch.tensor(r_metrics[k], dtype=F64))
                for k in metrics]
    triples += [(f"grad {k}", grads[k], t_grads[k], r_grads[k]) for k in grads]
    for name, actual, same_dtype, reference in triples:
        if dtype == F64:
            assert_matches(actual, reference, F64, f"{what} {name}")
        else:
            assert_matches_torch(actual, same_dtype, reference.to(F64), dtype, f"{what} {name}")


CASES = {
    "defaults": {},
    "kl": {"beta": 0.04},
    "kl-unbiased-off": {"beta": 0.04, "use_bias_correction_kl": False},
    "sequence": {"importance_sampling_level": "sequence", "beta": 0.04},
    "sequence-clipped": {"importance_sampling_level": "sequence", "epsilon": 0.03, "delta": 1.04},
    "eps-high-delta": {"epsilon": 0.15, "epsilon_high": 0.28, "delta": 1.25},  # delta < 1 + eps_high: no high flag
    "cispo-eps-max": {"epsilon_high": 1.1},
    "temperatures-vespo-k": {"sapo_temperature_pos": 0.7, "sapo_temperature_neg": 1.3, "vespo_k_pos": 1.5,
                             "vespo_lambda_pos": 2.5, "vespo_k_neg": 2.0, "vespo_lambda_neg": 0.0},  # clamped to 1e-4
    "entropy-and-off-policy-masks": {"top_entropy_quantile": 0.4, "off_policy_mask_threshold": 0.02},
    "vllm-token": {"vllm": True, "beta": 0.04},
    "bonus-aux": {"entropy_coef": 0.05, "router_aux_loss_coef": 0.01, "top_entropy_quantile": 0.7},
    "accumulation": {"ga": 3, "steps_per_generation": 5, "processes": 7, "num_items": torch.tensor(57)},
    "accumulation-default-S": {"ga": 3, "entropy_coef": 0.05, "router_aux_loss_coef": 0.01},
    "eval": {"training": False, "ga": 4, "processes": 2, "num_items": torch.tensor(40), "entropy_coef": 0.1},
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_trl_float64(loss_type, case, base_args):
    """Loss, every metric TRL logs and the gradient of every input, float64, to 1e-10."""
    ours, _, trl64 = _parity(base_args, loss_type, CASES[case], _inputs())
    _assert_parity(ours, trl64, trl64, F64, f"{loss_type}/{case}")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("variant", ["advantages-BT", "vllm-sequence-ratio", "length-1"])
def test_matches_trl_shapes(loss_type, level, variant, base_args):
    """Per-token advantages (B, T); a per-sequence vLLM ratio (B, 1); completions of length T = 1 (where TRL's
    metric means go by shape: over all B rows, masked or not)."""
    if variant == "vllm-sequence-ratio" and loss_type == "vespo":
        pytest.skip("TRL refuses sequence-level vLLM ratios for vespo")
    inputs = _inputs(T=1 if variant == "length-1" else 7, advantages_shape="BT" if variant == "advantages-BT" else "B",
                     is_shape="sequence" if variant == "vllm-sequence-ratio" else "token")
    case = {"importance_sampling_level": level, "beta": 0.04, "vllm": variant != "advantages-BT",
            "top_entropy_quantile": 0.5}
    ours, _, trl64 = _parity(base_args, loss_type, case, inputs)
    _assert_parity(ours, trl64, trl64, F64, f"{loss_type}/{level}/{variant}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_low_precision(loss_type, dtype, base_args):
    """16-bit and float32 inputs: computed in float32, returned float32 (gradients in the input's dtype), no
    further from TRL in float64 than TRL itself at that dtype."""
    case = {"beta": 0.04, "top_entropy_quantile": 0.6, "off_policy_mask_threshold": 0.05, "vllm": True,
            "entropy_coef": 0.02}
    ours, trl_same, trl64 = _parity(base_args, loss_type, case, _inputs(seed=1), dtype)
    _assert_parity(ours, trl_same, trl64, dtype, f"{loss_type}/{dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_extreme_log_ratios(loss_type, beta, level, dtype, base_args):
    """|log r| = 50 (alternating sign): finite loss and metrics at every dtype, close to TRL in float64 (TRL at
    float16 overflows exp(50) to inf: NaN loss); gradients are the reference rounded to the input dtype (so
    finite for float16 wherever the exact gradient fits its range, e.g. sapo, cispo, vespo without KL)."""
    inputs = _inputs(seed=2)
    sign = torch.where(torch.arange(inputs["logps"].numel()).view_as(inputs["logps"]) % 2 == 0, 1.0, -1.0)
    inputs["old"] = inputs["logps"] - 50 * sign.to(F64)
    case = {"importance_sampling_level": level, "beta": beta, "epsilon_high": 0.28}
    (loss, metrics, grads), _, (r_loss, r_metrics, r_grads) = _parity(base_args, loss_type, case, inputs, dtype)
    assert torch.isfinite(r_loss) and torch.isfinite(loss), f"{loss} vs TRL float64 {r_loss}"
    assert_matches(loss, r_loss, torch.float32, "loss")
    for k in metrics:
        assert_matches(metrics[k], torch.tensor(r_metrics[k], dtype=F64), torch.float32, k)
    for k in grads:
        rounded = r_grads[k].to(dtype)  # float16: inf beyond 65504, as any float16 gradient
        assert torch.equal(torch.isfinite(grads[k]), torch.isfinite(rounded)), k
        assert_matches(grads[k], rounded.to(F64), dtype, f"grad {k}")


def test_adaptive_entropy_applied_coefficient(base_args):
    """TRL's adaptive entropy control = its applied coefficient this step, passed as ``entropy_coef``."""
    args = copy.copy(base_args)
    args.loss_type, args.use_adaptive_entropy, args.entropy_coef, args.steps_per_generation = "dapo", True, 0.03, 2
    trainer = _trainer(args, ga=2)
    trainer._last_world_entropy = 0.1  # <= entropy_target: the bonus applies
    x = _leaves(_inputs(), F64)
    loss, metrics, grads = _run_trl(trainer, x)
    ours = grpo_loss(x["logps"], x["old"], x["advantages"], x["mask"], entropies=x["entropies"],
                     entropy_coef=0.03, gradient_accumulation_steps=2)
    assert_matches(ours.loss, loss, F64, "loss")
    assert_matches(ours.metrics["policy_loss"], torch.tensor(metrics["policy_loss"], dtype=F64), F64, "policy")
    ours_grads = _grads(ours.loss, x)
    for k in ("logps", "entropies"):
        assert_matches(ours_grads[k], grads[k], F64, k)


def test_normalisers_as_numbers_and_entropy_threshold():
    """A Python ``num_items_in_batch`` (float64 arithmetic) vs TRL's tensor (float32); bool and float masks;
    ``entropy_threshold`` given as the quantile TRL would gather reproduces the local default."""
    x = _inputs()
    common = dict(loss_type="dapo", num_processes=3, gradient_accumulation_steps=4, steps_per_generation=2)
    as_tensor = grpo_loss(x["logps"], x["old"], x["advantages"], x["mask"], num_items_in_batch=torch.tensor(57),
                          **common)
    as_number = grpo_loss(x["logps"], x["old"], x["advantages"], x["mask"], num_items_in_batch=57, **common)
    torch.testing.assert_close(as_number.loss, as_tensor.loss, rtol=1e-6, atol=0)
    by_int = grpo_loss(x["logps"], x["old"], x["advantages"], x["mask"]).loss
    for mask in (x["mask"].bool(), x["mask"].to(torch.bfloat16)):  # any mask dtype: the same default count
        assert torch.equal(grpo_loss(x["logps"], x["old"], x["advantages"], mask).loss, by_int)
    quantile = torch.quantile(x["entropies"][x["mask"].bool()].float(), 1 - 0.3)
    local = grpo_loss(x["logps"], x["old"], x["advantages"], x["mask"], entropies=x["entropies"],
                      top_entropy_quantile=0.3)
    given = grpo_loss(x["logps"], x["old"], x["advantages"], x["mask"], entropies=x["entropies"],
                      top_entropy_quantile=0.3, entropy_threshold=quantile)
    assert torch.equal(local.loss, given.loss)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_optional_inputs_absent(loss_type):
    """beta = 0 without reference log-probs, no entropies (no ``entropy`` metric), no old log-probs (on-policy:
    ``per_token_logps.detach()``, as TRL): the same loss and gradient as with them given and unused."""
    x = _leaves(_inputs(), F64)
    given = grpo_loss(x["logps"], x["logps"].detach(), x["advantages"], x["mask"], ref_per_token_logps=x["ref"],
                      entropies=x["entropies"], loss_type=loss_type, max_completion_length=9)
    bare = grpo_loss(x["logps"], None, x["advantages"], x["mask"], loss_type=loss_type, max_completion_length=9)
    assert torch.equal(bare.loss, given.loss)
    assert set(given.metrics) - set(bare.metrics) == {"entropy"}
    assert torch.equal(_grads(bare.loss, x)["logps"], _grads(given.loss, x)["logps"])


def test_entropy_mask_ties_nan_and_empty(base_args):
    """The sort-based quantile against TRL's torch.quantile: tied entropies at the quantile, a NaN entropy
    (TRL: threshold NaN, every token dropped), and a batch with no active token."""
    for mutate in ("ties", "nan", "empty"):
        x = _inputs(T=5, seed=3)
        if mutate == "ties":
            x["entropies"] = torch.floor(x["entropies"])
        elif mutate == "nan":
            x["entropies"][0, 1] = math.nan
        else:
            x["mask"] = torch.zeros_like(x["mask"])
        for q in (0.0, 0.25, 0.5):
            ours, _, trl64 = _parity(base_args, "grpo", {"top_entropy_quantile": q}, x)
            _assert_parity(ours, trl64, trl64, F64, f"{mutate}/{q}")


# ---- the vLLM importance-sampling ratio, against _generate_and_score_completions -----------------------------

def _trl_vllm_ratio(base_args, monkeypatch, old, sampling, lengths, mode, clip_min, clip_max):
    """TRL's generation step with generation and rewards stubbed: its ``importance_sampling_ratio`` and metrics."""
    args = copy.copy(base_args)
    args.vllm_importance_sampling_mode = mode
    args.vllm_importance_sampling_clip_min, args.vllm_importance_sampling_clip_max = clip_min, clip_max
    t = _trainer(args, use_vllm=True)
    t.model.is_gradient_checkpointing = False
    t.environment_factories, t.tools, t.environments, t.pad_to_multiple_of = None, None, None, None
    t._tokenizer, t.mask_truncated_completions = SimpleNamespace(pad_token_id=0), False
    t.num_iterations, t.num_generations, t.scale_rewards = 1, 2, "group"
    t.multi_objective_aggregation, t.reward_weights, t.reward_func_names = "sum_then_normalize", torch.ones(1), ["r"]
    t._logs = {"prompt": [], "completion": [], "advantages": [], "rewards": defaultdict(list),
               "extra": defaultdict(list)}
    t._pending_extra_logs, t._pending_metrics = {}, {}
    B = len(lengths)
    sampling_lists = [[None if math.isnan(v) else v for v in sampling[i, :n].tolist()] for i, n in enumerate(lengths)]
    t._generate = lambda prompts: ([[5, 6]] * B, [[7] * n for n in lengths], None, ["c"] * B, sampling_lists, {},
                                   None, None)
    t._get_per_token_logps_and_entropies = lambda *a, **k: (old, None, None)
    t._calculate_rewards = lambda *a: torch.arange(B, dtype=torch.float32)[:, None]
    monkeypatch.setattr(trl_grpo, "gather_object", lambda obj: obj)
    out = t._generate_and_score_completions([{"prompt": "p"}] * B)
    return out["importance_sampling_ratio"], out["sampling_per_token_logps"], dict(t._metrics["train"])


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("clip_min,clip_max", [(None, 3.0), (0.5, 1.5), (0.9, None)])
def test_vllm_importance_sampling_ratio(mode, clip_min, clip_max, base_args, monkeypatch):
    """Ratio and the five sampling metrics, float64 to 1e-10: padding, an empty completion and a token vLLM
    could not score (NaN) included."""
    lengths = [6, 1, 0, 4, 6, 3]
    g = torch.Generator().manual_seed(4)
    old = -2 * torch.rand(6, 6, generator=g, dtype=F64)
    sampling = (old + 0.15 * torch.randn(6, 6, generator=g, dtype=F64)).float().double()  # TRL builds float32
    sampling[3, 2] = math.nan
    ratio, trl_sampling, metrics = _trl_vllm_ratio(base_args, monkeypatch, old, sampling, lengths, mode, clip_min,
                                                   clip_max)
    mask = (torch.arange(6) < torch.tensor(lengths)[:, None]).int()
    ours = vllm_importance_sampling_ratio(old, trl_sampling, mask, mode=mode, clip_min=clip_min, clip_max=clip_max)
    assert_matches(ours.ratio, ratio, F64, "ratio")
    for name, value in ours.metrics.items():
        assert_matches(value, torch.tensor(metrics[name][-1], dtype=F64), F64, name)
    assert set(ours.metrics) == {k for k in metrics if k.startswith("sampling/")}


# ---- transforms --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss_type", ["dapo", "vespo"])
def test_compile_fullgraph(loss_type):
    """torch.compile(fullgraph=True) (aot_eager on CPU) traces every option: same loss, metrics, gradients."""
    x = _leaves(_inputs(), torch.float32)
    options = dict(loss_type=loss_type, ref_per_token_logps=x["ref"], entropies=x["entropies"], beta=0.04,
                   importance_sampling_ratio=x["is_ratio"], sampling_per_token_logps=x["sampling"],
                   top_entropy_quantile=0.5, off_policy_mask_threshold=0.02, entropy_coef=0.01,
                   aux_loss=x["aux"], router_aux_loss_coef=0.01, gradient_accumulation_steps=2)

    def fn(logps, old, advantages, mask):
        ratio = vllm_importance_sampling_ratio(old, x["sampling"], mask, mode="token_mask", clip_min=0.5).ratio
        return grpo_loss(logps, old, advantages, mask, **{**options, "importance_sampling_ratio": ratio})
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager, traced = fn(x["logps"], x["old"], x["advantages"], x["mask"]), compiled(
        x["logps"], x["old"], x["advantages"], x["mask"])
    torch.testing.assert_close(traced.loss, eager.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(traced.metrics, eager.metrics, rtol=1e-6, atol=0)
    for a, b in zip(_grads(traced.loss, x).values(), _grads(eager.loss, x).values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_func_grad():
    """torch.func.grad (with metrics as aux) equals autograd's gradient."""
    x = _inputs()
    kwargs = dict(loss_type="cispo", ref_per_token_logps=x["ref"], beta=0.04, entropies=x["entropies"],
                  top_entropy_quantile=0.5)

    def loss_fn(logps):
        result = grpo_loss(logps, x["old"], x["advantages"], x["mask"], **kwargs)
        return result.loss, result.metrics
    grad, metrics = torch.func.grad(loss_fn, has_aux=True)(x["logps"])
    logps = x["logps"].clone().requires_grad_()
    eager = grpo_loss(logps, x["old"], x["advantages"], x["mask"], **kwargs)
    torch.testing.assert_close(grad, torch.autograd.grad(eager.loss, logps)[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(metrics, eager.metrics, rtol=0, atol=0)


# ---- bad arguments -----------------------------------------------------------------------------------------

_X = _inputs()
BAD = [
    ({"loss_type": "ppo"}, ValueError, "loss_type"),
    ({"importance_sampling_level": "group"}, ValueError, "importance_sampling_level"),
    ({"per_token_logps": _X["logps"][0]}, ValueError, "per_token_logps"),
    ({"per_token_logps": _X["mask"]}, TypeError, "per_token_logps"),
    ({"per_token_logps": [[0.0]]}, TypeError, "per_token_logps"),
    ({"old_per_token_logps": _X["old"][:, :3]}, ValueError, "old_per_token_logps"),
    ({"advantages": torch.zeros(7, dtype=F64)}, ValueError, "advantages"),
    ({"advantages": torch.zeros(6, dtype=torch.long)}, TypeError, "advantages"),
    ({"completion_mask": _X["mask"][:3]}, ValueError, "completion_mask"),
    ({"ref_per_token_logps": _X["ref"][:, :2]}, ValueError, "ref_per_token_logps"),
    ({"entropies": _X["entropies"].T}, ValueError, "entropies"),
    ({"importance_sampling_ratio": _X["is_ratio"][:, :2]}, ValueError, "importance_sampling_ratio"),
    ({"sampling_per_token_logps": _X["sampling"][:1]}, ValueError, "sampling_per_token_logps"),
    ({"aux_loss": torch.ones(2)}, ValueError, "aux_loss"),
    ({"beta": "0.1"}, TypeError, "beta"),
    ({"beta": math.nan}, ValueError, "beta"),
    ({"epsilon": -0.1}, ValueError, "epsilon"),
    ({"epsilon_high": -1.0}, ValueError, "epsilon_high"),
    ({"delta": 0.0}, ValueError, "delta"),
    ({"delta": 0.9}, ValueError, "delta"),  # a cap on the ratio below 1
    ({"beta": -0.1}, ValueError, "beta"),
    ({"epsilon": 1.0}, ValueError, "epsilon"),  # the lower clip 1 - epsilon must stay positive
    ({"router_aux_loss_coef": -1.0}, ValueError, "router_aux_loss_coef"),
    ({"sapo_temperature_pos": 0.0}, ValueError, "sapo_temperature_pos"),
    ({"sapo_temperature_neg": -1.0}, ValueError, "sapo_temperature_neg"),
    ({"vespo_k_pos": None}, TypeError, "vespo_k_pos"),
    ({"vespo_lambda_pos": "3"}, TypeError, "vespo_lambda_pos"),
    ({"vespo_k_neg": math.nan}, ValueError, "vespo_k_neg"),
    ({"vespo_lambda_neg": [2.0]}, TypeError, "vespo_lambda_neg"),
    ({"off_policy_mask_threshold": "high"}, TypeError, "off_policy_mask_threshold"),
    ({"top_entropy_quantile": 1.5}, ValueError, "top_entropy_quantile"),
    ({"entropy_threshold": torch.ones(2)}, ValueError, "entropy_threshold"),
    ({"entropy_coef": "0.1"}, TypeError, "entropy_coef"),
    ({"router_aux_loss_coef": None}, TypeError, "router_aux_loss_coef"),
    ({"use_bias_correction_kl": 1}, TypeError, "use_bias_correction_kl"),
    ({"loss_type": "dr_grpo"}, TypeError, "max_completion_length"),
    ({"loss_type": "dr_grpo", "max_completion_length": 0}, ValueError, "max_completion_length"),
    ({"num_items_in_batch": -1}, ValueError, "num_items_in_batch"),
    ({"num_items_in_batch": torch.ones(3)}, ValueError, "num_items_in_batch"),
    ({"num_processes": 0}, ValueError, "num_processes"),
    ({"gradient_accumulation_steps": 1.5}, TypeError, "gradient_accumulation_steps"),
    ({"steps_per_generation": 0}, ValueError, "steps_per_generation"),
    ({"beta": 0.1, "ref_per_token_logps": None}, ValueError, "ref_per_token_logps"),
    ({"top_entropy_quantile": 0.5, "entropies": None}, ValueError, "entropies"),
    ({"entropy_coef": 0.5, "entropies": None}, ValueError, "entropies"),
]


@pytest.mark.parametrize("override,error,name", BAD, ids=[f"{n}-{i}" for i, (_, _, n) in enumerate(BAD)])
def test_bad_arguments(override, error, name):
    kwargs = {"per_token_logps": _X["logps"], "old_per_token_logps": _X["old"], "advantages": _X["advantages"],
              "completion_mask": _X["mask"], "ref_per_token_logps": _X["ref"], "entropies": _X["entropies"],
              **override}
    with pytest.raises(error, match=name):
        grpo_loss(**kwargs)


@pytest.mark.parametrize("override,error,name", [
    ({"mode": "token"}, ValueError, "mode"),
    ({"mode": "token_truncate", "clip_min": None, "clip_max": None}, ValueError, "clip_min"),
    ({"clip_min": 2.0, "clip_max": 1.0}, ValueError, "clip_min"),
    ({"clip_max": "3"}, TypeError, "clip_max"),
    ({"clip_min": math.nan}, ValueError, "clip_min"),
    ({"old_per_token_logps": _X["old"][0]}, ValueError, "old_per_token_logps"),
    ({"sampling_per_token_logps": _X["sampling"][:, 1:]}, ValueError, "sampling_per_token_logps"),
    ({"completion_mask": _X["mask"][1:]}, ValueError, "completion_mask"),
])
def test_bad_arguments_vllm_ratio(override, error, name):
    kwargs = {"old_per_token_logps": _X["old"], "sampling_per_token_logps": _X["sampling"],
              "completion_mask": _X["mask"], **override}
    with pytest.raises(error, match=name):
        vllm_importance_sampling_ratio(**kwargs)
