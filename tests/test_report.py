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


def _headers(markdown: str) -> list[list[str]]:
    lines = markdown.splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line, nxt in zip(lines, lines[1:], strict=False)
            if line.startswith("|") and nxt.startswith("|---")]


def test_gateway_explorer_and_nats_sections_render_named_tables_from_their_data() -> None:
    import json
    import re

    expected = {
        "gateway": ["p50 (ms)", "p99 (ms)", "requests/s", "lost", "wrong", "p50 / library call", "replica moves"],
        "explorer": ["view", "time (ms, median ± IQR)", "page (KiB)", "target (ms, at most)"],
        "nats": ["ms per task (median)", "ratio to bare request/reply", "tasks/s", "time / in-process", "MiB per party peer to peer"],
    }
    for name, columns in expected.items():
        payload = json.loads((build.DATA / f"{name}.json").read_text())
        text = build.RENDERERS[name](payload)
        headers = _headers(text)
        assert headers, name
        named = {c for h in headers for c in h}
        assert set(columns) <= named, (name, set(columns) - named)
        assert not [c for c in named if "_" in c or re.search(r"[a-z]\.[a-z]", c)], (name, named)  # no flattened keys
        assert text in build.REPORT.read_text()


def test_gateway_and_explorer_verdicts_follow_the_data() -> None:
    import json

    gw = json.loads((build.DATA / "gateway.json").read_text())
    single = next(r for r in gw["rows"] if r["system"] == "gateway, 1 client")
    text = build.render_gateway(gw)
    verdict = "met" if single["vs_library"] <= gw["target_p50_vs_library"] else "not met"
    assert f"Measured {single['vs_library']:.2f}x: {verdict}." in text
    for ratio, verdict in ((gw["target_p50_vs_library"] * 0.5, "met"), (gw["target_p50_vs_library"] * 2, "not met")):
        rows = [dict(r, vs_library=ratio) if r is single else r for r in gw["rows"]]
        assert f"Measured {ratio:.2f}x: {verdict}." in build.render_gateway({**gw, "rows": rows})
    ex = json.loads((build.DATA / "explorer.json").read_text())
    first = ex["rows"][0]
    text = build.render_explorer(ex)
    assert f"Measured {first['ms'] / 1000:.2f} s: {'met' if first['ms'] <= 1000 * ex['target_s'] else 'not met'}." in text
