"""Load test of the dashboard: N live sessions on one ``panel serve`` while events flow.

    python benchmarks/dashboard_load.py [--sessions 50] [--rate 2000] [--seconds 60]

Starts the embedded broker, ``panel serve dashboards/app.py`` (one process: one shared
store, pipeline and feed) and a simulator producing ``--rate`` events/s. Then, as a
same-run baseline, measures the server's CPU and memory with no session open; then opens
``--sessions`` real server sessions with ``bokeh.client.pull_session`` (each a websocket
on which the server builds its own document and runs its own periodic callbacks, as for a
browser tab) and measures again. Every session counts the document changes the server
pushes to it; the script checks that every session received some in every interval
(it keeps updating) and prints a report (``--json`` for machine-readable output).
Needs the ``bench`` extra (psutil). Not part of CI: it takes about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bokeh.client.websocket import WebSocketClientConnectionWrapper
from bokeh.protocol import Protocol
from bokeh.protocol.receiver import Receiver
from bokeh.util.token import generate_jwt_token, generate_session_id
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from c360.config import Settings
from c360.dev.broker import EmbeddedBroker, free_port, wait_for_port
from c360.dev.simulator import simulate
from c360.model.events import Catalogue
from c360.topics.admin import create_topics

REPO = Path(__file__).resolve().parent.parent
INTERVAL_S = 10.0  # every session must receive updates in every interval this long


@dataclass
class Session:
    """One server session over Bokeh's own websocket protocol, counting what it is sent.

    ``bokeh.client.pull_session`` would do, but it handles each incoming message one
    stack level deeper than the last and dies of recursion after a few hundred patches:
    it is made for short scripts, not for a session that stays open. So this client
    speaks the same protocol with Bokeh's own pieces (token, Protocol, Receiver): it
    connects, pulls the document (the server then builds the session's page and starts
    its periodic callbacks, as for a browser tab) and reads every PATCH-DOC it is sent.
    """

    url: str  # ws://host:port/app/ws
    messages: int = 0  # PATCH-DOC messages received
    changes: int = 0  # document events in them
    error: str = ""
    kpi_id: str | None = None  # the model of the "Events / s" figure in this document
    kpi: float | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        try:
            token = generate_jwt_token(generate_session_id())
            ws = await websocket_connect(HTTPRequest(self.url), subprotocols=["bokeh", token],
                                         max_message_size=100 * 2**20)
            protocol = Protocol()
            receiver = Receiver(protocol)

            async def read() -> Any:
                while True:
                    fragment = await ws.read_message()
                    if fragment is None:
                        return None
                    message = await receiver.consume(fragment)
                    if message is not None:
                        return message

            ack = await read()
            if ack is None or ack.msgtype != "ACK":
                raise RuntimeError(f"no ACK from the server: {ack}")
            await protocol.create("PULL-DOC-REQ").send(WebSocketClientConnectionWrapper(ws))
            # The session's periodic callbacks may patch before the reply: skip those.
            while (reply := await read()) is not None and reply.msgtype == "PATCH-DOC":
                pass
            if reply is None or reply.msgtype != "PULL-DOC-REPLY":
                raise RuntimeError(f"no document from the server: {reply}")
            self.kpi_id = _model_id(reply.content["doc"], "c360-kpi-rate")
            self.opened.set()
            while (message := await read()) is not None:
                if message.msgtype != "PATCH-DOC":
                    continue
                self.messages += 1
                for event in message.content.get("events", ()):
                    self.changes += 1
                    if (event.get("kind") == "ModelChanged" and event.get("attr") == "text"
                            and event.get("model", {}).get("id") == self.kpi_id):
                        self.kpi = _number_in(str(event.get("new", "")))
        except Exception as exc:  # reported in the result: a session that failed
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.opened.set()


def _model_id(doc: Any, css_class: str) -> str | None:
    """The id of the model carrying ``css_class`` in a serialized Bokeh document."""
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            attrs = node.get("attributes")
            if isinstance(attrs, dict) and css_class in (attrs.get("css_classes") or []):
                return node.get("id")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


class Sessions:
    """Sessions on one asyncio loop in a thread of their own (cheap: they only count)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.all: list[Session] = []
        self.tasks: set[asyncio.Future[None]] = set()  # held: the loop keeps only weak refs

    def open(self, url: str, n: int, batch: int = 5, timeout: float = 300.0) -> list[Session]:
        """Open ``n`` sessions, ``batch`` at a time (as users arrive, not all in one instant)."""
        async def go() -> list[Session]:
            new = [Session(url) for _ in range(n)]
            for i in range(0, n, batch):
                for s in new[i:i + batch]:
                    self.tasks.add(asyncio.ensure_future(s.run()))
                await asyncio.gather(*(s.opened.wait() for s in new[i:i + batch]))
            return new

        future = asyncio.run_coroutine_threadsafe(go(), self.loop)
        opened = future.result(timeout)
        self.all.extend(opened)
        return opened

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _number_in(text: str) -> float | None:
    """The figure a Panel Number indicator shows (its model is HTML: label, then value)."""
    found = re.findall(r">\s*([\d][\d,]*(?:\.\d+)?)\s*<", html.unescape(text))
    return float(found[-1].replace(",", "")) if found else None


