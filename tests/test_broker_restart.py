"""Broker faults on a real broker: a durable Tansu (its data in a local S3 server) restarted
mid-stream loses nothing; the memory-only one restarted is reported, never waited on.

The durable broker keeps topics and records in s3rver (an S3-compatible server from npm);
`make test` installs it into the venv, and this test installs it there if it is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from c360.config import Settings
from c360.dev.broker import EmbeddedBroker, S3Server
from c360.errors import BrokerError
from c360.model.events import Catalogue, encode
from c360.run.pipeline import Pipeline
from c360.topics.admin import TopicWatch, create_topics
from tests.factories import CAT, by_id, message, mixed_events, read_dlq, run


def wait_for(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def wait_while_progressing(condition, progress, stall: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails the test only when ``progress()`` has not
    moved for ``stall`` seconds (the run is stuck), not when it is merely slow: CI's loaded
    2-core machine once needed more than a fixed 120 s to catch up after the restart."""
    start = last_move = time.monotonic()
    seen = progress()
    while not condition():
        now = time.monotonic()
        if (moved := progress()) != seen:
            seen, last_move = moved, now
        elif now - last_move > stall:
            pytest.fail(f"no progress for {stall:.0f}s (at {seen}): {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def fresh_settings(broker: EmbeddedBroker) -> Settings:
    s = Settings(bootstrap=broker.bootstrap, topic_prefix=f"r{uuid.uuid4().hex[:6]}.",
                 partitions=2)
    cat = Catalogue(s.topic_prefix)
    create_topics(s, [*cat.input_topics, cat.dlq_topic, cat.late_topic, cat.decisions_topic])
    return s


@pytest.fixture()
def s3(tmp_path: Path) -> Iterator[S3Server]:
    try:
        server = S3Server(tmp_path / "s3", log_path=tmp_path / "s3rver.log", install=True)
        server.start()
    except (BrokerError, subprocess.CalledProcessError) as exc:
        # Only where Node.js/npm cannot be had at all: the durable broker needs an S3 server.
        pytest.skip(f"no local S3 server for the durable broker: {exc}")
    yield server
    server.stop()


class AtLeastOnceProducer:
    """Sends events until the broker acknowledges each, as a careful producer does: a
    send that fails while the broker is down is sent again (the dataflow drops the
    duplicates by event id). Chunks go out batched: the durable broker writes an object
    per batch, so one record per batch would be slow."""

    def __init__(self, settings: Settings) -> None:
        self.cat = Catalogue(settings.topic_prefix)
        self.producer = KafkaProducer(**settings.kafka_python(), acks="all", linger_ms=20,
                                      enable_idempotence=False, retries=0,
                                      request_timeout_ms=5000, reconnect_backoff_max_ms=500)
        self.resent = 0

    def send(self, events: list) -> None:
        deadline = time.monotonic() + 90
        pending = list(events)
        while pending:
            futures = [(self.producer.send(self.cat.topic(stream), value=encode(event),
                                           key=event.customer_id.encode()), (stream, event))
                       for stream, event in pending]
            self.producer.flush(30)
            failed = []
            for future, item in futures:
                try:
                    future.get(0)
                except Exception:
                    failed.append(item)
            if failed and time.monotonic() > deadline:
                raise BrokerError(f"{len(failed)} events not acknowledged in 90 s")
            self.resent += len(failed)
            pending = failed
            if failed:
                time.sleep(0.2)

    def close(self) -> None:
        self.producer.close(5)


def test_durable_broker_restart_mid_stream_loses_nothing_and_applies_nothing_twice(
        s3: S3Server, tmp_path: Path) -> None:
    events = mixed_events(customers=40, per_customer=20)
    expected, _ = run([message(CAT, s, e, i) for i, (s, e) in enumerate(events)], workers=1,
                      batch=50)
    broker = EmbeddedBroker(storage=s3.url, env=s3.env(), log_path=tmp_path / "tansu.log")
    broker.start()
    try:
        assert broker.durable
        settings = fresh_settings(broker)
        pipeline = Pipeline(settings).start()
        producer = AtLeastOnceProducer(settings)
        chunks = [events[i:i + 50] for i in range(0, len(events), 50)]
        third = len(chunks) // 3
        for chunk in chunks[:third]:
            producer.send(chunk)
        # Mid-stream: the dataflow has applied some of what is there, not all of it.
        wait_for(lambda: len(pipeline.store.ids()) >= 10, 60, "the first events applied")
        broker.restart(kill=True)  # SIGKILL: a crash, nothing flushed on the way out
        for chunk in chunks[third:]:
            producer.send(chunk)
        producer.close()
        caught_up = wait_while_progressing(
            lambda: by_id(pipeline.store) == by_id(expected),
            lambda: (pipeline.alive(), sum(e["version"] for e in by_id(pipeline.store))), 120,
            "the entities after the restart equal an uninterrupted run's")
        print(f"caught up {caught_up:.1f}s after the last event; {producer.resent} sends "
              "retried across the restart")
        assert pipeline.alive(), pipeline.error
        pipeline.stop()
        # Versions equal the uninterrupted run's: no event lost, none applied twice.
        versions = {e["id"]: e["version"] for e in by_id(pipeline.store)}
        assert versions == {e["id"]: e["version"] for e in by_id(expected)}
        assert read_dlq(settings, Catalogue(settings.topic_prefix).dlq_topic, 1, timeout=3) == []
    finally:
        broker.stop()


def test_memory_broker_restart_stops_the_pipeline_with_guidance(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        assert not broker.durable
        settings = fresh_settings(broker)
        pipeline = Pipeline(settings).start()
        producer = AtLeastOnceProducer(settings)
        producer.send(mixed_events(customers=10, per_customer=3))
        producer.close()
        wait_for(lambda: len(pipeline.store.ids()) == 10, 60, "the events applied")
        broker.restart()
        took = wait_for(lambda: not pipeline.alive(), 30,
                        "the pipeline notices that the broker lost its topics")
        print(f"the pipeline stopped {took:.1f}s after the memory broker restarted")
        with pytest.raises(BrokerError) as err:
            pipeline.stop()
        text = str(err.value)
        assert "topics this dataflow reads were lost" in text
        assert "memory-only" in text and "C360_KAFKA_BOOTSTRAP" in text
        assert len(pipeline.store.ids()) == 10  # what was read before stays served
    finally:
        broker.stop()


def test_c360_run_prints_the_broker_error_and_exits_2(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        settings = fresh_settings(broker)
        env = {**os.environ, "C360_KAFKA_BOOTSTRAP": broker.bootstrap,
               "C360_TOPIC_PREFIX": settings.topic_prefix}
        # Idle for long enough that only the broker's restart can end the run.
        proc = subprocess.Popen([sys.executable, "-m", "c360", "run", "--until-idle", "120"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            producer = AtLeastOnceProducer(settings)
            producer.send(mixed_events(customers=5, per_customer=2))
            producer.producer.send(settings.topic_prefix + "orders", b"not json").get(10)
            producer.close()
            # The run is reading once its dead letter is out: only then restart the broker.
            dlq = Catalogue(settings.topic_prefix).dlq_topic
            wait_for(lambda: read_dlq(settings, dlq, 1, timeout=1) != [], 60,
                     "c360 run dead-letters the malformed event")
            broker.restart()
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 2, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("c360: error: the Kafka topics this dataflow reads were lost")
        assert "memory-only" in last
    finally:
        broker.stop()


def test_a_broker_unreachable_too_long_is_an_error_not_a_hang(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        settings = fresh_settings(broker)
        topics = Catalogue(settings.topic_prefix).topics
        watch = TopicWatch(settings.librdkafka(), topics, interval=0.2, unreachable_timeout=2)
        watch.check()  # reachable, topics there: nothing to say
        broker.stop(kill=True)
        start = time.monotonic()
        with pytest.raises(BrokerError, match="unreachable for"):
            while time.monotonic() - start < 30:
                watch.check()
                time.sleep(0.05)
        assert time.monotonic() - start < 30
    finally:
        broker.stop()
