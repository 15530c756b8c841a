"""The browser leg of section 4: a real headless Chromium rendering sync patches.

    python -m benchmarks.harness.browser page '<json args>'

Serves one static page on 127.0.0.1 (inline HTML and JS, a Content-Security-Policy that
allows nothing but that inline script and WebSockets to 127.0.0.1: nothing can come from a
CDN), opens it in Debian's Chromium through Playwright (the DevTools protocol, as the
browser tests do) and, after ``STOP`` on stdin, reads back what the page recorded.

The page is a small client of docs/sync-protocol.md: it authenticates, syncs a few
customers, writes each snapshot's or patch's values and version into that customer's table
row, and records ``(entity, from, version, rendered at)``. "Rendered at" is taken after the
frame that painted the change: a ``requestAnimationFrame`` callback runs just before that
frame's style, layout and paint, and a message posted from it to a ``MessageChannel`` runs
right after them. The time is ``performance.timeOrigin + performance.now()`` (ms since the
epoch). The page, the producer and the Python clients run on the same machine, so this wall
clock is comparable with the produce stamps (``time.time()``); the child measures the
page's clock against Python's at READY and at the end (``clock_offset_ms``) so that a skew
would show. Patches carry no produce time (no entity field holds one for every stream):
the parent joins the recorded versions with the dataflow's (entity, version, event time),
as for the Python client (:func:`benchmarks.harness.s4_latency.client_latencies`).

Line protocol (:class:`benchmarks.harness.paced.LineChild`): ``READY {...}`` once every
customer is synced (or ``READY {"skipped": why}`` without Chromium or Playwright), then
``FINAL {...}`` after ``STOP``; the recorded renders go to ``arrivals_out``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"  # Debian's; `make test` installs it, no browser downloads
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>c360 latency probe</title>
<link rel="icon" href="data:,">
<style>body{font:13px monospace} td{padding:2px 8px;white-space:nowrap}</style>
</head><body>
<h1>c360 latency probe</h1>
<table id="t"><tr><th>customer</th><th>version</th><th>latest values</th></tr></table>
<script id="cfg" type="application/json">__CFG__</script>
<script>
"use strict";
const cfg = JSON.parse(document.getElementById("cfg").textContent);
const state = {renders: [], counts: {patches: 0, snapshots: 0, gaps: 0, errors: 0, synced: 0},
               versions: {}, closed: null};
window.c360probe = state;
const rows = {};
for (const e of cfg.entities) {
  const tr = document.createElement("tr");
  tr.innerHTML = "<td></td><td class=v>0</td><td class=x></td>";
  tr.firstChild.textContent = e;
  tr.dataset.entity = e;
  document.getElementById("t").appendChild(tr);
  rows[e] = {version: tr.querySelector(".v"), values: tr.querySelector(".x")};
}
const pending = [];
let scheduled = false;
const after = new MessageChannel();
after.port1.onmessage = () => {  // runs after the frame that painted the pending changes
  const t = (performance.timeOrigin + performance.now()) / 1000;
  for (const p of pending) state.renders.push([p[0], p[1], p[2], t]);
  pending.length = 0;
  scheduled = false;
};
function rendered(entity, from, version) {
  pending.push([entity, from, version]);
  if (!scheduled) {
    scheduled = true;
    requestAnimationFrame(() => after.port2.postMessage(0));
  }
}
function show(entity, version, fields) {
  const row = rows[entity];
  if (!row) return;
  row.version.textContent = String(version);
  const text = Object.entries(fields).map(([k, v]) => k + "=" + JSON.stringify(v)).join(" ");
  row.values.textContent = text.slice(0, 160);
}
const ws = new WebSocket(cfg.url);
ws.onopen = () => {
  ws.send(JSON.stringify({type: "auth", token: cfg.token}));
  for (const e of cfg.entities) ws.send(JSON.stringify({type: "sync", entity: e}));
};
ws.onclose = (ev) => { state.closed = ev.code; };
ws.onmessage = (ev) => {
  const m = JSON.parse(ev.data);
  const have = state.versions[m.entity] || 0;
  if (m.type === "patch") {
    state.counts.patches++;
    if (have !== m.from) {  // missed something: resume from our version
      state.counts.gaps++;
      ws.send(JSON.stringify({type: "resume", entity: m.entity, from_version: have}));
      return;
    }
    const fields = {};
    for (const op of m.ops) fields[op.path.slice(1)] = op.value;
    show(m.entity, m.version, fields);
    state.versions[m.entity] = m.version;
    rendered(m.entity, m.from, m.version);
  } else if (m.type === "snapshot") {
    state.counts.snapshots++;
    show(m.entity, m.version, m.data || {});
    if (m.version > have) rendered(m.entity, have, m.version);
    state.versions[m.entity] = m.version;
  } else if (m.type === "synced") {
    state.counts.synced++;
  } else if (m.type === "error") {
    state.counts.errors++;
  }
};
</script></body></html>
"""

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data:; connect-src ws://127.0.0.1:*")


