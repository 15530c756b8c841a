"""Overview page: the whole customer base at a glance, live.

Reads only the process's shared :class:`~dashboards.feed.Snapshot` (computed once per
second for all sessions). KPIs are number widgets whose ``value`` is set (a param
update), the charts are streamed through ``hv.streams.Buffer`` (points appended, no
redraw), and the tables are patched cell by cell.
"""

from __future__ import annotations

from typing import Any

import holoviews as hv
import pandas as pd
import panel as pn

from dashboards.feed import Feed, Snapshot
from dashboards.live import ACCENT, PANEL_STYLE, _clock_ticks, _heading, format_value
from dashboards.tables import PatchedTable

CHART_POINTS = 300
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


class OverviewPage(pn.viewable.Viewer):
    """KPIs, streaming charts, trending lists, segments, decisions and dead letters."""

    def __init__(self, feed: Feed, **params: Any) -> None:
        super().__init__(**params)
        self.feed = feed
        self._last_at = 0.0
        self._points: list[tuple[pd.Timestamp, float, float]] = []
        self._charted_at = 0.0
        self.kpis = {
            "rate": _kpi("Events / s", "{value:,.0f}", "c360-kpi-rate"),
            "revenue": _kpi("Revenue / min", "{value:,.0f}", "c360-kpi-revenue"),
            "orders": _kpi("Orders / min", "{value:,.1f}", "c360-kpi-orders"),
            "active": _kpi("Active customers (1 min)", "{value:,}", "c360-kpi-active"),
            "customers": _kpi("Customers", "{value:,}", "c360-kpi-customers"),
            "returns": _kpi("Returns rate", "{value:.1%}", "c360-kpi-returns"),
            "dlq": _kpi("Dead letters", "{value:,}", "c360-kpi-dlq"),
            "late": _kpi("Late events", "{value:,}", "c360-kpi-late"),
        }
        empty = {"time": pd.Series(dtype="datetime64[ns]")}
        self.rate_buffer = hv.streams.Buffer(
            pd.DataFrame({**empty, "events_per_s": pd.Series(dtype="float64")}),
            length=CHART_POINTS, index=False)
        self.money_buffer = hv.streams.Buffer(
            pd.DataFrame({**empty, "revenue_per_min": pd.Series(dtype="float64")}),
            length=CHART_POINTS, index=False)
        ticks = _clock_ticks()

        def curve(data: pd.DataFrame, y: str, label: str) -> hv.Curve:
            return hv.Curve(data, "time", (y, label)).opts(
                color=ACCENT, line_width=2, responsive=True, height=200, xlabel="",
                xformatter=ticks, tools=["hover"], framewise=True, ylim=(0, None),
                show_grid=True, default_tools=["pan", "wheel_zoom", "reset"])

        rate_chart = hv.DynamicMap(lambda data: curve(data, "events_per_s", "events / s"),
                                   streams=[self.rate_buffer])
        money_chart = hv.DynamicMap(lambda data: curve(data, "revenue_per_min", "revenue / min"),
                                    streams=[self.money_buffer])
        self.streams = PatchedTable(["stream", "events", "per_s"], height=300,
                                    css_class="c360-stream-rates")
        heads = {"products": "product", "categories": "category", "searches": "query"}
        self.tops = {k: PatchedTable([head, "count"], height=200, css_class=f"c360-top-{k}")
                     for k, head in heads.items()}
        self.segments = PatchedTable(["segment", "customers"], height=200,
                                     css_class="c360-segments")
        self.decisions = PatchedTable(["at", "customer", "action", "reason"], height=300,
                                      css_class="c360-decisions")
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

    def _show(self, s: Snapshot, first: bool) -> None:
        values = {"rate": round(s.total_rate), "revenue": round(s.revenue_per_min),
                  "orders": round(s.orders_per_min, 1), "active": s.active,
                  "customers": s.customers, "returns": s.returns_rate,
                  "dlq": s.dlq or 0, "late": s.late or 0}
        for k, v in values.items():
            if self.kpis[k].value != v:  # a param update only when the figure moved
                self.kpis[k].value = v
        if not first:  # the first sample has no rate yet: a zero point would be a lie
            self._points.append((pd.Timestamp.fromtimestamp(s.at), s.total_rate,
                                 s.revenue_per_min))
            if s.at - self._charted_at >= CHART_EVERY_S:
                self._charted_at = s.at
                times, rates, money = zip(*self._points, strict=True)
                self._points = []
                self.rate_buffer.send(pd.DataFrame({"time": times, "events_per_s": rates}))
                self.money_buffer.send(pd.DataFrame({"time": times,
                                                     "revenue_per_min": money}))
        self.streams.update([(k, n, round(s.rates.get(k, 0.0), 1))
                             for k, n in sorted(s.counts.items())])
        for k, table in self.tops.items():
            table.update(s.trending.get(k, []))
        self.segments.update(list(s.segments.items()))
        self.decisions.update([(format_value(d["at"]), d["customer"], d["action"], d["reason"])
                               for d in s.decisions])
        note = ("closed five-minute window of the dataflow's analytics"
                if s.trending_source == "analytics" else
                "live count over the last five minutes (until the dataflow's first "
                "five-minute window closes)")
        self.trending_note.object = f"*Trending: {note}.*"
