"""The entity-changes topic: every delta and lifecycle event the dataflow makes, on Kafka.

One record per :class:`~c360.model.delta.Delta` or :class:`~c360.model.delta.Lifecycle`, keyed by
entity id (murmur2, like every c360 producer), so one entity's changes stay in one
partition in version order. Replicas (:mod:`c360.store.replica`) materialize a store from it:
a dashboard server or a notebook on another machine, or after the dataflow moved.

Records are format :data:`CHANGE_FORMAT` of :mod:`c360.model.codec`: a header (marker and
version), then MessagePack of the change's fields in the order of :class:`ChangeV1` (no class
or module names), so a replica on another machine or of a later c360 reads them without
sharing this code's layout; fields keep their ``datetime`` and ``date`` values, so a replica
equals the primary store. A record of another version stops the replica with a one-line
:class:`~c360.errors.StateFormatError` rather than being skipped. Each record carries the
id of the dataflow run that wrote it (header ``c360-run``), which tells a replica when a
restarted dataflow began publishing.

Checkpoints (the end of this module) are a replica's whole state at a cut of this topic, on
the companion topic :func:`checkpoints_topic`, in checkpoint format :data:`CHECKPOINT_FORMAT`:
a new replica loads the newest whole one and reads this topic only after its cut.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec
from bytewax.connectors.kafka import KafkaSinkMessage

from c360.config import Settings, producer_config
from c360.errors import DataError, StateFormatError
from c360.model import codec
from c360.model.delta import Delta, Lifecycle
from c360.topics.sinks import KafkaSink

RUN_HEADER = "c360-run"
# The stream of the deltas a resumed dataflow emits first: each entity's whole state at the
# version its recovery snapshot holds (see dataflows.steps.ShardLogic).
RESET_STREAM = "recovery"

CHANGE_FORMAT = 1
ADVICE = ("read this topic with the c360 that wrote it, or have the dataflow publish to a new "
          "one (c360 run --changes NEW_TOPIC) and read that")
DELTA, LIFECYCLE = 0, 1


class ChangeV1(msgspec.Struct, array_like=True):
    """One change record: a delta (``what`` 0: ``name`` its stream, ``event_id`` its
    event, ``data`` its changes) or a lifecycle event (1: ``name`` its type, ``data`` its
    detail, ``event_id`` empty)."""

    what: int
    entity_id: str
    kind: str
    version: int
    event_time: datetime
    name: str
    event_id: str
    data: dict[str, Any]


_DECODER = codec.decoder(ChangeV1)
_HEADER = codec.header(codec.CHANGE, CHANGE_FORMAT)


def encode_change(change: Delta | Lifecycle) -> bytes:
    if isinstance(change, Delta):
        rec = ChangeV1(DELTA, change.entity_id, change.kind, change.version, change.event_time,
                       change.stream, change.event_id, codec.plain(change.changes))
    else:
        rec = ChangeV1(LIFECYCLE, change.entity_id, change.kind, change.version,
                       change.event_time, change.type, "", codec.plain(change.detail))
    return _HEADER + codec.ENCODER.encode(rec)


def decode_change(raw: bytes | None) -> Delta | Lifecycle:
    """A change record back to its delta or lifecycle event. :class:`StateFormatError`
    when it is of another format version; a :class:`DataError` when it is damaged or not
    a c360 changes record."""
    data = codec.payload(raw, codec.CHANGE, CHANGE_FORMAT, ADVICE)
    r: ChangeV1 = codec.decode(data, _DECODER, codec.CHANGE, ADVICE)
    if r.what == DELTA:
        return Delta(r.entity_id, r.kind, r.version, r.event_time, r.name, r.event_id, r.data)
    if r.what == LIFECYCLE:
        return Lifecycle(r.entity_id, r.kind, r.version, r.event_time, r.name, r.data)
    raise DataError(f"a damaged changes record (it holds change kind {r.what}, "
                           f"neither a delta nor a lifecycle event): {ADVICE}")


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
    # bytewax's sink produces a whole batch, then flushes; a resumed run's resets (one
    # record per entity) come as one batch, and at 62,000 entities plus the replay
    # overflowed the default 100,000-message queue (BufferError).
    return KafkaSink(settings.require_bootstrap().split(","), topic,
                     add_config=producer_config(settings, message_max_bytes=20_000_000,
                                                linger_ms=5,
                                                queue_buffering_max_messages=10_000_000,
                                                queue_buffering_max_kbytes=4_194_304))


# -- checkpoints: a replica's whole state at a cut of the changes topic ----------------------
#
# A companion topic (checkpoints_topic), not state records on the changes topic itself, although
# that topic is keyed by entity id: its records are deltas (only the fields that changed), so
# log compaction would keep each entity's last delta and lose its other fields, and a replica
# would still have to read it from offset 0 to find where the newest full-state records are.
# A checkpoint is one cut across every changes partition (the next offset of each): its records
# are the state of each entity at that cut plus a trailer that names the cut and counts them,
# so they go to the one partition of their own topic, written in order, and a checkpoint whose
# trailer is missing or counts otherwise (an interrupted writer) is never used. With a
# checkpoint, the changes before its cut are needed by nobody but History (every version):
# the changes topic may then be truncated there.

CHECKPOINT = b"K"  # the codec kind byte of a checkpoint record (codec.py names S, G, C)
CHECKPOINT_FORMAT = 1
CHECKPOINT_HEADER = "c360-checkpoint"  # a state record's checkpoint id (read without decoding)
TRAILER_HEADER = "c360-checkpoint-end"  # the trailer's checkpoint id
CHECKPOINT_ADVICE = ("publish a new checkpoint with this c360 (ChangesReplica.checkpoint(), "
                     "c360 checkpoint), or start the replica without one")


class StateV1(msgspec.Struct, array_like=True, tag=0):
    """One entity at a checkpoint's cut: ``fields`` as the replica's store holds it (``id``,
    ``kind``, ``version`` included) and the replica's bookkeeping of it, so that a replica
    started here decides every later change as one that read the topic from offset 0:
    ``passing`` (its latest delta reached the store: a following lifecycle event passes),
    ``shadow_version``/``shadow`` (0/{}: none; else the replayed state of a restarted dataflow
    that has not passed the version shown yet), ``run_version`` (the latest run's top version
    of it, 0: none)."""

    checkpoint: str
    fields: dict[str, Any]
    passing: bool
    shadow_version: int
    shadow: dict[str, Any]
    run_version: int


class TrailerV1(msgspec.Struct, array_like=True, tag=1):
    """The end of a whole checkpoint: ``count`` state records before it carry its id; they
    hold every change of ``topic`` before ``offsets[p]`` in partition ``p`` and none after.
    ``taken_at`` is wall-clock time (information only). The rest are the replica's counters,
    carried so that a replica started here counts as one that read everything."""

    checkpoint: str
    topic: str
    count: int
    offsets: list[int]
    taken_at: datetime
    stream_counts: dict[str, int]
    lifecycle_counts: dict[str, int]
    stale_deltas: int
    run_id: str  # "": no run header read
    resets: int
    repaired: int
    dropped: int


_CHECKPOINT_DECODER = codec.decoder(StateV1 | TrailerV1)
_CHECKPOINT_HEADER_BYTES = codec.header(CHECKPOINT, CHECKPOINT_FORMAT)


def checkpoints_topic(changes_topic: str) -> str:
    """The topic of the checkpoints of ``changes_topic`` (one partition)."""
    return changes_topic + ".checkpoints"


def encode_checkpoint(record: StateV1 | TrailerV1) -> bytes:
    if isinstance(record, StateV1):
        record = msgspec.structs.replace(record, fields=codec.plain(record.fields),
                                         shadow=codec.plain(record.shadow))
    return _CHECKPOINT_HEADER_BYTES + codec.ENCODER.encode(record)


def decode_checkpoint(raw: bytes | None) -> StateV1 | TrailerV1:
    """A checkpoint record back. :class:`StateFormatError` when it is of another format
    version; a :class:`DataError` when it is damaged or not a c360 checkpoint record."""
    # codec.payload's checks, for a kind that module does not name (c360/model/codec.py is
    # not this change's file; the kind byte can move there with its next edit).
    head = bytes((raw or b"")[:codec.HEADER])
    if head[:len(codec.MAGIC)] != codec.MAGIC or head[4:5] != CHECKPOINT or len(head) < 6:
        raise DataError(f"this is not a c360 checkpoint record (it starts {head!r}): "
                        f"{CHECKPOINT_ADVICE}")
    if head[5] != CHECKPOINT_FORMAT:
        raise StateFormatError(f"this checkpoint record is format {head[5]}, this c360 reads "
                               f"format {CHECKPOINT_FORMAT}: {CHECKPOINT_ADVICE}")
    try:
        rec: StateV1 | TrailerV1 = _CHECKPOINT_DECODER.decode(memoryview(raw or b"")[codec.HEADER:])
    except (msgspec.DecodeError, ValueError, OverflowError) as exc:
        raise DataError(f"a damaged checkpoint record ({exc}): {CHECKPOINT_ADVICE}") from None
    return rec
