"""The overview's figures, computed once per server process and read by every session.

Fifty sessions must not each walk every customer every second: one :class:`Feed`
per store samples it once a second in its own thread and publishes an immutable
:class:`Snapshot`; a session's periodic callback only reads the latest one. The
feed also keeps what the store does not: a rolling five-minute count of searches,
viewed and ordered products (from a store subscription), the last decisions (from
the lifecycle stream), and the dead-letter and late-event counts (read from Kafka).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from c360.config import Settings
from c360.model.delta import Delta, Lifecycle
from c360.model.events import Catalogue
from c360.store.memory import EntityStore
from dashboards.live import RateMeter

log = logging.getLogger(__name__)

PERIOD_S = 1.0
ACTIVE_S = 60.0  # a customer with a change in the last minute is active
TRENDING_S = 300.0  # trending lists count the last five minutes
BUCKET_S = 10.0
TOP = 10
DECISIONS_KEPT = 50
# Entity fields the feed reads, as the model declares them (tests/test_model_downstream.py
# checks these and the totals sample() sums): the finder's table ("id" and "version" are
# the entity's own) and the lists the trending counts follow.
FINDER_COLUMNS = ["id", "name", "email", "segments", "loyalty_tier", "lifetime_value",
                  "churn_risk", "version"]
TRENDING_FIELDS = ("recent_searches", "recent_views", "recent_orders")
GLOBAL_TOPS = {"products": "global:top_products", "categories": "global:top_categories",
               "searches": "global:trending_searches"}


@dataclass(frozen=True)
class Snapshot:
    """What the overview and the finder show, as of one sample."""

    at: float = 0.0  # time.time() of the sample
    counts: Mapping[str, int] = field(default_factory=dict)
    rates: Mapping[str, float] = field(default_factory=dict)
    total_rate: float = 0.0
    revenue_per_min: float = 0.0
    orders_per_min: float = 0.0
    customers: int = 0
    active: int = 0
    returns_rate: float = 0.0
    segments: Mapping[str, int] = field(default_factory=dict)
    trending: Mapping[str, list[tuple[str, int]]] = field(default_factory=dict)
    trending_source: str = "live"  # "live" (last five minutes) or "analytics" (closed window)
    decisions: tuple[dict[str, Any], ...] = ()
    dlq: int | None = None  # None: no Kafka to count them on
    late: int | None = None
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=FINDER_COLUMNS))
    analytics: Mapping[str, dict[str, Any]] = field(default_factory=dict)


class _Rolling:
    """Counts over the last ``span`` seconds, in buckets (cheap to add, cheap to expire)."""

    def __init__(self, span: float = TRENDING_S, bucket: float = BUCKET_S) -> None:
        self.span, self.bucket = span, bucket
        self._buckets: deque[tuple[float, Counter[str]]] = deque()
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1, now: float | None = None) -> None:
        now = time.time() if now is None else now
        start = now - now % self.bucket
        with self._lock:
            if not self._buckets or self._buckets[-1][0] != start:
                self._buckets.append((start, Counter()))
            self._buckets[-1][1][key] += n

    def top(self, n: int = TOP, now: float | None = None) -> list[tuple[str, int]]:
        now = time.time() if now is None else now
        total: Counter[str] = Counter()
        with self._lock:
            while self._buckets and self._buckets[0][0] < now - self.span:
                self._buckets.popleft()
            for _, c in self._buckets:
                total.update(c)
        return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


class Feed:
    """Samples one store for every session of this process (see the module doc)."""

    def __init__(self, store: EntityStore, settings: Settings | None = None,
                 period: float = PERIOD_S) -> None:
        self.store = store
        self.settings = settings
        self.period = period
        self.snapshot = Snapshot()
        self._meter = RateMeter()
        self._money = RateMeter(window=ACTIVE_S)
        self._changed: dict[str, tuple[int, float]] = {}  # id -> (version, when it moved)
        self._trending = {"products": _Rolling(), "categories": _Rolling(),
                          "searches": _Rolling()}
        self._seen_orders: deque[str] = deque(maxlen=10_000)
        self._decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        self._dead = {"dlq": 0, "late": 0}
        self._stop = threading.Event()
        self._subs = [
            store.subscribe(self._on_delta, fields=TRENDING_FIELDS),
            store.subscribe_lifecycle(self._on_decision, types=["decision"]),
        ]
        self._threads = [threading.Thread(target=self._run, name="c360-feed", daemon=True)]
        if settings is not None and settings.bootstrap:
            self._threads.append(threading.Thread(target=self._count_dead, daemon=True,
                                                  name="c360-feed-dlq"))
        self.sample()
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sampling and reading Kafka; returns once the threads have ended (the
        dead-letter consumer closed), so that the broker can be stopped after it."""
        self._stop.set()
        for sub in self._subs:
            sub.close()
        for t in self._threads:
            if t is not threading.current_thread() and t.is_alive():
                t.join(timeout)

    # -- sampling --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.sample()
            except Exception:  # a bad sample must not end the feed of every session
                log.exception("dashboard feed: sampling failed")

    def sample(self) -> Snapshot:
        now = time.time()
        counts = self.store.stream_counts()
        rates = self._meter.sample(counts, time.monotonic())
        customers = self.store.entities("customer")
        revenue = orders = returns = 0.0
        segments: Counter[str] = Counter()
        rows = []
        changed = self._changed
        for e in customers:
            eid, version = e["id"], e["version"]
            seen = changed.get(eid)
            if seen is None or seen[0] != version:
                changed[eid] = (version, now)
            revenue += e.get("orders_value") or 0.0
            orders += e.get("order_count") or 0
            returns += e.get("return_count") or 0
            segs = e.get("segments") or ()
            segments.update(segs)
            rows.append((eid, e.get("name") or "", e.get("email") or "", ", ".join(segs),
                         e.get("loyalty_tier") or "", round(e.get("lifetime_value") or 0.0, 2),
                         round(e.get("churn_risk") or 0.0, 3), version))
        money = self._money.sample({"revenue": round(revenue * 100), "orders": int(orders)},
                                   time.monotonic())
        analytics = {e["id"]: e for e in self.store.entities("global")}
        trending, source = self._tops(analytics, now)
        dead = dict(self._dead) if len(self._threads) > 1 else {"dlq": None, "late": None}
        self.snapshot = Snapshot(
            at=now, counts=counts, rates=rates, total_rate=sum(rates.values()),
            revenue_per_min=money.get("revenue", 0.0) * 60 / 100,
            orders_per_min=money.get("orders", 0.0) * 60,
            customers=len(customers),
            active=sum(1 for _, t in changed.values() if now - t <= ACTIVE_S),
            returns_rate=returns / orders if orders else 0.0,
            segments=dict(segments.most_common()), trending=trending, trending_source=source,
            decisions=tuple(self._decisions), dlq=dead["dlq"], late=dead["late"],
            table=pd.DataFrame(rows, columns=FINDER_COLUMNS), analytics=analytics,
        )
        return self.snapshot

    def _tops(self, analytics: Mapping[str, dict[str, Any]],
              now: float) -> tuple[dict[str, list[tuple[str, int]]], str]:
        # Closed five-minute windows of the dataflow's analytics are the reference figures;
        # until the first one closes (after the allowed lateness) the live count stands in.
        if all(analytics.get(g, {}).get("top") for g in GLOBAL_TOPS.values()):
            return {k: [(str(a), int(b)) for a, b in analytics[g]["top"]]
                    for k, g in GLOBAL_TOPS.items()}, "analytics"
        return {k: r.top(now=now) for k, r in self._trending.items()}, "live"

    # -- what the store does not keep ------------------------------------------------------
    def _on_delta(self, d: Delta) -> None:
        ch = d.changes
        if ch.get("recent_searches"):
            self._trending["searches"].add(str(ch["recent_searches"][0].get("query", "")))
        if ch.get("recent_views"):
            self._trending["products"].add(str(ch["recent_views"][0].get("product_id", "")))
        if ch.get("recent_orders"):
            order = ch["recent_orders"][0]
            oid = order.get("order_id")
            if oid and oid not in self._seen_orders:  # status changes repeat the order
                self._seen_orders.append(oid)
                for line in order.get("lines") or ():
                    if line.get("category"):
                        self._trending["categories"].add(line["category"],
                                                         line.get("quantity", 1))

    def _on_decision(self, e: Lifecycle) -> None:
        self._decisions.appendleft({"at": e.event_time, "customer": e.entity_id,
                                    "action": e.detail.get("action", ""),
                                    "reason": e.detail.get("reason", "")})

    def _count_dead(self) -> None:
        """Count the records of the dead-letter and late topics, from their beginning (the
        embedded broker's end offsets are wrong, so counting is the only honest way)."""
        from kafka import KafkaConsumer, TopicPartition

        assert self.settings is not None
        cat = Catalogue(self.settings.topic_prefix)
        topics = {cat.dlq_topic: "dlq", cat.late_topic: "late"}
        try:
            consumer = KafkaConsumer(**self.settings.kafka_python(), enable_auto_commit=False,
                                     auto_offset_reset="earliest")
        except Exception:
            log.exception("dashboard feed: cannot count dead letters")
            return
        with contextlib.closing(consumer):
            parts = []
            for topic in topics:
                for p in consumer.partitions_for_topic(topic) or ():
                    parts.append(TopicPartition(topic, p))
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            while not self._stop.is_set():
                for tp, records in consumer.poll(timeout_ms=500).items():
                    self._dead[topics[tp.topic]] += len(records)


_lock = threading.Lock()
# Keyed by the store itself (a store hashes by identity), not by id(store), which a later
# store can reuse once this one is gone. Held, not weak: a feed runs threads, so it lives
# until reset() stops it (one per live store of the process, which is one in practice).
_feeds: dict[EntityStore, Feed] = {}


def shared_feed(store: EntityStore, settings: Settings | None = None) -> Feed:
    """The one feed of ``store`` in this process (the first session starts it)."""
    with _lock:
        feed = _feeds.get(store)
        if feed is None:
            feed = _feeds[store] = Feed(store, settings)
        return feed


def reset() -> None:
    """Stop and forget every feed (tests)."""
    with _lock:
        feeds = list(_feeds.values())
        _feeds.clear()
    for f in feeds:
        f.stop()
