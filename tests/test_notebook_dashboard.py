"""Notebook 05 served by ``panel serve``, watched by a real browser.

The notebook builds its dashboard inline and ends in ``.servable()``. Served, it
must start no broker of its own and read the cluster named by
``C360_KAFKA_BOOTSTRAP``: here the test session's embedded broker, fed by a
bounded simulator in this process, with the browser's network blocked to this machine
(tests/test_offline.py): the page draws from the server's own files. (Executed as a
notebook, nbval checks it.)
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from c360.config import Settings
from c360.dev.broker import free_port
from c360.dev.simulator import simulate
from tests.test_offline import ACCENT_RGB, block_the_network, wait_for_glyphs

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "05_dashboard_in_a_notebook.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
CUSTOMERS = 50
# How an error in the notebook or in c360 shows in the server's log.
OUR_FRAME = re.compile(r"Error running application handler"
                       r'|File "[^"]*(?:05_dashboard_in_a_notebook\.ipynb|/c360/|/dashboards/'
                       r'|/dataflows/)')


def _wait_for_server(proc: subprocess.Popen[bytes], port: int, log: Path,
                     timeout: float = 45.0) -> None:
    """Until the server answers on ``port``; fails at once if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"panel serve exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    pytest.fail(f"panel serve did not listen on {port} within {timeout:.0f}s:\n{log.read_text()}")


def _children(pid: int) -> list[str]:
    """The command lines of ``pid``'s child processes."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes()
                    found.append(cmd.replace(b"\0", b" ").decode(errors="replace").strip())
    return found


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """Terminate the server by its pid, then kill it if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


@pytest.mark.browser
def test_served_notebook_shows_live_data(settings: Settings, artifacts: Path,
                                         tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    stop = threading.Event()
    failures: list[BaseException] = []

    def produce() -> None:
        try:
            simulate(settings, customers=CUSTOMERS, rate=100, duration=60, seed=11,
                     progress=False, stop=stop)
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    simulator = threading.Thread(target=produce, name="simulator", daemon=True)
    simulator.start()

    port = free_port()
    panel = REPO / ".venv" / "bin" / "panel"
    argv = [str(panel)] if panel.exists() else [sys.executable, "-m", "panel"]
    argv += ["serve", str(NOTEBOOK), "--port", str(port), "--address", "127.0.0.1",
             "--allow-websocket-origin", f"127.0.0.1:{port}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("C360_")}
    env.update(C360_KAFKA_BOOTSTRAP=settings.bootstrap, C360_TOPIC_PREFIX=settings.topic_prefix,
               C360_PARTITIONS=str(settings.partitions), PYTHONUNBUFFERED="1")
    log = tmp_path / "panel-serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(proc, port, log)
        ready = time.monotonic() - started
        url = f"http://127.0.0.1:{port}/{NOTEBOOK.stem}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                attempted = block_the_network(context)
                page = context.new_page()
                page.goto(url, wait_until="domcontentloaded", timeout=30_000)
                version = page.locator(".c360-version")
                expect(version).to_have_text(re.compile(r"^\d+$"), timeout=30_000)
                first = version.text_content() or ""
                customer = page.locator(".c360-entity-id").text_content()
                # The same customer stays selected; its version moves as events arrive.
                expect(version).not_to_have_text(first, timeout=20_000)
                assert page.locator(".c360-entity-id").text_content() == customer
                expect(page.locator(".c360-customers")).to_contain_text(str(CUSTOMERS),
                                                                        timeout=20_000)
                # The notebook's own components, built from the same store.
                expect(page.locator(".c360-top-customers")).to_contain_text(
                    re.compile(r"cust-\d{5}"), timeout=20_000)
                expect(page.locator(".c360-tiers canvas").first).to_be_visible()
                # The tier bars and the rate curve are drawn (accent-coloured glyphs).
                assert wait_for_glyphs(page, ".c360-tiers", ACCENT_RGB) >= 20
                assert wait_for_glyphs(page, ".c360-chart", ACCENT_RGB) >= 20
                page.wait_for_timeout(2500)  # a few chart points and a table refresh
                page.screenshot(path=str(artifacts / "notebook5_served.png"), full_page=True)
            finally:
                browser.close()
        live = time.monotonic() - started
        assert attempted == [], f"the page asked the network for {attempted}"
        assert not failures, f"the simulator failed: {failures[0]}"
        # Served, the notebook reads the operator's cluster: it starts no broker of its own.
        assert _children(proc.pid) == [], f"panel serve started {_children(proc.pid)}"
        # An error in the notebook or in c360 (a session's run, a periodic refresh) is logged
        # with a traceback through our files; tornado's own (a websocket closed while a write
        # was in flight, as the browser goes) are not ours to judge.
        log_text = log.read_text()
        assert not OUR_FRAME.search(log_text), f"panel serve logged an error:\n{log_text}"
        print(f"\nnotebook 05 served: listening after {ready:.1f}s, "
              f"page live after {live:.1f}s")
    finally:
        _stop(proc)
        stop.set()
        simulator.join(30)
    assert not simulator.is_alive(), "the simulator did not stop"
