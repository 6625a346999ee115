"""The op scaffold: what every kernel family needs once.

A family (softmax rows, pointwise, ...) is an object with
  ``name``                  its op name ("softmax_rows")
  ``forward(options, inputs, needs_grad) -> (out, state)``
                            one kernel launch: the loss (reduced on the device) and the tensors its
                            backward needs (``state``: a tuple, None entries allowed); gradients asked
                            for by ``needs_grad`` may already be in ``state`` (written for grad_output 1)
  ``backward(options, inputs, state, grad_output, needs_grad, in_place) -> grads``
                            at most one launch per gradient. ``state`` is a list; with ``in_place`` the
                            backward may write into its buffers (and, with the caller's opt-in, into
                            the input's) and take them, setting the entry to None: a second backward
                            through the same graph then finds None and recomputes
  ``reference(options, *inputs) -> loss``
                            the same loss in differentiable eager torch ops (the second-order path)
  ``assert_inputs_intact(options, state)``
                            raises if an opt-in in-place write overwrote the inputs (then neither a
                            second backward nor the reference can read them)
  ``fake(options, inputs, needs_grad) -> (out, state)``
                            empty tensors of the right shapes and dtypes (torch.compile's fake impl)
  ``compile_options(options) -> options``
                            the options the registered ops get (they own no buffers across calls)
(``Family`` below gives the last two for a family that never writes into the caller's tensors)
and the scaffold calls it in one of three ways, with the same kernels and math:

  eager                     ``_EagerLoss``: an old-style autograd.Function, the cheapest (a
                            setup_context-style Function binds its arguments with inspect on every call:
                            ~40 us more on this CPU)
  torch.func transforms     ``_FunctorchLoss``: setup_context and a vmap rule (one call per slice)
  torch.compile             a ``torch.library.custom_op`` pair per family (forward, backward) with fake
                            implementations and ``register_autograd``; opaque to Inductor, traced by
                            Dynamo with fullgraph and dynamic shapes (a ``triton_op`` does not trace
                            under Triton's interpreter, the CPU test path)

Second-order gradients. When the backward runs with grad mode on (``create_graph=True``, and always
under torch.func), the gradient is computed as the vector-Jacobian product of ``reference`` through
``torch.func.vjp``: differentiable by autograd and by functorch, so gradient penalties and Hessians are
exact. Otherwise the fused backward runs.
"""
import importlib
import typing

import torch

# ----------------------------------------------------------------------------------------------------
# torch's reduction semantics
# ----------------------------------------------------------------------------------------------------



def reduction_divisor(reduction, n_elements, batch):
    """The divisor of a reduced loss: the element count for 'mean', the batch for 'batchmean', else 1.
    (A weighted mean divides by a device tensor instead: see the families.)"""
    if reduction == "mean":
        return n_elements
    if reduction == "batchmean":
        return batch
    return 1


class Family:
    """Defaults for a family whose registered ops take its options as they are and which never writes
    into the caller's tensors (families with opt-in in-place writes override both)."""

    @staticmethod
    def compile_options(options):
        return options

    @staticmethod
    def assert_inputs_intact(options, state):
        """Nothing of the caller's is ever overwritten."""


def lazy_kernels(family):
    """A function returning ``fusedloss.kernels.<family>``, imported on its first call (the first Triton-backed
    call: the module imports Triton), then kept: one attribute read per call after that."""
    module = None

    def kernels():
        nonlocal module
        if module is None:
            module = importlib.import_module("fusedloss.kernels." + family)
        return module

    kernels.__doc__ = f"fusedloss.kernels.{family}, imported on the first Triton-backed call (it imports Triton)."
    return kernels


