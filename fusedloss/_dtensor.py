"""DTensor inputs: one adapter for every function with a vocabulary-parallel path.

torch's tensor parallelism hands the loss DTensors: logits sharded on the classes
(``ColwiseParallel(output_layouts=Shard(-1))``), an LM head's weight sharded on its rows, on a 1-D mesh or
on one dimension of an N-D mesh (``("dp", "tp")``). The adapter unwraps them once, at the boundary, into
what the single-process functions take:

  - the local shard of each tensor (``to_local``: differentiable, the gradient comes back as a DTensor
    with the input's placements);
  - the process group of the mesh dimension that shards the classes (the logits' class dimension, the
    LM head's rows): the vocabulary-parallel path over it (``process_group=``), no gather of the logits;
  - the mesh dimensions that shard the rows (the batch, or a spatial dimension): each rank computes its
    rows; a 'mean' is the global one, the local sum over the global denominator (one all-reduce of a
    scalar over those dimensions' groups);

and wraps the loss back into a DTensor: Replicate over the class dimension (every rank of it holds the
loss), over a row dimension Partial(sum) for 'mean' and 'sum' (each rank holds its share of the global
value; torch's DTensor gives Partial(avg) for 'mean', the average of the shards' own means, which
differs from the global mean when shards count different numbers of rows) and Shard for 'none' (each
rank its rows).

Targets and class weights may be plain tensors (the global ones, as for one process: a plain target is
sliced to this rank's rows, without communication) or DTensors (Replicate over the class dimension; a
class weight sharded on the classes is gathered: C numbers). A linear_cross_entropy input (the hidden
states) may be a plain tensor or a DTensor Replicate over the class dimension: its gradient is summed
over that dimension's ranks, as autograd expects of a replicated input; an LM head replicated over a mesh
dimension that shards the input's rows gets a Partial(sum) gradient there (each rank's rows' term, to be
summed: the data-parallel engine's job, or redistribute's). Partial logits, or classes sharded over two
mesh dimensions, raise a clear error.
"""

import torch

from . import _validation as check

_classes = None


def _dtensor_api():
    """(DTensor, Shard, Replicate, Partial, distribute_tensor), imported on first use; None without
    torch.distributed."""
    global _classes
    if _classes is None:
        try:
            from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
            _classes = (DTensor, Shard, Replicate, Partial, distribute_tensor)
        except ImportError:
            _classes = ()
    return _classes or None


def is_dtensor(value):
    api = _dtensor_api()
    return api is not None and isinstance(value, api[0])


def any_dtensor(args, positions):
    """Whether a tensor argument is a DTensor (a plain tensor costs one type check)."""
    for i in positions:
        value = args[i]
        if value is not None and type(value) is not torch.Tensor and is_dtensor(value):
            return True
    return False


class _Layout:
    """How a DTensor is distributed, in the terms of a row loss: the mesh dimension sharding the classes
    (``vocab``, or None) and the mesh dimensions sharding the rows (``rows``: mesh dim -> tensor dim)."""

    def __init__(self, tensor, class_dim, what):
        _, Shard, Replicate, Partial, _ = _dtensor_api()
        self.mesh, self.placements = tensor.device_mesh, tuple(tensor.placements)
        self.vocab, self.rows = None, {}
        self.n_classes = tensor.shape[class_dim]  # the global vocabulary
        for mesh_dim, placement in enumerate(self.placements):
            if isinstance(placement, Partial):
                raise ValueError(f"fusedloss: {what} is a DTensor with a Partial placement on mesh dimension "
                                 f"{mesh_dim}: reduce it first (redistribute to Replicate or Shard)")
            if not isinstance(placement, Shard):
                continue
            dim = placement.dim % tensor.dim()
            if dim == class_dim:
                if self.vocab is not None:
                    raise ValueError(f"fusedloss: {what}'s classes are sharded over two mesh dimensions "
                                     f"({self.vocab} and {mesh_dim}); shard them over one")
                self.vocab = mesh_dim
            else:
                self.rows[mesh_dim] = dim

    def group(self):
        """The class dimension's process group, as the name the ops take (None: the classes are not
        sharded), its shard layout declared from the global shape (DTensor's torch.chunk blocks): no
        collective to find it, none to trace under torch.compile."""
        if self.vocab is None:
            return None
        from .ops import _vocab_parallel

        group = self.mesh.get_group(self.vocab)
        ranks, rank = self.mesh.size(self.vocab), self.mesh.get_local_rank(self.vocab)
        bounds = [0, *_chunk_bounds(self.n_classes, ranks), self.n_classes]
        empty = [r for r in range(ranks) if bounds[r + 1] == bounds[r]]
        if empty:  # every rank sees it (the global shape gives the blocks): all raise, none waits
            raise ValueError(f"fusedloss: {self.n_classes} classes sharded over the {ranks} ranks of mesh dimension "
                             f"{self.vocab} leave rank(s) {empty} with none (DTensor's Shard makes blocks of "
                             f"{-(-self.n_classes // ranks)}, as torch.chunk); the vocabulary-parallel path needs at "
                             "least one class on every rank: use fewer ranks for the classes or more classes")
        return _vocab_parallel.declare_layout(group, bounds[rank + 1] - bounds[rank], bounds[rank], self.n_classes)

    def row_groups(self):
        return [self.mesh.get_group(d) for d in self.rows]


