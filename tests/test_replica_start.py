"""Replicas start from a checkpoint, not from offset 0: a replica started after one equals a
replica that read the whole changes topic, reads only the changes after the cut, never uses an
interrupted checkpoint and applies each later change once (docs/scaling.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from kafka import KafkaProducer

from c360.config import REPO_ROOT, Settings
from c360.dev.simulator import simulate
from c360.errors import DataError, StateFormatError
from c360.model.delta import Delta, Lifecycle
from c360.model.events import Catalogue
from c360.run.pipeline import Pipeline
from c360.store.memory import EntityStore
from c360.store.replica import CHECKPOINT_STREAM, ChangesReplica, replica_from_kafka
from c360.topics.admin import create_topics
from c360.topics.changes import (
    CHECKPOINT_HEADER,
    RESET_STREAM,
    RUN_HEADER,
    TRAILER_HEADER,
    StateV1,
    TrailerV1,
    checkpoints_topic,
    decode_checkpoint,
    encode_change,
    encode_checkpoint,
)

T = datetime(2026, 3, 1, tzinfo=timezone.utc)
Change = Delta | Lifecycle


def delta(eid: str, version: int, changes: dict[str, Any], stream: str = "orders") -> Delta:
    return Delta(eid, "customer", version, T + timedelta(minutes=version), stream,
                 f"{eid}-{stream}-{version}", changes)


def order(eid: str, version: int, spent: float) -> Delta:
    return delta(eid, version, {"order_count": version, "total_spent": spent,
                                "as_of_day": date(2026, 3, version),
                                "last_order_at": T + timedelta(hours=version)})


def first_run() -> list[Change]:
    """Run r1: 30 customers, 5 orders each, a lifecycle event after some deltas."""
    out: list[Change] = []
    for v in range(1, 6):
        for i in range(30):
            out.append(order(f"c{i}", v, 10.0 * v))
            if v == 1:
                out.append(Lifecycle(f"c{i}", "customer", 1, T, "created", {}))
    return out


def second_run_before() -> list[Change]:
    """Run r2 (a restarted dataflow) up to the cut: c0..c9 reset to version 3 with other
    contents and replayed to 4, below the 5 shown (shadows at the cut); c20 gets a delta
    whose lifecycle event comes after the cut."""
    out: list[Change] = []
    for i in range(10):
        out.append(delta(f"c{i}", 3, {"order_count": 3, "total_spent": 31.0}, RESET_STREAM))
        out.append(delta(f"c{i}", 4, {"order_count": 4, "total_spent": 41.0, "alt": "x"}))
    out.append(order("c20", 6, 60.0))
    return out


def second_run_after() -> list[Change]:
    out: list[Change] = [
        Lifecycle("c20", "customer", 6, T, "rule_fired", {"rule": "big"}),  # follows v6
        Lifecycle("c0", "customer", 4, T, "rule_fired", {"rule": "big"}),  # a replay's: dropped
    ]
    for i in range(10):  # the replays pass the version shown: each switches once
        out.append(delta(f"c{i}", 5, {"order_count": 5, "total_spent": 51.0}))
        out.append(delta(f"c{i}", 6, {"order_count": 6, "total_spent": 61.0, "alt": "y"}))
    for i in range(10, 30):
        out.append(order(f"c{i}", 6 if i != 20 else 7, 70.0))
    out += [order(f"n{i}", 1, 5.0) for i in range(5)]  # customers new after the cut
    out.append(delta("c10", 6, {"order_count": -1}))  # a duplicate version: dropped
    return out


def send_alone(producer: KafkaProducer, topic: str, key: bytes, value: bytes,
               headers: list[tuple[str, bytes]] | None = None) -> None:
    """One record in a batch of its own: the embedded broker reports the end of a topic as
    the start of its last batch + 1."""
    producer.send(topic, key=key, value=value, headers=headers or [])
    producer.flush()


def produce(settings: Settings, topic: str, changes: list[Change], run: str) -> None:
    producer = KafkaProducer(**settings.kafka_python())
    for c in changes:
        producer.send(topic, key=c.entity_id.encode(), value=encode_change(c),
                      headers=[(RUN_HEADER, run.encode())])
    producer.flush()
    producer.close()


def read_all(replica: ChangesReplica, records: int, timeout: float = 120) -> None:
    """Wait until the replica read ``records`` changes records (a bound to fail, not a margin:
    the assertions are on what it read)."""
    store = replica.store
    store.wait_until(lambda _: replica.records >= records or replica.error is not None,
                     timeout, f"{records} changes records read")
    assert replica.error is None and replica.records == records


def state(replica: ChangesReplica) -> dict[str, Any]:
    m, store = replica.materializer, replica.store
    return {"entities": {e["id"]: e for e in store.entities(None)},
            "versions": replica.versions(), "streams": store.stream_counts(),
            "lifecycle": dict(store.lifecycle_counts), "stale": store.stale_deltas,
            "counters": (m.resets, m.repaired, m.dropped, m.repairing),
            # The run's versions per entity depend on how partitions interleave: not compared.
            "run": replica.latest_run()[0], "bad": replica.bad_records}


@pytest.fixture()
def topic(settings: Settings) -> Iterator[str]:
    t = settings.topic_prefix + "changes"
    create_topics(settings, [t], partitions=2)
    yield t


def checkpointed(settings: Settings, topic: str) -> tuple[TrailerV1, int, int]:
    """The topic with a checkpoint at a cut (shadows and a pending lifecycle event in it), then
    the changes after it; returns the checkpoint's trailer, the records before and after."""
    before = first_run()
    produce(settings, topic, before, "r1")
    produce(settings, topic, second_run_before(), "r2")
    cut = len(before) + len(second_run_before())
    with replica_from_kafka(settings, topic=topic) as writer:
        read_all(writer, cut)
        assert writer.started_from is None  # no checkpoint yet: read from offset 0
        assert writer.materializer.repairing == 10  # the cut falls inside a repair
        trailer = writer.checkpoint()
    after = second_run_after()
    produce(settings, topic, after, "r2")
    return trailer, cut, len(after)


