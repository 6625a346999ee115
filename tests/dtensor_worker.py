"""One rank of the DTensor and data-parallel tests (tests/test_dtensor.py), started by torch.multiprocessing.

Gloo, CPU tensors, the kernels through Triton's interpreter (set before fusedloss is imported). A world of
2 ranks runs the cases on a 1-D mesh and trains a tiny Llama under DDP and under FSDP2; a world of 4 runs
the cases on a 1-D mesh and on a 2 x 2 ("dp", "tp") mesh, and trains with tensor parallelism on the LM
head plus FSDP2. Each rank saves what it saw: the loss (its global value), its placements, the
gradients' global values, the collectives fusedloss made, the training curves.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before fusedloss.kernels is imported (Triton reads it then)

import datetime  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from vocab_parallel_worker import DIST_CASES, CollectiveLog, dist_call, dist_inputs, dist_reference  # noqa: E402

N, C, H, D = 8, 13, 5, 3  # rows, classes (uneven over 2 and 4 ranks: 7+6, 4+4+4+1), hidden, a spatial size
CASES = {}  # name -> dict(fn, mesh ("1d" | "2d"), placements, kwargs, ...)


def case(name, fn, mesh, worlds=(2, 4), **spec):
    """A case; ``worlds``: the world sizes that run it (a 2-D mesh needs 4 ranks; 4 ranks on a 1-D mesh
    shard C = 13 as 4 + 4 + 4 + 1, a few cases suffice there)."""
    CASES[name] = dict(fn=fn, mesh=mesh, worlds=(4,) if mesh == "2d" else worlds, **spec)


for mesh in ("1d", "2d"):
    rows = ["Shard(0)"] if mesh == "2d" else []
    case(f"ce_weight_smoothing_{mesh}", "cross_entropy", mesh, logits=rows + ["Shard(1)"],
         kwargs=dict(weight=True, label_smoothing=0.1, ignore_index=-100))
    case(f"ce_sum_z_softcap_{mesh}", "cross_entropy", mesh, worlds=(2,), logits=rows + ["Shard(1)"],
         kwargs=dict(reduction="sum", z_loss=1e-2, softcap=3.0))
    case(f"ce_none_{mesh}", "cross_entropy", mesh, worlds=(2,), logits=rows + ["Shard(1)"],
         kwargs=dict(reduction="none"))
    case(f"ce_probabilities_{mesh}", "cross_entropy", mesh, worlds=(2,), logits=rows + ["Shard(1)"], prob=True,
         kwargs=dict(label_smoothing=0.1))
    case(f"ce_dtensor_target_{mesh}", "cross_entropy", mesh, worlds=(2,), logits=rows + ["Shard(1)"],
         target_dtensor=True,
         kwargs=dict(weight=True))
    case(f"lce_plain_input_{mesh}", "linear_cross_entropy", mesh, weight_placements=(["Replicate()"] if rows else [])
         + ["Shard(0)"], kwargs=dict(bias=True, label_smoothing=0.1, chunk=3))
    case(f"lce_dtensor_input_{mesh}", "linear_cross_entropy", mesh, worlds=(2,), input=rows + ["Replicate()"],
         weight_placements=(["Replicate()"] if rows else []) + ["Shard(0)"], kwargs=dict(bias=True, weight=True))
    case(f"nll_{mesh}", "nll_loss", mesh, worlds=(2,), logits=rows + ["Shard(1)"], kwargs=dict(weight=True))
case("ce_spatial_1d", "cross_entropy", "1d", worlds=(2,), logits=["Shard(1)"], spatial=True,
     kwargs=dict(label_smoothing=0.1))
case("ce_spatial_rows_2d", "cross_entropy", "2d", logits=["Shard(2)", "Shard(1)"], spatial=True, kwargs={})
case("ce_all_ignored_on_a_rank_2d", "cross_entropy", "2d", logits=["Shard(0)", "Shard(1)"], ignore_rows=(4, 8),
     kwargs={})
case("ce_replicate_1d", "cross_entropy", "1d", worlds=(2,), logits=["Replicate()"], kwargs=dict(label_smoothing=0.1))
case("ce_loss_parallel_1d", "cross_entropy", "1d", worlds=(2,), logits=["Shard(1)"], loss_parallel=True,
     kwargs=dict(weight=True))
case("lce_none_1d", "linear_cross_entropy", "1d", worlds=(2,), weight_placements=["Shard(0)"],
     kwargs=dict(reduction="none"))
case("lce_all_ignored_2d", "linear_cross_entropy", "2d", input=["Shard(0)", "Replicate()"],
     weight_placements=["Replicate()", "Shard(0)"], ignore_rows=(0, N), kwargs={})  # NaN loss, zero gradients


# the distribution losses, on the problems of tests/vocab_parallel_worker.py's DIST_CASES (``base``): logits
# Shard(-1) on the class dimension (and Shard(0) on dp), LM heads Shard(0) on tp (Replicate on dp)
DIST_DTENSOR = {}


def dist_dtensor_case(name, base, mesh, worlds=(2, 4), **spec):
    DIST_DTENSOR[name] = dict(base=base, mesh=mesh, worlds=(4,) if mesh == "2d" else worlds, **spec)


for mesh in ("1d", "2d"):
    dist_dtensor_case(f"jsd_{mesh}", "jsd", mesh)
    dist_dtensor_case(f"jsd_top_k_{mesh}", "jsd_top_k", mesh, worlds=(2,))
    dist_dtensor_case(f"jsd_mean_3d_{mesh}", "jsd_mean_no_labels_3d", mesh, worlds=(2,))
    dist_dtensor_case(f"log_probs_entropy_{mesh}", "log_probs_entropy", mesh, worlds=(2,))
    dist_dtensor_case(f"linear_jsd_{mesh}", "linear_jsd_hard", mesh, worlds=(2,), dtensor_input=mesh == "2d")
    dist_dtensor_case(f"linear_log_probs_{mesh}", "linear_log_probs", mesh, worlds=(2,), dtensor_input=mesh == "2d")
dist_dtensor_case("jsd_plain_teacher_1d", "jsd", "1d", worlds=(2,), plain_teacher=True)
dist_dtensor_case("jsd_reverse_kl_none_2d", "jsd_reverse_kl_none", "2d")
dist_dtensor_case("jsd_batchmean_3d_2d", "jsd_batchmean_no_labels_3d", "2d")
dist_dtensor_case("jsd_dp_rank_all_ignored_2d", "jsd_first_rows_ignored", "2d")  # batchmean over 5 counted rows
dist_dtensor_case("jsd_mean_3d_rows_on_dim1_2d", "jsd_mean_no_labels_3d", "2d", row_dim=1)  # (3, 5, 13): 3 + 2
dist_dtensor_case("linear_jsd_none_teacher_grad_2d", "linear_jsd_none_teacher_grad", "2d", dtensor_input=True)


def dist_dtensor_call(spec, mesh):
    """The case's function on DTensors: (output (two outputs stacked), the leaves that take gradients, the
    upstream gradient)."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    base = DIST_CASES[spec["base"]]
    full, dims, grad_of, plain, upstream, kwargs = dist_inputs(base, list(DIST_CASES).index(spec["base"]))
    rows = [Shard(spec.get("row_dim", 0))] if spec["mesh"] == "2d" else []
    sharded = []
    for i, (tensor, dim, wants) in enumerate(zip(full, dims, grad_of)):
        if dim == 0:  # an LM head's weight or bias: its rows over tp, Replicate over dp
            placements = [Replicate()] * len(rows) + [Shard(0)]
        else:
            placements = rows + [Shard(tensor.dim() - 1)]
        if spec.get("plain_teacher") and i == 1:
            sharded.append(tensor.clone())
            continue
        sharded.append(distribute_tensor(tensor, mesh, placements).requires_grad_(wants))
    plain = list(plain)
    if base["fn"].startswith("linear"):
        for i in range(len(plain) - 1):
            x = distribute_tensor(plain[i], mesh, rows + [Replicate()]) if spec.get("dtensor_input") else plain[i].clone()
            plain[i] = x.requires_grad_()
    out = dist_call(base, sharded, plain, kwargs, None)
    leaves = [t for t in sharded + plain if torch.is_tensor(t) and t.requires_grad]
    return out, leaves, upstream