def _placements(tensor, layout, dim_map):
    """What a tensor read along the rows of ``layout`` is placed as: Shard (of its dim ``dim_map(d)``) on
    the mesh dimensions that shard the rows (the logits' dim d), Replicate on the others."""
    _, Shard, Replicate, _, _ = _dtensor_api()
    placements = [Replicate()] * layout.mesh.ndim
    for mesh_dim, dim in layout.rows.items():
        placements[mesh_dim] = Shard(dim_map(dim))
    return placements


def _normalized(placements, ndim):
    _, Shard, _, _, _ = _dtensor_api()
    return [Shard(p.dim % ndim) if isinstance(p, Shard) else p for p in placements]


def _local_rows(tensor, layout, dim_map, what, placements=None):
    """This rank's rows of ``tensor`` (a target), distributed as the logits' rows (``dim_map``: the logits'
    dim -> this tensor's): a DTensor's local shard (placed so: ``placements``, by default Shard along the
    rows and Replicate elsewhere), a plain tensor's slice (the global one; no communication), or the
    tensor as it is when the rows are not sharded."""
    DTensor = _dtensor_api()[0]
    expected = placements or _placements(tensor, layout, dim_map)
    if isinstance(tensor, DTensor):
        if tensor.device_mesh != layout.mesh or _normalized(tensor.placements, tensor.dim()) != _normalized(
                expected, tensor.dim()):
            raise ValueError(f"fusedloss: {what} is a DTensor placed {tuple(tensor.placements)} on "
                             f"{tensor.device_mesh}; expected {tuple(expected)} on the logits' mesh "
                             f"{layout.mesh}")
        return tensor.to_local()
    for mesh_dim, dim in layout.rows.items():  # Shard's blocks, mesh dimensions left to right (DTensor's order)
        dim = dim_map(dim)
        ranks, rank = layout.mesh.size(mesh_dim), layout.mesh.get_local_rank(mesh_dim)
        tensor = torch.tensor_split(tensor, _chunk_bounds(tensor.shape[dim], ranks), dim=dim)[rank]
    return tensor


def _global(tensor):
    """A plain tensor of a (replicated or sharded) DTensor's whole value: small ones (class weights)."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def _wrap(loss, layout, reduction, global_shape, row_dim_map):
    """The local loss as a DTensor on the layout's mesh: Replicate over the class dimension, over a row
    dimension Partial(sum) ('mean', 'sum') or Shard ('none')."""
    DTensor, Shard, Replicate, Partial, _ = _dtensor_api()
    placements = [Replicate()] * layout.mesh.ndim
    for mesh_dim, dim in layout.rows.items():
        placements[mesh_dim] = Shard(row_dim_map(dim)) if reduction == "none" else Partial("sum")
    shape = tuple(global_shape) if reduction == "none" else ()
    stride = []
    step = 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return DTensor.from_local(loss, layout.mesh, placements, run_check=False, shape=torch.Size(shape),
                              stride=tuple(reversed(stride)))


def _global_mean(local_sum, local_denominator, layout):
    """The rows' share of the global mean: the local sum over the denominator summed over the row groups.
    A denominator of 0 (every target ignored, on every rank) gives NaN, as torch's 'mean', and zero
    gradients, as torch's (a gradient scaled by 1/0 would be NaN)."""
    from .ops import _vocab_parallel

    denominator = local_denominator.detach()
    for group in layout.row_groups():
        denominator = _vocab_parallel.all_reduce(denominator, "sum", group)
    return _over(local_sum, None, denominator)


