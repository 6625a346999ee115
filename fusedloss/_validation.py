"""Argument checks for the Triton path, reproducing torch's exception types and messages.

The eager path lets torch check its own arguments. The Triton path must fail the same way, before any
kernel runs, so the checks below follow ATen's (LossNLL.cpp, LossNLL2d.cpp, Loss.cpp) in order, with
the same messages. Only shapes, dtypes and devices are checked here: values (a target out of range) are
checked on the device (NaN) or, with ``FUSEDLOSS_DEBUG=1``, on the host by ``check_class_targets``.
"""
import math
import numbers
import warnings

import torch
from torch.nn import _reduction

_C10_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
    torch.uint8: "Byte", torch.bool: "Bool", torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}


def c10_name(dtype):
    """The dtype's name as ATen prints it ("Float", "Long", ...)."""
    return _C10_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _shape(t):
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


_REDUCTION_NAMES = ("none", "mean", "sum")  # by torch's reduction enum


def reduction_from_args(size_average, reduce, reduction):
    """torch's mapping of the deprecated ``size_average``/``reduce`` to ``reduction``, then its check.
    Returns the canonical name: torch's deprecated alias 'elementwise_mean' is 'mean' (with torch's warning)."""
    if size_average is None and reduce is None and (reduction == "mean" or reduction == "sum" or reduction == "none"):
        return reduction
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    # ValueError "<x> is not a valid value for reduction"; the enum names the reduction the ops understand
    return _REDUCTION_NAMES[_reduction.get_enum(reduction)]


def check_tensor(name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, not {type(value).__name__}")


def check_same_device(*tensors):
    devices = [t.device for t in tensors if t is not None]
    if any(d != devices[0] for d in devices):
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, "
            + " and ".join(sorted({str(d) for d in devices})) + "!")


def check_floating_input(input, op):
    if not input.is_floating_point():
        raise NotImplementedError(f'"{op}" not implemented for \'{c10_name(input.dtype)}\'')


def check_class_weight(input, weight, n_classes, prefix="", autocast=False):
    """``n_classes`` None: the input holds one shard of the classes (vocab parallel), whose total the op
    checks once it knows it."""
    if weight is None:
        return
    if weight.dim() != 1 or n_classes is not None and weight.numel() != n_classes:
        raise RuntimeError(
            f"{prefix}weight tensor should be defined either for all {n_classes} classes or no classes "
            f"but got weight tensor of shape: {_shape(weight)}")
    if weight.dtype != input.dtype and not autocast:  # under autocast torch casts both to float32
        raise RuntimeError(f"expected scalar type {c10_name(input.dtype)} but found {c10_name(weight.dtype)}")


def check_nll_nd(input, target, weight, autocast=False, sharded=False):
    """torch's nll_loss_nd / nll_loss / nll_loss2d checks for class-index targets."""
    dim, target_dim = input.dim(), target.dim()
    if dim == 2 and target_dim == 1 and input.shape[0] == target.shape[0]:
        pass  # (N, C) with (N,): the common case, every shape check below holds
    else:
        _check_nll_shapes(input, target, dim, target_dim)
    if weight is not None:
        n_classes = None if sharded else input.shape[-1] if dim <= 2 else input.shape[1]
        check_class_weight(input, weight, n_classes, autocast=autocast)
    # shapes first (ATen's meta checks), then the kernels' dtype dispatch
    if target.dtype is not torch.int64 and target.dtype is not torch.uint8:
        if input.is_cuda:  # torch's CUDA kernels dispatch on the target type
            raise NotImplementedError(
                f"\"nll_loss_forward_reduce_cuda_kernel_2d_index\" not implemented for '{c10_name(target.dtype)}'")
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {c10_name(target.dtype)}")
    if dim >= 3 and target.dtype is torch.uint8:
        # (N, C, d1..dk) inputs run as nll_loss2d, which reads the targets as int64 only (its checks accept
        # uint8, its kernels do not)
        raise RuntimeError("expected scalar type Long but found Byte")
    check_floating_input(input, "nll_loss_out_frame")