def run_dist_cases(meshes, world_size, log):
    from torch.distributed.tensor import DTensor

    import fusedloss

    results = {}
    for name, spec in DIST_DTENSOR.items():
        if world_size not in spec["worlds"]:
            continue
        for backend in ("triton", "torch"):
            for attempt in ((0, 1) if backend == "triton" else (1,)):
                with fusedloss.backend(backend):
                    out, leaves, upstream = dist_dtensor_call(spec, meshes[spec["mesh"]])
                forward = log.take()
                full = out.full_tensor()
                grads = torch.autograd.grad(full, leaves, upstream)
                backward = log.take()
                results[(name, backend, attempt)] = dict(
                    loss=full.detach(), placements=[repr(p) for p in out.placements],
                    grads=[(g.full_tensor() if isinstance(g, DTensor) else g).detach() for g in grads],
                    forward=forward, backward=backward)
    return results


def inputs(spec, seed):
    """The whole problem, the same on every rank (float64): (tensors, target, class weight, kwargs)."""
    g = torch.Generator().manual_seed(seed)
    kwargs = dict(spec["kwargs"])
    weight = torch.rand(C, generator=g, dtype=torch.float64) + 0.1 if kwargs.pop("weight", False) else None
    batch = (N, D) if spec.get("spatial") else (N,)
    if spec.get("prob"):
        target = torch.softmax(3 * torch.randn(N, C, generator=g, dtype=torch.float64), 1)
    else:
        target = torch.randint(0, C, batch, generator=g)
        target[torch.rand(batch, generator=g) < 0.25] = -100
        if "ignore_rows" in spec:
            target[slice(*spec["ignore_rows"])] = -100
    if spec["fn"] == "linear_cross_entropy":
        tensors = [torch.randn(N, H, generator=g, dtype=torch.float64), torch.randn(C, H, generator=g, dtype=torch.float64)]
        if kwargs.pop("bias", False):
            tensors.append(torch.randn(C, generator=g, dtype=torch.float64))
    else:
        shape = (N, C, D) if spec.get("spatial") else (N, C)
        logits = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
        tensors = [logits.log_softmax(1) if spec["fn"] == "nll_loss" else logits]
    return tensors, target, weight, kwargs


