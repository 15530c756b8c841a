"""Overview page: the whole customer base at a glance, live.

Reads only the process's shared :class:`~dashboards.feed.Snapshot` (computed once per
second for all sessions). KPIs are number widgets whose ``value`` is set (a param
update), the charts are streamed through ``hv.streams.Buffer`` (points appended, no
redraw), and the tables are patched cell by cell.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import holoviews as hv
import pandas as pd
import panel as pn
from bokeh.models import NumeralTickFormatter

from c360.entity.analytics import SERIES
from dashboards.feed import Feed, Snapshot
from dashboards.live import ACCENT, PANEL_STYLE, _clock_ticks, _heading
from dashboards.tables import PatchedTable
from dashboards.text import CURRENCY, named, when

CHART_POINTS = 300
MINUTE = pd.Timedelta(minutes=1)
# The feed samples once a second: points further apart than this are a gap (a stalled
# server), drawn as one, not bridged by a straight line.
LIVE_GAP = pd.Timedelta(seconds=3)
# The charts show the last five minutes: closed minute windows older than that are left
# out of a seed. (They close after the allowed lateness: with the default hour the first
# session's charts start empty; two hours of windows squeezed the live minutes into a
# sliver at the right edge, measured on the demo.)
SEED_SPAN = pd.Timedelta(seconds=CHART_POINTS)
Point = tuple[pd.Timestamp, float, float]  # (time, events per second, revenue per minute)


class _Charted:
    """The live points the overview sessions of this process have charted from one feed:
    a session opened later starts its charts with them (the last five minutes)."""

    def __init__(self) -> None:
        self._points: deque[Point] = deque(maxlen=CHART_POINTS)
        self._lock = threading.Lock()

    def add(self, point: Point) -> None:
        with self._lock:  # every session sees every sample: keep the first copy only
            if not self._points or point[0] > self._points[-1][0]:
                self._points.append(point)

    def points(self) -> list[Point]:
        with self._lock:
            return list(self._points)


# The chart history of each feed (so of each store), shared by the sessions that show it:
# weakly keyed by the feed itself (not its id(), which a later feed can reuse), so that it
# goes with its feed.
_charted: weakref.WeakKeyDictionary[Feed, _Charted] = weakref.WeakKeyDictionary()
_charted_lock = threading.Lock()


def charted(feed: Feed) -> _Charted:
    with _charted_lock:
        held = _charted.get(feed)
        if held is None:
            held = _charted[feed] = _Charted()
        return held
# A HoloViews chart update costs the server ~20-40 ms per session: the charts take the
# second-by-second points in batches, so fifty sessions fit on one process.
CHART_EVERY_S = 5.0
STRETCH = "stretch_width"


def _kpi(label: str, fmt: str, css: str) -> pn.indicators.Number:
    return pn.indicators.Number(
        label=label, value=0, format=fmt, default_color=ACCENT, font_size="26pt",
        title_size="10pt", css_classes=[css], sizing_mode=STRETCH,
        styles={**PANEL_STYLE, "padding": "2px 12px 6px 12px"})


def _box(*items: Any, title: str) -> pn.Column:
    return pn.Column(_heading(title), *items, styles=PANEL_STYLE, sizing_mode=STRETCH,
                     margin=(5, 8))


def utc(t: Any) -> pd.Timestamp:
    """A naive UTC timestamp (what the charts' time axis holds) of a datetime or epoch s."""
    stamp = pd.Timestamp(t, unit="s") if isinstance(t, (int, float)) else pd.Timestamp(t)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


def with_gaps(times: Sequence[pd.Timestamp], columns: Mapping[str, Sequence[float]],
              step: pd.Timedelta, after: pd.Timestamp | None = None) -> pd.DataFrame:
    """The points, with a NaN row wherever two are more than ``step`` apart (and before the
    first when it is that far from ``after``, the last point already drawn): a line
    breaks there instead of joining the two sides of a gap with a straight line."""
    rows: list[tuple[Any, ...]] = []
    last = after
    for i, t in enumerate(times):
        if last is not None and t - last > step:
            rows.append((last + (t - last) / 2, *([float("nan")] * len(columns))))
        rows.append((t, *(float(c[i]) for c in columns.values())))
        last = t
    return pd.DataFrame(rows, columns=["time", *columns])


def history(analytics: Mapping[str, Mapping[str, Any]], since: pd.Timestamp | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events per second, revenue per minute) over the closed minute windows the store
    holds (the dataflow's analytics) from ``since`` on, gaps broken."""
    def series(entity: str) -> list[dict[str, Any]]:
        items = (analytics.get(entity) or {}).get("series") or ()
        return [m for m in items if since is None or utc(m["minute"]) >= since]

    events = series("global:events_per_minute")
    money = series("global:revenue_per_minute")
    rate = with_gaps([utc(m["minute"]) for m in events],
                     {"events_per_s": [sum(m["events"].values()) / 60 for m in events]}, MINUTE)
    revenue = with_gaps([utc(m["minute"]) for m in money],
                        {"revenue_per_min": [m["revenue"] for m in money]}, MINUTE)
    return rate, revenue


class OverviewPage(pn.viewable.Viewer):
    """KPIs, streaming charts, trending lists, segments, decisions and dead letters."""

    def __init__(self, feed: Feed, **params: Any) -> None:
        super().__init__(**params)
        self.feed = feed
        self._last_at = 0.0
        self._points: list[tuple[pd.Timestamp, float, float]] = []
        self._charted_at = 0.0
        self._last_point: pd.Timestamp | None = None  # the newest point the charts hold
        self._names: dict[str, str] = {}
        self.kpis = {
            "rate": _kpi("Events / s", "{value:,.0f}", "c360-kpi-rate"),
            "revenue": _kpi("Revenue / min", CURRENCY + " {value:,.0f}", "c360-kpi-revenue"),
            "orders": _kpi("Orders / min", "{value:,.1f}", "c360-kpi-orders"),
            "active": _kpi("Active customers (1 min)", "{value:,}", "c360-kpi-active"),
            "customers": _kpi("Customers", "{value:,}", "c360-kpi-customers"),
            "returns": _kpi("Returns rate", "{value:.1%}", "c360-kpi-returns"),
            "dlq": _kpi("Dead letters", "{value:,}", "c360-kpi-dlq"),
            "late": _kpi("Late events", "{value:,}", "c360-kpi-late"),
        }
        # A session opened late does not start with empty charts: it gets the last five
        # minutes other sessions charted, or (the first session) the store's closed minute
        # windows of those five minutes; gaps broken. The live points follow.
        self._charted = charted(feed)
        seen = self._charted.points()
        if seen:
            times, rates, money = zip(*seen, strict=True)
            rate = with_gaps(times, {"events_per_s": rates}, LIVE_GAP)
            revenue = with_gaps(times, {"revenue_per_min": money}, LIVE_GAP)
        else:
            rate, revenue = history(feed.snapshot.analytics,
                                    since=utc(time.time()) - SEED_SPAN)
        if len(rate) or len(revenue):
            self._last_point = max(t for t in (*rate["time"][-1:], *revenue["time"][-1:]))
        length = CHART_POINTS + 2 * SERIES  # room for a seed and its gaps
        self.rate_buffer = hv.streams.Buffer(rate, length=length, index=False)
        self.money_buffer = hv.streams.Buffer(revenue, length=length, index=False)
        ticks = _clock_ticks()

        def curve(data: pd.DataFrame, y: str, label: str) -> hv.Curve:
            return hv.Curve(data, "time", (y, label)).opts(
                color=ACCENT, line_width=2, responsive=True, height=200, xlabel="UTC",
                xformatter=ticks, yformatter=NumeralTickFormatter(format="0,0"),
                tools=["hover"], framewise=True, ylim=(0, None),
                show_grid=True, default_tools=["pan", "wheel_zoom", "reset"])

        rate_chart = hv.DynamicMap(lambda data: curve(data, "events_per_s", "events / s"),
                                   streams=[self.rate_buffer])
        money_chart = hv.DynamicMap(lambda data: curve(data, "revenue_per_min", "revenue / min"),
                                    streams=[self.money_buffer])
        self.streams = PatchedTable(["stream", "events", "per_s"], height=300,
                                    css_class="c360-stream-rates")
        heads = {"products": ("product", "Product", "Units"),
                 "categories": ("category", "Category", "Units"),
                 "searches": ("query", "Search", "Searches")}
        self.tops = {k: PatchedTable([head, "count"], titles={head: what, "count": unit},
                                     height=200, css_class=f"c360-top-{k}")
                     for k, (head, what, unit) in heads.items()}
        self.segments = PatchedTable(["segment", "customers"], height=200,
                                     css_class="c360-segments")
        self.decisions = PatchedTable(["at", "customer", "action", "reason"], height=300,
                                      titles={"at": "Time (UTC)"}, css_class="c360-decisions")
        self.trending_note = pn.pane.Markdown("", css_classes=["c360-trending-source"],
                                              margin=(0, 10))
        self._layout = pn.Column(
            pn.Row(*list(self.kpis.values())[:4], sizing_mode=STRETCH),
            pn.Row(*list(self.kpis.values())[4:], sizing_mode=STRETCH),
            pn.Row(_box(pn.pane.HoloViews(rate_chart, sizing_mode=STRETCH, height=210),
                        title="Events per second"),
                   _box(pn.pane.HoloViews(money_chart, sizing_mode=STRETCH, height=210),
                        title="Revenue per minute"),
                   sizing_mode=STRETCH),
            pn.Row(_box(self.tops["products"].widget, title="Trending products"),
                   _box(self.tops["categories"].widget, title="Trending categories"),
                   _box(self.tops["searches"].widget, title="Trending searches"),
                   _box(self.segments.widget, title="Segment sizes"), sizing_mode=STRETCH),
            self.trending_note,
            pn.Row(_box(self.decisions.widget, title="Live decisions and alerts"),
                   _box(self.streams.widget, title="Events by stream"), sizing_mode=STRETCH),
            sizing_mode=STRETCH)
        self.refresh()

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout

    def refresh(self) -> bool:
        """Show the feed's latest snapshot if it is newer than the one shown."""
        snap = self.feed.snapshot
        if snap.at == self._last_at:
            return False
        first = self._last_at == 0.0
        self._last_at = snap.at
        self._show(snap, first)
        return True

    def name_of(self, product_id: str) -> str:
        """A product's name from its entity (the id while the store has none)."""
        name = self._names.get(product_id)
        if name is None:
            name = (self.feed.store.get(product_id) or {}).get("name")
            if not name:
                return product_id
            self._names[product_id] = name = str(name)
        return name

    def _show(self, s: Snapshot, first: bool) -> None:
        values = {"rate": round(s.total_rate), "revenue": round(s.revenue_per_min),
                  "orders": round(s.orders_per_min, 1), "active": s.active,
                  "customers": s.customers, "returns": s.returns_rate,
                  "dlq": s.dlq or 0, "late": s.late or 0}
        for k, v in values.items():
            if self.kpis[k].value != v:  # a param update only when the figure moved
                self.kpis[k].value = v
        if not first:  # the first sample has no rate yet: a zero point would be a lie
            point = (utc(s.at), s.total_rate, s.revenue_per_min)
            self._points.append(point)
            self._charted.add(point)
            if s.at - self._charted_at >= CHART_EVERY_S:
                self._charted_at = s.at
                times, rates, money = zip(*self._points, strict=True)
                self._points = []
                after, self._last_point = self._last_point, times[-1]
                self.rate_buffer.send(with_gaps(times, {"events_per_s": rates}, LIVE_GAP,
                                                after))
                self.money_buffer.send(with_gaps(times, {"revenue_per_min": money}, LIVE_GAP,
                                                 after))
        self.streams.update([(k, n, round(s.rates.get(k, 0.0), 1))
                             for k, n in sorted(s.counts.items())])
        for k, table in self.tops.items():
            rows = s.trending.get(k, [])
            if k == "products":
                rows = [(self.name_of(str(p)), n) for p, n in rows]
            table.update([(str(a), f"{n:,}") for a, n in rows])
        self.segments.update([(k, f"{n:,}") for k, n in s.segments.items()])
        self.decisions.update([(when(d["at"], zone=False), d["customer"],
                                str(d["action"]).replace("_", " "),
                                named(str(d["reason"]), self.name_of)) for d in s.decisions])
        note = ("closed five-minute window of the dataflow's analytics"
                if s.trending_source == "analytics" else
                "live count over the last five minutes (until the dataflow's first "
                "five-minute window closes)")
        self.trending_note.object = f"*Trending: {note}.*"
