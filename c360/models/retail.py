"""The retail model: the 17 streams of the brief and every customer and product field.

The default model (``Pipeline(model=...)`` and ``c360 run --model`` take another). Its
streams fold through the hand-written folds of :mod:`c360.entity.state` (order status
updates, carts, ties broken by event time: more than a generic fold says), so each field
is declared :class:`~c360.model.declare.Custom` with the code that writes it: a stream's
fold, ``(windows)`` (:mod:`c360.entity.windows`, only with ``EntityHooks(windows=True)``,
the default: with windows off none of those fields exists), ``(logic)``
(:func:`c360.entity.logic.first_logic`), ``(rules)`` and ``(segments)``
(:mod:`c360.entity.derive`) or ``(commands)`` (:mod:`c360.model.commands`). The relevance
column is read from the declarations of :mod:`c360.entity.windows` and the bounds of the
folds, not typed here, so it cannot drift from what the code keeps. Labels are the
dashboard's titles (``dashboards/text.py`` TITLES; the library may not import the
dashboards, so they are written here and a test keeps the two equal).

Everything downstream reads this declaration: PII redaction, the export's dtypes, the
dashboard's labels and ``docs/fields.md`` (``python -m c360.models.retail`` writes it).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from c360.config import REPO_ROOT
from c360.entity import state
from c360.entity import windows as win
from c360.entity.rules import CHURN_INPUTS
from c360.entity.segments import DORMANT, DORMANT_AFTER
from c360.entity.state import FOLDS
from c360.model import commands
from c360.model.declare import Custom, EntityModel, Field
from c360.model.events import _STREAMS
from c360.model.reference import reference

STREAMS = tuple(replace(s, fold=FOLDS[s.name]) for s in _STREAMS)
REFERENCE = REPO_ROOT / "docs" / "fields.md"


# -- relevance, read from the declarations of c360.entity.windows -----------------------------

def _span(t: timedelta) -> str:
    days = t.total_seconds() / 86_400
    return f"{days:g} day" + ("" if days == 1 else "s")


def relevance(name: str, bound: str = "") -> str:
    """How long ``name`` stays, from the windows' declarations (RECENT, WINDOWED, RATIOS,
    DECAYED, ROLLED_UP, EVICTED); ``bound``: a count bound of the fold itself."""
    parts = [bound] if bound else []
    for r in win.RECENT:
        if r.field == name:
            parts.append(f"last {r.limit}, none older than {_span(r.max_age)}")
    for w in win.WINDOWED:
        if w.field == name:
            parts.append(f"window of the last {_span(timedelta(days=w.days))} of event time")
    if name in win.RATIOS:
        num, den = win.RATIOS[name]
        parts.append(f"{num} / {den} (0 when {den} is 0)")
    for d in win.DECAYED:
        if d.field == name:
            parts.append(f"decays, half-life {_span(d.half_life)}"
                         + (f", strongest {d.keep} keys kept" if d.keep > 1 else ""))
    if name == win.ROLLED_UP.field:
        up = win.ROLLED_UP
        parts.append(f"days older than {up.daily_days} roll up into months, "
                     f"the last {up.months} months kept")
    if name in win.EVICTED.fields:
        parts.append(f"evicted after {_span(win.EVICTED.after)} quiet")
    return "; ".join(parts) or "kept"


def _f(name: str, type_: str, sources: str, how: str, description: str, *,
       pii: bool = False, label: str = "", bound: str = "", entity: str = "customer") -> Field:
    return Field(name, type_, Custom(tuple(sources.split()), how), description,
                 relevance=relevance(name, bound), pii=pii, label=label, entity=entity)


_LAST = "last applied (arrival order)"
_STATUS = "a status update is not a new one"
_DORMANT = (f"'{DORMANT}' added by the sweep after {_span(DORMANT_AFTER)} quiet, "
            "left at the next event")

CUSTOMER: tuple[Field, ...] = (
    # who they are
    _f("name", "str", "customer_details", _LAST, "The customer's name", pii=True),
    _f("email", "str", "customer_details", _LAST, "The customer's email address",
       pii=True),
    _f("phone", "str", "customer_details", _LAST, "The customer's phone number",
       pii=True),
    _f("gender", "str", "customer_details", _LAST, "Gender, as the customer gave it"),
    _f("birthdate", "str", "customer_details", _LAST, "Date of birth (ISO)", pii=True),
    _f("address", "record", "customer_details", _LAST,
       "Postal address: street, city, zip, state, country", pii=True),
    _f("demographics", "record", "tp_demographics", "keys merged, last applied",
       "Third-party age, income, education level and marketing opt-in"),
    _f("psychographics", "record", "tp_psychographics", "last applied record",
       "Third-party interests, values and personality traits"),
    # what they buy
    _f("order_count", "int", "orders", "count of distinct orders (" + _STATUS + ")",
       "Orders placed, all time"),
    _f("items_bought", "int", "orders", "sum of line quantities of distinct orders",
       "Units bought, all time"),
    _f("orders_value", "money", "orders", "sum of order totals, cents exact",
       "Value of the orders placed, all time"),
    _f("last_order_at", "time", "orders", "latest order date", "When the latest order was placed",
       label="Last order"),
    _f("recent_orders", "list", "orders", "latest orders by order date with status and lines",
       "The latest orders (id, date, status, total, lines), newest first",
       label="Recent orders"),
    _f("total_spent", "money", "payments", "sum of payment amounts, cents exact",
       "Money paid, all time", label="Total spent"),
    _f("payment_count", "int", "payments", "count", "Payments made, all time"),
    _f("last_payment", "record", "payments", "latest by payment date",
       "The latest payment: order, method, amount, date"),
    _f("lifetime_value", "money", "payments (logic)", "first_logic: total_spent",
       "Lifetime value: money paid, all time", label="Lifetime value"),
    _f("tp_purchase_count", "int", "tp_purchases", "count",
       "Purchases elsewhere, from a third party", label="Third-party purchases"),
    _f("tp_spend", "money", "tp_purchases", "sum of amounts, cents exact",
       "Money spent elsewhere, from a third party", label="Third-party spend"),
    # what they want
    _f("wishlist", "list", "wishlist", "products added and not removed, in order added",
       "Product ids on the wishlist", bound=f"at most {state.WISHLIST_MAX}, oldest dropped"),
    _f("cart", "list", "search orders",
       "each product's latest action by event time: added, removed or bought",
       "Products in the cart with when they were added, oldest first",
       bound=f"at most {state.CART_MAX}"),
    _f("search_count", "int", "search", "count of searches", "Searches made, all time"),
    _f("recent_searches", "list", "search", "latest searches by event time",
       "The latest searches (query, results, time), newest first", label="Recent searches"),
    _f("recent_views", "list", "search", "latest product views by event time",
       "The latest products viewed, newest first", label="Recent views"),
    # what they say
    _f("review_count", "int", "reviews", "count", "Reviews written, all time"),
    _f("avg_review_score", "float", "reviews", "mean rating",
       "Mean rating of the customer's reviews (1 to 5)", label="Average review"),
    _f("last_review", "record", "reviews", "latest by event time",
       "The latest review: product, order, rating, text (280 characters)"),
    _f("return_count", "int", "returns", "count of distinct returns (" + _STATUS + ")",
       "Returns asked for, all time"),
    _f("recent_returns", "list", "returns", "latest returns by event time with status",
       "The latest returns (id, order, product, reason, status), newest first",
       label="Recent returns"),
    _f("social_count", "int", "social", "count", "Social posts seen, all time"),
    _f("social_sentiment", "float", "social (windows)",
       "decayed mean of post sentiment, as of the customer's event time; "
       "none with windows off",
       "Mood of the customer's posts, -1 to 1, recent posts weigh most",
       label="Social sentiment (7-day)"),
    _f("last_social", "record", "social", "latest by event time",
       "The latest post: type, text (280 characters), sentiment", label="Last social post"),
    # loyalty
    _f("loyalty_points", "int", "loyalty (commands)",
       "points earned less redeemed, plus grant_points", "Loyalty points held"),
    _f("loyalty_program_tier", "str", "loyalty", "last tier applied",
       "The tier the loyalty programme last gave", label="Loyalty programme tier"),
    _f("loyalty_tier", "str", "loyalty (logic)",
       "first_logic: the programme's tier, else by points", "Loyalty tier",
       label="Loyalty tier"),
    # where they are
    _f("location", "record", "location", "latest reading by event time",
       "Where the customer was last: latitude, longitude, city"),
    _f("recent_locations", "list", "location (windows)", "latest readings by event time",
       "The latest positions, newest first", label="Recent locations"),
    _f("weather", "record", "weather", "latest reading by event time",
       "Weather where the customer is: observed or forecast"),
    _f("nearby_events", "list", "physical_events", "latest by start time",
       "Happenings near the customer (concerts, sports...), latest start first",
       label="Events nearby"),
    # time, windows and scores
    _f("first_seen", "time", "(logic)", "first_logic: earliest event time",
       "Event time of the customer's first event", label="First seen"),
    _f("last_seen", "time", "(logic)", "first_logic: latest event time",
       "Event time of the customer's latest event", label="Last seen"),
    _f("as_of_day", "date", "(windows)",
       "the day (a date) of the latest event time, or of the sweep that aged it",
       "The day the windows and scores are read at", label="As of (day)"),
    _f("spend_1d", "money", "payments (windows)", "daily buckets, cents exact",
       "Money paid today (UTC)", label="Spend, 1 day"),
    _f("spend_7d", "money", "payments (windows)", "daily buckets, cents exact",
       "Money paid in the last 7 days", label="Spend, 7 days"),
    _f("spend_30d", "money", "payments (windows)", "daily buckets, cents exact",
       "Money paid in the last 30 days", label="Spend, 30 days"),
    _f("monthly_spend", "map", "payments (windows)", "{YYYY-MM: money} of days rolled up",
       "Money paid per calendar month, for days out of the daily windows"),
    _f("orders_1d", "int", "orders (windows)", "daily buckets of distinct orders",
       "Orders placed today (UTC)", label="Orders, 1 day"),
    _f("orders_7d", "int", "orders (windows)", "daily buckets of distinct orders",
       "Orders placed in the last 7 days", label="Orders, 7 days"),
    _f("orders_30d", "int", "orders (windows)", "daily buckets of distinct orders",
       "Orders placed in the last 30 days", label="Orders, 30 days"),
    _f("orders_90d", "int", "orders (windows)", "daily buckets of distinct orders",
       "Orders placed in the last 90 days", label="Orders, 90 days"),
    _f("returns_90d", "int", "returns (windows)", "daily buckets of distinct returns",
       "Returns asked for in the last 90 days", label="Returns, 90 days"),
    _f("returns_rate_90d", "share", "orders returns (windows)", "ratio, 4 decimals",
       "Returns per order over the last 90 days", label="Returns rate, 90 days"),
    _f("category_affinity", "map", "search orders (windows)",
       "decayed sum per category: a view 1, a unit bought 3",
       "How much the customer is into each product category, lately"),
    _f("brand_affinity", "map", "search orders (windows)",
       "decayed sum per brand: a view 1, a unit bought 3",
       "How much the customer is into each brand, lately"),
    _f("churn_risk", "float", "(rules)",
       "churn_score of " + ", ".join(sorted(CHURN_INPUTS)),
       "Risk of leaving, 0 (engaged) to 1, from recency, trend, mood and returns",
       label="Churn risk"),
    _f("decisions", "list", "(rules)", "the rule book's decisions, newest first",
       "What the rules decided (rule, action, reason, fields, events), newest first"),
    _f("segments", "list", "(segments)", "the segment book's members; " + _DORMANT,
       "Segments the customer is in, sorted"),
    # what people did to them (commands from the sync server and the dashboard)
    _f("notes", "list", "(commands)", "add_note, newest first",
       "Notes written about the customer (text, by, time)",
       bound=f"at most {commands.NOTES_MAX}"),
    _f("last_contacted_at", "time", "(commands)", "mark_contacted: the command's time",
       "When someone last contacted the customer", label="Last contacted"),
    _f("last_contact_channel", "str", "(commands)", "mark_contacted: its channel",
       "How they were last contacted", label="Contacted by"),
    _f("marketing_opt_out", "bool", "(commands)", "opt_out_marketing: True",
       "The customer said no to marketing: marketing rules skip them",
       label="Marketing opt-out"),
    _f("offers_sent", "list", "(commands)", "send_offer, newest first",
       "Offers sent to the customer (action, reason, by, time)", label="Offers sent",
       bound=f"at most {commands.OFFERS_MAX}"),
)


def _p(name: str, type_: str, sources: str, how: str, description: str) -> Field:
    return _f(name, type_, sources, how, description, entity="product")


PRODUCT: tuple[Field, ...] = (
    _p("name", "str", "products", _LAST, "The product's name"),
    _p("category", "str", "products", _LAST, "Product category"),
    _p("subcategory", "str", "products", _LAST, "Product subcategory"),
    _p("brand", "str", "products", _LAST, "Brand"),
    _p("price", "money", "products", _LAST, "List price"),
    _p("discount", "money", "products", _LAST, "Money off the list price"),
    _p("gender", "str", "products", _LAST, "Who it is for"),
    _p("age_group", "str", "products", _LAST, "Age group it is for"),
    _p("stock", "map", "inventory", "latest quantity per store, stores merged",
       "Units in stock per store id"),
    _p("total_stock", "int", "inventory", "sum of stock", "Units in stock, all stores"),
)

# A name is one field per entity kind: the product's name and gender are not the customer's.
FIELDS: tuple[Field, ...] = (*CUSTOMER, *PRODUCT)

RETAIL = EntityModel("retail", STREAMS, FIELDS)


def write_reference(path: Path = REFERENCE) -> Path:
    """Write the retail model's field reference (docs/fields.md) and say where."""
    path.write_text(reference(RETAIL), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m c360.models.retail",
                                 description="Write the retail model's field reference.")
    ap.add_argument("path", nargs="?", type=Path, default=REFERENCE,
                    help=f"where to write it (default: {REFERENCE})")
    args = ap.parse_args(argv)
    path = write_reference(args.path)
    counts = ", ".join(f"{len(RETAIL.fields_of(k))} {k}" for k in ("customer", "product"))
    print(f"wrote {path} ({counts} fields)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
