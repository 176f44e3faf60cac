"""Run every benchmark: ``python -m benchmarks [--quick]`` (also ``make bench`` / ``edil bench``)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from tqdm import tqdm

MODULES = ["kernels", "inference", "compare", "replicated", "scaling", "he", "imports", "federated", "chain", "runtime", "nats", "r1fs", "gateway", "explorer", "e2e", "fuzz"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    failed = []
    for name in tqdm(MODULES, desc="benchmarks", unit="bench"):
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"benchmarks.{name}":
                continue
            raise
        try:
            module.main(argv)
        except Exception as exc:  # noqa: BLE001 - report and keep going with the others
            failed.append(f"{name}: {exc!r}")
    summary = write_summary()
    print(f"combined summary: {summary}")
    for line in failed:
        print("FAILED", line, file=sys.stderr)
    return 1 if failed else 0


def write_summary() -> Path:
    """Concatenate every benchmark's Markdown table into ``results/SUMMARY.md`` (module order)."""
    from benchmarks._common import RESULTS

    parts = ["# EDIL benchmarks: combined summary\n"]
    for name in MODULES:
        md = RESULTS / f"{name}.md"
        if md.is_file():
            parts.append(md.read_text().replace("# ", "## ", 1))
    out = RESULTS / "SUMMARY.md"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out


if __name__ == "__main__":
    sys.exit(main())
