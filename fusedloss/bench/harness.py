"""Timing, memory and roofline measurement for the registry's entries.

GPU: median of CUDA-event times per iteration after a warm-up, with the input sets rotated so that
small problems are not served from L2; peak extra memory from ``torch.cuda.max_memory_allocated`` above
what the inputs hold; the roofline is a device-to-device copy measured in the same run.
CPU (``bench --cpu-fallback`` only): the fused kernels need CUDA, so fusedloss runs its eager fallback
there and both sides run torch's kernels: what is measured is the dispatcher's overhead over torch, the
two interleaved round by round with torch on one thread (as ``bench --host``, fusedloss/bench/host.py),
reported as the median of the per-round ratios with their range (host.overhead); no memory figures.
"""
import dataclasses
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Optional

import torch

from . import registry
from .entry import fusedloss_impl, torch_impl

MODES = ("forward", "forward+backward")


@dataclasses.dataclass
class Result:
    loss: str
    dtype: str
    shape: tuple
    mode: str
    impl: str
    median_ms: Optional[float] = None
    peak_extra_mb: Optional[float] = None
    minimal_bytes: int = 0
    gbps: Optional[float] = None
    roofline_fraction: Optional[float] = None
    tflops: Optional[float] = None  # the entry's floating-point operations per second (compute-bound losses)
    status: str = "ok"
    # CPU fallback only: milliseconds per call of each interleaved round (median_ms is their median,
    # best_ms their minimum)
    rounds_ms: Optional[list] = None
    best_ms: Optional[float] = None


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth_gbps(device, nbytes=1 << 30):
    """Bytes read + written per second by a large device-to-device copy (the memory roofline)."""
    if device != "cuda":
        nbytes = 1 << 26
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_fn(lambda: dst.copy_(src), device, min_reps=20)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def time_fn(step, device, min_reps=10, target_ms=300.0, warmup=3):
    """Median milliseconds of ``step()``."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    estimate = max((time.perf_counter() - t0) * 1e3, 1e-3)
    reps = int(min(max(min_reps, target_ms / estimate), 200))
    times = []
    if device == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _l2_bytes(device):
    if device != "cuda":
        return 32 << 20
    return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)


def make_step(impl, input_sets, mode):
    """One iteration over the next input set: the loss, and for forward+backward its input gradients."""
    counter = [0]

    def step():
        inputs = input_sets[counter[0] % len(input_sets)]
        counter[0] += 1
        loss = impl(*inputs.args, **inputs.kwargs)
        if mode == "forward+backward":
            torch.autograd.grad(loss, inputs.grad_tensors)
        return loss

    return step


def peak_extra_mb(step, device):
    """Memory allocated above the inputs during one step, in MB (GPU only)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(bench, shape, dtype, device, impl_name, impl, mode, bandwidth):
    probe = bench.make_inputs(shape, dtype, device)
    n_sets = max(1, min(8, math.ceil(2 * _l2_bytes(device) / max(probe.nbytes(), 1))))
    input_sets = [probe] + [bench.make_inputs(shape, dtype, device) for _ in range(n_sets - 1)]
    result = Result(bench.label, str(dtype).replace("torch.", ""), tuple(shape), mode, impl_name,
                    minimal_bytes=bench.minimal_bytes(probe, mode == "forward+backward"))
    flops = bench.flops(probe, mode == "forward+backward") if bench.flops is not None else None
    step = make_step(impl, input_sets, mode)
    try:
        result.median_ms = time_fn(step, device)
        result.peak_extra_mb = peak_extra_mb(make_step(impl, input_sets[:1], mode), device)
    except torch.cuda.OutOfMemoryError:
        result.status = "out of memory"
    except Exception as exc:  # a peer that rejects these inputs: record it, keep going
        result.status = f"error: {type(exc).__name__}: {str(exc)[:120]}"
    finally:
        del input_sets, probe, step
        if device == "cuda":
            torch.cuda.empty_cache()
    if result.median_ms:
        result.gbps = result.minimal_bytes / (result.median_ms * 1e-3) / 1e9
        result.roofline_fraction = result.gbps / bandwidth
        if flops is not None:
            result.tflops = flops / (result.median_ms * 1e-3) / 1e12
    return result


FALLBACK_ROUNDS = 10  # interleaved rounds per (loss, dtype, shape, mode) of the CPU fallback
FALLBACK_ROUND_MS = 20.0  # milliseconds of calls per implementation and round