def accumulation_dtype(dtype):
    """The dtype the kernels accumulate in (and write a broadcast operand's full-shape gradient in)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sum_to_operand(grad, operand):
    """A gradient written over the broadcast shape, summed down to a broadcast operand's shape (a
    fixed-order torch reduction) in its dtype; the gradient itself when the shapes agree."""
    if grad.shape == operand.shape:
        return grad
    return grad.sum_to_size(operand.shape).to(operand.dtype)


# ----------------------------------------------------------------------------------------------------
# autocast: torch's policy per loss (the kernels read 16-bit inputs and compute in float32 anyway, so
# following it costs no copy: only the output dtype changes)
# ----------------------------------------------------------------------------------------------------

# losses torch runs in float32 under autocast, per device type (ATen's autocast lists; composite losses
# inherit it from their ops: cross_entropy from log_softmax and nll_loss, gaussian_nll_loss on CUDA from
# log and pow, torchvision's sigmoid_focal_loss from binary_cross_entropy_with_logits). Checked against
# torch by tests/test_ecosystem.py on every device it runs on.
# Row-margin family: the CPU entries were checked by running torch's functions under
# torch.autocast("cpu", dtype=torch.bfloat16) (multilabel_soft_margin_loss, pairwise_distance,
# cosine_similarity and triplet_margin_with_distance_loss stay 16-bit there). The CUDA entries follow
# torch's documented CUDA float32 list and were not run on a GPU (none was available): multi_margin_loss,
# multilabel_margin_loss, cosine_embedding_loss, triplet_margin_loss, cosine_similarity are on it;
# pairwise_distance and triplet_margin_with_distance_loss through norm, multilabel_soft_margin_loss through
# sum, rank_cross_entropy_loss through softmax, rank_hinge_loss through margin_ranking_loss.
_AUTOCAST_FLOAT32 = {
    "cuda": {"cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "smooth_l1_loss", "huber_loss",
             "l1_loss", "mse_loss", "soft_margin_loss", "kl_div", "poisson_nll_loss", "gaussian_nll_loss",
             "margin_ranking_loss", "hinge_embedding_loss", "sigmoid_focal_loss",
             "multi_margin_loss", "multilabel_margin_loss", "multilabel_soft_margin_loss", "cosine_embedding_loss",
             "triplet_margin_loss", "triplet_margin_with_distance_loss", "pairwise_distance", "cosine_similarity",
             "rank_hinge_loss", "rank_cross_entropy_loss",
             "jsd_loss", "log_probs", "linear_jsd_loss", "linear_log_probs"},
    "cpu": {"cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
            "smooth_l1_loss", "huber_loss", "l1_loss", "mse_loss", "soft_margin_loss", "kl_div",
            "poisson_nll_loss", "margin_ranking_loss", "hinge_embedding_loss", "sigmoid_focal_loss",
            "multi_margin_loss", "multilabel_margin_loss", "cosine_embedding_loss", "triplet_margin_loss",
            "rank_hinge_loss", "jsd_loss", "log_probs", "linear_jsd_loss", "linear_log_probs"},
}
# losses torch refuses under autocast on a device (it raises): the eager path raises the same error
_AUTOCAST_REFUSED = {"cuda": {"binary_cross_entropy"}, "cpu": set()}


_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)  # one C call (torch >= 2.4)


def autocast_policy(op, tensor):
    """Under autocast for ``tensor``'s device: "float32" (torch computes this loss in float32 and
    returns float32), "refused" (torch raises) or None (no autocast, or it does not change this loss)."""
    if not _any_autocast():
        return None
    device_type = "cuda" if tensor.is_cuda else tensor.device.type
    if not torch.is_autocast_enabled(device_type):
        return None
    if op in _AUTOCAST_REFUSED.get(device_type, ()):
        return "refused"
    if op in _AUTOCAST_FLOAT32.get(device_type, ()):
        return "float32"
    return None


# ----------------------------------------------------------------------------------------------------
# running a family's op
# ----------------------------------------------------------------------------------------------------


def run(family, options, inputs):
    """The loss of one call: the cheapest of the three paths that can serve it (see the module docstring).
    ``inputs``: the family's tensors in its order (None where absent)."""
    if torch.compiler.is_compiling():
        return _REGISTERED[family.name](family.compile_options(options), inputs)
    if torch._C._are_functorch_transforms_active():
        return _FunctorchLoss.apply(family, options, *inputs)
    if torch.is_grad_enabled():
        for t in inputs:
            if t is not None and t.requires_grad:
                return _eager_apply(family, options, *(t if t is None else _unwrap_if_dead(t) for t in inputs))
    return family.forward(options, inputs, (False,) * len(inputs))[0]  # any number of inputs (~50 ns)


_unwrap_if_dead = torch._C._functorch.unwrap_if_dead


