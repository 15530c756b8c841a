"""Malformed events against the real broker: each lands in the DLQ with its reason,
each good event is applied, and the flow never stops."""

from __future__ import annotations

import base64
import random

from kafka import KafkaProducer

from c360.config import Settings
from c360.model.events import Catalogue, encode
from c360.run.pipeline import run_until_idle
from tests.factories import CAT, by_id, message, mixed_events, read_dlq, run

BIG = 2 * 1024 * 1024


def malformed(cat: Catalogue, n: int, rng: random.Random) -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected reason prefix) for ``n`` bad events of five kinds."""
    good = encode(mixed_events(1, 1)[0][1])
    kinds = [
        (cat.topic("orders"), b'{"event_id": "x", "event_time": ', "malformed JSON"),
        (cat.topic("payments"),
         good.replace(b'"customer_id":"cust-000",', b'"customer_id":12,'), "invalid payments"),
        (cat.topic("payments"),
         b'{"event_id":"m","event_time":"2026-01-01T00:00:00Z","order_id":"o",'
         b'"payment_date":"2026-01-01T00:00:00Z","method":"card","amount":1}',
         "invalid payments event: Object missing required field `customer_id`"),
        (cat.ingest_topic, b'{"stream":"horoscope","event_id":"h"}', "unknown stream"),
        (cat.topic("search"), b"[" * 10 + b"1" * BIG, "payload too large"),
    ]
    out = []
    for i in range(n):
        # Only a handful of 2 MB payloads: they are slow to move and one kind is enough.
        topic, payload, reason = kinds[i % 5] if i % 5 != 4 or i < 25 else kinds[i % 4]
        out.append((topic, payload, reason))
    rng.shuffle(out)
    return out


def test_thousand_malformed_events_land_in_the_dlq_and_good_ones_apply(settings: Settings) -> None:
    cat = Catalogue(settings.topic_prefix)
    rng = random.Random(7)
    bad = malformed(cat, 1000, rng)
    good = mixed_events(customers=40, per_customer=25)
    producer = KafkaProducer(**settings.kafka_python(), linger_ms=10,
                             max_request_size=8 * 1024 * 1024)

    def send_good(stream: str, event) -> None:
        producer.send(cat.topic(stream), key=event.customer_id.encode(), value=encode(event))

    sent_bad: dict[tuple[str, int, int], tuple[bytes, str]] = {}
    futures = []
    gi = 0
    for topic, payload, reason in bad:
        for _ in range(rng.randint(0, 3)):  # good ones between the bad ones
            if gi < len(good):
                stream, event = good[gi]
                send_good(stream, event)
                gi += 1
        futures.append((producer.send(topic, key=b"bad", value=payload), payload, reason))
    for stream, event in good[gi:]:
        send_good(stream, event)
    producer.flush()
    for fut, payload, reason in futures:
        md = fut.get(10)
        sent_bad[(md.topic, md.partition, md.offset)] = (payload, reason)
    producer.close()

    store = run_until_idle(3, settings, workers=2)

    records = read_dlq(settings, cat.dlq_topic, len(sent_bad))
    assert len(records) == 1000
    got = {(r["topic"], r["partition"], r["offset"]): r for r in records}
    assert got.keys() == sent_bad.keys()
    for where, (payload, reason) in sent_bad.items():
        r = got[where]
        assert r["reason"].startswith(reason), (where, r["reason"])
        assert base64.b64decode(r["raw_base64"]) == payload

    # Every good event was applied: the entities equal a run over the good events alone.
    clean, _ = run([message(CAT, s, e, i) for i, (s, e) in enumerate(good)], workers=1,
                   batch=50)
    assert by_id(store) == by_id(clean)
