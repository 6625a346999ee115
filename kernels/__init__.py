"""Triton kernels of fusedloss (installed as ``fusedloss.kernels``).

Triton code only: ``@triton.jit`` kernels and the plain-Python launchers that size grids and blocks and
allocate outputs. Autograd, argument validation and torch.nn semantics live in ``fusedloss``.
Importing this package imports Triton; ``fusedloss`` does so lazily, on the first Triton-backed call.
"""