def _placements(names):
    """The case table's placements: "Shard(k)" or "Replicate()"."""
    from torch.distributed.tensor import Replicate, Shard

    return [Replicate() if name == "Replicate()" else Shard(int(name[len("Shard("):-1])) for name in names]


def call(spec, tensors, target, weight, kwargs, mesh):
    """The case's function on DTensors (and, where the case says, plain tensors); returns (loss, leaves)."""
    import fusedloss.functional as FL
    from torch.distributed.tensor import distribute_tensor

    kwargs = dict(kwargs)
    chunk = kwargs.pop("chunk", None)
    if spec["fn"] == "linear_cross_entropy":
        x = (distribute_tensor(tensors[0], mesh, _placements(spec["input"])) if "input" in spec
             else tensors[0].clone()).requires_grad_()
        w = distribute_tensor(tensors[1], mesh, _placements(spec["weight_placements"])).requires_grad_()
        leaves = [x, w]
        bias = None
        if len(tensors) > 2:
            bias = distribute_tensor(tensors[2], mesh, _placements(spec["weight_placements"])).requires_grad_()
            leaves.append(bias)
        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk) if chunk else None
        return FL.linear_cross_entropy(x, w, target, linear_bias=bias, weight=weight, options=options, **kwargs), leaves
    logits = distribute_tensor(tensors[0], mesh, _placements(spec["logits"])).requires_grad_()
    if spec.get("target_dtensor"):
        rows = [p if p != "Shard(1)" else "Replicate()" for p in spec["logits"]]
        target = distribute_tensor(target, mesh, _placements(rows))
    fn = getattr(FL, spec["fn"])
    if spec.get("loss_parallel"):
        from torch.distributed.tensor.parallel import loss_parallel

        with loss_parallel():
            return fn(logits, target, weight, **kwargs), [logits]
    return fn(logits, target, weight, **kwargs), [logits]


