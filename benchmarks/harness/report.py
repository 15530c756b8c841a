"""Markdown tables of a bench result, for docs/benchmarks.md.

    python -m benchmarks.harness.report artifacts/bench-full.json > tables.md
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
        if "c360_logic_off" in s2:
            out.append(f"| c360 logic off | {r['versions'].get('c360')} | fold + deltas, no "
                       f"rules/windows/segments/analytics | "
                       f"{_k(s2['c360_logic_off']['events_per_cpu_s'])} | "
                       f"{ratios.get('c360_logic_off')} |")
        for name, p in s2["peers"].items():
            if "events_per_cpu_s" in p:
                out.append(f"| {name} | {p['version']} | per-key count + sum | "
                           f"{_k(p['events_per_cpu_s'])} | {ratios.get(name)} |")
            else:
                out.append(f"| {name} | {p['version']} | — | "
                           f"{p.get('skipped') or p.get('error')} | — |")
        out.append(f"\nc360 / best peer ({s2.get('best_peer')}): "
                   f"**{s2.get('ratio_to_best_peer')}** full logic, "
                   f"**{s2.get('logic_off_ratio_to_best_peer')}** logic off "
                   f"(target ≥ {s2['target']}).")
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
        fl = s3["flink"]
        if "variants" in fl:
            d = fl["data"]
            out += ["", f"PyFlink {fl['version']} (SQL, streaming, parallelism 1), "
                    f"{len(d['streams'])} streams, {d['customers']:,} customers, "
                    f"{d['input_rows']:,} rows (≤ {d['rows_per_customer_stream_cap']} per "
                    f"customer and stream); a chained inner join yields "
                    f"{d['chained_join_rows_expected']:,} rows. Budget per variant: "
                    f"{fl['budget_s']:g} s from submitting the job, {fl['budget_mb']:,} MB "
                    "RSS.", "",
                    "| variant | status | rows reached | rows / s | input rows / s "
                    "| peak RSS MB | wall s | one-row job s |",
                    "|---|---|---:|---:|---:|---:|---:|---:|"]
            for name, v in fl["variants"].items():
                if "error" in v:
                    out.append(f"| {name} | failed: {v['error'][:120]} | | | | | | |")
                    continue
                out.append(f"| {name} | {v['status']} | {v['rows']:,} | {v['rows_per_s']:,} | "
                           f"{v['input_rows_per_s'] or '—'} | {v['peak_rss_mb']:,} | "
                           f"{v['wall_s']} | {v.get('one_row_job_s', '—')} |")
        else:
            out.append(f"\nFlink leg: {fl.get('skipped') or fl.get('error')}.")
    s4 = s.get("4_latency")
    if s4 and s4.get("levels"):
        out += ["", "### 4. Latency, produce → store → client → browser", "",
                f"Max throughput (wall): {s4['max_events_per_wall_s']:,} events/s; "
                f"{s4.get('seconds_per_level', '?')} s per rate. Client: one WebSocket "
                "client syncing every customer; browser: headless Chromium painting the "
                "run's busiest customers (client (same) is the client's figure for those).",
                "", "| rate ev/s | achieved | deltas | store p50 | store p99 | client p50 "
                "| client p99 | client (same) p99 | browser p50 | browser p99 | browser deltas "
                "| patches / snapshots |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for lv in [*s4["levels"], *s4.get("search", [])]:
            searched = " (search)" if lv in s4.get("search", []) else ""
            if "error" in lv:
                out.append(f"| {lv['rate']:,}{searched} | failed: {lv['error'][:120]} "
                           "| | | | | | | | | | |")
                continue
            st, cl = lv["store"], lv.get("client", {})
            br, same = lv.get("browser", {}), lv.get("client_watched", {})
            out.append(f"| {lv['rate']:,}{searched} | {lv['produced']['achieved_rate']:,} | "
                       f"{st.get('n', 0):,} | {st.get('p50_ms')} | {st.get('p99_ms')} | "
                       f"{cl.get('p50_ms')} | {cl.get('p99_ms')} | {same.get('p99_ms')} | "
                       f"{br.get('p50_ms', br.get('skipped'))} | {br.get('p99_ms')} | "
                       f"{br.get('n')} | {cl.get('patches')} / {cl.get('snapshots')} |")
        out.append("\nAll latencies in ms, from the event's produce time.")
        if "highest_rate_client_p99_within_target" in s4:
            h = s4["highest_rate_client_p99_within_target"]
            out.append(
                f"Highest measured rate with client p99 ≤ {s4['target_client_p99_ms_at_10k']:g} "
                "ms: " + ("none of the rates measured" if h is None else
                          f"**{h['achieved_rate']:,} events/s** (client p99 "
                          f"{h['client_p99_ms']} ms, browser p99 {h['browser_p99_ms']} ms)")
                + ".")
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
    if s6 and "fanout" in s6:
        sc, b, f, fr = s6["scenario"], s6["baseline"], s6["fanout"], s6["frames"]
        out += ["", "### 6. Fan-out", "",
                f"{sc['clients']:,} sync clients ({s6['ids_per_client']} customers each) and "
                f"{sc['dashboard_sessions']} dashboard sessions, {sc['events_per_s']:,} events/s "
                f"for {s6['paced_seconds']:g} s.", "",
                "| run | events / wall-s | process CPU µs / event | store p50 ms | store p99 ms "
                "| server CPU s |", "|---|---:|---:|---:|---:|---:|"]
        for name, x in (("baseline (nobody connected)", b), ("fan-out", f)):
            st = x["pipeline"]["store"]
            out.append(f"| {name} | {x['events_per_wall_s']:,} | "
                       f"{x['process_cpu_us_per_event']} | {st.get('p50_ms')} | "
                       f"{st.get('p99_ms')} | {x['server_cpu_s']} |")
        out += ["", f"Throughput fan-out / baseline: **{s6['throughput_ratio']}**; CPU per "
                f"event: {s6['cpu_per_event_ratio']}×; server threads: "
                f"{s6['server_cpu_s']} CPU-s ({s6['server_cores']} cores).", "",
                f"Frames: {fr['sync_patches_sent']:,} sync messages sent, "
                f"{fr['sync_deltas_coalesced']:,} deltas coalesced into waiting patches, "
                f"{fr['sync_backlogs_dropped']} backlogs dropped (re-sent as snapshots); "
                f"clients received {fr['client_patches']:,} patches and "
                f"{fr['client_snapshots']:,} snapshots ({fr['client_version_gaps']} version "
                f"gaps, {fr['client_connection_errors']} connection errors); dashboard sessions "
                f"received {fr['dashboard_patches']:,} document patches (at least "
                f"{fr['dashboard_patches_min_per_session']} each, "
                f"{fr['dashboard_sessions_failed']} sessions failed)."]
    elif s6:
        out += ["", "### 6. Fan-out", "", f"{s6.get('skipped') or s6.get('error')}"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(tables(json.load(f)))
