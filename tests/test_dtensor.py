"""DTensor inputs (tensor parallelism) and the data-parallel engines, over gloo with CPU tensors (the kernels
through Triton's interpreter in each process), against the single-process result:

  - cross_entropy, nll_loss and linear_cross_entropy of DTensors sharded on the classes, on a 1-D mesh of
    2 and 4 ranks and on a 2 x 2 ("dp", "tp") mesh with the rows sharded on dp (C = 13 classes: uneven
    shards, 7 + 6 and 4 + 4 + 4 + 1): the loss's global value and its placements, every gradient's global
    value and placements, the collectives fusedloss makes, both backends; plain or DTensor targets;
    a rank whose rows are all ignored; Replicate logits; inside loss_parallel(); clear errors for the
    placements it cannot serve; torch.compile(fullgraph=True, backend="aot_eager");
  - a tiny Llama trained for a few steps with use_fused_linear_cross_entropy under DDP, FSDP2 (2 ranks)
    and tensor parallelism on the LM head + FSDP2 on a 2 x 2 mesh (4 ranks): the losses and gradient norms
    of every step equal to the single-process run's to float32 rounding.
"""
import pytest
import torch

import dtensor_worker as worker
from helpers import run_world

pytest.importorskip("transformers", reason="transformers is not installed (the [test] extra installs it)")

_TIMEOUT = 900  # seconds for a whole world's run (interpreted kernels, four processes on two shared cores)


@pytest.fixture(scope="module", params=[2, 4], ids=lambda n: f"{n}ranks")
def world(request, tmp_path_factory):
    """Every case, the compile checks and the training run once by every rank of a gloo group of
    ``request.param`` processes: (world size, per-rank results)."""
    world_size = request.param
    folder = tmp_path_factory.mktemp(f"dtensor_{world_size}")
    return world_size, run_world(worker.run, world_size, folder, _TIMEOUT)


def _expected_placements(spec, reduction):
    """torch's placements for the loss, with the global mean over rows (see fusedloss/_dtensor.py): a
    plain linear_cross_entropy input has every row on every rank (Replicate)."""
    if spec["mesh"] == "1d" or spec["fn"] == "linear_cross_entropy" and "input" not in spec:
        return ["Replicate()"] * (1 if spec["mesh"] == "1d" else 2)
    rows = spec.get("logits", ["Shard(0)"])[0] if spec["fn"] != "linear_cross_entropy" else "Shard(0)"
    if reduction == "none":
        dim = int(rows[len("Shard("):-1])
        return [f"Shard(dim={dim - 1 if dim > 1 else dim})", "Replicate()"]
    return ["Partial(sum)", "Replicate()"]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("name", list(worker.CASES))
def test_matches_single_process(world, name, backend):
    world_size, ranks = world
    spec = worker.CASES[name]
    results = [r["cases"].get((name, backend, 1)) for r in ranks]
    if results[0] is None:  # a case of the other world
        assert world_size not in spec["worlds"]
        return
    expected_loss, expected_grads = worker.reference(spec, list(worker.CASES).index(name))
    reduction = spec["kwargs"].get("reduction", "mean")
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["loss"], expected_loss, rtol=1e-10, atol=1e-12, equal_nan=True,
                                   msg=lambda m: f"rank {rank} loss: {m}")
        assert result["placements"] == _expected_placements(spec, reduction)
        for got, expected, what in zip(result["grads"], expected_grads, ["input", "weight", "bias"]):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"rank {rank} {what} gradient: {m}")


@pytest.mark.parametrize("name", [n for n, s in worker.CASES.items() if s["fn"] == "cross_entropy"
                                  and "Shard(1)" in s["logits"]])
def test_collectives_per_call(world, name):
    """fusedloss's own collectives for DTensor logits sharded on the classes: per forward one all_reduce MAX
    of the rows' maxima and one SUM of 2 (4 with smoothing or probabilities) floats per row over the class
    group, plus one SUM of the 'mean' denominator (a scalar) over a row-sharded dimension; none in the
    backward (the gradient's placements are DTensor's)."""
    world_size, ranks = world
    spec = worker.CASES[name]
    for rank in ranks:
        result = rank["cases"].get((name, "triton", 1))
        if result is None:
            continue
        rows = result["forward"][0][2]  # this rank's rows (a 2-D mesh shards them, unevenly for D = 3)
        assert 0 < rows <= worker.N * (worker.D if spec.get("spatial") else 1)
        sums = 4 if spec.get("prob") or spec["kwargs"].get("label_smoothing") else 2
        expected = [("all_reduce", "MAX", rows), ("all_reduce", "SUM", sums * rows)]
        if spec["mesh"] == "2d" and spec["kwargs"].get("reduction", "mean") == "mean":
            expected.append(("all_reduce", "SUM", 1))
        assert result["forward"] == expected and result["backward"] == []


