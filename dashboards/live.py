"""The live page: events per second per stream, active customers, and one customer's entity.

Served by ``c360 demo`` at ``/live``, and by ``panel serve dashboards/live.py`` (set
``C360_KAFKA_BOOTSTRAP``; the first session starts the one dataflow of the server
process, see :mod:`c360.run.shared`). In a notebook: ``LivePage(store).start()`` then
display it.

Little is sent: the entity's fields are patched cell by cell once the page is shown,
the rate chart is streamed (``hv.streams.Buffer``), the entity view is only touched when
the entity's version changed, and the 17-row rates table is sent whole only when it
changed (a patch would not reach a view made after it, see ``_refresh_stats``).
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

import holoviews as hv
import msgspec
import pandas as pd
import panel as pn
from bokeh.models import DatetimeTickFormatter
from bokeh.models.widgets.tables import NumberFormatter

from c360.errors import C360Error
from c360.model.events import Catalogue
from c360.store.memory import EntityStore

# inline: in a notebook, BokehJS and Panel's JS come from the kernel, not from a CDN (plots
# were blank offline); served pages are unaffected (the server serves its own static files).
pn.extension("tabulator", inline=True)

log = logging.getLogger(__name__)

ENTITY_PERIOD_MS = 250  # the brief's "updating within milliseconds", at a browser-friendly pace
STATS_PERIOD_MS = 1000  # rates are per second, so sampling faster only adds noise
RATE_WINDOW_S = 3.0  # rates are averaged over this many seconds to steady the numbers
CHART_POINTS = 300  # five minutes of history at one sample per second
MAX_OPTIONS = 50_000  # customer ids sent to the browser for autocompletion
VALUE_CHARS = 240  # longer values (recent orders, ...) are cut in the fields table

# Shown first in the fields table; the rest follow alphabetically, new fields at the end.
# "id" and "version" are the entity's own; the others are fields the model declares
# (tests/test_model_downstream.py). The table lists whatever fields the entity has, so a
# field a model adds shows up with no change here.
LEADING_FIELDS = ("id", "version", "last_seen", "first_seen", "name", "email", "loyalty_tier",
                  "lifetime_value", "order_count", "total_spent")

ACCENT = "#0f766e"

PAGE_BACKGROUND = "#f1f5f9"
PANEL_STYLE = {
    "background": "#ffffff",
    "border": "1px solid #e2e8f0",
    "border-radius": "10px",
    "box-shadow": "0 1px 3px rgba(15, 23, 42, 0.06)",
    "padding": "4px 12px 12px 12px",
}
ROW_PX = 30  # Tabulator's row height, to size the rates table to all its rows

CARD_CSS = f"""
.c360-card {{ font-family: system-ui, sans-serif; color: #0f172a; }}
.c360-card .c360-name {{ font-size: 1.35em; font-weight: 600; margin-bottom: 6px; }}
.c360-card .c360-meta {{ display: flex; flex-wrap: wrap; gap: 6px 18px; color: #475569; }}
.c360-card .c360-meta b {{ color: #0f172a; font-variant-numeric: tabular-nums; }}
.c360-card code {{ background: #f1f5f9; padding: 1px 5px; border-radius: 4px; }}
.c360-card .c360-badge {{
  background: {ACCENT}; color: white; border-radius: 999px; padding: 1px 10px;
  font-size: 0.85em; text-transform: uppercase; letter-spacing: 0.04em;
}}
.c360-card .c360-empty {{ color: #64748b; }}
"""

HEADER_HTML = f"""
<div style="display:flex;align-items:baseline;gap:14px;font-family:system-ui,sans-serif;
            padding:10px 16px;border-radius:10px;background:{ACCENT};color:white;">
  <span style="font-size:1.5em;font-weight:700;">c360 live</span>
  <span style="opacity:0.85;">every stream folded into one live entity per customer,
  straight from Kafka</span>
</div>
"""


def _number(label: str, fmt: str, css_class: str) -> pn.indicators.Number:
    return pn.indicators.Number(
        label=label, value=0, format=fmt, default_color=ACCENT, font_size="34pt",
        title_size="11pt", css_classes=[css_class], sizing_mode="stretch_width",
        styles={**PANEL_STYLE, "padding": "2px 16px 6px 16px"},
    )


def _clock_ticks() -> DatetimeTickFormatter:
    # Wall-clock ticks at every zoom level: Bokeh's default shows "400ms" while the chart
    # holds only a couple of seconds, which reads like a duration, not a time. One per
    # page: a Bokeh model belongs to one session's document and cannot be shared.
    return DatetimeTickFormatter(milliseconds="%H:%M:%S", seconds="%H:%M:%S",
                                 minsec="%H:%M:%S", minutes="%H:%M", hourmin="%H:%M",
                                 hours="%H:%M")


def _heading(text: str) -> pn.pane.HTML:
    return pn.pane.HTML(f'<div style="font:600 1.1em system-ui,sans-serif;color:#0f172a;'
                        f'margin:8px 0 2px 0">{html.escape(text)}</div>',
                        sizing_mode="stretch_width")


def format_value(value: Any, limit: int = VALUE_CHARS) -> str:
    """One line of text for a field value: dates in ISO form, structures as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, (dict, list, tuple)):
        text = msgspec.json.encode(value).decode()
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_handled_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
CLOSED_TAB_WRITE = "Failed sending message as connection was closed"  # Panel's own words


class _ClosedTabWrites(logging.Filter):
    """Panel's warning for the same event when it does await the write: a debug line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(CLOSED_TAB_WRITE):
            log.debug("a browser tab went away during a write (Panel: %s)", record.getMessage())
            return False
        return True


def _from_a_detached_tab(exc: BaseException | None) -> bool:
    """Whether ``exc`` is Bokeh asserting that a websocket's connection still has its session.

    Bokeh's keep-alive ping drops a connection whose socket is already closing
    (``client_lost``: the session is detached). When the tab closed while one of its
    messages waited for the document's lock (seconds on a loaded 2-core machine), that
    message and then the socket's ``on_close`` ask the connection for its session and
    Bokeh's ``assert self._session is not None`` fails: two ERROR lines with tracebacks
    (a fresh-clone CI run of test_demo, 2026-12-02; the same code is in Bokeh's main
    branch). The session itself is cleaned up as unused; nothing is lost.
    """
    if not isinstance(exc, AssertionError) or exc.__traceback__ is None:
        return False
    last = exc.__traceback__
    while last.tb_next is not None:
        last = last.tb_next
    code = last.tb_frame.f_code
    return code.co_name == "session" and code.co_filename.replace("\\", "/").endswith(
        "bokeh/server/connection.py")


class _DetachedTabs(logging.Filter):
    """Bokeh's error for a message or close of a tab its keep-alive ping already dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _from_a_detached_tab(record.exc_info[1] if record.exc_info else None):
            log.debug("a closed tab's message came after Bokeh dropped its session: %s",
                      record.getMessage().splitlines()[0])
            return False
        return True


def handle_closed_tabs(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """On the web server's event loop (default: the running one), a write to a browser tab
    that has gone away is a debug line, not an error with a traceback.

    When a tab closes while the server writes to it, Tornado fails that write with
    ``WebSocketClosedError``; Panel then destroys the session and drops its pending
    writes without looking at their outcome, so asyncio logged "Task exception was never
    retrieved" with two tracebacks, several times a minute as tabs came and went (and
    when Panel does await the write, it logs a warning). Nothing is lost: the tab is
    gone. Every other unretrieved error goes to the previous handler.
    """
    from tornado.websocket import WebSocketClosedError

    # Panel logs it when it awaits the write, Bokeh's websocket handler when it does.
    for name in ("panel.io.document", "bokeh.server.views.ws"):
        writer_log = logging.getLogger(name)
        if not any(isinstance(f, _ClosedTabWrites) for f in writer_log.filters):
            writer_log.addFilter(_ClosedTabWrites())
    # Bokeh logs a detached tab's message, Tornado the socket's close (see _DetachedTabs).
    for name in ("bokeh.server.protocol_handler", "tornado.application"):
        handler_log = logging.getLogger(name)
        if not any(isinstance(f, _DetachedTabs) for f in handler_log.filters):
            handler_log.addFilter(_DetachedTabs())
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop here (a notebook's kernel thread, a test)
            return
    if loop in _handled_loops:
        return
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), WebSocketClosedError):
            log.debug("a browser tab went away during a write: %s", context.get("message"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    _handled_loops.add(loop)


def field_order(entity: Mapping[str, Any]) -> list[str]:
    lead = [f for f in LEADING_FIELDS if f in entity]
    return lead + sorted(f for f in entity if f not in lead and f != "kind")


def most_active(store: EntityStore) -> str | None:
    """The customer with the most applied changes: the liveliest one to look at."""
    best: tuple[int, str] | None = None
    for e in store.entities("customer"):
        key = (e["version"], e["id"])
        if best is None or key > best:
            best = key
    return best[1] if best else None


class RateMeter:
    """Events per second per stream, from cumulative counters sampled over time."""

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    @property
    def ready(self) -> bool:
        """True once there are two samples: a rate needs a time span."""
        return len(self._samples) >= 2

    def sample(self, counts: Mapping[str, int], now: float) -> dict[str, float]:
        self._samples.append((now, dict(counts)))
        # Keep the newest sample at least `window` old as the baseline.
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        then, old = self._samples[0]
        elapsed = now - then
        if elapsed <= 0:
            return {name: 0.0 for name in counts}
        return {name: max(0, n - old.get(name, 0)) / elapsed for name, n in counts.items()}


class LivePage(pn.viewable.Viewer):
    """The live page over one :class:`~c360.store.memory.EntityStore`.

    In a server session it refreshes itself; elsewhere call :meth:`start`, or
    :meth:`refresh` to update it once (tests do).
    """

    def __init__(self, store: EntityStore, *, problem: Callable[[], str | None] | None = None,
                 entity_period: int = ENTITY_PERIOD_MS, stats_period: int = STATS_PERIOD_MS,
                 **params: Any) -> None:
        super().__init__(**params)
        self.store = store
        self._problem = problem
        self._entity_period = entity_period
        self._stats_period = stats_period
        self._callbacks: list[Any] = []
        self._meter = RateMeter()
        self._shown_id: str | None = None
        self._shown_version = -1
        self._shown_values: dict[str, str] = {}
        self._option_count = -1

        stretch = "stretch_width"
        self._alert = pn.pane.Alert("", alert_type="danger", visible=False,
                                    css_classes=["c360-problem"], sizing_mode=stretch)
        self._customers = _number("Active customers", "{value:,}", "c360-customers")
        self._rate = _number("Events / s", "{value:,.0f}", "c360-rate")
        self._events = _number("Events folded", "{value:,}", "c360-events")

        # Tabulator streams rows only onto a numeric index, so rows are numbered and
        # found by name through _rate_rows / _field_rows.
        streams = [s.name for s in Catalogue().streams]
        self._rate_rows = {name: i for i, name in enumerate(streams)}
        self._rates = pn.widgets.Tabulator(
            pd.DataFrame({"stream": streams, "events": 0, "per_s": 0.0}),
            disabled=True, show_index=False, sortable=False, selectable=False,
            height=ROW_PX * (len(streams) + 1) + 4, layout="fit_columns", sizing_mode=stretch,
            titles={"stream": "stream", "events": "events", "per_s": "events / s"},
            formatters={"events": NumberFormatter(format="0,0"),
                        "per_s": NumberFormatter(format="0,0.0")},
            text_align={"events": "right", "per_s": "right"},
            css_classes=["c360-rates"],
        )
        self._buffer = hv.streams.Buffer(
            pd.DataFrame({"time": pd.Series(dtype="datetime64[ns]"),
                          "events_per_s": pd.Series(dtype="float64")}),
            length=CHART_POINTS, index=False,
        )
        self._ticks = _clock_ticks()
        chart = hv.DynamicMap(self._curve, streams=[self._buffer])
        self._chart = pn.pane.HoloViews(chart, height=230, sizing_mode=stretch,
                                        css_classes=["c360-chart"])

        self._picker = pn.widgets.AutocompleteInput(
            label="Customer", placeholder="type a customer id", options=[], restrict=False,
            case_sensitive=False, search_strategy="includes", min_characters=1,
            sizing_mode=stretch, css_classes=["c360-picker"],
        )
        self._busiest = pn.widgets.Button(label="Most active", color="primary", width=130,
                                          align="end", css_classes=["c360-most-active"])
        self._busiest.on_click(lambda _: self.select(most_active(self.store)))
        self._picker.param.watch(lambda _: self._refresh_entity(), "value")
        self._card = pn.pane.HTML(self._card_html(None, None), stylesheets=[CARD_CSS],
                                  css_classes=["c360-entity-card"], min_height=70,
                                  sizing_mode=stretch)
        self._field_rows: dict[str, int] = {}
        self._fields = pn.widgets.Tabulator(
            pd.DataFrame({"field": pd.Series(dtype="object"), "value": pd.Series(dtype="object")}),
            disabled=True, show_index=False, sortable=False, selectable=False, height=600,
            widths={"field": 170}, layout="fit_columns", sizing_mode=stretch,
            # Long values (recent orders, ...) are cut in the cell; hovering shows them whole.
            configuration={"columnDefaults": {"tooltip": True}},
            css_classes=["c360-entity-fields"],
        )

        self._layout = pn.Column(
            pn.pane.HTML(HEADER_HTML, sizing_mode=stretch),
            self._alert,
            pn.Row(self._customers, self._rate, self._events, sizing_mode=stretch),
            pn.Row(
                pn.Column(_heading("Events per second: total, and by stream"), self._chart,
                          self._rates, styles=PANEL_STYLE, sizing_mode=stretch, margin=(5, 10)),
                pn.Column(_heading("One customer, live"),
                          pn.Row(self._picker, self._busiest, sizing_mode=stretch),
                          self._card, self._fields, styles=PANEL_STYLE, sizing_mode=stretch,
                          margin=(5, 10)),
                sizing_mode=stretch,
            ),
            sizing_mode=stretch, max_width=1600, styles={"background": PAGE_BACKGROUND},
        )
        self.refresh()
        session = pn.state.curdoc.session_context if pn.state.curdoc else None
        if session is not None:  # served: keep this session's view live
            self.start()

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout

    # -- control ---------------------------------------------------------------------------
    def start(self) -> LivePage:
        """Refresh periodically (in this session, when served). Idempotent."""
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            handle_closed_tabs()  # served (also by `panel serve`): tabs come and go
        if not self._callbacks:
            self._callbacks = [
                pn.state.add_periodic_callback(self._refresh_entity, self._entity_period),
                pn.state.add_periodic_callback(self._refresh_stats, self._stats_period),
            ]
        return self

    def stop(self) -> None:
        for cb in self._callbacks:
            cb.stop()
        self._callbacks = []

    def refresh(self) -> None:
        """Update everything once from the store."""
        self._refresh_stats()
        self._refresh_entity()

    def select(self, customer_id: str | None) -> None:
        """Show ``customer_id``'s entity."""
        if customer_id:
            self._picker.value = customer_id  # the watcher refreshes the view

    @property
    def selected(self) -> str | None:
        return self._shown_id

    # -- statistics ------------------------------------------------------------------------
    def _curve(self, data: pd.DataFrame) -> hv.Curve:
        return hv.Curve(data, "time", ("events_per_s", "events / s")).opts(
            color=ACCENT, line_width=2, responsive=True, height=210, xlabel="",
            xformatter=self._ticks,
            tools=["hover"], framewise=True, ylim=(0, None), show_grid=True,
            default_tools=["pan", "wheel_zoom", "reset"],
        )

    def _refresh_stats(self) -> None:
        counts = self.store.stream_counts()
        rates = self._meter.sample(counts, time.monotonic())
        for name in counts:
            if name not in self._rate_rows:  # a stream outside the catalogue (a user's own)
                self._rate_rows[name] = len(self._rate_rows)
        names = sorted(self._rate_rows, key=self._rate_rows.__getitem__)
        table = pd.DataFrame({"stream": names,
                              "events": [counts.get(n, 0) for n in names],
                              "per_s": [round(rates.get(n, 0.0), 1) for n in names]})
        # The whole table (17 rows, about 1 kB), not cell patches: Tabulator.patch changes
        # .value but not the copy Panel builds new views from, so a view made after a
        # patch (a session's page, a notebook's output) showed that patch's cells as they
        # were before it, until they changed again: the third-party streams, whose events
        # come at sign-up, read 0 for good. The browser redraws every row on a patch anyway.
        if not table.equals(self._rates.value):
            self._rates.value = table
        total = sum(rates.values())
        if self._meter.ready:  # the first sample has no span: its zero rate would be a lie
            self._buffer.send(pd.DataFrame({"time": [pd.Timestamp.now()],
                                            "events_per_s": [total]}))
        self._rate.value = round(total)
        self._events.value = sum(counts.values())
        customers = self.store.count("customer")
        self._customers.value = customers
        if customers != self._option_count:
            self._option_count = customers
            self._picker.options = sorted(self.store.ids("customer"))[:MAX_OPTIONS]
        problem = self._problem() if self._problem else None
        self._alert.object = problem or ""
        self._alert.visible = problem is not None

    # -- the selected entity ---------------------------------------------------------------
    def _refresh_entity(self) -> None:
        wanted = self._picker.value or None
        if wanted is None:
            wanted = most_active(self.store)
            if wanted is None:
                return  # nothing has arrived yet
            self._picker.value = wanted  # re-enters through the watcher
            return
        entity = self.store.get(wanted)
        if entity is None:
            if wanted != self._shown_id:
                self._shown_id, self._shown_version, self._shown_values = wanted, -1, {}
                self._card.object = self._card_html(wanted, None)
                self._set_fields({})
            return
        if wanted == self._shown_id and entity["version"] == self._shown_version:
            return  # unchanged since the last look: send nothing to the browser
        texts = {f: format_value(entity[f]) for f in field_order(entity)}
        if wanted != self._shown_id or not self._field_rows or not self._fields._models:
            # Another customer, or no view yet (a patch would not reach the view made later,
            # see _refresh_stats): a new table.
            self._set_fields(texts)
        else:  # the same customer, newer version: patch changed cells, stream new fields
            old, rows = self._shown_values, self._field_rows
            changed = [(rows[f], t) for f, t in texts.items() if f in old and old[f] != t]
            added = [f for f in texts if f not in old]
            if changed:
                self._fields.patch({"value": changed})
            if added:
                for f in added:
                    rows[f] = len(rows)
                self._fields.stream(pd.DataFrame({"field": added,
                                                  "value": [texts[f] for f in added]}),
                                    follow=False)
        self._shown_id, self._shown_version, self._shown_values = (
            wanted, entity["version"], texts)
        self._card.object = self._card_html(wanted, entity)

    def _set_fields(self, texts: Mapping[str, str]) -> None:
        self._field_rows = {f: i for i, f in enumerate(texts)}
        self._fields.value = pd.DataFrame({"field": list(texts), "value": list(texts.values())})

    @staticmethod
    def _card_html(customer_id: str | None, entity: Mapping[str, Any] | None) -> str:
        if customer_id is None:
            return ('<div class="c360-card"><span class="c360-empty">'
                    "Waiting for the first customer…</span></div>")
        cid = html.escape(customer_id)
        if entity is None:
            return (f'<div class="c360-card"><span class="c360-empty">No customer '
                    f"<code>{cid}</code> yet.</span></div>")
        esc = html.escape
        name = esc(str(entity.get("name") or customer_id))
        tier = entity.get("loyalty_tier")
        badge = f' <span class="c360-badge">{esc(str(tier))}</span>' if tier else ""
        version = entity["version"]
        last_seen = esc(format_value(entity.get("last_seen")))
        ltv = entity.get("lifetime_value")
        ltv_html = f"<span>lifetime value <b>{ltv:,.2f}</b></span>" if ltv is not None else ""
        return (
            f'<div class="c360-card" data-customer="{cid}" data-version="{version}">'
            f'<div class="c360-name">{name}{badge}</div>'
            f'<div class="c360-meta">'
            f'<span>id <code class="c360-entity-id">{cid}</code></span>'
            f'<span>version <b class="c360-version" id="c360-version">{version}</b></span>'
            f'<span>last seen <b class="c360-last-seen" id="c360-last-seen">{last_seen}</b></span>'
            f"{ltv_html}</div></div>"
        )


def error_page(message: str) -> pn.viewable.Viewable:
    """What the page shows when it cannot get a live store (no Kafka configured, ...)."""
    return pn.Column(
        pn.pane.HTML(HEADER_HTML, sizing_mode="stretch_width"),
        pn.pane.Alert(
            f"**The live page has no data source:** {message}.\n\n"
            "Run `c360 demo` for a self-contained demo, or set `C360_KAFKA_BOOTSTRAP` to your "
            "cluster before `panel serve dashboards/live.py`.",
            alert_type="danger", css_classes=["c360-problem"],
        ),
    )


def app() -> pn.viewable.Viewable | pn.viewable.Viewer:
    """The page for one server session, over the process's shared store."""
    from c360.run import shared as live

    try:
        store = live.shared_store()
    except C360Error as exc:
        return error_page(str(exc))
    return LivePage(store, problem=live.problem)


if pn.state.served:  # `panel serve dashboards/live.py`; importing this module starts nothing
    app().servable(title="c360 live")
