"""Business rules: small plain-Python functions of the entity, kept in a pipeline's rule book.

A rule gets the customer's fields (this event already applied), the fields this event
changed and the event, and returns a :class:`Decision` (via :func:`decide`) or None::

    pipeline = c360.Pipeline(settings)

    @pipeline.rule("big_basket", cooldown=timedelta(days=7), marketing=True, streams={"orders"})
    def big_basket(c, changes, event):
        if event.total_amount > 1000:
            return decide("thank_you_voucher", "an order over 1000", ["recent_orders"])

That is all it takes from a notebook: the rule runs on the next event of every customer
of that pipeline (``pipeline.rules.remove("big_basket")`` takes it away), and of no other
pipeline in the kernel. The engine fills in the rest of the decision (rule, customer,
event ids, event time), drops repeats of the same decision within the rule's cool-down
(in event time), skips marketing rules for customers who opted out, records the decision
in the entity's ``decisions`` and sends it to the ``<prefix>decisions`` topic.

A :class:`RuleBook` is the rules of one pipeline and the product index they read (its
:class:`ProductIndex`: stock per store, categories), which that pipeline's product
entities keep up to date. :meth:`RuleBook.builtin` is the built-in retail rules with an
empty index, fresh each time: every pipeline gets its own unless it is given one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import msgspec

from c360.model import events as ev

Fields = Mapping[str, Any]


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One explainable decision about one customer."""

    rule: str = ""
    action: str
    reason: str
    fields: list[str]  # the entity fields that triggered it
    event_ids: list[str] = []  # the events that triggered it (the current one first)
    at: datetime | None = None  # event time of the triggering event
    customer_id: str = ""
    key: str = ""  # what makes two decisions "the same" for dedupe (a product, a search...)
    marketing: bool = False

    def record(self) -> dict[str, Any]:
        """The decision as stored in the entity's ``decisions`` field."""
        return {"rule": self.rule, "action": self.action, "reason": self.reason,
                "fields": self.fields, "event_ids": self.event_ids, "at": self.at,
                "key": self.key}


def decide(action: str, reason: str, fields: Iterable[str], *, key: str = "",
           event_ids: Iterable[str] = ()) -> Decision:
    """What a rule returns: the action, why, and which fields (and other events) caused it."""
    return Decision(action=action, reason=reason, fields=list(fields), key=key,
                    event_ids=list(event_ids))


RuleFn = Callable[[Fields, Fields, ev.Event], "Decision | None"]


@dataclass(frozen=True)
class Rule:
    name: str
    fn: RuleFn
    cooldown: timedelta
    marketing: bool  # offers and nudges: never for customers who opted out
    streams: frozenset[str] | None  # evaluate only on events of these streams (None: all)
    when: frozenset[str] | None  # ... or only when one of these fields changed (None: always)


class RuleBook:
    """The rules one pipeline runs, and the product index (:attr:`products`) they read.

    Rules can be added and removed while the pipeline runs: they take effect from the next
    event. A book is not pickled into recovery snapshots (rules are code): a resumed
    pipeline runs the rules it is given.
    """

    def __init__(self, rules: Iterable[Rule] = (), products: ProductIndex | None = None
                 ) -> None:
        self._products = products if products is not None else ProductIndex()
        self._rules: dict[str, Rule] = {r.name: r for r in rules}
        # stream -> (rules that always run, rules that run when their fields change). The
        # fold's worker threads read it without a lock: a change replaces both dicts
        # (rules first), so a reader sees the old pair or the new one, never half of one.
        self._by_stream: dict[str, tuple[list[Rule], list[Rule]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def builtin(cls) -> RuleBook:
        """The built-in retail rules (see the module's end), with a fresh, empty product
        index."""
        book = cls()
        for name, fn, options, reads_products in _BUILTIN:
            book.add(name, partial(fn, products=book.products) if reads_products else fn,
                     **options)
        return book

    @property
    def products(self) -> ProductIndex:
        """Products and their stock, as this book's rules see them (a rule of your own
        reads it as ``book.products``)."""
        return self._products

    def add(self, name: str, fn: RuleFn, *, cooldown: timedelta = timedelta(days=1),
            marketing: bool = False, streams: Iterable[str] | None = None,
            when: Iterable[str] | None = None) -> Rule:
        """Add (or replace) a rule; it runs from the next event on.

        ``streams`` and ``when`` only make it cheaper: the rule runs for events of those
        streams, or that changed one of those fields (either one matching is enough).
        """
        r = Rule(name, fn, cooldown, marketing,
                 frozenset(streams) if streams is not None else None,
                 frozenset(when) if when is not None else None)
        with self._lock:
            self._rules = {**self._rules, name: r}
            self._by_stream = {}
        return r

    def remove(self, name: str) -> None:
        """Take a rule away (nothing happens if there is none of that name)."""
        with self._lock:
            self._rules = {k: v for k, v in self._rules.items() if k != name}
            self._by_stream = {}

    def rule(self, name: str, *, cooldown: timedelta = timedelta(days=1),
             marketing: bool = False, streams: Iterable[str] | None = None,
             when: Iterable[str] | None = None) -> Callable[[RuleFn], RuleFn]:
        """Decorator form of :meth:`add`."""

        def wrap(fn: RuleFn) -> RuleFn:
            self.add(name, fn, cooldown=cooldown, marketing=marketing, streams=streams,
                     when=when)
            return fn

        return wrap

    def __contains__(self, name: object) -> bool:
        return name in self._rules

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._rules))

    def __len__(self) -> int:
        return len(self._rules)

    def __getitem__(self, name: str) -> Rule:
        return self._rules[name]

    def __repr__(self) -> str:
        return f"RuleBook({sorted(self._rules)})"

    def for_stream(self, stream: str) -> tuple[list[Rule], list[Rule]]:
        """(rules that always run for ``stream``, rules that run when their fields change)."""
        cache = self._by_stream
        got = cache.get(stream)
        if got is None:
            rules = self._rules.values()
            always = [r for r in rules
                      if (r.streams is None and r.when is None)
                      or (r.streams is not None and stream in r.streams)]
            triggered = [r for r in rules if r not in always and r.when is not None]
            got = cache[stream] = (always, triggered)
        return got