def reference(spec, seed):
    """The single-process result (fusedloss's eager path, float64): (loss, gradients of the whole tensors)."""
    import fusedloss
    import fusedloss.functional as FL

    tensors, target, weight, kwargs = inputs(spec, seed)
    kwargs.pop("chunk", None)
    leaves = [t.clone().requires_grad_() for t in tensors]
    with fusedloss.backend("torch"):
        if spec["fn"] == "linear_cross_entropy":
            loss = FL.linear_cross_entropy(leaves[0], leaves[1], target, linear_bias=leaves[2] if len(leaves) > 2
                                           else None, weight=weight, **kwargs)
        else:
            loss = getattr(FL, spec["fn"])(leaves[0], target, weight, **kwargs)
    grads = torch.autograd.grad(_scalar(loss), leaves)
    return loss.detach(), [g.detach() for g in grads]


def _scalar(loss):
    if loss.dim() == 0:
        return loss
    return (loss * torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view(loss.shape)).sum()


def run_cases(meshes, world_size, log):
    """Every case of this world on both backends; the Triton path twice (the first call of a new shard
    layout may gather the shard sizes: the second shows the steady collectives)."""
    from torch.distributed.tensor import DTensor

    import fusedloss

    results = {}
    for seed, (name, spec) in enumerate(CASES.items()):
        if world_size not in spec["worlds"]:
            continue
        tensors, target, weight, kwargs = inputs(spec, seed)
        for backend in ("triton", "torch"):
            for attempt in ((0, 1) if backend == "triton" else (1,)):
                with fusedloss.backend(backend):
                    loss, leaves = call(spec, tensors, target, weight, kwargs, meshes[spec["mesh"]])
                forward = log.take()
                full = loss.full_tensor()
                grads = torch.autograd.grad(_scalar(full), leaves)
                backward = log.take()
                results[(name, backend, attempt)] = dict(
                    loss=full.detach(), placements=[repr(p) for p in loss.placements],
                    grads=[(g.full_tensor() if isinstance(g, DTensor) else g).detach() for g in grads],
                    grad_placements=[[repr(p) for p in g.placements] if isinstance(g, DTensor) else None
                                     for g in grads],
                    forward=forward, backward=backward)
    return results


