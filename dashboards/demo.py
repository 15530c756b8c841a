"""``c360 demo``: broker, simulator, dataflow and the live page in one process, until Ctrl-C.

    embedded Kafka (child process) <- simulator thread (every stream)
                                   -> dataflow thread -> entity store -> Panel server thread

``c360 demo`` (:mod:`dashboards.commands`, which the library's CLI finds through the
``c360.commands`` entry point) checks its arguments and settings, then calls
:func:`run_demo`. The main thread only waits: for Ctrl-C / SIGTERM, or for a part to
fail. Then it stops everything in dependency order (producer, dataflow, web server,
broker), so that the process exits 0 and leaves no broker process behind.

Stdout carries lines that scripts and tests rely on::

    c360 demo: broker pid 1234 at 127.0.0.1:40123
    c360 demo: home page at http://127.0.0.1:5006/
    c360 demo: live page at http://127.0.0.1:5006/live
    c360 demo: dashboard at http://127.0.0.1:5006/app
    c360 demo: sync at ws://127.0.0.1:8765

The dashboard asks for a login when ``C360_DASHBOARD_USERS`` names a Panel basic-auth
user file ({user: password}; scopes from ``C360_DASHBOARD_SCOPES``); without it the demo
is local and its dashboard sessions have full access.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from types import FrameType
from typing import Any

from c360.config import Settings
from c360.dev.broker import EmbeddedBroker, free_port, wait_for_port
from c360.errors import C360Error
from c360.run import shared as live
from c360.run.pipeline import Pipeline
from c360.sync import SyncServer, TokenBook

log = logging.getLogger(__name__)

PAGE = "live"
DASHBOARD = "app"
STOP_TIMEOUT = 20.0  # seconds each part gets to stop before we give up on it


def say(message: str) -> None:
    # Flushed at once: a parent process reads these lines through a pipe.
    print(f"c360 demo: {message}", flush=True)


def complain(message: str) -> None:
    # Errors and warnings on stderr, where shells, CI logs and `2>` expect them.
    print(f"c360 demo: {message}", file=sys.stderr, flush=True)


class _SimulatorThread(threading.Thread):
    """Runs the simulator until ``stop`` is set; keeps its exception for the main thread."""

    def __init__(self, settings: Settings, customers: int, rate: float,
                 stop: threading.Event, history: Any = None) -> None:
        super().__init__(name="c360-simulator", daemon=True)
        self._args = (settings, customers, rate, stop, history)
        self.error: BaseException | None = None

    def run(self) -> None:
        settings, customers, rate, stop, history = self._args
        try:
            from c360.dev.simulator import simulate

            simulate(settings, customers=customers, rate=rate, progress=False, stop=stop,
                     simulation=history)  # the backfilled world goes on live
        except BaseException as exc:  # reported by the main thread, which then shuts down
            self.error = exc
            log.exception("the simulator failed")


# kafka-python 3 warns "It is blocking the event loop" when one step of a client's I/O
# loop takes over 0.1 s of wall time. In the demo's process (dataflow, web server, feed and
# simulator) on a busy 2-core machine (load 9.8), the steps that took 0.11-0.23 s were
# plain socket reads and writes (KafkaTCPTransport._read_from_sock / _write_to_sock) that
# waited for the CPU: a dozen warnings a minute about nothing. A livelock, what the check
# is for, still shows past 2 s.
KAFKA_SLOW_STEP_S = 2.0


def _patient_kafka_python() -> None:
    """Raise kafka-python's slow-step threshold for the clients of this process."""
    from kafka.net.selector import NetworkSelector

    NetworkSelector.DEFAULT_CONFIG["slow_task_threshold_secs"] = KAFKA_SLOW_STEP_S


