"""A sync client that stops reading for 30 s while the simulator produces 5,000 events/s.

Phases, each ``--seconds`` long, on one embedded broker, one dataflow and one sync server:

  A. baseline: a reading client syncs every customer (wildcard)
  B. stall:    a second wildcard client is connected and reads nothing
  C. recovery: the stalled client reads again; the simulator stops; we time how long it
               takes for its copy to equal the store for every customer

Reports the dataflow's throughput (events applied to the store per second) in A and B,
the process's peak RSS, the server's per-connection queue sizes, and the convergence.
Not part of the test suite: ``python benchmarks/slow_client.py`` (about two minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from typing import Any

import jsonpatch
import msgspec
import psutil
import websockets

from c360.config import Settings
from c360.dev.broker import EmbeddedBroker
from c360.dev.simulator import simulate
from c360.run.pipeline import Pipeline
from c360.sync import SyncServer, TokenBook


class Client:
    """A raw wildcard client; ``reading`` gates whether it takes messages off the socket."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.reading = threading.Event()
        self.reading.set()
        self.copies: dict[str, Any] = {}
        self.versions: dict[str, int] = {}
        self.messages = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._run(), self.loop)

    async def _run(self) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "auth", "token": "bench"}))
            await ws.send(json.dumps({"type": "sync", "entity": "*"}))
            while True:
                while not self.reading.is_set():
                    await asyncio.sleep(0.05)
                m = json.loads(await ws.recv())
                self.messages += 1
                if m["type"] == "snapshot":
                    self.copies[m["entity"]] = m["data"]
                    self.versions[m["entity"]] = m["version"]
                elif m["type"] == "patch" and self.versions.get(m["entity"]) == m["from"]:
                    jsonpatch.apply_patch(self.copies[m["entity"]], m["ops"], in_place=True)
                    self.versions[m["entity"]] = m["version"]


def applied(pipeline: Pipeline) -> int:
    return sum(pipeline.store.stream_counts().values())


def phase(name: str, seconds: float, pipeline: Pipeline, server: SyncServer,
          proc: psutil.Process) -> dict[str, Any]:
    start_n, start_t = applied(pipeline), time.monotonic()
    peak_rss = 0
    peak_pending = peak_resnap = 0
    while time.monotonic() - start_t < seconds:
        time.sleep(0.5)
        peak_rss = max(peak_rss, proc.memory_info().rss)
        st = server.stats()
        peak_pending = max([peak_pending, *st["pending"]])
        peak_resnap = max([peak_resnap, *st["resnap"]])
    rate = (applied(pipeline) - start_n) / (time.monotonic() - start_t)
    out = {"phase": name, "events_per_s": round(rate), "peak_rss_mb": round(peak_rss / 2**20),
           "peak_pending_entities": peak_pending, "peak_resnap_entities": peak_resnap,
           "stats": server.stats()}
    print(json.dumps({k: v for k, v in out.items() if k != "stats"}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    proc = psutil.Process()
    with EmbeddedBroker() as broker:
        settings = Settings(bootstrap=broker.bootstrap, topic_prefix=f"b{uuid.uuid4().hex[:6]}.")
        tokens = TokenBook.from_tokens({"bench": {"pii": True}})
        stop = threading.Event()
        with Pipeline(settings) as pipeline, SyncServer(pipeline.store, tokens) as server:
            sim = threading.Thread(target=simulate, args=(settings,), daemon=True, kwargs=dict(
                customers=args.customers, rate=args.rate, progress=False, stop=stop))
            sim.start()
            reader = Client(server.url)
            time.sleep(5)  # warm up: customers sign up, the dataflow settles
            a = phase("A baseline (one reading client)", args.seconds, pipeline, server, proc)
            stalled = Client(server.url)
            time.sleep(1)
            stalled.reading.clear()
            b = phase("B one client stalled", args.seconds, pipeline, server, proc)
            stalled.reading.set()
            t0 = time.monotonic()
            stop.set()
            sim.join(60)
            store = pipeline.store

            def converged() -> bool:
                ids = store.ids()
                return all(stalled.versions.get(i) == store.get(i)["version"] for i in ids)

            while not converged() and time.monotonic() - t0 < 120:
                time.sleep(0.2)
            took = time.monotonic() - t0
            equal = all(
                stalled.copies.get(i) == json.loads(msgspec.json.encode(
                    {k: v for k, v in store.get(i).items() if k != "version"}))
                for i in store.ids())
            drop = 1 - b["events_per_s"] / a["events_per_s"]
            print(json.dumps({
                "throughput_drop_pct": round(100 * drop, 1),
                "stalled_client_converged_s": round(took, 1), "copies_equal_store": equal,
                "customers": store.count(), "overflows": b["stats"]["overflows"],
                "coalesced": b["stats"]["coalesced"], "reader_messages": reader.messages,
                "stalled_messages": stalled.messages}), flush=True)


if __name__ == "__main__":
    main()
