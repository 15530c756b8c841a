"""Global analytics: the windowed sums and top-Ns the reference architecture gave to Flink.

The shards know which events were applied (duplicates and too-late events are not), so
each shard batch pre-aggregates what it applied into small partials per window (one per
minute and per five minutes it touched): per-event work is a few dict updates. A branch
of the same dataflow merges the partials into event-time tumbling windows (one
``stateful_batch`` step, :class:`GlobalWindows`) and turns every closed window into a
delta of a ``global`` entity, written to the store like customers and synced the same way:

=============================== ======== ==================================================
entity                          window   fields
=============================== ======== ==================================================
``global:revenue_per_minute``   1 min    ``series``: [{minute, revenue, orders}], last 60
``global:active_customers``     1 min    ``series``: [{minute, customers}], last 60
``global:events_per_minute``    1 min    ``series``: [{minute, events: {stream: n}}]
``global:top_products``         5 min    ``window``, ``top``: [[product, units]] (10)
``global:top_categories``       5 min    ``window``, ``top``: [[category, units]] (10)
``global:trending_searches``    5 min    ``window``, ``top``: [[query, searches]] (10)
``global:returns_rate``         5 min    ``window``, ``returns``, ``orders``, ``rate``
=============================== ======== ==================================================

Revenue is the total amount of orders placed (first event of each order id) in the
minute; active customers are distinct customers with any applied event in the minute.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from c360.model.delta import Delta
from c360.model.events import Event, Order, Search

MINUTE = timedelta(minutes=1)
FIVE = timedelta(minutes=5)
ALIGN = datetime(2000, 1, 1, tzinfo=timezone.utc)
SERIES = 60  # windows kept per per-minute entity
TOP = 10


class Acc:
    """What one window (or one batch's share of it) saw."""

    __slots__ = ("start", "revenue", "orders", "customers", "streams", "products",
                 "categories", "queries", "returns")

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.revenue = 0  # cents
        self.orders = 0
        self.customers: set[str] = set()
        self.streams: Counter[str] = Counter()
        self.products: Counter[str] = Counter()
        self.categories: Counter[str] = Counter()
        self.queries: Counter[str] = Counter()
        self.returns = 0

    def merge(self, other: Acc) -> Acc:
        self.revenue += other.revenue
        self.orders += other.orders
        self.customers |= other.customers
        self.streams.update(other.streams)
        self.products.update(other.products)
        self.categories.update(other.categories)
        self.queries.update(other.queries)
        self.returns += other.returns
        return self


def _floor(t: datetime, step: timedelta) -> datetime:
    return ALIGN + ((t - ALIGN) // step) * step


class Collector:
    """Pre-aggregates the events one shard batch applied (by :class:`c360.entity.shard.Shard`)."""

    __slots__ = ("minutes", "fives")

    def __init__(self) -> None:
        # Keyed by whole minutes since the epoch: datetime arithmetic per event costs more
        # than the rest of the collecting together.
        self.minutes: dict[int, Acc] = {}
        self.fives: dict[int, Acc] = {}

    def add(self, stream: str, kind: str, entity_id: str, event: Event,
            changes: dict[str, Any]) -> None:
        t = event.event_time
        m = int(t.timestamp() // 60)
        acc = self.minutes.get(m)
        if acc is None:
            acc = self.minutes[m] = Acc(_floor(t, MINUTE))
        acc.streams[stream] += 1
        if kind != "customer":
            return
        acc.customers.add(entity_id)
        # Each stream has one schema: the isinstance checks only tell the type checker so.
        if stream == "orders" and isinstance(event, Order):
            if "order_count" not in changes:  # a status update of a known order
                return
            acc.revenue += round(event.total_amount * 100)
            acc.orders += 1
            five = self._five(t, m)
            five.orders += 1
            for line in event.lines:
                five.products[line.product_id] += line.quantity
                if line.category:
                    five.categories[line.category] += line.quantity
        elif stream == "returns":
            if "return_count" in changes:
                self._five(t, m).returns += 1
        elif (stream == "search" and isinstance(event, Search) and event.event_type == "search"
              and event.query):
            self._five(t, m).queries[event.query] += 1

    def _five(self, t: datetime, minute: int) -> Acc:
        f = minute // 5
        acc = self.fives.get(f)
        if acc is None:
            acc = self.fives[f] = Acc(_floor(t, FIVE))
        return acc

    def partials(self) -> list[tuple[str, Acc]]:
        return [*(("minute", a) for a in self.minutes.values()),
                *(("five", a) for a in self.fives.values())]


class GlobalEntities:
    """Turns closed windows into deltas of the ``global:*`` entities (versions, series)."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.series: dict[str, list[dict[str, Any]]] = {}

    def _delta(self, entity_id: str, at: datetime, changes: dict[str, Any]) -> Delta:
        version = self.versions.get(entity_id, 0) + 1
        self.versions[entity_id] = version
        return Delta(entity_id, "global", version, at, "analytics",
                     f"{entity_id}:{at.isoformat()}", changes)

    def _append(self, entity_id: str, item: dict[str, Any], at: datetime) -> Delta:
        series = [*self.series.get(entity_id, ()), item][-SERIES:]
        self.series[entity_id] = series
        return self._delta(entity_id, at, {"series": series, "last": item})

    def closed(self, key: str, acc: Acc) -> list[Delta]:
        start = acc.start
        if key == "minute":
            end = start + MINUTE
            return [
                self._append("global:revenue_per_minute",
                             {"minute": start, "revenue": acc.revenue / 100,
                              "orders": acc.orders}, end),
                self._append("global:active_customers",
                             {"minute": start, "customers": len(acc.customers)}, end),
                self._append("global:events_per_minute",
                             {"minute": start, "events": dict(sorted(acc.streams.items()))},
                             end),
            ]
        end = start + FIVE

        def top(c: Counter[str]) -> list[list[Any]]:
            return [[k, n] for k, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]]

        return [
            self._delta("global:top_products", end, {"window": start, "top": top(acc.products)}),
            self._delta("global:top_categories", end,
                        {"window": start, "top": top(acc.categories)}),
            self._delta("global:trending_searches", end,
                        {"window": start, "top": top(acc.queries)}),
            self._delta("global:returns_rate", end, {
                "window": start, "returns": acc.returns, "orders": acc.orders,
                "rate": round(acc.returns / acc.orders, 4) if acc.orders else 0.0}),
        ]


LENGTHS = {"minute": MINUTE, "five": FIVE}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class GlobalWindows:
    """The open windows and the global entities: one state for the whole dataflow (the
    graph keeps it in one bytewax step, ``dataflows.steps.GlobalWindowsLogic``).

    Why not bytewax's ``fold_window``: with a live stream in small polls every shard batch
    makes its own partials, and the windowing operators' per-item and per-wake-up costs
    (system-time notifications for every open window) were most of the dataflow's CPU
    when live: 226 vs 60 microseconds per event measured with and without analytics.
    Here a batch of partials costs a few dict updates and closing is driven by event time.

    Why a watermark per (shard, source partition) rather than per source partition: the
    shards' partials reach this step on different channels, so a partition's watermark
    seen from one shard says nothing of what another shard has still to send. Each shard's
    reports come in order after its partials, so once all ``shard_keys`` x partitions have
    reported past a window's end, no partial of it can follow.
    """

    def __init__(self, shard_keys: int) -> None:
        # Resumed from a snapshot by c360.entity.codec.decode_global, which sets the state.
        self.shard_keys = shard_keys
        self.entities = GlobalEntities()
        self.open: dict[tuple[datetime, str], Acc] = {}  # (end, length key) -> window
        self.watermark: datetime | None = None  # windows ending at or before it closed
        self.late = 0
        # (shard key, source partition) -> (watermark epoch s, partition idle)
        self.marks: dict[tuple[str, int], tuple[float, bool]] = {}
        self._parts = 0

    def on_batch(self, values: list[tuple[str, Any]]) -> list[list[Delta]]:
        moved = False
        for key, part in values:
            if key == "mark":
                shard, p, parts, mark, idle = part
                self._parts = max(self._parts, parts)
                self.marks[(shard, p)] = (mark, idle)
                moved = True
                continue
            end = part.start + LENGTHS[key]
            if self.watermark is not None and end <= self.watermark:
                self.late += 1
                continue
            acc = self.open.get((end, key))
            if acc is None:
                acc = self.open[(end, key)] = Acc(part.start)
            acc.merge(part)
        if moved:
            mark = self._min_mark()
            if mark is not None and (self.watermark is None or mark > self.watermark):
                self.watermark = mark
        deltas = self._close(lambda end: self.watermark is not None and end <= self.watermark)
        return [deltas] if deltas else []

    def _min_mark(self) -> datetime | None:
        """The minimum watermark over every (shard, partition) that is not idle; None until
        every one has reported (or when all are idle)."""
        parts = self._parts or max((p for _, p in self.marks), default=-1) + 1
        if len(self.marks) < self.shard_keys * parts:
            return None
        active = [m for m, idle in self.marks.values() if not idle]
        if not active:
            return None
        low = min(active)
        if low == -math.inf:
            return None
        return _EPOCH + timedelta(seconds=low)

    def on_eof(self) -> list[list[Delta]]:
        deltas = self._close(lambda end: True)
        return [deltas] if deltas else []

    def _close(self, due: Callable[[datetime], bool]) -> list[Delta]:
        deltas: list[Delta] = []
        for end, key in sorted(k for k in self.open if due(k[0])):
            deltas.extend(self.entities.closed(key, self.open.pop((end, key))))
        return deltas
