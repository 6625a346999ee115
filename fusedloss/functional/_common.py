"""What the families' functions share: the output dtype torch's autocast policy gives a loss, the extras'
checks, and a vocabulary-parallel call's group and classes."""
import torch

from .. import _validation as check
from .. import dispatch
from ..ops import _vocab_parallel
from ..ops._scaffold import autocast_policy


def out_dtype_of(op, input):
    """The loss's dtype: float32 where torch's autocast policy computes this loss in float32."""
    return torch.float32 if autocast_policy(op, input) == "float32" else input.dtype


def requested_out_dtype(op, input, loss_dtype, name="loss_dtype"):
    if loss_dtype is not None:
        check.check_loss_dtype(loss_dtype, name)
        return loss_dtype
    return out_dtype_of(op, input)


def group_and_classes(input, process_group, n_local=None):
    """(the group's registered name or "", the classes of the whole vocabulary, known only in debug mode:
    the shard layout may need a collective) of a call whose logits (or LM head) hold ``n_local`` classes
    (default the input's last dimension)."""
    n_local = input.shape[-1] if n_local is None else n_local
    if process_group is None:
        return "", n_local
    name = _vocab_parallel.group_name(process_group)
    if not dispatch.debug_enabled():
        return name, None
    return name, _vocab_parallel.shard_layout(name, n_local, input.device)[1]


def require_classes(process_group, tensor, class_dim):
    """A vocabulary-parallel call whose block of the classes (``tensor``'s ``class_dim``; its only one for a
    1-D tensor) is empty: the same error on every rank of the group (_vocab_parallel.require_classes)."""
    if isinstance(tensor, torch.Tensor) and tensor.dim() > 0:
        _vocab_parallel.require_classes(process_group, tensor.shape[min(class_dim, tensor.dim() - 1)], tensor.device)


def values_checked_here(tensor):
    """Whether a host-side check of ``tensor``'s values costs nothing here: with FUSEDLOSS_DEBUG=1 always;
    otherwise for a CPU tensor in an eager call (no GPU to synchronise with; torch.compile and the torch.func
    transforms cannot branch on values, so they keep the NaN a bad value gives, as on a GPU)."""
    if dispatch.debug_enabled():
        return True
    return (tensor.device.type == "cpu" and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(tensor))


def check_extras(z_loss, softcap):
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be a positive number or None, got {softcap}")
    if z_loss < 0:
        raise ValueError(f"z_loss must be >= 0, got {z_loss}")
