"""Section 6 — fan-out: 1,000 sync clients and 50 dashboard sessions while 10k events/s flow.

Two live runs of the dataflow (see :mod:`benchmarks.harness.paced`), each in a child process that
also serves its store over the sync server and the live Panel page (``dashboards/live.py``,
served like ``c360 demo`` does), fed the same paced events:

* **baseline**: nobody connected;
* **fan-out**: ``clients`` WebSocket sync clients (asyncio, in client processes of at most
  500 connections), each following ``IDS_PER_CLIENT`` customers, and ``dashboard_sessions``
  Bokeh client sessions of the live page (its periodic refreshes run per session).

Reported: the pipeline's slowdown (events per wall-second from the first event produced to
the last one in the store, and the processing process's CPU per event, fan-out / baseline),
produce -> store latency in both runs, the server threads' CPU (sync server and its store
subscription, Panel server), and the frames: patches sent, coalesced (merged into a
waiting patch), dropped backlogs (overflows: re-sent as snapshots) and what the clients
and sessions received.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.harness.common import Scale, broker
from benchmarks.harness.paced import PARTITIONS, LineChild, live_worker, paced, prepare
from benchmarks.harness.progress import Progress

TARGET = {"clients": 1000, "dashboard_sessions": 50, "events_per_s": 10_000}
QUICK = {"clients": 50, "dashboard_sessions": 5, "events_per_s": 2_000}
IDS_PER_CLIENT = 10
PER_PROCESS = 500  # sync connections per client process
TOKEN = "bench-fanout"
DRAIN_S = 2.0  # after the last sentinel, time for clients to receive what is in flight
SERVER_THREADS = ("c360-sync", "c360-subscription", "panel-server", "other-python")


def steps(scale: Scale) -> int:
    return 2


def _run(bootstrap: str, prefix: str, scenario: dict[str, int], seconds: float,
         customers: int, fan_out: bool) -> dict[str, Any]:
    sentinels = prepare(bootstrap, prefix)
    worker_ = live_worker({"bootstrap": bootstrap, "prefix": prefix, "partitions": PARTITIONS,
                           "sentinels": sentinels, "sync": True, "panel": True,
                           "token": TOKEN})
    children: list[tuple[str, LineChild]] = []
    out: dict[str, Any] = {"fan_out": fan_out}
    try:
        urls = worker_.expect("READY")
        if fan_out:
            n = scenario["clients"]
            pool = min(customers, 2000)  # customers that sign up early in the paced run
            for i, start in enumerate(range(0, n, PER_PROCESS)):
                children.append(("sync", LineChild("benchmarks.harness.clients", "sync", {
                    "url": urls["sync_url"], "token": TOKEN, "n": min(PER_PROCESS, n - start),
                    "ids_per_client": IDS_PER_CLIENT, "id_pool": pool, "seed": i})))
            children.append(("dashboards", LineChild("benchmarks.harness.clients", "dashboards", {
                "url": urls["panel_url"], "sessions": scenario["dashboard_sessions"]})))
            out["connect"] = [{"kind": kind, **child.expect("READY")} for kind, child in children]
        worker_.send("GO")
        began = time.monotonic()
        out["produced"] = paced(bootstrap, prefix, scenario["events_per_s"], seconds, customers)
        out["pipeline"] = worker_.expect("DONE")
        out["produce_to_last_in_store_s"] = round(time.monotonic() - began, 2)
        time.sleep(DRAIN_S)
        out["servers"] = worker_.stats()
        out["clients"] = [{"kind": kind, **child.stop()} for kind, child in children]
        children = []
        worker_.stop()
    finally:
        for _, child in children:
            child.kill()
        worker_.kill()
    p = out["pipeline"]
    out["events_per_wall_s"] = round(out["produced"]["produced"]
                                     / out["produce_to_last_in_store_s"])
    out["process_cpu_us_per_event"] = round(1e6 * p["cpu_s"] / max(1, p["applied"]), 1)
    threads = out["servers"]["thread_cpu_s"]
    out["server_cpu_s"] = round(sum(threads.get(t, 0.0) for t in SERVER_THREADS), 3)
    return out


def _frames(run: dict[str, Any]) -> dict[str, Any]:
    sync = run["servers"].get("sync", {})
    got = [c for c in run.get("clients", []) if c["kind"] == "sync"]
    dash = [c for c in run.get("clients", []) if c["kind"] == "dashboards"]
    return {
        "sync_patches_sent": sync.get("sent"),
        "sync_deltas_coalesced": sync.get("coalesced"),
        "sync_backlogs_dropped": sync.get("overflows"),
        "client_messages": sum(c["messages"] for c in got),
        "client_patches": sum(c["patches"] for c in got),
        "client_snapshots": sum(c["snapshots"] for c in got),
        "client_version_gaps": sum(c["gaps"] for c in got),
        "client_connection_errors": sum(c["client_errors"] for c in got),
        "dashboard_patches": sum(c["patches"] for c in dash),
        "dashboard_patches_min_per_session": min((c["min_patches"] for c in dash), default=None),
        "dashboard_sessions_failed": sum(c["failed"] for c in dash),
    }


def run(scale: Scale, progress: Progress) -> dict[str, Any]:
    scenario = QUICK if scale.quick else TARGET
    seconds = 5.0 if scale.quick else 20.0
    customers = 2_000 if scale.quick else 10_000
    with broker() as bootstrap:
        base = _run(bootstrap, "b6base.", scenario, seconds, customers, fan_out=False)
        progress.step("s6 baseline")
        fan = _run(bootstrap, "b6fan.", scenario, seconds, customers, fan_out=True)
        progress.step("s6 fan-out")
    b, f = base["pipeline"], fan["pipeline"]
    return {
        "scenario": scenario, "paced_seconds": seconds, "customers": customers,
        "ids_per_client": IDS_PER_CLIENT, "baseline": base, "fanout": fan,
        "throughput_ratio": round(fan["events_per_wall_s"] / base["events_per_wall_s"], 3),
        "cpu_per_event_ratio": round(fan["process_cpu_us_per_event"]
                                     / base["process_cpu_us_per_event"], 3),
        "store_p99_ms": {"baseline": b["store"].get("p99_ms"), "fanout": f["store"].get("p99_ms")},
        "server_cpu_s": fan["server_cpu_s"],
        "server_cores": round(fan["server_cpu_s"] / max(f["wall_s"], 1e-9), 3),
        "frames": _frames(fan),
        "met": None,  # the issue sets no target for fan-out: it is reported
    }