class _EagerLoss(torch.autograd.Function):
    """forward(family, options, *inputs): the fused forward; backward: the fused backward, or the
    differentiable reference when the backward itself is differentiated."""

    @staticmethod
    def forward(ctx, family, options, *inputs):
        needs_grad = ctx.needs_input_grad[2:]
        out, state = family.forward(options, inputs, needs_grad)
        ctx.call = (family, options, needs_grad, list(state))
        ctx.save_for_backward(*inputs)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        family, options, needs_grad, state = ctx.call
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            family.assert_inputs_intact(options, state)
            grads = reference_vjp(family, options, ctx.saved_tensors, needs_grad, grad_output)
        else:
            grads = family.backward(options, ctx.saved_tensors, state, grad_output, needs_grad, True)
        return (None, None, *grads)  # no gradient for (family, options)


# ``Function.apply`` without its Python wrapper (which checks for setup_context and functorch, both known
# here, and unwraps dead functorch wrappers: done above for the tensors): ~4 us less per call on this CPU
_eager_apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, _EagerLoss)


class _FunctorchLoss(torch.autograd.Function):
    """The same op under torch.func transforms: the fused forward; the backward is always the
    differentiable reference (functorch differentiates it again for jacrev/hessian); vmap runs the op
    once per slice of the batched dimension."""

    @staticmethod
    def forward(family, options, *inputs):
        return family.forward(options, inputs, (False,) * len(inputs))[0]

    @staticmethod
    def setup_context(ctx, inputs, output):
        family, options, *tensors = inputs
        ctx.family, ctx.options = family, options
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx, grad_output):
        inputs = ctx.saved_tensors
        return (None, None, *reference_vjp(ctx.family, ctx.options, inputs, ctx.needs_input_grad[2:], grad_output))

    @staticmethod
    def vmap(info, in_dims, family, options, *inputs):
        dims = in_dims[2:]
        outputs = []
        for i in range(info.batch_size):
            sliced = [t if t is None or d is None else t.select(d, i) for t, d in zip(inputs, dims)]
            outputs.append(run(family, options, sliced))
        return torch.stack(outputs), 0


def reference_vjp(family, options, inputs, needs_grad, grad_output):
    """Gradients of ``family.reference`` for the inputs in ``needs_grad``, as torch ops that autograd and
    functorch can differentiate again (the backward of a backward)."""
    if getattr(options, "process_group", ""):
        from . import _vocab_parallel

        _vocab_parallel.refuse_second_order()
    positions = [i for i, need in enumerate(needs_grad) if need]

    def loss_of(*differentiable):
        args = list(inputs)
        for i, tensor in zip(positions, differentiable):
            args[i] = tensor
        return family.reference(options, *args)

    _, vjp = torch.func.vjp(loss_of, *(inputs[i] for i in positions))
    grads = [None] * len(inputs)
    for i, grad in zip(positions, vjp(grad_output)):
        grads[i] = grad
    return grads


# ----------------------------------------------------------------------------------------------------
# torch.library registration (the torch.compile path)
# ----------------------------------------------------------------------------------------------------

def _gradient_layout(input):
    """The registered backward's gradient of ``input``, as its fake implementation returns it: the input's
    shape and dtype, contiguous (inductor checks a custom op's output sizes and strides against these)."""
    return input.new_empty(input.shape)


def _in_gradient_layout(grad, input):
    """A real gradient in ``_gradient_layout``: as it is where it already is (every family writes
    contiguous gradients in the input's dtype; a 0-element gradient of a problem with no work may not),
    else copied into it."""
    if grad is None:
        raise RuntimeError("fusedloss: internal error: a family's backward returned no gradient for an input "
                           "that needs one")
    if grad.dtype == input.dtype and grad.shape == input.shape and grad.stride() == _contiguous_strides(input.shape):
        return grad
    out = _gradient_layout(input)
    out.copy_(grad)
    return out


def _contiguous_strides(shape):
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


_SCHEMA_TYPES = {int: "int", float: "float", bool: "bool", str: "str", torch.dtype: "ScalarType",
                 typing.Optional[float]: "float?", typing.Optional[int]: "int?", tuple: "float[]"}  # tuple: of floats
_REGISTERED = {}


def register(family):
    """Register the family's ops with torch.library (at import: never while Dynamo traces)."""
    _REGISTERED[family.name] = _register(family)
    return family