def opted_out(c: Fields) -> bool:
    """No marketing for customers who said no (a command, or the third-party opt-in flag)."""
    if c.get("marketing_opt_out") is True:
        return True
    demo = c.get("demographics")
    if not demo:
        return False
    return demo.get("marketing_opt_in") is False


# -- the shop's catalogue, as the offer rules see it --------------------------------------------

@dataclass
class ProductInfo:
    category: str = ""
    subcategory: str = ""
    brand: str = ""
    stock: dict[str, int] = field(default_factory=dict)
    restocked_at: datetime | None = None  # event time it last came back from zero
    restock_event: str = ""


class ProductIndex:
    """Products and their stock as the offer rules see them, fed by the product entities of
    one pipeline (in this process: a cluster's processes each index their own products)."""

    def __init__(self) -> None:
        self.by_id: dict[str, ProductInfo] = {}
        self.restocks = 0  # grows at every "back in stock"
        self.last_restock: datetime | None = None  # event time of the latest one

    def observe(self, product_id: str, fields: Fields, changes: Fields,
                event: ev.Event) -> None:
        p = self.by_id.get(product_id)
        if p is None:
            p = self.by_id[product_id] = ProductInfo()
        if "category" in changes or "brand" in changes or "subcategory" in changes:
            p.category = fields.get("category", "")
            p.subcategory = fields.get("subcategory", "")
            p.brand = fields.get("brand", "")
        if "stock" in changes:
            before = sum(p.stock.values()) if p.stock else None
            p.stock = dict(changes["stock"])
            if before == 0 and sum(p.stock.values()) > 0:
                p.restocked_at = event.event_time
                p.restock_event = event.event_id
                self.restocks += 1
                if self.last_restock is None or event.event_time > self.last_restock:
                    self.last_restock = event.event_time

    def clear(self) -> None:
        self.by_id.clear()
        self.restocks = 0
        self.last_restock = None


# Rules that read the product index join another entity's state (a product, in a shard and a source
# partition of its own) as far as this process has folded it: the one part of a decision
# that event time does not order (docs/event-time.md). Every other rule reads only its
# customer, whose events are folded in an order that depends only on the topics' contents.
CATALOG_READERS = frozenset({"wishlist_back_in_stock", "rain_gear",
                             "near_store_with_viewed_item"})

# The shop's stores (the simulator's world; a real deployment would load its own).
STORES: dict[str, tuple[float, float]] = {
    "store-sp-paulista": (-23.5614, -46.6559),
    "store-sp-pinheiros": (-23.5670, -46.6920),
    "store-rj-copacabana": (-22.9711, -43.1822),
    "store-bh-savassi": (-19.9380, -43.9370),
    "store-cwb-batel": (-25.4420, -49.2890),
}
RAIN_GEAR = frozenset({"raincoats", "umbrellas"})
# Which nearby happenings match which interests.
EVENT_INTERESTS: dict[str, frozenset[str]] = {
    "concert": frozenset({"music"}),
    "sports": frozenset({"football", "running", "fitness", "yoga", "outdoors"}),
    "festival": frozenset({"cooking", "reading", "travel", "home decor", "fashion"}),
    "store_opening": frozenset({"fashion", "beauty", "technology"}),
}


