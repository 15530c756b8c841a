"""Event time you can trust (docs/event-time.md): the source's merge, deadline aging, and
whole runs on the real broker whose answers must not depend on how the topics arrived."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Producer

from c360.config import Settings
from c360.dev.simulator import Item, generate
from c360.entity.derive import EntityHooks
from c360.entity.logic import first_logic
from c360.entity.rules import CATALOG_READERS
from c360.entity.shard import Routed, Shard
from c360.entity.state import EntityState
from c360.model import events as ev
from c360.model.delta import Delta
from c360.model.events import Catalogue, encode
from c360.run.pipeline import Pipeline
from c360.store.memory import EntityStore
from c360.topics.admin import create_topics
from c360.topics.source import KafkaBatchSource, Merge, event_time_of

START = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
ENC = msgspec.json.Encoder(order="sorted")  # field order is not part of the answer


# -- reading event time ---------------------------------------------------------------------

def test_event_time_is_read_from_the_record_as_the_decoder_reads_it() -> None:
    e = ev.Payment(event_id="p1", event_time=START, customer_id="c1", order_id="o1",
                   payment_date=START, method="card", amount=1.0)
    assert event_time_of(encode(e)) == START.timestamp()
    assert event_time_of(b'{"a": 1, "event_time" : "2026-03-01T06:00:00-03:00"}') == \
        START.timestamp()
    for bad in (b"", b"{not json", b'{"event_time": 5}', b'{"event_time": "yesterday"}',
                b'{"event_time": "2026-03-01T09:00:00"}'):  # naive: the schema rejects it
        assert event_time_of(bad) is None, bad


# -- the merge, alone -------------------------------------------------------------------------

def _merged(topics: list[list[float]], order: list[int], *, idle_s: float = 60.0) -> list:
    """Feed each topic's (time) messages in offset order, topics interleaved as ``order``
    says (topic index per add), taking what the merge lets out after every add; then every
    topic reports its end and, once idle, the rest comes out."""
    m = Merge(len(topics), idle_s, align_max=1000)
    pos = [0] * len(topics)
    out: list = []
    for i in order:
        t = topics[i][pos[i]]
        m.add(i, t, (i, pos[i]))
        pos[i] += 1
        out += m.take(0.0, 1000)[0]
    for i in range(len(topics)):
        m.at_end(i, 0.0)
    out += m.take(idle_s, 1000)[0]
    return out


def test_the_merge_order_is_a_function_of_the_topics_contents() -> None:
    a = [1.0, 2.0, 2.0, 5.0, 3.0, 9.0]  # out of order within a topic: kept in offset order
    b = [0.5, 2.0, 7.0, 8.0]
    c = [4.0]
    topics = [a, b, c]
    one_by_one = [0] * len(a) + [1] * len(b) + [2] * len(c)
    interleaved = [1, 0, 2, 0, 1, 0, 0, 1, 1, 0, 0]
    reverse = [2] + [1] * len(b) + [0] * len(a)
    first = _merged(topics, one_by_one)
    assert first == _merged(topics, interleaved) == _merged(topics, reverse)
    assert [x for x in first if x[0] == 0] == [(0, i) for i in range(len(a))]  # offsets kept
    times = [topics[i][k] for i, k in first]
    # (time, topic) order among heads: 0.5 b, 1 a, 2 a, 2 b, 2 a, 4 c, 5 a, 3 a, 7 b, ...
    assert times == [0.5, 1.0, 2.0, 2.0, 2.0, 4.0, 5.0, 3.0, 7.0, 8.0, 9.0]


def test_an_idle_topic_stops_holding_the_merge_back_and_rejoins_with_data() -> None:
    m = Merge(2, idle_s=0.5, align_max=1000)
    m.add(0, 10.0, "a1")
    m.add(0, 11.0, "a2")
    assert m.take(0.0, 100)[0] == []  # topic 1 may still bring something earlier
    m.at_end(1, 0.0)
    assert m.take(0.4, 100)[0] == []  # at its end, but not for long enough
    assert m.take(0.5, 100)[0] == ["a1", "a2"]  # idle: no longer waited for
    m.add(1, 5.0, "b1")  # it wakes up (with an event older than what went out)
    m.add(0, 12.0, "a3")
    assert m.take(0.6, 100)[0] == ["b1"]  # then waits for topic 1 again
    m.at_end(1, 0.6)
    assert m.take(1.0, 100)[0] == []
    assert m.take(1.1, 100)[0] == ["a3"]


def test_at_the_end_of_input_a_topic_is_waited_for_only_until_it_reports_its_end() -> None:
    m = Merge(2, idle_s=60.0, align_max=1000)
    for k, t in enumerate([3.0, 1.0, 2.0]):
        m.add(0, t, k)
    assert m.take(0.0, 100)[0] == []
    assert m.take(0.0, 100, drain=True)[0] == []  # topic 1 may still bring earlier events
    m.at_end(1, 0.0)
    assert m.take(0.0, 100, drain=True)[0] == [0, 1, 2]


# -- the source on the real broker ------------------------------------------------------------

def _payment(n: int, t: datetime, customer: str = "c1") -> bytes:
    return encode(ev.Payment(event_id=f"{customer}-{n}", event_time=t, customer_id=customer,
                             order_id=f"o{n}", payment_date=t, method="card", amount=1.0))


def _read_all(part: Any, until: int, timeout: float = 60.0) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while sum(len(p.msgs) for p in out) < until and time.monotonic() < deadline:
        out += part.next_batch()
        time.sleep(0.005)
    return out


def test_a_lagging_topic_pauses_the_others_and_nothing_is_lost(settings: Settings) -> None:
    """Topic A holds a day of events, B nothing yet: B holds the merge back, so A is read
    up to the alignment bound and paused; B's events (a day older) then come out first,
    then (B idle) A resumes, and every record comes out once, in (event time, topic)
    order."""
    a, b = f"{settings.topic_prefix}lag.a", f"{settings.topic_prefix}lag.b"
    create_topics(replace(settings, partitions=1), [a, b])
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    day = START + timedelta(days=1)
    for n in range(300):
        producer.produce(a, _payment(n, day + timedelta(seconds=n)), partition=0)
    producer.flush()
    # B is given up on 10 s after its end: long after A is paused (well under a second
    # here), and once B's events are out, A's come after them.
    source = KafkaBatchSource(settings.librdkafka(), [a, b], partition_idle=10.0,
                              align_max=40, batch_size=25)
    [name] = source.list_parts()
    part = source.build_part("test", name, None)
    try:
        deadline = time.monotonic() + 60
        emitted = []
        while part.paused() != [a] and time.monotonic() < deadline:
            emitted += part.next_batch()
            time.sleep(0.005)
        assert part.paused() == [a]  # A is at its bound: paused, not read on
        assert sum(len(p.msgs) for p in emitted) == 0  # B may still bring earlier events
        for n in range(100):
            producer.produce(b, _payment(n, START + timedelta(seconds=n), "c2"), partition=0)
        producer.flush()
        emitted += _read_all(part, 400)
        msgs = [m for p in emitted for m in p.msgs]
        times = [t for p in emitted for t in p.times]
        assert len(msgs) == 400
        assert [m.offset() for m in msgs if m.topic() == a] == list(range(300))
        assert [m.offset() for m in msgs if m.topic() == b] == list(range(100))
        assert [m.topic() for m in msgs[:100]] == [b] * 100  # a day older: first
        assert times == sorted(times)
        assert part.paused() == []
        # The partition's clock and the offsets a snapshot keeps: emitted messages only.
        assert emitted[-1].end_clock() == (day + timedelta(seconds=299)).timestamp()
        snap = part.snapshot()
        assert (snap[a], snap[b]) == (300, 100)
    finally:
        part.close()


def test_a_resumed_source_reads_the_buffered_messages_again(settings: Settings) -> None:
    """What the merge held back was not counted in the snapshot: a source resumed from it
    emits exactly what the first one would have emitted next."""
    a, b = f"{settings.topic_prefix}res.a", f"{settings.topic_prefix}res.b"
    create_topics(replace(settings, partitions=1), [a, b])
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    for n in range(50):
        producer.produce(a, _payment(n, START + timedelta(seconds=2 * n)), partition=0)
    for n in range(20):
        producer.produce(b, _payment(n, START + timedelta(seconds=2 * n + 1), "c2"),
                         partition=0)
    producer.flush()

    def source() -> KafkaBatchSource:
        return KafkaBatchSource(settings.librdkafka(), [a, b], partition_idle=0.2,
                                batch_size=10)

    first = source()
    [name] = first.list_parts()
    part = first.build_part("test", name, None)
    head = _read_all(part, 30)
    snap = part.snapshot()
    rest_first = _read_all(part, 70 - sum(len(p.msgs) for p in head))
    part.close()
    again = source()
    again.list_parts()
    resumed = again.build_part("test", name, snap)
    rest_again = _read_all(resumed, len([m for p in rest_first for m in p.msgs]))
    resumed.close()

    def key(items: list) -> list:
        return [(m.topic(), m.offset()) for p in items for m in p.msgs]

    assert len(key(head)) + len(key(rest_first)) == 70
    assert key(rest_again) == key(rest_first)
    assert rest_again[0].clock == rest_first[0].clock  # the clock came back with the offsets


# -- aging by deadlines -----------------------------------------------------------------------

def _customer() -> tuple[EntityState, EntityHooks]:
    hooks = EntityHooks(allowed_lateness=timedelta(hours=1))
    shard = Shard(hooks)
    t = START
    events: list[tuple[str, ev.Event]] = [
        ("payments", ev.Payment(event_id="p1", event_time=t, customer_id="c", order_id="o1",
                                payment_date=t, method="card", amount=40.0)),
        ("search", ev.Search(event_id="s1", event_time=t, customer_id="c", event_type="view",
                             product_id="p", category="books", brand="acme")),
        ("social", ev.Social(event_id="x1", event_time=t, customer_id="c", event_type="post",
                             details="nice", sentiment=0.5)),
        ("orders", ev.Order(event_id="o1", event_time=t, customer_id="c", order_id="o1",
                            order_date=t, status="created", total_amount=40.0,
                            lines=[ev.OrderLine("p", category="books", brand="acme")])),
    ]
    for n, (stream, e) in enumerate(events):
        shard.apply([Routed(stream, "customer", "c", e, (stream, 0, n))], first_logic)
    return shard.entities["c"], hooks


def _aged(*to: timedelta) -> dict:
    state, hooks = _customer()
    for dt in to:
        state.windows.swept = (START + dt).timestamp()
        hooks.sweep(state, START + dt, [], final=True)
    return dict(state.fields)


def test_aging_to_t1_then_t2_is_aging_to_t2() -> None:
    for t1, t2 in ((timedelta(days=3), timedelta(days=40)),
                   (timedelta(hours=30), timedelta(days=95)),
                   (timedelta(days=91), timedelta(days=800))):
        direct = _aged(t2)
        assert _aged(t1, t2) == direct, (t1, t2)
        assert _aged(t1, t1 + timedelta(days=1), t2) == direct
    late = _aged(timedelta(days=40))
    assert late["spend_30d"] == 0 and "dormant" in late["segments"]
    # Published as of the start of the day aged to: 39 days 15 hours after the view and
    # the order (weights 1 + 3).
    days = (timedelta(days=40) - timedelta(hours=9)) / timedelta(days=1)
    assert late["category_affinity"]["books"] == round(4 * 0.5 ** (days / 14), 4)


def test_quiet_customers_are_aged_at_their_deadlines_in_order() -> None:
    """Events carry their partition's watermark; the shard ages each customer at 1, 7, 30
    and 90 days after its latest event, to the deadline itself, before applying the event
    whose watermark passes it, whatever the batches."""
    def run(batch_size: int) -> list:
        shard = Shard(EntityHooks(allowed_lateness=timedelta(hours=1)))
        items = []
        for n, cid in enumerate(("a", "b")):
            t = START + timedelta(hours=n)
            items.append(Routed("payments", "customer", cid, ev.Payment(
                event_id=f"{cid}0", event_time=t, customer_id=cid, order_id="o",
                payment_date=t, method="card", amount=5.0), ("t", 0, n), t.timestamp() - 3600))
        for day in range(1, 120):
            t = START + timedelta(days=day)
            items.append(Routed("location", "customer", "busy", ev.Location(
                event_id=f"l{day}", event_time=t, customer_id="busy", latitude=1,
                longitude=1), ("t", 0, 1 + day), (t - timedelta(days=1)).timestamp()))
        out = []
        for i in range(0, len(items), batch_size):
            deltas, _ = shard.apply(items[i:i + batch_size], first_logic)
            out += [d for d in deltas if isinstance(d, Delta)]
        return out

    one = run(1)
    assert [(d.entity_id, d.version, d.event_time, d.stream, d.changes) for d in one
            if d.entity_id != "busy"] == \
        [(d.entity_id, d.version, d.event_time, d.stream, d.changes) for d in run(17)
         if d.entity_id != "busy"]
    aged = [(d.entity_id, d.event_time - START) for d in one
            if d.stream == "relevance" and d.entity_id in ("a", "b")]
    assert aged == [(cid, timedelta(days=k, hours=h)) for k in (1, 7, 30, 90)
                    for cid, h in (("a", 0), ("b", 1))]


# -- whole runs on the real broker ------------------------------------------------------------

def _fresh(settings: Settings, **changes: Any) -> Settings:
    s = replace(settings, topic_prefix=f"t{uuid.uuid4().hex[:8]}.", **changes)
    cat = Catalogue(s.topic_prefix)
    create_topics(s, [*cat.input_topics, cat.dlq_topic, cat.late_topic, cat.decisions_topic])
    return s


def _produce(settings: Settings, items: list[Item], pace: float = 0.0) -> None:
    """Send ``items`` in this order, keyed like the simulator (murmur2, as kafka-python)."""
    cat = Catalogue(settings.topic_prefix)
    producer = Producer({"bootstrap.servers": settings.bootstrap,
                         "partitioner": "murmur2_random", "linger.ms": 5})
    for n, (stream, key, event) in enumerate(items):
        producer.produce(cat.topic(stream), encode(event), key.encode())
        if pace and n % 50 == 49:
            producer.poll(0)
            time.sleep(pace)
    producer.flush()


def _answer(store: EntityStore) -> tuple[list[bytes], list[bytes]]:
    """Every entity, versions and decisions included, and the global windows: bytes.
    (Decisions of the rules that read another partition's products through the shared
    catalogue are left out: their inputs are not ordered by event time.)"""
    entities = sorted((e for e in store.entities(None) if e["kind"] != "global"),
                      key=lambda e: e["id"])
    for e in entities:
        if "decisions" in e:
            kept = [d for d in e["decisions"] or () if d["rule"] not in CATALOG_READERS]
            if kept:
                e["decisions"] = kept
            else:
                del e["decisions"]
    globals_ = sorted((e for e in store.entities("global")), key=lambda e: e["id"])
    return [ENC.encode(e) for e in entities], [ENC.encode(e) for e in globals_]


def _items(n: int, tick: timedelta) -> list[Item]:
    return list(islice(generate(40, 11, START, tick=tick), n))


def _lagging(items: list[Item], stream: str, lag: timedelta) -> list[Item]:
    """The same events, sent as if ``stream``'s producer ran ``lag`` of event time behind
    the others: each of its events goes out once the others have sent past its time plus
    ``lag`` (by the running maximum, so that every topic keeps its order)."""
    clock = []  # the others' running maximum event time, per position
    high = None
    for it in items:
        if it[0] != stream and (high is None or it[2].event_time > high):
            high = it[2].event_time
        clock.append(high)
    keyed = []
    mine = None
    j = 0
    for n, it in enumerate(items):
        if it[0] != stream:
            keyed.append((n, 0, n, it))
            continue
        mine = it[2].event_time if mine is None else max(mine, it[2].event_time)
        while j < len(items) and (clock[j] is None or clock[j] < mine + lag):
            j += 1
        keyed.append((max(j, n), 1, n, it))
    return [it for *_, it in sorted(keyed, key=lambda k: k[:3])]


def test_the_same_events_in_any_arrival_order_give_the_same_answer(
        settings: Settings, tmp_path: Path) -> None:
    """Topics filled one after the other, or interleaved in event time, or with one stream
    a day behind: the same export, versions and decisions included, and the same global
    windows (with 1 and 2 workers)."""
    items = _items(4_000, timedelta(seconds=60))  # ~2.8 days of event time
    orders: dict[str, list[Item]] = {}
    for it in items:
        orders.setdefault(it[0], []).append(it)
    by_topic = [it for stream in sorted(orders, reverse=True) for it in orders[stream]]
    answers = []
    for order, workers in ((items, 1), (by_topic, 1), (_lagging(items, "orders",
                                                                  timedelta(days=1)), 2)):
        s = _fresh(settings)
        _produce(s, order)
        pipeline = Pipeline(s, EntityStore(), idle_timeout=3, workers=workers)
        pipeline.run()
        end = max(it[2].event_time for it in items)
        assert pipeline.as_of == pipeline.store.as_of == end  # the run says what it is as of
        export = pipeline.store.export(tmp_path / f"{len(answers)}.jsonl")
        rows = [msgspec.json.decode(line) for line in export.read_bytes().splitlines()]
        assert rows and {r["as_of"] for r in rows} == {end.isoformat().replace("+00:00", "Z")}
        answers.append(_answer(pipeline.store))
    entities, globals_ = answers[0]
    assert len(entities) > 40 and len(globals_) == 7
    assert any(b'"decisions":[{' in e for e in entities)  # decisions are compared too
    assert answers[1] == answers[0]
    assert answers[2] == answers[0]


def test_a_live_producer_ten_minutes_behind_gives_the_in_step_answer(
        settings: Settings) -> None:
    """The dataflow runs while the simulator's events are produced: once in step, once with
    the orders stream's producer 10 minutes of event time behind the others. Topic
    partitions are paused past 50 buffered messages, so the lagging stream is waited for
    with bounded buffers; both runs give the same entities and global windows."""
    items = _items(3_000, timedelta(seconds=2))  # 100 minutes of event time
    answers = []
    for order in (items, _lagging(items, "orders", timedelta(minutes=10))):
        # A topic partition is given up on after 10 s at its end: far more than any gap of
        # a producer sending every few milliseconds (the default, 0.5 s, trades that margin
        # for latency; see docs/event-time.md).
        s = _fresh(settings, partition_idle_ms=10_000, align_max=50)
        pipeline = Pipeline(s, EntityStore(), idle_timeout=4)
        pipeline.start()
        producer = threading.Thread(target=_produce, args=(s, order, 0.1))
        producer.start()
        producer.join(120)
        assert pipeline._thread is not None
        pipeline._thread.join(180)
        assert not pipeline.alive() and pipeline.error is None
        answers.append(_answer(pipeline.store))
    entities, globals_ = answers[0]
    assert len(entities) > 40 and len(globals_) == 7
    assert answers[1] == answers[0]
