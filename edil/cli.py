"""The ``edil`` command line: ``edil demo``, ``edil bench``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edil", description="EDIL: private, verifiable AI compute on edge nodes")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the end-to-end demo on embedded defaults")
    demo.add_argument("--no-he", action="store_true", help="skip the homomorphic schemes")
    demo.add_argument("--no-federated", action="store_true", help="skip federated training")
    demo.add_argument("--no-runtime", action="store_true", help="skip the edge runtime and chain steps")
    fed = sub.add_parser("federated", help="federated training on digits: 3 nodes, load 25/50/25, secure aggregation")
    fed.add_argument("--rounds", type=int, default=20, help="federated rounds")
    bench = sub.add_parser("bench", help="run the benchmarks (writes benchmarks/results/)")
    bench.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from edil._demo import run_demo

        run_demo(with_he=not args.no_he, with_federated=not args.no_federated, with_runtime=not args.no_runtime)
        return 0
    if args.command == "federated":
        from edil._demo import format_table
        from edil._federated_demo import run_federated_demo

        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        print(format_table(run_federated_demo(print, rounds=args.rounds)))
        return 0
    if args.command == "bench":
        try:
            from benchmarks.__main__ import main as bench_main
        except ImportError:
            print("edil bench needs the benchmarks/ folder of a source checkout", file=sys.stderr)
            return 2
        return bench_main(["--quick"] if args.quick else [])
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
