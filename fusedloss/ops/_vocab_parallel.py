"""Vocabulary-parallel cross entropy over torch.distributed: the shard layout and the two collectives.

Rank r of a process group holds the r-th contiguous block of the classes (of the logits, or of a linear
weight's rows): blocks may differ in size, as ``torch.tensor_split`` makes them. Targets and class
weights are global (every rank has all of them). Every rank returns the global loss and the gradient of
its own block.

Collectives per call (fused and eager paths alike):
  - one ``all_reduce(MAX)`` of N floats: the row maxima;
  - one ``all_reduce(SUM)`` of 2 x N floats (sum of exp, target logit), 4 x N with label smoothing or
    probability targets (plus the two per-class sums): Megatron's two sums packed in one;
  - the first call for a (group, local class count) also does one ``all_gather`` of one integer per rank
    (the block sizes, hence this rank's offset), then cached. Every rank of the group must then meet a new
    local size in the same call: if only some ranks' block sizes change between calls (re-sharding a
    vocabulary), call ``reset_layouts()`` on every rank first, or the ranks disagree on whether to gather.
  The backward needs no collective. Nothing syncs with the host after that first call.
"""
import torch
import torch.distributed as dist

_groups = {}  # group name -> ProcessGroup
_layouts = {}  # (group name, local class count) -> (offset, total classes)


_DECLARED = "|dtensor"  # suffix of the names under which DTensor calls declare their layouts


def group_name(group):
    """The name the registered ops carry for ``group`` (a ProcessGroup: they take no objects; a name
    ``declare_layout`` gave is one already)."""
    if isinstance(group, str):
        return group
    name = group.group_name
    if _groups.get(name) is not group:
        _groups[name] = group  # one dict store (atomic): no lock, which torch.compile could not trace
    return name


def group_of(name):
    """The ProcessGroup of a registered name; one this process has not registered yet (a program compiled
    before any eager call: torch.compile applies the registration after the graph runs) from torch's own
    registry of group names (the one its functional collectives use)."""
    group = _groups.get(name)
    if group is None:
        from torch.distributed.distributed_c10d import _resolve_process_group

        group = _groups[name] = _resolve_process_group(name.removesuffix(_DECLARED))
    return group


def reset_layouts():
    """Forget every cached shard layout (call on every rank of a group whose shards changed size between
    plain ``process_group`` calls: the cache is keyed by the group and the local size, and ranks that
    found a stale entry would not join the others' gather). DTensor calls need none: their layouts live
    under names of their own (``declare_layout``)."""
    _layouts.clear()


def declare_layout(group, n_local, offset, n_total):
    """The name under which a DTensor call reaches ``group``, with the layout of its block recorded there
    (known without communication: the DTensor's global shape and placement give it), so that
    ``shard_layout`` gathers nothing for it. The name is the group's own plus a suffix: a plain
    ``process_group`` call over the same group (another split of the classes, tensor_split's) never finds
    these layouts, or a rank that found one would skip the gather the others wait in."""
    name = group.group_name + _DECLARED
    if _groups.get(name) is not group:
        _groups[name] = group
    _layouts[(name, n_local)] = (offset, n_total)
    return name


def shard_layout(name, n_local, device):
    """(offset, total classes) of this rank's block of ``n_local`` classes in group ``name``: one
    all_gather of the block sizes the first time, cached after."""
    key = (name, n_local)
    layout = _layouts.get(key)
    if layout is None:
        group = group_of(name)
        mine = torch.tensor([n_local], dtype=torch.int64, device=device)
        sizes = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(sizes, mine, group=group)
        sizes = [int(s) for s in torch.cat(sizes).tolist()]
        if 0 in sizes:  # every rank has the sizes: all raise, none is left waiting in a collective
            raise ValueError(f"fusedloss: vocabulary parallel needs at least one class on every rank of the group; "
                             f"the blocks hold {sizes} classes")
        rank = dist.get_rank(group)
        layout = _layouts[key] = (sum(sizes[:rank]), sum(sizes))
    return layout


