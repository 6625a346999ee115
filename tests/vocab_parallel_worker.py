"""One rank of the vocab-parallel tests (tests/test_vocab_parallel.py), started by torch.multiprocessing.

It runs on CPU tensors over gloo, the kernels through Triton's interpreter (set before fusedloss is
imported), every case on both backends, twice each (the first call may gather the shard sizes), and
saves per case: the loss, this rank's gradients, and the collectives of each forward and backward.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before fusedloss.kernels is imported (Triton reads it then)

import datetime  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

CASES = {}  # name -> dict(fn=..., n=..., c=..., h=..., kwargs=...)


def case(name, fn, n, c, h=0, d=0, prob=False, upstream="scalar", **kwargs):
    CASES[name] = dict(fn=fn, n=n, c=c, h=h, d=d, prob=prob, upstream=upstream, kwargs=kwargs)


# C = 13 over 2 ranks: 7 + 6 classes; over 3: 5 + 4 + 4 (torch.tensor_split), uneven either way
case("ce", "cross_entropy", 11, 13)
case("ce_sum_weight", "cross_entropy", 11, 13, reduction="sum", weight=True)
case("ce_none_smoothing", "cross_entropy", 11, 13, reduction="none", label_smoothing=0.1, upstream="tensor")
case("ce_weight_smoothing_ignore", "cross_entropy", 11, 13, weight=True, label_smoothing=0.2, ignore_index=4)
case("ce_probability_smoothing", "cross_entropy", 11, 13, prob=True, label_smoothing=0.1, weight=True)
case("ce_z_loss_softcap", "cross_entropy", 11, 13, z_loss=1e-2, softcap=2.0)
case("ce_spatial", "cross_entropy", 3, 13, d=4, label_smoothing=0.1)
case("ce_grad_in_forward", "cross_entropy", 11, 13, grad_in_forward=True, upstream="tensor", reduction="none")
case("lce", "linear_cross_entropy", 9, 13, h=5, bias=True)
case("lce_chunks_smoothing", "linear_cross_entropy", 9, 13, h=5, bias=True, label_smoothing=0.1, chunk=4)
case("lce_none_chunks", "linear_cross_entropy", 9, 13, h=5, reduction="none", upstream="tensor", chunk=2)
case("lce_weight_z_softcap", "linear_cross_entropy", 9, 13, h=5, weight=True, z_loss=1e-2, softcap=3.0, chunk=4)


def inputs(spec, seed):
    """The whole problem, the same on every rank (float64): logits (or input, linear weight, bias),
    target (global class indices, some ignored), class weight."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, d = spec["n"], spec["c"], spec["h"], spec["d"]
    kwargs = dict(spec["kwargs"])
    weight = torch.rand(c, generator=g, dtype=torch.float64) + 0.1 if kwargs.pop("weight", False) else None
    ignore = kwargs.get("ignore_index", -100)
    batch = (n, d) if d else (n,)
    if spec["prob"]:
        target = torch.softmax(3 * torch.randn(n, c, generator=g, dtype=torch.float64), 1)
    else:
        target = torch.randint(0, c, batch, generator=g)
        target[torch.rand(batch, generator=g) < 0.25] = ignore
    if spec["fn"] == "cross_entropy":
        tensors = [3 * torch.randn(n, c, *((d,) if d else ()), generator=g, dtype=torch.float64)]
    else:
        tensors = [torch.randn(n, h, generator=g, dtype=torch.float64),
                   torch.randn(c, h, generator=g, dtype=torch.float64)]
        if kwargs.pop("bias", False):
            tensors.append(torch.randn(c, generator=g, dtype=torch.float64))
    upstream = None
    if spec["upstream"] == "tensor":
        upstream = torch.rand(target.shape[:1] + target.shape[2:] if spec["prob"] else target.shape, generator=g,
                              dtype=torch.float64) + 0.5
    return tensors, target, weight, upstream, kwargs


