"""Memory traffic, measured without a GPU: the fusion quality of each loss as a ratio to the minimal.

Triton kernels run through Triton's interpreter with its load and store hooks counting the bytes of the
masked-in lanes, each address once per launch (what a launch must move to or from DRAM when nothing it
reuses is evicted: a weight vector read by every row counts once). Eager aten ops (torch's own path,
and the small reductions fusedloss leaves to torch) are metered by a TorchDispatchMode: tensor
arguments read in full, outputs written in full, views free, and the few ops that touch less than their
arguments (gathers, fills, copies, ``out=`` arguments) counted as they really do. The minimal is each
input read once and each gradient written once.

A result (``bench --traffic --out``, ``document``) carries the same provenance as a timed one (device,
fusedloss's version and commit, torch, triton, Python, date: harness.provenance) around its rows.
"""
import collections
import contextlib
import os
import sys

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fusedloss

from . import harness, registry
from .entry import fusedloss_impl, torch_impl

_aten = torch.ops.aten
# ops whose first argument is only written (its old values are not read)
_WRITE_ONLY_FIRST = {_aten.copy_.default, _aten.fill_.Scalar, _aten.fill_.Tensor, _aten.zero_.default}
# gathers: read as many input elements as they write
_GATHERS = {_aten.nll_loss_forward.default, _aten.nll_loss2d_forward.default}
# backward ops that take their second argument (the forward's input) only for its shape
_SHAPE_ONLY_SELF = {_aten.nll_loss_backward.default, _aten.nll_loss2d_backward.default}
# allocations: no traffic until something writes them
_ALLOCATIONS = {_aten.empty.memory_format, _aten.empty_like.default, _aten.empty_strided.default,
                _aten.new_empty.default, _aten.new_empty_strided.default}


def _tensors(tree):
    out = []
    for leaf in torch.utils._pytree.tree_leaves(tree):
        if isinstance(leaf, torch.Tensor):
            out.append(leaf)
    return out


def _nbytes(t):
    return t.numel() * t.element_size()


class Meter(TorchDispatchMode):
    """Counts bytes read and written by aten ops, and (with ``hook_triton``) by interpreted Triton kernels."""

    def __init__(self):
        super().__init__()
        self.torch_read = self.torch_written = 0
        self.kernel_read = self.kernel_written = 0
        self.by_op = collections.Counter()
        self._in_kernel = False
        self._loads = []
        self._stores = []

    @property
    def total(self):
        return self.torch_read + self.torch_written + self.kernel_read + self.kernel_written

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._in_kernel or func in _ALLOCATIONS:
            return out
        inputs = _tensors((args, kwargs))
        outputs = _tensors(out)
        input_storages = {t.untyped_storage().data_ptr() for t in inputs}
        if all(o.untyped_storage().data_ptr() in input_storages for o in outputs) and not \
                func._schema.is_mutable:
            return out  # a view: no traffic
        if func in _WRITE_ONLY_FIRST:
            inputs = inputs[1:]
        if "out" in kwargs:  # an out= argument is only written (counted with the outputs)
            written_only = {id(t) for t in _tensors(kwargs["out"])}
            inputs = [t for t in inputs if id(t) not in written_only]
        if func in _SHAPE_ONLY_SELF:
            inputs = [t for t in inputs if t is not args[1]]
        read = sum(_nbytes(t) for t in inputs)
        if func in _GATHERS:
            target = args[1]
            read = sum(_nbytes(t) for t in inputs[1:]) + target.numel() * args[0].element_size()
        written = sum(_nbytes(t) for t in outputs)
        self.torch_read += read
        self.torch_written += written
        self.by_op[str(func.overloadpacket.__name__)] += read + written
        return out

    # -- Triton interpreter hooks
    def _record(self, bucket, ptrs, mask):
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        addresses = np.asarray(ptrs.data)[np.asarray(mask.data, dtype=bool)]
        bucket.append((addresses.ravel(), size))

    @staticmethod
    def _unique_bytes(bucket):
        if not bucket:
            return 0
        sizes = {}
        for addresses, size in bucket:
            for a in np.unique(addresses):
                sizes[int(a)] = size
        return sum(sizes.values())

    @contextlib.contextmanager
    def hook_triton(self):
        from triton.runtime import interpreter

        builder_cls, executor_cls = interpreter.InterpreterBuilder, interpreter.GridExecutor
        orig_load, orig_store = builder_cls.create_masked_load, builder_cls.create_masked_store
        orig_call = executor_cls.__call__
        meter = self

        def masked_load(builder, ptrs, mask, other, *rest):
            meter._record(meter._loads, ptrs, mask)
            return orig_load(builder, ptrs, mask, other, *rest)

        def masked_store(builder, ptrs, value, mask, *rest):
            meter._record(meter._stores, ptrs, mask)
            return orig_store(builder, ptrs, value, mask, *rest)

        def launch(executor, *args, **kwargs):
            meter._in_kernel, meter._loads, meter._stores = True, [], []
            try:
                return orig_call(executor, *args, **kwargs)
            finally:
                meter._in_kernel = False
                meter.kernel_read += self._unique_bytes(meter._loads)
                meter.kernel_written += self._unique_bytes(meter._stores)
                meter.by_op[f"triton:{executor.fn.__name__}"] += (self._unique_bytes(meter._loads)
                                                                  + self._unique_bytes(meter._stores))

        builder_cls.create_masked_load, builder_cls.create_masked_store = masked_load, masked_store
        executor_cls.__call__ = launch
        try:
            yield self
        finally:
            builder_cls.create_masked_load, builder_cls.create_masked_store = orig_load, orig_store
            executor_cls.__call__ = orig_call