def test_a_replica_started_after_a_checkpoint_equals_one_from_offset_0_and_reads_only_what_follows(
        settings: Settings, topic: str) -> None:
    trailer, cut, after = checkpointed(settings, topic)
    assert trailer.count == 30 and sum(trailer.offsets) == cut
    full = ChangesReplica(settings, topic=topic).start()  # History's way: every change
    seen: list[Delta] = []
    store = EntityStore()
    store.subscribe(seen.append)
    started = replica_from_kafka(settings, store, topic=topic)
    try:
        read_all(full, cut + after)
        read_all(started, after)
        assert started.started_from == trailer
        assert started.checkpoint_records == 31  # 30 entities and the trailer
        assert state(started) == state(full)
        assert full.records == cut + after and started.records == after  # 249 and 48
        # Exactly once: the checkpoint's delta of each entity, then each later version once,
        # in order; the duplicate (c10 v6) and the replays below the version shown are not.
        store.wait_until(lambda s: len({(d.entity_id, d.version) for d in seen})
                         == len(seen) and {d.entity_id: d.version for d in seen}
                         == started.versions(), 60, "every delta delivered")
        by_entity: dict[str, list[tuple[int, str]]] = {}
        for d in seen:
            by_entity.setdefault(d.entity_id, []).append((d.version, d.stream))
        assert by_entity["c0"] == [(5, CHECKPOINT_STREAM), (6, "orders")]  # switched once
        assert by_entity["c20"] == [(6, CHECKPOINT_STREAM), (7, "orders")]
        assert by_entity["c10"] == [(5, CHECKPOINT_STREAM), (6, "orders")]
        assert by_entity["n0"] == [(1, "orders")]
        assert store["c0"]["alt"] == "y" and store["c10"]["order_count"] == 6
        assert store["c15"]["as_of_day"] == date(2026, 3, 6)  # a date stays a date
        assert store.lifecycle_counts["rule_fired"] == 1  # c20's, which followed v6
    finally:
        full.stop()
        started.stop()


def test_an_interrupted_checkpoint_is_never_used(settings: Settings, topic: str) -> None:
    whole, cut, after = checkpointed(settings, topic)
    # Three interrupted writers after it: one stopped before its trailer, one whose trailer
    # counts records that never arrived, one that is not c360's at all.
    producer = KafkaProducer(**settings.kafka_python())
    ctopic = checkpoints_topic(topic)
    fake = {"id": "c1", "kind": "customer", "version": 99, "order_count": 99}
    for cid, count in (("partial", None), ("short", 3)):
        for _ in range(2):
            send_alone(producer, ctopic, b"c1", encode_checkpoint(
                StateV1(cid, fake, True, 0, {}, 0)), [(CHECKPOINT_HEADER, cid.encode())])
        if count is not None:
            send_alone(producer, ctopic, b"", encode_checkpoint(TrailerV1(
                cid, topic, count, [cut + after, 0], T, {}, {}, 0, "", 0, 0, 0)),
                [(TRAILER_HEADER, cid.encode())])
    send_alone(producer, ctopic, b"x", b"not ours")
    producer.close()
    with ChangesReplica(settings, topic=topic) as full, \
            replica_from_kafka(settings, topic=topic) as started:
        read_all(full, cut + after)
        read_all(started, after)
        assert started.started_from == whole
        assert started.checkpoint_records == 31 + 6
        assert started.bad_records == 1  # the record not written by c360
        started.bad_records = 0
        assert state(started) == state(full)
        assert started.store["c1"]["version"] == 6