def serve(html: str) -> ThreadingHTTPServer:
    """The page on 127.0.0.1 (a free port), from a daemon thread."""
    body = html.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path.split("?")[0] == "/" else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="probe-page", daemon=True).start()
    return server


def clock_offset_ms(page: Any) -> dict[str, float]:
    """The page's clock minus Python's ``time.time()``, and the round trip it was read in."""
    t0 = time.time()
    t_page = page.evaluate("performance.timeOrigin + performance.now()") / 1000
    t1 = time.time()
    return {"offset_ms": round((t_page - (t0 + t1) / 2) * 1000, 2),
            "round_trip_ms": round((t1 - t0) * 1000, 2)}


def unavailable() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium; `make test` installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def run_page(args: dict[str, Any]) -> None:
    why = unavailable()
    if why is not None:
        print("READY " + json.dumps({"skipped": why}), flush=True)
        sys.stdin.readline()
        print("FINAL " + json.dumps({"skipped": why}), flush=True)
        return
    from playwright.sync_api import sync_playwright

    cfg = {"url": args["url"], "token": args["token"], "entities": args["entities"]}
    # "</" cannot end the JSON script block early: ids and the URL hold no "<" anyway.
    server = serve(PAGE.replace("__CFG__", json.dumps(cfg).replace("</", "<\\/")))
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    timeout = float(args.get("connect_timeout", 60))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)[:200]))
            began = time.monotonic()
            page.goto(url, wait_until="load", timeout=timeout * 1000)
            # Polled from here: wait_for_function's polling evaluates a string, which the
            # page's CSP (no 'unsafe-eval') refuses; page.evaluate goes through DevTools.
            while page.evaluate("window.c360probe.counts.synced") < len(cfg["entities"]):
                if time.monotonic() - began > timeout:
                    raise TimeoutError(f"the page was not synced within {timeout:g} s")
                time.sleep(0.05)
            print("READY " + json.dumps({"entities": len(cfg["entities"]),
                                         "seconds": round(time.monotonic() - began, 2),
                                         "clock": clock_offset_ms(page)}), flush=True)
            # The page runs on its own in Chromium meanwhile; nothing here needs to answer it.
            sys.stdin.readline()
            got = page.evaluate("({renders: window.c360probe.renders, "
                                "counts: window.c360probe.counts, "
                                "versions: window.c360probe.versions, "
                                "closed: window.c360probe.closed})")
            # What the DOM shows: every row's version cell must be the page's copy's version.
            shown = page.evaluate("Object.fromEntries([...document.querySelectorAll("
                                  "'tr[data-entity]')].map(r => [r.dataset.entity, "
                                  "Number(r.querySelector('.v').textContent)]))")
            clock = clock_offset_ms(page)
        finally:
            browser.close()
    server.shutdown()
    with open(args["arrivals_out"], "w") as f:
        json.dump(got["renders"], f)
    versions = got["versions"]
    print("FINAL " + json.dumps({
        **got["counts"], "renders": len(got["renders"]), "socket_closed": got["closed"],
        "page_errors": errors[:3], "clock": clock,
        "dom_shows_every_version": all(shown.get(e) == v for e, v in versions.items()),
        "entities_seen": sum(1 for v in versions.values() if v > 0)}), flush=True)


def main() -> None:
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    if mode != "page":
        raise SystemExit(f"unknown mode {mode!r}: page")
    run_page(args)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
