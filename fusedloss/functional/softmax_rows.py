"""Softmax rows: cross entropy and NLL (fusedloss.ops.softmax_rows)."""
import functools
from typing import Optional

import torch
from torch import Tensor

from .. import _dtensor, _validation as check
from .._torch import F
from .. import dispatch
from ..dispatch import Route
from ..ops import softmax_rows as softmax_rows_op
from ..ops import _eager, _vocab_parallel
from ..ops.softmax_rows import SoftmaxRowsOptions, softmax_rows_loss
from ._common import check_extras, out_dtype_of, require_classes


def _route(op, eager, fused, dtensor):
    """A softmax-rows loss's Route: input, target and weight at positions 0, 1, 2 (their devices decide);
    ``dtensor``: the call with DTensor arguments (fusedloss/_dtensor.py)."""
    return Route(op, eager, fused, softmax_rows_op.unsupported, (0, 1, 2), dtensor=dtensor)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    ignore_index: int = -100,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    inplace_backward: bool = False,
    grad_in_forward: bool = False,
    loss_dtype: Optional[torch.dtype] = None,
    process_group=None,
) -> Tensor:
    """``torch.nn.functional.cross_entropy``, fused (softmax + NLL in one pass over the logits).

    Keyword-only extras:
      z_loss: adds ``z_loss * lse**2`` per counted row (PaLM), weighted like that row's loss (by the
        target's class weight) and reduced with the same denominator. lse is the row's log-sum-exp.
      softcap: logits -> ``softcap * tanh(logits / softcap)`` before the softmax (Gemma 2).
      inplace_backward: on the Triton path, write the gradient into the logits' own buffer instead of a
        new one (saves N*C memory). The logits then hold their gradient after backward: only use it when
        nothing else reads them afterwards. No effect on the eager path nor under torch.compile.
      grad_in_forward: on the Triton path, compute the gradient in the forward pass, assuming
        grad_output == 1, and only rescale it in the backward (on the device) when grad_output is not 1.
        Forward+backward traffic: 1.0x the minimal when the loss is back-propagated as is, 2.0x when it is
        scaled first (loss scaling, loss / accumulation_steps); the default moves 1.5x either way. With
        ``inplace_backward`` too, the logits are overwritten by their gradient during the forward.
      loss_dtype: the dtype of the loss (default: the input's, or float32 under autocast). float32 with
        16-bit logits gives what ``cross_entropy(logits.float(), ...)`` gives (Hugging Face's causal-LM loss
        upcasts so) without the float32 copy of the logits: the kernels compute in float32 anyway; the
        gradient keeps the logits' dtype.
      process_group: vocabulary-parallel cross entropy over a ``torch.distributed`` group. The logits hold
        this rank's contiguous block of the classes (rank r the r-th block; sizes may differ, as
        ``torch.tensor_split`` makes them); target and ``weight`` are global (class indices and weights
        of every class; probability targets: this rank's block, like the logits). Every rank gets the
        global loss and the gradient of its block. Collectives: one all_reduce MAX and one all_reduce SUM
        of N floats each per call (2N or 4N for the SUM with smoothing or probabilities), none in the
        backward, plus one all_gather of the block sizes the first time a local size is seen (see
        fusedloss/ops/_vocab_parallel.py).
    """
    if process_group is not None:
        require_classes(process_group, input, 1)
    return dispatch.call(_CROSS_ENTROPY, input, target, weight, size_average, ignore_index, reduce, reduction,
                         label_smoothing, z_loss, softcap, inplace_backward, grad_in_forward, loss_dtype,
                         process_group)


