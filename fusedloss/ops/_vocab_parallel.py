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
import threading

import torch
import torch.distributed as dist

_groups = {}  # group name -> ProcessGroup
_layouts = {}  # (group name, local class count) -> (offset, total classes)
_lock = threading.Lock()


def group_name(group):
    """The name the registered ops carry for ``group`` (a ProcessGroup: they take no objects)."""
    name = group.group_name
    if _groups.get(name) is not group:
        with _lock:
            _groups[name] = group
    return name


def group_of(name):
    return _groups[name]


def reset_layouts():
    """Forget every cached shard layout (call on every rank of a group whose shards changed size)."""
    _layouts.clear()


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
        rank = dist.get_rank(group)
        layout = _layouts[key] = (sum(sizes[:rank]), sum(sizes))
    return layout


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


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is this rank's own term's: every rank holds the global loss, and
    differentiates it with respect to its own inputs (Megatron's reduce-from-model-parallel region)."""

    @staticmethod
    def forward(ctx, tensor, name):
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group_of(name))
        return total

    @staticmethod
    def backward(ctx, grad):
        return grad, None  # no gradient for the group's name


def sum_over_ranks(tensor, name):
    """The sum of ``tensor`` over the group's ranks (one all_reduce), differentiable as this rank's term:
    the eager path's SUM."""
    return _SumOverRanks.apply(tensor, name)


def max_over_ranks(tensor, name):
    """The elementwise max of ``tensor`` over the group's ranks (not differentiated: a shift)."""
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.MAX, group=group_of(name))
    return total
