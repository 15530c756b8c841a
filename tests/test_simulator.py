"""The simulated retailer: deterministic, complete, shop-like, and end to end on Kafka."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from itertools import islice

import pytest

from c360.config import REPO_ROOT, Settings
from c360.dev.simulator import (
    CITIES,
    FLAT_OUT_TICK,
    Item,
    _km,
    backfill,
    generate,
    history,
    simulate,
)
from c360.entity.logic import first_logic
from c360.entity.shard import Routed, Shard
from c360.errors import ConfigError
from c360.model import events as ev
from c360.model.delta import Delta
from c360.model.events import Catalogue, encode
from c360.run.pipeline import Pipeline, run_until_idle

START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
CAT = Catalogue()


def take(n: int, customers: int = 50, seed: int = 1, start: datetime = START) -> list[Item]:
    return list(islice(generate(customers, seed, start), n))


@pytest.fixture(scope="module")
def story() -> list[Item]:
    """20,000 events of a 50-customer shop."""
    return take(20_000)


def originals(items: list[Item]) -> list[tuple[int, Item]]:
    """(position, item) of every event but the deliberate duplicates."""
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        if item[2].event_id not in seen:
            seen.add(item[2].event_id)
            out.append((i, item))
    return out


def of(items: list[Item], stream: str) -> list[tuple[int, ev.Event]]:
    return [(i, e) for i, (s, _, e) in originals(items) if s == stream]


def applied_changes(items: list[Item]) -> int:
    """How many deltas the pipeline's own fold makes of these events."""
    routed = [Routed(s, CAT.by_name[s].entity_kind, key, e, ("", 0, i))
              for i, (s, key, e) in enumerate(items)]
    deltas, failed = Shard().apply(routed, first_logic)
    assert failed == []
    return sum(isinstance(d, Delta) for d in deltas)


# -- determinism -------------------------------------------------------------------------------

def test_the_same_seed_and_start_give_the_same_events_and_another_seed_does_not() -> None:
    first = take(5_000, seed=7)
    assert take(5_000, seed=7) == first
    other = take(5_000, seed=8)
    assert other != first
    assert sum(a == b for a, b in zip(first, other, strict=True)) < 100
    # Another start shifts the clock and changes the run's ids, so runs never pass for duplicates.
    later = take(200, seed=7, start=START + timedelta(hours=1))
    assert later[0][2].event_time == START + timedelta(hours=1)
    assert {e.event_id for _, _, e in later}.isdisjoint(e.event_id for _, _, e in first)


# -- completeness ------------------------------------------------------------------------------

def test_every_stream_appears_early_and_every_event_round_trips(story: list[Item]) -> None:
    early = take(3_000, customers=20, seed=3)
    assert {s for s, _, _ in early} == set(CAT.by_name)
    for stream, key, event in story:
        topic = CAT.topic(stream)
        assert CAT.decode(topic, encode(event)) == event
        assert key == getattr(event, CAT.by_name[stream].key_field)


def test_the_shop_opens_with_its_catalogue_and_stock(story: list[Item]) -> None:
    products = [e for s, _, e in story[:50]]
    assert all(isinstance(p, ev.Product) for p in products)
    assert len({p.product_id for p in products}) == 50
    assert {"raincoats", "umbrellas"} <= {p.subcategory for p in products}
    assert all(p.price > 0 and p.discount < p.price for p in products)
    stock = [e for s, _, e in story[50:100]]
    assert all(isinstance(s, ev.Inventory) and 3 <= len(s.stock) <= 5 for s in stock)


def test_customers_sign_up_with_their_details_first(story: list[Item]) -> None:
    first_stream: dict[str, str] = {}
    per_customer: dict[str, Counter[str]] = defaultdict(Counter)
    for _, (stream, key, _) in originals(story):
        if CAT.by_name[stream].entity_kind == "customer":
            first_stream.setdefault(key, stream)
            per_customer[key][stream] += 1
    assert sorted(first_stream) == [f"cust-{i:05d}" for i in range(1, 51)]
    assert set(first_stream.values()) == {"customer_details"}
    for counts in per_customer.values():
        assert counts["tp_demographics"] == counts["tp_psychographics"] == 1
        assert 1 <= counts["tp_purchases"] <= 3
    details = [e for _, e in of(story, "customer_details")]
    signups = [d for d in details if d.name is not None]
    assert len(signups) == 50
    assert all("@" in d.email and d.phone.startswith("+") and d.address.city for d in signups)
    assert len(details) > 50  # and some of them update their details later