def measure_traffic(impl, inputs, grad_scale=None):
    """Bytes moved by loss = impl(...) and the gradients of (loss * grad_scale) w.r.t. the inputs."""
    meter = Meter()
    with meter.hook_triton(), meter:
        loss = impl(*inputs.args, **inputs.kwargs)
        if grad_scale is not None:
            loss = loss * grad_scale
        torch.autograd.grad(loss, inputs.grad_tensors)
    return meter


def run_traffic(losses=None, shapes=None, dtypes=None, notes=None, on_case=None):
    """Traffic ratios (forward+backward over the minimal) for every selected entry, on the CPU (at
    ``shapes`` instead of the entries' traffic shapes when given, those with the entry's dimensions), in
    each of ``dtypes`` (names, e.g. "float32") the entry is benchmarked in, else in its first dtype.
    ``notes``: a dict that receives why an entry gave no row. ``on_case(i, total, label)``: called before
    each (entry, shape, dtype) is metered (progress). A row carries its entry's ``traffic_note`` as
    "note" when it has one."""
    notes = {} if notes is None else notes
    if "fusedloss.kernels" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the traffic meter needs Triton's interpreter from the start of the process: "
                           "run `TRITON_INTERPRET=1 python -m fusedloss bench --traffic`")
    os.environ["TRITON_INTERPRET"] = "1"
    fusedloss.dispatch.reload_environment()
    plan = []
    for bench in registry.select(losses):
        chosen = [s for s in shapes if len(s) == bench.ndim] if shapes else bench.traffic_shapes
        names = [str(d).replace("torch.", "") for d in bench.dtypes]
        chosen_dtypes = [d for d, name in zip(bench.dtypes, names) if name in dtypes] if dtypes else bench.dtypes[:1]
        if not chosen:
            notes[bench.label] = (f"skipped: none of the shapes asked for has its {bench.ndim} dimension(s)"
                                  if shapes else "no traffic shape: too large for the interpreter (give one with "
                                                 "--shape)")
        elif not chosen_dtypes:
            notes[bench.label] = f"skipped: benchmarked in {', '.join(names)} only"
        plan += [(bench, shape, dtype) for shape in chosen for dtype in chosen_dtypes]
    rows = []
    for i, (bench, shape, dtype) in enumerate(plan, 1):
        if on_case is not None:
            on_case(i, len(plan), f"{bench.label} {str(dtype).replace('torch.', '')} {'x'.join(map(str, shape))}")
        rows += _meter_case(bench, shape, dtype)
    return rows


def _meter_case(bench, shape, dtype):
    """The rows of one entry at one shape and dtype: fusedloss and each of its (not in-place) variants."""
    torch.manual_seed(0)
    inputs = bench.make_inputs(shape, dtype, "cpu")
    minimal = bench.minimal_bytes(inputs, backward=True)
    try:
        eager = measure_traffic(torch_impl(bench), inputs)
    except (RuntimeError, NotImplementedError):  # no CPU kernel of torch's at this dtype
        eager = None
    variants = {"": {}, **{f" ({label})": extra for label, extra in bench.variants.items()
                           if "inplace" not in label}}
    rows = []
    for suffix, extra in variants.items():
        ours = fusedloss_impl(bench, **extra)
        with fusedloss.backend("triton"):
            unit = measure_traffic(ours, inputs)
            scaled = measure_traffic(ours, inputs, grad_scale=2.0**16)
        rows.append({
            "loss": bench.label, "impl": "fusedloss" + suffix, "shape": list(shape),
            "dtype": str(dtype).replace("torch.", ""), "minimal_bytes": minimal,
            "fusedloss_ratio": unit.total / minimal,
            "fusedloss_scaled_grad_ratio": scaled.total / minimal,
            "torch_ratio": None if eager is None else eager.total / minimal,
            "fusedloss_by_op": dict(unit.by_op), "torch_by_op": None if eager is None else dict(eager.by_op),
            **({"note": bench.traffic_note} if bench.traffic_note else {}),
        })
    return rows


def document(rows, notes=None):
    """A ``bench --traffic`` result: the rows with the provenance a timed result has (harness.provenance),
    ``"kind": "traffic"``, and the notes (why an entry gave no row)."""
    return {**harness.provenance("cpu"), "kind": "traffic", "meter": "Triton's interpreter (kernels) and a "
            "TorchDispatchMode (aten ops), forward+backward bytes over the minimal", "notes": dict(notes or {}),
            "results": rows}


def rows_of(doc):
    """The rows of a traffic result: a ``document``, or a bare list of rows (files written before the
    provenance was recorded)."""
    return doc["results"] if isinstance(doc, dict) else doc


def traffic_table(rows):
    """The Markdown table of traffic rows, then a numbered footnote per distinct row "note" (marked in the
    implementation's cell)."""
    footnotes = list(dict.fromkeys(r["note"] for r in rows if r.get("note")))
    lines = ["| loss | implementation | dtype | shape | minimal bytes | grad_output 1 | grad_output 2**16 "
             "| torch eager |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = f" [{footnotes.index(r['note']) + 1}]" if r.get("note") else ""
        lines.append(f"| {r['loss']} | {r['impl']}{mark} | {r['dtype']} | {'x'.join(map(str, r['shape']))} | "
                     f"{r['minimal_bytes']} | {r['fusedloss_ratio']:.2f}x | {r['fusedloss_scaled_grad_ratio']:.2f}x | "
                     f"{'no CPU kernel' if r['torch_ratio'] is None else format(r['torch_ratio'], '.2f') + 'x'} |")
    for number, note in enumerate(footnotes, 1):
        losses = ", ".join(dict.fromkeys(r["loss"] for r in rows if r.get("note") == note))
        lines += ["", f"[{number}] {losses}: {note}"]
    return "\n".join(lines)
