"""Customer finder: search by name, email or id, filter by segment, sort by value or risk.

The list is the top N of the feed's customer table (refreshed once a second for all
sessions), filtered per session and patched into the table. Without the PII scope the
model's PII fields (names, emails) are redacted and cannot be searched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import panel as pn

from c360.sync.auth import REDACTED, Scope
from dashboards.feed import Feed
from dashboards.live import PANEL_STYLE
from dashboards.tables import PatchedTable
from dashboards.text import readable, title

TOP_N = 50
# Entity fields as the model declares them (tests/test_model_downstream.py checks them);
# "id" is the entity's id. Column titles and cell formats are the model's (dashboards.text).
SORT_FIELDS = ("lifetime_value", "churn_risk")
SORTS = {title(f): f for f in SORT_FIELDS}
ALL = "(all segments)"
COLUMNS = ["id", "name", "email", "segments", "loyalty_tier", "lifetime_value", "churn_risk"]
SEARCHED = ("name", "email")  # besides the id; only by a token that sees them unredacted


def find(table: pd.DataFrame, scope: Scope, text: str = "", segment: str = "",
         sort: str = "lifetime_value", n: int = TOP_N) -> pd.DataFrame:
    """The top ``n`` customers of ``table`` matching the search, as ``scope`` may see them."""
    df = table
    if scope.entities != "*":  # a scope limited to ids or a segment sees only those
        df = df[[scope.allows_entity(i, {"segments": s.split(", ")})
                 for i, s in zip(df["id"], df["segments"], strict=True)]]
    if segment and scope.allows_field("segments"):
        df = df[df["segments"].str.split(", ").map(lambda segs: segment in segs)]
    text = text.strip().lower()
    if text:
        hit = df["id"].str.lower().str.contains(text, regex=False)
        for column in SEARCHED:  # searching by a field one may not see would reveal it
            if scope.allows_field(column) and not scope.redacts(column):
                hit |= df[column].str.lower().str.contains(text, regex=False)
        df = df[hit]
    if scope.allows_field(sort):  # ordering by a hidden field would reveal it
        df = df.sort_values([sort, "id"], ascending=[False, True]).head(n)
    else:
        df = df.sort_values("id").head(n)
    df = df[COLUMNS].copy()
    for column in COLUMNS:
        if scope.redacts(column):
            df[column] = REDACTED
    for column in COLUMNS:  # a scope limited to some fields shows the others empty
        if not scope.allows_field(column):
            df[column] = ""
    return df


def display_row(row: tuple[Any, ...]) -> tuple[str, ...]:
    """A row of :func:`find` as text, each cell as :func:`dashboards.text.readable` reads its
    field (money as money, risk with two decimals); "" stays: a field outside the scope."""
    return tuple("" if v == "" else readable(c, v) for c, v in zip(COLUMNS, row, strict=True))


class FinderPage(pn.viewable.Viewer):
    """Search box, segment and sort pickers, and the live top-N table."""

    def __init__(self, feed: Feed, scope: Scope, on_open: Callable[[str], None],
                 **params: Any) -> None:
        super().__init__(**params)
        self.feed, self.scope, self._on_open = feed, scope, on_open
        self._last: tuple[Any, ...] = ()
        placeholder = "name, email or id" if scope.pii else "customer id (no PII scope)"
        self.search = pn.widgets.TextInput(label="Search", placeholder=placeholder,
                                           css_classes=["c360-search"], width=320)
        self.segment = pn.widgets.Select(label="Segment", options=[ALL], value=ALL, width=200,
                                         css_classes=["c360-segment"])
        self.sort = pn.widgets.RadioButtonGroup(label="Sort by", options=list(SORTS),
                                                value=next(iter(SORTS)), color="primary",
                                                css_classes=["c360-sort"], align="end")
        self.table = PatchedTable(COLUMNS, height=TOP_N * 30 + 40,
                                  css_class="c360-finder")
        self.table.widget.on_click(self._clicked)
        for w in (self.search, self.segment, self.sort):
            w.param.watch(lambda _: self.refresh(force=True), "value")
        self.count = pn.pane.Markdown("", css_classes=["c360-finder-count"])
        self._layout = pn.Column(
            pn.Row(self.search, self.segment, self.sort),
            self.count,
            pn.pane.Markdown("*Click a row to open the customer's 360 view.*"),
            self.table.widget, styles=PANEL_STYLE, sizing_mode="stretch_width")
        self.refresh()

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout

    def refresh(self, force: bool = False) -> None:
        snap = self.feed.snapshot
        key = (snap.at, self.search.value, self.segment.value, self.sort.value)
        if key == self._last and not force:
            return
        self._last = key
        options = [ALL, *snap.segments]
        if self.segment.options != options:
            self.segment.options = options
        segment = "" if self.segment.value == ALL else self.segment.value
        text = self.search.value or ""  # a TextInput's value is typed str | None
        df = find(snap.table, self.scope, text, segment, SORTS[self.sort.value])
        self.table.update([display_row(row) for row in df.itertuples(index=False, name=None)])
        self.count.object = f"{len(df)} shown of {snap.customers:,} customers"

    def _clicked(self, event: Any) -> None:
        rows = self.table.rows
        if 0 <= event.row < len(rows):
            self._on_open(rows[event.row][0])
