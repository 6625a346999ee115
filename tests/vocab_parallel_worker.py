"""One rank of the vocab-parallel tests (tests/test_vocab_parallel.py), started by torch.multiprocessing.

It runs on CPU tensors over gloo, the kernels through Triton's interpreter (set before fusedloss is
imported), every case on both backends, twice each (the first call may gather the shard sizes), and
saves per case: the loss, this rank's gradients, and the collectives of each forward and backward.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before fusedloss.kernels is imported (Triton reads it then)

import datetime  # noqa: E402
import sys  # noqa: E402

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


# the distribution losses: logits (..., C) sharded on the last dimension, LM heads on their rows
DIST_CASES = {}


def dist_case(name, fn, n, c, lead=(), upstream="scalar", **kwargs):
    DIST_CASES[name] = dict(fn=fn, n=n, c=c, lead=lead, upstream=upstream, kwargs=kwargs)


dist_case("jsd", "jsd_loss", 11, 13, beta=0.4, temperature=1.3)
dist_case("jsd_forward_kl_teacher_grad_sum", "jsd_loss", 11, 13, beta=0.0, reduction="sum", teacher_grad=True)
dist_case("jsd_reverse_kl_none", "jsd_loss", 11, 13, beta=1.0, reduction="none", upstream="tensor")
dist_case("jsd_mean_no_labels_3d", "jsd_loss", 3, 13, lead=(5,), beta=0.7, reduction="mean", labels=False,
          teacher_grad=True)
dist_case("jsd_batchmean_no_labels_3d", "jsd_loss", 3, 13, lead=(4,), beta=0.5, labels=False)
dist_case("jsd_top_k", "jsd_loss", 11, 13, beta=0.0, temperature=1.5, top_k=4)
dist_case("jsd_first_rows_ignored", "jsd_loss", 11, 13, beta=0.5, ignore_first=6)  # a 2 x 2 mesh's dp rank 0: none
dist_case("log_probs", "log_probs", 11, 13, temperature=0.8, upstream="tensor")
dist_case("log_probs_entropy", "log_probs", 11, 13, with_entropy=True, upstream="tensor")
dist_case("linear_jsd_hard", "linear_jsd_loss", 9, 13, h=5, h_teacher=4, bias=True, beta=0.3, hard_weight=0.5,
          soft_weight=0.8, temperature=1.5, chunk=4)
dist_case("linear_jsd_none_teacher_grad", "linear_jsd_loss", 9, 13, h=5, h_teacher=4, beta=0.6, reduction="none",
          upstream="tensor", teacher_grad=True, chunk=3,
          logit_scale=1.7, teacher_logit_scale=0.6, softcap=1.5, teacher_softcap=2.5)  # heads scaled and capped
dist_case("linear_jsd_one_chunk_hard_t1", "linear_jsd_loss", 9, 13, h=5, h_teacher=5, beta=1.0, hard_weight=1.0,
          reduction="sum", teacher_grad=True)
dist_case("linear_log_probs", "linear_log_probs", 9, 13, h=5, bias=True, with_entropy=True, temperature=1.2, chunk=4,
          upstream="tensor", logit_scale=1.3, softcap=2.0)


def dist_inputs(spec, seed):
    """The whole problem (float64, the same on every rank): (sharded tensors, their class dimensions, the
    global arguments, upstream gradient, keyword arguments). Sharded: logits (..., C) on the last
    dimension, weights and biases on their rows; global: labels or tokens (some ignored), top-k, inputs."""
    g = torch.Generator().manual_seed(1000 + seed)
    n, c, lead = spec["n"], spec["c"], (spec["n"], *spec["lead"])
    kwargs = dict(spec["kwargs"])
    h, h_teacher = kwargs.pop("h", 0), kwargs.pop("h_teacher", 0)
    bias, teacher_grad = kwargs.pop("bias", False), kwargs.pop("teacher_grad", False)
    labels = torch.randint(0, c, lead, generator=g)
    labels[torch.rand(lead, generator=g) < 0.25] = -100
    labels[:kwargs.pop("ignore_first", 0)] = -100
    if not kwargs.pop("labels", True):
        labels = None
    top_k = kwargs.pop("top_k", 0)
    fn = spec["fn"]
    if fn in ("jsd_loss", "log_probs"):
        sharded = [3 * torch.randn(*lead, c, generator=g, dtype=torch.float64)]
        grad_of = [True]
        if fn == "jsd_loss" and not top_k:
            sharded.append(3 * torch.randn(*lead, c, generator=g, dtype=torch.float64))
            grad_of.append(teacher_grad)
        dims = [-1] * len(sharded)
        plain = []
        if top_k:
            values, classes = torch.randn(*lead, c, generator=g, dtype=torch.float64).log_softmax(-1).topk(top_k)
            plain = [values, classes]
        plain.append(labels)
    else:
        x = torch.randn(*lead, h, generator=g, dtype=torch.float64)
        heads = [(x, torch.randn(c, h, generator=g, dtype=torch.float64), True)]
        if fn == "linear_jsd_loss":
            heads.append((torch.randn(*lead, h_teacher, generator=g, dtype=torch.float64),
                          torch.randn(c, h_teacher, generator=g, dtype=torch.float64), teacher_grad))
        sharded, dims, grad_of, plain = [], [], [], []
        for hidden, weight, wants in heads:
            plain.append(hidden)  # replicated: each rank's gradient is its term
            sharded.append(weight)
            dims.append(0)
            grad_of.append(wants)
            if bias:
                sharded.append(torch.randn(c, generator=g, dtype=torch.float64))
                dims.append(0)
                grad_of.append(wants)
        plain.append(labels)
    out_lead = lead if fn != "log_probs" or not kwargs.get("with_entropy") else (2, *lead)
    if fn == "linear_log_probs" and kwargs.get("with_entropy"):
        out_lead = (2, *lead)
    upstream = (torch.rand(out_lead, generator=g, dtype=torch.float64) + 0.5 if spec["upstream"] == "tensor"
                else torch.tensor(0.37, dtype=torch.float64))
    return sharded, dims, grad_of, plain, upstream, kwargs


def dist_call(spec, sharded, plain, kwargs, group):
    """fusedloss's function on (this rank's or the whole) tensors: the output (two outputs stacked)."""
    import fusedloss.functional as FL

    kwargs = dict(kwargs)
    chunk = kwargs.pop("chunk", None)
    fn = spec["fn"]
    if fn == "jsd_loss":
        target = sharded[1] if len(sharded) > 1 else (plain[0], plain[1])
        out = FL.jsd_loss(sharded[0], target, plain[-1], process_group=group, **kwargs)
    elif fn == "log_probs":
        out = FL.log_probs(sharded[0], plain[-1], process_group=group, **kwargs)
    else:
        options = type("Options", (), {"batch_chunk_size": chunk})() if chunk else None
        per_head = len(sharded) // len(plain[:-1])  # weight (and bias) per head
        heads = [sharded[i * per_head:(i + 1) * per_head] for i in range(len(plain) - 1)]
        biases = [h[1] if per_head > 1 else None for h in heads]
        if fn == "linear_jsd_loss":
            out = FL.linear_jsd_loss(plain[0], heads[0][0], plain[1], heads[1][0], plain[2], bias=biases[0],
                                     teacher_bias=biases[1], options=options, process_group=group, **kwargs)
        else:
            out = FL.linear_log_probs(plain[0], heads[0][0], plain[1], bias=biases[0], options=options,
                                      process_group=group, **kwargs)
    return torch.stack(out) if isinstance(out, tuple) else out


def dist_leaves(sharded, plain, grad_of, fn):
    """The tensors that take gradients: the sharded ones asked for, and the LM heads' inputs (their
    gradient: each rank's term of the sum)."""
    sharded = [t.clone().requires_grad_(wants) for t, wants in zip(sharded, grad_of)]
    plain = list(plain)
    if fn.startswith("linear"):
        for i in range(len(plain) - 1):
            plain[i] = plain[i].clone().requires_grad_()
    return sharded, plain


