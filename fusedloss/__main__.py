"""Command line (also the ``fusedloss`` console script):

    python -m fusedloss demo [--loss NAME ...] [--out STEM]   what fusedloss brings, on the machine at hand
    python -m fusedloss bench [options]            the benchmark suite (--help: its modes, losses, implementations)
    python -m fusedloss bench compare OLD.json NEW.json   two result files, row by row
    python -m fusedloss info                       device, versions, the backend each loss would use and why
    python -m fusedloss buildcheck [--arch sm_80,sm_90,...] [--family ...] [--loss ...]
                                                   every kernel configuration compiled for GPU targets (no GPU
                                                   needed), with registers, spills, load widths and budgets
"""
import argparse
import json
import os
import re
import sys
import textwrap

# The options each mode of ``bench`` takes (argparse dests); any other option given is an error, so that
# no option is silently ignored.
_MODES = {
    "timed": ("the timed race (needs a CUDA device)",
              {"quick", "loss", "dtype", "impl", "shape", "device", "out", "no_progress"}),
    "cpu_fallback": ("--cpu-fallback (times fusedloss's eager fallback against torch on the CPU: one CPU shape "
                     "per loss, fusedloss and torch only)", {"loss", "dtype", "shape", "device", "out", "no_progress"}),
    "traffic": ("--traffic (meters every fusedloss variant against torch eager through Triton's interpreter, "
                "at the registry's small traffic shapes)", {"loss", "dtype", "shape", "out"}),
    "host": ("--host (times its own float32 64 x 10 cases, with its three implementations)", {"loss", "out"}),
}
_OPTION_NAMES = {"quick": "--quick", "loss": "--loss", "dtype": "--dtype", "impl": "--impl", "shape": "--shape",
                 "device": "--device", "out": "--out", "no_progress": "--no-progress"}

_BENCH_MODES_HELP = """\
modes and the options each takes (any other option is an error):
  bench [--quick] [--loss] [--dtype] [--impl] [--shape] [--device cuda] [--out] [--no-progress]
      the timed race on a CUDA device: fusedloss against torch eager, torch.compile and installed peers.
      Without a CUDA device it stops (exit status 2): there fusedloss runs torch's own kernels, so a race
      would time torch against itself; it points to what can be checked instead (make demo, --traffic, --host).
  bench --cpu-fallback [--loss] [--dtype] [--shape] [--device cpu] [--out] [--no-progress]
      times fusedloss's eager fallback (its dispatcher calling torch) against torch on the CPU, interleaved
      rounds with torch on one thread; reports the dispatcher's overhead over torch (fusedloss / torch, the
      median of the per-round ratios) with their range, never a speed-up.
  bench --traffic [--loss] [--dtype] [--shape] [--out]
      bytes each implementation moves, forward+backward, over the minimal, the kernels run through Triton's
      interpreter (no GPU needed), every loss (the LM-head losses footnoted: they trade traffic for memory);
      default dtype: each loss's first; --out writes the rows with the provenance a timed result records.
  bench --host [--loss] [--out]
      host time per forward+backward with the kernel launches stubbed out, against torch eager (any
      machine); --loss takes the losses it has cases for (another is an error that lists them).
  bench compare OLD.json NEW.json
      two result files of the same kind (timed runs, or two --traffic results), row by row.
"""


def _results_folder():
    """Where results go and the committed GPU results are: (folder, from_source_tree). The source tree's
    bench/results/ when fusedloss was imported from its source tree (wherever the current directory is),
    else the current directory."""
    from fusedloss.bench import harness

    root = harness.source_tree()
    if root is not None:
        return os.path.join(root, "bench", "results"), True
    return os.curdir, False


_NOT_FROM_SOURCE = ("fusedloss was not imported from its source tree (an installed package): writing to the "
                    "current directory")