def _check_nll_shapes(input, target, dim, target_dim):
    if dim < 1:
        raise ValueError(f"Expected 1 or more dimensions (got {dim})")
    if dim != 1 and (target_dim == 0 or input.shape[0] != target.shape[0]):
        target_batch = target.shape[0] if target_dim else 0
        raise ValueError(
            f"Expected input batch_size ({input.shape[0]}) to match target batch_size ({target_batch}).")
    if dim == 1 and target_dim == 1 and target.shape[0] != 1:
        raise ValueError(f"For 1D input, 1D target must have size 1, but got target size: {target.shape[0]}")
    if dim <= 2:
        if target_dim > 1:
            raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
        no_batch_dim = dim == 1  # target () or (1,), checked above
        if not no_batch_dim and input.shape[0] != target.shape[0]:
            raise RuntimeError(f"size mismatch (got input: {_shape(input)}, target: {_shape(target)})")
    elif dim == 4:
        if target_dim != 3:
            raise RuntimeError("only batches of spatial targets supported (3D tensors) but got targets of "
                               f"dimension: {target_dim}")
        if (input.shape[0], input.shape[2], input.shape[3]) != tuple(target.shape):
            raise RuntimeError("input and target batch or spatial sizes don't match: target "
                               f"{_shape(target)}, input {_shape(input)}")
    elif tuple(target.shape[1:]) != tuple(input.shape[2:]):
        expected = [input.shape[0], *input.shape[2:]]
        raise RuntimeError(f"Expected target size {expected}, got {_shape(target)}".replace(",]", "]"))


def check_cross_entropy(input, target, weight, ignore_index, label_smoothing, autocast=False, sharded=False,
                        reduction=None):
    """torch's cross_entropy_loss checks. Returns True for probability targets, False for class indices.
    (The devices were checked by the dispatcher.) ``input`` needs only ``shape``, ``dim()``, ``dtype``,
    ``is_floating_point()`` and ``is_cuda`` (linear_cross_entropy passes its logits' shape). ``sharded``:
    the input holds one block of the classes (vocab parallel). ``reduction`` (when given): also the error
    torch's computation raises for this reduction."""
    if not isinstance(input, LogitsShape):
        check_tensor("input", input)
    check_tensor("target", target)
    if input.shape == target.shape:
        if not target.is_floating_point():
            raise RuntimeError("Expected floating point type for target with class probabilities, got "
                               f"{c10_name(target.dtype)}")
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        if input.dim() == 0:
            raise IndexError("Dimension specified as 1 but tensor has no dimensions")
        n_classes = None if sharded else input.shape[0 if input.dim() == 1 else 1]
        check_class_weight(input, weight, n_classes, prefix="cross_entropy: ", autocast=autocast)
        check_label_smoothing(label_smoothing)
        check_floating_input(input, "log_softmax_lastdim_kernel_impl")
        return True
    check_label_smoothing(label_smoothing)
    if input.dim() == 0:
        raise IndexError("Dimension specified as 0 but tensor has no dimensions")
    check_floating_input(input, "log_softmax_lastdim_kernel_impl")
    check_nll_nd(input, target, weight, autocast, sharded)
    if (reduction == "mean" and label_smoothing and weight is not None and target.dtype is torch.uint8
            and not sharded):
        # torch's smoothed 'mean' gathers the targets' class weights for its denominator: int64 indices only
        raise RuntimeError("gather(): Expected dtype int32/int64 for index")
    return False


_LOSS_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_loss_dtype(loss_dtype, name="loss_dtype"):
    """fusedloss's ``loss_dtype`` extra (log_probs' ``dtype``): None or a floating dtype (an integer "loss"
    would be rounded)."""
    if loss_dtype is not None and loss_dtype not in _LOSS_DTYPES:
        raise TypeError(f"{name} must be None or a floating dtype ({', '.join(map(str, _LOSS_DTYPES))}), "
                        f"got {loss_dtype!r}")


def check_logit_scale(logit_scale, name="logit_scale"):
    """The linear functions' ``logit_scale``: a finite real number (a Python number or a 0-d tensor's value
    is not read: a tensor would need a host sync). Returns it as a float."""
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, numbers.Real):
        raise TypeError(f"{name} must be a real number (a Python float or int), got {type(logit_scale).__name__}")
    if not -math.inf < logit_scale < math.inf:  # comparisons, not math.isfinite: Dynamo traces these
        raise ValueError(f"{name} must be finite, got {logit_scale}")
    return float(logit_scale)


def check_softcap(softcap, name="softcap"):
    """The linear distribution functions' ``softcap``: None or a positive finite real number. Returns it as a
    float (or None)."""
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"{name} must be None or a positive real number, got {type(softcap).__name__}")
    if not 1e-30 < softcap < 1e30:  # the kernels take it and 1 / it in float32; NaN fails too
        raise ValueError(f"{name} must be None or a positive number between 1e-30 and 1e30, got {softcap}")
    return float(softcap)


def check_label_smoothing(label_smoothing):
    if label_smoothing and label_smoothing > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")


