"""The Kafka source of the customer-360 dataflow: whole polls in, offsets in snapshots.

Why not bytewax's ``KafkaSource`` as is: it runs one librdkafka consumer per topic
partition and builds a Python object per message, so with one topic per stream
(17+) a poll returns a handful of messages and the per-batch overhead dominates;
measured here it ran at about 10% of a bare consumer loop. This source keeps
bytewax's model — fixed partitions, offsets as recoverable state — but makes
partition ``p`` of *every* stream topic one source partition served by one
consumer, and emits each poll as one item of raw ``confluent_kafka.Message``.
Since every stream topic is keyed by entity id with the same partitioner and
partition count, partition ``p`` of each topic holds the same entities.

It tails (the embedded broker's end offsets are wrong, so no end is trusted) and
stops when told (``stop``) or when every topic has been idle ``idle_timeout``
seconds: the bounded run mode.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from c360.broker import TopicWatch
from c360.errors import BrokerError

Offsets = dict[str, int]  # topic -> next offset to read, for one partition index

POLL_PAUSE = timedelta(milliseconds=5)  # back-off when a poll comes back empty


class Idle:
    """When the source last saw a message, shared by every partition of a process."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.messages = 0

    def touch(self, n: int) -> None:
        self.last = time.monotonic()
        self.messages += n

    def seconds(self) -> float:
        return time.monotonic() - self.last


class _Partition(StatefulSourcePartition[list[Message], Offsets]):
    def __init__(self, config: dict[str, Any], topics: list[str], index: int,
                 resume: Offsets | None, batch_size: int, idle: Idle,
                 idle_timeout: float | None, stop: threading.Event | None,
                 watch: TopicWatch | None = None) -> None:
        self._offsets: Offsets = dict(resume or {})
        self._consumer = Consumer(config)
        self._consumer.assign([
            TopicPartition(t, index, self._offsets.get(t, OFFSET_BEGINNING)) for t in topics
        ])
        self._batch_size = batch_size
        self._idle = idle
        self._idle_timeout = idle_timeout
        self._stop = stop
        self._awake: datetime | None = None
        # A consumer never fails when its topics vanish (a memory-only broker restarted):
        # the watch turns that, and a broker unreachable too long, into a BrokerError.
        self._watch = watch

    def next_batch(self) -> list[list[Message]]:
        if self._stop is not None and self._stop.is_set():
            raise StopIteration
        if self._watch is not None:
            self._watch.check()
        msgs = self._consumer.consume(self._batch_size, 0)
        if not msgs:
            if self._idle_timeout is not None and self._idle.seconds() >= self._idle_timeout:
                if self._watch is not None:
                    self._watch.check(force=True)  # idle because the broker is gone?
                raise StopIteration
            self._awake = datetime.now(timezone.utc) + POLL_PAUSE
            return []
        self._awake = None
        offsets = self._offsets
        for m in msgs:
            offset = m.offset()
            if offset is not None and offset >= 0:
                offsets[m.topic()] = offset + 1
        self._idle.touch(len(msgs))
        return [msgs]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Offsets:
        return dict(self._offsets)

    def close(self) -> None:
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[list[Message], Offsets]):
    """Partition index ``p`` of all ``topics`` as one source partition.

    Items are lists of ``confluent_kafka.Message`` (one poll). Messages that carry
    a consumer error are passed on too, for the dataflow to dead-letter.
    """

    def __init__(self, config: dict[str, str], topics: list[str], *,
                 idle_timeout: float | None = None, stop: threading.Event | None = None,
                 batch_size: int = 5000) -> None:
        if isinstance(topics, str):
            raise TypeError("topics must be a list of topic names, not a string")
        self._config = config
        self._topics = list(topics)
        self._batch_size = batch_size
        self._idle_timeout = idle_timeout
        self._stop = stop
        self.idle = Idle()

    def list_parts(self) -> list[str]:
        admin = AdminClient(self._config)
        try:
            meta = admin.list_topics(timeout=10)
        except KafkaException as exc:
            raise BrokerError(f"cannot list Kafka topics: {exc}") from exc
        missing = [t for t in self._topics if t not in meta.topics]
        if missing:
            raise BrokerError(f"topics do not exist: {', '.join(missing)}; create them first "
                              "(c360 broker, or Pipeline.ensure_topics)")
        count = max(len(meta.topics[t].partitions) for t in self._topics)
        return [f"p{i}" for i in range(count)]

    def build_part(self, step_id: str, for_part: str, resume_state: Offsets | None) -> _Partition:
        config = {
            **self._config,
            # Offsets live in bytewax's recovery state, not in a consumer group.
            "group.id": "c360-unused",
            "enable.auto.commit": "false",
            "enable.partition.eof": "false",
            "fetch.wait.max.ms": "10",
        }
        return _Partition(config, self._topics, int(for_part[1:]), resume_state,
                          self._batch_size, self.idle, self._idle_timeout, self._stop,
                          TopicWatch(self._config, self._topics))
