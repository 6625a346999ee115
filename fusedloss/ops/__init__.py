"""One ``torch.autograd.Function`` per kernel family; the Triton kernels are imported lazily inside."""
