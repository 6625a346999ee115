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

``time_rounds`` and ``overhead`` are that method for any set of calls: ``make demo``'s eager fallback
overhead and ``bench --cpu-fallback`` measure with them.
"""
import contextlib
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


def loss_names():
    """The names ``--host --loss`` takes: each case's function name, and the case names themselves."""
    return sorted({name for name, _, _ in CASES.values()} | set(CASES))


def select(losses=None):
    """The cases for ``losses`` (function names or case names; all when None). Raises ValueError naming
    the losses that have no case."""
    if not losses:
        return list(CASES)
    unknown = [loss for loss in losses if loss not in loss_names()]
    if unknown:
        raise ValueError(f"--host has no case for {', '.join(unknown)}; its cases: {', '.join(loss_names())}")
    return [case for case, (name, _, _) in CASES.items() if case in losses or name in losses]


@contextlib.contextmanager
def one_thread():
    """torch on one thread inside the block (host time is one thread's; see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def time_rounds(steps, rounds, calls, warmup=20, contexts=None):
    """{name: [seconds per call, one figure per round]} of each ``steps[name]()``: ``warmup`` calls each,
    then ``rounds`` rounds that run ``calls`` calls of every step in turn (interleaved, so that drift and
    other processes hit all alike). ``contexts``: {name: a function returning the context each runs in}."""
    contexts = contexts or {}
    enter = {name: contexts.get(name, contextlib.nullcontext) for name in steps}
    for name, step in steps.items():
        with enter[name]():
            for _ in range(warmup):
                step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            with enter[name]():
                t0 = time.perf_counter()
                for _ in range(calls):
                    step()
                times[name].append((time.perf_counter() - t0) / calls)
    return times


def overhead(ours, theirs):
    """``ours`` against ``theirs`` (per-round times of ``time_rounds``, same rounds). Each round's pair ran
    back to back, so each round gives one ratio ours / theirs: ``ratio`` is their median (the figure the
    reports print, robust to one disturbed round), ``low``-``high`` their range, ``noise`` True when 1.0
    lies inside that range (the rounds disagree on which side is faster: this run does not resolve the
    difference), ``best_ratio`` min(ours) / min(theirs) (the fastest round of each, from different rounds
    in general; kept for reference, never the headline: it may sit at either end of the range)."""
    per_round = sorted(o / t for o, t in zip(ours, theirs))
    low, high = per_round[0], per_round[-1]
    middle = len(per_round) // 2
    median = per_round[middle] if len(per_round) % 2 else (per_round[middle - 1] + per_round[middle]) / 2
    return {"ratio": median, "low": low, "high": high, "noise": low <= 1.0 <= high, "rounds": len(per_round),
            "best_ratio": min(ours) / min(theirs)}


STATISTIC = "median of the per-round ratios"


def describe_overhead(summary, what="dispatcher overhead"):
    """One phrase for an ``overhead`` summary: the statistic and its figure, the range, and the conclusion
    the range allows (never more)."""
    figures = (f"{summary['ratio']:.3f}x ({STATISTIC}; range {summary['low']:.3f}-{summary['high']:.3f}x over "
               f"{summary['rounds']} interleaved rounds)")
    if summary["noise"]:
        return (f"{figures}: 1.0 lies inside the range, so this run cannot tell the {what} from this machine's "
                "noise (no conclusion either way)")
    if summary["low"] > 1.0:
        return f"{figures}: above 1.0 in every round, a measurable {what}"
    return (f"{figures}: below 1.0 in every round, an order or caching effect, not a speed-up (both sides "
            "run torch's kernels)")


def reading(summary):
    """A short word for an ``overhead`` summary (a table cell)."""
    if summary["noise"]:
        return "not resolved (1.0 inside the range)"
    return "overhead" if summary["low"] > 1.0 else "below 1.0: order effect"


def _step(fn, args, kwargs):
    x = args[0]
    upstream = torch.ones(args[1].shape) if kwargs.get("reduction") == "none" else None

    def step():
        torch.autograd.grad(fn(*args, **kwargs), x, upstream)

    return step


def measure(cases=None, rounds=15, calls=200):
    """{case: {implementation: microseconds per forward+backward}} (the best round of each), for the
    ``cases`` named (keys of CASES; all when None)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the forced Triton path on CPU tensors (launches stubbed)
    import fusedloss
    fusedloss.dispatch.reload_environment()

    results = {}
    with one_thread():
        for case in cases or CASES:
            name, make, kwargs = CASES[case]
            results[case] = _measure_case(name, make, kwargs, rounds, calls)
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
    contexts = {impl: (lambda backend=_BACKENDS[impl]: fusedloss.backend(backend)) for impl in impls}
    _launch.set_stub(lambda *launch_args: None)
    try:
        times = time_rounds(impls, rounds, calls, contexts=contexts)
    finally:
        _launch.set_stub(None)
    return {impl: min(ts) * 1e6 for impl, ts in times.items()}


def is_host_result(doc):
    """True for what ``bench --host --out`` writes: {case: {implementation: microseconds}}."""
    return (isinstance(doc, dict) and bool(doc) and all(isinstance(v, dict) for v in doc.values())
            and all("torch" in v and "fusedloss (eager fallback)" in v for v in doc.values()))


def table(results):
    lines = ["| loss (64 x 10, forward+backward) | fusedloss triton, launches stubbed (us) | torch eager (us) "
             "| ratio | fusedloss eager fallback (us) | ratio |", "|---|---|---|---|---|---|"]
    for case, r in results.items():
        triton, torch_us, eager = (r["fusedloss (triton, launches stubbed)"], r["torch"],
                                   r["fusedloss (eager fallback)"])
        lines.append(f"| {case} | {triton:.1f} | {torch_us:.1f} | {triton / torch_us:.2f}x | {eager:.1f} | "
                     f"{eager / torch_us:.3f}x |")
    return "\n".join(lines)
