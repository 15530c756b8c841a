"""The customer-360 dataflow on in-memory sources: folding, versions, workers, dead letters."""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict

import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main

from c360.store.memory import EntityStore
from dataflows.graph import build_flow
from dataflows.steps import StoreSink
from tests.factories import CAT, batches, by_id, message, mixed_events, raw_message, run


def kafka_msgs() -> list:
    # Offsets grow per (stream) topic as they would in Kafka.
    offsets: dict[str, int] = defaultdict(int)
    out = []
    for stream, event in mixed_events():
        out.append(message(CAT, stream, event, offsets[stream]))
        offsets[stream] += 1
    return out


def test_entities_fold_every_stream_without_a_join() -> None:
    events = mixed_events()
    store, dlq = run(kafka_msgs(), workers=1)
    assert dlq == []
    cust = store["cust-007"]
    mine = {e.event_id: (s, e) for s, e in events if e.customer_id == "cust-007"}
    orders = [e for s, e in mine.values() if s == "orders"]
    payments = [e for s, e in mine.values() if s == "payments"]
    reviews = [e for s, e in mine.values() if s == "reviews"]
    assert cust["order_count"] == len(orders)
    assert cust["items_bought"] == 2 * len(orders)
    assert cust["total_spent"] == pytest.approx(sum(p.amount for p in payments), abs=0.005)
    assert cust["lifetime_value"] == cust["total_spent"]
    assert cust["avg_review_score"] == pytest.approx(
        sum(r.rating for r in reviews) / len(reviews))
    assert cust["last_seen"] == max(e.event_time for _, e in mine.values())
    assert cust["location"]["city"] == "Sao Paulo"
    assert cust["loyalty_tier"] in {"bronze", "silver", "gold", "platinum"}
    # One version per applied (distinct) event: duplicates do not count.
    assert cust["version"] == len(mine)


def test_two_workers_give_exactly_the_entities_of_one() -> None:
    msgs = kafka_msgs()
    one, _ = run(msgs, workers=1)
    two, _ = run(msgs, workers=2)
    assert len(one) == 30
    assert by_id(one) == by_id(two)


def test_versions_grow_by_one_per_change_in_order() -> None:
    store = EntityStore()
    seen: dict[str, list[int]] = defaultdict(list)
    sub = store.subscribe(lambda d: seen[d.entity_id].append(d.version))
    dlq: list = []
    flow = build_flow(TestingSource(batches(kafka_msgs(), 5)), StoreSink(store), TestingSink(dlq),
                      catalogue=CAT)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    deadline = time.monotonic() + 5
    while sum(map(len, seen.values())) < sum(e["version"] for e in store.entities()) and \
            time.monotonic() < deadline:
        time.sleep(0.01)
    sub.close()
    for cid, versions in seen.items():
        assert versions == list(range(1, store[cid]["version"] + 1)), cid


def test_bad_events_go_to_the_dead_letter_sink_with_reasons() -> None:
    good = kafka_msgs()[:20]
    orders = CAT.topic("orders")
    bad = [
        raw_message(orders, b"{not json", 100),
        raw_message(orders, b'{"event_id": "x", "event_time": "2026-01-01T00:00:00Z"}', 101),
        raw_message(orders, b"", 102),
        raw_message("c360.nope", b"{}", 5),
        raw_message(CAT.ingest_topic, b'{"stream": "telepathy", "event_id": "x"}', 6),
        raw_message(orders, b"x" * 2_000_001, 103),
    ]
    store, dlq = run(good[:10] + bad + good[10:], workers=2)
    reasons = {json.loads(m.value)["offset"]: json.loads(m.value)["reason"] for m in dlq}
    assert len(dlq) == len(bad)
    assert reasons[100].startswith("malformed JSON")
    assert "missing required field `customer_id`" in reasons[101]
    assert reasons[102] == "empty message"
    assert reasons[5].startswith("unknown stream")
    assert reasons[6].startswith("unknown stream 'telepathy'")
    assert reasons[103].startswith("payload too large")
    record = next(json.loads(m.value) for m in dlq if json.loads(m.value)["offset"] == 100)
    assert base64.b64decode(record["raw_base64"]) == b"{not json"
    assert record["topic"] == orders
    clean, _ = run(good, workers=1)
    assert by_id(store) == by_id(clean)  # every good one applied, as without the bad ones


def test_a_failing_rule_sends_the_event_to_dead_letters_and_the_flow_goes_on() -> None:
    def broken(fields, changes, event):
        if "loyalty_points" in changes:
            raise ValueError("boom")
        return None

    store = EntityStore()
    dlq: list = []
    msgs = kafka_msgs()
    flow = build_flow(TestingSource(batches(msgs, 9)), StoreSink(store), TestingSink(dlq),
                      catalogue=CAT, logic=broken)
    cluster_main(flow, [], 0, worker_count_per_proc=1)
    loyalty = {e.event_id for s, e in mixed_events() if s == "loyalty" and e.points_earned}
    reasons = [json.loads(m.value)["reason"] for m in dlq]
    assert len(dlq) == len(loyalty)
    assert all("ValueError: boom" in r for r in reasons)
    assert store["cust-001"]["order_count"] >= 1


def test_late_readings_do_not_replace_newer_ones_and_returns_update_in_place() -> None:
    from c360.model import events as ev
    from tests.factories import at

    cid = "cust-late"
    seq = [
        ("location", ev.Location(event_id="l2", event_time=at(200), customer_id=cid,
                                 latitude=2, longitude=2, city="new")),
        ("location", ev.Location(event_id="l1", event_time=at(100), customer_id=cid,
                                 latitude=1, longitude=1, city="old")),
        ("returns", ev.Return(event_id="r1", event_time=at(300), customer_id=cid, return_id="R",
                              order_id="o", product_id="p", status="requested")),
        ("returns", ev.Return(event_id="r2", event_time=at(400), customer_id=cid, return_id="R",
                              order_id="o", product_id="p", status="approved")),
        ("search", ev.Search(event_id="s1", event_time=at(500), customer_id=cid,
                             event_type="add_to_cart", product_id="p1")),
        ("orders", ev.Order(event_id="o1", event_time=at(600), customer_id=cid, order_id="o1",
                            order_date=at(600), status="created", total_amount=5,
                            lines=[ev.OrderLine("p1")])),
        # Read after the order from its own topic, but added before it: stays out of the cart.
        ("search", ev.Search(event_id="s0", event_time=at(550), customer_id=cid,
                             event_type="add_to_cart", product_id="p1")),
    ]
    store, _ = run([message(CAT, s, e, i) for i, (s, e) in enumerate(seq)], workers=1)
    c = store[cid]
    assert c["location"]["city"] == "new"
    assert c["return_count"] == 1 and c["recent_returns"][0]["status"] == "approved"
    assert c["cart"] == []
