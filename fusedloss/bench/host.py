"""Host time per call: what the Python around the kernels costs, measurable on any machine.

``python -m fusedloss bench --host`` times one forward+backward (``loss = fn(...)``, then
``torch.autograd.grad(loss, inputs)``) of small problems, where the host, not the device, sets the speed:

  fusedloss (triton, launches stubbed)   the Triton path on CPU tensors with every kernel launch replaced
                                         by a no-op (kernels/_launch.py): validation, dispatch, option and
                                         plan lookups, allocations, autograd; everything but the launches
  torch                                  torch eager doing the whole call (its compute included: at these
                                         sizes a few microseconds)
  fusedloss (eager fallback)             fusedloss's dispatcher choosing torch (CPU tensors, backend auto)

Each figure is the best over rounds of the mean time of a batch of calls (the least disturbed by the
rest of a shared machine), the implementations interleaved round by round so that drift hits all alike.
torch runs on one thread meanwhile: host time is one thread's, and at these sizes torch's intra-op
threads only add their wake-ups (or, with another process on the cores, waits of a millisecond).
"""
import os
import time

import torch
import torch.nn.functional as F

CASES = {
    # name: (fusedloss function name, make args (requires_grad on the first), kwargs)
    "cross_entropy (mean)": ("cross_entropy", lambda: (torch.randn(64, 10), torch.randint(0, 10, (64,))), {}),
    "cross_entropy (none)": ("cross_entropy", lambda: (torch.randn(64, 10), torch.randint(0, 10, (64,))),
                             {"reduction": "none"}),
    "cross_entropy (smoothing)": ("cross_entropy", lambda: (torch.randn(64, 10), torch.randint(0, 10, (64,))),
                                  {"label_smoothing": 0.1}),
    "nll_loss": ("nll_loss", lambda: (torch.randn(64, 10).log_softmax(1), torch.randint(0, 10, (64,))), {}),
    "mse_loss": ("mse_loss", lambda: (torch.randn(64, 10), torch.randn(64, 10)), {}),
    "binary_cross_entropy_with_logits": ("binary_cross_entropy_with_logits",
                                         lambda: (torch.randn(64, 10), torch.rand(64, 10)), {}),
    "smooth_l1_loss": ("smooth_l1_loss", lambda: (torch.randn(64, 10), torch.randn(64, 10)), {}),
}


_BACKENDS = {"fusedloss (triton, launches stubbed)": "triton", "torch": "auto", "fusedloss (eager fallback)": "auto"}


def _step(fn, args, kwargs):
    x = args[0]
    upstream = torch.ones(args[1].shape) if kwargs.get("reduction") == "none" else None

    def step():
        torch.autograd.grad(fn(*args, **kwargs), x, upstream)

    return step


def _time_per_call(step, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - t0) / calls * 1e6


def measure(rounds=15, calls=200):
    """{case: {implementation: microseconds per forward+backward}} (the best round of each)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the forced Triton path on CPU tensors (launches stubbed)
    import fusedloss
    fusedloss.dispatch.reload_environment()

    results = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for case, (name, make, kwargs) in CASES.items():
            results[case] = _measure_case(name, make, kwargs, rounds, calls)
    finally:
        torch.set_num_threads(threads)
    return results


def _measure_case(name, make, kwargs, rounds, calls):
    """{implementation: microseconds per forward+backward} of one case."""
    import fusedloss
    import fusedloss.functional as FL
    from fusedloss.kernels import _launch

    torch.manual_seed(0)
    args = list(make())
    args[0] = args[0].requires_grad_()
    ours, theirs = getattr(FL, name), getattr(F, name)
    impls = {"fusedloss (triton, launches stubbed)": _step(ours, args, kwargs),
             "torch": _step(theirs, args, kwargs),
             "fusedloss (eager fallback)": _step(ours, args, kwargs)}
    times = {impl: [] for impl in impls}
    _launch.set_stub(lambda *launch_args: None)
    try:
        for impl, fn in impls.items():  # warm-up: plans cached, lazy imports done
            with fusedloss.backend(_BACKENDS[impl]):
                for _ in range(20):
                    fn()
        for _ in range(rounds):
            for impl, fn in impls.items():
                with fusedloss.backend(_BACKENDS[impl]):
                    times[impl].append(_time_per_call(fn, calls))
    finally:
        _launch.set_stub(None)
    return {impl: min(ts) for impl, ts in times.items()}


def table(results):
    lines = ["| loss (64 x 10, forward+backward) | fusedloss triton, launches stubbed (us) | torch eager (us) "
             "| ratio | fusedloss eager fallback (us) | ratio |", "|---|---|---|---|---|---|"]
    for case, r in results.items():
        triton, torch_us, eager = (r["fusedloss (triton, launches stubbed)"], r["torch"],
                                   r["fusedloss (eager fallback)"])
        lines.append(f"| {case} | {triton:.1f} | {torch_us:.1f} | {triton / torch_us:.2f}x | {eager:.1f} | "
                     f"{eager / torch_us:.3f}x |")
    return "\n".join(lines)
