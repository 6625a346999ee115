"""Tables and plots of a results document (see harness.run)."""
import collections
import json
import os
import re


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


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


def header(doc):
    return (f"Device: **{doc['device']}** · torch {doc['torch']} · triton {doc['triton']} · commit "
            f"{doc.get('git_commit')} · {doc['date']} · measured copy bandwidth "
            f"{doc['copy_bandwidth_gbps']:.0f} GB/s (read + write). Times are medians; (x) is fusedloss's "
            "speedup over that implementation; % roofline is the minimal traffic (inputs read once, "
            "gradients written once) over the measured copy bandwidth, divided by fusedloss's time.")


def text_report(doc):
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


def plot(doc, path):
    """Time and peak memory per shape, fusedloss vs each baseline (forward+backward)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    groups = [(k, v) for k, v in grouped(doc).items() if k[3] == "forward+backward"]
    if not groups:
        return None
    impls = []
    for _, by_impl in groups:
        impls += [name for name in by_impl if name not in impls]
    labels = [f"{loss}\n{dtype} {_shape(shape)}" for (loss, dtype, shape, _), _ in groups]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.1 * len(groups)), 8), sharex=True)
    width = 0.8 / len(impls)
    for j, name in enumerate(impls):
        xs = [i + j * width for i in range(len(groups))]
        times = [by_impl.get(name, {}).get("median_ms") or 0 for _, by_impl in groups]
        mems = [by_impl.get(name, {}).get("peak_extra_mb") or 0 for _, by_impl in groups]
        axes[0].bar(xs, times, width, label=name)
        axes[1].bar(xs, mems, width, label=name)
    axes[0].set_ylabel("forward+backward, median ms")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("peak extra memory, MB")
    axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    axes[1].set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"fusedloss vs baselines on {doc['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
