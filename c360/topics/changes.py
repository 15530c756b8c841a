"""The entity-changes topic: every delta and lifecycle event the dataflow makes, on Kafka.

One record per :class:`~c360.model.delta.Delta` or :class:`~c360.model.delta.Lifecycle`, keyed by
entity id (murmur2, like every c360 producer), so one entity's changes stay in one
partition in version order. Replicas (:mod:`c360.store.replica`) materialize a store from it:
a dashboard server or a notebook on another machine, or after the dataflow moved.

Records are pickles read back by a restricted unpickler that only builds the few classes
a change can hold (the pattern of the Python docs' "Restricting Globals"): entity fields
hold ``datetime`` and ``date`` values, which JSON and msgpack would turn into strings, so
a replica would no longer equal the primary store. Each record carries the id of the
dataflow run that wrote it (header ``c360-run``), which tells a replica when a restarted
dataflow began publishing.
"""

from __future__ import annotations

import datetime as _dt
import io
import pickle
import uuid
from typing import Any

from bytewax.connectors.kafka import KafkaSinkMessage

from c360.config import Settings
from c360.errors import DataError
from c360.model.delta import Delta, Lifecycle
from c360.topics.sinks import KafkaSink

RUN_HEADER = "c360-run"
# The stream of the deltas a resumed dataflow emits first: each entity's whole state at the
# version its recovery snapshot holds (see dataflows.steps.ShardLogic).
RESET_STREAM = "recovery"

_ALLOWED = {
    ("c360.model.delta", "Delta"): Delta,
    ("c360.model.delta", "Lifecycle"): Lifecycle,
    ("datetime", "datetime"): _dt.datetime,
    ("datetime", "date"): _dt.date,
    ("datetime", "timedelta"): _dt.timedelta,
    ("datetime", "timezone"): _dt.timezone,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"a change record refers to {module}.{name}, which a change "
                            "never holds; the record was not written by c360") from None


def encode_change(change: Delta | Lifecycle) -> bytes:
    return pickle.dumps(change, protocol=pickle.HIGHEST_PROTOCOL)


def decode_change(raw: bytes | None) -> Delta | Lifecycle:
    """A change record back to its delta or lifecycle event, or :class:`DataError`."""
    if not raw:
        raise DataError("empty change record")
    try:
        change = _Unpickler(io.BytesIO(raw)).load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"unreadable change record: {type(exc).__name__}: {exc}") from None
    if type(change) not in (Delta, Lifecycle):
        raise DataError(f"a change record holds a {type(change).__name__}, "
                        "not a Delta or Lifecycle")
    return change


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def change_records(run_id: str):  # noqa: ANN201 - a closure for op.flat_map
    """Turns one batch of changes into Kafka records keyed by entity id."""
    header = [(RUN_HEADER, run_id.encode())]

    def records(changes: list[Delta | Lifecycle]) -> list[KafkaSinkMessage[bytes, bytes]]:
        return [KafkaSinkMessage(key=c.entity_id.encode(), value=encode_change(c),
                                 headers=header) for c in changes]

    return records


def changes_sink(settings: Settings, topic: str) -> KafkaSink:
    # murmur2_random: the partitioner kafka-python uses, so a customer's changes land in the
    # partition index its events have.
    return KafkaSink(settings.require_bootstrap().split(","), topic,
                     add_config={**settings.security.librdkafka(),
                                 "message.max.bytes": "20000000",
                                 "partitioner": "murmur2_random",
                                 "linger.ms": "5",
                                 # bytewax's sink produces a whole batch, then flushes; a
                                 # resumed run's resets (one record per entity) come as one
                                 # batch, and at 62,000 entities plus the replay overflowed
                                 # the default 100,000-message queue (BufferError).
                                 "queue.buffering.max.messages": "10000000",
                                 "queue.buffering.max.kbytes": "4194304"})