def check_class_targets(target, n_classes, ignore_index, name=None):
    """Host-side check of class-index values (where it costs no GPU sync: fusedloss.functional._common.
    values_checked_here). IndexError: torch's message for a loss's target, or one naming ``name``
    (fusedloss's own functions: ``tokens``, ``labels``)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
    if bool(bad.any()):
        value = int(target[bad].flatten()[0])
        if name is None:
            raise IndexError(f"Target {value} is out of bounds.")
        raise IndexError(f"{name} holds {value}, outside [0, {n_classes}) and not ignore_index ({ignore_index})")


def warn_size_mismatch(input, target, op):
    """torch's UserWarning for a target whose size differs from the input's (it then broadcasts)."""
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.", stacklevel=3)


# ----------------------------------------------------------------------------------------------------
# pointwise family (torch.nn.functional's Python checks and ATen's, in torch's order and words)
# ----------------------------------------------------------------------------------------------------

def check_same_size(input, target, op):
    """binary_cross_entropy(_with_logits): a target of another size is a ValueError (no broadcasting)."""
    if target.size() == input.size():
        return
    if op == "binary_cross_entropy":
        raise ValueError(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}) is "
            "deprecated. Please ensure they have the same size.")
    raise ValueError(f"Target size ({target.size()}) must be the same as input size ({input.size()})")


class BroadcastError(RuntimeError):
    """Shapes that do not broadcast. The dispatcher raises torch's own error for the call in its place
    (``torch_broadcast_error``: the message torch's elementwise ops give, naming the operands in the
    order torch's function combines them)."""


def broadcast_shapes(*shapes):
    """``torch.broadcast_shapes`` (a ``BroadcastError``, a RuntimeError, where they do not broadcast),
    without its cost (~13 us on this CPU) when every shape is the first's."""
    first = shapes[0]
    for shape in shapes:
        if shape != first:
            try:
                return torch.broadcast_shapes(*shapes)
            except RuntimeError as error:
                raise BroadcastError(str(error)) from None
    return torch.Size(first)


def _mismatch(a, b):
    """ATen's infer_size message for shapes a and b (dimensions compared from the last), or None."""
    ndim = max(len(a), len(b))
    for i in range(ndim - 1, -1, -1):
        offset = ndim - 1 - i
        size_a = a[len(a) - 1 - offset] if len(a) - 1 - offset >= 0 else 1
        size_b = b[len(b) - 1 - offset] if len(b) - 1 - offset >= 0 else 1
        if size_a != size_b and size_a != 1 and size_b != 1:
            return (f"The size of tensor a ({size_a}) must match the size of tensor b ({size_b}) at non-singleton "
                    f"dimension {i}")
    return None


def torch_broadcast_error(args, order):
    """The RuntimeError torch's function raises for arguments whose shapes do not broadcast, or None.
    ``order``: the elementwise operations in the order torch's function runs them, each a pair (a, b) of
    argument positions (an int; a tuple of positions: the broadcast shape of those, an earlier result;
    or a callable of the arguments returning a shape), the first that fails being torch's error (e.g. kl_div's ``target * (log target - input)``:
    (1, 0))."""
    def shape_of(position):
        if callable(position):
            return tuple(position(args))
        if isinstance(position, int):
            tensor = args[position]
            return tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
        shapes = [shape_of(p) for p in position]
        return tuple(torch.broadcast_shapes(*(s for s in shapes if s is not None)))

    for a, b in order:
        shape_a, shape_b = shape_of(a), shape_of(b)
        if shape_a is None or shape_b is None:
            continue
        message = _mismatch(shape_a, shape_b)
        if message is not None:
            return RuntimeError(message)
    return None


def check_broadcasts_to_input(input, *tensors):
    """Tensors that torch combines into an output of the input's shape: broadcastable, and not larger."""
    shape = broadcast_shapes(input.shape, *(t.shape for t in tensors if t is not None))  # RuntimeError
    if shape != input.shape:
        raise RuntimeError(f"output with shape {_shape(input)} doesn't match the broadcast shape "
                           f"[{', '.join(str(s) for s in shape)}]")


def check_bce_weight(input, target, weight):
    """F.binary_cross_entropy expands the weight to broadcast(target, weight), then ATen needs the input's shape."""
    if weight is not None:
        check_broadcasts_to_input(input, weight.expand(broadcast_shapes(target.size(), weight.size())))


def check_not_differentiable(op, name, tensor):
    """ATen's error for a gradient asked of an argument its derivative formula does not cover."""
    if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"The function '{op}' is not differentiable with respect to argument '{name}'. "
                           "This input cannot have requires_grad True.")


def check_weight_size(input, target, weight):
    """l1_loss, mse_loss, huber_loss: the weight must have the input's size, checked after torch broadcasts
    the input and target (a RuntimeError first where they do not broadcast)."""
    if weight is not None and weight.size() != input.size():
        broadcast_shapes(input.shape, target.shape)
        raise ValueError("Weights and input must have the same size.")


