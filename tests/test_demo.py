"""The live page and ``c360 demo``, up to a real browser watching an entity change.

The acceptance test runs the demo exactly as ``make demo`` does (a subprocess of
the installed command), drives Debian's headless Chromium to the page, waits for
a customer's version to move, takes a screenshot, then interrupts the demo and
checks that it exits 0 and takes its broker with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import panel as pn
import pytest

from c360.config import Settings
from c360.model.delta import Delta
from c360.run import shared as live
from c360.store.memory import EntityStore

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
URL_LINE = re.compile(r"^c360 demo: live page at (http://\S+)$")
BROKER_LINE = re.compile(r"^c360 demo: broker pid (\d+) at (\S+)$")
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _delta(entity_id: str, version: int, stream: str, **changes: object) -> Delta:
    t = T0 + timedelta(seconds=version)
    return Delta(entity_id, "customer", version, t, stream, f"{entity_id}-{version}",
                 {"last_seen": t, **changes})


def _filled_store() -> EntityStore:
    store = EntityStore()
    store.apply([
        _delta("c1", 1, "customer_details", name="Ana Lima", email="ana@example.com"),
        _delta("c2", 1, "orders", order_count=1, recent_orders=[{"order_id": "o1"}]),
        _delta("c2", 2, "payments", total_spent=120.5, lifetime_value=120.5),
    ])
    return store


def test_live_page_renders_from_a_store_without_a_server() -> None:
    import dashboards.live as page_module  # importing must not start anything

    assert live.shared_pipeline() is None
    store = _filled_store()
    page = page_module.LivePage(store)
    root = pn.panel(page).get_root()  # builds the Bokeh models, as a session would
    assert root is not None
    assert page.selected == "c2", "the most active customer is shown by default"
    fields = page._fields.value.set_index("field")["value"]
    assert fields["version"] == "2" and fields["total_spent"] == "120.50"
    assert 'class="c360-version" id="c360-version">2<' in page._card.object

    # A newer version patches changed cells and appends new fields; nothing is rebuilt.
    table_before = page._fields.value
    store.apply([_delta("c2", 3, "location", location={"city": "Recife"}, total_spent=130.0)])
    page.refresh()
    fields = page._fields.value.set_index("field")["value"]
    assert fields["version"] == "3" and fields["total_spent"] == "130.00"
    assert fields["location"] == '{"city":"Recife"}'
    assert page._fields.value.index.tolist() == list(range(len(fields)))
    assert len(page._fields.value) == len(table_before) + 1

    rates = page._rates.value.set_index("stream")
    assert rates.loc["location", "events"] == 1 and rates.loc["payments", "events"] == 1
    assert page._customers.value == 2

    page.select("c1")
    assert page.selected == "c1" and "Ana Lima" in page._card.object


def _shown_counts(root: object) -> dict[str, int]:
    """The per-stream event counts in a view's rates table (what its browser draws)."""
    from bokeh.models import ColumnDataSource

    [source] = [m for m in root.select({"type": ColumnDataSource})  # type: ignore[attr-defined]
                if "stream" in m.data]
    return {str(s): int(n) for s, n in zip(source.data["stream"], source.data["events"],
                                           strict=True)}


def test_stream_counts_reach_every_view_even_rows_that_never_change_again() -> None:
    """Issue 14: the third-party rows showed 0 events for good. Their events come at
    sign-up, before the page's view exists; a patch then changed the server's table but
    not the views made later, and those rows never changed again to be patched."""
    from dashboards.live import LivePage

    store = _filled_store()
    page = LivePage(store)  # refreshed once, before any view, as in a server session
    store.apply([_delta("c3", 1, "tp_demographics", age=41),
                 _delta("c3", 2, "tp_psychographics", interests=["books"])])
    page.refresh()  # a periodic refresh before the page is shown (a notebook's start())
    root = pn.panel(page).get_root()
    expected = {s: 0 for s in _shown_counts(root)} | store.stream_counts()
    assert expected["tp_demographics"] == 1 and expected["payments"] == 1
    assert _shown_counts(root) == expected
    # Once shown, changes reach the view; rows that do not change keep their counts.
    store.apply([_delta("c3", 3, "tp_purchases", partner="acme")])
    page.refresh()
    expected["tp_purchases"] = 1
    assert _shown_counts(root) == expected
    page.refresh()  # nothing new: nothing changes
    assert _shown_counts(root) == expected
    # A second view of the same page (a notebook output shown again) is current too.
    assert _shown_counts(pn.panel(page).get_root()) == expected


