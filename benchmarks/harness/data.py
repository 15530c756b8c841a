"""Pre-produced benchmark topics: the simulator's events, each partition ended by a sentinel.

Every engine reads the same topics from the beginning. The embedded broker misreports
end offsets, so nobody relies on them: the last record of every topic partition is a
*sentinel* — a valid event of that stream whose entity id starts with ``~end.`` — and a
reader is done when it has seen one per topic partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import msgspec

from c360.config import Settings
from c360.dev.simulator import generate
from c360.model.events import Catalogue, Event, encode
from c360.topics.admin import create_topics

SENTINEL_PREFIX = "~end."
START = datetime(2024, 1, 1, tzinfo=timezone.utc)


@dataclass
class Dataset:
    """Topics holding ``events`` simulated events plus ``sentinels`` end markers."""

    bootstrap: str
    prefix: str
    partitions: int
    streams: list[str]
    topics: list[str]
    events: int
    per_stream: dict[str, int]
    sentinels: int
    customers: int
    produce_seconds: float
    # Mean bytes per customer of the latest record of each stream it has (section 3).
    latest_record_bytes: float | None = None
    keys: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def settings(self) -> Settings:
        return Settings(bootstrap=self.bootstrap, topic_prefix=self.prefix,
                        partitions=self.partitions)

    def as_json(self) -> dict:
        return {"events": self.events, "topics": len(self.topics), "streams": self.streams,
                "partitions": self.partitions, "customers_configured": self.customers,
                "distinct_keys": self.keys, "per_stream": self.per_stream,
                "produce_seconds": round(self.produce_seconds, 2)}


def sentinel(stream_key_field: str, template: Event, topic: str, partition: int,
             at: datetime | None = None) -> Event:
    """A valid event of the template's stream for the entity ``~end.<topic>.<partition>``,
    stamped ``at`` (the latest event time produced: an older one may fall outside a
    relevance window and change nothing)."""
    entity = f"{SENTINEL_PREFIX}{topic}.{partition}"
    return msgspec.structs.replace(template, event_id=f"{entity}.sentinel",
                                   event_time=at or template.event_time,
                                   **{stream_key_field: entity})


def produce(bootstrap: str, prefix: str, *, events: int, customers: int, seed: int = 7,
            partitions: int = 2, streams: Iterable[str] | None = None,
            track_latest: bool = False,
            progress: Callable[[int], None] | None = None) -> Dataset:
    """Produce ``events`` simulated events (only of ``streams``, if given) and the sentinels.

    Events keep the simulator's order; with ``streams`` the other streams' events are
    skipped (the simulator is run until enough are kept). Keys use murmur2 like every
    c360 producer.
    """
    from confluent_kafka import Producer

    cat = Catalogue(prefix)
    wanted = set(streams) if streams is not None else None
    settings = Settings(bootstrap=bootstrap, topic_prefix=prefix, partitions=partitions)
    create_topics(settings, [*cat.input_topics, cat.dlq_topic], partitions)
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "linger.ms": 50, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000,
                         "queue.buffering.max.kbytes": 1_048_576})
    per_stream: dict[str, int] = {}
    templates: dict[str, Event] = {}
    latest: dict[tuple[str, str], int] = {}
    topic_of = {s.name: s.topic for s in cat.streams}
    began = time.monotonic()
    n = 0
    last: datetime | None = None
    for stream, key, event in generate(customers, seed, START):
        if n >= events:
            break
        if wanted is not None and stream not in wanted:
            continue
        raw = encode(event)
        while True:
            try:
                producer.produce(topic_of[stream], raw, key.encode())
                break
            except BufferError:
                producer.poll(0.05)
        templates.setdefault(stream, event)
        if last is None or event.event_time > last:
            last = event.event_time
        per_stream[stream] = per_stream.get(stream, 0) + 1
        if track_latest and cat.by_name[stream].key_field == "customer_id":
            latest[(key, stream)] = len(raw)
        n += 1
        if not n & 4095:
            producer.poll(0)
            if progress is not None:
                progress(4096)
    if progress is not None:
        progress(n & 4095)
    used = [s.name for s in cat.streams if s.name in templates]
    topics = [topic_of[s] for s in used]
    for s in used:
        key_field = cat.by_name[s].key_field
        for p in range(partitions):
            ev = sentinel(key_field, templates[s], topic_of[s], p, last)
            producer.produce(topic_of[s], encode(ev), getattr(ev, key_field).encode(),
                             partition=p)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} benchmark records were not delivered")
    latest_bytes = None
    if track_latest and latest:
        per_customer: dict[str, int] = {}
        for (key, _), size in latest.items():
            per_customer[key] = per_customer.get(key, 0) + size
        latest_bytes = sum(per_customer.values()) / len(per_customer)
    keys = len({k for k, _ in latest}) if track_latest else 0
    return Dataset(bootstrap, prefix, partitions, used, topics, n, per_stream,
                   len(topics) * partitions, customers, time.monotonic() - began,
                   latest_bytes, keys)