def require_classes(process_group, n_local, device):
    """Called first by a call with ``process_group``: a rank whose block holds no classes joins the other
    ranks' first-call gather of the block sizes (``shard_layout``, the first collective of their call),
    where every rank sees the empty block and raises the same error (validation that raised on that rank
    alone would leave the others waiting)."""
    if process_group is not None and n_local == 0:
        shard_layout(group_name(process_group), 0, device)


def check_class_weight(weight, n_total):
    """torch's class-weight size check, against the classes of every shard."""
    if weight is not None and weight.numel() != n_total:
        raise RuntimeError(f"weight tensor should be defined either for all {n_total} classes or no classes "
                           f"but got weight tensor of shape: [{', '.join(map(str, weight.shape))}]")


def combine_statistics(stats, name, per_class_sums):
    """Turn each rank's row statistics (a (5, R) float tensor [m | d | x_y | sum_a | sum_ad], d and
    sum_ad relative to the rank's own max m) into the whole vocabulary's, in place: MAX of m, then d and
    sum_ad moved to that max, then one SUM of [d, x_y] (and [sum_a, sum_ad] with ``per_class_sums``)."""
    group = group_of(name)
    local_max = stats[0].clone()
    dist.all_reduce(stats[0], op=dist.ReduceOp.MAX, group=group)
    shift = torch.where(local_max == stats[0], 0.0, local_max - stats[0])  # -inf - -inf: 0
    stats[1].mul_(shift.exp())
    if per_class_sums:
        stats[4].add_(torch.where(stats[3] != 0, shift * stats[3], 0.0))
    dist.all_reduce(stats[1:5] if per_class_sums else stats[1:3], op=dist.ReduceOp.SUM, group=group)
    return stats


def all_reduce(tensor, op, group):
    """The all-reduce (``op`` "sum" or "max") of ``tensor`` over ``group``, out of place, as a functional
    collective: torch.compile traces it (Dynamo does not trace dist.all_reduce with ReduceOp.MAX);
    eagerly it waits before the result is used."""
    from torch.distributed import _functional_collectives as funcol

    return funcol.wait_tensor(funcol.all_reduce(tensor, op, group))


SECOND_ORDER = ("fusedloss: double backward (create_graph=True) and torch.func transforms through a "
                "vocabulary-parallel loss (process_group=, or DTensor logits or LM heads sharded on the classes) "
                "are not supported: the backward of its collectives treats what follows the loss as the same on "
                "every rank, which a function of the gradient (a gradient penalty) is not, so the answer would be "
                "wrong; compute such terms without vocabulary parallelism")


def refuse_second_order():
    """Called by a vocabulary-parallel backward that would build a differentiable graph."""
    raise NotImplementedError(SECOND_ORDER)


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is this rank's own term's: every rank holds the global loss, and
    differentiates it with respect to its own inputs (Megatron's reduce-from-model-parallel region)."""

    @staticmethod
    def forward(ctx, tensor, name):
        return all_reduce(tensor, "sum", group_of(name))

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            refuse_second_order()
        return grad, None  # no gradient for the group's name


def sum_over_ranks(tensor, name):
    """The sum of ``tensor`` over the group's ranks (one all_reduce), differentiable as this rank's term:
    the eager path's SUM."""
    return _SumOverRanks.apply(tensor, name)


def max_over_ranks(tensor, name):
    """The elementwise max of ``tensor`` over the group's ranks (not differentiated: a shift)."""
    return all_reduce(tensor.detach(), "max", group_of(name))


class _CopyToGroup(torch.autograd.Function):
    """Identity whose gradient is summed over the group's ranks: a tensor replicated over the group that
    feeds each rank's block of a vocabulary-parallel op (Megatron's copy-to-model-parallel region)."""

    @staticmethod
    def forward(ctx, tensor, name):
        ctx.name = name
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            refuse_second_order()
        return all_reduce(grad.contiguous(), "sum", group_of(ctx.name)), None


def copy_to_group(tensor, name):
    """``tensor`` as it is, its gradient summed over the group ``name`` in the backward."""
    return _CopyToGroup.apply(tensor, name)
