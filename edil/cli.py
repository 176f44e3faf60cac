"""The ``edil`` command line: ``edil demo``, ``edil bench``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edil", description="EDIL: private, verifiable AI compute on edge nodes")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the end-to-end demo on embedded defaults")
    demo.add_argument("--no-he", action="store_true", help="skip the homomorphic schemes")
    demo.add_argument("--no-runtime", action="store_true", help="skip the edge runtime and chain steps")
    bench = sub.add_parser("bench", help="run the benchmarks (writes benchmarks/results/)")
    bench.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from edil._demo import run_demo

        run_demo(with_he=not args.no_he, with_runtime=not args.no_runtime)
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
