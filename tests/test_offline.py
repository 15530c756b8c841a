"""Offline-first: notebooks and pages draw their plots with the network blocked.

Every browser test here routes the page's requests: those to this machine (127.0.0.1,
localhost, file:, data:) go through, any other is aborted and recorded, so that a test
can assert that none was even attempted. BokehJS, Panel's JS and its stylesheets come
inline with the notebook's outputs (:func:`c360.dev.notebook.offline`: ``inline=True``, and
HoloViews objects shown through Panel), and from the server's own static files for
served pages (tests/test_demo.py,
tests/test_notebook_dashboard.py use the same helpers for /live, /app and notebook 05).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
LOCAL = re.compile(r"^(?:https?|wss?)://(?:127\.0\.0\.1|localhost|\[::1\])(?::\d+)?(?:/|$)")
ACCENT_RGB = (0x0F, 0x76, 0x6E)  # dashboards.live.ACCENT, the colour of the pages' curves
HV_BLUE_RGB = (0x30, 0xA2, 0xDA)  # HoloViews' first default colour (the notebooks' bars)
# The notebook whose output the test opens: the quickest to execute (about 40 s on a busy
# machine), with HoloViews bars and the live page (Panel, Tabulator, a Bokeh chart).
NOTEBOOK = REPO / "notebooks" / "01_getting_started.ipynb"

# Counts the canvas pixels within 40 of a colour in every channel: the glyphs, not the
# axes or the background.
_INK_JS = """(canvases, rgb) => {
  let best = 0;
  for (const c of canvases) {
    if (!c.width || !c.height) continue;
    const ctx = c.getContext("2d");
    if (!ctx) continue;
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 0 && Math.abs(d[i] - rgb[0]) < 40 && Math.abs(d[i + 1] - rgb[1]) < 40
          && Math.abs(d[i + 2] - rgb[2]) < 40) n++;
    }
    best = Math.max(best, n);
  }
  return best;
}"""


def block_the_network(context: Any) -> list[str]:
    """Abort every request of the browser ``context`` that would leave this machine;
    returns the list in which each such URL is recorded (it should stay empty)."""
    attempted: list[str] = []

    def route(r: Any) -> None:
        url = r.request.url
        if LOCAL.match(url) or url.startswith(("file:", "data:", "blob:", "about:")):
            r.continue_()
        else:
            attempted.append(url)
            r.abort("internetdisconnected")

    def watch_sockets(page: Any) -> None:  # routes do not see WebSockets
        page.on("websocket", lambda ws: None if LOCAL.match(ws.url) else attempted.append(ws.url))

    context.route("**/*", route)
    context.on("page", watch_sockets)
    return attempted


# Every element matching a selector, in the document and in every shadow root (Bokeh and
# Panel render into shadow roots, which document.querySelectorAll does not enter).
_DEEP_JS = """(selector) => {
  const found = [];
  const walk = (root, inside) => {
    for (const el of root.querySelectorAll("*")) {
      const hit = inside || el.closest(selector) !== null;
      if (hit && el.tagName === "CANVAS") found.push(el);
      if (el.shadowRoot) walk(el.shadowRoot, hit);
    }
  };
  walk(document, false);
  return found;
}"""


def glyph_pixels(page: Any, selector: str, rgb: tuple[int, int, int]) -> int:
    """The most pixels of colour ``rgb`` on one canvas inside an element matching
    ``selector``, shadow roots included."""
    return int(page.evaluate(f"(rgb) => ({_INK_JS})(({_DEEP_JS})({selector!r}), rgb)",
                             list(rgb)))


def wait_for_glyphs(page: Any, selector: str, rgb: tuple[int, int, int],
                    timeout_ms: int = 120_000) -> int:
    """Until a canvas inside ``selector`` shows at least 20 pixels of ``rgb``; returns them."""
    page.wait_for_function(f"(rgb) => ({_INK_JS})(({_DEEP_JS})({selector!r}), rgb) >= 20",
                           arg=list(rgb), timeout=timeout_ms, polling=500)
    return glyph_pixels(page, selector, rgb)


def _export(notebook: Path, out: Path) -> Path:
    """Execute ``notebook`` and export it to HTML in ``out`` (nbconvert's lab template).

    The template's own two scripts (require.js and MathJax, for widgets and LaTeX) point to
    a CDN; nothing here needs them, so they are pointed at nothing. Bokeh and Panel must
    then work from what the outputs carry."""
    run = subprocess.run(
        [str(REPO / ".venv" / "bin" / "jupyter"), "nbconvert", "--to", "html", "--execute",
         "--ExecutePreprocessor.timeout=300", "--HTMLExporter.require_js_url=",
         "--HTMLExporter.mathjax_url=", "--output-dir", str(out), str(notebook)],
        capture_output=True, text=True, cwd=notebook.parent, timeout=600)
    assert run.returncode == 0, f"nbconvert failed:\n{run.stderr[-4000:]}"
    return out / f"{notebook.stem}.html"


def test_every_notebook_draws_offline() -> None:
    """Each notebook that plots or shows a page calls ``offline()`` before anything else of
    HoloViews or Panel; a plain ``hv.extension("bokeh")`` or ``pn.extension(...)`` would
    load their JS from a CDN."""
    plain = re.compile(r"\b(?:hv|pn)\.extension\((?![^)]*inline=True)[^)]*\)")
    uses = re.compile(r"\b(?:hv|pn)\.[A-Za-z]|\bLivePage\(")
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = [c.source for c in nbformat.read(path, as_version=4).cells
                 if c.cell_type == "code"]
        text = "\n".join(cells)
        assert not plain.findall(text), f"{path.name}: {plain.findall(text)}"
        first_use = next((i for i, c in enumerate(cells) if uses.search(c)), None)
        if first_use is not None:
            assert "offline()" in "\n".join(cells[: first_use + 1]), (
                f"{path.name}: cell {first_use} shows a plot or a page before offline()")
    for builder in sorted((REPO / "notebooks" / "builders").glob("build_*.py")):
        assert not plain.findall(builder.read_text()), builder.name


def test_offline_shows_holoviews_through_panel_with_inline_stylesheets() -> None:
    """HoloViews' own notebook output links Panel's stylesheets from the CDN; through
    Panel (what offline() registers in IPython) they come inline."""
    import holoviews as hv
    import panel as pn

    from c360.dev.notebook import _through_panel, offline

    offline()  # outside IPython: loads the extensions, registers nothing
    assert pn.config.inline
    bars = hv.Bars([("a", 1), ("b", 3)], "k", "v")
    bundle = _through_panel(bars)
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    text = "".join(str(v) for v in data.values())
    assert "ImportedStyleSheet" not in text and "cdn.holoviz.org" not in text


@pytest.mark.browser
def test_a_notebooks_html_export_draws_its_plot_offline(tmp_path: Path, artifacts: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    html = _export(NOTEBOOK, tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            attempted = block_the_network(context)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html.as_uri(), wait_until="load", timeout=60_000)
            # The loyalty-tier bars: a Bokeh root with its glyphs drawn on a canvas.
            drawn = wait_for_glyphs(page, ".jp-OutputArea-output", HV_BLUE_RGB)
            # The live page, built by Panel's JS: its rates table lists every stream.
            rows = page.locator(".c360-rates .tabulator-row")
            rows.filter(has_text="tp_demographics").first.wait_for(timeout=30_000)
            rates_text = " ".join(rows.all_inner_texts())
            page.screenshot(path=str(artifacts / "notebook01_offline.png"), full_page=True)
        finally:
            browser.close()
    assert drawn >= 20
    assert "tp_demographics" in rates_text and "orders" in rates_text
    assert attempted == [], f"the export asked the network for {attempted}"
    assert not [e for e in errors if "Bokeh" in e or "panel" in e.lower()], errors