# -- behaviour ---------------------------------------------------------------------------------

def test_orders_are_paid_in_full_earn_points_and_move_through_their_statuses(
        story: list[Item]) -> None:
    placed: dict[str, tuple[int, ev.Order]] = {}
    statuses: dict[str, list[str]] = defaultdict(list)
    for i, o in of(story, "orders"):
        if o.order_id not in placed:
            assert o.status == "created"
            expected = sum(line.quantity * (line.price - line.discount) for line in o.lines)
            assert o.total_amount == pytest.approx(expected, abs=0.005)
            placed[o.order_id] = (i, o)
        else:
            first = placed[o.order_id][1]
            assert (o.customer_id, o.total_amount, o.lines) == (
                first.customer_id, first.total_amount, first.lines)
        statuses[o.order_id].append(o.status)
    assert len(placed) > 100
    assert {tuple(s) for s in statuses.values()} <= {
        ("created",), ("created", "shipped"), ("created", "shipped", "delivered"),
        ("created", "canceled")}
    assert sum(s[-1] == "delivered" for s in statuses.values()) > 50

    paid: dict[str, float] = defaultdict(float)
    for i, p in of(story, "payments"):
        j, order = placed[p.order_id]  # a payment never comes before its order
        assert j < i and order.customer_id == p.customer_id
        paid[p.order_id] += p.amount
    settled = [o for j, o in placed.values() if j < len(story) - 1_000]
    for o in settled:
        assert round(paid[o.order_id], 2) == o.total_amount

    earned = {e.reason.removeprefix("order "): e.points_earned
              for _, e in of(story, "loyalty") if e.reason.startswith("order ")}
    for o in settled:
        assert earned[o.order_id] == max(1, int(o.total_amount))
    balance: Counter[str] = Counter()
    for _, e in of(story, "loyalty"):
        balance[e.customer_id] += e.points_earned - e.points_redeemed
        assert balance[e.customer_id] >= 0


def test_returns_and_reviews_follow_deliveries(story: list[Item]) -> None:
    delivered: dict[str, tuple[int, ev.Order]] = {}
    for i, o in of(story, "orders"):
        if o.status == "delivered":
            delivered[o.order_id] = (i, o)
    returns, reviews = of(story, "returns"), of(story, "reviews")
    assert returns and len(reviews) > len(returns)
    for i, r in [*returns, *reviews]:
        j, order = delivered[r.order_id]
        assert j < i and order.customer_id == r.customer_id
        assert r.product_id in {line.product_id for line in order.lines}
    ratings = Counter(r.rating for _, r in reviews)
    assert ratings[5] > ratings[1] > 0


def test_carts_and_wishlists_only_change_when_something_changes(story: list[Item]) -> None:
    wishlist: dict[str, set[str]] = defaultdict(set)
    for _, w in of(story, "wishlist"):
        mine = wishlist[w.customer_id]
        if w.action == "added":
            assert w.product_id not in mine
            mine.add(w.product_id)
        else:
            assert w.product_id in mine
            mine.remove(w.product_id)
    kinds = Counter(e.event_type for _, e in of(story, "search"))
    assert kinds["search"] > 0 and kinds["view"] > kinds["add_to_cart"] > kinds["remove_from_cart"]
    assert any(e.results == 0 for _, e in of(story, "search") if e.event_type == "search")


def test_stock_sells_out_and_comes_back(story: list[Item]) -> None:
    totals: dict[str, list[int]] = defaultdict(list)
    for _, inv in of(story, "inventory"):
        assert all(s.quantity >= 0 for s in inv.stock)
        totals[inv.product_id].append(sum(s.quantity for s in inv.stock))
    back = [p for p, t in totals.items()
            if any(a > 0 and b == 0 for a, b in zip(t, t[1:], strict=False))
            and any(a == 0 and b > 0 for a, b in zip(t, t[1:], strict=False))]
    assert len(back) >= 5