def run_dtensor_then_process_group(mesh):
    """A DTensor call, then a plain process_group call over the same group and classes split another way
    (4 ranks: torch.chunk's 4 + 4 + 4 + 1, tensor_split's 4 + 3 + 3 + 3), no reset_layouts between: (the
    two losses, torch's). The DTensor call's layouts must not answer the plain call's lookup: a rank that
    found one would skip the gather of block sizes the others wait in."""
    import fusedloss
    import fusedloss.functional as FL
    import torch.nn.functional as F
    from torch.distributed.tensor import Shard, distribute_tensor

    x = torch.randn(N, C, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    y = torch.arange(N) % C
    with fusedloss.backend("triton"):
        sharded = FL.cross_entropy(distribute_tensor(x, mesh, [Shard(1)]), y).full_tensor()
        block = torch.tensor_split(x, mesh.size(), 1)[mesh.get_local_rank()]
        plain = FL.cross_entropy(block, y, process_group=mesh.get_group())
    return sharded, plain, F.cross_entropy(x, y)


def run_errors(mesh):
    """Placements fusedloss cannot serve: a clear error, never a crash; on every rank at once where a rank's
    block of the classes is empty (none left waiting in a collective)."""
    import fusedloss
    import fusedloss.functional as FL
    from fusedloss.ops import _vocab_parallel
    from torch.distributed.tensor import DTensor, Partial, Shard, distribute_tensor

    x = torch.randn(N, C, dtype=torch.float64)
    y = torch.randint(0, C, (N,))
    errors = {}
    partial = DTensor.from_local(x, mesh, [Partial()], run_check=False)
    world = mesh.size()
    hidden = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    head = torch.randn(C, H, dtype=torch.float64)
    few = torch.randn(N, world - 1, dtype=torch.float64)  # blocks of 1 class (torch.chunk's, tensor_split's)
    zeros = torch.zeros(N, dtype=torch.long)
    block = torch.tensor_split(few, world, 1)[dist.get_rank()]  # the last rank's: empty

    def double_backward(backend, fn, sharded=True):
        block_of_x = torch.tensor_split(x, world, 1)[dist.get_rank()]
        leaf = (distribute_tensor(x, mesh, [Shard(1)]) if sharded else block_of_x.clone()).requires_grad_()
        with fusedloss.backend(backend):
            loss = fn(leaf, y) if sharded else fn(leaf, y, process_group=dist.group.WORLD)
        total = loss.full_tensor() if sharded else loss
        grad, = torch.autograd.grad(total.sum(), leaf, create_graph=True)  # a gradient penalty's first step
        return grad

    def plain_block(backend, fn):
        _vocab_parallel.reset_layouts()  # the blocks are new on every rank: each joins the gather of sizes
        with fusedloss.backend(backend):
            return fn(block, zeros, process_group=dist.group.WORLD)
    for name, call in (("partial logits", lambda: FL.cross_entropy(partial, y)),
                       ("logits and process_group", lambda: FL.cross_entropy(
                           distribute_tensor(x, mesh, [Shard(1)]), y, process_group=dist.group.WORLD)),
                       ("weight sharded on features", lambda: FL.linear_cross_entropy(
                           torch.randn(N, H, dtype=torch.float64), distribute_tensor(
                               torch.randn(C, H, dtype=torch.float64), mesh, [Shard(1)]), y)),
                       ("jsd partial logits", lambda: FL.jsd_loss(partial, distribute_tensor(x, mesh, [Shard(1)]))),
                       ("jsd plain teacher with grad", lambda: FL.jsd_loss(
                           distribute_tensor(x, mesh, [Shard(1)]), x.clone().requires_grad_())),
                       ("jsd plain student", lambda: FL.jsd_loss(x, distribute_tensor(x, mesh, [Shard(1)]))),
                       ("log_probs logits and process_group", lambda: FL.log_probs(
                           distribute_tensor(x, mesh, [Shard(1)]), y, process_group=dist.group.WORLD)),
                       ("linear_log_probs weight sharded on features", lambda: FL.linear_log_probs(
                           torch.randn(N, H, dtype=torch.float64), distribute_tensor(
                               torch.randn(C, H, dtype=torch.float64), mesh, [Shard(1)]), y)),
                       ("empty shard cross_entropy", lambda: FL.cross_entropy(
                           distribute_tensor(few, mesh, [Shard(1)]), zeros)),
                       ("empty shard jsd_loss", lambda: FL.jsd_loss(
                           distribute_tensor(few, mesh, [Shard(1)]), distribute_tensor(few, mesh, [Shard(1)]))),
                       ("empty shard linear_cross_entropy", lambda: FL.linear_cross_entropy(
                           torch.randn(N, H, dtype=torch.float64), distribute_tensor(
                               torch.randn(world - 1, H, dtype=torch.float64), mesh, [Shard(0)]), zeros)),
                       ("empty block process_group cross_entropy torch", lambda: plain_block("torch", FL.cross_entropy)),
                       ("empty block process_group cross_entropy triton",
                        lambda: plain_block("triton", FL.cross_entropy)),
                       ("empty block process_group log_probs triton", lambda: plain_block("triton", FL.log_probs)),
                       ("double backward cross_entropy triton", lambda: double_backward("triton", FL.cross_entropy)),
                       ("double backward cross_entropy torch", lambda: double_backward("torch", FL.cross_entropy)),
                       ("double backward log_probs process_group triton",
                        lambda: double_backward("triton", FL.log_probs, sharded=False)),
                       ("double backward jsd_loss torch",
                        lambda: double_backward("torch", lambda a, t: FL.jsd_loss(a, a.detach() * 0.5, t))),
                       ("double backward linear_cross_entropy torch", lambda: torch.autograd.grad(
                           FL.linear_cross_entropy(hidden, distribute_tensor(head, mesh, [Shard(0)]), y).full_tensor(),
                           hidden, create_graph=True))):
        try:
            call()
            errors[name] = None
        except Exception as error:  # noqa: BLE001  (recorded: the test checks type and message)
            errors[name] = (type(error).__name__, str(error))
    return errors


def run_loss_parallel(meshes):
    """torch's own answer, for README's side-by-side: cross_entropy of class-sharded DTensor logits inside
    ``loss_parallel()`` (torch's functions, not fusedloss's): its all-reduces per forward (every
    functional all_reduce, DTensor's included), whether it takes label smoothing, a 2-D mesh, an empty
    Each: the collectives, or the exception's type and message. (An empty shard, 6 classes over 4 ranks,
    is not run: torch's ranks then disagree on the collectives and the group hangs.)"""
    from torch.distributed import _functional_collectives as funcol
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    calls, original = [], funcol.all_reduce

    def counting(self, reduceOp, group, tag=""):  # (torch's parameter names)
        calls.append(("all_reduce", reduceOp.upper(), self.numel()))
        return original(self, reduceOp, group, tag)

    x = torch.randn(N, C, dtype=torch.float64)
    y = torch.randint(0, C, (N,))
    cases = {"plain": (meshes["1d"], x, [Shard(1)], y, {}),
             "label_smoothing": (meshes["1d"], x, [Shard(1)], y, dict(label_smoothing=0.1))}
    if "2d" in meshes:
        from torch.distributed.tensor import Replicate

        cases["2d mesh"] = (meshes["2d"], x, [Shard(0), Shard(1)], y, {})
        cases["2d mesh, DTensor target"] = (meshes["2d"], x, [Shard(0), Shard(1)],
                                            distribute_tensor(y, meshes["2d"], [Shard(0), Replicate()]), {})
    out = {}
    funcol.all_reduce = counting
    try:
        for name, (mesh, logits, placements, target, kwargs) in cases.items():
            calls.clear()
            try:
                with loss_parallel():
                    loss = torch.nn.functional.cross_entropy(distribute_tensor(logits, mesh, placements), target,
                                                             **kwargs)
                    value = loss.full_tensor()
                out[name] = (list(calls), float(value), repr(loss.placements))
            except Exception as error:  # noqa: BLE001  (recorded: the test checks it)
                out[name] = (type(error).__name__, str(error)[:300])
    finally:
        funcol.all_reduce = original
    return out


COMPILED_2D = ("cross_entropy", "linear_cross_entropy", "jsd_loss")  # on the 2 x 2 mesh too


def run_compiled(mesh, backend):
    """cross_entropy, linear_cross_entropy, jsd_loss, log_probs, linear_log_probs of DTensors under
    torch.compile(fullgraph=True, aot_eager): the values and gradients of the eager calls. On a 2 x 2
    mesh (COMPILED_2D) the rows Shard(0) on dp with plain (global) targets: a 'mean' over the rows of
    every dp rank, the targets sliced in the graph."""
    import fusedloss
    import fusedloss.functional as FL
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    torch.manual_seed(0)
    x = torch.randn(N, C, dtype=torch.float64)
    y = torch.randint(0, C, (N,))
    y[:2] = -100
    hidden = torch.randn(N, H, dtype=torch.float64)
    w = torch.randn(C, H, dtype=torch.float64)
    rows = [Shard(0)] * (mesh.ndim - 1)
    logits, replicate, head = rows + [Shard(1)], rows + [Replicate()], [Replicate()] * len(rows) + [Shard(0)]
    out = {}
    for name, fn, make in (
            ("cross_entropy", lambda a, t: FL.cross_entropy(a, t, label_smoothing=0.1),
             lambda: [distribute_tensor(x, mesh, logits).requires_grad_()]),
            ("linear_cross_entropy", lambda h, weight, t: FL.linear_cross_entropy(h, weight, t),
             lambda: [distribute_tensor(hidden, mesh, replicate).requires_grad_(),
                      distribute_tensor(w, mesh, head).requires_grad_()]),
            ("jsd_loss", lambda a, b, t: FL.jsd_loss(a, b, t, beta=0.3),
             lambda: [distribute_tensor(x, mesh, logits).requires_grad_(),
                      distribute_tensor(x.flip(0), mesh, logits).requires_grad_()]),
            ("log_probs", lambda a, t: FL.log_probs(a, t, with_entropy=True),  # two outputs, as they come
             lambda: [distribute_tensor(x, mesh, logits).requires_grad_()]),
            ("linear_log_probs", lambda h, weight, t: FL.linear_log_probs(h, weight, t, with_entropy=True),
             lambda: [distribute_tensor(hidden, mesh, replicate).requires_grad_(),
                      distribute_tensor(w, mesh, head).requires_grad_()])):
        if rows and name not in COMPILED_2D:
            continue
        values = []
        for compiled in (False, True):
            torch._dynamo.reset()
            if compiled:  # cold: traced before this process knows the group (registered after the graph runs)
                from fusedloss.ops import _vocab_parallel

                _vocab_parallel._groups.clear()
                _vocab_parallel.reset_layouts()
            call = torch.compile(fn, fullgraph=True, backend="aot_eager") if compiled else fn
            leaves = make()
            try:
                with fusedloss.backend(backend):
                    outputs = call(*leaves, y)
                full = [o.full_tensor() for o in (outputs if isinstance(outputs, tuple) else (outputs,))]
                grads = torch.autograd.grad(sum(f.sum() for f in full), leaves)
                values.append((torch.cat([f.reshape(-1) for f in full]).detach(), [g.full_tensor() for g in grads]))
            except Exception as error:  # noqa: BLE001  (recorded for the test's message)
                values.append((type(error).__name__, str(error)[:2000]))
        out[name] = values
    return out


def run_compiled_process_group(mesh, backend):
    """cross_entropy and log_probs with plain tensors and ``process_group=`` under torch.compile(fullgraph=True,
    aot_eager), cold (no layout cached, the group unregistered): {name: (eager, compiled)} values and
    gradients, or the exception."""
    import fusedloss
    import fusedloss.functional as FL
    from fusedloss.ops import _vocab_parallel

    group = mesh.get_group()
    x = torch.randn(N, C, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(N) % C
    y[1] = -100
    block = torch.tensor_split(x, mesh.size(), 1)[mesh.get_local_rank()]
    out = {}
    for name, fn in (("cross_entropy", lambda a: FL.cross_entropy(a, y, label_smoothing=0.1, process_group=group)),
                     ("log_probs", lambda a: FL.log_probs(a, y, with_entropy=True, process_group=group))):
        values = []
        for compiled in (False, True):
            torch._dynamo.reset()
            _vocab_parallel._groups.clear()
            _vocab_parallel.reset_layouts()
            leaf = block.clone().requires_grad_()
            try:
                with fusedloss.backend(backend):
                    outputs = (torch.compile(fn, fullgraph=True, backend="aot_eager") if compiled else fn)(leaf)
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                grad, = torch.autograd.grad(sum(o.sum() for o in outputs), [leaf])
                values.append((torch.cat([o.reshape(-1) for o in outputs]).detach(), grad))
            except Exception as error:  # noqa: BLE001  (recorded for the test's message)
                values.append((type(error).__name__, str(error)[:2000]))
        out[name] = values
    return out


# ------------------------------------------------------------------ training a tiny Llama

VOCAB, STEPS = 1031, 3  # uneven over 2 tensor-parallel ranks (516 + 515)


def tiny_llama(seed=0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def batches(step, parts):
    """The step's batch (4 sequences of 9 tokens, some labels -100), split in ``parts`` along the batch."""
    g = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(0, VOCAB, (4, 9), generator=g)
    labels = ids.clone()
    labels[0, -3:] = -100
    labels[3, :2] = -100
    return list(zip(ids.chunk(parts), labels.chunk(parts)))


def train(kind, rank, world_size):
    """STEPS optimizer steps of the tiny Llama with use_fused_linear_cross_entropy on the triton backend:
    (losses, gradient norms) per step, the loss averaged over the data-parallel ranks as the engines
    average the gradients."""
    import fusedloss
    from fusedloss.integrations import transformers as hf
    from torch.distributed.device_mesh import init_device_mesh

    model = tiny_llama()
    hf.use_fused_linear_cross_entropy(model)
    model.train()
    if kind == "ddp":
        dp_rank, dp_size = rank, world_size
        engine = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        if kind == "tp_fsdp":
            from torch.distributed.tensor import Shard
            from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

            mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
            parallelize_module(model, mesh["tp"], {"lm_head": ColwiseParallel(output_layouts=Shard(-1))})
            dp_mesh = mesh["dp"]
            dp_rank, dp_size = mesh.get_local_rank("dp"), 2
        else:
            dp_mesh = init_device_mesh("cpu", (world_size,))
            dp_rank, dp_size = rank, world_size
        for layer in model.model.layers:
            fully_shard(layer, mesh=dp_mesh)
        fully_shard(model, mesh=dp_mesh)
        engine = model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses, norms = [], []
    for step in range(STEPS):
        ids, labels = batches(step, dp_size)[dp_rank]
        optimizer.zero_grad()
        with fusedloss.backend("triton"):
            loss = engine(input_ids=ids, labels=labels).loss
        loss.backward()
        value = loss.full_tensor() if hasattr(loss, "full_tensor") else loss
        total = value.detach().clone()
        dist.all_reduce(total)
        losses.append(float(total) / world_size)  # every rank of a data-parallel group holds its own loss
        squares = sum(float((g.full_tensor() if hasattr(g, "full_tensor") else g).double().pow(2).sum())
                      for g in (p.grad for p in model.parameters()) if g is not None)
        norms.append(squares ** 0.5)
        optimizer.step()
    return losses, norms


def train_reference(parts):
    """The single-process run: the same steps, the loss the mean of the data-parallel shards' losses."""
    from fusedloss.integrations import transformers as hf

    model = tiny_llama()
    hf.use_fused_linear_cross_entropy(model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses, norms = [], []
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels in batches(step, parts)) / parts
        loss.backward()
        losses.append(float(loss))
        norms.append(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None) ** 0.5)
        optimizer.step()
    return losses, norms


def run(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=300))
    from torch.distributed.device_mesh import init_device_mesh

    meshes = {"1d": init_device_mesh("cpu", (world_size,))}
    if world_size == 4:
        meshes["2d"] = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    log = CollectiveLog()
    results = {"cases": run_cases(meshes, world_size, log), "dist_cases": run_dist_cases(meshes, world_size, log)}
    log.restore()
    results["mixed"] = run_dtensor_then_process_group(meshes["1d"])
    results["errors"] = run_errors(meshes["1d"])
    results["loss_parallel"] = run_loss_parallel(meshes)
    compiled_mesh = "1d" if world_size == 2 else "2d"  # one mesh per world: compiling is the slow part here
    results["compiled"] = {(compiled_mesh, backend): run_compiled(meshes[compiled_mesh], backend)
                           for backend in ("triton", "torch")}
    if world_size == 2:
        results["compiled_process_group"] = {backend: run_compiled_process_group(meshes["1d"], backend)
                                             for backend in ("triton", "torch")}
    kinds = ("ddp", "fsdp") if world_size == 2 else ("tp_fsdp",)
    results["training"] = {kind: train(kind, rank, world_size) for kind in kinds}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
