"""Field values as a person reads them: money, times, places, products and nested records.

The dashboard shows entity fields to people, not to programs: ``{"street": ..., "city":
...}`` becomes ``Avenida Brasil, 2658, 09593-913 São Paulo, SP, BR``, a payment becomes
``R$ 5,065.90 by credit card on 2026-11-24 09:07:43 UTC (order order-b7103a-987)``, a
product id becomes the product's name. One formatter for every page, so that the same
value reads the same everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from typing import Any

from c360.dev.simulator import CITIES, STORES, _km
from c360.models.retail import RETAIL

# The simulated shop and the Olist data are Brazilian: amounts are in reais.
CURRENCY = "R$"
# Labels, money and shares are the model's (c360.models.retail: Field.label/title, type
# "money" and "share"), for every entity field. The keys below are not entity fields --
# keys inside nested records (an order's total_amount, a payment's amount, demographics'
# income), the global analytics entities' values (revenue, rate), the feed's computed
# figures (revenue_per_min, returns_rate, per_s) and the entity's id -- so the model does
# not declare them and they are listed here. tests/test_model_downstream.py checks that
# every other field the dashboards name is declared.
NESTED_MONEY = frozenset({"total_amount", "amount", "income", "revenue", "revenue_per_min"})
NESTED_SHARES = frozenset({"returns_rate", "rate"})
NESTED_TITLES = {"id": "Customer id", "order_id": "Order", "product_id": "Product",
                 "per_s": "Per second"}
MONEY = RETAIL.money_fields | NESTED_MONEY
# A map's values have no declared type: {month: amount} maps are listed by name.
MONEY_MAPS = frozenset({"monthly_spend"})
SHARES = frozenset(f.name for f in RETAIL.fields if f.type == "share") | NESTED_SHARES  # 0..1
CITY_KM = 60.0  # a position this close to a known city is "in" it
STORE_KM = 0.5  # ...and this close to one of the shop's stores, "at" it (the rules' 500 m)
VALUE_CHARS = 400  # longer texts are cut (the "all fields" table)

# How people read each name: the model's labels (or its words, capitalised) and the above.
TITLES = {**NESTED_TITLES, **RETAIL.titles}

Names = Callable[[str], str]  # product id -> name (the id itself when unknown)


def title(field: str) -> str:
    """``"tp_purchase_count"`` -> ``"Third-party purchases"`` (its label in the model);
    names the model does not know: words, capitalised (as :attr:`Field.title` does)."""
    if field in TITLES:
        return TITLES[field]
    words = field.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def money(amount: float | int | None) -> str:
    if amount is None or (isinstance(amount, float) and math.isnan(amount)):
        return ""
    return f"{CURRENCY} {amount:,.2f}"


def when(t: datetime | date | str | None, *, zone: bool = True) -> str:
    """``2026-11-24 09:07:56 UTC`` (``zone=False``: without the zone, for table columns
    titled "(UTC)"); a date as ``2026-11-24``."""
    if t is None:
        return ""
    if isinstance(t, str):
        text = t
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            return text
    if isinstance(t, datetime):
        if t.tzinfo is not None:
            t = t.astimezone(timezone.utc)
        return t.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if zone else "")
    return t.isoformat()


def number(x: Any) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:,.2f}"
    return str(x)


def place(latitude: float, longitude: float, city: str | None = None) -> str:
    """The city (given, or the nearest known one), and the shop's store when at one;
    coordinates only when nowhere known."""
    if not city:
        km, near = min((_km(latitude, longitude, c.lat, c.lon), c.name) for c in CITIES)
        city = near if km <= CITY_KM else None
    km, store = min((_km(latitude, longitude, s.lat, s.lon), s.name) for s in STORES)
    at = f" (at {store}, {km * 1000:.0f} m)" if km <= STORE_KM else ""
    return f"{city}{at}" if city else f"{latitude:.4f}, {longitude:.4f}"


def coordinates(latitude: float, longitude: float) -> str:
    return f"{latitude:.4f}, {longitude:.4f}"


def _words(s: Any) -> str:
    return str(s).replace("_", " ")


def address(a: Mapping[str, Any]) -> str:
    town = " ".join(str(x) for x in (a.get("zip"), a.get("city")) if x)
    return ", ".join(str(x) for x in (a.get("street"), town, a.get("state"), a.get("country"))
                     if x)


def readable(field: str, value: Any, names: Names = str) -> str:
    """One line of text for ``value`` of ``field`` (see the module doc)."""
    text = _readable(field, value, names)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def _readable(field: str, v: Any, names: Names) -> str:  # noqa: C901 - one case per field
    if v is None:
        return ""
    if field in MONEY and isinstance(v, (int, float)) and not isinstance(v, bool):
        return money(v)
    if field in SHARES and isinstance(v, (int, float)):
        return f"{v:.1%}"
    if isinstance(v, (datetime, date)):
        return when(v)
    if field == "birthdate":  # a day, sent as text: no time of day to show
        text = str(v)
        return text[:10] if re.match(r"\d{4}-\d\d-\d\d", text) else text
    if field == "avg_review_score" and isinstance(v, (int, float)):
        return f"{v:.2f} / 5"
    if field in ("social_sentiment", "sentiment") and isinstance(v, (int, float)):
        return f"{v:+.2f}"
    if field == "churn_risk" and isinstance(v, (int, float)):
        return f"{v:.2f}"
    if isinstance(v, Mapping):
        return _record(field, v, names)
    if isinstance(v, (list, tuple)):
        if field in ("wishlist", "cart"):
            return ", ".join(names(str(p)) for p in v)
        return "; ".join(_readable(field, x, names) for x in v)  # items as their list's
    if field in ("product_id", "product"):
        return names(str(v))
    return number(v)


def _record(field: str, r: Mapping[str, Any], names: Names) -> str:  # noqa: C901
    g = r.get
    if field == "address":
        return address(r)
    if field == "last_payment":
        parts = [money(g("amount")), f"by {_words(g('method', ''))}"]
        if (g("installments") or 1) > 1:
            parts.append(f"in {g('installments')} instalments")
        return " ".join(parts) + f" on {when(g('payment_date'))} (order {g('order_id')})"
    if field in ("location", "recent_locations") and "latitude" in r:
        lat, lon = r["latitude"], r["longitude"]
        return (f"{place(lat, lon, g('city'))} at {when(g('at'))} "
                f"({coordinates(lat, lon)})")
    if field == "demographics":
        parts = [f"age {g('age')}" if g("age") is not None else "",
                 f"income {money(g('income'))} a month" if g("income") is not None else "",
                 str(g("education_level") or ""),
                 "" if g("marketing_opt_in") is None else
                 f"marketing opt-in: {number(bool(g('marketing_opt_in')))}"]
        return " · ".join(p for p in parts if p)
    if field == "psychographics":
        parts = [f"{label}: {', '.join(map(str, g(k) or ()))}" for k, label in
                 (("interests", "interests"), ("values", "values"),
                  ("personality_traits", "traits")) if g(k)]
        return " · ".join(parts)
    if field in ("last_review", "reviews"):
        product = names(str(g("product_id", "")))
        return (f"{g('rating')}/5 for {product}: “{g('text', '')}” ({when(g('at'))})")
    if field == "weather":
        temp = g("temperature")
        return (f"{_words(g('condition', ''))}"
                + (f", {temp:.1f} °C" if isinstance(temp, (int, float)) else "")
                + f" ({_words(g('event_type', ''))}, {when(g('at'))})")
    if field == "last_social":
        s = g("sentiment")
        mood = f"sentiment {s:+.2f}, " if isinstance(s, (int, float)) else ""
        return f"{_words(g('event_type', ''))}: “{g('details', '')}” ({mood}{when(g('at'))})"
    if field == "nearby_events" and "venue" in r:
        return (f"{g('name')} ({_words(g('kind', ''))}) at {g('venue')}, "
                f"{g('distance_km')} km, {when(g('starts_at'))}")
    if field == "decisions" and "action" in r:
        return f"{_words(g('action'))}: {named(str(g('reason', '')), names)} ({when(g('at'))})"
    if field == "offers_sent" and "action" in r:
        return f"{_words(g('action'))} by {g('by', '')} ({when(g('at'))})"
    if field == "recent_orders" and "lines" in r:
        return (f"{g('order_id')} {g('status', '')} {money(g('total_amount'))}: "
                + lines(g("lines") or (), names))
    if field in MONEY_MAPS:
        return " · ".join(f"{k} {money(x)}" for k, x in r.items())
    return " · ".join(f"{title(str(k)).lower()}: {_readable(str(k), x, names)}"
                      for k, x in r.items())


def lines(order_lines: Any, names: Names = str) -> str:
    """``1× Voltix Lite Earbuds, 3× Brincar Building Set``."""
    return ", ".join(f"{ln.get('quantity', 1)}× {names(str(ln.get('product_id', '')))}"
                     for ln in order_lines if isinstance(ln, Mapping))


def named(text: str, names: Names) -> str:
    """Product ids in a sentence (a decision's reason) replaced by the products' names."""
    return re.sub(r"\bprod-\d+\b", lambda m: names(m.group(0)), text)
