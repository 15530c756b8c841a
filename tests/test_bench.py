"""`c360 bench --quick` runs every section and writes a JSON with all six (harness only:
no performance thresholds here)."""

from __future__ import annotations

import json
from pathlib import Path

from c360.cli import main


def test_bench_quick_writes_all_sections(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--no-peers", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert sorted(sections) == ["1_python_limit", "2_peers", "3_streams", "4_latency",
                                "5_memory", "6_fanout"]
    for name, section in sections.items():
        assert "error" not in section, (name, section.get("error"))
    s1 = sections["1_python_limit"]
    assert s1["c360"]["events"] == s1["bare_loop"]["events"] == s1["dataset"]["events"]
    assert s1["ratio"] > 0
    s2 = sections["2_peers"]
    assert s2["c360"]["events_per_cpu_s"] > 0
    for peer in s2["peers"].values():
        assert "events_per_cpu_s" in peer or peer.get("skipped") or peer.get("error")
    s3 = sections["3_streams"]
    assert [r["streams"] for r in s3["c360"]] == [1, 4, 8, 15]
    assert all(r["events_per_cpu_s"] > 0 and r["latest_record_bytes"] > 0 for r in s3["c360"])
    assert "skipped" in s3["flink"] or "error" in s3["flink"] or s3["flink"]
    s4 = sections["4_latency"]
    assert [lv["load"] for lv in s4["levels"]] == [0.1, 0.5, 0.8]
    assert all(lv["store"]["n"] > 0 for lv in s4["levels"])
    s5 = sections["5_memory"]
    assert all(r["bytes_per_customer"] > 0 for r in s5["rows"])
    assert sections["6_fanout"].get("skipped") or sections["6_fanout"].get("clients")