def _eager_cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing,
                         z_loss, softcap, inplace_backward, grad_in_forward, loss_dtype, process_group):
    if loss_dtype is not None:
        check.check_loss_dtype(loss_dtype)
    if loss_dtype is not None and isinstance(input, Tensor) and loss_dtype != input.dtype:
        input = input.to(loss_dtype)  # the eager path's way to that dtype: torch computes in the input's
        weight = weight.to(loss_dtype) if isinstance(weight, Tensor) and weight.is_floating_point() else weight
    if not z_loss and softcap is None and process_group is None:
        return F.cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)
    check_extras(z_loss, softcap)
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    if process_group is not None:
        prob_target = check.check_cross_entropy(input, target, weight, ignore_index, label_smoothing,
                                                autocast=out_dtype_of("cross_entropy", input) != input.dtype,
                                                sharded=True)
        if input.dim() == 1 and not prob_target:
            target = target.reshape(())
        return _eager.vocab_parallel_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                                                   z_loss, softcap, _vocab_parallel.group_name(process_group))
    return _eager.eager_cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                                      softcap)


def _fused_cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing,
                         z_loss, softcap, inplace_backward, grad_in_forward, loss_dtype, process_group):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    if z_loss or softcap is not None:
        check_extras(z_loss, softcap)
    if loss_dtype is not None:
        check.check_loss_dtype(loss_dtype)
    out_dtype = out_dtype_of("cross_entropy", input) if loss_dtype is None else loss_dtype
    prob_target = check.check_cross_entropy(input, target, weight, ignore_index, label_smoothing,
                                            autocast=out_dtype != input.dtype, sharded=process_group is not None,
                                            reduction=reduction)
    if not prob_target:
        check.check_not_differentiable("nll_loss_forward", "weight", weight)
    if input.dim() == 1 and not prob_target:
        target = target.reshape(())  # torch takes a (1,) target for a (C,) input as a 0-d one
    if not prob_target and dispatch.debug_enabled() and process_group is None:
        check.check_class_targets(target, input.shape[0 if input.dim() == 1 else 1], ignore_index)
    if inplace_backward and softmax_rows_op.overlapping(input):
        inplace_backward = False  # one memory location per several logits can hold none of their gradients
    options = SoftmaxRowsOptions(  # positional: the fields in their order (cheaper than keywords)
        reduction, out_dtype, int(ignore_index), float(label_smoothing), float(z_loss),
        None if softcap is None else float(softcap), prob_target, False, bool(inplace_backward),
        bool(grad_in_forward), "" if process_group is None else _vocab_parallel.group_name(process_group))
    return softmax_rows_loss(input, target, weight, options)


_CROSS_ENTROPY = _route("cross_entropy", _eager_cross_entropy, _fused_cross_entropy,
                        functools.partial(_dtensor.cross_entropy, cross_entropy))


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    ignore_index: int = -100,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
) -> Tensor:
    """``torch.nn.functional.nll_loss``: ``-weight[y] * input[y]`` per row, gathered on the device."""
    return dispatch.call(_NLL, input, target, weight, size_average, ignore_index, reduce, reduction)


def _fused_nll_loss(input, target, weight, size_average, ignore_index, reduce, reduction):
    reduction = check.reduction_from_args(size_average, reduce, reduction)
    check.check_tensor("input", input)
    check.check_tensor("target", target)
    out_dtype = out_dtype_of("nll_loss", input)
    check.check_nll_nd(input, target, weight, autocast=out_dtype != input.dtype)
    check.check_not_differentiable("nll_loss_forward", "weight", weight)
    if input.dim() == 1:
        target = target.reshape(())  # torch takes a (1,) target for a (C,) input as a 0-d one
    if dispatch.debug_enabled():
        check.check_class_targets(target, input.shape[0 if input.dim() == 1 else 1], ignore_index)
    # positional (cheaper than keywords): reduction, out_dtype, ignore_index, label_smoothing, z_loss, softcap,
    # prob_target, input_is_logprob
    options = SoftmaxRowsOptions(reduction, out_dtype, int(ignore_index), 0.0, 0.0, None, False, True)
    return softmax_rows_loss(input, target, weight, options)


_NLL = _route("nll_loss", F.nll_loss, _fused_nll_loss, _dtensor.nll_loss)
