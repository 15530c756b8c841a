"""Windows of relevance: how long each kind of detail stays in an entity, declared in one place.

Data about a customer is worth keeping only for a while. :data:`RELEVANCE` names every
field that is bounded, windowed, decayed, rolled up or evicted, and how; the helpers
below maintain them. All of it runs in *event time*: an entity's "now" is the latest
event time it has seen, never the wall clock, so results are deterministic.

Each event touches O(1) state: it adds to one daily bucket and to the window sums that
cover that day. Work proportional to the windows (re-summing buckets, rolling old days
up into months, re-expressing decayed scores) happens once per entity per day of event
time, when its day changes, or from the shard's sweep for customers who went quiet.

Folds of several streams touching one field must not depend on which topic was read
first. Every value here is a function of the set of events and of the entity's latest
event time: buckets are integer sums (cents), windows are computed from buckets, and
decayed scores are linear in their inputs, so any reading order gives the same fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from c360.model import events as ev

DAY_S = 86_400
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# -- the declarations -------------------------------------------------------------------------

@dataclass(frozen=True)
class Recent:
    """A bounded list of the latest items, newest first, none older than ``max_age``."""

    field: str
    limit: int
    source: str
    time_key: str = "at"  # the item's time, for max_age
    max_age: timedelta = timedelta(days=30)


@dataclass(frozen=True)
class Windowed:
    """A sum over the last ``days`` calendar days (UTC) of event time, today included."""

    field: str
    measure: str  # "spend" (payments, in money), "orders" or "returns" (counts)
    days: int


@dataclass(frozen=True)
class Decayed:
    """An exponentially decayed score per key; half of its weight goes every ``half_life``."""

    field: str
    half_life: timedelta
    keep: int  # most keys kept (the strongest)
    source: str


@dataclass(frozen=True)
class RolledUp:
    """Daily buckets older than ``daily_days`` fold into months; only the last ``months``
    calendar months (today's included) are kept."""

    field: str
    daily_days: int
    months: int


@dataclass(frozen=True)
class Evicted:
    """Detail dropped from customers quiet for ``after`` of event time (the summary stays)."""

    fields: tuple[str, ...]
    after: timedelta


RECENT: tuple[Recent, ...] = (
    Recent("recent_searches", 10, "search (search)"),
    Recent("recent_views", 10, "search (view)"),
    Recent("recent_locations", 10, "location"),
    Recent("recent_orders", 10, "orders", "order_date", timedelta(days=90)),
    Recent("recent_returns", 10, "returns", "at", timedelta(days=90)),
    Recent("nearby_events", 5, "physical_events", "starts_at", timedelta(days=1)),
    Recent("decisions", 20, "rules"),
)
WINDOWED: tuple[Windowed, ...] = (
    Windowed("spend_1d", "spend", 1),
    Windowed("spend_7d", "spend", 7),
    Windowed("spend_30d", "spend", 30),
    Windowed("orders_1d", "orders", 1),
    Windowed("orders_7d", "orders", 7),
    Windowed("orders_30d", "orders", 30),
    Windowed("orders_90d", "orders", 90),
    Windowed("returns_90d", "returns", 90),
)
RATIOS: dict[str, tuple[str, str]] = {"returns_rate_90d": ("returns_90d", "orders_90d")}
DECAYED: tuple[Decayed, ...] = (
    Decayed("category_affinity", timedelta(days=14), 12, "views (1), units bought (3)"),
    Decayed("brand_affinity", timedelta(days=14), 12, "views (1), units bought (3)"),
    Decayed("social_sentiment", timedelta(days=7), 1, "social: decayed mean sentiment"),
)
ROLLED_UP = RolledUp("monthly_spend", daily_days=90, months=24)
# Summaries (counts, totals, windows, scores, roll-ups, profile, wishlist) stay; what
# described the customer's last visit goes: where they were, its weather, their cart.
EVICTED = Evicted(("recent_searches", "recent_views", "recent_locations", "recent_orders",
                   "recent_returns", "nearby_events", "last_social", "last_review",
                   "last_payment", "location", "weather", "cart"),
                  after=timedelta(days=90))
# A customer quiet this long is decayed and rolled forward by the shard's aging.
QUIET_AFTER = timedelta(days=1)
# When a quiet customer is aged, after its latest event: its 1-day windows have moved on,
# then its 7-day, 30-day (and it is dormant), 90-day ones (and its detail is evicted);
# after that, only when its oldest month of spend leaves the roll-up. It is aged once more
# at the end of input. (A few deltas per quiet spell, not one a day per customer.)
AGE_AT: tuple[float, ...] = tuple(d * DAY_S for d in (1, 7, 30, 90))


def next_due(w: Windows, fields: dict[str, Any] | None = None) -> float | None:
    """The next time (epoch s) the shard ages this customer, or None (nothing will move)."""
    if w.now is None:
        return None
    now = w.now.timestamp()
    swept = w.swept
    for k in AGE_AT:
        if now + k > swept:
            return now + k
    months = fields.get(ROLLED_UP.field) if fields else None
    if months:
        year, month = map(int, min(months).split("-"))
        index = year * 12 + month - 1 + ROLLED_UP.months  # the month it is forgotten in
        gone = datetime(index // 12, index % 12 + 1, 1, tzinfo=timezone.utc).timestamp()
        if gone > swept:
            return gone
    return None


RELEVANCE: tuple[Recent | Windowed | Decayed | RolledUp | Evicted, ...] = (
    *RECENT, *WINDOWED, *DECAYED, ROLLED_UP, EVICTED)
LIMITS: dict[str, int] = {r.field: r.limit for r in RECENT}
_RECENT_OF: dict[str, Recent] = {r.field: r for r in RECENT}
_MEASURES = ("spend", "orders", "returns")
_WINDOWS_OF = {m: tuple(w for w in WINDOWED if w.measure == m) for m in _MEASURES}
_TAU = {d.field: d.half_life.total_seconds() / math.log(2) for d in DECAYED}
_KEEP = {d.field: d.keep for d in DECAYED}


def relevance_table() -> list[dict[str, Any]]:
    """The declarations as rows (for docs and notebooks: ``pd.DataFrame(relevance_table())``)."""
    rows: list[dict[str, Any]] = []
    for r in RECENT:
        rows.append({"field": r.field, "kind": "recent list",
                     "keeps": f"last {r.limit}, {r.max_age.days} days", "from": r.source})
    for w in WINDOWED:
        rows.append({"field": w.field, "kind": "event-time window",
                     "keeps": f"{w.days} day(s) of daily buckets", "from": w.measure})
    for name, (num, den) in RATIOS.items():
        rows.append({"field": name, "kind": "ratio", "keeps": f"{num} / {den}", "from": ""})
    for d in DECAYED:
        rows.append({"field": d.field, "kind": "decayed score",
                     "keeps": f"half-life {d.half_life.days} days, top {d.keep}",
                     "from": d.source})
    rows.append({"field": ROLLED_UP.field, "kind": "roll-up",
                 "keeps": f"days older than {ROLLED_UP.daily_days} -> months, "
                          f"{ROLLED_UP.months} months", "from": "payments"})
    rows.append({"field": ", ".join(EVICTED.fields), "kind": "evicted",
                 "keeps": f"dropped after {EVICTED.after.days} quiet days", "from": ""})
    return rows


# -- the per-entity state -----------------------------------------------------------------------

def day_of(t: datetime) -> int:
    return int(t.timestamp() // DAY_S)


def _month_of(day: int) -> str:
    return (EPOCH + timedelta(days=day)).strftime("%Y-%m")


def _first_kept_month(today: int) -> str:
    """The oldest month ("YYYY-MM") the roll-up keeps on day ``today``."""
    d = (EPOCH + timedelta(days=today)).date()
    index = d.year * 12 + d.month - ROLLED_UP.months  # months counted from year 0
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


class Windows:
    """An entity's private window bookkeeping (kept in ``EntityState.windows``; recovery
    snapshots write it as c360.entity.codec lays it out)."""

    __slots__ = ("now", "day", "daily", "scores", "refs", "quiet", "at", "swept", "due")

    def __init__(self) -> None:
        self.now: datetime | None = None  # latest event time of the entity
        self.day = -1  # the day windows are computed at (today, or later after aging)
        # measure -> day -> amount (cents for spend, counts otherwise)
        self.daily: dict[str, dict[int, int]] = {}
        # Months live only in the public ``monthly_spend`` field (money with two decimals,
        # which converts back to exact cents): a second copy here would double their memory.
        # Decayed scores in closed form: field -> key -> sum of weight * e^((t - base) / tau),
        # ``refs`` the base (epoch s). Aging only moves ``at`` (the time they are published
        # at), so aging to t1 then t2 gives exactly what aging to t2 gives.
        self.scores: dict[str, dict[str, float]] = {}
        self.refs: dict[str, float] = {}
        self.at: dict[str, float] = {}  # decayed field -> time (epoch s) it is published at
        self.quiet = False  # aged as quiet; cleared by the next event
        self.swept = -math.inf  # the latest time it was aged to (epoch s)
        self.due: float | None = None  # its deadline in the shard's heap, if any


Notes = list[tuple[str, dict[str, Any]]]  # lifecycle events to emit: (type, detail)


def observe(w: Windows, stream: str, event: ev.Event, changes: dict[str, Any],
            fields: dict[str, Any], notes: Notes) -> dict[str, Any]:
    """Fold one applied customer event into the windows; the fields that changed."""
    out: dict[str, Any] = {}
    t = event.event_time
    ts = t.timestamp()
    day = int(ts // DAY_S)
    if w.now is None or t > w.now:
        w.now = t
        w.quiet = False
        if day > w.day:
            _advance(w, day, fields, out, notes)
    # Each stream has one schema: the isinstance checks only tell the type checker so.
    if stream == "payments" and isinstance(event, ev.Payment):
        _add(w, "spend", day, round(event.amount * 100), fields, out)
    elif stream == "orders" and isinstance(event, ev.Order):
        if "order_count" in changes:  # a new order, not a status update
            _add(w, "orders", day, 1, fields, out)
            for line in event.lines:
                if line.category:
                    _score(w, "category_affinity", line.category, 3.0 * line.quantity, ts, out)
                if line.brand:
                    _score(w, "brand_affinity", line.brand, 3.0 * line.quantity, ts, out)
    elif stream == "returns":
        if "return_count" in changes:
            _add(w, "returns", day, 1, fields, out)
    elif stream == "search" and isinstance(event, ev.Search):
        if event.event_type == "view":
            if event.category:
                _score(w, "category_affinity", event.category, 1.0, ts, out)
            if event.brand:
                _score(w, "brand_affinity", event.brand, 1.0, ts, out)
    elif stream == "social" and isinstance(event, ev.Social):
        # A decayed mean: decayed sum of sentiment over decayed count.
        _score(w, "social_sentiment", "sum", event.sentiment, ts, None)
        _score(w, "social_sentiment", "n", 1.0, ts, None)
        out["social_sentiment"] = _sentiment(w)
    elif stream == "location" and isinstance(event, ev.Location):
        item = {"latitude": event.latitude, "longitude": event.longitude,
                "city": event.city, "at": t}
        out["recent_locations"] = _insert_by_time(fields.get("recent_locations"), item,
                                                  LIMITS["recent_locations"])
    if w.day >= 0:
        _drop_stale(w.day, changes, out)
    return out


def _drop_stale(day: int, changes: dict[str, Any], out: dict[str, Any]) -> None:
    """Drop from a just-updated recent list the items already past its ``max_age``.

    ``_advance`` ages the lists when the entity's day moves on; an item that arrives after
    that (a stream topic read later than another's) must not stay, or the list would
    depend on which topic happened to be read first.
    """
    start_of_day: datetime | None = None
    # Only the lists this event touched (a few keys), not every recent list per event.
    for name in {*changes, *out}.intersection(_RECENT_OF):
        r = _RECENT_OF[name]
        items = out[name] if name in out else changes[name]
        if not items:
            continue
        if start_of_day is None:
            start_of_day = EPOCH + timedelta(days=day)
        oldest = start_of_day - r.max_age
        if any(i[r.time_key] < oldest for i in items):
            out[r.field] = [i for i in items if i[r.time_key] >= oldest]


def _insert_by_time(items: list | None, item: dict, limit: int) -> list:
    """A new list, newest first by ``at``, at most ``limit`` long (late items land in place)."""
    items = list(items or ())
    i = 0
    while i < len(items) and items[i]["at"] >= item["at"]:
        i += 1
    items.insert(i, item)
    return items[:limit]


def _add(w: Windows, measure: str, day: int, amount: int, fields: dict[str, Any],
         out: dict[str, Any]) -> None:
    if day <= w.day - ROLLED_UP.daily_days:  # older than any window: straight into its month
        if measure == "spend" and _month_of(day) >= _first_kept_month(w.day):
            months = _months(out, fields)
            month = _month_of(day)
            months[month] = months.get(month, 0) + amount
            out[ROLLED_UP.field] = _published_months(months)
        return
    buckets = w.daily.setdefault(measure, {})
    buckets[day] = buckets.get(day, 0) + amount
    for win in _WINDOWS_OF[measure]:
        if day > w.day - win.days:
            cur = out.get(win.field, fields.get(win.field, 0))
            out[win.field] = _publish(measure, _raw(measure, cur) + amount)
    if measure in ("orders", "returns"):
        _ratios(fields, out)


def _raw(measure: str, value: float | int) -> int:
    return round(value * 100) if measure == "spend" else int(value)


def _publish(measure: str, raw: int) -> float | int:
    return raw / 100 if measure == "spend" else raw


def _ratios(fields: dict[str, Any], out: dict[str, Any]) -> None:
    for name, (num, den) in RATIOS.items():
        n = out.get(num, fields.get(num, 0))
        d = out.get(den, fields.get(den, 0))
        value = round(n / d, 4) if d else 0.0
        if value != fields.get(name):
            out[name] = value


def _months(out: dict[str, Any], fields: dict[str, Any]) -> dict[str, int]:
    """The roll-up in cents, from the field (or from this event's update of it)."""
    months = out.get(ROLLED_UP.field, fields.get(ROLLED_UP.field)) or {}
    return {m: round(v * 100) for m, v in months.items()}


def _published_months(months: dict[str, int]) -> dict[str, float]:
    return {m: months[m] / 100 for m in sorted(months)}


def _advance(w: Windows, today: int, fields: dict[str, Any], out: dict[str, Any],
             notes: Notes) -> None:
    """Move the entity's day forward: roll old days up, re-sum windows, re-express scores."""
    w.day = today
    # The day windows are computed at; rules and segments that depend on the passing of
    # time (churn, "new") re-run when it changes rather than on every event.
    out["as_of_day"] = (EPOCH + timedelta(days=today)).date()
    start_of_day = EPOCH + timedelta(days=today)
    for r in RECENT:  # recent detail also has an age limit: bounded in time, not only count
        items = fields.get(r.field)
        if items:
            since = start_of_day - r.max_age
            kept = [i for i in items if i[r.time_key] >= since]
            if len(kept) != len(items):
                out[r.field] = kept
    oldest = today - ROLLED_UP.daily_days
    months: dict[str, int] | None = None
    rolled = 0
    for measure, buckets in w.daily.items():
        old = [d for d in buckets if d <= oldest]
        for d in old:
            amount = buckets.pop(d)
            if measure == "spend":
                if months is None:
                    months = _months(out, fields)
                month = _month_of(d)
                months[month] = months.get(month, 0) + amount
                rolled += 1
    # Bounded in time, not only in count: a customer who spends in few months must not
    # keep them for years.
    first_kept = _first_kept_month(today)
    current = fields.get(ROLLED_UP.field)
    if months is None and current and min(current) < first_kept:
        months = _months(out, fields)
    if months is not None:  # None: nothing rolled up and nothing to forget
        gone = sorted(m for m in months if m < first_kept)
        for m in gone:
            del months[m]
        if gone:
            notes.append(("forgotten", {"field": ROLLED_UP.field, "months": gone}))
        if rolled or gone:
            out[ROLLED_UP.field] = _published_months(months)
    if rolled:
        notes.append(("rolled_up", {"field": ROLLED_UP.field, "days": rolled}))
    for measure in _MEASURES:
        buckets = w.daily.get(measure, {})
        for win in _WINDOWS_OF[measure]:
            value = _publish(measure, sum(a for d, a in buckets.items() if d > today - win.days))
            if value != fields.get(win.field, 0) or win.field not in fields:
                out[win.field] = value
    _ratios(fields, out)
    # Scores are published as of the start of the entity's day at the earliest, so they
    # fade day by day even while nothing new feeds them.
    start = float(today * DAY_S)
    decayed = []
    for name in w.scores:
        if w.at[name] < start:
            w.at[name] = start
            out[name] = _sentiment(w) if name == "social_sentiment" else _public(w, name)
            decayed.append(name)
    if decayed:
        notes.append(("decayed", {"fields": decayed}))


def prune_dust(w: Windows) -> None:
    """Forget keys whose decayed score is dust where it is published (for dormant customers:
    pruning at t1 then t2 forgets what pruning at t2 forgets, scores only decay)."""
    for name, scores in w.scores.items():
        if name == "social_sentiment":
            continue
        floor = 0.0005 / _factor(w, name)
        # A new dict: deleting from one would keep the room it once needed.
        w.scores[name] = {k: v for k, v in scores.items() if v >= floor}


_MAX_EXP = 600.0  # e^600 is far from overflow; a base this old is moved (every ~33 years)


def _factor(w: Windows, name: str) -> float:
    """e^-((at - base) / tau): what a stored sum is worth where it is published."""
    return math.exp(-(w.at[name] - w.refs[name]) / _TAU[name])


def _score(w: Windows, name: str, key: str, weight: float, ts: float,
           out: dict[str, Any] | None) -> None:
    scores = w.scores.get(name)
    tau = _TAU[name]
    if scores is None:
        scores = w.scores[name] = {}
        w.refs[name] = ts
        w.at[name] = max(ts, float(w.day * DAY_S))
    elif ts > w.at[name]:
        w.at[name] = ts
    exponent = (ts - w.refs[name]) / tau
    if exponent > _MAX_EXP:  # move the base (a function of event times only)
        base = ts
        factor = math.exp(-(base - w.refs[name]) / tau)
        for k in scores:
            scores[k] *= factor
        w.refs[name] = base
        exponent = 0.0
    scores[key] = scores.get(key, 0.0) + weight * math.exp(exponent)
    keep = _KEEP[name]
    if name != "social_sentiment" and len(scores) > 2 * keep:  # bounded: keep the strongest
        w.scores[name] = dict(sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))[-keep:])
    if out is not None:
        out[name] = _public(w, name)


def _public(w: Windows, name: str) -> dict[str, float]:
    """The strongest keys, rounded (so that float noise of the reading order never shows)."""
    factor = _factor(w, name)
    top = sorted(w.scores[name].items(), key=lambda kv: (-kv[1], kv[0]))[: _KEEP[name]]
    return {k: round(v * factor, 4) for k, v in top if v * factor >= 0.001}


def _sentiment(w: Windows) -> float:
    s = w.scores.get("social_sentiment", {})
    n = s.get("n", 0.0)
    return round(s.get("sum", 0.0) / n, 4) if n > 1e-9 else 0.0


def sweep(w: Windows, watermark: datetime, fields: dict[str, Any],
          notes: Notes) -> dict[str, Any]:
    """Age a customer's windows to ``watermark``; evict detail when dormant.

    Called by the shard at the customer's deadlines (1, 7, 30 and 90 days after its latest
    event, :data:`AGE_AT`) and at the end of input: spend windows, decayed scores and
    roll-ups move on although no event of theirs arrives. A function of the state and
    ``watermark`` only: aging to t1 then to t2 leaves the fields aging to t2 leaves.
    """
    out: dict[str, Any] = {}
    today = day_of(watermark)
    if today > w.day:
        _advance(w, today, fields, out, notes)
    if w.now is not None and watermark - w.now >= EVICTED.after:
        dropped = [f for f in EVICTED.fields if fields.get(f) is not None]
        if dropped or w.daily:
            for f in dropped:
                out[f] = None  # None in a delta: the field was forgotten
            w.daily.clear()
            notes.append(("evicted", {"fields": dropped,
                                      "quiet_days": (watermark - w.now).days}))
        prune_dust(w)
    w.quiet = True
    return out