def test_gradient_placements(world):
    """Each gradient comes back with its input's placements (a plain input: a plain gradient); the LM
    head, replicated over the mesh dimension that shards the input's rows, with Partial(sum) there (each
    rank's rows' term)."""
    world_size, ranks = world
    for (name, backend, attempt), result in ranks[0]["cases"].items():
        spec = worker.CASES[name]
        if spec["fn"] == "linear_cross_entropy":
            head = list(spec["weight_placements"])
            if "input" in spec and spec["mesh"] == "2d":
                head[0] = "Partial(sum)"
            expected = [spec.get("input"), head, head]
        else:
            expected = [spec["logits"]]
        for got, placements in zip(result["grad_placements"], expected):
            if placements is None:
                assert got is None
            else:
                assert [p.replace("dim=", "") for p in got] == placements, (name, got, placements)


def test_dtensor_then_process_group_over_the_same_group(world):
    """A plain process_group call after DTensor calls over the same group, the classes split another way,
    without reset_layouts: the value of one process on every rank (it hung: the DTensor call's cached
    layout let one rank skip the others' gather)."""
    for rank in world[1]:
        sharded, plain, expected = rank["mixed"]
        torch.testing.assert_close(sharded, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(plain, expected, rtol=1e-12, atol=1e-12)


def test_placements_fusedloss_cannot_serve_raise_clearly(world):
    errors = world[1][0]["errors"]
    assert errors["partial logits"][0] == "ValueError" and "Partial" in errors["partial logits"][1]
    assert errors["logits and process_group"][0] == "ValueError"
    assert errors["weight sharded on features"][0] == "ValueError"
    assert "rows" in errors["weight sharded on features"][1]
    for name, words in (("jsd partial logits", "Partial"), ("jsd plain teacher with grad", "DTensor"),
                        ("jsd plain student", "plain"), ("log_probs logits and process_group", "not both"),
                        ("linear_log_probs weight sharded on features", "rows")):
        assert errors[name][0] == "ValueError" and words in errors[name][1], (name, errors[name])
    for rank in world[1]:  # second order through the collectives: refused, never a wrong gradient
        second = {name: error for name, error in rank["errors"].items() if name.startswith("double backward")}
        assert len(second) == 5
        for name, error in second.items():
            assert error is not None and error[0] == "NotImplementedError" and "double backward" in error[1], (name,
                                                                                                             error)
    for rank in world[1]:  # an empty block of the classes: the same error on every rank, none waits
        empty = {name: error for name, error in rank["errors"].items() if name.startswith("empty ")}
        assert len(empty) == 6
        for name, error in empty.items():
            assert error[0] == "ValueError" and "at least one class" in error[1], (name, error)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("mesh", ["1d", "2d"])
@pytest.mark.parametrize("fn", ["cross_entropy", "linear_cross_entropy", "jsd_loss", "log_probs",
                                "linear_log_probs"])
def test_compile_aot_eager(world, fn, mesh, backend):
    """The same DTensor program compiled with fullgraph (aot_eager on the CPU) gives the eager values: on a
    1-D mesh (2 ranks), and on the 2 x 2 mesh with the rows on dp and a plain target (worker.COMPILED_2D)."""
    if (mesh == "1d") != (world[0] == 2) or mesh == "2d" and fn not in worker.COMPILED_2D:
        assert all((mesh, backend) not in rank["compiled"] or fn not in rank["compiled"][(mesh, backend)]
                   for rank in world[1])
        return
    for rank in world[1]:
        eager, compiled = rank["compiled"][(mesh, backend)][fn]
        assert not isinstance(compiled[0], str), compiled
        torch.testing.assert_close(compiled[0], eager[0], rtol=1e-12, atol=1e-12)
        for a, b in zip(compiled[1], eager[1]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("fn", ["cross_entropy", "log_probs"])
def test_compile_process_group_cold(world, fn, backend):
    """Plain tensors with process_group= compiled with fullgraph before any eager call (the first call's
    gather of block sizes happens inside the graph's ops): the eager values and gradients (2 ranks)."""
    if world[0] != 2:  # run by the 2-rank world only (compiling is the slow part)
        assert all("compiled_process_group" not in rank for rank in world[1])
        return
    for rank in world[1]:
        eager, compiled = rank["compiled_process_group"][backend][fn]
        assert not isinstance(compiled[0], str), compiled
        torch.testing.assert_close(compiled[0], eager[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(compiled[1], eager[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("name", list(worker.DIST_DTENSOR))
def test_distribution_matches_single_process(world, name, backend):
    """jsd_loss (a DTensor or plain teacher, top-k), log_probs with the entropy, linear_jsd_loss and
    linear_log_probs of DTensors sharded on the classes (1-D mesh; 2 x 2 with the rows on dp): the output's
    global value and placements, every gradient's global value, against the single process."""
    world_size, ranks = world
    spec = worker.DIST_DTENSOR[name]
    results = [r["dist_cases"].get((name, backend, 1)) for r in ranks]
    if results[0] is None:
        assert world_size not in spec["worlds"]
        return
    base = worker.DIST_CASES[spec["base"]]
    expected, expected_grads, _, _ = worker.dist_reference(base, list(worker.DIST_CASES).index(spec["base"]))
    reduced = base["kwargs"].get("reduction", "batchmean") != "none" and base["fn"].endswith("loss")
    rows_sharded = spec["mesh"] == "2d" and (not base["fn"].startswith("linear") or spec.get("dtensor_input"))
    if not rows_sharded:
        placements = ["Replicate()"] * (1 if spec["mesh"] == "1d" else 2)
    elif reduced:
        placements = ["Partial(sum)", "Replicate()"]
    else:
        stacked = base["kwargs"].get("with_entropy", False)
        placements = [f"Shard(dim={1 if stacked else 0})", "Replicate()"]
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["loss"], expected, rtol=1e-10, atol=1e-12,
                                   msg=lambda m: f"rank {rank} output: {m}")
        assert result["placements"] == placements, (result["placements"], placements)
        assert len(result["grads"]) == len(expected_grads)
        for i, (got, want) in enumerate(zip(result["grads"], expected_grads)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"rank {rank} gradient {i}: {m}")


@pytest.mark.parametrize("name", list(worker.DIST_DTENSOR))
def test_distribution_collectives_per_call(world, name):
    """fusedloss's own collectives: per forward those of the process_group path over the class group
    (tests/test_vocab_parallel.py), plus, over a row-sharded dp, one SUM of a scalar for a mean over
    counted rows; the backward none, but for the LM heads' inputs' gradients, summed over tp (one all_reduce
    of each input's elements)."""
    from test_vocab_parallel import distribution_collectives

    world_size, ranks = world
    spec = worker.DIST_DTENSOR[name]
    base = worker.DIST_CASES[spec["base"]]
    kwargs = base["kwargs"]
    for rank in ranks:
        result = rank["dist_cases"].get((name, "triton", 1))
        if result is None:
            continue
        per_row = distribution_collectives(base, 1)[0][2]  # MAX elements per row
        rows = result["forward"][0][2] // per_row
        expected = distribution_collectives(base, rows)
        reduction = kwargs.get("reduction", "batchmean") if base["fn"].endswith("loss") else "none"
        rows_sharded = spec["mesh"] == "2d" and (not base["fn"].startswith("linear") or spec.get("dtensor_input"))
        labels = kwargs.get("labels", True)
        if rows_sharded and (reduction == "mean" or reduction == "batchmean" and labels):
            expected.append(("all_reduce", "SUM", 1))
        assert result["forward"] == expected
        if base["fn"].startswith("linear"):
            hidden = [kwargs["h"]] + ([kwargs["h_teacher"]] if base["fn"] == "linear_jsd_loss" else [])
            assert sorted(result["backward"]) == sorted(("all_reduce", "SUM", rows * h) for h in hidden)
        else:
            assert result["backward"] == []


def test_training_matches_single_process(world):
    """DDP and FSDP2 (2 ranks), tensor parallelism on the LM head + FSDP2 (2 x 2): every step's loss and
    gradient norm equal to the single-process run's (the loss: the mean of the data-parallel shards')."""
    world_size, ranks = world
    expected = worker.train_reference(2)
    for kind, (losses, norms) in ranks[0]["training"].items():
        for rank in ranks:
            assert rank["training"][kind] == (losses, norms), f"{kind}: ranks disagree"
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected[0]), rtol=2e-6, atol=1e-6,
                                   msg=lambda m: f"{kind} losses: {m}")
        torch.testing.assert_close(torch.tensor(norms), torch.tensor(expected[1]), rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{kind} gradient norms: {m}")


def test_loss_parallel_side_by_side(world):
    """The facts README's side-by-side states of torch's loss_parallel(), measured here: three all-reduces
    of N floats per forward on the class group (max, sum of exp, target logit), label smoothing raising, and
    (4 ranks) a 2-D mesh with the rows on dp raising for 'mean' (ValueError with a plain target,
    NotImplementedError with a DTensor one), where fusedloss serves both (test_matches_single_process:
    ce_weight_smoothing_*, ce_*_2d)."""
    world_size, ranks = world
    seen = ranks[0]["loss_parallel"]
    assert seen["plain"][0] == [("all_reduce", "MAX", worker.N), ("all_reduce", "SUM", worker.N),
                             ("all_reduce", "SUM", worker.N)]
    smoothing = seen["label_smoothing"]
    assert smoothing[0] == "RuntimeError" and "mixed torch.Tensor and DTensor" in smoothing[1]
    if world_size == 4:
        assert seen["2d mesh"][0] == "ValueError" and "requires a DTensor" in seen["2d mesh"][1]
        assert seen["2d mesh, DTensor target"][0] == "NotImplementedError"
        assert "one-dimensional DeviceMesh" in seen["2d mesh, DTensor target"][1]
