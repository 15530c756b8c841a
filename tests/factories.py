"""Small builders of events and Kafka messages for tests."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

from bytewax.testing import TestingSink, TestingSource, cluster_main
from confluent_kafka import Message
from kafka import KafkaConsumer, TopicPartition

from c360.config import Settings
from c360.model import events as ev
from c360.model.events import Catalogue, encode
from c360.store.memory import EntityStore
from dataflows.graph import build_flow
from dataflows.steps import StoreSink

CAT = Catalogue("c360.")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def message(cat: Catalogue, stream: str, event: ev.Event, offset: int = 0,
            partition: int = 0) -> Message:
    """A Kafka message as the consumer hands it to the dataflow."""
    key = ev.key_of(event).encode()
    return Message(key=key, value=encode(event), topic=cat.topic(stream), partition=partition,
                   offset=offset)


def raw_message(topic: str, value: bytes | None, offset: int = 0,
                key: bytes | None = b"k") -> Message:
    return Message(key=key, value=value, topic=topic, partition=0, offset=offset)


def mixed_events(customers: int = 30, per_customer: int = 12) -> list[tuple[str, ev.Event]]:
    """A deterministic mix of streams over several customers, with duplicates."""
    out: list[tuple[str, ev.Event]] = []
    n = 0
    for i in range(per_customer):
        for c in range(customers):
            cid = f"cust-{c:03d}"
            t = at(i * 60 + c)
            n += 1
            kind = (i + c) % 6
            if kind == 0:
                out.append(("orders", ev.Order(
                    event_id=f"o{n}", event_time=t, customer_id=cid, order_id=f"ord-{c}-{i}",
                    order_date=t, status="created", total_amount=10.0 + i,
                    lines=[ev.OrderLine("p1", 2, 5.0 + i / 2)])))
            elif kind == 1:
                out.append(("payments", ev.Payment(
                    event_id=f"p{n}", event_time=t, customer_id=cid, order_id=f"ord-{c}-{i}",
                    payment_date=t, method="card", amount=3.33 * (i + 1))))
            elif kind == 2:
                out.append(("loyalty", ev.Loyalty(event_id=f"l{n}", event_time=t, customer_id=cid,
                                                  points_earned=400 * i)))
            elif kind == 3:
                out.append(("location", ev.Location(event_id=f"g{n}", event_time=t,
                                                    customer_id=cid, latitude=-23.5 + i / 100,
                                                    longitude=-46.6, city="Sao Paulo")))
            elif kind == 4:
                out.append(("search", ev.Search(event_id=f"s{n}", event_time=t, customer_id=cid,
                                                event_type="search", query=f"shoes {i}",
                                                results=i)))
            else:
                out.append(("reviews", ev.Review(event_id=f"r{n}", event_time=t, customer_id=cid,
                                                 review_id=f"rv{n}", rating=1 + (i % 5))))
            if n % 17 == 0:
                out.append(out[-1])  # a duplicate: same event id, applied once
    return out


def batches(msgs: list, size: int) -> list[list]:
    return [msgs[i:i + size] for i in range(0, len(msgs), size)]


def run(msgs: list, workers: int, batch: int = 7, *,
        analytics: bool = False, **kwargs: object) -> tuple[EntityStore, list]:
    """The flow on in-memory batches; without the global analytics unless asked for, so
    that the store holds exactly the events' entities."""
    store = EntityStore()
    dlq: list = []
    flow = build_flow(TestingSource(batches(msgs, batch)), StoreSink(store), TestingSink(dlq),
                      catalogue=CAT, analytics=analytics, **kwargs)  # type: ignore[arg-type]
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return store, dlq


# Decisions are what the rules concluded from what an entity knew when an event arrived.
# With one topic per stream, runs read the streams in different interleavings, so a rule
# over two streams can fire in one run and not in another; every other field must match.
ARRIVAL_DEPENDENT = frozenset({"decisions"})


def comparable(entity: dict) -> dict:
    return {k: v for k, v in entity.items() if k not in ARRIVAL_DEPENDENT}


def by_id(store: EntityStore) -> list[dict]:
    """Entities fed by events (not the global analytics), comparable across runs."""
    return sorted((comparable(e) for e in store.entities(None) if e["kind"] != "global"),
                  key=lambda e: e["id"])


def read_dlq(settings: Settings, topic: str, expected: int, timeout: float = 60) -> list[dict]:
    consumer = KafkaConsumer(**settings.kafka_python(), enable_auto_commit=False,
                             fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=16 * 1024 * 1024)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(500).values():
            records.extend(json.loads(r.value) for r in batch)
    consumer.close()
    return records
