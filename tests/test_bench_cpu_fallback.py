"""pytest-benchmark set for the eager (CPU) fallback, so regressions of the dispatch overhead show.

Both implementations run torch's kernels (fusedloss's dispatcher chooses torch on CPU tensors): the
difference between the two rows of a group is the dispatcher's overhead, not a speed-up, and on a
shared machine it is within the noise unless it exceeds the spread of the rounds (``python -m fusedloss
bench --cpu-fallback`` reports it with that spread).

    .venv/bin/python -m pytest tests/test_bench_cpu_fallback.py --benchmark-only -p no:xdist

Under ``make test`` (xdist) pytest-benchmark runs each body once without timing: a smoke test.
"""
import pytest
import torch
import torch.nn.functional as F

import fusedloss.functional as FL

CASES = {
    "cross_entropy": (lambda: (torch.randn(256, 4000, requires_grad=True), torch.randint(0, 4000, (256,)))),
    "nll_loss": (lambda: (torch.randn(256, 4000).log_softmax(1).requires_grad_(), torch.randint(0, 4000, (256,)))),
}


@pytest.mark.parametrize("impl", ["fusedloss", "torch"])
@pytest.mark.parametrize("name", list(CASES))
def test_cpu_forward_backward(benchmark, name, impl):
    torch.manual_seed(0)
    x, target = CASES[name]()
    fn = getattr(FL if impl == "fusedloss" else F, name)

    def step():
        return torch.autograd.grad(fn(x, target), x)[0]

    benchmark.group = f"{name}: eager fallback vs torch (both run torch's kernels)"
    grad = benchmark(step)
    torch.testing.assert_close(grad, torch.autograd.grad(getattr(F, name)(x, target), x)[0])
