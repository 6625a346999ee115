"""Tables and plots of a results document (see harness.run)."""
import collections
import json
import os
import re


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def _ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def _shape(shape):
    return "x".join(str(s) for s in shape)


def grouped(doc):
    """{(loss, dtype, shape, mode): {impl: result}} in run order."""
    groups = collections.OrderedDict()
    for r in doc["results"]:
        groups.setdefault((r["loss"], r["dtype"], tuple(r["shape"]), r["mode"]), {})[r["impl"]] = r
    return groups


def markdown_table(doc, modes=("forward+backward", "forward")):
    """One row per (loss, dtype, shape, mode): fusedloss time, each baseline's time and fusedloss's speedup
    over it, fusedloss's % of the copy roofline, and peak extra memory fusedloss vs torch."""
    impls = []
    for r in doc["results"]:
        if r["impl"] not in impls and r["impl"] != "fusedloss":
            impls.append(r["impl"])
    head = ["loss", "dtype", "shape", "mode", "fusedloss ms", "% roofline"]
    head += [f"{name} ms (x)" for name in impls]
    head += ["peak MB fused", "peak MB torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (loss, dtype, shape, mode), by_impl in grouped(doc).items():
        if mode not in modes:
            continue
        ours = by_impl.get("fusedloss", {})
        ours_ms = ours.get("median_ms")
        row = [loss, dtype, _shape(shape), mode, _fmt(ours_ms, ".3f") if ours_ms else ours.get("status", "-"),
               _fmt(None if ours.get("roofline_fraction") is None else 100 * ours["roofline_fraction"], ".0f")]
        for name in impls:
            other = by_impl.get(name)
            if other is None:
                row.append("-")
            elif other.get("median_ms") is None:
                row.append(other["status"])
            else:
                speedup = f" ({other['median_ms'] / ours_ms:.2f}x)" if ours_ms else ""
                row.append(f"{other['median_ms']:.3f}{speedup}")
        row += [_fmt(ours.get("peak_extra_mb"), ".0f"), _fmt(by_impl.get("torch", {}).get("peak_extra_mb"), ".0f")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def summary_table(doc):
    """The README's table: forward+backward only, fusedloss against each baseline."""
    baselines = [name for name in ("torch", "torch.compile", "liger")
                 if any(r["impl"] == name for r in doc["results"])]
    head = ["loss", "dtype", "shape", "fusedloss ms", "% of floor"] + [f"vs {b}" for b in baselines]
    head += ["peak MB: fusedloss / inplace / torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (loss, dtype, shape, mode), by_impl in grouped(doc).items():
        ours = by_impl.get("fusedloss", {})
        if mode != "forward+backward" or not ours.get("median_ms"):
            continue
        row = [loss, dtype, _shape(shape), f"{ours['median_ms']:.3f}", f"{100 * ours['roofline_fraction']:.0f}%"]
        for name in baselines:
            other = by_impl.get(name, {})
            row.append(f"{other['median_ms'] / ours['median_ms']:.2f}x" if other.get("median_ms")
                       else other.get("status", "-"))
        inplace = by_impl.get("fusedloss (inplace)", {}).get("peak_extra_mb")
        row.append(" / ".join(_fmt(v, ".0f") for v in (ours.get("peak_extra_mb"), inplace,
                                                       by_impl.get("torch", {}).get("peak_extra_mb"))))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _versions(doc):
    ours = f"fusedloss {doc['fusedloss']} · " if doc.get("fusedloss") else ""
    return f"{ours}commit {doc.get('git_commit')} · torch {doc['torch']} · triton {doc['triton']}"


def provenance_line(doc):
    """Device, versions, commit and date of a results document (timed or --traffic), one line."""
    return f"Device: **{doc['device']}** · {_versions(doc)} · {doc['date']}"


def header(doc):
    if doc.get("kind") == "traffic":
        return (f"{provenance_line(doc)}. Memory traffic, forward+backward, in bytes over the minimal (each input "
                "read once, each gradient written once): fusedloss's kernels through Triton's interpreter, torch "
                "eager's aten ops, each counted as it reads and writes (no GPU involved, deterministic).")
    if doc.get("cpu_fallback"):
        return (f"Device: **{doc['device']}** (no GPU: fusedloss runs torch's kernels, its eager fallback) · "
                f"{_versions(doc)} · {doc['date']}. Both sides run torch's kernels, so this is not a race: "
                "fusedloss / torch is the dispatcher's overhead over torch, interleaved rounds with torch on one "
                "thread, each round's pair back to back: the median of the per-round ratios, with their range; "
                "where 1.0 lies inside that range this run does not resolve the difference.")
    return (f"Device: **{doc['device']}** · {_versions(doc)} · {doc['date']} · measured copy bandwidth "
            f"{doc['copy_bandwidth_gbps']:.0f} GB/s (read + write). Times are medians; (x) is fusedloss's "
            "speedup over that implementation; % roofline is the minimal traffic (inputs read once, "
            "gradients written once) over the measured copy bandwidth, divided by fusedloss's time.")


def fallback_rows(doc):
    """[(loss, dtype, shape, mode, fusedloss result, torch result, host.overhead summary or None)] of a
    CPU fallback document."""
    from . import host

    rows = []
    for (loss, dtype, shape, mode), by_impl in grouped(doc).items():
        ours, theirs = by_impl.get("fusedloss", {}), by_impl.get("torch", {})
        summary = (host.overhead(ours["rounds_ms"], theirs["rounds_ms"])
                   if ours.get("rounds_ms") and theirs.get("rounds_ms") else None)
        rows.append((loss, dtype, shape, mode, ours, theirs, summary))
    return rows


def fallback_table(doc):
    """The CPU fallback's table: both best-of times and the dispatcher's overhead (the median of the
    per-round ratios) with their range."""
    from . import host

    lines = ["| loss | dtype | shape | mode | fusedloss ms (best) | torch ms (best) | dispatcher overhead over "
             "torch: fusedloss / torch, median of the per-round ratios (range) | reading |",
             "|---|---|---|---|---|---|---|---|"]
    for loss, dtype, shape, mode, ours, theirs, summary in fallback_rows(doc):
        if summary is None:
            lines.append(f"| {loss} | {dtype} | {_shape(shape)} | {mode} | {ours.get('status', '-')} | "
                         f"{theirs.get('status', '-')} | - | - |")
            continue
        lines.append(f"| {loss} | {dtype} | {_shape(shape)} | {mode} | {ours['best_ms']:.3f} | "
                     f"{theirs['best_ms']:.3f} | {summary['ratio']:.3f}x ({summary['low']:.3f}-{summary['high']:.3f}) "
                     f"| {host.reading(summary)} |")
    return "\n".join(lines)


def text_report(doc):
    if doc.get("cpu_fallback"):
        parts = [header(doc), "", fallback_table(doc)]
    else:
        parts = [header(doc), "", "Forward+backward summary (x: speedup of fusedloss):", "", summary_table(doc), "",
                 "All measurements:", "", markdown_table(doc)]
    if doc.get("notes"):
        parts += ["", "Notes:"] + [f"- {k}: {v}" for k, v in doc["notes"].items()]
    return "\n".join(parts)


def device_slug(doc):
    return re.sub(r"[^A-Za-z0-9]+", "-", doc["device"]).strip("-").lower() or "device"


def save(doc, out_path):
    """Write the JSON, a Markdown table and (when matplotlib imports) a PNG plot beside it."""
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
    stem = os.path.splitext(out_path)[0]
    with open(stem + ".md", "w") as f:
        f.write(text_report(doc) + "\n")
    written = [out_path, stem + ".md"]
    png = plot(doc, stem + ".png")
    if png:
        written.append(png)
    return written


def plot_panels(doc):
    """The panels ``plot`` draws: forward+backward time per implementation and, where measured (GPU),
    peak extra memory; for a CPU fallback document, the dispatcher's overhead ratio. Empty when nothing
    was measured."""
    groups = [(k, v) for k, v in grouped(doc).items() if k[3] == "forward+backward"]
    labels = [f"{loss} {dtype} {_shape(shape)}" for (loss, dtype, shape, _), _ in groups]
    if doc.get("cpu_fallback"):
        rows = [(f"{loss} {dtype} {_shape(shape)}", summary["ratio"])
                for loss, dtype, shape, mode, _, _, summary in fallback_rows(doc)
                if mode == "forward+backward" and summary]
        if not rows:
            return []
        return [(f"dispatcher overhead over torch, forward+backward, fusedloss / torch (median of the per-round "
                 f"ratios; 1.0 = none; both run torch's kernels), {doc['device']}", [r[0] for r in rows],
                 {"fusedloss / torch": [r[1] for r in rows]}, "linear")]
    impls = list(dict.fromkeys(name for _, by_impl in groups for name in by_impl))
    panels = []
    for title, field, scale in ((f"forward+backward, median ms (log scale), {doc['device']}", "median_ms", "log"),
                                ("peak extra memory, MB", "peak_extra_mb", "linear")):
        series = {name: [by_impl.get(name, {}).get(field) for _, by_impl in groups] for name in impls}
        series = {name: values for name, values in series.items() if any(values)}
        if series:  # a value not measured (an error, out of memory) is no bar: the line's label says so
            panels.append((title, labels, series, scale, {"missing": "not measured"}))
    return panels


def plot(doc, path):
    """``plot_panels(doc)`` as horizontal bars, a row per (loss, dtype, shape), to ``path``; the path, or
    None (``why_no_plot`` says why)."""
    return barh_panels(plot_panels(doc), path)


def matplotlib_missing():
    """Why matplotlib cannot draw here (it does not import), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        return f"matplotlib is not installed ({error}; pip install matplotlib, or the package's [bench] extra)"
    return None


def why_no_plot(panels):
    """Why ``barh_panels(panels, ...)`` drew nothing: matplotlib missing, or no data to plot."""
    return matplotlib_missing() or ("nothing to plot" if not panels else None)


def _missing_text(options, series, line):
    """Why ``series`` has no value on ``line``: ``options["missing"]``, a text, or {series: a text, or a list
    of texts per line}; "not measured" by default."""
    missing = options.get("missing", "not measured")
    if isinstance(missing, dict):
        missing = missing.get(series, "not measured")
    return missing[line] if isinstance(missing, (list, tuple)) else missing


def _drawable(values, scale):
    """The values a ``scale`` axis can draw (None where a value is missing, or not positive on a log axis)."""
    return [v if v is not None and (scale != "log" or v > 0) else None for v in values]


def _labels_with_gaps(labels, series, scale, options):
    """Each line's label, followed by what is not drawn on it and why ("[torch: no CPU kernel]"; a 0 on a
    log axis: "[fusedloss: 0]"), so that a missing value is never mistaken for a small one."""
    out = []
    for i, label in enumerate(labels):
        gaps = []
        for name, values in series.items():
            value = values[i]
            if value is None:
                gaps.append(f"{name}: {_missing_text(options, name, i)}")
            elif scale == "log" and value <= 0:
                gaps.append(f"{name}: 0")
        out.append(f"{label}  [{'; '.join(gaps)}]" if gaps else label)
    return out


_MARKERS = ("o", "s", "^", "D", "v", "P")


def _panel_height(labels, series, options, layout):
    """Inches: a quarter inch per bar stacked (``bench``'s plot), half that side by side (the demo's many
    lines), a quarter per line of markers."""
    if options.get("style") == "dots":
        return max(2.5, 0.24 * len(labels) + 1.5)
    if layout == "columns":
        return max(2.5, 0.13 * len(series) * len(labels) + 1.5)
    return max(2.5, 0.25 * len(labels) * len(series) + 1)


def barh_panels(panels, path, layout="rows"):
    """Panels [(title, labels, {series: values}, x scale[, options])] to a PNG, a line per label: grouped
    horizontal bars, or with ``options["style"] == "dots"`` one marker per series on each line (values
    spanning decades on a log axis). A value of None is not drawn: the line's label says so, with
    ``options["missing"]`` (``_missing_text``; default "not measured"); a value <= 0 on a log axis
    likewise ("series: 0"). ``layout``: "rows" stacks the panels, "columns" sets them side by side (the
    figure as tall as the tallest). Returns the path, or None when there is nothing to draw or matplotlib is
    not installed."""
    if not panels:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import textwrap

    panels = [(title, labels, series, scale, options[0] if options else {})
              for title, labels, series, scale, *options in panels]
    heights = [_panel_height(labels, series, options, layout) for _, labels, series, _, options in panels]
    if layout == "columns":
        fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), max(heights)), squeeze=False)
        axes, title_width = axes[0], 50
    else:
        fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights) + 0.5), squeeze=False,
                                 gridspec_kw={"height_ratios": heights})
        axes, title_width = axes[:, 0], 110
    for ax, (title, labels, series, scale, options) in zip(axes, panels):
        lines = range(len(labels))
        if options.get("style") == "dots":
            step = 0.6 / max(len(series), 1)
            for j, (name, values) in enumerate(series.items()):
                offset = (j - (len(series) - 1) / 2) * step
                points = [(v, i + offset) for i, v in zip(lines, _drawable(values, scale)) if v is not None]
                ax.plot([x for x, _ in points], [y for _, y in points], _MARKERS[j % len(_MARKERS)], label=name,
                        markersize=5, fillstyle="full" if j % 2 == 0 else "none", linestyle="none")
            ax.set_yticks(list(lines))
            ax.set_ylim(len(labels) - 0.5, -0.5)  # the first label on top
            ax.grid(axis="x", which="major", alpha=0.3)
        else:
            bar = 0.8 / len(series)
            for j, (name, values) in enumerate(series.items()):
                drawn = [(i + j * bar, v) for i, v in zip(lines, _drawable(values, scale)) if v is not None]
                ax.barh([y for y, _ in drawn], [v for _, v in drawn], bar, label=name)
            ax.set_yticks([i + bar * (len(series) - 1) / 2 for i in lines])
            ax.set_ylim(len(labels) - 0.1, -0.5)  # the first label on top
        ax.set_yticklabels(_labels_with_gaps(labels, series, scale, options), fontsize=8)
        ax.set_xscale(scale)
        ax.set_title(textwrap.fill(title, title_width), fontsize=10)
        if options.get("style") == "dots":  # below the panel: markers fill the whole plot area
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=2)
        else:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def result_kind(doc):
    """What a results file holds: "speed" (``bench``'s document), "traffic" (``bench --traffic``'s document,
    or the bare list of rows it wrote before it recorded its provenance), "host" (``bench --host``'s
    figures), or None when it is none of those."""
    from . import host

    if isinstance(doc, dict) and doc.get("kind") == "traffic" and isinstance(doc.get("results"), list):
        return "traffic"
    if isinstance(doc, dict) and isinstance(doc.get("results"), list) and "device" in doc:
        return "speed"
    if (isinstance(doc, list) and doc and all(isinstance(r, dict) for r in doc)
            and all({"loss", "impl", "shape", "fusedloss_ratio", "torch_ratio"} <= set(r) for r in doc)):
        return "traffic"
    if host.is_host_result(doc):
        return "host"
    return None


KIND_NAMES = {"speed": "a speed-results document (bench)", "traffic": "a --traffic result",
              "host": "a --host result"}


def _json(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _row_problems(row, where, strings, optional_strings, numbers):
    """What is wrong with one row of a results file (a list of phrases): ``strings`` must be strings,
    ``optional_strings`` strings or null/absent, ``numbers`` non-negative numbers or null/absent, and
    ``shape`` a list of integer dimensions."""
    if not isinstance(row, dict):
        return [f"{where} is {_json(row)}, not a row (a JSON object)"]
    problems = []
    for field in strings:
        if not isinstance(row.get(field), str):
            problems.append(f"{where}.{field} is {_json(row[field]) if field in row else 'missing'}, not a string")
    for field in optional_strings:
        if row.get(field) is not None and not isinstance(row[field], str):
            problems.append(f"{where}.{field} is {_json(row[field])}, not a string")
    shape = row.get("shape")
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        problems.append(f"{where}.shape is {_json(shape) if 'shape' in row else 'missing'}, not a list of "
                        "dimensions")
    for field in numbers:
        value = row.get(field)
        if value is not None and not (_is_number(value) and value >= 0):
            problems.append(f"{where}.{field} is {_json(value)}, not a number of "
                            f"{'milliseconds' if field.endswith('_ms') else 'times the minimal'}")
    return problems


def malformed_rows(doc, kind):
    """What ``compare_table`` cannot read in a results file of that ``kind`` ("speed" or "traffic"): a list of
    phrases naming each bad row and field (empty when every row is well formed)."""
    problems = []
    if kind == "speed":
        for i, row in enumerate(doc["results"]):
            problems += _row_problems(row, f"results[{i}]", ("loss", "dtype", "mode", "impl"), ("status",),
                                      ("median_ms",))
    elif kind == "traffic":
        rows, where = (doc["results"], "results[{}]") if isinstance(doc, dict) else (doc, "[{}]")
        for i, row in enumerate(rows):
            problems += _row_problems(row, where.format(i), ("loss", "impl"), ("dtype",),
                                      ("fusedloss_ratio", "fusedloss_scaled_grad_ratio", "torch_ratio"))
    return problems


def _time_cell(row):
    """A row's time in a table cell: its median, else (none, or 0: no measurement) its status when that
    says why (an error, out of memory), else "-" (never "ok" without a time)."""
    ms, status = row.get("median_ms"), row.get("status")
    if ms:
        return f"{ms:.3f}"
    return status if status not in (None, "ok") else "-"


def compare_table(old, new):
    """Both times and new / old for every (loss, dtype, shape, mode, implementation) the two documents
    share; a warning line first when they come from different devices or versions. Two --traffic results:
    both ratios to the minimal and their difference (``traffic_compare_table``)."""
    if result_kind(old) == "traffic" and result_kind(new) == "traffic":
        return traffic_compare_table(old, new)
    lines = []
    differs = [f"{key}: {old.get(key)} -> {new.get(key)}" for key in ("device", "torch", "triton")
               if old.get(key) != new.get(key)]
    if differs:
        lines += ["**Not comparable as is** (different " + "; ".join(differs) + ")", ""]
    key = lambda r: (r["loss"], r["dtype"], tuple(r["shape"]), r["mode"], r["impl"])  # noqa: E731
    before = {key(r): r for r in old["results"]}
    lines += ["| loss | dtype | shape | mode | implementation | old ms | new ms | new / old |",
              "|---|---|---|---|---|---|---|---|"]
    shared = 0
    for r in new["results"]:
        o = before.get(key(r))
        if o is None:
            continue
        shared += 1
        ratio = (f"{r['median_ms'] / o['median_ms']:.3f}" if r.get("median_ms") and o.get("median_ms")
                 else "-")
        lines.append(f"| {r['loss']} | {r['dtype']} | {_shape(r['shape'])} | {r['mode']} | {r['impl']} | "
                     f"{_time_cell(o)} | {_time_cell(r)} | {ratio} |")
    if not shared:
        lines.append("| (no row in common) | | | | | | | |")
    return "\n".join(lines)


def traffic_compare_table(old, new):
    """Two ``bench --traffic`` results: forward+backward bytes over the minimal, old and new, for every
    (loss, implementation, dtype, shape) both have (traffic is deterministic: any change is real), under
    the provenance of each (versions and commits) where the file records it."""
    lines = []
    for name, doc in (("old", old), ("new", new)):
        if isinstance(doc, dict):
            lines.append(f"{name}: {_versions(doc)} · {doc.get('date')}")
        else:
            lines.append(f"{name}: no provenance recorded (a --traffic file from before it was recorded)")
    lines.append("")
    old, new = (doc["results"] if isinstance(doc, dict) else doc for doc in (old, new))
    key = lambda r: (r["loss"], r["impl"], r.get("dtype"), tuple(r["shape"]))  # noqa: E731
    before = {key(r): r for r in old}
    lines += ["| loss | implementation | dtype | shape | grad_output 1: old | new | grad_output 2**16: old | new "
              "| torch eager: old | new |", "|---|---|---|---|---|---|---|---|---|---|"]
    shared = 0
    for r in new:
        o = before.get(key(r))
        if o is None:
            continue
        shared += 1
        cells = [f"{_ratio(o.get(f))} | {_ratio(r.get(f))}"
                 for f in ("fusedloss_ratio", "fusedloss_scaled_grad_ratio", "torch_ratio")]
        lines.append(f"| {r['loss']} | {r['impl']} | {r.get('dtype')} | {_shape(r['shape'])} | " + " | ".join(cells)
                     + " |")
    if not shared:
        lines.append("| (no row in common) | | | | | | | | | |")
    return "\n".join(lines)
