"""Customer 360 view: one customer's whole entity, live, with actions back to it.

A periodic callback (every 100 ms) looks at the entity's version and redraws only when
it moved, so a view redraws at most ten times a second however fast events arrive. A
redraw touches only what changed: number widgets get a new ``value``, tables get cell
patches and appended rows (:class:`~dashboards.tables.PatchedTable`), HTML cards are
re-rendered only when one of their own fields changed, and changed values flash.

Commands go the sync/command path: :meth:`c360.sync.LocalReplica.command` writes a
``Command`` event to the commands topic and waits until the dataflow applied it.
"""

from __future__ import annotations

import asyncio
import html
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import holoviews as hv
import pandas as pd
import panel as pn

from c360.config import Settings
from c360.errors import C360Error, CommandError, Forbidden, NotFound
from c360.models.retail import RETAIL
from c360.store.memory import EntityStore
from c360.sync.auth import Scope
from c360.sync.local import LocalReplica
from dashboards.access import redact
from dashboards.history import HistoryView
from dashboards.live import ACCENT, PANEL_STYLE, _clock_ticks, _heading
from dashboards.tables import PatchedTable
from dashboards.text import (
    CURRENCY,
    Names,
    coordinates,
    lines,
    money,
    named,
    place,
    readable,
    title,
    when,
)

PERIOD_MS = 100  # at most ten redraws per second per view
STOCK_EVERY_S = 1.0  # how often the wishlist's stock is looked up between customer changes
STRETCH = "stretch_width"
# Entity fields, as the model declares them (tests/test_model_downstream.py checks each
# list): which ones a page shows and in what order is the page's choice, not the model's.
KPI_FIELDS = ("lifetime_value", "spend_30d", "spend_7d", "orders_30d", "loyalty_points",
              "churn_risk")
# How a KPI's number reads, by its declared type (Number's format string).
KPI_FORMATS = {"money": CURRENCY + " {value:,.2f}", "int": "{value:,}", "float": "{value:.2f}",
               "share": "{value:.1%}"}
KPIS = {f: (title(f), KPI_FORMATS[RETAIL.field(f).type]) for f in KPI_FIELDS}
PROFILE = ("email", "phone", "gender", "birthdate", "address", "demographics",
           "psychographics", "tp_purchase_count", "tp_spend", "marketing_opt_out",
           "last_contacted_at", "last_contact_channel", "payment_count", "total_spent",
           "last_payment", "review_count", "avg_review_score", "last_review", "weather",
           "location", "social_sentiment", "last_social")
CARD_FIELDS = ("name", "loyalty_tier", "segments", "version", "last_seen")
OFFER_FIELDS = ("churn_risk", "decisions", "offers_sent")
CHANNELS = ["email", "phone", "sms", "in store"]
UTC = "(UTC)"
# Table columns: (key, title). Keys are stable (tests and CSS use them), titles are read.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "orders": [("order_id", "Order"), ("date", f"Placed {UTC}"), ("status", "Status"),
               ("total", "Total"), ("lines", "Items")],
    "wishlist": [("product", "Product"), ("stock", "In stock"), ("status", "Availability")],
    "returns": [("order_id", "Order"), ("product", "Product"), ("reason", "Reason"),
                ("status", "Status"), ("at", f"Requested {UTC}")],
    "searches": [("query", "Search"), ("results", "Results"), ("at", f"Time {UTC}")],
    "views": [("product", "Product"), ("at", f"Time {UTC}")],
    "locations": [("place", "Place"), ("at", f"Time {UTC}"), ("coordinates", "Coordinates")],
    "notes": [("text", "Note"), ("by", "By"), ("at", f"Time {UTC}")],
    "fields": [("field", "Field"), ("value", "Value")],
}
HEIGHTS = {"orders": 250, "wishlist": 160, "returns": 160, "searches": 200, "views": 200,
           "locations": 200, "notes": 160, "fields": 400}