def km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(math.sqrt(a))


# -- derived scores ------------------------------------------------------------------------------

CHURN_INPUTS = frozenset({"as_of_day", "last_order_at", "first_seen", "orders_30d", "orders_90d",
                          "social_sentiment", "returns_rate_90d"})


def churn_score(c: Fields) -> float:
    """0 (engaged) .. 1 (about to leave), from recency, trend and mood, in event time.

    Recency counts whole days (to the entity's ``as_of_day``), so the score only moves
    when a day passes or an input changes: it need not be recomputed on every event.
    """
    today = c.get("as_of_day")
    if today is None:
        return 0.0
    last_order = c.get("last_order_at")
    first = c.get("first_seen")
    if last_order is None:
        recency = 0.5 if first is not None and (today - first.date()).days > 30 else 0.0
    else:
        recency = min(1.0, (today - last_order.date()).days / 60)
    slowing = 1.0 if c.get("orders_90d", 0) > 0 and c.get("orders_30d", 0) == 0 else 0.0
    mood = max(0.0, -float(c.get("social_sentiment") or 0.0))
    returns = min(1.0, float(c.get("returns_rate_90d") or 0.0))
    return round(min(1.0, 0.5 * recency + 0.25 * slowing + 0.15 * mood + 0.1 * returns), 2)


# -- the built-in rules --------------------------------------------------------------------------

# (name, function, options of RuleBook.add, reads the product index): filled once at
# import by the decorator below; RuleBook.builtin() puts them in a book.
_BUILTIN: list[tuple[str, Callable[..., Decision | None], dict[str, Any], bool]] = []


def _builtin(name: str, **options: Any) -> Callable[[Callable[..., Decision | None]],
                                                    Callable[..., Decision | None]]:
    def wrap(fn: Callable[..., Decision | None]) -> Callable[..., Decision | None]:
        _BUILTIN.append((name, fn, options, name in CATALOG_READERS))
        return fn

    return wrap


@_builtin("churn_risk", cooldown=timedelta(days=30), marketing=True,
          when={"churn_risk"})
def churn_risk(c: Fields, changes: Fields, event: ev.Event) -> Decision | None:
    if "churn_risk" in changes and c["churn_risk"] >= 0.7:
        return decide("retention_offer", f"churn risk {c['churn_risk']:.2f} >= 0.70",
                      ["churn_risk", "last_order_at", "orders_30d", "social_sentiment"])
    return None


@_builtin("loyalty_tier_change", cooldown=timedelta(0), streams={"loyalty"})
def loyalty_tier_change(c: Fields, changes: Fields, event: ev.Event) -> Decision | None:
    before = getattr(changes, "before", {}).get("loyalty_tier")
    if "loyalty_tier" not in changes or before is None:
        return None
    order = ["bronze", "silver", "gold", "platinum"]
    new = c["loyalty_tier"]
    up = order.index(new) > order.index(before) if before in order and new in order else True
    return decide("tier_upgrade" if up else "tier_downgrade",
                  f"loyalty tier {before} -> {new} ({c.get('loyalty_points', 0)} points)",
                  ["loyalty_tier", "loyalty_points"], key=new)


@_builtin("wishlist_back_in_stock", cooldown=timedelta(days=7), marketing=True)
def wishlist_back_in_stock(c: Fields, changes: Fields, event: ev.Event, *,
                           products: ProductIndex) -> Decision | None:
    wishlist = c.get("wishlist")
    if not wishlist or products.last_restock is None:
        return None
    if event.event_time - products.last_restock > timedelta(days=3):
        return None  # nothing came back lately: skip the wishlist scan
    now = event.event_time
    for pid in wishlist:
        p = products.by_id.get(pid)
        if (p is not None and p.restocked_at is not None and sum(p.stock.values()) > 0
                and timedelta(0) <= now - p.restocked_at <= timedelta(days=3)):
            return decide("offer_wishlist_item", f"{pid} on the wishlist is back in stock",
                          ["wishlist", "catalog.stock"], key=pid,
                          event_ids=[p.restock_event])
    return None


@_builtin("rain_gear", cooldown=timedelta(days=3), marketing=True,
          streams={"weather", "wishlist"})
def rain_gear(c: Fields, changes: Fields, event: ev.Event, *,
              products: ProductIndex) -> Decision | None:
    w = c.get("weather")
    if not w or w["event_type"] != "forecast" or w["condition"] not in ("rain", "storm"):
        return None
    for pid in c.get("wishlist", ()):
        p = products.by_id.get(pid)
        if p is not None and p.subcategory in RAIN_GEAR and sum(p.stock.values()) > 0:
            return decide("offer_rain_gear", f"{w['condition']} forecast and {pid} "
                          f"({p.subcategory}) on the wishlist", ["weather", "wishlist"], key=pid)
    return None


