"""docs/pacs.md quotes the numbers benchmarks/bench_node.py wrote (no hand-edited results)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode, name", [("burst", "bench_node_tiny64_2vcpu.json"),
                                        ("paced", "bench_node_tiny64_2vcpu_paced.json")])
def test_speed_table_matches_the_benchmark(mode: str, name: str) -> None:
    r = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
    row = next(line for line in (ROOT / "docs" / "pacs.md").read_text().splitlines() if line.startswith(f"| {mode} "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    lat = r["latency_s"]
    assert cells[1:] == [f"{r['throughput_s_per_instance']:.2f}", f"{lat['mean']:.2f}", f"{lat['median']:.2f}",
                         f"{lat['p95']:.2f}", f"{r['node_peak_rss_mb']:.0f} MB",
                         f"{r['delivered']} / {r['lost']} / {r['duplicated']}"]
    assert r["lost"] == 0 and r["duplicated"] == 0 and r["instances_sent"] == 100
