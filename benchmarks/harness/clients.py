"""Client processes for sections 4 and 6: real WebSocket sync clients and real Bokeh sessions.

    python -m benchmarks.harness.clients sync '<json args>'        # many asyncio sync connections
    python -m benchmarks.harness.clients dashboards '<json args>'  # Panel sessions via bokeh.client

Line protocol (see :class:`benchmarks.harness.paced.LineChild`): ``READY {...}`` once every client
is connected (and, for sync, subscribed), then ``FINAL {...}`` after ``STOP`` on stdin.
Clients run in their own processes so that their CPU is not the server's.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def plan(args: dict[str, Any]) -> list[str | list[str]]:
    """What each client syncs: ``"*"`` (every customer) or a list of customer ids.

    ``wildcard`` clients sync everything; the other ``n - wildcard`` each sync
    ``ids_per_client`` ids drawn (seeded) from ``cust-00001`` … ``cust-<id_pool>``.
    """
    rng = random.Random(args.get("seed", 11))
    pool = [f"cust-{i:05d}" for i in range(1, args.get("id_pool", 1000) + 1)]
    wild = args.get("wildcard", 0)
    per = min(args.get("ids_per_client", 10), len(pool))
    return ["*"] * wild + [rng.sample(pool, per) for _ in range(args["n"] - wild)]


@dataclass
class SyncCounts:
    messages: int = 0
    patches: int = 0
    snapshots: int = 0
    gaps: int = 0  # a patch whose `from` was not the copy's version (a resume follows)
    errors: int = 0
    bytes: int = 0
    arrivals: list[tuple[str, int, int, float]] = field(default_factory=list)


async def _sync_client(url: str, token: str, wants: str | list[str], counts: SyncCounts,
                       record: bool, ready: asyncio.Event, connected: list[int],
                       stop: asyncio.Event, timeout: float) -> None:
    import websockets

    decode = msgspec.json.Decoder().decode
    entities = [wants] if isinstance(wants, str) else wants
    versions: dict[str, int] = {}
    async with websockets.connect(url, max_size=None, open_timeout=timeout,
                                  ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        for e in entities:
            await ws.send(json.dumps({"type": "sync", "entity": e}))
        owed = len(entities)
        reader = asyncio.ensure_future(ws.recv())
        stopper = asyncio.ensure_future(stop.wait())
        while True:
            finished, _ = await asyncio.wait({reader, stopper},
                                             return_when=asyncio.FIRST_COMPLETED)
            if stopper in finished:
                reader.cancel()
                return
            raw = reader.result()
            t = time.time()
            reader = asyncio.ensure_future(ws.recv())
            m = decode(raw)
            counts.messages += 1
            counts.bytes += len(raw)
            kind = m.get("type")
            if kind == "patch":
                eid = m["entity"]
                counts.patches += 1
                if versions.get(eid) != m["from"]:
                    counts.gaps += 1
                    await ws.send(json.dumps({"type": "resume", "entity": eid,
                                              "from_version": versions.get(eid, 0)}))
                    continue
                versions[eid] = m["version"]
                if record:
                    counts.arrivals.append((eid, m["from"], m["version"], t))
            elif kind == "snapshot":
                eid = m["entity"]
                counts.snapshots += 1
                if record and m["version"] > versions.get(eid, 0):
                    counts.arrivals.append((eid, versions.get(eid, 0), m["version"], t))
                versions[eid] = m["version"]
            elif kind == "synced":
                owed -= 1
                if owed == 0:
                    connected[0] += 1
                    if connected[0] >= connected[1]:
                        ready.set()
            elif kind == "error":
                counts.errors += 1


async def _run_sync(args: dict[str, Any]) -> None:
    wants = plan(args)
    counts = SyncCounts()
    ready, stop = asyncio.Event(), asyncio.Event()
    connected = [0, len(wants)]
    record = bool(args.get("arrivals_out"))
    timeout = float(args.get("connect_timeout", 120))
    cpu0 = cpu_seconds()
    tasks = []
    for i, w in enumerate(wants):
        tasks.append(asyncio.ensure_future(_sync_client(
            args["url"], args["token"], w, counts, record, ready, connected, stop, timeout)))
        if i % 50 == 49:  # let the server's accept loop keep up with the connects
            await asyncio.sleep(0.05)
    began = time.monotonic()
    failed: list[str] = []
    while not ready.is_set():
        await asyncio.sleep(0.1)
        failed = [repr(t.exception())[:200] for t in tasks if t.done() and t.exception()]
        if failed or time.monotonic() - began > timeout:
            break
    print("READY " + json.dumps({"clients": len(wants), "subscribed": connected[0],
                                 "failed": len(failed), "first_error": failed[:1],
                                 "seconds": round(time.monotonic() - began, 2)}), flush=True)
    counts_at_ready = (counts.messages, counts.patches, counts.snapshots)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    errors = [repr(t.exception())[:200] for t in tasks if t.exception()]
    if record:
        with open(args["arrivals_out"], "w") as f:
            json.dump(counts.arrivals, f)
    print("FINAL " + json.dumps({
        "clients": len(wants), "subscribed": connected[0], "client_errors": len(errors),
        "first_error": errors[:1], "messages": counts.messages, "patches": counts.patches,
        "snapshots": counts.snapshots, "gaps": counts.gaps, "errors": counts.errors,
        "bytes": counts.bytes,
        "after_ready": {"messages": counts.messages - counts_at_ready[0],
                        "patches": counts.patches - counts_at_ready[1],
                        "snapshots": counts.snapshots - counts_at_ready[2]},
        "cpu_s": round(cpu_seconds() - cpu0, 3)}), flush=True)


def run_dashboards(args: dict[str, Any]) -> None:
    """``sessions`` Bokeh client sessions of the Panel page, each on its own thread.

    Each session tells the server its document is ready (as a browser does once it has
    rendered it; Panel starts a session's periodic refreshes only then) and counts the
    document patches the server pushes.
    """
    # The page's module registers the Bokeh models it is made of (Panel's, Tabulator's,
    # HoloViews'), as a browser loads the page's JavaScript bundle.
    from bokeh.client import pull_session
    from bokeh.document.events import MessageSentEvent
    from bokeh.events import DocumentReady

    import dashboards.live  # noqa: F401

    n = args["sessions"]
    patches = [0] * n
    pulled = threading.Semaphore(0)
    errors: list[str] = []
    cpu0 = cpu_seconds()

    def session(i: int) -> None:
        try:
            s = pull_session(url=args["url"])
        except Exception as exc:  # counted and reported; the others go on
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            pulled.release()
            return
        apply = s._handle_patch

        def counted(message: Any) -> None:
            patches[i] += 1
            apply(message)

        s._handle_patch = counted  # type: ignore[method-assign]
        doc = s.document
        doc.callbacks.trigger_on_change(MessageSentEvent(doc, "bokeh_event", DocumentReady()))
        pulled.release()
        # bokeh 3 keeps this loop private ("discouraged outside tests"): it is exactly a
        # browser tab's job here, receiving and applying the server's patches.
        s._loop_until_closed()

    began = time.monotonic()
    for i in range(n):
        threading.Thread(target=session, args=(i,), daemon=True).start()
    for _ in range(n):
        pulled.acquire(timeout=120)
    print("READY " + json.dumps({"sessions": n, "failed": len(errors),
                                 "first_error": errors[:1],
                                 "seconds": round(time.monotonic() - began, 2)}), flush=True)
    at_ready = sum(patches)
    sys.stdin.readline()
    print("FINAL " + json.dumps({"sessions": n, "failed": len(errors), "first_error": errors[:1],
                                 "patches": sum(patches), "patches_after_ready":
                                 sum(patches) - at_ready, "min_patches": min(patches),
                                 "cpu_s": round(cpu_seconds() - cpu0, 3)}), flush=True)


def main() -> None:
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    if mode == "sync":
        asyncio.run(_run_sync(args))
    elif mode == "dashboards":
        run_dashboards(args)
    else:
        raise SystemExit(f"unknown mode {mode!r}: sync or dashboards")
    sys.stdout.flush()
    os._exit(0)  # no lingering session threads at exit


if __name__ == "__main__":
    main()