def _measure(proc: psutil.Process, seconds: float) -> tuple[float, float]:
    """Server CPU (% of one core, children included) and RSS (MB, max) over ``seconds``."""
    procs = [proc, *proc.children(recursive=True)]
    for p in procs:
        p.cpu_percent(None)
    rss = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        rss = max(rss, sum(p.memory_info().rss for p in procs) / 2**20)
    return sum(p.cpu_percent(None) for p in procs), rss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--rate", type=float, default=2000.0, help="events per second produced")
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured with sessions open")
    ap.add_argument("--baseline", type=float, default=20.0, help="measured with none open")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    result: dict[str, Any] = {"sessions": args.sessions, "rate": args.rate,
                              "customers": args.customers, "cpus": os.cpu_count()}
    with EmbeddedBroker() as broker:
        settings = Settings(bootstrap=broker.bootstrap, partitions=2,
                            topic_prefix=f"load{uuid.uuid4().hex[:6]}.")
        cat = Catalogue(settings.topic_prefix)
        create_topics(settings, [*cat.input_topics, cat.dlq_topic, cat.late_topic,
                                 cat.decisions_topic])
        stop = threading.Event()
        produced: list[BaseException] = []
        reports: list[Any] = []

        def produce() -> None:
            try:
                reports.append(simulate(settings, customers=args.customers, rate=args.rate,
                         seed=1, progress=False,  # until stopped: opening may take minutes
                         stop=stop))
            except BaseException as exc:
                produced.append(exc)

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("C360_")}
        env.update(C360_KAFKA_BOOTSTRAP=settings.bootstrap,
                   C360_TOPIC_PREFIX=settings.topic_prefix, C360_PARTITIONS="2")
        panel = REPO / ".venv" / "bin" / "panel"
        cmd = [str(panel)] if panel.exists() else [sys.executable, "-m", "panel"]
        cmd += ["serve", "dashboards/app.py", "--port", str(port), "--address", "127.0.0.1",
                "--allow-websocket-origin", f"127.0.0.1:{port}"]
        server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        sessions: list[Session] = []
        pool = Sessions()
        producer = threading.Thread(target=produce, daemon=True)
        try:
            wait_for_port("127.0.0.1", port, timeout=60)
            url = f"ws://127.0.0.1:{port}/app/ws"
            proc = psutil.Process(server.pid)
            # One session starts the server's pipeline and feed; it stays open throughout,
            # so the baseline is the server with its data flowing and one session.
            (first,) = pool.open(url, 1)
            time.sleep(10)  # the consumer group joins before events flow: no backlog
            producer.start()
            time.sleep(10)  # the simulator's first burst (catalogue, customer details)
            cpu0, rss0 = _measure(proc, args.baseline)
            result["baseline"] = {"sessions": 1, "cpu_percent": round(cpu0, 1),
                                  "rss_mb": round(rss0, 1)}

            opened_at = time.monotonic()
            sessions = [first, *pool.open(url, args.sessions - 1)]
            result["open_seconds"] = round(time.monotonic() - opened_at, 1)

            intervals: list[list[int]] = []
            kpi: list[float] = []
            cpu_samples: list[float] = []
            rss_max = 0.0
            before = [s.changes for s in sessions]
            load_before = os.getloadavg()[0]
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                cpu, rss = _measure(proc, INTERVAL_S)
                cpu_samples.append(cpu)
                rss_max = max(rss_max, rss)
                now = [s.changes for s in sessions]
                intervals.append([b - a for a, b in zip(before, now, strict=True)])
                before = now
                if first.kpi is not None:
                    kpi.append(first.kpi)
            per_session_rate = [sum(col) / args.seconds for col in zip(*intervals, strict=True)]
            result["loaded"] = {
                "sessions": len(sessions), "cpu_percent": round(statistics.mean(cpu_samples), 1),
                "rss_mb": round(rss_max, 1),
                "events_per_s_seen_by_dashboard": round(statistics.median(kpi), 0) if kpi
                else None,
                "updates_per_session_per_s": {
                    "min": round(min(per_session_rate), 1),
                    "median": round(statistics.median(per_session_rate), 1),
                    "max": round(max(per_session_rate), 1)},
                "intervals": len(intervals),
                "machine_load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
                "sessions_silent_in_some_interval": sum(
                    1 for i in range(len(sessions)) if any(iv[i] == 0 for iv in intervals)),
            }
            result["ratio_cpu_loaded_vs_baseline"] = round(
                result["loaded"]["cpu_percent"] / max(cpu0, 0.1), 2)
            result["rss_mb_per_session"] = round((rss_max - rss0) / max(1, args.sessions - 1), 2)
            result["producer_error"] = str(produced[0]) if produced else None
            result["failed_sessions"] = [s.error for s in sessions if s.error]
            result["ok"] = (not result["failed_sessions"] and not produced
                            and result["loaded"]["sessions_silent_in_some_interval"] == 0)
        finally:
            pool.close()
            stop.set()
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
            producer.join(30)
        if reports:
            result["produced_events_per_s"] = round(reports[0].events / reports[0].elapsed)

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _report(result)
    return 0 if result.get("ok") else 1


