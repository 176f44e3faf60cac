"""The report's tables are exactly what its committed benchmark data says."""

from __future__ import annotations

from papers import build


def test_report_matches_its_data_snapshot() -> None:
    assert build.REPORT.read_text() == build.render(), "papers/edil.md is stale: run python -m papers.build"


def test_report_has_generated_tables_for_measured_benchmarks() -> None:
    text = build.REPORT.read_text()
    for name, _, _ in build.TABLES:
        if (build.DATA / f"{name}.json").exists():
            assert f"papers/data/{name}.json" in text
