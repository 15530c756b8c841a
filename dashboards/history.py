"""The time slider of the Customer 360 view: one customer as of any version, and what changed
at each step (c360.History; docs/time-travel.md).

A slider picks a version (0: before the customer existed); the view shows the entity as of
that version, the fields that version changed highlighted, and the steps up to it with the
event that made each. The customer's scope applies as in the rest of the view: fields outside
it are not shown, PII is redacted without the pii scope.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
import panel as pn

from c360.store.history import History
from c360.sync.auth import Scope

STEPS_SHOWN = 12  # the latest steps up to the chosen version
VALUE_CHARS = 90  # longer values are cut (lists of orders, maps of affinities)
_META = ("id", "kind", "version")
CSS = """
.c360-tt table { border-collapse: collapse; font-size: 12px; width: 100%; }
.c360-tt td, .c360-tt th { padding: 1px 6px; text-align: left; vertical-align: top; }
.c360-tt tr.changed td { background: #fff3c4; }
.c360-tt th { color: #555; font-weight: 600; }
"""


def _short(value: Any) -> str:
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…"


def entity_html(entity: dict[str, Any] | None, changed: set[str], scope: Scope) -> str:
    """The entity's fields as a table, those of ``changed`` highlighted, as ``scope`` sees them."""
    if entity is None:
        return "<div class='c360-tt'><i>Not a customer yet at this version.</i></div>"
    rows = []
    for field in sorted(k for k in entity if k not in _META and scope.allows_field(k)):
        value = html.escape(_short(scope.shown(field, entity[field])))
        mark = " class='changed'" if field in changed else ""
        rows.append(f"<tr{mark}><th>{html.escape(field)}</th><td>{value}</td></tr>")
    return f"<div class='c360-tt'><table>{''.join(rows)}</table></div>"


def steps_html(history: pd.DataFrame, upto: int, scope: Scope) -> str:
    """The last :data:`STEPS_SHOWN` versions up to ``upto``: what event, when, what it changed."""
    shown = history[history["version"] <= upto].tail(STEPS_SHOWN)
    rows = ["<tr><th>version</th><th>event</th><th>event time</th><th>changed</th></tr>"]
    for r in shown.itertuples(index=False):
        fields = ", ".join(sorted(f for f in r.changes if scope.allows_field(f)))
        mark = " class='changed'" if r.version == upto else ""
        rows.append(f"<tr{mark}><td>{r.version}</td><td>{html.escape(r.stream)}</td>"
                    f"<td>{r.event_time:%Y-%m-%d %H:%M:%S}</td>"
                    f"<td>{html.escape(fields)}</td></tr>")
    return f"<div class='c360-tt'><table>{''.join(rows)}</table></div>"


class HistoryView(pn.viewable.Viewer):
    """A version slider over one customer's history, and the customer as of that version."""

    def __init__(self, history: History, scope: Scope, **params: Any) -> None:
        super().__init__(**params)
        self.history, self.scope = history, scope
        self.customer_id: str | None = None
        self._versions = pd.DataFrame()
        self.slider = pn.widgets.IntSlider(label="Version", start=0, end=1, value=0,
                                           css_classes=["c360-history-slider"], width=420,
                                           disabled=True)
        self.slider.param.watch(lambda e: self._show(e.new), "value")
        self.at = pn.pane.HTML("<i>No customer open.</i>", css_classes=["c360-history-at"],
                               sizing_mode="stretch_width")
        self.entity = pn.pane.HTML("", stylesheets=[CSS], css_classes=["c360-history-entity"],
                                   sizing_mode="stretch_width")
        self.steps = pn.pane.HTML("", stylesheets=[CSS], css_classes=["c360-history-steps"],
                                  sizing_mode="stretch_width")
        self._layout = pn.Column(self.slider, self.at,
                                 pn.Row(self.entity, self.steps, sizing_mode="stretch_width"),
                                 sizing_mode="stretch_width")

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout

    def open(self, customer_id: str | None) -> None:
        """Show ``customer_id`` at its latest version (None: nobody)."""
        self.customer_id = customer_id
        self.refresh(follow=True)

    def follow(self, customer_id: str) -> None:
        """The Customer 360 view's customer changed version (or is newly shown, in scope)."""
        if customer_id != self.customer_id:
            self.open(customer_id)
        else:
            self.refresh()

    def refresh(self, follow: bool = False) -> None:
        """Take in versions that arrived since; the slider follows them when it was at the
        latest (or ``follow``), else it stays where the user put it."""
        eid = self.customer_id
        versions = self.history.history(eid) if eid is not None else pd.DataFrame()
        latest = int(versions["version"].iloc[-1]) if len(versions) else 0
        at_end = self.slider.value == self.slider.end
        self._versions = versions
        self.slider.disabled = latest == 0
        self.slider.end = max(latest, 1)
        if follow or at_end:
            if self.slider.value == latest:
                self._show(latest)
            else:
                self.slider.value = latest  # redraws through the watcher
        else:
            self._show(int(self.slider.value or 0))

    def _show(self, version: int) -> None:
        eid, versions = self.customer_id, self._versions
        if eid is None or not len(versions):
            self.at.object = "<i>No history for this customer.</i>" if eid else (
                "<i>No customer open.</i>")
            self.entity.object = self.steps.object = ""
            return
        total = int(versions["version"].iloc[-1])
        if version <= 0:
            self.at.object = f"Version 0 of {total}: before the first event"
            self.entity.object = entity_html(None, set(), self.scope)
            self.steps.object = ""
            return
        row = versions[versions["version"] == version].iloc[0]
        self.at.object = html.escape(
            f"Version {version} of {total}: {row['stream']} {row['event_id']} at "
            f"{row['event_time']:%Y-%m-%d %H:%M:%S} (known at {row['known_at']:%H:%M:%S})")
        self.entity.object = entity_html(self.history.as_of(eid, version=version),
                                         set(row["changes"]), self.scope)
        self.steps.object = steps_html(versions, version, self.scope)