def measure_fallback(bench, shape, dtype, mode, bandwidth, rounds=None, round_ms=None):
    """The CPU fallback: fusedloss (its dispatcher choosing torch) and torch, interleaved round by round
    with torch on one thread (host.time_rounds), each round ``round_ms`` of calls; two Results."""
    import fusedloss

    from . import host

    rounds = rounds or FALLBACK_ROUNDS
    round_ms = round_ms or FALLBACK_ROUND_MS
    inputs = bench.make_inputs(shape, dtype, "cpu")
    flops = bench.flops(inputs, mode == "forward+backward") if bench.flops is not None else None
    impls = {"fusedloss": fusedloss_impl(bench), "torch": torch_impl(bench)}
    results = {name: Result(bench.label, str(dtype).replace("torch.", ""), tuple(shape), mode, name,
                            minimal_bytes=bench.minimal_bytes(inputs, mode == "forward+backward"))
               for name in impls}
    steps = {name: make_step(impl, [inputs], mode) for name, impl in impls.items()}
    try:
        with host.one_thread(), fusedloss.backend("auto"):  # auto on CPU tensors: the eager fallback
            t0 = time.perf_counter()
            steps["torch"]()
            calls = max(1, int(round_ms / max((time.perf_counter() - t0) * 1e3, 1e-3)))
            times = host.time_rounds(steps, rounds, calls, warmup=2)
    except Exception as exc:  # record it, keep going
        for result in results.values():
            result.status = f"error: {type(exc).__name__}: {str(exc)[:120]}"
        return list(results.values())
    for name, result in results.items():
        result.rounds_ms = [t * 1e3 for t in times[name]]
        result.median_ms = statistics.median(result.rounds_ms)
        result.best_ms = min(result.rounds_ms)
        result.gbps = result.minimal_bytes / (result.best_ms * 1e-3) / 1e9
        result.roofline_fraction = result.gbps / bandwidth
        if flops is not None:
            result.tflops = flops / (result.best_ms * 1e-3) / 1e12
    return list(results.values())


def fits(bench, shape, dtype, device):
    """Skip shapes whose logits and gradient would not fit in a third of the device's memory."""
    if device != "cuda":
        return True
    element_size = torch.empty((), dtype=dtype).element_size()
    need = bench.footprint(shape, element_size) if bench.footprint else 3 * math.prod(shape) * element_size
    return need < torch.cuda.get_device_properties(0).total_memory / 1.5


def shapes_for(bench, device, quick, shapes=None):
    """The shapes to run: the user's (those with the entry's number of dimensions), else the registry's."""
    if shapes:
        return [tuple(s) for s in shapes if len(s) == bench.ndim]
    if device != "cuda":
        return bench.cpu_shapes
    return bench.quick_shapes if quick else bench.gpu_shapes


class _Progress:
    """A bar redrawn in place on a terminal; without one (a log), a line every 10% of the plan."""

    def __init__(self, total, enabled):
        self.total, self.enabled = total, enabled and total > 0
        self.tty = sys.stderr.isatty()
        self.next_line = 0.1

    def step(self, i, label):
        if not self.enabled:
            return
        if self.tty:
            bar = "#" * int(30 * i / self.total)
            print(f"\r[{bar:<30}] {i}/{self.total} {label[:70]:<70}", end="", file=sys.stderr, flush=True)
        elif i / self.total >= self.next_line or i == self.total:
            print(f"{i}/{self.total} ({100 * i // self.total}%) {label}", file=sys.stderr, flush=True)
            while self.next_line <= i / self.total:
                self.next_line += 0.1

    def close(self):
        if self.enabled and self.tty:
            print(file=sys.stderr)