def test_a_write_to_a_closed_tab_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """A tab that closes while the server writes to it fails that write; Panel drops the
    write's task unretrieved, and asyncio logged it with two tracebacks. On a loop that
    handle_closed_tabs() was given it is a debug line; any other error still reaches the
    loop's previous handler."""
    import asyncio
    import gc

    from tornado.websocket import WebSocketClosedError

    from dashboards.live import handle_closed_tabs

    reported: list[type[BaseException] | None] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(
        lambda _, ctx: reported.append(type(ctx.get("exception"))))  # type: ignore[arg-type]
    handle_closed_tabs(loop)
    handle_closed_tabs(loop)  # idempotent: one handler, not two in a chain

    async def tab_gone() -> None:
        raise WebSocketClosedError()

    async def ours() -> None:
        raise ValueError("a real error")

    try:
        for make in (tab_gone, ours):
            task = loop.create_task(make())
            loop.run_until_complete(asyncio.sleep(0.01))
            assert task.done()
            del task  # never retrieved, as Panel leaves them
            gc.collect()
    finally:
        loop.close()
    assert reported == [ValueError]
    # Panel's warning when it awaited such a write is not a warning either; others still are.
    panel_log = logging.getLogger("panel.io.document")
    with caplog.at_level(logging.WARNING):
        panel_log.warning("Failed sending message as connection was closed")
        panel_log.warning("Failed sending message due to following error: boom")
    assert [r.getMessage() for r in caplog.records] == [
        "Failed sending message due to following error: boom"]


def test_a_closed_tabs_message_after_bokeh_dropped_its_session_is_not_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """Bokeh's keep-alive ping can drop a closing tab's connection before that tab's last
    message and close are handled; both then fail Bokeh's assertion that the connection has
    a session (a CI run logged it with two tracebacks). After handle_closed_tabs() that is a
    debug line; any other AssertionError, or the same error from elsewhere, is still logged."""
    from bokeh.server.connection import ServerConnection

    from dashboards.live import handle_closed_tabs

    def caught(action: Callable[[], object]) -> BaseException:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - handed to the logger as Bokeh does
            return exc
        raise AssertionError("expected an exception")

    detached = ServerConnection.__new__(ServerConnection)
    detached._session = None  # what client_lost() leaves
    from_bokeh = caught(lambda: detached.session)

    def ours() -> None:
        assert detached._session is not None

    handle_closed_tabs(None)
    with caplog.at_level(logging.ERROR):
        for name in ("bokeh.server.protocol_handler", "tornado.application"):
            for exc in (from_bokeh, caught(ours)):
                logging.getLogger(name).error("error handling message", exc_info=exc)
    assert [(r.name, r.exc_info[1] is from_bokeh) for r in caplog.records
            if r.exc_info] == [("bokeh.server.protocol_handler", False),
                               ("tornado.application", False)]


def test_the_feed_has_stopped_reading_kafka_when_stop_returns(settings: Settings) -> None:
    """c360 demo stops the broker right after the dashboard's feed: the feed's Kafka reader
    must be gone by then, not still polling a broker that is going away."""
    from dashboards.feed import Feed

    feed = Feed(EntityStore(), settings)
    assert len(feed._threads) == 2  # the sampler and the dead-letter reader
    feed.stop()
    assert [t.name for t in feed._threads if t.is_alive()] == []