def _parse_shape(text):
    """"8192x151936" -> (8192, 151936); a dimension may be written 2**24. Every dimension must be at least 1
    (argparse reports the error as ``argument --shape: ...``, exit status 2)."""
    try:
        dims = []
        for part in text.lower().split("x"):
            base, _, exponent = part.partition("**")
            dims.append(int(base) ** int(exponent) if exponent else int(base))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (write e.g. 8192x151936 or 2**24)") from None
    if not all(isinstance(d, int) and d >= 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: every dimension must be at least 1 (an empty tensor has "
                                         "nothing to measure)")
    return tuple(dims)


def _out_problem(path):
    """Why a file cannot be written at ``path`` (None when, as far as can be told before writing, it can):
    checked before anything is measured, so that a bad --out costs nothing."""
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        return f"{path} is a directory: give a file path (e.g. {os.path.join(path, 'results.json')})"
    if os.path.lexists(path):
        return None if os.access(path, os.W_OK) and _opens_for_writing(path, "a") else f"{path} is not writable"
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.lexists(existing):  # the folders that makedirs would create
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"cannot write {path}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write {path}: {existing} is not writable"
    if existing == folder and not _opens_for_writing(path, "x"):  # (os.access says yes to root everywhere)
        return f"cannot write {path}: {folder} refuses new files"
    return None


def _opens_for_writing(path, mode):
    """Whether ``path`` opens for writing (mode "a": an existing file, left as it is; "x": a new one, removed)."""
    try:
        with open(path, mode):
            pass
    except OSError:
        return False
    if mode == "x":
        os.remove(path)
    return True


def _validate_out(parser, out, paths):
    """An argparse error (exit status 2) when --out is empty or one of the ``paths`` it leads to (the files
    that will be written) cannot be written."""
    if out is None:
        return
    if not out.strip():
        parser.error("argument --out: empty: give a file path")
    for path in paths:
        problem = _out_problem(path)
        if problem:
            parser.error(f"argument --out: {problem}")


def _demo_stem(out):
    return out[:-3] if out and out.endswith(".md") else out


def _no_gpu_message(explicit_cpu):
    first = ("--device cpu: fusedloss's fused kernels do not run on CPU tensors" if explicit_cpu else
             "no CUDA device here, so fusedloss's fused kernels cannot run")
    return (f"fusedloss bench: {first}. On the CPU fusedloss runs torch's own kernels (its eager fallback), so "
            "a timed race would time torch against itself.\n"
            "What can be checked without a GPU:\n"
            "  make demo                              memory traffic, parity against float64, the committed GPU "
            "results\n"
            "  python -m fusedloss bench --traffic    bytes each loss moves over the minimal (the kernels through "
            "Triton's interpreter)\n"
            "  python -m fusedloss bench --host       the Python around the kernel launches against torch's whole "
            "call\n"
            "To time the eager fallback anyway (the dispatcher's overhead over torch, not a speed-up): "
            "python -m fusedloss bench --cpu-fallback")


def _mode(args):
    modes = [mode for mode in ("cpu_fallback", "traffic", "host") if getattr(args, mode)]
    return modes[0] if modes else "timed"


def _validate_bench(parser, args):
    """Errors (exit status 2) for options the chosen mode cannot honour; ``--host --loss`` names."""
    modes = [flag for flag, given in (("--cpu-fallback", args.cpu_fallback), ("--traffic", args.traffic),
                                      ("--host", args.host)) if given]
    if len(modes) > 1:
        parser.error(f"{' and '.join(modes)} are separate modes: give one")
    mode = _mode(args)
    description, allowed = _MODES[mode]
    given = [dest for dest in _OPTION_NAMES if getattr(args, dest) not in (None, False)]
    refused = [_OPTION_NAMES[dest] for dest in given if dest not in allowed]
    if refused:
        parser.error(f"{' '.join(refused)}: not an option of {description}; it takes "
                     f"{', '.join(_OPTION_NAMES[dest] for dest in _OPTION_NAMES if dest in allowed)}")
    if mode == "cpu_fallback" and args.device == "cuda":
        parser.error("--device cuda: --cpu-fallback times the eager fallback on the CPU (drop --device, or drop "
                     "--cpu-fallback for the race on the GPU)")
    if mode == "host" and args.loss:
        from fusedloss.bench import host

        try:
            host.select(args.loss)
        except ValueError as error:
            parser.error(f"argument --loss: {error}")
    if args.out is not None and mode in ("timed", "cpu_fallback"):
        stem, extension = os.path.splitext(args.out)
        if extension.lower() in (".md", ".png"):
            parser.error(f"argument --out: {args.out}: the JSON goes there and the Markdown table and the plot "
                         f"beside it ({stem}.md, {stem}.png): give a .json path")
        _validate_out(parser, args.out, [args.out, stem + ".md", stem + ".png"])
    else:
        _validate_out(parser, args.out, [args.out])


def _cannot_write(error, path):
    return f"cannot write {error.filename or path}: {error.strerror or error}"


def _write_json(obj, path):
    """Writes ``obj`` to ``path``; None, or why it could not (--out was checked before measuring, but the
    filesystem may still refuse)."""
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=1)
    except OSError as error:
        return _cannot_write(error, path)
    return None


