"""Markdown tables of a bench result, for docs/benchmarks.md.

    python -m c360.bench.report artifacts/bench-full.json > tables.md
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _k(v: float | None) -> str:
    return "—" if v is None else f"{v / 1000:,.1f}k"


def tables(r: dict[str, Any]) -> str:
    s = r["sections"]
    out: list[str] = []
    m = r["machine"]
    out.append(f"Run {r['started_at']} → {r.get('finished_at', '?')}; {m['cpu']}, "
               f"{m['cores']} cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}.")
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".")
    s1 = s.get("1_python_limit")
    if s1 and "c360" in s1:
        out += ["", "### 1. Pipeline vs the Python limit", "",
                "| engine | events | CPU s | wall s | events / CPU-s | runs (events / CPU-s) |",
                "|---|---:|---:|---:|---:|---|"]
        for name in ("bare_loop", "c360"):
            x = s1[name]
            out.append(f"| {name} | {x['events']:,} | {x['cpu_s']:.2f} | {x['wall_s']:.2f} | "
                       f"{_k(x['events_per_cpu_s'])} | {x['all_events_per_cpu_s']} |")
        out.append(f"\nRatio c360 / bare loop: **{s1['ratio']}** (target ≥ {s1['target']}).")
    s2 = s.get("2_peers")
    if s2 and "c360" in s2:
        out += ["", "### 2. Peers", "",
                "| engine | version | work per event | events / CPU-s | × bare loop |",
                "|---|---|---|---:|---:|"]
        ratios = s2.get("ratios_to_bare_loop", {})
        out.append(f"| bare loop | — | decode + dict update | "
                   f"{_k(s2['bare_loop']['events_per_cpu_s'])} | 1.0 |")
        out.append(f"| c360 | {r['versions'].get('c360')} | full dataflow | "
                   f"{_k(s2['c360']['events_per_cpu_s'])} | {ratios.get('c360')} |")
        for name, p in s2["peers"].items():
            if "events_per_cpu_s" in p:
                out.append(f"| {name} | {p['version']} | per-key count + sum | "
                           f"{_k(p['events_per_cpu_s'])} | {ratios.get(name)} |")
            else:
                out.append(f"| {name} | {p['version']} | — | "
                           f"{p.get('skipped') or p.get('error')} | — |")
        out.append(f"\nc360 / best peer ({s2.get('best_peer')}): "
                   f"**{s2.get('ratio_to_best_peer')}** (target ≥ {s2['target']}).")
    s3 = s.get("3_streams")
    if s3 and s3.get("c360"):
        out += ["", "### 3. Streams feeding one entity", "",
                "| streams | events | customers | events / CPU-s | × 1 stream | entity bytes "
                "| latest records bytes | entity / latest |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for x in s3["c360"]:
            if "error" in x:
                out.append(f"| {x['streams']} | {x['events']:,} | — | failed: {x['error']} "
                           "| | | | |")
                continue
            out.append(f"| {x['streams']} | {x['events']:,} | {x['customers']:,} | "
                       f"{_k(x['events_per_cpu_s'])} | {x['throughput_vs_1_stream']} | "
                       f"{x['entity_json_bytes']:,.0f} | {x['latest_record_bytes']:,.0f} | "
                       f"{x['state_to_latest_records']} |")
        out.append(f"\nFlink leg: {s3['flink'].get('skipped') or s3['flink']}.")
    s4 = s.get("4_latency")
    if s4 and s4.get("levels"):
        out += ["", "### 4. Latency, produce → store", "",
                f"Max throughput (wall): {s4['max_events_per_wall_s']:,} events/s.", "",
                "| load | rate ev/s | deltas | p50 ms | p99 ms | p99.9 ms | client leg |",
                "|---:|---:|---:|---:|---:|---:|---|"]
        for lv in s4["levels"]:
            st = lv["store"]
            client = lv["client"].get("skipped") or lv["client"].get("p99_ms")
            out.append(f"| {lv['load']:.0%} | {lv['rate']:,} | {st.get('n', 0):,} | "
                       f"{st.get('p50_ms')} | {st.get('p99_ms')} | {st.get('p999_ms')} | "
                       f"{client} |")
    s5 = s.get("5_memory")
    if s5 and s5.get("rows"):
        out += ["", "### 5. Memory per entity", "",
                "| customers | products | events | RSS growth MB | bytes / entity "
                "| pickled state bytes / entity |", "|---:|---:|---:|---:|---:|---:|"]
        for x in s5["rows"]:
            out.append(f"| {x['customers']:,} | {x['products']:,} | {x['events']:,} | "
                       f"{x['rss_growth_bytes'] / 2**20:,.1f} | {x['bytes_per_customer']:,} | "
                       f"{x['pickled_state_bytes_per_entity']:,} |")
    s6 = s.get("6_fanout")
    if s6:
        out += ["", "### 6. Fan-out", "", f"{s6.get('skipped') or s6}"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(tables(json.load(f)))
