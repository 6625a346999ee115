"""Command line (also the ``fusedloss`` console script):

    python -m fusedloss demo                       what fusedloss brings, on the machine at hand
    python -m fusedloss bench [options]            the benchmark suite (--help lists losses and implementations)
    python -m fusedloss bench compare OLD.json NEW.json   two result files, row by row
    python -m fusedloss info                       device, versions, the backend each loss would use and why
"""
import argparse
import json
import os
import sys


def _results_folder():
    return os.path.join("bench", "results") if os.path.isdir("bench") else "."


def _parse_shape(text):
    """"8192x151936" -> (8192, 151936); a dimension may be written 2**24."""
    try:
        dims = []
        for part in text.lower().split("x"):
            base, _, exponent = part.partition("**")
            dims.append(int(base) ** int(exponent) if exponent else int(base))
        if not dims or min(dims) < 0:
            raise ValueError
        return tuple(dims)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (write e.g. 8192x151936 or 2**24)") from None


def _bench(args):
    from fusedloss.bench import report

    if args.host:
        from fusedloss.bench import host

        results = host.measure()
        print(host.table(results))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
        return 0
    if args.traffic:
        from fusedloss.bench.traffic import run_traffic, traffic_table

        rows = run_traffic(args.loss, shapes=args.shape)
        print(traffic_table(rows))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    from fusedloss.bench import harness

    doc = harness.run(losses=args.loss, dtypes=args.dtype, quick=args.quick, device=args.device,
                      impl_filter=args.impl, progress=not args.no_progress, shapes=args.shape)
    out = args.out
    if out is None:
        suffix = "-quick" if args.quick else "-custom" if args.shape else ""
        out = os.path.join(_results_folder(), f"{report.device_slug(doc)}{suffix}.json")
    written = report.save(doc, out)
    print(report.text_report(doc))
    print("\nwrote " + ", ".join(written))
    if not any(path.endswith(".png") for path in written):
        print("no plot: matplotlib is not installed (pip install matplotlib, or the package's [bench] extra)")
    return 0


def _compare(argv):
    from fusedloss.bench import report

    parser = argparse.ArgumentParser(prog="fusedloss bench compare",
                                     description="Both times and their ratio for every row two result files share.")
    parser.add_argument("old", help="results JSON (the baseline)")
    parser.add_argument("new", help="results JSON (the change)")
    args = parser.parse_args(argv)
    docs = []
    for path in (args.old, args.new):
        with open(path) as f:
            docs.append(json.load(f))
    print(report.compare_table(*docs))
    return 0


def _demo(args):
    import torch

    if torch.cuda.is_available():  # the measured race
        return _bench(argparse.Namespace(host=False, traffic=False, loss=args.loss, dtype=None, quick=True, device="cuda",
                                         impl=None, no_progress=args.no_progress, shape=None, out=None))
    os.environ["TRITON_INTERPRET"] = "1"  # the kernels run through Triton's interpreter for the checks
    from fusedloss import dispatch
    from fusedloss.bench import demo
    from fusedloss.bench.interpreter import round_bfloat16_like_the_gpu

    dispatch.reload_environment()
    round_bfloat16_like_the_gpu()
    text, written = demo.run_cpu(_results_folder(), os.path.join(_results_folder(), "cpu-demo"), args.loss)
    print(text)
    print("wrote " + ", ".join(written))
    return 0


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
    seen = set()
    for bench in registry.REGISTRY:
        if bench.label in seen:
            continue
        seen.add(bench.label)
        shape = (bench.cpu_shapes or bench.quick_shapes)[0]
        inputs = bench.make_inputs(tuple(min(s, 64) for s in shape), bench.dtypes[0], device)
        try:
            decision = fusedloss.explain(registry.fusedloss_impl(bench), *inputs.args, **inputs.kwargs)
            backend, reason = decision.backend, decision.reason
        except RuntimeError as error:  # triton forced where it cannot run: the dispatcher says why
            backend, reason = "cannot run", str(error).replace("fusedloss: ", "")
        print(f"  {bench.label:<36} {backend:<10} {reason}")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["bench", "compare"]:
        return _compare(argv[2:])
    from fusedloss.bench import registry

    losses = sorted({b.label for b in registry.REGISTRY} | {b.name for b in registry.REGISTRY})
    parser = argparse.ArgumentParser(prog="fusedloss", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the measured race on a GPU; without one, traffic, parity and the committed "
                                       "GPU results (what `make demo` runs)")
    demo.add_argument("--loss", nargs="+", metavar="NAME", help="only these losses (names or labels, as for bench)")
    demo.add_argument("--no-progress", action="store_true", help="no progress line (GPU race)")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser(
        "bench", help="benchmark fusedloss against torch (and torch.compile, peers on GPU)",
        description="Benchmark fusedloss against torch eager, torch.compile and installed peers. "
                    "`fusedloss bench compare OLD.json NEW.json` compares two result files.",
        epilog="losses: " + ", ".join(losses) + "\nimplementations: " + ", ".join(registry.implementation_names()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--quick", action="store_true", help="a few shapes per loss")
    bench.add_argument("--loss", nargs="+", metavar="NAME", help="losses to run, by name or label (default all; "
                                                                  "listed below)")
    bench.add_argument("--dtype", nargs="+", help="dtypes to run (bfloat16, float32, float16)")
    bench.add_argument("--impl", nargs="+", metavar="IMPL", help="implementations to run (default all available; "
                                                                  "listed below)")
    bench.add_argument("--shape", action="append", type=_parse_shape, metavar="AxB",
                       help="run at this shape instead of the registry's (repeatable; e.g. 8192x151936, 2**24); "
                            "losses whose inputs have another number of dimensions are skipped, with a note")
    bench.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    bench.add_argument("--out", help="results JSON path (default bench/results/<device>.json)")
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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
