"""`c360 bench --quick` runs every section and writes a JSON with all six, its plots and its
tables (harness only: no performance thresholds here)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.harness.report import tables
from benchmarks.harness.s4_latency import (
    QUICK_RATE,
    busiest,
    client_latencies,
    highest_within,
    search_bounds,
)
from c360.cli import main


def test_bench_quick_writes_all_sections(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    img = tmp_path / "img"
    assert main(["bench", "--quick", "--no-peers", "--quiet", "--out", str(out),
                 "--plots", str(img)]) == 0
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
    # The logic-off leg reads the same events as the full dataflow, and does less per event.
    assert s2["c360_logic_off"]["events"] == s2["c360"]["events"] == s2["dataset"]["events"]
    assert s2["c360_logic_off"]["deltas_applied"] == s2["c360"]["deltas_applied"]
    assert set(s2["ratios_to_bare_loop"]) >= {"c360", "c360_logic_off"}
    for peer in s2["peers"].values():
        assert "events_per_cpu_s" in peer or peer.get("skipped") or peer.get("error")
    s3 = sections["3_streams"]
    assert [r["streams"] for r in s3["c360"]] == [1, 4, 8, 15]
    assert all(r["events_per_cpu_s"] > 0 and r["latest_record_bytes"] > 0 for r in s3["c360"])
    assert "full runs" in s3["flink"]["skipped"]  # --quick skips PyFlink and says why
    s4 = sections["4_latency"]
    assert [lv["rate"] for lv in s4["levels"]] == [QUICK_RATE]  # full runs: 2k, 10k, 20k
    for lv in s4["levels"]:
        assert lv["store"]["n"] > 0
        # The client leg: a real WebSocket client received patches covering the deltas.
        assert lv["client"]["n"] > 0 and lv["client"]["patches"] > 0
        assert lv["client"]["gaps"] == 0
        # The browser leg: Chromium painted every delta of the customers its page synced,
        # and its table shows the version the page's copy is at.
        br = lv["browser"]
        assert br["n"] > 0 and br["customer_deltas_not_rendered"] == 0
        assert br["gaps"] == br["errors"] == 0 and br["page_errors"] == []
        assert br["dom_shows_every_version"] and br["entities_seen"] == len(br["entities"])
        assert br["n"] == lv["client_watched"]["n"]  # the same deltas the client received
    s6 = sections["6_fanout"]
    sc = s6["scenario"]
    base, fan = s6["baseline"], s6["fanout"]
    assert base["produced"]["produced"] == fan["produced"]["produced"] > 0
    assert base["pipeline"]["applied"] == fan["pipeline"]["applied"] > 0
    sync = [c for c in fan["connect"] if c["kind"] == "sync"]
    assert sum(c["subscribed"] for c in sync) == sc["clients"]
    frames = s6["frames"]
    assert frames["client_connection_errors"] == 0 and frames["dashboard_sessions_failed"] == 0
    assert frames["client_patches"] > 0
    assert frames["dashboard_patches_min_per_session"] > 0  # every session was live
    assert s6["throughput_ratio"] > 0 and s6["server_cpu_s"] > 0
    assert sorted(p.name for p in img.iterdir()) == [
        "bench-fanout.png", "bench-latency.png", "bench-memory.png", "bench-streams.png",
        "bench-throughput.png"]
    md = tables(result)
    for heading in ("### 1.", "### 2.", "### 3.", "### 4.", "### 5.", "### 6. Fan-out"):
        assert heading in md


def test_client_latency_covers_coalesced_patches() -> None:
    versions = {"cust-1": {"1": 10.0, "2": 10.5, "3": 11.0}, "cust-2": {"1": 20.0},
                "prod-1": {"1": 5.0}}
    # cust-1: a snapshot at v1, then one patch merging v2 and v3; cust-2 never arrived.
    arrivals = [("cust-1", 0, 1, 10.25), ("cust-1", 1, 3, 12.0)]
    lat, missing = client_latencies(versions, arrivals)
    assert sorted(lat) == [0.25, 1.0, 1.5]
    assert missing == 1


def test_the_browser_watches_the_busiest_customers_of_the_run() -> None:
    import pandas as pd

    from benchmarks.harness.paced import paced_items

    items = paced_items(2_000, 3_000)
    frame = pd.DataFrame([(stream, key) for stream, key, _event in items],
                         columns=["stream", "key"])
    counts = frame[frame["key"].str.startswith("cust-")]["key"].value_counts()
    top = busiest(items, 8)
    assert len(top) == 8
    assert [counts[k] for k in top] == list(counts.iloc[:8])


def _lv(rate: int, achieved: int, p99: float) -> dict:
    return {"rate": rate, "produced": {"achieved_rate": achieved},
            "client": {"p99_ms": p99}, "browser": {"p99_ms": p99 * 2}}


def test_the_search_bisects_between_the_rates_that_met_the_target_and_those_that_did_not() -> None:
    levels = [_lv(2_000, 2_000, 40.0), _lv(10_000, 9_500, 90.0), _lv(20_000, 15_000, 900.0)]
    assert search_bounds(levels, 30_000, 100.0) == (10_000, 20_000)
    assert search_bounds(levels[2:], 30_000, 100.0) == (0, 20_000)  # none met it
    assert search_bounds(levels[:2], 30_000, 100.0) == (10_000, 30_000)  # all met it
    # The answer is the highest achieved rate among those that met it.
    best = highest_within(levels + [_lv(15_000, 12_000, 99.0)], 100.0)
    assert best is not None and best["produced"]["achieved_rate"] == 12_000
    assert highest_within(levels[2:], 100.0) is None


def test_flink_input_files_and_the_chained_join_size_agree_with_pandas(tmp_path: Path) -> None:
    import functools

    import pandas as pd

    from benchmarks.harness.s3_streams import CUSTOMER_STREAMS, write_stream_files

    streams = CUSTOMER_STREAMS[:4]
    meta = write_stream_files(tmp_path, streams, customers=300, events=6_000, cap=2)
    frames = {s: pd.read_json(tmp_path / f"{s}.jsonl", lines=True) for s in streams}
    assert {s: len(f) for s, f in frames.items()} == meta["rows_per_stream"]
    assert all(f.groupby("customer_id").size().max() <= 2 for f in frames.values())
    # What Flink's chained inner join over the same files would produce, row for row.
    joined = functools.reduce(
        lambda a, b: a.merge(b, on="customer_id"),
        [f[["customer_id", "ts"]].rename(columns={"ts": s}) for s, f in frames.items()])
    assert len(joined) == meta["chained_join_rows_expected"] > 0
    assert joined["customer_id"].nunique() == meta["customers_with_every_stream"]