def check_weighted_reduction(weight, reduction):
    """l1_loss, mse_loss, huber_loss with a weight: torch reduces in Python and knows only 'none', 'mean' and
    'sum' (``reduction`` as given, after the legacy mapping: the deprecated alias 'elementwise_mean', which
    the unweighted losses take as 'mean', raises there)."""
    if weight is not None and reduction not in ("none", "mean", "sum"):
        raise ValueError(f"Invalid reduction mode: {reduction}. Expected one of 'none', 'mean', 'sum'.")


def check_beta(beta):
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")


def check_delta(delta):
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")


def check_same_dim(input1, input2, target):
    if input1.dim() != input2.dim() or input1.dim() != target.dim():
        raise RuntimeError(
            "margin_ranking_loss : All input tensors should have same dimension but got sizes: "
            f"input1: {input1.size()}, input2: {input2.size()}, target: {target.size()} ")


def kl_div_reduction(size_average, reduce, reduction):
    """F.kl_div's reduction: legacy arguments mapped, 'batchmean' allowed, and its warning for 'mean'."""
    if size_average is not None or reduce is not None:
        return _reduction.legacy_get_string(size_average, reduce)
    if reduction == "mean":
        warnings.warn(
            "reduction: 'mean' divides the total loss by both the batch size and the support size."
            "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
            "'mean' will be changed to behave the same as 'batchmean' in the next major release.",
            stacklevel=3)
    if reduction != "batchmean":
        # ValueError "<x> is not a valid value for reduction"; 'elementwise_mean' is 'mean' (torch's alias)
        return _REDUCTION_NAMES[_reduction.get_enum(reduction)]
    return reduction


def gaussian_nll_var(input, var, check_values=False):
    """F.gaussian_nll_loss's checks of var. Returns var (unsqueezed when one dimension short), or the float.

    A negative entry of a var tensor is a host value check in torch: on the Triton path it gives NaN
    (the kernel), and raises here only with ``check_values`` (debug mode).
    """
    if isinstance(var, float):
        if var < 0:
            raise ValueError("var has negative entry/entries")
        return var
    if not isinstance(var, torch.Tensor):
        raise TypeError(f"var must be a Tensor or a float, not {type(var).__name__}")
    if check_values and bool((var < 0).any()):
        raise ValueError("var has negative entry/entries")
    if var.size() != input.size():
        if input.size()[:-1] == var.size():
            var = torch.unsqueeze(var, -1)
        elif not (input.ndim == var.ndim
                  and sum(v for i, v in zip(input.size(), var.size()) if i != v) == 1):
            raise ValueError("var is of incorrect size")
    return var


def check_three_reductions(reduction, message):
    """gaussian_nll_loss and sigmoid_focal_loss accept only 'none', 'mean' and 'sum', checked in Python."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(message)


def check_unit_interval(tensor, name):
    """Host-side check of BCE values (debug mode only: it synchronises), torch's CPU error."""
    if not bool(((tensor >= 0) & (tensor <= 1)).all()):
        raise RuntimeError(f"all elements of {name} should be between 0 and 1")


# ----------------------------------------------------------------------------------------------------
# linear_cross_entropy (torch 2.13's Python checks, in its order and words; then cross entropy's on the
# logits' shape)
# ----------------------------------------------------------------------------------------------------

class LogitsShape:
    """What cross entropy's checks read of linear_cross_entropy's logits: their shape and dtype. No tensor
    of N x C elements is made for it, not even on the meta device."""

    __slots__ = ("shape", "dtype", "is_cuda")

    def __init__(self, shape, dtype, is_cuda):
        self.shape, self.dtype, self.is_cuda = torch.Size(shape), dtype, is_cuda

    def dim(self):
        return len(self.shape)

    def is_floating_point(self):
        return self.dtype.is_floating_point


def check_linear_cross_entropy(input, linear_weight, target, linear_bias, ignore_index):
    """torch.nn.functional.linear_cross_entropy's checks before its linear. Returns (the logits' shape,
    whether the target holds probabilities, ignore_index with torch's default -100 for None)."""
    for name, value in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        check_tensor(name, value)
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError(f"expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}")
    in_features = input.shape[-1]
    if in_features != linear_weight.shape[-1]:
        raise RuntimeError(
            "expected equal input and linear_weight last dimensions (in_features), "
            f"got {input.shape[-1]} and {linear_weight.shape[-1]}, respectively")
    n_classes, out_features = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (n_classes, *out_features):
        raise RuntimeError(f"expected linear_bias shape {(n_classes, *out_features)}, got {tuple(linear_bias.shape)}")
    if out_features and input.dim() == 1:
        raise RuntimeError(
            f"K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} requires"
            f" batched input, (N, {in_features}), got unbatched input with shape {tuple(input.shape)}")
    logits_shape = (*input.shape[:-1], n_classes, *out_features)
    prob_target = tuple(target.shape) == logits_shape
    if prob_target and ignore_index is not None:
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")
    return logits_shape, prob_target, -100 if ignore_index is None else ignore_index