def _wrote(path, problem):
    """The last line of a mode that writes only with --out: what it wrote (exit status 0), or why it could
    not (on stderr, exit status 2)."""
    if problem:
        print(f"fusedloss bench: {problem}", file=sys.stderr)
        return 2
    if path:
        print("\nwrote " + path)
    return 0


def _nothing_measured(what, notes):
    lines = [f"fusedloss bench: nothing was measured ({what})"] + [f"  {k}: {v}" for k, v in notes.items()]
    print("\n".join(lines), file=sys.stderr)
    return 2


def _bench(args):
    from fusedloss.bench import report

    mode = _mode(args)
    if mode == "host":
        from fusedloss.bench import host

        results = host.measure(host.select(args.loss))
        problem = _write_json(results, args.out) if args.out else None  # before printing: `| head` keeps it
        print(host.table(results))
        return _wrote(args.out, problem)
    if mode == "traffic":
        from fusedloss.bench import traffic

        notes = {}
        rows = traffic.run_traffic(args.loss, shapes=args.shape, dtypes=args.dtype, notes=notes)
        if not rows:
            return _nothing_measured("no selected loss has a traffic case for these options", notes)
        doc = traffic.document(rows, notes)  # the rows with the provenance a timed result has
        problem = _write_json(doc, args.out) if args.out else None  # before printing: `| head` keeps it
        print(report.header(doc) + "\n")
        print(traffic.traffic_table(rows))
        if notes:
            print("\nNotes:\n" + "\n".join(f"- {k}: {v}" for k, v in notes.items()))
        return _wrote(args.out, problem)
    import torch

    if mode == "timed" and (args.device == "cpu" or not torch.cuda.is_available()):
        print(_no_gpu_message(args.device == "cpu"), file=sys.stderr)
        return 2
    from fusedloss.bench import harness

    doc = harness.run(losses=args.loss, dtypes=args.dtype, quick=args.quick,
                      device="cpu" if args.cpu_fallback else "cuda", impl_filter=args.impl,
                      progress=not args.no_progress, shapes=args.shape)
    if not doc["results"]:
        return _nothing_measured("no selected loss runs with these options", doc["notes"])
    out = args.out
    folder_note = None
    if out is None:
        folder, from_source = _results_folder()
        suffix = "-quick" if args.quick else "-custom" if args.shape else ""
        out = os.path.join(folder, f"{report.device_slug(doc)}{suffix}.json")
        folder_note = None if from_source else _NOT_FROM_SOURCE
    try:  # before printing, so that `| head` does not lose the files
        written = report.save(doc, out)
    except OSError as error:  # --out was checked before measuring; the filesystem may still refuse
        print(report.text_report(doc))
        return _wrote(out, _cannot_write(error, out))
    print(report.text_report(doc))
    print("\nwrote " + ", ".join(written))
    if folder_note:
        print(folder_note)
    if not any(path.endswith(".png") for path in written):
        print(f"no plot: {report.why_no_plot(report.plot_panels(doc))}")
    return 0


def _load_result(parser, path):
    """A results file's document, or an argparse error (exit status 2) saying why it cannot be compared."""
    from fusedloss.bench import report

    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as error:
        parser.error(f"cannot read {path}: {error.strerror or error}")
    except (ValueError, UnicodeDecodeError) as error:
        parser.error(f"{path} is not a JSON results file ({error})")
    kind = report.result_kind(doc)
    if kind is None:
        parser.error(f"{path} is not a fusedloss results file (neither a `fusedloss bench` document nor a "
                     "--traffic or --host result)")
    problems = report.malformed_rows(doc, kind)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        parser.error(f"{path} is {report.KIND_NAMES[kind]} with malformed rows: {shown}")
    return doc, kind


