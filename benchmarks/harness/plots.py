"""PNG plots of a bench result (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_plots(result: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    s = result["sections"]
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = folder / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    bars: dict[str, float] = {}
    s1 = s.get("1_python_limit", {})
    if "c360" in s1:
        bars["bare loop"] = s1["bare_loop"]["events_per_cpu_s"]
        bars["c360"] = s1["c360"]["events_per_cpu_s"]
    s2 = s.get("2_peers", {})
    if "c360_logic_off" in s2:
        bars["c360 logic off"] = s2["c360_logic_off"]["events_per_cpu_s"]
    for name, peer in s2.get("peers", {}).items():
        if "events_per_cpu_s" in peer:
            bars[name] = peer["events_per_cpu_s"]
    if bars:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh(list(bars), [v / 1000 for v in bars.values()], color="#4c72b0")
        ax.set_xlabel("thousand events per CPU-second")
        ax.set_title("Throughput per CPU-second (sections 1-2)")
        save(fig, "bench-throughput.png")
    s3 = s.get("3_streams", {})
    if s3.get("c360"):
        rows = [r for r in s3["c360"] if "error" not in r]
        fig, ax = plt.subplots(1, 2, figsize=(8, 3))
        ks = [r["streams"] for r in rows]
        ax[0].plot(ks, [r["events_per_cpu_s"] / 1000 for r in rows], "o-")
        ax[0].set_xlabel("streams feeding the entity")
        ax[0].set_ylabel("k events / CPU-s")
        ax[0].set_ylim(bottom=0)
        ax[1].plot(ks, [r["entity_json_bytes"] for r in rows], "o-", label="c360 entity")
        ax[1].plot(ks, [r["latest_record_bytes"] for r in rows], "s--",
                   label="latest record per stream")
        ax[1].set_xlabel("streams")
        ax[1].set_ylabel("bytes per customer")
        ax[1].legend()
        fig.suptitle("Section 3: more streams, one entity")
        save(fig, "bench-streams.png")
    flink = s3.get("flink", {}).get("variants", {})
    if flink:
        names = list(flink)
        fig, ax = plt.subplots(1, 2, figsize=(9, 3))
        rss = [flink[n].get("peak_rss_mb") or 0 for n in names]
        rows = [flink[n].get("rows") or 0 for n in names]
        colors = ["#4c72b0" if flink[n].get("status") == "completed" else "#c44e52"
                  for n in names]
        ax[0].barh(names, rss, color=colors)
        ax[0].set_xlabel("peak RSS MB (red: stopped at budget)")
        ax[1].barh(names, rows, color=colors)
        ax[1].set_xscale("symlog")
        ax[1].set_xlabel("rows of the view reached")
        fig.suptitle("Section 3: the per-customer view in PyFlink SQL")
        save(fig, "bench-flink.png")
    s4 = s.get("4_latency", {})
    if s4.get("levels"):
        lv = [x for x in s4["levels"] if x["store"].get("n")]
        fig, ax = plt.subplots(figsize=(6, 3))
        for q in ("p50_ms", "p99_ms", "p999_ms"):
            ax.plot([x["load"] * 100 for x in lv], [x["store"][q] for x in lv], "o-",
                    label=f"store {q[:-3]}")
        client = [x for x in lv if x.get("client", {}).get("n")]
        for q in ("p50_ms", "p99_ms"):
            ax.plot([x["load"] * 100 for x in client], [x["client"][q] for x in client], "s--",
                    label=f"client {q[:-3]}")
        ax.set_yscale("log")
        ax.set_xlabel("% of max throughput")
        ax.set_ylabel("produce -> store / client (ms)")
        ax.legend(fontsize=7)
        save(fig, "bench-latency.png")
    s5 = s.get("5_memory", {})
    if s5.get("rows"):
        rows = s5["rows"]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([r["customers"] for r in rows], [r["bytes_per_customer"] for r in rows], "o-")
        ax.axhline(s5["target_bytes_per_customer"], color="red", ls="--", label="target")
        ax.set_xlabel("customers")
        ax.set_ylabel("bytes per entity (RSS)")
        ax.legend()
        save(fig, "bench-memory.png")
    s6 = s.get("6_fanout", {})
    if "fanout" in s6:
        runs = {"baseline": s6["baseline"], "fan-out": s6["fanout"]}
        fig, ax = plt.subplots(1, 3, figsize=(10, 3))
        ax[0].bar(list(runs), [r["events_per_wall_s"] for r in runs.values()],
                  color="#4c72b0")
        ax[0].set_ylabel("events / wall-s")
        ax[1].bar(list(runs), [r["pipeline"]["store"].get("p99_ms") or 0
                               for r in runs.values()], color="#dd8452")
        ax[1].set_ylabel("produce -> store p99 ms")
        threads = s6["fanout"]["servers"]["thread_cpu_s"]
        ax[2].barh(list(threads), list(threads.values()), color="#55a868")
        ax[2].set_xlabel("CPU s by thread (fan-out run)")
        sc = s6["scenario"]
        fig.suptitle(f"Section 6: {sc['clients']:,} sync clients + {sc['dashboard_sessions']} "
                     f"dashboard sessions at {sc['events_per_s']:,} events/s")
        save(fig, "bench-fanout.png")
    return written