# ----------------------------------------------------------------------------------------------------
# row-margin family (torch.nn.functional's Python checks, then ATen's (LossMultiMargin.cpp,
# LossMultiLabelMargin.cpp, Loss.cpp, Distance.cpp), in torch's order and words)
# ----------------------------------------------------------------------------------------------------

def linear_cross_entropy_chunk_rows(options, input=None, weight=None, chunked=True, op="linear_cross_entropy"):
    """The rows per chunk that ``options`` ask for (0: the memory budget's), for the fused chunked paths.

    ``options`` is a ``torch.nn.LinearCrossEntropyOptions`` (``fusedloss.nn``'s stand-in on torches without
    it). With torch's class, where torch's chunked path would take the options (``chunked``), they are
    resolved as torch resolves them (``_adjust``: torch's ValueError for inconsistent options) and torch's
    accumulation rule applies (its RuntimeError for an acc_dtype it rejects; the fused path accumulates 16-bit
    operands in float32 in any case): an explicit ``batch_chunk_size``, or the size an explicit
    ``chunking_method`` computes, is the rows per chunk; "auto" leaves the fused path's memory budget.
    Anything else raises AttributeError, as torch's chunked path does, with a clear message."""
    if options is None:
        return 0
    if not hasattr(options, "batch_chunk_size"):
        raise AttributeError(f"{op}: options must be None or a LinearCrossEntropyOptions "
                             f"(torch.nn's, or fusedloss.nn's on a torch without it), got {type(options).__name__}")
    rows = options.batch_chunk_size
    if rows is not None and not (isinstance(rows, int) and not isinstance(rows, bool) and rows > 0):
        raise ValueError(f"batch_chunk_size must be positive int or None, got {rows!r}")
    adjust = getattr(options, "_adjust", None)
    if adjust is None or not chunked or input is None:
        return rows or 0
    resolved = adjust(num_batches=max(math.prod(input.shape[:-1]), 1), in_features=input.shape[-1],
                      num_classes=weight.shape[0], dtype=input.dtype, device=input.device)
    dtype, acc_dtype = input.dtype, resolved.acc_dtype
    if dtype != acc_dtype and not (dtype in (torch.float16, torch.bfloat16) and acc_dtype == torch.float32):
        raise RuntimeError("linear_cross_entropy supports float32 acc_dtype with float16/bfloat16 inputs, but got "
                           f"{acc_dtype} acc_dtype and {dtype} inputs.")
    if rows is not None or options.chunking_method not in (None, "auto"):
        return resolved.batch_chunk_size
    return 0


def _check_class_scores(input):
    """multi_margin_loss, multilabel_margin_loss: a non-empty (C) or (N, C) input, or a 0-d one."""
    dim = input.dim()
    if not ((dim == 2 and input.shape[1] != 0) or (dim == 1 and input.shape[0] != 0) or dim == 0):
        raise RuntimeError(f"Expected non-empty vector or matrix with optional 0-dim batch size, but got: {_shape(input)}")


def _check_long(target):
    if target.dtype != torch.int64:
        raise RuntimeError(f"expected scalar type Long but found {c10_name(target.dtype)}")


def check_multi_margin(input, target, p, weight, autocast=False):
    check_tensor("input", input)
    check_tensor("target", target)
    if p != 1 and p != 2:
        raise ValueError("only p == 1 and p == 2 supported")
    if weight is not None and weight.dim() != 1:
        raise ValueError("weight must be one-dimensional")
    _check_class_scores(input)
    n_frames = input.shape[0] if input.dim() == 2 else 1
    if target.dim() > 1 or target.numel() != n_frames:
        raise RuntimeError(
            "multi_margin_loss: target tensor should be 1-D with size equal to the number of input samples (batch "
            f"size). Expected target size [{n_frames}], but got {_shape(target)}. Input has shape {_shape(input)}.")
    n_classes = input.shape[-1] if input.dim() else 1
    if weight is not None and weight.numel() != n_classes:
        raise RuntimeError(f"inconsistent weight size, expected {n_classes} but got {_shape(weight)}")
    check_floating_input(input, "multi_margin_loss_cpu_kernel")
    _check_long(target)
    if weight is not None and weight.dtype != input.dtype and not autocast:
        raise RuntimeError(f"expected scalar type {c10_name(input.dtype)} but found {c10_name(weight.dtype)}")


