"""Bytewax's own Kafka source, emitting whole batches and able to stop on its own.

Each item this source emits is the list of messages one poll returned, so the
steps downstream pay bytewax's per-item cost once per batch. It can stop when
told to (``stop``) or once every topic has been idle for ``idle_timeout``
seconds: the bounded run mode. Idleness is judged across all partitions of the
process, because the broker's reported end offsets cannot be trusted.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import StatefulSourcePartition


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


class _BatchPartition(StatefulSourcePartition[list[Any], Any]):
    def __init__(self, inner: StatefulSourcePartition, idle: Idle, idle_timeout: float | None,
                 stop: threading.Event | None) -> None:
        self._inner = inner
        self._idle = idle
        self._idle_timeout = idle_timeout
        self._stop = stop

    def next_batch(self) -> list[list[Any]]:
        if self._stop is not None and self._stop.is_set():
            raise StopIteration
        msgs = self._inner.next_batch()
        if msgs:
            self._idle.touch(len(msgs))
            return [msgs]
        if self._idle_timeout is not None and self._idle.seconds() >= self._idle_timeout:
            raise StopIteration
        return []

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class BatchKafkaSource(KafkaSource):
    """A :class:`KafkaSource` whose items are batches of ``KafkaSourceMessage``.

    Always tails (end offsets are not trusted); ends on ``stop`` or idleness.
    """

    def __init__(self, brokers: list[str], topics: list[str], *,
                 idle_timeout: float | None = None, stop: threading.Event | None = None,
                 add_config: dict[str, str] | None = None, batch_size: int = 2000) -> None:
        self._base_config = dict(add_config or {})
        self._consumer_config = {"fetch.wait.max.ms": "20", **self._base_config}
        super().__init__(brokers, topics, tail=True, add_config=self._consumer_config,
                         batch_size=batch_size, raise_on_errors=False)
        self.idle = Idle()
        self._idle_timeout = idle_timeout
        self._stop_event = stop

    def list_parts(self) -> list[str]:
        # The admin client that lists partitions would warn about consumer-only settings.
        self._add_config = self._base_config
        try:
            return super().list_parts()
        finally:
            self._add_config = self._consumer_config

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _BatchPartition:
        inner = super().build_part(step_id, for_part, resume_state)
        return _BatchPartition(inner, self.idle, self._idle_timeout, self._stop_event)
