"""Section 4 — latency: event produced -> delta in the store -> patch at a sync client.

First the dataflow's maximum throughput on pre-produced topics (events per wall-second);
then, per load level, a child process runs the dataflow and a sync server while this
process produces at that share of the maximum, stamping each event's time with the wall
clock at produce. The store leg is measured where the sink applies the delta; the client
leg where a WebSocket client (its own process) receives the patch covering that delta.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness.common import Scale, best_of, broker, worker
from benchmarks.harness.data import produce
from benchmarks.harness.paced import PARTITIONS, LineChild, live_worker, paced, prepare
from benchmarks.harness.progress import Progress
from benchmarks.harness.s1_python_limit import worker_args
from benchmarks.harness.worker import percentiles

LOADS = (0.1, 0.5, 0.8)
TARGET_STORE_P99_MS = 50.0
TARGET_CLIENT_P99_MS = 100.0
TOKEN = "bench-latency"
DRAIN_S = 2.0  # after the last sentinel, how long the client may still receive patches


def steps(scale: Scale) -> int:
    return 2 + len(LOADS)


def client_latencies(versions: dict[str, dict[str, float]],
                     arrivals: list[tuple[str, int, int, float]]) -> tuple[list[float], int]:
    """Seconds from each delta's event time to the client receiving a patch covering it.

    ``versions``: entity -> version (as a JSON key) -> event time of that delta;
    ``arrivals``: (entity, from, version, received at) per patch or snapshot. It covers
    the versions ``from + 1 .. version`` (several when the server coalesced them; a
    snapshot covers those since the client's previous version). Returns the latencies and
    how many customer deltas nothing covered (still in flight when the client stopped).
    """
    out: list[float] = []
    covered = 0
    for eid, base, version, t in arrivals:
        times = versions.get(eid)
        if times is None:
            continue
        for v in range(base + 1, version + 1):
            ts = times.get(str(v))
            if ts is not None:
                out.append(t - ts)
                covered += 1
    customers = sum(len(v) for k, v in versions.items() if k.startswith("cust-"))
    return out, customers - covered


def _level(bootstrap: str, prefix: str, rate: float, seconds: float, customers: int,
           tmp: Path) -> dict[str, Any]:
    sentinels = prepare(bootstrap, prefix)
    versions_path, arrivals_path = tmp / f"{prefix}versions.json", tmp / f"{prefix}arrivals.json"
    args = {"bootstrap": bootstrap, "prefix": prefix, "partitions": PARTITIONS,
            "sentinels": sentinels, "sync": True, "token": TOKEN,
            "versions_out": str(versions_path)}
    worker_ = live_worker(args)
    client = None
    try:
        url = worker_.expect("READY")["sync_url"]
        # One client syncing every customer (the wildcard): it receives a patch for every
        # customer delta unless the server coalesces them.
        client = LineChild("benchmarks.harness.clients", "sync",
                           {"url": url, "token": TOKEN, "n": 1, "wildcard": 1,
                            "arrivals_out": str(arrivals_path)})
        client.expect("READY")
        worker_.send("GO")
        produced = paced(bootstrap, prefix, rate, seconds, customers)
        result = worker_.expect("DONE")
        time.sleep(DRAIN_S)
        served = worker_.stats()
        seen = client.stop()
        client = None
        worker_.stop()
    finally:
        for child in (client, worker_):
            if child is not None:
                child.kill()
    lat, uncovered = client_latencies(json.loads(versions_path.read_text()),
                                      json.loads(arrivals_path.read_text()))
    result["client"] = {**percentiles(lat), "customer_deltas_not_received": uncovered,
                        "patches": seen["patches"], "snapshots": seen["snapshots"],
                        "gaps": seen["gaps"], "client_cpu_s": seen["cpu_s"]}
    result["sync"] = served.get("sync", {})
    result["produced"] = produced
    return result


def run(scale: Scale, progress: Progress) -> dict[str, Any]:
    seconds = 3.0 if scale.quick else 10.0
    out: dict[str, Any] = {"target_store_p99_ms_at_50pct": TARGET_STORE_P99_MS,
                           "target_client_p99_ms_at_50pct": TARGET_CLIENT_P99_MS, "levels": [],
                           "client_leg": "one WebSocket client (own process) syncing every "
                                         "customer; produce -> patch received"}
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="c360-s4-") as tmp:
        ds = produce(bootstrap, "b4max.", events=scale.events, customers=scale.customers)
        progress.step("s4 produced")
        best = best_of([worker("c360", worker_args(ds))])
        max_rate = best["events_per_wall_s"]
        out["max_events_per_wall_s"] = round(max_rate)
        progress.step("s4 max throughput")
        for i, load in enumerate(LOADS):
            result = _level(bootstrap, f"b4l{i}.", load * max_rate, seconds, scale.customers,
                            Path(tmp))
            result.update(load=load, rate=round(load * max_rate))
            out["levels"].append(result)
            progress.step(f"s4 {int(load * 100)}% load")
    half = next(lv for lv in out["levels"] if lv["load"] == 0.5)
    out["store_p99_ms_at_50pct"] = half["store"].get("p99_ms")
    out["client_p99_ms_at_50pct"] = half["client"].get("p99_ms")
    out["met_store"] = (half["store"].get("p99_ms") or 1e9) <= TARGET_STORE_P99_MS
    out["met_client"] = (half["client"].get("p99_ms") or 1e9) <= TARGET_CLIENT_P99_MS
    return out