def test_rate_meter_averages_over_its_window() -> None:
    from dashboards.live import RateMeter

    meter = RateMeter(window=2.0)
    assert meter.sample({"orders": 0}, 0.0) == {"orders": 0.0}
    assert meter.sample({"orders": 10}, 1.0) == {"orders": 10.0}
    assert meter.sample({"orders": 30}, 2.0) == {"orders": 15.0}
    assert meter.sample({"orders": 30, "search": 4}, 3.0) == {"orders": 10.0, "search": 2.0}


def test_page_without_kafka_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboards.live import app

    live.reset()
    monkeypatch.delenv("C360_KAFKA_BOOTSTRAP", raising=False)
    view = app()
    text = " ".join(str(getattr(o, "object", "")) for o in view.select(pn.pane.Alert))
    assert "C360_KAFKA_BOOTSTRAP" in text
    assert live.shared_pipeline() is None


def test_one_pipeline_per_server_process(settings: Settings) -> None:
    live.reset()
    stores: list[EntityStore] = []
    sessions = [threading.Thread(target=lambda: stores.append(live.shared_store(settings)))
                for _ in range(4)]
    try:
        for s in sessions:
            s.start()
        for s in sessions:
            s.join(30)
        assert len(stores) == 4 and all(s is stores[0] for s in stores)
        pipeline = live.shared_pipeline()
        assert pipeline is not None and pipeline.alive() and pipeline.store is stores[0]
        assert live.problem() is None
    finally:
        live.reset()
    assert not pipeline.alive()


# -- `c360 demo` is the dashboards' command, which the library does not import -------------------

def _names_dashboards(text: object) -> bool:
    """A module path or entry-point value in the dashboards package."""
    return isinstance(text, str) and re.match(r"dashboards(\.|:|$)", text) is not None


def test_the_library_never_imports_the_dashboards() -> None:
    """No module under c360/ imports the app: not at the top, not inside a function, not
    by a module name in a string (importlib, __import__)."""
    import ast

    found = []
    for path in sorted((REPO / "c360").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[object] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call):
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            found += [f"{path.relative_to(REPO)}:{node.lineno}: {n}"
                      for n in names if _names_dashboards(n)]
    assert not found, found