def shard(spec, tensors, target, world_size, rank):
    """This rank's block of the classes (dim 1 of the logits, dim 0 of the linear weight and bias)."""
    dim = 1 if spec["fn"] == "cross_entropy" else 0
    out = [tensors[0].tensor_split(world_size, dim)[rank]] if dim == 1 else \
        [tensors[0]] + [t.tensor_split(world_size, 0)[rank] for t in tensors[1:]]
    if spec["prob"]:
        target = target.tensor_split(world_size, 1)[rank]
    return [t.contiguous() for t in out], target


def call(fusedloss, spec, tensors, target, weight, kwargs, group):
    import fusedloss.functional as FL

    kwargs = dict(kwargs)
    if spec["fn"] == "cross_entropy":
        return FL.cross_entropy(tensors[0], target, weight, process_group=group, **kwargs)
    chunk = kwargs.pop("chunk", None)
    options = type("Options", (), {"batch_chunk_size": chunk})() if chunk else None
    return FL.linear_cross_entropy(tensors[0], tensors[1], target, linear_bias=tensors[2] if len(tensors) > 2 else None,
                                   weight=weight, process_group=group, options=options, **kwargs)


class CollectiveLog:
    """Wraps dist.all_reduce and dist.all_gather: (name, op, elements) of every call."""

    def __init__(self):
        self.calls = []
        self._all_reduce, self._all_gather = dist.all_reduce, dist.all_gather

        def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
            self.calls.append(("all_reduce", str(op).split(".")[-1], tensor.numel()))
            return self._all_reduce(tensor, op=op, group=group, async_op=async_op)

        def all_gather(tensors, tensor, group=None, async_op=False):
            self.calls.append(("all_gather", "", tensor.numel()))
            return self._all_gather(tensors, tensor, group=group, async_op=async_op)

        dist.all_reduce, dist.all_gather = all_reduce, all_gather

    def take(self):
        calls, self.calls = self.calls, []
        return calls


def run(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    import fusedloss

    group = dist.new_group(list(range(world_size)))  # a group of its own (not only the default one)
    log = CollectiveLog()
    results = {}
    for seed, (name, spec) in enumerate(CASES.items()):
        full, target, weight, upstream, kwargs = inputs(spec, seed)
        local, local_target = shard(spec, full, target, world_size, rank)
        for backend in ("triton", "torch"):
            for attempt in range(2):
                leaves = [t.clone().requires_grad_() for t in local]
                with fusedloss.backend(backend):
                    loss = call(fusedloss, spec, leaves, local_target, weight, kwargs, group)
                forward = log.take()
                grads = torch.autograd.grad(loss, leaves, upstream if upstream is not None else torch.tensor(0.37,
                                                                                                            dtype=loss.dtype))
                backward = log.take()
                results[(name, backend, attempt)] = dict(loss=loss.detach(), grads=[g.detach() for g in grads],
                                                         forward=forward, backward=backward)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def reference(spec, seed):
    """The single-process result of case ``spec``: (loss, gradients of the whole tensors), fusedloss's
    eager path (torch's functions plus the extras) in float64."""
    import fusedloss
    import fusedloss.functional as FL

    full, target, weight, upstream, kwargs = inputs(spec, seed)
    kwargs.pop("grad_in_forward", None)
    kwargs.pop("chunk", None)
    leaves = [t.clone().requires_grad_() for t in full]
    with fusedloss.backend("torch"):
        if spec["fn"] == "cross_entropy":
            loss = FL.cross_entropy(leaves[0], target, weight, **kwargs)
        else:
            loss = FL.linear_cross_entropy(leaves[0], leaves[1], target,
                                           linear_bias=leaves[2] if len(leaves) > 2 else None, weight=weight, **kwargs)
    grads = torch.autograd.grad(loss, leaves, upstream if upstream is not None else torch.tensor(0.37,
                                                                                                dtype=loss.dtype))
    return loss.detach(), [g.detach() for g in grads]