CSS = f"""
.c360-c360 {{ font-family: system-ui, sans-serif; color: #0f172a; }}
.c360-c360 .c360-name {{ font-size: 1.4em; font-weight: 600; }}
.c360-c360 .c360-badge {{ background: {ACCENT}; color: white; border-radius: 999px;
  padding: 1px 9px; font-size: 0.8em; margin-left: 6px; }}
.c360-c360 dl {{ display: grid; grid-template-columns: max-content 1fr; gap: 3px 14px;
  margin: 0; }}
.c360-c360 dt {{ color: #475569; }}
.c360-c360 dd {{ margin: 0; overflow-wrap: anywhere; }}
.c360-flash {{ animation: c360-flash 1.5s ease-out; border-radius: 3px; }}
@keyframes c360-flash {{ from {{ background: #fde68a; }} to {{ background: transparent; }} }}
"""

# Keyed by the store itself (a store hashes by identity), not by id(store), which a later
# store can reuse once this one is gone. Not weak: a replica holds its store, so a weak key
# would never be dropped anyway; there is one live store per process in practice.
_replicas: dict[EntityStore, LocalReplica] = {}
_replica_lock = threading.Lock()


def replica_for(store: EntityStore, settings: Settings | None) -> LocalReplica:
    """One command replica per store and process (each holds a store subscription)."""
    with _replica_lock:
        r = _replicas.get(store)
        if r is None:
            r = _replicas[store] = LocalReplica(store, settings)
        return r


Stock = Callable[[Mapping[str, Any]], "int | None"]  # an offer's units left (None: no item)