def test_the_demo_command_comes_from_its_entry_point() -> None:
    """`c360 demo` is the entry point the dashboards declare (pyproject.toml); building the
    parser loads only dashboards.commands, not the demo (Panel, the pipeline: ~2 s)."""
    from importlib.metadata import entry_points

    from c360 import cli
    from dashboards.commands import demo

    [point] = [ep for ep in entry_points(group=cli.PLUGIN_GROUP) if ep.name == "demo"]
    assert point.value == "dashboards.commands:demo"  # else: pip install -e . again
    assert point.load() is demo
    args = cli.build_parser().parse_args(["demo", "--port", "0", "--rate", "5"])
    assert args.func == demo.run and (args.port, args.rate, args.customers) == (0, 5.0, 500)
    code = ("import sys; from c360.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('dashboards', 'panel'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.strip() == "['dashboards', 'dashboards.commands']", done.stdout


def _broken() -> Any:
    raise ModuleNotFoundError("No module named 'panel'")


@pytest.mark.parametrize(("plugins", "says"), [
    ({}, "`c360 demo` is unavailable: it comes with the dashboards, not installed here; "
         "install c360 from a source checkout (pip install -e .)"),
    ({"demo": _broken}, "`c360 demo` is unavailable: its plugin failed to load "
                        "(ModuleNotFoundError: No module named 'panel')"),
])
def test_demo_without_its_plugin_is_one_line_and_exit_2(
        plugins: dict[str, Any], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A wheel without the dashboards (or a plugin that fails to import) still has every
    other command, and `c360 demo` says why it cannot run, whatever its arguments."""
    from c360 import cli

    assert cli.main(["demo", "--no-browser", "--port", "0"], plugins=plugins) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and says in err, err
    assert cli.build_parser(plugins).parse_args(["broker", "--port", "0"]).port == 0
    with pytest.raises(SystemExit) as exited:  # argparse's own errors are as before
        cli.main(["broker", "--bogus"], plugins=plugins)
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("c360: error: unrecognized arguments: --bogus "
                                       "(see c360 --help)\n")


# -- the acceptance test ------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


class _Lines:
    """The demo's output, read by a thread so that a full pipe never blocks the demo."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if m := pattern.match(line):
                return m
        raise AssertionError(f"no line matching {pattern.pattern!r} within {timeout:.0f}s; "
                             "the demo said:\n" + "\n".join(self.seen))

    def rest(self, timeout: float = 2.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
        return "\n".join(self.seen)


HOME_LINE = re.compile(r"^c360 demo: home page at (http://\S+/)$")
APP_LINE = re.compile(r"^c360 demo: dashboard at (http://\S+/app)\b")
SYNC_LINE = re.compile(r"^c360 demo: sync at (ws://\S+)$")
# How long tabs are opened and closed before the Ctrl-C: 30 s (from 60 s, for CI time). The
# two Bokeh races it once caught have tests of their own above.
CHURN_S = 30.0
# The live page's rows for the streams whose events come at sign-up only (issue 14).
SIGNUP_STREAMS = ("tp_demographics", "tp_psychographics")


def _rates_shown(page: Any) -> dict[str, int]:
    """The live page's per-stream event counts, as the browser shows them."""
    rows = page.locator(".c360-rates .tabulator-row")
    out = {}
    for text in rows.all_inner_texts():
        cells = text.split()
        if len(cells) >= 2:
            out[cells[0]] = int(cells[1].replace(",", ""))
    return out


def _snapshot(page: Any, path: Path) -> None:
    """A full-page screenshot for people to look at (artifacts/), not an assertion: on a
    busy machine a page that keeps redrawing took over 30 s to capture."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.screenshot(path=str(path), full_page=True, timeout=60_000)
    except PlaywrightTimeout:
        print(f"\nno screenshot {path.name}: the page did not settle within 60 s")


def _open(context: Any, base: str, path: str) -> Any:
    """A new tab on ``path``, once it shows what it is for."""
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(base + path, wait_until="domcontentloaded", timeout=30_000)
    if path == "live":
        expect(page.locator(".c360-version")).to_have_text(re.compile(r"^\d+$"), timeout=30_000)
    elif path == "app":
        # 90 s: on a machine running two CI suites at once the first render took over 30 s
        expect(page.locator(".c360-user, .c360-scope").first).to_be_visible(timeout=90_000)
    else:
        expect(page.locator(".c360-pages")).to_be_visible(timeout=30_000)
    return page


@pytest.mark.browser
def test_demo_serves_its_pages_offline_and_stops_quietly(artifacts: Path) -> None:
    """The acceptance test of ``c360 demo`` (issue 14 for the pages): run as ``make demo``
    does, with the browser's network blocked to this machine. The landing page links the
    rest; /live and /app draw their charts; the live page's per-stream counts reach the
    browser, the sign-up-only streams too; a customer's version moves. Tabs are opened
    and closed for half a minute, then Ctrl-C (SIGINT, a tab still open): exit 0, the broker
    gone, and nothing on stderr but c360's own lines (no library warning or traceback)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    from tests.test_offline import ACCENT_RGB, block_the_network, wait_for_glyphs

    command = REPO / ".venv" / "bin" / "c360"
    argv = [str(command)] if command.exists() else [sys.executable, "-m", "c360"]
    argv += ["demo", "--port", "0", "--no-browser", "--customers", "50", "--rate", "100"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("C360_")}
    env["PYTHONUNBUFFERED"] = "1"
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Lines(proc.stdout), _Lines(proc.stderr)
    broker_pid: int | None = None
    try:
        broker_pid = int(out.wait_for(BROKER_LINE, 60).group(1))
        home = out.wait_for(HOME_LINE, 120).group(1)
        url = out.wait_for(URL_LINE, 10).group(1)
        assert url == home + "live"
        assert out.wait_for(APP_LINE, 10).group(1) == home + "app"
        sync_url = out.wait_for(SYNC_LINE, 10).group(1)
        ready = time.monotonic() - started
        opened = {"": 0, "live": 0, "app": 0}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                attempted = block_the_network(context)
                # The landing page: c360's, with the links and the sync URL.
                landing = _open(context, home, "")
                assert landing.locator("a.c360-link-live").get_attribute("href") == "/live"
                assert landing.locator("a.c360-link-app").get_attribute("href") == "/app"
                expect(landing.locator(".c360-sync-url")).to_have_text(sync_url)
                _snapshot(landing, artifacts / "demo_home.png")
                landing.locator("a.c360-link-live").click()
                page = landing  # now the live page
                version = page.locator(".c360-version")
                expect(version).to_have_text(re.compile(r"^\d+$"), timeout=120_000)
                first = version.text_content() or ""
                assert page.locator(".c360-last-seen").text_content()
                customer = page.locator(".c360-entity-id").text_content()
                # The same customer stays selected; its version moves as events arrive.
                expect(version).not_to_have_text(first, timeout=120_000)
                assert page.locator(".c360-entity-id").text_content() == customer
                expect(page.locator(".c360-entity-fields")).to_contain_text("last_seen")
                assert wait_for_glyphs(page, ".c360-chart", ACCENT_RGB) >= 20
                # Every sign-up stream's count reached the browser (they read 0 for good).
                shown = _rates_shown(page)
                deadline = time.monotonic() + 120  # redrawn as it changes; generous for busy CI
                while not all(shown.get(s, 0) > 0 for s in SIGNUP_STREAMS):
                    assert time.monotonic() < deadline, f"the live page shows {shown}"
                    page.wait_for_timeout(500)
                    shown = _rates_shown(page)
                _snapshot(page, artifacts / "demo_live.png")
                app = _open(context, home, "app")
                assert wait_for_glyphs(app, "body", ACCENT_RGB) >= 20
                _snapshot(app, artifacts / "demo_app.png")
                app.close()
                # Half a minute of tabs opening and closing (each session's end is clean).
                tabs = [page]
                churn_until = time.monotonic() + CHURN_S
                paths = ["live", "app", ""]
                while time.monotonic() < churn_until:
                    path = paths[sum(opened.values()) % len(paths)]
                    tabs.append(_open(context, home, path))
                    opened[path] += 1
                    while len(tabs) > 2:
                        tabs.pop(0).close()
                assert tabs and not tabs[-1].is_closed()  # one stays open through Ctrl-C
                browser_done = time.monotonic() - started

                proc.send_signal(signal.SIGINT)
                try:
                    code = proc.wait(60)
                except subprocess.TimeoutExpired:
                    pytest.fail("the demo did not stop within 60s of SIGINT:\n" + out.rest())
            finally:
                browser.close()
        stopped = time.monotonic() - started
        assert code == 0, f"the demo exited with {code}:\n{out.rest()}\n{err.rest()}"
        deadline = time.monotonic() + 5
        while _pid_alive(broker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _pid_alive(broker_pid), f"the broker (pid {broker_pid}) outlived the demo"
        assert attempted == [], f"the pages asked the network for {attempted}"
        stderr = err.rest(timeout=5).splitlines()
        foreign = [line for line in stderr if not line.startswith("c360")]
        assert foreign == [], "stderr holds more than c360's own messages:\n" + "\n".join(stderr)
        print(f"\ndemo: URL after {ready:.1f}s, tabs opened {opened}, browser done after "
              f"{browser_done:.1f}s, stopped after {stopped:.1f}s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if broker_pid is not None and _pid_alive(broker_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker_pid, signal.SIGKILL)