def check_multilabel_margin(input, target):
    check_tensor("input", input)
    check_tensor("target", target)
    _check_class_scores(input)
    if input.dim() <= 1:
        consistent = target.dim() <= 1 and target.numel() == (input.shape[0] if input.dim() else 1)
    else:
        consistent = target.dim() == 2 and target.shape == input.shape
    if not consistent:
        raise RuntimeError(f"inconsistent target size: {_shape(target)} for input of size: {_shape(input)}")
    check_floating_input(input, "multilabel_margin_loss_forward_out_frame")
    _check_long(target)


def check_margin_targets(target, n_classes, multilabel):
    """Host-side check of class indices (debug mode only: it synchronises): multi_margin_loss needs each
    in [0, C), multilabel_margin_loss every entry of its target tensor in [-1, C) (torch's CPU errors)."""
    low = -1 if multilabel else 0
    if bool(((target < low) | (target >= n_classes)).any()):
        raise RuntimeError("argument #2 'target' is out of range" if multilabel else "target out of range")


def check_multilabel_soft_margin(input, target, weight):
    """F.multilabel_soft_margin_loss's composite: the target and weight combine with the input by
    broadcasting (a bool target cannot be subtracted), and the class dimension is the input's last."""
    check_tensor("input", input)
    check_floating_input(input, "log_sigmoid_cpu")
    broadcast_shapes(input.shape, target.shape)  # RuntimeError, as the product in torch
    if target.dtype == torch.bool:
        raise RuntimeError("Subtraction, the `-` operator, with a bool tensor is not supported. If you are trying to "
                           "invert a mask, use the `~` or `logical_not()` operator instead.")
    if weight is not None:
        broadcast_shapes(input.shape, target.shape, weight.shape)
    if input.dim() == 0:
        raise IndexError("Dimension specified as -1 but tensor has no dimensions")


def check_cosine_embedding(input1, input2, target):
    for name, t in (("input1", input1), ("input2", input2), ("target", target)):
        check_tensor(name, t)
    target_dim = target.dim()
    if target_dim != 0 and target_dim != 1:
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    if target_dim == 1 and (input1.dim() != 2 or input2.dim() != 2):
        raise RuntimeError("1D target tensor expects 2D input tensors, but found inputs with sizes "
                           f"{_shape(input1)} and {_shape(input2)}.")
    if target_dim == 0 and (input1.dim() != 1 or input2.dim() != 1):
        raise RuntimeError("0D target tensor expects 1D input tensors, but found inputs with sizes "
                           f"{_shape(input1)} and {_shape(input2)}.")
    shape = broadcast_shapes(input1.shape, input2.shape)  # RuntimeError
    if target_dim:
        broadcast_shapes(shape[:1], target.shape)


def check_triplet(anchor, positive, negative, margin):
    """triplet_margin_loss / triplet_margin_with_distance_loss after their reduction check."""
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    for name, t in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        check_tensor(name, t)
    a_dim, p_dim, n_dim = anchor.dim(), positive.dim(), negative.dim()
    if not (a_dim == p_dim and p_dim == n_dim):
        raise RuntimeError(
            "The anchor, positive, and negative tensors are expected to have the same number of dimensions, but "
            f"got: anchor {a_dim}D, positive {p_dim}D, and negative {n_dim}D inputs")
    broadcast_shapes(anchor.shape, positive.shape, negative.shape)  # RuntimeError, as the distances


def check_reduction_name(reduction):
    """triplet_margin_with_distance_loss checks its reduction in Python (no legacy arguments)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")


def check_pairwise(x1, x2):
    check_tensor("x1", x1)
    check_tensor("x2", x2)
    return broadcast_shapes(x1.shape, x2.shape)  # RuntimeError


def check_cosine_similarity(x1, x2, dim):
    """torch's cosine_similarity: a floating common dtype, broadcastable inputs, then ``dim`` of the
    broadcast shape. Returns ``dim`` wrapped to [0, ndim)."""
    check_tensor("x1", x1)
    check_tensor("x2", x2)
    if not x1.is_floating_point() and not x2.is_floating_point():
        common = torch.promote_types(x1.dtype, x2.dtype)
        raise RuntimeError(f"expected common dtype to be floating point, yet common dtype is {c10_name(common)}")
    ndim = len(broadcast_shapes(x1.shape, x2.shape))
    low, high = (-ndim, ndim - 1) if ndim else (-1, 0)
    if not low <= dim <= high:
        raise IndexError(f"Dimension out of range (expected to be in range of [{low}, {high}], but got {dim})")
    return dim % ndim if ndim else 0


def check_rank_groups(name, y_pred, y_true, num_neg, labels=False):
    """The ranking losses' batch layout: y_pred (B * (num_neg + 1), 1), groups of one positive followed by
    num_neg negatives; with ``labels`` y_true has y_pred's shape."""
    check_tensor("y_pred", y_pred)
    if isinstance(num_neg, bool) or not isinstance(num_neg, int) or num_neg < 1:
        raise ValueError(f"{name}: num_neg must be an integer >= 1, got {num_neg!r}")
    group = num_neg + 1
    if y_pred.dim() != 2 or y_pred.shape[1] != 1:
        raise ValueError(f"{name}: y_pred must have shape (batch * (num_neg + 1), 1), got {tuple(y_pred.shape)}")
    if y_pred.shape[0] % group:
        raise ValueError(f"{name}: y_pred has {y_pred.shape[0]} rows, which is not a multiple of the group size "
                         f"num_neg + 1 = {group} (each group is one positive followed by num_neg negatives)")
    if labels:
        check_tensor("y_true", y_true)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"{name}: y_true must have y_pred's shape {tuple(y_pred.shape)}, got "
                             f"{tuple(y_true.shape)}")


