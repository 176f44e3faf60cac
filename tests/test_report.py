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


def test_quoted_peer_figures_cite_a_source_and_are_consistent() -> None:
    import json

    doc = json.loads(build.PEERS.read_text())
    for r in doc["rows"]:
        assert r["source"] and r["workload"] and r["peer"]
        assert abs(r["private_inference_s"] / r["plaintext_inference_s"] - r["ratio_to_plaintext"]) < 0.1
    assert "not measured here" in build.REPORT.read_text()