def test_people_move_around_their_city_under_its_weather(story: list[Item]) -> None:
    home = {d.customer_id: d.address.city for _, d in of(story, "customer_details") if d.address}
    centre = {c.name: c for c in CITIES}
    for _, loc in of(story, "location"):
        assert loc.city == home[loc.customer_id]
        city = centre[loc.city]
        assert _km(loc.latitude, loc.longitude, city.lat, city.lon) < 25
    weather = [w for _, w in of(story, "weather")]
    assert {"observation", "forecast"} == {w.event_type for w in weather}
    assert "rain" in {w.condition for w in weather if w.event_type == "forecast"}
    for _, happening in of(story, "physical_events"):
        assert happening.distance_km < 30 and happening.starts_at > happening.event_time
    assert {s.event_type for _, s in of(story, "social")} == {"post", "mention", "like"}


def test_a_few_events_are_late_or_duplicated(story: list[Item]) -> None:
    first: dict[str, Item] = {}
    duplicates = late = 0
    for i, item in enumerate(story):
        event = item[2]
        earlier = first.get(event.event_id)
        if earlier is not None:  # a re-send: the very same event
            assert earlier == item
            duplicates += 1
            continue
        first[event.event_id] = item
        clock = START + FLAT_OUT_TICK * i
        if event.event_time == clock:
            continue
        # late: minutes before the clock, so before the events produced just before it
        assert clock - timedelta(minutes=16) < event.event_time < clock - timedelta(seconds=59)
        assert event.event_time < START + FLAT_OUT_TICK * (i - 1)
        late += 1
    assert 0.003 < duplicates / len(story) < 0.008
    assert 0.006 < late / len(story) < 0.015


def test_event_times_follow_the_tick() -> None:
    tick = timedelta(milliseconds=250)
    items = list(islice(generate(10, 5, START, tick=tick), 400))
    on_time = [i for i, (_, _, e) in enumerate(items) if e.event_time == START + tick * i]
    assert len(on_time) > 380


# -- on Kafka ----------------------------------------------------------------------------------

def test_end_to_end_every_event_reaches_its_entity(settings: Settings) -> None:
    report = simulate(settings, customers=50, rate=0, events=3_000, seed=1, progress=False,
                      start=START)
    assert report.events == 3_000 and report.elapsed > 0 and report.rate > 0
    assert all(report.per_stream.values())
    store = run_until_idle(2, settings)

    customers = store.entities("customer")
    assert len(customers) == 50
    assert store.count("product") == 50
    assert set(store.events_by_stream) == set(CAT.by_name)
    for field in ("name", "email", "address", "demographics", "psychographics", "tp_spend"):
        assert all(field in c for c in customers), field
    for field in ("order_count", "total_spent", "loyalty_points", "location", "weather",
                  "recent_searches", "recent_views", "social_sentiment", "wishlist"):
        assert sum(field in c for c in customers) >= 10, field

    # Every distinct event is one version of its entity; duplicates are none.
    versions = sum(e["version"] for e in store.entities(None)
                   if e["kind"] != "global")  # global analytics count windows, not events
    assert versions == applied_changes(take(3_000)) == report.events - report.duplicates


def test_it_paces_and_stops_when_told(settings: Settings) -> None:
    # Pacing is judged by what it guarantees whatever the load: event n is never sent before
    # n / rate seconds (a busy machine only makes it later). A count within a wall-clock second
    # (300..420 events) failed at random on the loaded 2-core CI machine.
    paced = simulate(settings, customers=10, rate=400, events=200, seed=2, progress=False)
    assert paced.events == 200
    assert paced.elapsed >= 199 / 400 - 0.001
    timed = simulate(settings, customers=10, rate=400, duration=0.5, seed=2, progress=False)
    # Never ahead of the schedule, and no event due at or after 0.5 s: events 0..199 at
    # most, however busy the machine (a late loop sends fewer, never more).
    assert 0 < timed.events <= 0.5 * 400
    assert timed.elapsed >= 0.5 - 1 / 400

    # Unpaced and open-ended, it runs until told to stop, and then stops. (How many events
    # it sends in 0.5 s is the machine's business: 613 on the loaded CI machine, where a
    # bound of 1,000 failed.)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    open_ended = simulate(settings, customers=10, rate=0, seed=2, progress=False, stop=stop)
    assert stop.is_set() and open_ended.events > 0
    assert open_ended.events == sum(open_ended.per_stream.values())


