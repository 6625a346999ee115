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

One adapter (``_adapt``) does this for every function; a table (``_FUNCTIONS``) holds what differs: which
arguments are DTensors and along which dimensions, the local call, and how its result is placed.
"""
import dataclasses
from typing import Callable, NamedTuple, Optional, Tuple

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
        self.class_dim, self.vocab, self.rows = class_dim, None, {}
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


def _head_layouts(input, weight):
    """(the rows' layout, the head's layout) of an LM head: the weight a DTensor sharded on its rows over one
    mesh dimension (Replicate elsewhere), the input plain or a DTensor Replicate over that dimension."""
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


# ----------------------------------------------------------------------------------------------------
# a mean over the rows of every rank
# ----------------------------------------------------------------------------------------------------


def _global_mean(local, local_denominator, layout, of_mean=False, at_least_one=False):
    """A rank's share of the mean over the rows of every rank: ``local`` (the rank's sum; with ``of_mean``,
    its own mean over ``local_denominator``) over the denominators summed over the row groups (one
    all_reduce of a scalar per row-sharded mesh dimension; ``at_least_one``: that sum clamped to 1,
    'batchmean' with labels). A sum of 0 (nothing counted on any rank) gives NaN, as torch's 'mean', and a
    zero gradient (a gradient scaled by 1/0 would be NaN); a rank's own mean whose denominator is 0 gives 0
    and a zero gradient (its mean is 0 / 0)."""
    from .ops import _vocab_parallel

    local_denominator = local_denominator.detach()
    total = local_denominator
    for group in layout.row_groups():
        total = _vocab_parallel.all_reduce(total, "sum", group)
    if at_least_one:
        total = total.clamp_min(1)
    acc = torch.promote_types(local.dtype, torch.float32)  # a 16-bit loss: the ratio not rounded to 16 bits
    total = total.to(acc)
    empty = total == 0
    safe = torch.where(empty, 1.0, total)
    if of_mean:
        out = torch.where(local_denominator != 0, local.to(acc), 0.0) * (local_denominator.to(acc) / safe)
    else:
        out = local.to(acc) / safe
    return torch.where(empty, float("nan"), out).to(local.dtype)


def _mean_denominator(target, weight, prob_target, ignore_index, n_classes):
    """The rows' 'mean' denominator of the cross entropies, as the kernels count it
    (fusedloss/ops/softmax_rows.mean_denominator)."""
    from .ops.softmax_rows import count_denominator

    acc = torch.float64 if (weight is not None and weight.dtype == torch.float64) else torch.float32
    n_rows = target.shape[0] if prob_target else target.numel()
    if prob_target and target.dim() > 2:
        n_rows = target.numel() // target.shape[1]
    return count_denominator(target, weight, prob_target, ignore_index, n_rows, n_classes, acc)


def _jsd_denominator(labels, ignore_index, n_rows, device):
    """The rows a rank's 'mean' (or 'batchmean' with labels: the sum over the ranks is then clamped to 1)
    counts: its rows whose label is not ignored, or all its ``n_rows`` rows (every leading dimension's,
    whichever of them the mesh shards) without labels. ('batchmean' without labels divides by the global
    first dimension, TRL's and kl_div's: no count, no collective.)"""
    if labels is None:
        return torch.full((), float(n_rows), device=device)
    return (labels != ignore_index).sum().float()


# ----------------------------------------------------------------------------------------------------
# the adapter: one flow for every vocabulary-parallel function, driven by the table below
# ----------------------------------------------------------------------------------------------------


def _reduction_argument(a):
    return a["reduction"]


@dataclasses.dataclass(frozen=True)
class _Function:
    """A vocabulary-parallel function, as the adapter serves it.

    ``params``: the names of the Route's positional arguments (the function's, in its order).
    ``sharded``: the argument whose DTensor shards the classes: logits (``class_dim``: their class
    dimension, a function of them; ``what``: their name in messages), or an LM head's weight (``class_dim``
    None: its rows are the classes, and the input's layout is the rows', ``_head_layouts``).
    ``plain``: the ValueError's message when ``sharded`` is a plain tensor (a function of the arguments).
    ``group_what``: what the DTensors are, in the error for a ``process_group`` passed too (None: the
    function takes no process_group).
    ``reduction``: the call's reduction from its arguments (a function returning None: per-row outputs).
    ``means``: the reductions that are a mean over the rows of every rank when a mesh dimension shards the
    rows; ``from_sum``: that mean is the local sum over the global count (else the local mean times the
    rank's share of the count, 'batchmean' counting at least one).
    ``local``: the argument plumbing, ``(fn, the arguments by name, the rows' layout, the classes' layout,
    the reduction) -> _Local``.
    """

    params: Tuple[str, ...]
    sharded: str
    plain: Callable
    local: Callable
    class_dim: Optional[Callable] = None
    what: Optional[str] = None
    group_what: Optional[str] = None
    reduction: Callable = _reduction_argument
    means: Tuple[str, ...] = ()
    from_sum: bool = False


class _Local(NamedTuple):
    """One call on this rank's tensors: ``call(reduction)`` runs it; ``denominator()`` the rank's count for
    a mean over every rank's rows (called only then); ``shape``: the global shape of a per-row result;
    ``row_map``: the logits' dimension -> the result's; ``fixed``: a mean's global denominator known from
    the shapes (then the local sum over it: no count, no collective), or None."""

    call: Callable
    denominator: Callable
    shape: tuple
    row_map: Callable
    fixed: Optional[int] = None


def _adapt(function, fn, args):
    """``function`` of DTensor arguments (``fn``: the fusedloss function run on the local tensors): the
    layouts from the sharded tensor, the local call over the class dimension's group, a mean over
    row-sharded mesh dimensions made global, the result wrapped back as a DTensor (several: each its own
    copy, rows-sized; the local outputs are views of one tensor and compile refuses aliased DTensors)."""
    args = dict(zip(function.params, args))
    if function.group_what is not None and args["process_group"] is not None:
        raise ValueError(f"fusedloss: pass either DTensor {function.group_what} (their mesh gives the group) or "
                         "process_group, not both")
    sharded = args[function.sharded]
    if not is_dtensor(sharded):
        raise ValueError(function.plain(args))
    reduction = function.reduction(args)
    if function.class_dim is None:
        layout, head = _head_layouts(args["input"], sharded)
    else:
        layout = head = _Layout(sharded, function.class_dim(sharded), function.what)
    local = function.local(fn, args, layout, head, reduction)
    if local.fixed is not None:
        out = local.call("sum") / max(local.fixed, 1)
    elif layout.rows and reduction in function.means:
        if function.from_sum:
            out = _global_mean(local.call("sum"), local.denominator(), layout)
        else:
            out = _global_mean(local.call(reduction), local.denominator(), layout, of_mean=True,
                               at_least_one=reduction == "batchmean")
    else:
        out = local.call(reduction)
    if isinstance(out, tuple):
        return tuple(_wrap(o.clone(), layout, "none", local.shape, local.row_map) for o in out)
    return _wrap(out, layout, reduction or "none", local.shape, local.row_map)


def _same(dim):
    return dim  # a tensor with the logits' leading dimensions (labels, tokens, top-k, the input's rows)


def _after_classes(dim):
    return dim - 1 if dim > 1 else dim  # class targets: the logits' dimensions without the classes (dim 1)


def _rows(tensor, layout, what):
    """This rank's rows of a tensor with the logits' leading dimensions (None stays None)."""
    return None if tensor is None else _local_rows(tensor, layout, _same, what)


def _probability_target(target, layout, head, placements, class_dim):
    """This rank's block of a probability target: a DTensor placed ``placements``, or the plain global one
    sliced to this rank's rows and to ``head``'s block of the classes (``class_dim``)."""
    local = _local_rows(target, layout, _same, "the target", placements=placements)
    return local if is_dtensor(target) else _slice_classes(local, head, class_dim)


def _batchmean_of_first_dim(reduction, labels, first):
    """'batchmean' without labels divides by the global first dimension (TRL's and kl_div's): known here."""
    return first if reduction == "batchmean" and labels is None else None


# --- the argument plumbing of each function: which arguments are DTensors (their shard dims), the local call


def _cross_entropy(fn, a, layout, head, reduction):
    """cross_entropy of DTensor logits (``fn``: fusedloss.functional.cross_entropy on local tensors); class
    or probability targets (placed as the logits, their classes included)."""
    input, target, class_dim = a["input"], a["target"], layout.class_dim
    prob_target = target.is_floating_point()
    logits = input.to_local()
    row_map = _same if prob_target else _after_classes  # the logits' dim -> the target's
    if prob_target:
        local_target = _probability_target(target, layout, head, list(input.placements), class_dim)
    else:
        local_target = _local_rows(target, layout, row_map, "the target")
    class_weight = _global(a["weight"])
    extras = dict(z_loss=a["z_loss"], softcap=a["softcap"], inplace_backward=a["inplace_backward"],
                  grad_in_forward=a["grad_in_forward"], loss_dtype=a["loss_dtype"], process_group=head.group())
    out_shape = (input.shape[0], *input.shape[2:]) if prob_target and input.dim() > 1 else tuple(target.shape)
    return _Local(
        lambda r: fn(logits, local_target, class_weight, None, a["ignore_index"], None, r, a["label_smoothing"],
                     **extras),
        lambda: _mean_denominator(local_target, class_weight, prob_target, a["ignore_index"], input.shape[class_dim]),
        out_shape, row_map)


def _nll_loss(fn, a, layout, head, reduction):
    """nll_loss of DTensor log-probabilities: the target's log-probability lives on one rank of the class
    dimension; each rank gathers its own (0 elsewhere) and one all-reduce SUM of the rows' losses gives
    every rank the global one (differentiable: each rank's gradient is its own classes'). In torch ops
    (fusedloss/ops/_eager.py), on every backend: no ``fn``."""
    from .ops import _eager

    input, target, class_dim = a["input"], a["target"], layout.class_dim
    local_target = _local_rows(target, layout, _after_classes, "the target")
    class_weight = _global(a["weight"])
    group = layout.group() if layout.vocab is not None else ""
    return _Local(
        lambda r: _eager.sharded_nll_loss(input.to_local(), local_target, class_weight, a["ignore_index"], r, group,
                                          class_dim),
        lambda: _mean_denominator(local_target, class_weight, False, a["ignore_index"], input.shape[class_dim]),
        tuple(target.shape), _after_classes)


def _linear_cross_entropy(fn, a, layout, head, reduction):
    """linear_cross_entropy with the LM head's weight (and bias) a DTensor sharded on its rows (the classes)
    over one mesh dimension: vocabulary-parallel over that dimension's group, the logits never whole. The
    hidden states: a plain tensor, or a DTensor Replicate over that dimension (row-sharded over others)."""
    target, ignore_index = a["target"], a["ignore_index"]
    local_input, local_weight, local_bias = _head_tensors(a["input"], a["linear_weight"], a["linear_bias"], layout,
                                                          head, "linear_")
    prob_target = target.is_floating_point()
    if prob_target:  # (N, C) probabilities: the rows as the input's, the classes as the weight's rows
        _, Shard, _, _, _ = _dtensor_api()
        placements = _placements(target, layout, _same)
        if head.vocab is not None:
            placements[head.vocab] = Shard(target.dim() - 1)
        local_target = _probability_target(target, layout, head, placements, target.dim() - 1)
    else:
        local_target = _local_rows(target, layout, _same, "the target")
    class_weight = _global(a["weight"])
    extras = dict(linear_bias=local_bias, weight=class_weight, ignore_index=ignore_index,
                  label_smoothing=a["label_smoothing"], options=a["options"], z_loss=a["z_loss"],
                  softcap=a["softcap"], logit_scale=a["logit_scale"], loss_dtype=a["loss_dtype"],
                  process_group=head.group())
    return _Local(
        lambda r: fn(local_input, local_weight, local_target, reduction=r, **extras),
        lambda: _mean_denominator(local_target, class_weight, prob_target,
                                  -100 if ignore_index is None else ignore_index, a["linear_weight"].shape[0]),
        tuple(target.shape) if not prob_target else tuple(target.shape[:-1]), _same)


def _jsd_loss(fn, a, layout, head, reduction):
    """jsd_loss of DTensor student logits sharded on the classes (``fn``: fusedloss.functional.jsd_loss on
    local tensors). The teacher's logits: a DTensor placed as the student's, or a plain tensor (the global
    one, sliced here; it must not require grad: its gradient would be each rank's block); a top-k teacher
    and labels: rows as the student's, plain or DTensors."""
    input, target, labels = a["input"], a["target"], a["labels"]
    if a["indices"] is None:
        teacher = _local_rows(target, layout, _same, "the teacher's logits", placements=list(input.placements))
        if not is_dtensor(target):
            if target.requires_grad and torch.is_grad_enabled():
                raise ValueError("fusedloss: a teacher that requires grad must be a DTensor placed as the student's "
                                 "logits")
            teacher = _slice_classes(teacher, head, layout.class_dim)
    else:
        teacher = (_rows(target, layout, "the top-k log-probabilities"),
                   _rows(a["indices"], layout, "the top-k classes"))
    local_labels = _rows(labels, layout, "the labels")
    logits = input.to_local()
    return _Local(
        lambda r: fn(logits, teacher, local_labels, beta=a["beta"], temperature=a["temperature"],
                     ignore_index=a["ignore_index"], reduction=r, grad_in_forward=a["grad_in_forward"],
                     loss_dtype=a["loss_dtype"], process_group=layout.group()),
        lambda: _jsd_denominator(local_labels, a["ignore_index"], logits.numel() // max(logits.shape[-1], 1),
                                 logits.device),
        tuple(input.shape[:-1]), _same, _batchmean_of_first_dim(reduction, labels, input.shape[0]))


def _log_probs(fn, a, layout, head, reduction):
    """log_probs of DTensor logits sharded on the classes: the rows' log-probabilities (and entropies, two
    DTensors), placed as the rows."""
    input = a["input"]
    local_tokens = _rows(a["tokens"], layout, "the tokens")
    return _Local(
        lambda r: fn(input.to_local(), local_tokens, temperature=a["temperature"], ignore_index=a["ignore_index"],
                     with_entropy=a["with_entropy"], dtype=a["dtype"], process_group=layout.group()),
        None, tuple(input.shape[:-1]), _same)


def _linear_jsd_loss(fn, a, layout, head, reduction):
    """linear_jsd_loss with the student's LM head a DTensor sharded on its rows (the classes) over one mesh
    dimension: vocabulary parallel over that dimension's group, the logits never whole. The teacher's
    head: a DTensor placed as the student's, or a plain frozen weight (sliced to this rank's block); the
    hidden states plain or DTensors Replicate over the class dimension (row-sharded over others)."""
    input, weight, teacher_input, teacher_weight = a["input"], a["weight"], a["teacher_input"], a["teacher_weight"]
    if is_dtensor(teacher_weight) and _Layout(teacher_weight, 0, "teacher_weight").vocab != head.vocab:
        raise ValueError("fusedloss: teacher_weight must be sharded on its rows over the student's weight's mesh "
                         "dimension")
    if is_dtensor(teacher_input):
        _Layout(teacher_input, teacher_input.dim() - 1, "the teacher's input")
    x, w, b = _head_tensors(input, weight, a["bias"], layout, head, "")
    xt, wt, bt = _head_tensors(teacher_input, teacher_weight, a["teacher_bias"], layout, head, "teacher_")
    labels = a["labels"]
    local_labels = _rows(labels, layout, "the labels")
    return _Local(
        lambda r: fn(x, w, xt, wt, local_labels, bias=b, teacher_bias=bt, beta=a["beta"], temperature=a["temperature"],
                     ignore_index=a["ignore_index"], hard_weight=a["hard_weight"], soft_weight=a["soft_weight"],
                     reduction=r, options=a["options"],
                     drop_teacher_extra_classes=a["drop_teacher_extra_classes"], logit_scale=a["logit_scale"],
                     teacher_logit_scale=a["teacher_logit_scale"], softcap=a["softcap"],
                     teacher_softcap=a["teacher_softcap"], loss_dtype=a["loss_dtype"], process_group=head.group()),
        lambda: _jsd_denominator(local_labels, a["ignore_index"], x.numel() // max(x.shape[-1], 1), x.device),
        tuple(input.shape[:-1]), _same,
        _batchmean_of_first_dim(reduction, labels, input.shape[0] if input.dim() > 1 else weight.shape[0]))


def _linear_log_probs(fn, a, layout, head, reduction):
    """linear_log_probs with the LM head a DTensor sharded on its rows: vocabulary parallel, as
    linear_jsd_loss; the outputs placed as the rows (with the entropy: two DTensors)."""
    input = a["input"]
    x, w, b = _head_tensors(input, a["weight"], a["bias"], layout, head, "")
    local_tokens = _rows(a["tokens"], layout, "the tokens")
    return _Local(
        lambda r: fn(x, w, local_tokens, bias=b, temperature=a["temperature"], ignore_index=a["ignore_index"],
                     with_entropy=a["with_entropy"], options=a["options"], logit_scale=a["logit_scale"],
                     softcap=a["softcap"], dtype=a["dtype"], process_group=head.group()),
        None, tuple(input.shape[:-1]), _same)


def _plain_head(name):
    return lambda a: (f"fusedloss: {name} with DTensor inputs takes the LM head's weight as a DTensor sharded on "
                      "its rows (the classes), e.g. ColwiseParallel's")


def _legacy_reduction(a):
    return check.reduction_from_args(a["size_average"], a["reduce"], a["reduction"])


def _per_row(a):
    return None  # per-row outputs: nothing to reduce


def _classes_at_1(logits):
    return 1 if logits.dim() >= 2 else 0  # torch's cross entropy and nll: (C), (N, C) or (N, C, d1, ...)


def _classes_last(logits):
    return logits.dim() - 1


_FUNCTIONS = {
    "cross_entropy": _Function(
        params=tuple("input target weight size_average ignore_index reduce reduction label_smoothing z_loss softcap "
                     "inplace_backward grad_in_forward loss_dtype process_group".split()),
        sharded="input", class_dim=_classes_at_1, what="the logits", group_what="logits",
        plain=lambda a: ("fusedloss: cross_entropy takes DTensor logits with a DTensor target or weight; got plain "
                         f"logits with a {type(a['target']).__name__} target"),
        reduction=_legacy_reduction, means=("mean",), from_sum=True, local=_cross_entropy),
    "nll_loss": _Function(
        params=tuple("input target weight size_average ignore_index reduce reduction".split()),
        sharded="input", class_dim=_classes_at_1, what="the log-probabilities",
        plain=lambda a: "fusedloss: nll_loss takes DTensor log-probabilities with a DTensor target or weight",
        reduction=_legacy_reduction, means=("mean",), from_sum=True, local=_nll_loss),
    "linear_cross_entropy": _Function(
        params=tuple("input linear_weight target linear_bias weight reduction ignore_index label_smoothing options "
                     "z_loss softcap loss_dtype process_group logit_scale".split()),
        sharded="linear_weight", group_what="linear_weight", plain=_plain_head("linear_cross_entropy"),
        means=("mean",), from_sum=True, local=_linear_cross_entropy),
    "jsd_loss": _Function(
        params=tuple("input target indices labels beta temperature ignore_index reduction grad_in_forward loss_dtype "
                     "process_group".split()),
        sharded="input", class_dim=_classes_last, what="the student's logits", group_what="logits",
        plain=lambda a: ("fusedloss: jsd_loss takes DTensor student logits with DTensor teacher logits; got plain "
                         "student logits"),
        means=("mean", "batchmean"), local=_jsd_loss),
    "log_probs": _Function(
        params=tuple("input tokens temperature ignore_index with_entropy dtype process_group".split()),
        sharded="input", class_dim=_classes_last, what="the logits", group_what="logits",
        plain=lambda a: "fusedloss: log_probs takes DTensor logits with DTensor tokens; got plain logits",
        reduction=_per_row, local=_log_probs),
    "linear_jsd_loss": _Function(
        params=tuple("input weight teacher_input teacher_weight labels bias teacher_bias beta temperature ignore_index "
                     "hard_weight soft_weight reduction options drop_teacher_extra_classes loss_dtype process_group "
                     "logit_scale teacher_logit_scale softcap teacher_softcap".split()),
        sharded="weight", group_what="weights", plain=_plain_head("linear_jsd_loss"),
        means=("mean", "batchmean"), local=_linear_jsd_loss),
    "linear_log_probs": _Function(
        params=tuple("input weight tokens bias temperature ignore_index with_entropy options dtype process_group "
                     "logit_scale softcap".split()),
        sharded="weight", group_what="weights", plain=_plain_head("linear_log_probs"), reduction=_per_row,
        local=_linear_log_probs),
}


# --- the entries the Routes call (fusedloss/functional/*.py: ``dtensor=lambda *args: _dtensor.<name>(fn, *args)``)


def cross_entropy(fn, *args):
    return _adapt(_FUNCTIONS["cross_entropy"], fn, args)


def nll_loss(*args):
    return _adapt(_FUNCTIONS["nll_loss"], None, args)


def linear_cross_entropy(fn, *args):
    return _adapt(_FUNCTIONS["linear_cross_entropy"], fn, args)


def jsd_loss(fn, *args):
    return _adapt(_FUNCTIONS["jsd_loss"], fn, args)


def log_probs(fn, *args):
    return _adapt(_FUNCTIONS["log_probs"], fn, args)


def linear_jsd_loss(fn, *args):
    return _adapt(_FUNCTIONS["linear_jsd_loss"], fn, args)


def linear_log_probs(fn, *args):
    return _adapt(_FUNCTIONS["linear_log_probs"], fn, args)