def _report(r: dict[str, Any]) -> None:
    b, lo = r["baseline"], r["loaded"]
    u = lo["updates_per_session_per_s"]
    print(f"dashboard load: {r['sessions']} sessions, {r['rate']:g} events/s produced, "
          f"{r['customers']} customers, {r['cpus']} CPUs")
    print(f"  sessions opened in {r['open_seconds']} s; failed: {len(r['failed_sessions'])}")
    for error in r["failed_sessions"]:
        print(f"    {error}")
    print(f"  events/s produced: {r.get('produced_events_per_s')}; shown by the dashboard "
          f"(median of its Events / s figure): {lo['events_per_s_seen_by_dashboard']}")
    print(f"  machine load average (1 min) at start and end: {lo['machine_load_average']}")
    print(f"  server CPU: {b['cpu_percent']}% with 1 session -> {lo['cpu_percent']}% with "
          f"{lo['sessions']} ({r['ratio_cpu_loaded_vs_baseline']}x)")
    print(f"  server RSS: {b['rss_mb']} MB -> {lo['rss_mb']} MB "
          f"({r['rss_mb_per_session']} MB per extra session)")
    print(f"  updates pushed per session per second: min {u['min']}, median {u['median']}, "
          f"max {u['max']}")
    print(f"  sessions silent in some {INTERVAL_S:g}-s interval: "
          f"{lo['sessions_silent_in_some_interval']} of {lo['sessions']} "
          f"({lo['intervals']} intervals)")
    print("  OK" if r["ok"] else "  FAILED")


if __name__ == "__main__":
    sys.exit(main())