def _compare(argv):
    from fusedloss.bench import report

    parser = argparse.ArgumentParser(
        prog="fusedloss bench compare",
        description="Both times and their ratio for every row two timed result files (`fusedloss bench`) share, "
                    "or both traffic ratios for every row two `--traffic` results share.")
    parser.add_argument("old", help="results JSON (the baseline)")
    parser.add_argument("new", help="results JSON (the change), of the same kind")
    args = parser.parse_args(argv)
    (old, old_kind), (new, new_kind) = (_load_result(parser, path) for path in (args.old, args.new))
    if "host" in (old_kind, new_kind):
        host_file = args.old if old_kind == "host" else args.new
        parser.error(f"{host_file} is {report.KIND_NAMES['host']}: compare takes two timed results or two "
                     "--traffic results (--host figures are ratios within one run: rerun --host instead)")
    if old_kind != new_kind:
        parser.error(f"{args.old} is {report.KIND_NAMES[old_kind]} and {args.new} is {report.KIND_NAMES[new_kind]}: "
                     "compare two files of the same kind")
    print(report.compare_table(old, new))
    return 0


def _demo(args):
    import torch

    folder, from_source = _results_folder()
    stem = _demo_stem(args.out)
    if torch.cuda.is_available():  # the measured race
        return _bench(argparse.Namespace(host=False, traffic=False, cpu_fallback=False, loss=args.loss, dtype=None,
                                         quick=True, device="cuda", impl=None, no_progress=args.no_progress,
                                         shape=None, out=stem + ".json" if stem else None))
    os.environ["TRITON_INTERPRET"] = "1"  # the kernels run through Triton's interpreter for the checks
    from fusedloss import dispatch
    from fusedloss.bench import demo
    from fusedloss.bench.interpreter import interpret_like_the_gpu

    dispatch.reload_environment()
    interpret_like_the_gpu()
    # each section printed when it is done, flushed (stdout may be a file); progress on stderr
    _, written = demo.run_cpu(folder if from_source else None, stem or os.path.join(folder, "cpu-demo"), args.loss,
                              emit=lambda part: print(part, flush=True), progress=not args.no_progress)
    print("wrote " + ", ".join(written))
    if not stem and not from_source:
        print(_NOT_FROM_SOURCE)
    return 0


def _forced_reason(message):
    """The reason in the dispatcher's error for a forced backend that cannot run (without the loss's name,
    which every row already shows)."""
    match = re.match(r"fusedloss: backend 'triton' was requested for \S+, but (.*)", message, re.S)
    return match.group(1) if match else message.replace("fusedloss: ", "")


def info_table(rows):
    """The lines of ``info``'s per-loss part: [(label, backend, reason)]. One shared (backend, reason) is
    said once, above the list of losses; otherwise an aligned table."""
    if len({(backend, reason) for _, backend, reason in rows}) == 1:
        _, backend, reason = rows[0]
        head = ([f"no loss can run on the forced triton backend here ({len(rows)} losses), for one reason:",
                 f"  {reason}"] if backend == "cannot run" else
                [f"every loss ({len(rows)}) would use {backend} here: {reason}"])
        return head + ["losses:"] + textwrap.wrap(", ".join(label for label, _, _ in rows), width=100,
                                                                initial_indent="  ", subsequent_indent="  ")
    label_width = max(len(label) for label, _, _ in rows)
    backend_width = max(len(backend) for _, backend, _ in rows)
    lines = [f"  {'loss':<{label_width}}  {'backend':<{backend_width}}  reason"]
    lines += [f"  {label:<{label_width}}  {backend:<{backend_width}}  {reason}" for label, backend, reason in rows]
    return lines