# ------------------------------------------------------------------ distillation and token log-probabilities
# (fusedloss's own functions: the checks torch's composite formulas would make, as clear errors)

JSD_REDUCTIONS = ("none", "batchmean", "sum", "mean")


def check_positive_temperature(temperature):
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")


def check_mixture_beta(beta_value):
    """The generalized JSD's beta: a number in [0, 1] (0: forward KL, 1: reverse KL)."""
    if not isinstance(beta_value, (int, float)) or isinstance(beta_value, bool) or not 0 <= beta_value <= 1:
        raise ValueError(f"beta must be a number in [0, 1], got {beta_value!r}")


def _check_class_indices(name, tensor, shape, op):
    check_tensor(name, tensor)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise RuntimeError(f"{op}: {name} must hold class indices (an integer tensor), got {c10_name(tensor.dtype)}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} of shape {_shape(tensor)} must have the logits' leading shape "
                         f"[{', '.join(map(str, shape))}]")


def _check_logits(name, tensor, op):
    check_tensor(name, tensor)
    if not tensor.is_floating_point():
        raise RuntimeError(f"{op}: {name} must be floating point, got {c10_name(tensor.dtype)}")
    if tensor.dim() == 0 or tensor.shape[-1] == 0:
        raise ValueError(f"{op}: {name} needs a non-empty last (class) dimension, got shape {_shape(tensor)}")


def check_jsd(input, target, indices, labels, beta_value, temperature, ignore_index, reduction,
              op="jsd_loss", target_name="target"):
    """jsd_loss's arguments: student logits (..., V); the teacher's logits of the same shape, or its
    top-k (log-probabilities (..., K), classes (..., K)) with beta 0; labels (...) or None."""
    _check_logits("input", input, op)
    check_mixture_beta(beta_value)
    check_positive_temperature(temperature)
    if reduction not in JSD_REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction (expected one of "
                         f"{', '.join(JSD_REDUCTIONS)})")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    lead = tuple(input.shape[:-1])
    if indices is None:
        _check_logits(target_name, target, op)
        if target.shape != input.shape:
            raise ValueError(f"{op}: {target_name} of shape {_shape(target)} must have the input's shape "
                             f"{_shape(input)}")
    else:
        if beta_value != 0:
            raise ValueError(f"{op}: a top-k teacher (log-probabilities, classes) takes beta=0 (the forward KL over "
                             f"the teacher's support), got beta={beta_value}")
        _check_logits(f"{target_name}'s log-probabilities", target, op)
        if tuple(target.shape[:-1]) != lead:
            raise ValueError(f"{op}: the top-k log-probabilities of shape {_shape(target)} must have the input's "
                             f"leading shape [{', '.join(map(str, lead))}]")
        _check_class_indices("top-k classes", indices, target.shape, op)
    if labels is not None:
        _check_class_indices("labels", labels, lead, op)
    check_same_device(*(t for t in (input, target, indices, labels) if t is not None))


def check_log_probs(input, tokens, temperature, ignore_index, op="log_probs"):
    _check_logits("input", input, op)
    check_positive_temperature(temperature)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    _check_class_indices("tokens", tokens, input.shape[:-1], op)
    check_same_device(input, tokens)


def check_distribution_targets(indices, labels, n_classes, ignore_index, hard):
    """Host-side check of class values (FUSEDLOSS_DEBUG only: it synchronises): top-k classes in [0, V),
    and with a hard target (or for tokens) labels in [0, V) unless ``ignore_index``."""
    if indices is not None:
        bad = (indices < 0) | (indices >= n_classes)
        if labels is not None:  # an ignored row's classes are not read
            bad = bad & (labels != ignore_index).unsqueeze(-1)
        if bool(bad.any()):
            raise IndexError(f"the top-k teacher's classes hold {int(indices[bad].flatten()[0])}, outside "
                             f"[0, {n_classes})")
    if hard and labels is not None:
        check_class_targets(labels, n_classes, ignore_index, "labels")


