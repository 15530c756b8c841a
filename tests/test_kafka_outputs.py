"""On the real broker: too-late events reach the late topic with their reason, decisions
reach the decisions topic, and the global analytics land in the store."""

from __future__ import annotations

from datetime import timedelta

from kafka import KafkaProducer

from c360.config import Settings
from c360.model import events as ev
from c360.model.events import Catalogue, encode
from c360.run.pipeline import run_until_idle
from tests.factories import at, read_dlq


def test_late_events_and_decisions_reach_their_topics(settings: Settings) -> None:
    cat = Catalogue(settings.topic_prefix)
    producer = KafkaProducer(**settings.kafka_python(), linger_ms=5)

    def send(stream: str, event: ev.Event) -> None:
        producer.send(cat.topic(stream), key=ev.key_of(event).encode(), value=encode(event))

    send("customer_details", ev.CustomerDetails(event_id="d1", event_time=at(0),
                                                customer_id="c1", name="Ana"))
    for i, points in enumerate((500, 1000, 4000)):  # bronze, then silver, then gold
        send("loyalty", ev.Loyalty(event_id=f"l{i}", event_time=at(60 * i), customer_id="c1",
                                   points_earned=points))
    send("loyalty", ev.Loyalty(event_id="l9", event_time=at(60) - timedelta(hours=3),
                               customer_id="c1", points_earned=1))  # 3 hours behind: too late
    producer.flush()
    producer.close()

    store = run_until_idle(2, settings)
    c1 = store["c1"]
    assert c1["loyalty_points"] == 5500 and c1["version"] == 4  # the late one not applied
    assert [d["action"] for d in c1["decisions"]] == ["tier_upgrade", "tier_upgrade"]

    late = read_dlq(settings, cat.late_topic, 1)
    assert len(late) == 1 and late[0]["reason"].startswith("too late")
    assert late[0]["topic"] == cat.topic("loyalty")
    decisions = read_dlq(settings, cat.decisions_topic, 2)
    assert sorted(d["reason"] for d in decisions) == [
        "loyalty tier bronze -> silver (1500 points)", "loyalty tier silver -> gold (5500 points)"]
    assert all(d["customer_id"] == "c1" and d["event_ids"] for d in decisions)
    assert store["global:events_per_minute"]["series"][0]["events"]["loyalty"] == 1