def _info(args):
    import platform

    import torch

    import fusedloss
    from fusedloss import dispatch
    from fusedloss.bench import registry

    print(f"fusedloss {fusedloss.__version__} · torch {torch.__version__} · Python {platform.python_version()}")
    triton_problem = dispatch.triton_import_error()
    if triton_problem:
        print(f"triton: {triton_problem}")
    else:
        import triton

        print(f"triton {triton.__version__}" + (" (interpreter on)" if dispatch.interpreter_enabled() else ""))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    else:
        print("device: CPU only (no CUDA device visible)")
    requested = dispatch.requested_backend()
    print(f"requested backend: {requested}" + (" (forced: a loss that cannot run on it raises, with the reason)"
                                               if requested == "triton" else ""))
    print("\nbackend each loss would use for its benchmark inputs on this device:")
    rows = []
    for bench in registry.REGISTRY:
        if bench.label in {label for label, _, _ in rows}:
            continue
        shape = (bench.cpu_shapes or bench.quick_shapes)[0]
        inputs = bench.make_inputs(tuple(min(s, 64) for s in shape), bench.dtypes[0], device)
        try:
            decision = fusedloss.explain(registry.fusedloss_impl(bench), *inputs.args, **inputs.kwargs)
            backend, reason = decision.backend, decision.reason
        except RuntimeError as error:  # triton forced where it cannot run: the dispatcher says why
            backend, reason = "cannot run", _forced_reason(str(error))
        rows.append((bench.label, backend, reason))
    print("\n".join(info_table(rows)))
    return 0


