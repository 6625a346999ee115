"""Command line: ``python -m fusedloss bench [...]`` and ``python -m fusedloss info`` (also ``fusedloss ...``)."""
import argparse
import json
import os
import sys


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

        rows = run_traffic(args.loss)
        print(traffic_table(rows))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    from fusedloss.bench import harness

    doc = harness.run(losses=args.loss, dtypes=args.dtype, quick=args.quick, device=args.device,
                      impl_filter=args.impl, progress=not args.no_progress)
    out = args.out
    if out is None:
        folder = os.path.join("bench", "results") if os.path.isdir("bench") else "."
        suffix = "-quick" if args.quick else ""
        out = os.path.join(folder, f"{report.device_slug(doc)}{suffix}.json")
    written = report.save(doc, out)
    print(report.text_report(doc))
    print("\nwrote " + ", ".join(written))
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
    print(f"requested backend: {dispatch.requested_backend()}")
    print("\nbackend each loss would use for its benchmark inputs on this device:")
    seen = set()
    for bench in registry.REGISTRY:
        if bench.label in seen:
            continue
        seen.add(bench.label)
        shape = (bench.cpu_shapes or bench.quick_shapes)[0]
        inputs = bench.make_inputs(tuple(min(s, 64) for s in shape), bench.dtypes[0], device)
        decision = fusedloss.explain(registry.fusedloss_impl(bench), *inputs.args, **inputs.kwargs)
        print(f"  {bench.label:<36} {decision.backend:<7} {decision.reason}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fusedloss", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark fusedloss against torch (and torch.compile, peers on GPU)")
    bench.add_argument("--quick", action="store_true", help="a few shapes per loss")
    bench.add_argument("--loss", nargs="+", help="losses to run (names or labels; default all)")
    bench.add_argument("--dtype", nargs="+", help="dtypes to run (bfloat16, float32, ...)")
    bench.add_argument("--impl", nargs="+", help="implementations to run (default all available)")
    bench.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    bench.add_argument("--out", help="results JSON path (default bench/results/<device>.json)")
    bench.add_argument("--traffic", action="store_true",
                       help="bytes moved over the minimal, on the CPU through Triton's interpreter")
    bench.add_argument("--host", action="store_true",
                       help="host time per forward+backward with the kernel launches stubbed out, against torch "
                            "eager, on any machine")
    bench.add_argument("--no-progress", action="store_true")
    bench.set_defaults(func=_bench)
    info = sub.add_parser("info", help="device, versions, and the backend each loss would use")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