def _over(value, numerator, denominator):
    """value / denominator, or value * (numerator / denominator) (both detached): NaN with a zero gradient
    when the denominator is 0 (a gradient scaled by 1/0 would be NaN); a numerator of 0 gives 0 and a zero
    gradient whatever ``value`` is (a rank that counts nothing: its own mean is 0 / 0)."""
    acc = torch.promote_types(value.dtype, torch.float32)  # a 16-bit loss: the ratio not rounded to 16 bits
    denominator = denominator.to(acc)
    empty = denominator == 0
    safe = torch.where(empty, 1.0, denominator)
    if numerator is None:
        out = value.to(acc) / safe
    else:
        out = torch.where(numerator != 0, value.to(acc), 0.0) * (numerator.to(acc) / safe)
    return torch.where(empty, float("nan"), out).to(value.dtype)


def _mean_denominator(target, weight, prob_target, ignore_index, n_classes):
    """The rows' 'mean' denominator, as the kernels count it (fusedloss/ops/softmax_rows.mean_denominator)."""
    from .ops.softmax_rows import count_denominator

    acc = torch.float64 if (weight is not None and weight.dtype == torch.float64) else torch.float32
    n_rows = target.shape[0] if prob_target else target.numel()
    if prob_target and target.dim() > 2:
        n_rows = target.numel() // target.shape[1]
    return count_denominator(target, weight, prob_target, ignore_index, n_rows, n_classes, acc)


def cross_entropy(fn, input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing, z_loss,
                  softcap, inplace_backward, grad_in_forward, loss_dtype, process_group):
    """cross_entropy of DTensor logits (``fn``: fusedloss.functional.cross_entropy on local tensors)."""
    if process_group is not None:
        raise ValueError("fusedloss: pass either DTensor logits (their mesh gives the group) or process_group, "
                         "not both")
    if not is_dtensor(input):
        raise ValueError("fusedloss: cross_entropy takes DTensor logits with a DTensor target or weight; got "
                         f"plain logits with a {type(target).__name__} target")
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    class_dim = 1 if input.dim() >= 2 else 0
    layout = _Layout(input, class_dim, "the logits")
    prob_target = target.is_floating_point()
    logits = input.to_local()
    row_map = (lambda d: d) if prob_target else (lambda d: d - 1 if d > 1 else d)  # logits dim -> target dim
    if prob_target:  # placed as the logits (their classes included)
        local_target = _local_rows(target, layout, row_map, "the target", placements=list(input.placements))
        if not is_dtensor(target):
            local_target = _slice_classes(local_target, layout, class_dim)
    else:
        local_target = _local_rows(target, layout, row_map, "the target")
    class_weight = _global(weight)
    group = layout.group()
    extras = dict(z_loss=z_loss, softcap=softcap, inplace_backward=inplace_backward, grad_in_forward=grad_in_forward,
                  loss_dtype=loss_dtype, process_group=group)
    if layout.rows and reduction == "mean":
        total = fn(logits, local_target, class_weight, None, ignore_index, None, "sum", label_smoothing, **extras)
        n_classes = input.shape[class_dim]
        local = _global_mean(total, _mean_denominator(local_target, class_weight, prob_target, ignore_index,
                                                      n_classes), layout)
    else:
        local = fn(logits, local_target, class_weight, None, ignore_index, None, reduction, label_smoothing, **extras)
    out_shape = (input.shape[0], *input.shape[2:]) if prob_target and input.dim() > 1 else tuple(target.shape)
    return _wrap(local, layout, reduction, out_shape, row_map)


