"""Vocab-parallel cross entropy and linear_cross_entropy (``process_group=``) over gloo, 2 and 3 processes
(the kernels through Triton's interpreter in each), against the single-process result: the loss on every
rank, each rank's gradient block, the input's gradient summed over the ranks, and the collectives of each
call. The cases (tests/vocab_parallel_worker.py) split C = 13 classes unevenly (7 + 6, 5 + 4 + 4) and
cover ignored targets, label smoothing, class weights, probabilities, z-loss and softcap, (N, C, d) logits,
several chunks of linear_cross_entropy, and both backends.
"""
import os

import pytest
import torch
import torch.multiprocessing as mp

import vocab_parallel_worker as worker

BACKENDS = ["triton", "torch"]
_TIMEOUT = 600  # seconds for a whole world's run (interpreted kernels, two shared cores)


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}ranks")
def world(request, tmp_path_factory):
    """Every case run once by every rank of a gloo group of ``request.param`` processes: (world size,
    per-rank results)."""
    world_size = request.param
    folder = tmp_path_factory.mktemp(f"vocab_parallel_{world_size}")
    context = mp.start_processes(worker.run, args=(world_size, str(folder / "rendezvous"), str(folder)),
                                 nprocs=world_size, join=False, start_method="spawn")
    try:
        finished = False
        for _ in range(_TIMEOUT):
            finished = context.join(timeout=1)
            if finished:
                break
        assert finished, f"the {world_size} ranks did not finish in {_TIMEOUT} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return world_size, [torch.load(folder / f"rank{r}.pt") for r in range(world_size)]


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