@_builtin("near_store_with_viewed_item", cooldown=timedelta(days=1), marketing=True,
      streams={"location"})
def near_store_with_viewed_item(c: Fields, changes: Fields, event: ev.Event, *,
                                products: ProductIndex) -> Decision | None:
    loc = c.get("location")
    views = c.get("recent_views")
    if not loc or not views:
        return None
    for store, (lat, lon) in STORES.items():
        if abs(lat - loc["latitude"]) > 0.01 or abs(lon - loc["longitude"]) > 0.01:
            continue  # a cheap box before the real distance
        if km(lat, lon, loc["latitude"], loc["longitude"]) > 0.5:
            continue
        for v in views:
            p = products.by_id.get(v["product_id"])
            if p is not None and p.stock.get(store, 0) > 0:
                return decide("offer_in_store_pickup",
                              f"within 500 m of {store}, which stocks viewed {v['product_id']}",
                              ["location", "recent_views"], key=f"{store}:{v['product_id']}")
    return None


@_builtin("event_nearby", cooldown=timedelta(days=1), marketing=True,
          streams={"physical_events"})
def event_nearby(c: Fields, changes: Fields, event: ev.Event) -> Decision | None:
    if not isinstance(event, ev.PhysicalEvent):  # its one stream's schema
        return None
    e = event
    interests = set((c.get("psychographics") or {}).get("interests", ()))
    matching = EVENT_INTERESTS.get(e.kind, frozenset()) & interests
    if e.distance_km <= 5 and matching:
        return decide("offer_event_bundle", f"{e.kind} '{e.name}' {e.distance_km} km away "
                      f"matches interest {sorted(matching)[0]}",
                      ["nearby_events", "psychographics"], key=e.venue_event_id)
    return None


@_builtin("abandoned_search", cooldown=timedelta(days=1), marketing=True)
def abandoned_search(c: Fields, changes: Fields, event: ev.Event) -> Decision | None:
    searches = c.get("recent_searches")
    if not searches:
        return None
    s = searches[0]
    now = event.event_time
    if s["results"] == 0 or now - s["at"] < timedelta(minutes=30):
        return None
    views = c.get("recent_views")
    if views and views[0]["at"] >= s["at"]:
        return None
    return decide("remind_search", f"searched '{s['query']}' and looked at nothing since",
                  ["recent_searches", "recent_views"], key=s["at"].isoformat())


@_builtin("abandoned_cart", cooldown=timedelta(days=2), marketing=True)
def abandoned_cart(c: Fields, changes: Fields, event: ev.Event) -> Decision | None:
    cart = c.get("cart")
    if not cart:
        return None
    newest = cart[-1]  # the cart is kept in order of time added
    if event.event_time - newest["added_at"] < timedelta(hours=1):
        return None
    return decide("remind_cart", f"{len(cart)} item(s) in the cart for over an hour",
                  ["cart"], key=newest["added_at"].isoformat())


@_builtin("service_escalation", cooldown=timedelta(days=1),
          streams={"reviews", "returns"})
def service_escalation(c: Fields, changes: Fields, event: ev.Event) -> Decision | None:
    valuable = (c.get("lifetime_value", 0) >= 1000
                or c.get("loyalty_tier") in ("gold", "platinum"))
    if not valuable:
        return None
    if "last_review" in changes and changes["last_review"]["rating"] <= 2:
        why, fields = f"a {changes['last_review']['rating']}-star review", ["last_review"]
    elif "return_count" in changes:
        why, fields = "a return", ["recent_returns"]
    else:
        return None
    return decide("escalate_to_service", f"valuable customer (lifetime value "
                  f"{c.get('lifetime_value', 0):.2f}, tier {c.get('loyalty_tier')}) with {why}",
                  ["lifetime_value", "loyalty_tier", *fields], key=event.event_id)


@_builtin("payment_anomaly", cooldown=timedelta(hours=1), streams={"payments"})
def payment_anomaly(c: Fields, changes: Fields, event: ev.Event) -> Decision | None:
    if not isinstance(event, ev.Payment):  # its one stream's schema
        return None
    p = event
    n = c.get("payment_count", 0)
    if n < 4:
        return None
    typical = (c.get("total_spent", 0.0) - p.amount) / (n - 1)
    if p.amount >= 200 and p.amount > 4 * typical:
        # Earlier payments may all be 0.00 (found by fuzzing: this divided by zero).
        ratio = f"{p.amount / typical:.1f}x" if typical > 0 else "far above"
        return decide("review_payment", f"payment of {p.amount:.2f} is {ratio} "
                      f"the customer's average of {typical:.2f}",
                      ["last_payment", "total_spent", "payment_count"], key=p.order_id)
    return None
