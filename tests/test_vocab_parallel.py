"""Vocab-parallel cross entropy and linear_cross_entropy (``process_group=``) over gloo, 2 and 3 processes
(the kernels through Triton's interpreter in each), against the single-process result: the loss on every
rank, each rank's gradient block, the input's gradient summed over the ranks, and the collectives of each
call. The cases (tests/vocab_parallel_worker.py) split C = 13 classes unevenly (7 + 6, 5 + 4 + 4) and
cover ignored targets, label smoothing, class weights, probabilities, z-loss and softcap, (N, C, d) logits,
several chunks of linear_cross_entropy, and both backends.
"""
import math
import os

import pytest
import torch

import vocab_parallel_worker as worker
from helpers import run_world

BACKENDS = ["triton", "torch"]
_TIMEOUT = 600  # seconds for a whole world's run (interpreted kernels, two shared cores)


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}ranks")
def world(request, tmp_path_factory):
    """Every case run once by every rank of a gloo group of ``request.param`` processes: (world size,
    per-rank results)."""
    world_size = request.param
    folder = tmp_path_factory.mktemp(f"vocab_parallel_{world_size}")
    return world_size, run_world(worker.run, world_size, folder, _TIMEOUT)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(worker.CASES))
def test_matches_single_process(world, name, backend):
    world_size, ranks = world
    spec = worker.CASES[name]
    expected_loss, expected_grads = worker.reference(spec, list(worker.CASES).index(name))
    for attempt in range(2):
        results = [r[(name, backend, attempt)] for r in ranks]
        for rank, result in enumerate(results):
            torch.testing.assert_close(result["loss"], expected_loss, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"rank {rank} loss: {m}")
        if spec["fn"] == "cross_entropy":
            got = [torch.cat([r["grads"][0] for r in results], dim=1)]
        else:  # the input's gradient: each rank's term, summed; the weight's and bias's: each rank's rows
            got = [sum(r["grads"][0] for r in results)]
            got += [torch.cat([r["grads"][i] for r in results], dim=0) for i in range(1, len(expected_grads))]
        for g, e, what in zip(got, expected_grads, ["input", "weight", "bias"]):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"{what} gradient: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(worker.DIST_CASES))
def test_distribution_matches_single_process(world, name, backend):
    """jsd_loss (logits and top-k teachers), log_probs, linear_jsd_loss, linear_log_probs over the ranks: the
    output on every rank, each rank's block of each sharded gradient, the LM heads' inputs' gradients
    summed over the ranks, against the single process."""
    world_size, ranks = world
    spec = worker.DIST_CASES[name]
    expected, expected_grads, dims, grad_of = worker.dist_reference(spec, list(worker.DIST_CASES).index(name))
    dims = [d for d, wants in zip(dims, grad_of) if wants]
    for attempt in range(2):
        results = [r[(name, backend, attempt)] for r in ranks]
        for rank, result in enumerate(results):
            torch.testing.assert_close(result["loss"], expected, rtol=1e-10, atol=1e-12, equal_nan=False,
                                       msg=lambda m: f"rank {rank} output: {m}")
        for i, e in enumerate(expected_grads):
            if i < len(dims):  # a sharded tensor: the ranks' blocks side by side
                got = torch.cat([r["grads"][i] for r in results], dim=dims[i])
            else:  # an LM head's input: each rank's term
                got = sum(r["grads"][i] for r in results)
            torch.testing.assert_close(got, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"gradient {i}: {m}")


def distribution_collectives(spec, rows=None):
    """The fused path's collectives per forward (R rows: the case's, or ``rows``): an all_reduce MAX of each
    log-softmax's row maxima, one SUM of its sums (and of the label's logit for log-probabilities and a hard
    loss, of the entropy's sum), and for a divergence one SUM of its two row sums."""
    rows = rows or spec["n"] * math.prod(spec["lead"])
    kwargs = spec["kwargs"]
    fn = spec["fn"]
    if fn in ("log_probs", "linear_log_probs"):
        return [("all_reduce", "MAX", rows), ("all_reduce", "SUM", (3 if kwargs.get("with_entropy") else 2) * rows)]
    lse = 1 if kwargs.get("top_k") else 2
    hard = bool(kwargs.get("hard_weight"))
    own = hard and kwargs.get("temperature", 1.0) != 1.0
    return [("all_reduce", "MAX", (lse + own) * rows), ("all_reduce", "SUM", (lse + own + hard) * rows),
            ("all_reduce", "SUM", 2 * rows)]


@pytest.mark.parametrize("name", list(worker.DIST_CASES))
def test_distribution_collectives_per_call(world, name):
    """The fused path: each forward the collectives of ``distribution_collectives``; the backward none;
    the first call at most one all_gather of one integer (the shard sizes)."""
    world_size, ranks = world
    steady = distribution_collectives(worker.DIST_CASES[name])
    for rank in ranks:
        first, second = rank[(name, "triton", 0)], rank[(name, "triton", 1)]
        assert second["forward"] == steady and second["backward"] == []
        assert [c for c in first["forward"] if c[0] != "all_gather"] == steady and first["backward"] == []
        assert [c for c in first["forward"] if c[0] == "all_gather"] in ([], [("all_gather", "", 1)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(worker.CASES))
def test_collectives_per_call(world, name, backend):
    """Each forward: one all_reduce MAX of the N row maxima and one all_reduce SUM of 2N floats (4N with
    smoothing or probabilities); the backward none; the first call for a local class count at most one
    all_gather of one integer (the shard sizes)."""
    world_size, ranks = world
    spec = worker.CASES[name]
    rows = spec["n"] * (spec["d"] or 1)
    sums = 4 if spec["prob"] or spec["kwargs"].get("label_smoothing") else 2
    steady = [("all_reduce", "MAX", rows), ("all_reduce", "SUM", sums * rows)]
    for rank in ranks:
        first, second = rank[(name, backend, 0)], rank[(name, backend, 1)]
        assert second["forward"] == steady and second["backward"] == []
        gathers = [c for c in first["forward"] if c[0] == "all_gather"]
        assert gathers in ([], [("all_gather", "", 1)])
        assert [c for c in first["forward"] if c[0] != "all_gather"] == steady and first["backward"] == []