def run(losses=None, dtypes=None, quick=False, device=None, impl_filter=None, progress=True, shapes=None):
    """Run the selected entries; returns the results document (a dict, JSON-ready). ``shapes``: run these
    instead of the registry's (each loss at those with its number of dimensions). On the CPU
    (``device="cpu"``) this is the eager fallback's overhead over torch (``measure_fallback``): fusedloss
    and torch only, ``impl_filter`` unused."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    benches = registry.select(losses)
    bandwidth = copy_bandwidth_gbps(device)
    plan = []
    notes = {}
    for bench in benches:
        impls, skipped = registry.implementations(bench, device)
        for peer, why in skipped.items() if device == "cuda" else ():  # the CPU fallback has no peers
            notes[f"{bench.label}: {peer}"] = why
        if impl_filter:
            impls = {k: v for k, v in impls.items() if k in impl_filter}
        names = [str(dtype).replace("torch.", "") for dtype in bench.dtypes]
        if dtypes and not set(names) & set(dtypes):
            notes[bench.label] = f"skipped: benchmarked in {', '.join(names)} only"
        for dtype in bench.dtypes:
            if dtypes and str(dtype).replace("torch.", "") not in dtypes:
                continue
            chosen = shapes_for(bench, device, quick, shapes)
            if shapes and not chosen:
                notes[f"{bench.label}"] = (f"skipped: none of the shapes asked for has its {bench.ndim} "
                                           "dimension(s)")
            for shape in chosen:
                if not fits(bench, shape, dtype, device):
                    notes[f"{bench.label} {dtype} {shape}"] = "skipped: too large for this device"
                    continue
                for mode in MODES:
                    if device != "cuda":
                        plan.append((bench, shape, dtype, "fusedloss / torch", None, mode))
                        continue
                    for impl_name, impl in impls.items():
                        if "inplace" in impl_name and mode == "forward":
                            continue  # the in-place variants differ from fusedloss only in the backward
                        plan.append((bench, shape, dtype, impl_name, impl, mode))
    results = []
    bar = _Progress(len(plan), progress)
    for i, (bench, shape, dtype, impl_name, impl, mode) in enumerate(plan, 1):
        bar.step(i, f"{bench.label} {str(dtype).replace('torch.', '')} {'x'.join(map(str, shape))} {mode} {impl_name}")
        if device != "cuda":
            results += measure_fallback(bench, shape, dtype, mode, bandwidth)
        else:
            results.append(measure(bench, shape, dtype, device, impl_name, impl, mode, bandwidth))
    bar.close()
    return {
        **provenance(device),
        "cpu_fallback": device != "cuda",
        "copy_bandwidth_gbps": bandwidth,
        "quick": quick,
        "notes": notes,
        "results": [dataclasses.asdict(r) for r in results],
    }


PROVENANCE_KEYS = ("device", "device_type", "fusedloss", "torch", "triton", "python", "git_commit", "date")


def provenance(device):
    """Where and with what a result was measured, the header of every results file (timed runs and
    ``--traffic``): the device, fusedloss's version and the commit of its source tree, torch, triton,
    Python and the date."""
    return {
        "device": device_name(device),
        "device_type": device,
        "fusedloss": _fusedloss_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()})"


def _triton_version():
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


def _fusedloss_version():
    import fusedloss

    return fusedloss.__version__


def source_tree():
    """The root of the fusedloss source tree the imported package comes from (the folder holding its
    pyproject.toml, kernels/ and bench/), or None when it was installed from a wheel. Checked: that
    root's fusedloss/__init__.py is the imported module's file and its pyproject.toml names fusedloss."""
    import fusedloss

    package_file = os.path.abspath(fusedloss.__file__)
    root = os.path.dirname(os.path.dirname(package_file))
    return root if _is_fusedloss_tree(root, package_file) else None


def _is_fusedloss_tree(root, package_file):
    try:
        if not os.path.samefile(os.path.join(root, "fusedloss", "__init__.py"), package_file):
            return False
        with open(os.path.join(root, "pyproject.toml")) as f:
            return any(line.replace(" ", "").strip() == 'name="fusedloss"' for line in f)
    except OSError:
        return False


def _git_commit():
    """The commit of the fusedloss repository the imported package comes from (not the current
    directory's): None when the package is not in a git checkout of fusedloss (a wheel install)."""
    if os.environ.get("FUSEDLOSS_GIT_COMMIT"):  # machines that get a copy of the tree without .git
        return os.environ["FUSEDLOSS_GIT_COMMIT"]
    import fusedloss

    package_file = os.path.abspath(fusedloss.__file__)

    def git(*args, cwd):
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        top = git("rev-parse", "--show-toplevel", cwd=os.path.dirname(package_file))
        if not top or not _is_fusedloss_tree(top, package_file):  # an unrelated repository around an install
            return None
        return git("rev-parse", "--short", "HEAD", cwd=top) or None
    except Exception:
        return None