def _main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "compare"]:
        return _compare(argv[2:])
    from fusedloss.bench import registry

    losses = sorted({b.label for b in registry.REGISTRY} | {b.name for b in registry.REGISTRY})
    dtypes = sorted({str(d).replace("torch.", "") for b in registry.REGISTRY for d in b.dtypes})
    impls = registry.implementation_names()
    parser = argparse.ArgumentParser(prog="fusedloss", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the measured race on a GPU; without one, traffic, parity and the committed "
                                       "GPU results (what `make demo` runs)",
                          description="On a GPU: the benchmark race at its quick sizes. Without one: memory traffic "
                                      "and parity through Triton's interpreter, the committed GPU results (from the "
                                      "source tree fusedloss was imported from) and the eager fallback's overhead.")
    demo.add_argument("--loss", nargs="+", metavar="NAME", choices=losses,
                      help="only these losses (names or labels, as for bench)")
    demo.add_argument("--out", metavar="STEM",
                      help="write STEM.md and STEM.png (on a GPU STEM.json, .md, .png); default: cpu-demo (the GPU: "
                           "the device's name) in the source tree's bench/results/, or in the current directory "
                           "when fusedloss is not imported from its source tree")
    demo.add_argument("--no-progress", action="store_true",
                      help="no progress lines on stderr (a bar on a terminal, else a line every 10%% of each section)")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser(
        "bench", help="benchmark fusedloss against torch (and torch.compile, peers on GPU)",
        description="Benchmark fusedloss against torch eager, torch.compile and installed peers on a CUDA device; "
                    "without one, the modes below measure what can be measured. "
                    "`fusedloss bench compare OLD.json NEW.json` compares two result files.",
        epilog=_BENCH_MODES_HELP + "\nlosses: " + ", ".join(losses) + "\nimplementations: " + ", ".join(impls),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--quick", action="store_true", help="a few shapes per loss (the timed race on a GPU)")
    bench.add_argument("--loss", nargs="+", metavar="NAME", choices=losses,
                       help="losses to run, by name or label (default all; listed below)")
    bench.add_argument("--dtype", nargs="+", choices=dtypes, help=f"dtypes to run ({', '.join(dtypes)}); a loss "
                                                                  "benchmarked in none of them is skipped, with a note")
    bench.add_argument("--impl", nargs="+", metavar="IMPL", choices=impls,
                       help="implementations to run (the timed race; default all available; listed below)")
    bench.add_argument("--shape", action="append", type=_parse_shape, metavar="AxB",
                       help="run at this shape instead of the registry's (repeatable; e.g. 8192x151936, 2**24); "
                            "losses whose inputs have another number of dimensions are skipped, with a note")
    bench.add_argument("--device", choices=["cuda", "cpu"],
                       help="cuda: the race (the default); cpu: only with --cpu-fallback")
    bench.add_argument("--out", help="results JSON path (default for the timed modes: <device>[-quick|-custom].json "
                                     "in the source tree's bench/results/, or the current directory when fusedloss is "
                                     "not imported from its source tree; --traffic and --host write only with --out)")
    bench.add_argument("--cpu-fallback", action="store_true",
                       help="time fusedloss's eager fallback against torch on the CPU: the dispatcher's overhead "
                            "over torch with its spread across rounds (both sides run torch's kernels: not a race)")
    bench.add_argument("--traffic", action="store_true",
                       help="bytes moved over the minimal, on the CPU through Triton's interpreter")
    bench.add_argument("--host", action="store_true",
                       help="host time per forward+backward with the kernel launches stubbed out, against torch "
                            "eager, on any machine")
    bench.add_argument("--no-progress", action="store_true",
                       help="no progress line (without a terminal, progress is a line every 10%% of the plan)")
    bench.set_defaults(func=_bench)
    info = sub.add_parser("info", help="device, versions, and the backend each loss would use")
    info.set_defaults(func=_info)
    _add_buildcheck(sub)
    args = parser.parse_args(argv)
    if args.func is _bench:
        _validate_bench(bench, args)
    if args.func is _demo and args.out is not None:
        stem = _demo_stem(args.out)
        if not stem.strip():
            demo.error("argument --out: empty: give a file stem (STEM.md, STEM.png are written)")
        if stem.endswith(("/", os.sep)) or os.path.basename(stem) in (".", ".."):
            demo.error(f"argument --out: {args.out} names a folder: give a file stem (e.g. "
                       f"{os.path.join(stem, 'cpu-demo')}: STEM.md, STEM.png are written)")
        _validate_out(demo, args.out, [stem + extension for extension in (".json", ".md", ".png")])
    return args.func(args)


def _add_buildcheck(sub):
    from fusedloss import buildcheck

    def names(valid):
        return lambda text: buildcheck.parse_list(text, valid)

    build = sub.add_parser(
        "buildcheck", help="compile every kernel configuration for GPU targets (no GPU needed) and check budgets",
        description="Records every kernel configuration fusedloss launches at realistic shapes (meta tensors: "
                    "nothing is allocated or run), compiles each for the GPU targets with the installed Triton, "
                    "and prints registers, spills, shared memory, the widest load of the hot loop and counts of "
                    "approximate and float64 instructions, against the budgets (fusedloss/buildcheck.py). Exit "
                    "status 1 when a budget is exceeded without a reason written in the kernel's module "
                    "(BUILD_BUDGET_EXCEPTIONS in kernels/<family>.py; such rows read '(excused)'). Every "
                    "configuration for all five targets (about 1630 compiles) takes about 16 minutes of CPU with "
                    "a cold Triton cache; the cache makes a second run fast.")
    build.add_argument("--arch", type=names(tuple(buildcheck.ARCHS)), default=list(buildcheck.ARCHS),
                       metavar="A,B", help=f"targets, comma-separated (default all: {','.join(buildcheck.ARCHS)})")
    build.add_argument("--family", type=names(buildcheck.FAMILIES), default=list(buildcheck.FAMILIES),
                       metavar="F,G", help=f"kernel families (default all: {','.join(buildcheck.FAMILIES)})")
    build.add_argument("--loss", type=lambda text: buildcheck.parse_list(text, buildcheck.losses()),
                       metavar="NAME,...", help="only the cases calling these functions (e.g. cross_entropy)")
    build.set_defaults(func=_buildcheck)


def _buildcheck(args):
    from fusedloss import buildcheck

    args.arch, args.family = list(dict.fromkeys(args.arch)), list(dict.fromkeys(args.family))  # each once
    if args.loss is not None:
        served = buildcheck.losses(args.family)
        if not set(args.loss) & set(served):
            print(f"fusedloss buildcheck: error: argument --loss: none of {', '.join(args.loss)} has cases in the "
                  f"families {', '.join(args.family)} (theirs: {', '.join(served)})", file=sys.stderr)
            return 2
    rows = buildcheck.run(args.arch, families=args.family, loss_names=args.loss, progress=True)
    print(buildcheck.table(rows))
    print()
    print(buildcheck.summary(rows))
    return 1 if any(buildcheck.unexcused(row) for row in rows) else 0


def _quiet_on_broken_pipe(command):
    """``command()``'s exit status; when the reader of stdout goes away (``fusedloss info | head -2``), exit
    status 1 without a traceback, the way the Python documentation recommends (signal module, "Note on
    SIGPIPE"): stdout is pointed at devnull so that the interpreter's last flush does not fail again."""
    try:
        status = command()
        sys.stdout.flush()  # a broken pipe surfaces here rather than at the interpreter's exit
        return status
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor (replaced in-process)
            pass
        return 1


def main(argv=None):
    return _quiet_on_broken_pipe(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
