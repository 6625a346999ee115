"""Shared test helpers: the one tolerance table, the parity assertion, input makers."""
import contextlib

import torch

import fusedloss

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOW_PRECISION = (torch.bfloat16, torch.float16)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# (rtol, atol relative to the reference's largest magnitude) against a float64 reference.
# float32/float64: tight. bf16/fp16: about two ulp (the kernels compute in float32 and round once; the
# interpreter rounds to nearest even as the GPU does, tests/conftest.py), plus "no further from float64
# than torch at the same dtype, to the ulp" (assert_matches_torch). fp16's atol stays at two ulp of the
# largest value because 'mean' gradients of 4097 elements fall among fp16's subnormals.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.bfloat16: (1.6e-2, 8e-3),
    torch.float16: (2e-3, 2e-3),
}


def _scale(reference):
    finite = reference[torch.isfinite(reference)]
    return float(finite.abs().max()) if finite.numel() else 1.0


def assert_matches(actual, reference64, dtype, what=""):
    """``actual`` within the dtype's tolerance of the float64 reference; NaN exactly where it has NaN."""
    assert actual.shape == reference64.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(reference64.shape)}"
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.detach().double().cpu(), reference64.detach().double().cpu(),
                               rtol=rtol, atol=atol * _scale(reference64.detach()) + 1e-30,
                               equal_nan=True, msg=lambda m: f"{what}: {m}")


def max_error(actual, reference64):
    diff = (actual.detach().double() - reference64.detach().double()).abs()
    diff = diff[torch.isfinite(diff)]
    return float(diff.max()) if diff.numel() else 0.0


def assert_matches_torch(actual, torch_same_dtype, reference64, dtype, what=""):
    """Parity check: the tolerance table, and for bf16/fp16 also "no worse than torch at this dtype".

    A result bit-identical to torch's at the same dtype passes as it is (the eager path, or torch's own
    fp16 overflow that the kernels' float32 accumulation avoids would fail the float64 comparison).
    """
    _assert_parity(actual, torch_same_dtype, reference64, dtype, what, ulps=1)


def assert_twice_rounded_matches_torch(actual, torch_same_dtype, reference64, dtype, what=""):
    """``assert_matches_torch`` for a value rounded to a low-precision dtype twice where torch rounds once
    (a gradient stored by the forward for grad_output 1, then multiplied by another grad_output): one
    more ulp at the largest magnitude allowed on top of torch's error."""
    _assert_parity(actual, torch_same_dtype, reference64, dtype, what, ulps=2)


def _assert_parity(actual, torch_same_dtype, reference64, dtype, what, ulps):
    if actual.dtype == torch_same_dtype.dtype and torch.equal(
            actual.detach().nan_to_num(), torch_same_dtype.detach().nan_to_num()):
        return
    assert_matches(actual, reference64, dtype, what)
    if dtype in LOW_PRECISION:
        ours, theirs = max_error(actual, reference64), max_error(torch_same_dtype, reference64)
        ulp = torch.finfo(dtype).eps * _scale(reference64.detach())
        assert ours <= theirs + ulps * ulp, f"{what}: error {ours:.3g} vs torch's {theirs:.3g} at {dtype}"


def backend_context(name):
    return fusedloss.backend(name) if name else contextlib.nullcontext()


def strided_like(tensor, layout):
    """The same values in another memory layout: "contiguous", "transposed" (column-major (N, C)),
    or "sliced" (every other element along the last dim of a wider buffer)."""
    if layout == "contiguous" or tensor.dim() < 2:
        return tensor.contiguous()
    if layout == "transposed":
        return tensor.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "sliced":
        wide = torch.empty(*tensor.shape[:-1], 2 * tensor.shape[-1], dtype=tensor.dtype, device=tensor.device)
        wide[..., ::2] = tensor
        return wide[..., ::2]
    raise ValueError(layout)
