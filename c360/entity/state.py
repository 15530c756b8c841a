"""Folding events into entities: one small function per stream.

Each fold takes the entity's current state and one event and returns the
field-level changes (new values of top-level fields), or ``None`` when the event
changes nothing. Values put into changes are never mutated afterwards (lists
are rebuilt, not appended to), so a change can be handed to other threads as is.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from c360.entity.windows import LIMITS  # how much detail each recent list keeps: declared there
from c360.model import commands
from c360.model import events as ev

Changes = dict[str, Any]

RECENT = 10  # detail kept per recent list (orders, searches, views, ...)
WISHLIST_MAX = 50
CART_MAX = 20
SEEN_EVENT_IDS = 64  # duplicates are recognised within this many recent events per entity
KNOWN_ORDERS = 256  # order ids remembered per customer to count distinct orders


class EntityState:
    """The dataflow's private state of one entity: public fields plus bookkeeping.

    Recovery snapshots write it as c360.entity.codec lays it out: a slot added here is
    written there too, in a new format version.
    """

    __slots__ = ("fields", "version", "seen", "orders", "review_sum", "cart_marks", "windows",
                 "fired", "aux")

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.version = 0
        # Insertion-ordered set of recent event ids; with an allowed lateness, each with its
        # source partition and event time, to forget it once no duplicate can be applied
        # (c360.entity.derive.EntityHooks._remember).
        self.seen: dict[str, tuple[int, float] | None] = {}
        self.orders: dict[str, str] = {}  # order id -> status
        self.review_sum = 0
        # product id -> (time, ADDED or LEFT) of its latest cart action (add, remove, bought)
        self.cart_marks: dict[str, tuple[datetime, int]] = {}
        self.windows: Any = None  # c360.entity.windows.Windows, when windows of relevance are on
        self.fired: dict[str, float] | None = None  # decision key -> event time (cool-downs)
        # The declared folds' bookkeeping (c360.entity.fold): field -> its buckets, times...
        self.aux: dict[str, Any] | None = None

    def is_duplicate(self, event_id: str) -> bool:
        """Remember ``event_id``; True when it was already seen recently."""
        seen = self.seen
        if event_id in seen:
            return True
        seen[event_id] = None
        if len(seen) > SEEN_EVENT_IDS:
            del seen[next(iter(seen))]
        return False


def _push(items: list | None, item: dict, limit: int = RECENT, at: str = "at",
          tie: str = "") -> list:
    """A new list with ``item`` in place, newest first by ``item[at]`` (then ``item[tie]``,
    highest first), at most ``limit`` entries: the latest items of the set of events, in
    whatever order they were applied. (In order, the new item goes first: one compare.)"""
    if not items:
        return [item]
    first = items[0]
    if first[at] < item[at] or (first[at] == item[at] and (
            not tie or first[tie] <= item[tie])):  # in order: the usual case
        return [item, *items][:limit]
    key = (item[at], item[tie]) if tie else (item[at], "")
    i = 0
    for other in items:
        if (other[at], other[tie] if tie else "") <= key:
            break
        i += 1
    if i >= limit:
        return list(items[:limit]) if isinstance(items, list) else list(items)[:limit]
    return [*items[:i], item, *items[i:]][:limit]


def _later(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def _money(total: float, amount: float) -> float:
    # Amounts have cents; rounding each sum keeps totals exact and order-independent.
    return round(total + amount, 2)


def fold_customer_details(s: EntityState, e: ev.CustomerDetails) -> Changes | None:
    f = s.fields
    ch: Changes = {}
    for name in ("name", "email", "phone", "gender", "birthdate"):
        value = getattr(e, name)
        if value is not None and f.get(name) != value:
            ch[name] = value
    if e.address is not None:
        address = msgspec.structs.asdict(e.address)
        if f.get("address") != address:
            ch["address"] = address
    return ch or None


def fold_order(s: EntityState, e: ev.Order) -> Changes | None:
    f = s.fields
    known = s.orders.get(e.order_id)
    if known is not None:  # a status update of an order we already counted
        if known == e.status:
            return None
        s.orders[e.order_id] = e.status
        recent = [
            {**o, "status": e.status} if o["order_id"] == e.order_id else o
            # None once the window of relevance emptied the list (found by fuzzing)
            for o in f.get("recent_orders") or ()
        ]
        return {"recent_orders": recent}
    s.orders[e.order_id] = e.status
    if len(s.orders) > KNOWN_ORDERS:
        del s.orders[next(iter(s.orders))]
    summary = {
        "order_id": e.order_id,
        "order_date": e.order_date,
        "status": e.status,
        "total_amount": e.total_amount,
        "lines": [msgspec.structs.asdict(line) for line in e.lines],
    }
    ch = {
        "order_count": f.get("order_count", 0) + 1,
        "items_bought": f.get("items_bought", 0) + sum(line.quantity for line in e.lines),
        "orders_value": _money(f.get("orders_value", 0.0), e.total_amount),
        "last_order_at": _later(f.get("last_order_at"), e.order_date),
        "recent_orders": _push(f.get("recent_orders"), summary, LIMITS["recent_orders"],
                               "order_date", "order_id"),
    }
    cart = _mark_cart(s, [line.product_id for line in e.lines], e.order_date, LEFT)
    if cart is not None:
        ch["cart"] = cart
    return ch


def _newer(current: dict | None, item: dict, *keys: str) -> bool:
    """Whether ``item`` is later than ``current`` by ``keys`` (a time, then ties): the
    latest of the set of events wins, whatever order they were applied in."""
    return current is None or tuple(item[k] for k in keys) >= tuple(current[k] for k in keys)


def fold_payment(s: EntityState, e: ev.Payment) -> Changes:
    f = s.fields
    ch: Changes = {
        "total_spent": _money(f.get("total_spent", 0.0), e.amount),
        "payment_count": f.get("payment_count", 0) + 1,
    }
    last = {"order_id": e.order_id, "method": e.method, "amount": e.amount,
            "payment_date": e.payment_date}
    if _newer(f.get("last_payment"), last, "payment_date", "order_id", "method", "amount"):
        ch["last_payment"] = last
    return ch


def fold_wishlist(s: EntityState, e: ev.Wishlist) -> Changes | None:
    current = s.fields.get("wishlist", [])
    if e.action == "added":
        if e.product_id in current:
            return None
        return {"wishlist": [*current, e.product_id][-WISHLIST_MAX:]}
    if e.product_id not in current:
        return None
    return {"wishlist": [p for p in current if p != e.product_id]}


def fold_review(s: EntityState, e: ev.Review) -> Changes:
    f = s.fields
    count = f.get("review_count", 0) + 1
    s.review_sum += e.rating
    ch: Changes = {"review_count": count, "avg_review_score": s.review_sum / count}
    last = {"product_id": e.product_id, "order_id": e.order_id, "rating": e.rating,
            "text": e.text[:280], "at": e.event_time}
    if _newer(f.get("last_review"), last, "at", "order_id", "product_id", "rating", "text"):
        ch["last_review"] = last
    return ch


def fold_return(s: EntityState, e: ev.Return) -> Changes | None:
    f = s.fields
    recent = f.get("recent_returns") or []
    for r in recent:
        if r["return_id"] == e.return_id:  # a status update of a known return
            if r["status"] == e.status:
                return None
            return {"recent_returns": [{**x, "status": e.status}
                                       if x["return_id"] == e.return_id else x for x in recent]}
    item = {"return_id": e.return_id, "order_id": e.order_id, "product_id": e.product_id,
            "reason": e.reason, "status": e.status, "at": e.event_time}
    return {"return_count": f.get("return_count", 0) + 1,
            "recent_returns": _push(recent, item, LIMITS["recent_returns"], "at", "return_id")}


def fold_loyalty(s: EntityState, e: ev.Loyalty) -> Changes | None:
    ch: Changes = {}
    delta = e.points_earned - e.points_redeemed
    if delta:
        ch["loyalty_points"] = s.fields.get("loyalty_points", 0) + delta
    if e.tier:
        ch["loyalty_program_tier"] = e.tier
    return ch or None


def fold_search(s: EntityState, e: ev.Search) -> Changes | None:
    f = s.fields
    if e.event_type == "search":
        return {"search_count": f.get("search_count", 0) + 1,
                "recent_searches": _push(f.get("recent_searches"),
                                         {"query": e.query, "results": e.results,
                                          "at": e.event_time}, LIMITS["recent_searches"])}
    if e.event_type == "view":
        return {"recent_views": _push(f.get("recent_views"),
                                      {"product_id": e.product_id, "at": e.event_time},
                                      LIMITS["recent_views"], "at", "product_id")}
    action = ADDED if e.event_type == "add_to_cart" else LEFT
    cart = _mark_cart(s, [e.product_id], e.event_time, action)
    return None if cart is None else {"cart": cart}


LEFT, ADDED = 0, 1  # at equal times, leaving the cart wins


def _mark_cart(s: EntityState, products: list[str], t: datetime, action: int) -> list | None:
    """Record cart actions; the new cart, or None when it did not change.

    Adds and removes come from the search stream, purchases from the orders
    stream, and the two are read independently. Each product's latest action by
    event time decides whether it is in the cart, so the cart comes out the same
    in whichever order the streams were read.
    """
    marks = s.cart_marks
    for product in products:
        mark = (t, action)
        if product not in marks or marks[product] < mark:
            marks[product] = mark
    if len(marks) > CART_MAX * 3:  # forget the oldest actions
        for product, _ in sorted(marks.items(), key=lambda kv: kv[1])[: len(marks) - CART_MAX * 3]:
            del marks[product]
    cart = sorted(({"product_id": p, "added_at": m[0]} for p, m in marks.items() if m[1] == ADDED),
                  key=lambda c: (c["added_at"], c["product_id"]))[-CART_MAX:]
    return None if cart == s.fields.get("cart") else cart


def _older(current: dict | None, e: ev.Event) -> bool:
    """A late event must not replace a newer reading."""
    return current is not None and current["at"] > e.event_time


def fold_location(s: EntityState, e: ev.Location) -> Changes | None:
    if _older(s.fields.get("location"), e):
        return None
    return {"location": {"latitude": e.latitude, "longitude": e.longitude, "city": e.city,
                         "at": e.event_time}}


def fold_social(s: EntityState, e: ev.Social) -> Changes:
    f = s.fields
    # social_sentiment is not folded here: it is the windows' decayed mean (half-life 7 days,
    # c360.entity.windows.DECAYED), computed in one place. An exponential average here was
    # overwritten by it on every social event when windows are on, and depended on the
    # reading order when they are off; with windows off there is no social_sentiment.
    ch: Changes = {"social_count": f.get("social_count", 0) + 1}
    last = {"event_type": e.event_type, "details": e.details[:280], "sentiment": e.sentiment,
            "at": e.event_time}
    if _newer(f.get("last_social"), last, "at", "event_type", "details", "sentiment"):
        ch["last_social"] = last
    return ch


def fold_weather(s: EntityState, e: ev.Weather) -> Changes | None:
    if _older(s.fields.get("weather"), e):
        return None
    return {"weather": {"event_type": e.event_type, "temperature": e.temperature,
                        "condition": e.condition, "at": e.event_time}}


def fold_physical_event(s: EntityState, e: ev.PhysicalEvent) -> Changes:
    item = {"venue_event_id": e.venue_event_id, "kind": e.kind, "name": e.name,
            "venue": e.venue, "starts_at": e.starts_at, "distance_km": e.distance_km}
    return {"nearby_events": _push(s.fields.get("nearby_events"), item, LIMITS["nearby_events"],
                                   "starts_at", "venue_event_id")}


def fold_tp_purchase(s: EntityState, e: ev.ThirdPartyPurchase) -> Changes:
    f = s.fields
    return {"tp_purchase_count": f.get("tp_purchase_count", 0) + 1,
            "tp_spend": _money(f.get("tp_spend", 0.0), e.amount)}


def fold_demographics(s: EntityState, e: ev.Demographics) -> Changes | None:
    new = {k: v for k, v in msgspec.structs.asdict(e).items()
           if k in ("age", "income", "education_level", "marketing_opt_in") and v is not None}
    merged = {**s.fields.get("demographics", {}), **new}
    return None if merged == s.fields.get("demographics") else {"demographics": merged}


def fold_psychographics(s: EntityState, e: ev.Psychographics) -> Changes | None:
    value = {"interests": e.interests, "values": e.values,
             "personality_traits": e.personality_traits}
    return None if value == s.fields.get("psychographics") else {"psychographics": value}


def fold_product(s: EntityState, e: ev.Product) -> Changes | None:
    f = s.fields
    ch = {k: getattr(e, k) for k in ("name", "category", "subcategory", "price", "discount",
                                      "brand", "gender", "age_group")}
    ch = {k: v for k, v in ch.items() if f.get(k) != v}
    return ch or None


def fold_inventory(s: EntityState, e: ev.Inventory) -> Changes | None:
    stock = {**s.fields.get("stock", {}), **{st.store_id: st.quantity for st in e.stock}}
    if stock == s.fields.get("stock"):
        return None
    return {"stock": stock, "total_stock": sum(stock.values())}


def fold_command(s: EntityState, e: ev.Command) -> Changes:
    # Bad names or args raise: the command then goes to the dead-letter topic with the reason.
    args = commands.parse_args(e.name, e.args)
    return commands.changes_of(s.fields, e.name, args, e.event_time, e.issued_by)


Fold = Callable[[EntityState, Any], "Changes | None"]

FOLDS: dict[str, Fold] = {
    "customer_details": fold_customer_details,
    "orders": fold_order,
    "payments": fold_payment,
    "wishlist": fold_wishlist,
    "reviews": fold_review,
    "returns": fold_return,
    "loyalty": fold_loyalty,
    "products": fold_product,
    "inventory": fold_inventory,
    "search": fold_search,
    "location": fold_location,
    "social": fold_social,
    "weather": fold_weather,
    "physical_events": fold_physical_event,
    "tp_purchases": fold_tp_purchase,
    "tp_demographics": fold_demographics,
    "tp_psychographics": fold_psychographics,
    "commands": fold_command,
}