def _check_head(op, prefix, input, weight, bias):
    """An LM head's operands: hidden states (..., H), weight (V, H), bias (V,) or None."""
    _check_logits(f"{prefix}input", input, op)
    check_tensor(f"{prefix}weight", weight)
    if weight.dim() != 2 or weight.shape[1] != input.shape[-1]:
        raise RuntimeError(f"{op}: {prefix}weight of shape {_shape(weight)} must be (V, {input.shape[-1]}) for "
                           f"{prefix}input of shape {_shape(input)}")
    if weight.shape[0] == 0:
        raise ValueError(f"{op}: {prefix}weight has no rows (an empty vocabulary)")
    if bias is not None:
        check_tensor(f"{prefix}bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise RuntimeError(f"{op}: {prefix}bias of shape {_shape(bias)} must be ({weight.shape[0]},)")


def check_distillation_weights(hard_weight, soft_weight):
    for name, value in (("hard_weight", hard_weight), ("soft_weight", soft_weight)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -math.inf < value < math.inf:
            raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_linear_jsd(input, weight, teacher_input, teacher_weight, labels, bias, teacher_bias, beta_value,
                     temperature, ignore_index, hard_weight, soft_weight, reduction, drop_teacher_extra_classes,
                     op="linear_jsd_loss"):
    """linear_jsd_loss's arguments. Returns the teacher's (weight, bias), its extra classes dropped when
    asked for (a padded vocabulary)."""
    _check_head(op, "", input, weight, bias)
    _check_head(op, "teacher_", teacher_input, teacher_weight, teacher_bias)
    if tuple(teacher_input.shape[:-1]) != tuple(input.shape[:-1]):
        raise ValueError(f"{op}: teacher_input of shape {_shape(teacher_input)} must have the input's leading shape "
                         f"[{', '.join(map(str, input.shape[:-1]))}]")
    check_mixture_beta(beta_value)
    check_positive_temperature(temperature)
    check_distillation_weights(hard_weight, soft_weight)
    if reduction not in JSD_REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction (expected one of "
                         f"{', '.join(JSD_REDUCTIONS)})")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if labels is not None:
        _check_class_indices("labels", labels, input.shape[:-1], op)
    elif hard_weight:
        raise ValueError(f"{op}: hard_weight={hard_weight} needs labels (the hard loss's targets)")
    n_student, n_teacher = weight.shape[0], teacher_weight.shape[0]
    if n_teacher != n_student:
        if n_teacher < n_student or not drop_teacher_extra_classes:
            raise ValueError(f"{op}: the student's vocabulary has {n_student} classes and the teacher's {n_teacher}; "
                             + ("pass drop_teacher_extra_classes=True to drop the teacher's classes past the "
                                f"student's (a padded vocabulary)" if n_teacher > n_student else
                                "a teacher with fewer classes than the student is not served"))
        teacher_weight = teacher_weight[:n_student]
        teacher_bias = teacher_bias[:n_student] if teacher_bias is not None else None
    check_same_device(*(t for t in (input, weight, bias, teacher_input, teacher_weight, teacher_bias, labels)
                        if t is not None))
    return teacher_weight, teacher_bias


def check_linear_log_probs(input, weight, tokens, bias, temperature, ignore_index, op="linear_log_probs"):
    _check_head(op, "", input, weight, bias)
    check_positive_temperature(temperature)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    _check_class_indices("tokens", tokens, input.shape[:-1], op)
    check_same_device(*(t for t in (input, weight, bias, tokens) if t is not None))


TOKEN_STATS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")  # log_probs' statistics, in output order


def check_token_stats(stats, with_entropy, op="log_probs"):
    """log_probs' / linear_log_probs' ``stats`` (names among TOKEN_STATS, TRL's ``outputs`` names; one name
    may be given as a string; None: none) with ``with_entropy`` (adds "entropy"): the names asked for, in
    TOKEN_STATS' order, each once. TypeError for a non-string name or a non-iterable; ValueError naming the
    option for an unknown name."""
    if stats is None or (type(stats) is tuple and not stats):  # the common call: nothing to check
        return ("entropy",) if with_entropy else ()
    if isinstance(stats, str):
        stats = (stats,)
    try:
        names = list(stats)
    except TypeError:
        raise TypeError(f"{op}: stats must be a sequence of names among {TOKEN_STATS}, got "
                        f"{type(stats).__name__}") from None
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{op}: stats must be names (strings) among {TOKEN_STATS}, got {type(name).__name__}")
        if name not in TOKEN_STATS:
            raise ValueError(f"{op}: stats takes names among {TOKEN_STATS}, got {name!r}")
    if with_entropy:
        names.append("entropy")
    return tuple(name for name in TOKEN_STATS if name in names)