def _offers(entity: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [d for d in entity.get("decisions") or () if "offer" in str(d.get("action", ""))]


def next_best_offer(entity: Mapping[str, Any], stock: Stock | None = None
                    ) -> dict[str, Any] | None:
    """The newest offer decision (decisions are kept newest first) whose item, if it has
    one, is in stock: an offer for an item sold out since is withdrawn."""
    for d in _offers(entity):
        left = None if stock is None else stock(d)
        if left is None or left > 0:
            return d
    return None


def offer_item(decision: Mapping[str, Any]) -> tuple[str | None, str]:
    """(store id or None, product id) an offer is about, from its key: ``prod-1`` (wishlist,
    rain gear) or ``store-x:prod-1`` (pick up in that store); ("", "") for none."""
    store, _, product = str(decision.get("key") or "").rpartition(":")
    return (store or None), product


def _dl(entity: Mapping[str, Any], fields: tuple[str, ...], changed: set[str],
        names: Names = str) -> str:
    rows = []
    for f in fields:
        if f not in entity:
            continue
        cls = ' class="c360-flash"' if f in changed else ""
        rows.append(f'<dt>{html.escape(title(f))}</dt><dd data-field="{html.escape(f)}"{cls}>'
                    f"{html.escape(readable(f, entity[f], names))}</dd>")
    return '<div class="c360-c360"><dl>' + "".join(rows) + "</dl></div>"


def card_html(entity: Mapping[str, Any], changed: set[str]) -> str:
    flash = {f: ' class="c360-flash"' if f in changed else "" for f in CARD_FIELDS}
    esc = html.escape
    tier = entity.get("loyalty_tier")
    badges = "".join(f'<span class="c360-badge">{esc(str(s))}</span>'
                     for s in ([tier] if tier else []) + list(entity.get("segments") or ()))
    return (f'<div class="c360-c360" data-customer="{esc(entity["id"])}">'
            f'<div class="c360-name"><span{flash["name"]} id="c360-name">'
            f'{esc(str(entity.get("name", "")))}</span>{badges}</div>'
            f'<div>id <code class="c360-id">{esc(entity["id"])}</code> · version '
            f'<b class="c360-v" id="c360-v">{entity["version"]}</b> · last seen '
            f'<span{flash["last_seen"]}>{esc(when(entity.get("last_seen")))}</span>'
            "</div></div>")


def offer_html(entity: Mapping[str, Any], changed: set[str], stock: Stock | None = None,
               names: Names = str) -> str:
    esc = html.escape
    risk = entity.get("churn_risk")
    churn = [d for d in entity.get("decisions") or () if d.get("rule") == "churn_risk"]
    why = (f"{esc(churn[0]['reason'])} (fields: "
           f"{esc(', '.join(title(f).lower() for f in churn[0]['fields']))})"
           if churn else "inputs: last order, orders in 30 days, social sentiment")
    flash = ' class="c360-flash"' if "churn_risk" in changed else ""
    parts = [f'<div class="c360-c360"><p><b>Churn risk</b> <span{flash} class="c360-churn">'
             f"{'' if risk is None else f'{risk:.2f}'}</span> — {why}</p>"]
    offer = next_best_offer(entity, stock)
    flash = ' class="c360-flash"' if "decisions" in changed else ""
    if offer:
        parts.append(f'<p><b>Next-best offer</b> <span{flash} class="c360-offer">'
                     f"<code>{esc(offer['action'])}</code></span>: "
                     f"{esc(named(str(offer['reason']), names))} ({esc(when(offer.get('at')))})"
                     f"<br><small>because of "
                     f"{esc(', '.join(title(f).lower() for f in offer.get('fields', [])))}"
                     "</small></p>")
    else:
        parts.append('<p><b>Next-best offer</b> <i class="c360-offer-none">none</i></p>')
    newest = next(iter(_offers(entity)), None)
    if newest is not None and newest is not offer:  # the newest was withdrawn: say why
        _, product = offer_item(newest)
        parts.append(f'<p class="c360-offer-withdrawn"><small>Withdrawn: '
                     f"<code>{esc(newest['action'])}</code> — {esc(names(product))} is out "
                     "of stock</small></p>")
    sent = entity.get("offers_sent") or ()
    if sent:
        flash = ' class="c360-flash"' if "offers_sent" in changed else ""
        parts.append(f'<p><span{flash} class="c360-offers-sent">{len(sent)} offer(s) sent'
                     f", last <code>{esc(sent[0]['action'])}</code> by "
                     f"{esc(str(sent[0]['by']))} ({esc(when(sent[0].get('at')))})</span></p>")
    return "".join(parts) + "</div>"


def _items(items: Any) -> list[Mapping[str, Any]]:
    return [i for i in items or () if isinstance(i, Mapping)]


def _at(t: Any) -> str:
    return when(t, zone=False)


class CustomerView(pn.viewable.Viewer):
    """The 360 view of one customer, as ``scope`` may see it."""

    def __init__(self, store: EntityStore, scope: Scope, user: str = "",
                 settings: Settings | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.store, self.scope, self.user, self.settings = store, scope, user, settings
        self.customer_id: str | None = None
        self.redraws = 0
        self._version = -1
        self._shown: dict[str, Any] = {}
        self._stock_checked = 0.0
        self._names: dict[str, str] = {}  # product id -> name (names do not change)
        self._offer_shown = ""
        self._sentiment_at: pd.Timestamp | None = None
        self.picker = pn.widgets.TextInput(label="Customer id", placeholder="cust-00042",
                                           css_classes=["c360-customer-id"], width=220)
        self.picker.param.watch(lambda e: self.open(e.new), "value")
        self.card = pn.pane.HTML("<i>Pick a customer in the finder, or type an id.</i>",
                                 stylesheets=[CSS], css_classes=["c360-card360"],
                                 sizing_mode=STRETCH)
        self.kpis = {f: pn.indicators.Number(
            label=label, value=0, format=fmt, default_color=ACCENT, font_size="22pt",
            title_size="10pt", css_classes=[f"c360-kpi-{f}"], sizing_mode=STRETCH,
            styles={**PANEL_STYLE, "padding": "2px 10px"}) for f, (label, fmt) in KPIS.items()}
        self.profile = pn.pane.HTML("", stylesheets=[CSS], css_classes=["c360-profile"],
                                    sizing_mode=STRETCH)
        self.offer = pn.pane.HTML("", stylesheets=[CSS], css_classes=["c360-offer-box"],
                                  sizing_mode=STRETCH)
        self.tables = {
            name: PatchedTable([k for k, _ in cols], titles=dict(cols), height=HEIGHTS[name],
                               css_class=f"c360-{name}")
            for name, cols in COLUMNS.items()}
        self.sentiment = hv.streams.Buffer(
            pd.DataFrame({"time": pd.Series(dtype="datetime64[ns]"),
                          "sentiment": pd.Series(dtype="float64")}), length=200, index=False)
        ticks = _clock_ticks()

        def trend(data: pd.DataFrame) -> hv.Overlay:
            # Points too: the chart starts with one (the current value), which a line alone
            # would not draw. The time is the event time of the post that moved it.
            return (hv.Curve(data, "time", "sentiment").opts(color=ACCENT)
                    * hv.Scatter(data, "time", "sentiment").opts(color=ACCENT, size=5)).opts(
                responsive=True, height=160, xformatter=ticks, ylim=(-1, 1), xlabel="",
                ylabel="sentiment", show_grid=True)

        trend_map = hv.DynamicMap(trend, streams=[self.sentiment])
        self.result = pn.pane.Alert("", alert_type="light", visible=False,
                                    css_classes=["c360-command-result"], sizing_mode=STRETCH)
        history = getattr(store, "history", None)  # a c360.History's store: the time slider
        self.history_view = HistoryView(history, scope) if history is not None else None
        self._layout = pn.Column(
            pn.Row(self.picker, styles=PANEL_STYLE, sizing_mode=STRETCH),
            pn.Column(self.card, styles=PANEL_STYLE, sizing_mode=STRETCH, margin=(5, 8)),
            pn.Row(*self.kpis.values(), sizing_mode=STRETCH),
            pn.Row(self._box("Churn risk and next-best offer", self.offer, self._commands()),
                   self._box("Profile, payments, reviews, location, third party",
                             self.profile),
                   sizing_mode=STRETCH),
            pn.Row(self._box("Orders (with lines)", self.tables["orders"].widget),
                   self._box("Wishlist and stock", self.tables["wishlist"].widget,
                             _heading("Returns"), self.tables["returns"].widget),
                   sizing_mode=STRETCH),
            pn.Row(self._box("Recent searches", self.tables["searches"].widget),
                   self._box("Recent views", self.tables["views"].widget),
                   self._box("Location track", self.tables["locations"].widget),
                   sizing_mode=STRETCH),
            pn.Row(self._box("Social sentiment", pn.pane.HoloViews(trend_map, height=170,
                                                                   sizing_mode=STRETCH)),
                   self._box("Notes", self.tables["notes"].widget), sizing_mode=STRETCH),
            pn.Card(self.tables["fields"].widget, title="All fields", collapsed=True,
                    sizing_mode=STRETCH),
            *([pn.Card(self.history_view, title="History: as of any version", collapsed=True,
                       sizing_mode=STRETCH)] if self.history_view is not None else []),
            sizing_mode=STRETCH)

    @staticmethod
    def _box(title: str, *items: Any) -> pn.Column:
        return pn.Column(_heading(title), *items, styles=PANEL_STYLE, sizing_mode=STRETCH,
                         margin=(5, 8))

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout

    # -- commands --------------------------------------------------------------------------
    def _commands(self) -> pn.Column:
        self.points = pn.widgets.IntInput(label="Points", value=100, start=1, width=110)
        self.note = pn.widgets.TextInput(label="Note", placeholder="called about the return",
                                         css_classes=["c360-note-text"], width=260)
        self.channel = pn.widgets.Select(label="Channel", options=CHANNELS, width=120)
        buttons = {
            "grant_points": pn.widgets.Button(label="Grant points", color="primary",
                                              css_classes=["c360-cmd-grant"], align="end"),
            "add_note": pn.widgets.Button(label="Add note", color="primary",
                                          css_classes=["c360-cmd-note"], align="end"),
            "mark_contacted": pn.widgets.Button(label="Mark contacted", color="primary",
                                                css_classes=["c360-cmd-contacted"],
                                                align="end"),
            "send_offer": pn.widgets.Button(label="Send the offer", color="success",
                                            css_classes=["c360-cmd-offer"], align="end"),
        }
        for name, b in buttons.items():
            allowed = self.scope.allows_command(name)
            b.disabled = not allowed
            if not allowed:
                b.description = "not allowed by your scope"
            b.on_click(self._clicker(name))
        self.buttons = buttons
        return pn.Column(
            pn.Row(self.points, buttons["grant_points"]),
            pn.Row(self.note, buttons["add_note"]),
            pn.Row(self.channel, buttons["mark_contacted"], buttons["send_offer"]),
            self.result, sizing_mode=STRETCH)

    def _clicker(self, name: str) -> Callable[[Any], Awaitable[None]]:
        # A coroutine function (not a lambda returning a coroutine): Panel awaits it on the
        # session's loop, so the page stays live while the command waits for the dataflow.
        async def click(_: Any) -> None:
            await self._run_command(name)
        return click

    def command_args(self, name: str) -> dict[str, Any]:
        if name == "grant_points":
            return {"points": int(self.points.value or 0), "reason": "dashboard"}
        if name == "add_note":
            return {"text": self.note.value_input or self.note.value}
        if name == "mark_contacted":
            return {"channel": self.channel.value}
        offer = next_best_offer(self.store.get(self.customer_id or "") or {}, self._stock)
        if offer is None:
            raise CommandError("this customer has no next-best offer to send (an offer for "
                               "an item out of stock is withdrawn)")
        return {"action": offer["action"], "reason": offer["reason"]}

    async def _run_command(self, name: str) -> None:
        self._say(f"sending {name}…", "secondary")
        try:
            if not self.scope.allows_command(name):
                raise Forbidden(f"{name} is not allowed by your scope")
            if not self.customer_id or self.customer_id not in self.store:
                raise NotFound("no customer is open")
            if self.settings is None:
                raise C360Error("this server takes no commands (no Kafka)")
            args = self.command_args(name)
            replica = replica_for(self.store, self.settings)
            version = await asyncio.to_thread(replica.command, self.customer_id, name,
                                              issued_by=self.scope.name or self.user, **args)
        except C360Error as exc:
            self._say(f"{name} failed: {exc}", "danger")
            return
        self._say(f"{name} applied to {self.customer_id} at version {version}", "success")
        self.refresh()

    def _say(self, text: str, kind: Literal["secondary", "danger", "success"]) -> None:
        self.result.object = text
        self.result.alert_type = kind
        self.result.visible = True

    # -- products -------------------------------------------------------------------------
    def name_of(self, product_id: str) -> str:
        """The product's name (product entities have them), or its id when unknown."""
        name = self._names.get(product_id)
        if name is None:
            name = (self.store.get(product_id) or {}).get("name")
            if not name:
                return product_id  # not in the store (yet): asked again next time
            self._names[product_id] = name = str(name)
        return name

    def _stock(self, decision: Mapping[str, Any]) -> int | None:
        """Units left of an offer's item: in its store for a pick-up, else in all; None
        when the offer is about no product."""
        store_id, product_id = offer_item(decision)
        p = self.store.get(product_id) if product_id else None
        if p is None or p.get("kind") != "product":
            return None
        if store_id:
            return int((p.get("stock") or {}).get(store_id, 0))
        stock = p.get("total_stock")
        return None if stock is None else int(stock)

    # -- the customer ----------------------------------------------------------------------
    def open(self, customer_id: str | None) -> None:
        customer_id = (customer_id or "").strip() or None
        if customer_id == self.customer_id:
            return
        self.customer_id, self._version, self._shown = customer_id, -1, {}
        if self.picker.value != (customer_id or ""):
            self.picker.value = customer_id or ""
        self.result.visible = False
        if customer_id is None:
            self._clear("<i>Pick a customer in the finder, or type an id.</i>")
        self.refresh()

    def _clear(self, message: str) -> None:
        """Show ``message`` and nothing of the customer shown before (their PII included)."""
        self.card.object = message
        for w in self.kpis.values():
            if w.value != 0:
                w.value = 0
        self.profile.object = self.offer.object = self._offer_shown = ""
        self.buttons["send_offer"].disabled = True
        for t in self.tables.values():
            t.update([])
        self.sentiment.clear()
        self._sentiment_at = None
        self._shown = {}
        if self.history_view is not None:
            self.history_view.open(None)

    def refresh(self) -> bool:
        """Redraw what changed since the last look; False when nothing did."""
        eid = self.customer_id
        if eid is None:
            return False
        raw = self.store.get(eid)
        if raw is None or raw.get("kind") != "customer" or not self.scope.allows_entity(eid, raw):
            if self._version != 0:
                # The same words whether it does not exist or is outside the scope: the
                # answer must not tell which.
                self._version = 0
                self._clear(f'<div class="c360-c360 c360-unknown">No customer with id '
                            f"<code>{html.escape(eid)}</code>.</div>")
            return False
        if raw["version"] == self._version:
            # Stock lives in the product entities: the wishlist and the offer follow it
            # without the customer changing (sent only when something differs).
            now = time.monotonic()
            if now - self._stock_checked >= STOCK_EVERY_S:
                self._stock_checked = now
                self.tables["wishlist"].update(
                    [self._wish(pid) for pid in self._shown.get("wishlist") or ()])
                self._show_offer(self._shown, set())
            return False
        model = getattr(self.store, "model", None)  # a replica's store may have none
        entity = redact(raw, self.scope, None if model is None else model.pii_fields)
        old = self._shown
        changed = {k for k, v in entity.items() if old and old.get(k) != v}
        first = not old
        self._draw(entity, changed, first)
        if self.history_view is not None:
            self.history_view.follow(eid)
        self._shown, self._version = entity, raw["version"]
        self.redraws += 1
        return True

    def _show_offer(self, entity: Mapping[str, Any], changed: set[str]) -> None:
        text = offer_html(entity, changed, self._stock, self.name_of)
        if text != self._offer_shown:
            self._offer_shown = self.offer.object = text
            # Nothing to send (none, or withdrawn): the button says so before a click does.
            button = self.buttons["send_offer"]
            disabled = (not self.scope.allows_command("send_offer")
                        or next_best_offer(entity, self._stock) is None)
            if button.disabled != disabled:
                button.disabled = disabled

    def _draw(self, e: dict[str, Any], changed: set[str], first: bool) -> None:
        def moved(*fields: str) -> bool:
            return first or any(f in changed for f in fields)

        names = self.name_of
        self.card.object = card_html(e, changed)
        for f, w in self.kpis.items():
            v = e.get(f)
            v = 0 if v is None else v
            if w.value != v:
                w.value = v
        if moved(*PROFILE):
            self.profile.object = _dl(e, PROFILE, changed, names)
        if moved(*OFFER_FIELDS):
            self._show_offer(e, changed)
        t = self.tables
        if moved("recent_orders"):
            t["orders"].update([
                (o.get("order_id", ""), _at(o.get("order_date")), o.get("status", ""),
                 money(o.get("total_amount")), lines(o.get("lines") or (), names))
                for o in _items(e.get("recent_orders"))])
        if moved("wishlist"):
            t["wishlist"].update([self._wish(pid) for pid in e.get("wishlist") or ()])
        if moved("recent_returns"):
            t["returns"].update([
                (r.get("order_id", ""), names(str(r.get("product_id", ""))),
                 r.get("reason", ""), r.get("status", ""), _at(r.get("at")))
                for r in _items(e.get("recent_returns"))])
        if moved("recent_searches"):
            t["searches"].update([
                (str(r.get("query") or ""), "" if r.get("results") is None else
                 f"{r['results']:,}", _at(r.get("at")))
                for r in _items(e.get("recent_searches"))])
        if moved("recent_views"):
            t["views"].update([(names(str(r.get("product_id", ""))), _at(r.get("at")))
                               for r in _items(e.get("recent_views"))])
        if moved("recent_locations"):
            t["locations"].update([
                (place(r["latitude"], r["longitude"], r.get("city")), _at(r.get("at")),
                 coordinates(r["latitude"], r["longitude"]))
                for r in _items(e.get("recent_locations")) if "latitude" in r])
        if moved("notes"):
            t["notes"].update([(str(r.get("text", "")), str(r.get("by", "")), _at(r.get("at")))
                               for r in _items(e.get("notes"))])
        if moved("social_sentiment") and e.get("social_sentiment") is not None:
            self._plot_sentiment(e)
        t["fields"].update([(title(k), readable(k, v, names)) for k, v in sorted(e.items())
                            if k not in ("kind",)])

    def _plot_sentiment(self, e: Mapping[str, Any]) -> None:
        # At the event time of the post that moved it (a swept decay: the last seen time).
        at = (e.get("last_social") or {}).get("at") or e.get("last_seen")
        if at is None:
            return
        stamp = pd.Timestamp(at)
        stamp = stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp
        if self._sentiment_at is not None and stamp <= self._sentiment_at:
            return  # a late post: the trend only moves forward
        self._sentiment_at = stamp
        self.sentiment.send(pd.DataFrame({"time": [stamp],
                                          "sentiment": [float(e["social_sentiment"])]}))

    def _wish(self, product_id: str) -> tuple[str, str, str]:
        # Products are entities of their own (keyed by product id): stock is live there.
        p = self.store.get(product_id) or {}
        stock = p.get("total_stock")
        status = "unknown" if stock is None else ("in stock" if stock > 0 else "out of stock")
        return (self.name_of(product_id), "" if stock is None else f"{stock:,}", status)
