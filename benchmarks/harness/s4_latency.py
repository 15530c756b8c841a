"""Section 4 — latency: event produced -> delta in the store -> patch at a sync client ->
the value rendered by a real browser.

First the dataflow's maximum throughput on pre-produced topics (events per wall-second, the
upper end of the search below); then, at fixed rates (2k, 10k and 20k events/s; the quick
run: one small rate), a child process runs the dataflow and a sync server while this
process produces at that rate, stamping each event's time with the wall clock at produce.
The store leg is measured where the sink applies the delta; the client leg where a
WebSocket client (its own process) syncing every customer receives the patch covering that
delta; the browser leg where a page in headless Chromium (:mod:`benchmarks.harness.browser`)
syncing a few of the run's busiest customers has painted it. Everything runs on this one
machine, so the wall clocks of the producer, the dataflow, the client and the page are the
same clock (the browser child checks the page's against Python's). Full runs then bisect
over rates for the highest one whose client p99 stays within 100 ms.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness.common import Scale, best_of, broker, worker
from benchmarks.harness.data import produce
from benchmarks.harness.paced import (
    PARTITIONS,
    LineChild,
    live_worker,
    paced,
    paced_items,
    prepare,
)
from benchmarks.harness.progress import Progress
from benchmarks.harness.s1_python_limit import worker_args
from benchmarks.harness.worker import percentiles

RATES = (2_000, 10_000, 20_000)  # events/s, issue 18
QUICK_RATE = 1_000  # the quick run checks the harness: one small rate for 3 s
SEARCH_STEPS = 3  # bisection steps for the highest rate within the client target (full runs)
TARGET_STORE_P99_MS = 50.0  # issue 18's acceptance, at 10k events/s
TARGET_CLIENT_P99_MS = 100.0
TARGET_BROWSER_P99_MS = 250.0
TOKEN = "bench-latency"
DRAIN_S = 2.0  # after the last sentinel, how long the clients may still receive patches
WATCHED = 8  # customers the browser page syncs: the run's busiest (a few hundred renders)


def steps(scale: Scale) -> int:
    return 2 + (1 if scale.quick else len(RATES) + SEARCH_STEPS)


def busiest(items: list[Any], n: int) -> list[str]:
    """The ``n`` customers with the most events among ``items`` (stream, key, event)."""
    counts = Counter(key for _stream, key, _event in items if key.startswith("cust-"))
    return [key for key, _ in counts.most_common(n)]


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
    renders_path = tmp / f"{prefix}renders.json"
    items = paced_items(customers, int(rate * seconds))
    watched = busiest(items, WATCHED)
    args = {"bootstrap": bootstrap, "prefix": prefix, "partitions": PARTITIONS,
            "sentinels": sentinels, "sync": True, "token": TOKEN,
            "versions_out": str(versions_path)}
    worker_ = live_worker(args)
    client = page = None
    try:
        url = worker_.expect("READY")["sync_url"]
        # One client syncing every customer (the wildcard): it receives a patch for every
        # customer delta unless the server coalesces them.
        client = LineChild("benchmarks.harness.clients", "sync",
                           {"url": url, "token": TOKEN, "n": 1, "wildcard": 1,
                            "arrivals_out": str(arrivals_path)})
        client.expect("READY")
        # The browser: a page syncing the run's busiest customers (a few: a person looks
        # at a few customers, not at every one), rendering each value it receives.
        page = LineChild("benchmarks.harness.browser", "page",
                         {"url": url, "token": TOKEN, "entities": watched,
                          "arrivals_out": str(renders_path)})
        page_ready = page.expect("READY")
        worker_.send("GO")
        produced = paced(bootstrap, prefix, rate, seconds, customers, items=items)
        result = worker_.expect("DONE")
        time.sleep(DRAIN_S)
        served = worker_.stats()
        seen = client.stop()
        client = None
        shown = page.stop()
        page = None
        worker_.stop()
    finally:
        for child in (page, client, worker_):
            if child is not None:
                child.kill()
    versions = json.loads(versions_path.read_text())
    arrivals = json.loads(arrivals_path.read_text())
    lat, uncovered = client_latencies(versions, arrivals)
    result["client"] = {**percentiles(lat), "customer_deltas_not_received": uncovered,
                        "patches": seen["patches"], "snapshots": seen["snapshots"],
                        "gaps": seen["gaps"], "client_cpu_s": seen["cpu_s"]}
    # The same client's figures for the browser's customers only, to compare like with like.
    mine = set(watched)
    only = {e: v for e, v in versions.items() if e in mine}
    result["client_watched"] = percentiles(
        client_latencies(only, [a for a in arrivals if a[0] in mine])[0])
    if "skipped" in page_ready:
        result["browser"] = {"skipped": page_ready["skipped"]}
    else:
        blat, bmissing = client_latencies(only, json.loads(renders_path.read_text()))
        result["browser"] = {**percentiles(blat), "customer_deltas_not_rendered": bmissing,
                             "entities": watched, "ready": page_ready, **shown}
    result["sync"] = served.get("sync", {})
    result["produced"] = produced
    result["rate"] = round(rate)
    return result


def _p99(level: dict[str, Any], leg: str) -> float:
    return level.get(leg, {}).get("p99_ms") or 1e9


def highest_within(levels: list[dict[str, Any]], target_ms: float) -> dict[str, Any] | None:
    """The level with the highest achieved produce rate whose client p99 met ``target_ms``."""
    ok = [lv for lv in levels if _p99(lv, "client") <= target_ms]
    return max(ok, key=lambda lv: lv["produced"]["achieved_rate"]) if ok else None


def search_bounds(levels: list[dict[str, Any]], ceiling: float,
                  target_ms: float) -> tuple[float, float]:
    """The rates to bisect between: the highest that met the target (0 if none) and the
    lowest above it that did not (``ceiling``, the max throughput, if none)."""
    lo = max((lv["rate"] for lv in levels if _p99(lv, "client") <= target_ms), default=0.0)
    hi = min((lv["rate"] for lv in levels if lv["rate"] > lo and _p99(lv, "client") > target_ms),
             default=max(ceiling, lo * 2))
    return float(lo), float(hi)


def run(scale: Scale, progress: Progress) -> dict[str, Any]:
    seconds = 3.0 if scale.quick else 10.0
    out: dict[str, Any] = {
        "target_store_p99_ms_at_10k": TARGET_STORE_P99_MS,
        "target_client_p99_ms_at_10k": TARGET_CLIENT_P99_MS,
        "target_browser_p99_ms_at_10k": TARGET_BROWSER_P99_MS, "seconds_per_level": seconds,
        "levels": [], "search": [],
        "client_leg": "one WebSocket client (own process) syncing every customer; "
                      "produce -> patch received",
        "browser_leg": f"headless Chromium, a local page syncing the run's {WATCHED} busiest "
                       "customers; produce -> value painted (after the frame that drew it)"}
    rates = (QUICK_RATE,) if scale.quick else RATES
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="c360-s4-") as tmp:
        ds = produce(bootstrap, "b4max.", events=scale.events, customers=scale.customers)
        progress.step("s4 produced")
        best = best_of([worker("c360", worker_args(ds))])
        max_rate = best["events_per_wall_s"]
        out["max_events_per_wall_s"] = round(max_rate)
        progress.step("s4 max throughput")
        n = 0

        def level(rate: float) -> dict[str, Any]:
            nonlocal n
            try:
                result = _level(bootstrap, f"b4l{n}.", rate, seconds, scale.customers,
                                Path(tmp))
            except Exception as exc:  # one failed rate must not lose the others
                if scale.quick:  # the test suite's run: fail loudly
                    raise
                # (empty legs: the latency plot skips a rate without store figures)
                result = {"rate": round(rate), "error": f"{type(exc).__name__}: {exc}"[:500],
                          "store": {}, "client": {}}
            n += 1
            # "load" (share of the max throughput) is what the latency plot's x axis shows.
            result["load"] = round(rate / max_rate, 3) if max_rate else 0.0
            return result

        for rate in rates:
            out["levels"].append(level(rate))
            progress.step(f"s4 {rate:,} events/s")
        if not scale.quick:
            # Latency is noisy on a shared machine and not strictly monotonic in the rate:
            # the answer is the highest *measured* rate that met the target, fixed or searched.
            lo, hi = search_bounds(out["levels"], max_rate, TARGET_CLIENT_P99_MS)
            for _ in range(SEARCH_STEPS):
                mid = (lo + hi) / 2
                result = level(mid)
                out["search"].append(result)
                if _p99(result, "client") <= TARGET_CLIENT_P99_MS:
                    lo = mid
                else:
                    hi = mid
                progress.step(f"s4 search {mid:,.0f} events/s")
            best_level = highest_within(out["levels"] + out["search"], TARGET_CLIENT_P99_MS)
            out["highest_rate_client_p99_within_target"] = (
                None if best_level is None else
                {"rate": best_level["rate"],
                 "achieved_rate": best_level["produced"]["achieved_rate"],
                 "client_p99_ms": best_level["client"].get("p99_ms"),
                 "browser_p99_ms": best_level.get("browser", {}).get("p99_ms")})
    at = next((lv for lv in out["levels"] if lv["rate"] == 10_000), None)
    if at is not None:
        out["store_p99_ms_at_10k"] = at["store"].get("p99_ms")
        out["client_p99_ms_at_10k"] = at["client"].get("p99_ms")
        out["browser_p99_ms_at_10k"] = at.get("browser", {}).get("p99_ms")
        out["met_store"] = _p99(at, "store") <= TARGET_STORE_P99_MS
        out["met_client"] = _p99(at, "client") <= TARGET_CLIENT_P99_MS
        out["met_browser"] = _p99(at, "browser") <= TARGET_BROWSER_P99_MS
    return out
