"""The dataflow's Kafka sinks (DLQ, late, decisions, changes): bytewax's ``KafkaSink`` with
bounded waits and delivery errors raised.

Why not bytewax's as is: its partition produces a batch and then calls ``flush()`` with no
timeout, and registers no delivery callback. With the broker gone that flush waits for
librdkafka's ``message.timeout.ms`` (300 s by default) while the whole worker, its source
and its :class:`~c360.topics.admin.TopicWatch` included, stands still (measured: a killed
memory broker left ``c360 run`` hanging for over 300 s); and when a record finally times
out it is dropped without a word. Here every record has :data:`DELIVERY_TIMEOUT_S` to be
acknowledged, and a record that is not ends the dataflow with a one-line
:class:`~c360.errors.BrokerError` (with recovery, a restart writes it again: the
snapshot after it was never taken).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Message, Producer

from c360.errors import BrokerError
from c360.topics.admin import BROKER_GUIDANCE

log = logging.getLogger(__name__)

# Below the source's 60 s unreachable timeout, so a dead broker is reported within a
# minute on every path; far above what a live broker needs (the full chaos run's largest
# batch, 62,000 resets plus its replay, was acknowledged in seconds).
DELIVERY_TIMEOUT_S = 40.0

Record = KafkaSinkMessage[bytes | None, bytes | None]


class _Partition(StatelessSinkPartition[Record]):
    def __init__(self, producer: Producer, topic: str | None, bootstrap: str,
                 timeout: float) -> None:
        self._producer = producer
        self._topic = topic
        self._bootstrap = bootstrap
        self._timeout = timeout
        self._failed = 0
        self._first_error: str | None = None

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed += 1
            if self._first_error is None:
                self._first_error = f"{msg.topic()}: {err.str()}"

    def write_batch(self, items: list[Record]) -> None:
        deadline = time.monotonic() + self._timeout
        for m in items:
            topic = m.topic or self._topic
            if topic is None:
                raise RuntimeError(f"no topic to produce {m} to")
            while True:
                try:
                    # ignore: bytewax types headers list[tuple[str, bytes]], confluent-kafka
                    # list[tuple[str, str | bytes | None]]; the same list, but list is invariant.
                    self._producer.produce(topic, value=m.value, key=m.key,
                                           headers=m.headers,  # type: ignore[arg-type]
                                           timestamp=m.timestamp, on_delivery=self._delivered)
                    break
                except BufferError:
                    # The local queue is full: deliveries (or their time-outs) make room.
                    if time.monotonic() > deadline:
                        self._fail(len(self._producer))
                    self._producer.poll(0.1)
            self._producer.poll(0)
        self._flush()

    def _flush(self) -> None:
        # librdkafka fails each record DELIVERY_TIMEOUT_S after it was produced; the margin
        # only covers the callbacks' own time.
        left = self._producer.flush(self._timeout + 5)
        if left or self._failed:
            self._fail(left)

    def _fail(self, left: int) -> None:
        lost = left + self._failed
        why = self._first_error or f"{left} still queued"
        raise BrokerError(
            f"Kafka at {self._bootstrap} did not acknowledge {lost} output records within "
            f"{self._timeout:.0f} s ({why}); the dataflow stops instead of waiting or dropping "
            "them. Is the broker running? Start it again and re-run (with --recovery-dir the "
            "records since the last snapshot are written again); if it was the memory-only "
            "embedded broker, its topics and events are gone. " + BROKER_GUIDANCE)

    def close(self) -> None:
        # Never raises: bytewax also closes sinks while it unwinds from another step's error,
        # and an exception there aborts the process (a Rust panic during a panic). Every
        # write_batch has flushed already, so only a failed run leaves records here.
        left = self._producer.flush(self._timeout + 5)
        if left or self._failed:
            log.warning("%d output records for %s were not acknowledged by Kafka at %s",
                        left + self._failed, self._topic, self._bootstrap)


class KafkaSink(DynamicSink[Record]):
    """``topic`` (or each record's own) on Kafka, one producer per worker; a record not
    acknowledged within ``timeout`` seconds raises :class:`BrokerError`."""

    def __init__(self, brokers: list[str], topic: str | None,
                 add_config: Mapping[str, str] | None = None,
                 timeout: float = DELIVERY_TIMEOUT_S) -> None:
        self._bootstrap = ",".join(brokers)
        self._topic = topic
        self._config = {"bootstrap.servers": self._bootstrap, **(add_config or {}),
                        "message.timeout.ms": str(int(timeout * 1000))}
        self._timeout = timeout

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(Producer(self._config), self._topic, self._bootstrap, self._timeout)