def _on_signals(handler: Callable[[int, FrameType | None], Any]) -> dict[int, Any]:
    """Install ``handler`` for SIGINT and SIGTERM; returns the previous handlers."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # only the main thread may set handlers; the caller stops us then
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _check_port_free(port: int) -> None:
    # Otherwise we would wait for "our" server on a port another program answers on.
    with socket.socket() as s:
        # As the web server does: a port whose old connections linger in TIME_WAIT
        # (a demo stopped a moment ago) is free; one that something listens on is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise C360Error(f"port {port} is in use: pass --port 0 (any free port) "
                            "or another port") from None


def _open_browser(url: str) -> None:
    # Without a display, webbrowser would start a console or headless browser that
    # only prints errors; say what to do instead.
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless or not webbrowser.open(url):
        say("open the page in your browser (no browser could be started here)")


def _start_sync(pipeline: Pipeline, settings: Settings, port: int) -> SyncServer:
    """The sync server on the demo's store. Without configured tokens (C360_TOKENS_FILE /
    C360_TOKENS) the demo makes one full-access token for this run and prints it."""
    tokens = TokenBook.from_env()
    if not len(tokens):
        secret = secrets.token_urlsafe(16)
        tokens = TokenBook.from_tokens({secret: {"name": "demo", "pii": True,
                                                 "commands": ["*"]}})
        say(f"sync token for this run (full access): {secret}")
    return SyncServer(pipeline.store, tokens, settings, port=port).start()


LANDING_CSS = """
body { margin: 0; background: #f1f5f9; color: #0f172a; font-family: system-ui, sans-serif; }
header { background: #0f766e; color: white; padding: 18px 28px; }
header b { font-size: 1.6em; margin-right: 14px; }
main { max-width: 880px; margin: 24px auto; padding: 0 16px; }
section { background: white; border: 1px solid #e2e8f0; border-radius: 10px;
          padding: 6px 20px 14px; margin-bottom: 16px; }
a { color: #0f766e; font-weight: 600; }
code { background: #f1f5f9; padding: 1px 5px; border-radius: 4px; }
li { margin: 6px 0; }
"""


def landing_html(sync_url: str, customers: int, rate: float) -> str:
    """The demo's page at ``/``: where everything is. Self-contained (no script, no image,
    no web font), so it shows the same offline."""
    sync = html.escape(sync_url)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>c360 demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{LANDING_CSS}</style></head>
<body><header><b>c360</b>a real-time Customer 360: every stream folded into one live entity
per customer, straight from Kafka</header>
<main>
<section class="c360-pages"><h2>This demo</h2>
<p>{customers:,} simulated customers at {rate:,g} events per second, through the embedded
Kafka broker and the dataflow.</p><ul>
<li><a class="c360-link-live" href="/{PAGE}">Live page</a>: events per second per stream,
active customers and one customer's entity changing as events arrive.</li>
<li><a class="c360-link-app" href="/{DASHBOARD}">Dashboard</a>: the overview of the whole
customer base, a customer finder and the live Customer 360 view.</li>
<li>Sync server: <code class="c360-sync-url">{sync}</code>, for clients that sync entities and
their changes (the token is printed in the terminal that runs <code>c360 demo</code>).</li>
</ul></section>
<section class="c360-docs"><h2>Next steps</h2><ul>
<li><code>README.md</code>: the commands, the quick start in Python, what the tests cover.</li>
<li><code>notebooks/</code> (<code>make lab</code>): getting started, the Olist data, business
rules, windows and analytics, a dashboard in a notebook, performance.</li>
<li><code>docs/sync-protocol.md</code>: the sync protocol; <code>docs/dashboard.md</code>:
the dashboard and its access scopes; <code>docs/analytics.md</code>: windows of relevance.</li>
</ul><p>Ctrl-C in the terminal stops everything.</p></section>
</main></body></html>
"""


def _landing_route(page: str) -> tuple[str, type, dict[str, Any]]:
    """A Tornado route serving ``page`` at ``/`` (before Panel's own index of the apps,
    whose images and font come from a CDN)."""
    from tornado.web import RequestHandler

    class Landing(RequestHandler):
        def get(self) -> None:
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(page)

    return (r"/", Landing, {})


def run_demo(port: int = 5006, customers: int = 500, rate: float = 200.0, show: bool = True,
             settings: Settings | None = None, sync_port: int = 0) -> int:
    """Run the whole demo until interrupted; returns the exit code (0 on Ctrl-C / SIGTERM)."""
    started = time.monotonic()
    # Panel and HoloViews take seconds to import: do it before anything is running.
    import panel as pn

    from dashboards.access import FULL
    from dashboards.app import app as dashboard
    from dashboards.feed import reset as feed_reset
    from dashboards.live import app, handle_closed_tabs

    settings = settings or Settings.from_env()
    stop = threading.Event()
    _patient_kafka_python()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        # A second Ctrl-C interrupts a shutdown that hangs; the finally blocks still run.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = _on_signals(on_signal)
    broker: EmbeddedBroker | None = None
    pipeline: Pipeline | None = None
    simulator: _SimulatorThread | None = None
    server: Any = None
    sync: SyncServer | None = None
    code = 0
    try:
        port = port or free_port()
        _check_port_free(port)  # before anything starts: fail fast, leave nothing behind
        if settings.bootstrap:
            say(f"using the Kafka cluster at {settings.bootstrap}")
        else:
            broker = EmbeddedBroker(settings.broker_port).start()
            settings = settings.with_bootstrap(broker.bootstrap)
            say(f"broker pid {broker.pid} at {broker.bootstrap}")
        pipeline = Pipeline(settings)
        pipeline.start()  # creates the topics first, so the simulator never auto-creates them
        live.set_shared(pipeline)
        sync = _start_sync(pipeline, settings, sync_port)
        from c360.dev.simulator import BACKFILL_DAYS, backfill

        # A shop with a past: 90 days of event time first, so that windows, segments and
        # churn differ from lifetime totals; then the same customers go on live at now.
        say(f"backfilling {BACKFILL_DAYS:g} days of history...")
        history = backfill(settings, customers=customers, store=pipeline.store, stop=stop)
        simulator = _SimulatorThread(settings, customers, rate, stop, history)
        simulator.start()

        origins = [f"127.0.0.1:{port}", f"localhost:{port}"]
        users = os.environ.get("C360_DASHBOARD_USERS", "").strip()
        auth: dict[str, Any] = ({"basic_auth": users, "cookie_secret": secrets.token_urlsafe(32)}
                                if users else {})
        pages = {PAGE: app, DASHBOARD: lambda: dashboard(anonymous=FULL)}
        landing = _landing_route(landing_html(sync.url, customers, rate))
        server = pn.serve(pages, port=port, address="127.0.0.1", websocket_origin=origins,
                          show=False, threaded=True, title="c360 live", verbose=False,
                          extra_patterns=[landing], **auth)
        loop = server.asyncio_loop  # Panel's server thread runs its own loop
        loop.call_soon_threadsafe(handle_closed_tabs, loop)
        wait_for_port("127.0.0.1", port)  # the URL is printed only once it answers
        url = f"http://127.0.0.1:{port}/{PAGE}"
        say(f"home page at http://127.0.0.1:{port}/")
        say(f"live page at {url}")
        say(f"dashboard at http://127.0.0.1:{port}/{DASHBOARD}"
            + ("" if users else " (no login: set C360_DASHBOARD_USERS for one)"))
        say(f"sync at {sync.url}")
        say(f"{customers} customers at {rate:g} events/s; ready in "
            f"{time.monotonic() - started:.1f}s. Ctrl-C stops everything.")
        if show:
            _open_browser(url)

        while not stop.wait(0.25):
            if simulator.error is not None:
                complain(f"error: the simulator stopped: {simulator.error}")
                code = 1
                break
            if not pipeline.alive():
                complain(f"error: {live.problem() or 'the dataflow stopped'}")
                code = 1
                break
            if broker is not None and not broker.alive():
                complain("error: the embedded broker exited")
                code = 1
                break
    except KeyboardInterrupt:  # a second Ctrl-C during start-up
        pass
    except C360Error as exc:
        complain(f"error: {exc}")
        code = 2
    finally:
        stop.set()
        say("stopping...")
        code = _shutdown(simulator, server, feed_reset, sync, pipeline, broker) or code
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("stopped")
    return code


def _shutdown(simulator: _SimulatorThread | None, server: Any, feed_reset: Callable[[], None],
              sync: SyncServer | None, pipeline: Pipeline | None,
              broker: EmbeddedBroker | None) -> int:
    """Stop what runs, each part before what it reads from; 1 if a part would not stop.

    The producer first; then the web server, so that no session's callback runs against
    parts being stopped (it read a stopped store and Kafka, and Bokeh logged tracebacks);
    the dashboard's feed (it reads the dead-letter topics) and the sync server (the
    store); the dataflow; the broker last. The broker is stopped even when stopping
    another part fails or a second Ctrl-C interrupts: it is a separate process and would
    otherwise outlive us.
    """
    code = 0
    try:
        if simulator is not None:
            simulator.join(STOP_TIMEOUT)
            if simulator.is_alive():
                complain("warning: the simulator did not stop in time")
                code = 1
        if server is not None:
            _stop_web_server(server)
            if server.is_alive():
                complain("warning: the web server did not stop in time")
                code = 1
        feed_reset()
        if sync is not None:
            sync.stop()
        if pipeline is not None:
            try:
                pipeline.stop(STOP_TIMEOUT)
            except C360Error as exc:
                complain(f"warning: {exc}")
                code = 1
            finally:
                live.reset()
    finally:
        if broker is not None:
            broker.stop()
            if broker.alive():
                complain(f"warning: the broker (pid {broker.pid}) did not stop")
                code = 1
    return code


class _OurCancellations(logging.Filter):
    """Stopping Panel's server cancels every task on its loop: a websocket message waiting
    for its document's lock and a periodic callback's sleep then end in ``CancelledError``,
    which Tornado and Bokeh log as errors with tracebacks (a fresh-clone CI run saw two at
    Ctrl-C). We asked for those cancellations; they are debug lines while we stop."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        ours = (isinstance(exc, asyncio.CancelledError)
                or text.startswith("Error thrown from periodic callback")
                or text.rstrip().endswith("CancelledError"))
        if ours:
            log.debug("cancelled while stopping the web server: %s", text.splitlines()[0])
        return not ours


STOPPING_LOGS = ("tornado.application", "bokeh.util.tornado", "bokeh.server.protocol_handler",
                 "bokeh.server.views.ws")


def _stop_web_server(server: Any) -> None:
    """Stop Panel's server thread (it cancels the sessions' tasks, then stops its loop)."""
    quiet = _OurCancellations()
    for name in STOPPING_LOGS:
        logging.getLogger(name).addFilter(quiet)
    try:
        with contextlib.suppress(RuntimeError):  # "already stopping"
            server.stop()
        server.join(STOP_TIMEOUT)
    finally:
        for name in STOPPING_LOGS:
            logging.getLogger(name).removeFilter(quiet)