def test_a_replica_that_publishes_periodically_lets_the_next_one_start_from_its_latest(
        settings: Settings, topic: str) -> None:
    changes = [*first_run(), *second_run_before(), *second_run_after()]
    produce(settings, topic, changes, "r1")
    total = len(changes)
    with replica_from_kafka(settings, topic=topic, checkpoint_every=100) as writer:
        read_all(writer, total)
        # A checkpoint once 100 changes were read since the last, between consume batches:
        # the last one covers all but fewer than 100 of them.
        writer.store.wait_until(
            lambda _: writer.last_checkpoint is not None
            and sum(writer.last_checkpoint.offsets) > total - 100, 60, "a periodic checkpoint")
    newest = writer.last_checkpoint
    assert newest is not None and 30 <= newest.count <= 35  # n0..n4 come last
    bytes_per_entity = writer.checkpoint_bytes / newest.count
    assert 60 < bytes_per_entity < 400  # about 130 bytes for these small entities
    with ChangesReplica(settings, topic=topic) as full, \
            replica_from_kafka(settings, topic=topic) as started:
        read_all(full, total)
        assert started.started_from == newest
        read_all(started, total - sum(newest.offsets))
        assert state(started) == state(full)


def test_checkpoint_records_round_trip_and_refuse_other_versions() -> None:
    st = StateV1("k1", {"id": "c1", "kind": "customer", "version": 3, "day": date(2026, 3, 1),
                        "at": T, "pair": (1, 2), "nested": {"a": [1, 2]}},
                 True, 4, {"day": date(2026, 3, 2)}, 2)
    assert decode_checkpoint(encode_checkpoint(st)) == st
    tr = TrailerV1("k1", "t.changes", 1, [5, 7], T, {"orders": 3}, {"created": 1}, 0, "r1",
                   1, 0, 2)
    assert decode_checkpoint(encode_checkpoint(tr)) == tr
    raw = encode_checkpoint(tr)
    with pytest.raises(StateFormatError, match="checkpoint record is format 2, this c360 "
                                               "reads format 1"):
        decode_checkpoint(raw[:5] + bytes((2,)) + raw[6:])
    with pytest.raises(DataError, match="not a c360 checkpoint record"):
        decode_checkpoint(encode_change(delta("c1", 1, {})))
    with pytest.raises(DataError, match="damaged checkpoint record"):
        decode_checkpoint(raw[:-3])


def test_a_replica_of_a_real_dataflow_starts_from_its_checkpoint_equal_to_the_primary(
        settings: Settings) -> None:
    cat = Catalogue(settings.topic_prefix)
    simulate(settings, customers=200, rate=0, events=12_000, seed=21, progress=False,
             start=datetime(2026, 4, 1, tzinfo=timezone.utc))
    primary = Pipeline(settings, idle_timeout=5, changes_topic=cat.changes_topic).run()
    want = {e["id"]: e["version"] for e in primary.entities(None)}

    def read_everything(replica: ChangesReplica) -> None:
        # Every delta (the versions) and every lifecycle event (the counts) the primary got.
        assert replica.wait_for(want, 120)
        replica.store.wait_until(lambda s: s.lifecycle_counts == primary.lifecycle_counts,
                                 60, "the primary's lifecycle events")

    with replica_from_kafka(settings) as writer:
        read_everything(writer)
        trailer = writer.checkpoint()
    assert sum(trailer.offsets) == writer.records  # the cut: every record it read
    assert trailer.count == len(primary)
    with replica_from_kafka(settings) as started:
        read_everything(started)
        assert started.started_from == trailer and started.records == 0
        assert started.checkpoint_records == len(primary) + 1
        assert {e["id"]: e for e in started.store.entities(None)} == \
            {e["id"]: e for e in primary.entities(None)}
        assert started.store.stream_counts() == writer.store.stream_counts()


def test_c360_checkpoint_publishes_what_the_next_replica_and_the_next_checkpoint_start_from(
        settings: Settings, topic: str) -> None:
    changes = [*first_run(), *second_run_before()]
    produce(settings, topic, changes, "r1")
    env = {**os.environ, "C360_KAFKA_BOOTSTRAP": settings.bootstrap,
           "C360_TOPIC_PREFIX": settings.topic_prefix}

    def checkpoint() -> str:
        proc = subprocess.run([sys.executable, "-m", "c360", "checkpoint", "--idle", "1"],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                              env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.strip()

    first = checkpoint()
    assert first.startswith("checkpoint ") and f" of {topic}: 30 entities, " in first
    assert first.endswith(f"(from offset 0, {len(changes)} changes read)")
    after = second_run_after()
    produce(settings, topic, after, "r2")
    second = checkpoint()
    assert ": 35 entities, " in second
    assert second.endswith(f"(from checkpoint {first.split()[1]}, {len(after)} changes read)")
    with replica_from_kafka(settings, topic=topic) as started:
        assert started.started_from is not None
        assert started.started_from.checkpoint == second.split()[1]
        assert started.wait_for({"c0": 6, "n4": 1}, 60) and started.records == 0
    proc = subprocess.run([sys.executable, "-m", "c360", "checkpoint", "--changes", "nope"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "the entity-changes topic 'nope' does not exist" in proc.stderr
