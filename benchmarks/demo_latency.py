"""Event -> sync client latency on the ``c360 demo`` path (issue 18: "the same client figures
from the demo path, its simulator's producer, not only the bench's").

    .venv/bin/python -m benchmarks.demo_latency [--rates 1000,2000] [--seconds 20]
                                                [--customers 500] [--out demo-latency.json]

Per rate, runs the real command ``c360 demo --no-browser --rate R`` (its embedded broker,
its simulator thread producing every stream, the dataflow, the sync server), reads the sync
URL and the run's token from its stdout, and connects one WebSocket client (this process)
syncing every customer (``sync "*"``), as section 4 of ``c360 bench`` does.

What is measured: the simulator stamps event ``n`` with ``start + n / rate`` and produces it
at that wall-clock time, so an event's time is when it was due to be produced (a producer
falling behind shows as latency, as it should). A patch carries no event time, but the
entity fields it changes do (``last_order_at``, the ``at`` of the newest search, review,
location...): the latency of a patch is its arrival time minus the newest ISO time in its
ops that is no later than the arrival. Patches that carry no time (points, scores,
segments) are counted but not measured; the simulator's deliberately late events (1 to 15
minutes, c360.dev.simulator.LATE_MINUTES) fall outside the one-minute window
(benchmarks.harness.worker.percentiles). Everything runs on this machine: one wall clock.
Measured figures: docs/benchmarks.md, section 4 ("The same client figure on the c360 demo
path").
The first ``--warmup`` seconds after the wildcard is synced are not counted (the dataflow
and the simulator settle).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.harness.common import child_env
from benchmarks.harness.worker import percentiles
from c360.dev.broker import free_port

ISO = re.compile(rb'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))"')


def newest_time(raw: bytes, now: float) -> float | None:
    """The newest ISO time in a frame that is not after ``now`` (epoch seconds), if any."""
    best: float | None = None
    for m in ISO.finditer(raw):
        t = datetime.fromisoformat(m.group(1).decode().replace("Z", "+00:00")).timestamp()
        if t <= now and (best is None or t > best):
            best = t
    return best


async def measure(url: str, token: str, warmup: float, seconds: float) -> dict[str, Any]:
    import websockets

    lat: list[float] = []
    counts = {"patches": 0, "patches_with_a_time": 0, "snapshots": 0}
    timed_fields: set[str] = set()
    async with websockets.connect(url, max_size=None, ping_interval=None,
                                  open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.send(json.dumps({"type": "sync", "entity": "*"}))
        began: float | None = None
        while True:
            raw = await asyncio.wait_for(ws.recv(), 30)
            now = time.time()
            data = raw.encode() if isinstance(raw, str) else raw
            if began is None:
                if b'"synced"' in data[:40]:
                    began = time.monotonic()
                continue
            elapsed = time.monotonic() - began
            if elapsed > warmup + seconds:
                break
            m = json.loads(data)
            kind = m["type"]
            if kind == "snapshot":
                counts["snapshots"] += 1
            if kind != "patch" or elapsed < warmup:
                continue
            counts["patches"] += 1
            t = newest_time(data, now)
            if t is not None:
                counts["patches_with_a_time"] += 1
                lat.append(now - t)
                timed_fields.update(op["path"] for op in m["ops"]
                                    if ISO.search(json.dumps(op["value"]).encode()))
    # Which fields carried the times measured: to check that they are event times.
    return {**percentiles(lat), **counts, "timed_fields": sorted(timed_fields)[:40]}


def run_rate(rate: float, customers: int, warmup: float, seconds: float) -> dict[str, Any]:
    c360 = str(Path(sys.executable).with_name("c360"))
    port, sync_port = free_port(), free_port()
    proc = subprocess.Popen([c360, "demo", "--no-browser", "--port", str(port), "--sync-port",
                             str(sync_port), "--rate", str(rate), "--customers", str(customers)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=child_env(), start_new_session=True)
    try:
        url = token = None
        assert proc.stdout is not None
        for line in proc.stdout:
            if "sync token for this run" in line:
                token = line.rsplit(":", 1)[1].strip()
            elif "sync at " in line:
                url = line.split("sync at ", 1)[1].strip()
            if url and token:
                break
        if not (url and token):
            raise SystemExit(f"c360 demo exited {proc.poll()} before printing its sync URL")
        out = asyncio.run(measure(url, token, warmup, seconds))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the demo stops its parts and its broker
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {"rate": rate, "customers": customers, "warmup_s": warmup, "seconds": seconds,
            "client": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="1000,2000", help="events/s, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--customers", type=int, default=500)
    p.add_argument("--out", type=Path, default=Path("demo-latency.json"))
    a = p.parse_args(argv)
    results = []
    for rate in (float(r) for r in a.rates.split(",")):
        r = run_rate(rate, a.customers, a.warmup, a.seconds)
        c = r["client"]
        print(f"{rate:,.0f} events/s: client p50 {c.get('p50_ms')} ms, p99 {c.get('p99_ms')} ms "
              f"({c.get('n', 0):,} of {c['patches']:,} patches carried a time)", flush=True)
        results.append(r)
    a.out.write_text(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "rates": results}, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