def dist_run(spec, seed, group, rank, world_size, fusedloss, backend):
    full, dims, grad_of, plain, upstream, kwargs = dist_inputs(spec, seed)
    local = [t.tensor_split(world_size, d)[rank].contiguous() for t, d in zip(full, dims)]
    leaves, plain = dist_leaves(local, plain, grad_of, spec["fn"])
    with fusedloss.backend(backend):
        out = dist_call(spec, leaves, plain, kwargs, group)
    wrt = [t for t in leaves + plain if torch.is_tensor(t) and t.requires_grad]
    return out, wrt, upstream


def dist_reference(spec, seed):
    """The single-process result (fusedloss's torch ops, float64): (output, gradients of the whole tensors
    in dist_run's order)."""
    import fusedloss

    full, dims, grad_of, plain, upstream, kwargs = dist_inputs(spec, seed)
    leaves, plain = dist_leaves(full, plain, grad_of, spec["fn"])
    with fusedloss.backend("torch"):
        out = dist_call(spec, leaves, plain, kwargs, None)
    wrt = [t for t in leaves + plain if torch.is_tensor(t) and t.requires_grad]
    return out.detach(), [g.detach() for g in torch.autograd.grad(out, wrt, upstream)], dims, grad_of


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
    """Wraps dist.all_reduce, dist.all_gather and the functional all_reduce (fusedloss's eager formulas use
    it, for torch.compile): (name, op, elements) of every call."""

    def __init__(self):
        from torch.distributed import _functional_collectives as funcol

        self.calls = []
        self._all_reduce, self._all_gather, self._funcol = dist.all_reduce, dist.all_gather, funcol.all_reduce

        def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
            self.calls.append(("all_reduce", str(op).split(".")[-1], tensor.numel()))
            return self._all_reduce(tensor, op=op, group=group, async_op=async_op)

        def all_gather(tensors, tensor, group=None, async_op=False):
            self.calls.append(("all_gather", "", tensor.numel()))
            return self._all_gather(tensors, tensor, group=group, async_op=async_op)

        def functional_all_reduce(self_, reduceOp, group, tag=""):  # (torch's parameter names)
            if sys._getframe(1).f_globals.get("__name__", "").startswith("fusedloss"):  # not DTensor's own
                self.calls.append(("all_reduce", reduceOp.upper(), self_.numel()))
            return self._funcol(self_, reduceOp, group, tag)

        dist.all_reduce, dist.all_gather, funcol.all_reduce = all_reduce, all_gather, functional_all_reduce

    def take(self):
        calls, self.calls = self.calls, []
        return calls

    def restore(self):
        """torch's own functions again (a traced program must not see the log's list)."""
        from torch.distributed import _functional_collectives as funcol

        dist.all_reduce, dist.all_gather, funcol.all_reduce = self._all_reduce, self._all_gather, self._funcol


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
    for seed, (name, spec) in enumerate(DIST_CASES.items()):
        for backend in ("triton", "torch"):
            for attempt in range(2):
                out, wrt, upstream = dist_run(spec, seed, group, rank, world_size, fusedloss, backend)
                forward = log.take()
                grads = torch.autograd.grad(out, wrt, upstream)
                backward = log.take()
                results[(name, backend, attempt)] = dict(loss=out.detach(), grads=[g.detach() for g in grads],
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