def _register(family):
    """Register ``fusedloss::<name>`` (forward: [out, *state]) and ``fusedloss::<name>_backward``
    (gradients, an empty tensor where none is asked for), with fake implementations and autograd.
    Options travel as the ops' scalar arguments, one per field of the family's options (a NamedTuple)."""
    hints = typing.get_type_hints(family.options_type)
    option_schema = ", ".join(f"{_SCHEMA_TYPES[hints[name]]} {name}" for name in family.options_type._fields)
    n_inputs = family.n_inputs
    input_schema = ", ".join(f"Tensor? in{i}" for i in range(n_inputs))

    def options_of(values):
        return family.options_type(*(tuple(v) if isinstance(v, list) else v for v in values))

    def as_outputs(out, state, real=True):
        """[out, *state], absent entries as empty tensors; views of one workspace are cloned (a custom
        op's outputs may not alias one another: a fake implementation's never do)."""
        outputs, storages = [out], {out.untyped_storage().data_ptr()} if real else set()
        for s in state:
            if s is None:
                s = out.new_empty(0)
            elif real and s.untyped_storage().data_ptr() in storages:
                s = s.clone()
            if real:
                storages.add(s.untyped_storage().data_ptr())
            outputs.append(s)
        return outputs

    forward_name, backward_name = f"fusedloss::{family.name}", f"fusedloss::{family.name}_backward"

    def forward_impl(*args):
        inputs, needs_grad, values = args[:n_inputs], args[n_inputs], args[n_inputs + 1:]
        return as_outputs(*family.forward(options_of(values), inputs, tuple(needs_grad)))

    def forward_fake(*args):
        inputs, needs_grad, values = args[:n_inputs], args[n_inputs], args[n_inputs + 1:]
        return as_outputs(*family.fake(options_of(values), inputs, tuple(needs_grad)), real=False)

    forward_op = torch.library.custom_op(
        forward_name, forward_impl, mutates_args=(),
        schema=f"({input_schema}, bool[] needs_grad, {option_schema}) -> Tensor[]")
    forward_op.register_fake(forward_fake)

    def backward_impl(*args):
        inputs, state = args[:n_inputs], args[n_inputs]
        grad_output, needs_grad, values = args[n_inputs + 1], tuple(args[n_inputs + 2]), args[n_inputs + 3:]
        state = [s if s.numel() else None for s in state]  # empty: absent (an empty problem has no gradient work)
        grads = family.backward(options_of(values), inputs, state, grad_output, needs_grad, False)
        return [_in_gradient_layout(g, t) if need else grad_output.new_empty(0)
                for g, t, need in zip(grads, inputs, needs_grad)]

    def backward_fake(*args):
        inputs, grad_output, needs_grad = args[:n_inputs], args[n_inputs + 1], args[n_inputs + 2]
        return [_gradient_layout(t) if need else grad_output.new_empty(0) for t, need in zip(inputs, needs_grad)]

    backward_op = torch.library.custom_op(
        backward_name, backward_impl, mutates_args=(),
        schema=f"({input_schema}, Tensor[] state, Tensor grad_output, bool[] needs_grad, {option_schema}) "
               "-> Tensor[]")
    backward_op.register_fake(backward_fake)

    def setup_context(ctx, inputs, output):
        ctx.present = [t is not None for t in inputs[:n_inputs]]
        ctx.needs_grad, ctx.values = inputs[n_inputs], inputs[n_inputs + 1:]
        ctx.save_for_backward(*(t for t in inputs[:n_inputs] if t is not None), *output[1:])

    def backward(ctx, output_grads):  # one list for the Tensor[] output: [d loss, d state...]
        grad_out = output_grads[0]  # the state outputs are not differentiable
        saved = list(ctx.saved_tensors)
        inputs = [saved.pop(0) if present else None for present in ctx.present]
        state = saved
        needs_grad = tuple(ctx.needs_grad)
        if torch.is_grad_enabled():
            grads = reference_vjp(family, options_of(ctx.values), inputs, needs_grad, grad_out)
        else:
            grads = backward_op(*inputs, state, grad_out, list(needs_grad), *ctx.values)
            grads = [g if need else None for g, need in zip(grads, needs_grad)]
        # nothing for needs_grad and the options: None each (torch.library wants the inputs' structure
        # back, in which an empty list stays a list)
        return (*grads, None, *([] if isinstance(v, (list, tuple)) and not v else None for v in ctx.values))

    forward_op.register_autograd(backward, setup_context=setup_context)

    def call(options, inputs):
        needs_grad = [t is not None and t.requires_grad and torch.is_grad_enabled() for t in inputs]
        return forward_op(*inputs, needs_grad, *options)[0]

    return call