def test_the_cli_simulates_into_the_configured_topics(settings: Settings) -> None:
    env = {**os.environ, "C360_TOPIC_PREFIX": settings.topic_prefix}
    env.pop("C360_KAFKA_BOOTSTRAP", None)
    done = subprocess.run(
        [sys.executable, "-m", "c360", "simulate", "--customers", "20", "--events", "500",
         "--rate", "0", "--seed", "3", "--bootstrap", settings.bootstrap, "--quiet"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # --quiet
    store = run_until_idle(1, settings)
    assert store.count("customer") == 20
    assert sum(store.events_by_stream.values()) > 400


# -- a shop with a past ------------------------------------------------------------------------

def test_a_history_spans_its_days_in_event_time_order_with_signups_along_the_way() -> None:
    sim = history(60, 7, end=START, days=90, events=9_000)
    items = list(islice(sim, 9_000))
    times = [e.event_time for _, _, e in items]
    assert times[0] == START - timedelta(days=90)
    assert START - timedelta(hours=1) < times[-1] < START
    assert sim.late == sim.duplicates == 0
    assert len({e.event_id for _, _, e in items}) == len(items), "no duplicates"
    by_stream: defaultdict[str, list[datetime]] = defaultdict(list)
    for stream, _, e in items:
        by_stream[stream].append(e.event_time)
    for stream, ts in by_stream.items():
        assert ts == sorted(ts), f"{stream} is not in event-time order"
    signups = {e.customer_id: e.event_time for s, _, e in items
               if s == "customer_details" and e.name}
    assert len(signups) == 60
    # 40% were customers before (they show up in the first days), the others sign up evenly.
    early = sum(t < START - timedelta(days=85) for t in signups.values())
    recent = sum(t > START - timedelta(days=30) for t in signups.values())
    assert 24 <= early <= 28 and 8 <= recent <= 16, (early, recent)

    # The same world goes on on a live clock: same customers, times from the new start.
    live_start = START + timedelta(minutes=5)
    sim.retime(live_start, timedelta(milliseconds=5))
    sim.imperfect = True
    more = list(islice(sim, 2_000))
    assert more[0][2].event_time == live_start
    assert {k for s, k, _ in more if CAT.by_name[s].entity_kind == "customer"} <= set(signups)
    assert not {e.event_id for _, _, e in more} & {e.event_id for _, _, e in items}
    with pytest.raises(ConfigError, match="time only moves forward"):
        sim.retime(START, timedelta(seconds=1))


def test_backfill_gives_the_store_a_past_then_the_shop_goes_on_live(settings: Settings) -> None:
    pipeline = Pipeline(settings).start()
    try:
        store = pipeline.store
        sim = backfill(settings, customers=60, events=9_000, store=store, end=START)
        customers = store.entities("customer")
        assert len(customers) == 60
        segments = Counter(s for c in customers for s in c.get("segments") or ())
        assert {"vip", "new", "bargain_hunter"} <= set(segments), segments
        assert segments["new"] < 40, "not every customer is new"
        differ = [c["id"] for c in customers
                  if round(c.get("lifetime_value", 0) - c.get("spend_30d", 0), 2)]
        assert len(differ) >= 20, "lifetime value differs from the last 30 days' spend"
        assert sum(c.get("spend_30d", 0) != c.get("spend_7d", 0) for c in customers) >= 10
        first_seen = sorted(c["first_seen"] for c in customers)
        assert first_seen[0] < START - timedelta(days=85) < START - timedelta(days=30) \
            < first_seen[-1]

        report = simulate(settings, customers=60, rate=0, events=500, progress=False,
                          simulation=sim, start=START + timedelta(minutes=1))
        assert report.events == 500
        store.wait_until(lambda s: max(c["last_seen"] for c in s.entities("customer"))
                         >= START + timedelta(minutes=1), timeout=60,
                         what="the live events after the backfill")
        assert store.count("customer") == 60, "live goes on with the same customers"
    finally:
        pipeline.stop(30)