def _parameter_rows(parameter, layout):
    """The local block of the LM head's weight or bias. Replicated over a mesh dimension that shards the
    input's rows, its gradient there is each rank's rows' term: Partial(sum) (summed by redistribute, or
    by the data-parallel engine), the DTensor form of a gradient still to be reduced."""
    if not layout.rows:
        return parameter.to_local()
    _, _, _, Partial, _ = _dtensor_api()
    grads = [Partial() if d in layout.rows else p for d, p in enumerate(parameter.placements)]
    return parameter.to_local(grad_placements=grads)


def _slice_classes(target, layout, class_dim):
    """A plain probability target's block of this rank's classes (the logits' layout along the classes)."""
    if layout.vocab is None:
        return target
    ranks, rank = layout.mesh.size(layout.vocab), layout.mesh.get_local_rank(layout.vocab)
    return torch.tensor_split(target, _chunk_bounds(target.shape[class_dim], ranks), dim=class_dim)[rank]


def _chunk_bounds(size, ranks):
    """torch.chunk's split points (DTensor's Shard): blocks of ceil(size / ranks), the last ones shorter."""
    block = -(-size // ranks)
    return [min(block * r, size) for r in range(1, ranks)]


def nll_loss(input, target, weight, size_average, ignore_index, reduce, reduction):
    """nll_loss of DTensor log-probabilities: the target's log-probability lives on one rank of the class
    dimension; each rank gathers its own (0 elsewhere) and one all-reduce SUM of the rows' losses gives
    every rank the global one (differentiable: each rank's gradient is its own classes'). In torch ops
    (fusedloss/ops/_eager.py), on every backend."""
    from .ops import _eager, _vocab_parallel

    if not is_dtensor(input):
        raise ValueError("fusedloss: nll_loss takes DTensor log-probabilities with a DTensor target or weight")
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    class_dim = 1 if input.dim() >= 2 else 0
    layout = _Layout(input, class_dim, "the log-probabilities")
    row_map = lambda d: d - 1 if d > 1 else d  # noqa: E731
    local_target = _local_rows(target, layout, row_map, "the target")
    class_weight = _global(weight)
    local = _eager.sharded_nll_loss(input.to_local(), local_target, class_weight, ignore_index,
                                    "sum" if layout.rows and reduction == "mean" else reduction,
                                    layout.group() if layout.vocab is not None else "",
                                    class_dim)
    if layout.rows and reduction == "mean":
        local = _global_mean(local, _mean_denominator(local_target, class_weight, False, ignore_index,
                                                      input.shape[class_dim]), layout)
    return _wrap(local, layout, reduction, tuple(target.shape), row_map)


def linear_cross_entropy(fn, input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                         label_smoothing, options, z_loss, softcap, loss_dtype, process_group, logit_scale):
    """linear_cross_entropy with the LM head's weight (and bias) a DTensor sharded on its rows (the classes)
    over one mesh dimension: vocabulary-parallel over that dimension's group, the logits never whole. The
    hidden states: a plain tensor, or a DTensor Replicate over that dimension (row-sharded over others)."""
    _no_group(process_group, "linear_weight")
    layout, head = _head_layouts(input, linear_weight, "linear_cross_entropy")
    local_input, local_weight, local_bias = _head_tensors(input, linear_weight, linear_bias, layout, head, "linear_")
    prob_target = target.is_floating_point()
    row_map = lambda d: d  # noqa: E731  (the input's rows are the target's)
    if prob_target:  # (N, C) probabilities: the rows as the input's, the classes as the weight's rows
        _, Shard, _, _, _ = _dtensor_api()
        placements = _placements(target, layout, row_map)
        if head.vocab is not None:
            placements[head.vocab] = Shard(target.dim() - 1)
        local_target = _local_rows(target, layout, row_map, "the target", placements=placements)
        if not is_dtensor(target):
            local_target = _slice_classes(local_target, head, target.dim() - 1)
    else:
        local_target = _local_rows(target, layout, row_map, "the target")
    class_weight = _global(weight)
    group = head.group()
    extras = dict(linear_bias=local_bias, weight=class_weight, ignore_index=ignore_index,
                  label_smoothing=label_smoothing, options=options, z_loss=z_loss, softcap=softcap,
                  logit_scale=logit_scale, loss_dtype=loss_dtype, process_group=group)
    if layout.rows and reduction == "mean":
        total = fn(local_input, local_weight, local_target, reduction="sum", **extras)
        denominator = _mean_denominator(local_target, class_weight, prob_target,
                                        -100 if ignore_index is None else ignore_index, linear_weight.shape[0])
        local = _global_mean(total, denominator, layout)
    else:
        local = fn(local_input, local_weight, local_target, reduction=reduction, **extras)
    out_shape = tuple(target.shape) if not prob_target else tuple(target.shape[:-1])
    return _wrap(local, layout, reduction, out_shape, row_map)


# ----------------------------------------------------------------------------------------------------
# distillation and token log-probabilities
# ----------------------------------------------------------------------------------------------------

def _no_group(process_group, what):
    if process_group is not None:
        raise ValueError(f"fusedloss: pass either DTensor {what} (their mesh gives the group) or process_group, "
                         "not both")


def _share_of_mean(local_mean, local_denominator, layout, at_least_one):
    """A rank's share of the mean over the rows of every rank, from the mean over its own rows: times its
    denominator over their sum over the row groups (one all_reduce of a scalar per row-sharded mesh
    dimension; ``at_least_one``: that sum clamped to 1, 'batchmean' with labels); 0 for a rank with
    nothing to count, NaN on every rank when no rank has any and the sum is not clamped (0 / 0)."""
    from .ops import _vocab_parallel

    local_denominator = local_denominator.detach()
    total = local_denominator
    for group in layout.row_groups():
        total = _vocab_parallel.all_reduce(total, "sum", group)
    if at_least_one:
        total = total.clamp_min(1)
    return _over(local_mean, local_denominator, total)


def _jsd_denominator(labels, ignore_index, n_rows, device):
    """The rows a rank's 'mean' (or 'batchmean' with labels: the sum over the ranks is then clamped to 1)
    counts: its rows whose label is not ignored, or all its ``n_rows`` rows (every leading dimension's,
    whichever of them the mesh shards) without labels. ('batchmean' without labels divides by the global
    first dimension, TRL's and kl_div's: no count, no collective.)"""
    if labels is None:
        return torch.full((), float(n_rows), device=device)
    return (labels != ignore_index).sum().float()


def _reduced(local_mean_fn, reduction, layout, denominator):
    """The local loss: over a row-sharded mesh the rank's share of the global mean (``denominator()``: the
    rank's own, computed only then)."""
    local = local_mean_fn(reduction)
    if layout.rows and reduction in ("mean", "batchmean"):
        local = _share_of_mean(local, denominator(), layout, reduction == "batchmean")
    return local


def jsd_loss(fn, input, target, indices, labels, beta, temperature, ignore_index, reduction, grad_in_forward,
             loss_dtype, process_group):
    """jsd_loss of DTensor student logits sharded on the classes (``fn``: fusedloss.functional.jsd_loss on
    local tensors). The teacher's logits: a DTensor placed as the student's, or a plain tensor (the global
    one, sliced here; it must not require grad: its gradient would be each rank's block); a top-k teacher
    and labels: rows as the student's, plain or DTensors."""
    _no_group(process_group, "logits")
    if not is_dtensor(input):
        raise ValueError("fusedloss: jsd_loss takes DTensor student logits with DTensor teacher logits; got plain "
                         "student logits")
    class_dim = input.dim() - 1
    layout = _Layout(input, class_dim, "the student's logits")
    same = lambda d: d  # noqa: E731  (labels and top-k have the logits' leading dimensions)
    if indices is None:
        local_target = _local_rows(target, layout, same, "the teacher's logits", placements=list(input.placements))
        if not is_dtensor(target):
            if target.requires_grad and torch.is_grad_enabled():
                raise ValueError("fusedloss: a teacher that requires grad must be a DTensor placed as the student's "
                                 "logits")
            local_target = _slice_classes(local_target, layout, class_dim)
        teacher = local_target
    else:
        teacher = (_local_rows(target, layout, same, "the top-k log-probabilities"),
                   _local_rows(indices, layout, same, "the top-k classes"))
    local_labels = _local_rows(labels, layout, same, "the labels") if labels is not None else None
    logits = input.to_local()

    def local_loss(local_reduction):
        return fn(logits, teacher, local_labels, beta=beta, temperature=temperature, ignore_index=ignore_index,
                  reduction=local_reduction, grad_in_forward=grad_in_forward, loss_dtype=loss_dtype,
                  process_group=layout.group())

    if reduction == "batchmean" and labels is None:  # the global first dimension: no collective
        local = local_loss("sum") / max(input.shape[0], 1)
    else:
        local = _reduced(local_loss, reduction, layout, lambda: _jsd_denominator(
            local_labels, ignore_index, logits.numel() // max(logits.shape[-1], 1), logits.device))
    return _wrap(local, layout, "none" if reduction == "none" else "sum", tuple(input.shape[:-1]), same)


def log_probs(fn, input, tokens, temperature, ignore_index, with_entropy, dtype, process_group):
    """log_probs of DTensor logits sharded on the classes: the rows' log-probabilities (and entropies,
    two DTensors), placed as the rows."""
    _no_group(process_group, "logits")
    if not is_dtensor(input):
        raise ValueError("fusedloss: log_probs takes DTensor logits with DTensor tokens; got plain logits")
    layout = _Layout(input, input.dim() - 1, "the logits")
    same = lambda d: d  # noqa: E731
    local_tokens = _local_rows(tokens, layout, same, "the tokens")
    out = fn(input.to_local(), local_tokens, temperature=temperature, ignore_index=ignore_index,
             with_entropy=with_entropy, dtype=dtype, process_group=layout.group())
    lead = tuple(input.shape[:-1])
    if with_entropy:  # each its own copy (rows-sized): the local outputs are views of one tensor, and
        return tuple(_wrap(o.clone(), layout, "none", lead, same) for o in out)  # compile refuses aliased DTensors
    return _wrap(out, layout, "none", lead, same)


def _head_layouts(input, weight, what):
    """(the rows' layout, the head's layout) of an LM head: the weight a DTensor sharded on its rows over one
    mesh dimension (Replicate elsewhere), the input plain or a DTensor Replicate over that dimension."""
    if not is_dtensor(weight):
        raise ValueError(f"fusedloss: {what} with DTensor inputs takes the LM head's weight as a DTensor sharded on "
                         "its rows (the classes), e.g. ColwiseParallel's")
    head = _Layout(weight, 0, "the weight")
    if head.rows:
        raise ValueError("fusedloss: the weight is sharded on its features; shard the LM head on its rows (the "
                         "classes), as ColwiseParallel does, and Replicate elsewhere")
    if not is_dtensor(input):
        return head, head
    layout = _Layout(input, input.dim() - 1, "the input")
    if layout.mesh != head.mesh:
        raise ValueError("fusedloss: the input and the weight are DTensors on different meshes")
    if layout.vocab is not None:
        raise ValueError("fusedloss: the input is sharded on its features; it must be Replicate over the mesh "
                         "dimension that shards the classes")
    if head.vocab in layout.rows:
        raise ValueError("fusedloss: the input's rows are sharded over the mesh dimension that shards the classes")
    layout.vocab, layout.n_classes = head.vocab, head.n_classes
    return layout, head


def _head_tensors(input, weight, bias, layout, head, what):
    """The local (input, weight block, bias block) of an LM head; the input's gradient summed over the class
    dimension's ranks (each rank's term), a plain weight (a frozen teacher's) sliced to this rank's block."""
    from .ops import _vocab_parallel

    local_input = input.to_local() if is_dtensor(input) else input
    if head.vocab is not None:
        local_input = _vocab_parallel.copy_to_group(local_input, head.group())
    parts = []
    for tensor, name in ((weight, "weight"), (bias, "bias")):
        if tensor is None or is_dtensor(tensor):
            parts.append(_parameter_rows(tensor, layout) if tensor is not None else None)
            continue
        if tensor.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"fusedloss: a plain {what}{name} that requires grad with a sharded LM head; make it a "
                             "DTensor sharded on its rows as the student's")
        parts.append(_slice_classes(tensor, head, 0))
    return local_input, parts[0], parts[1]


def linear_jsd_loss(fn, input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, beta, temperature,
                    ignore_index, hard_weight, soft_weight, reduction, options, drop_teacher_extra_classes, loss_dtype,
                    process_group, logit_scale, teacher_logit_scale, softcap, teacher_softcap):
    """linear_jsd_loss with the student's LM head a DTensor sharded on its rows (the classes) over one mesh
    dimension: vocabulary parallel over that dimension's group, the logits never whole. The teacher's
    head: a DTensor placed as the student's, or a plain frozen weight (sliced to this rank's block); the
    hidden states plain or DTensors Replicate over the class dimension (row-sharded over others)."""
    _no_group(process_group, "weights")
    layout, head = _head_layouts(input, weight, "linear_jsd_loss")
    if is_dtensor(teacher_weight) and _Layout(teacher_weight, 0, "teacher_weight").vocab != head.vocab:
        raise ValueError("fusedloss: teacher_weight must be sharded on its rows over the student's weight's mesh "
                         "dimension")
    if is_dtensor(teacher_input):
        _Layout(teacher_input, teacher_input.dim() - 1, "the teacher's input")
    x, w, b = _head_tensors(input, weight, bias, layout, head, "")
    xt, wt, bt = _head_tensors(teacher_input, teacher_weight, teacher_bias, layout, head, "teacher_")
    same = lambda d: d  # noqa: E731
    local_labels = _local_rows(labels, layout, same, "the labels") if labels is not None else None

    def local_loss(local_reduction):
        return fn(x, w, xt, wt, local_labels, bias=b, teacher_bias=bt, beta=beta, temperature=temperature,
                  ignore_index=ignore_index, hard_weight=hard_weight, soft_weight=soft_weight,
                  reduction=local_reduction, options=options, drop_teacher_extra_classes=drop_teacher_extra_classes,
                  logit_scale=logit_scale, teacher_logit_scale=teacher_logit_scale, softcap=softcap,
                  teacher_softcap=teacher_softcap, loss_dtype=loss_dtype,
                  process_group=head.group())

    if reduction == "batchmean" and labels is None:
        global_first = input.shape[0] if input.dim() > 1 else weight.shape[0]
        local = local_loss("sum") / max(global_first, 1)
    else:
        local = _reduced(local_loss, reduction, layout,
                         lambda: _jsd_denominator(local_labels, ignore_index, x.numel() // max(x.shape[-1], 1), x.device))
    return _wrap(local, layout, "none" if reduction == "none" else "sum", tuple(input.shape[:-1]), same)


def linear_log_probs(fn, input, weight, tokens, bias, temperature, ignore_index, with_entropy, options, dtype,
                     process_group, logit_scale, softcap):
    """linear_log_probs with the LM head a DTensor sharded on its rows: vocabulary parallel, as
    linear_jsd_loss; the outputs placed as the rows (with the entropy: two DTensors)."""
    _no_group(process_group, "weights")
    layout, head = _head_layouts(input, weight, "linear_log_probs")
    x, w, b = _head_tensors(input, weight, bias, layout, head, "")
    same = lambda d: d  # noqa: E731
    local_tokens = _local_rows(tokens, layout, same, "the tokens")
    out = fn(x, w, local_tokens, bias=b, temperature=temperature, ignore_index=ignore_index, with_entropy=with_entropy,
             options=options, logit_scale=logit_scale, softcap=softcap, dtype=dtype, process_group=head.group())
    lead = tuple(input.shape[:-1])
    if with_entropy:  # copies, as log_probs'
        return tuple(_wrap(o.clone(), layout, "none", lead, same) for o in out)
    return _wrap(out, layout, "none", lead, same)
