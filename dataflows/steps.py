"""The dataflow's steps: small typed functions and the stateful logic bytewax calls.

Everything that meets bytewax's step API lives here (and the graph in
:mod:`dataflows.customer360`); what they call, the fold, is plain Python in
:mod:`c360.entity`, which never imports bytewax, so the engine can be replaced.
"""

from __future__ import annotations

import base64
import math
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import msgspec
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Message

from c360.entity import codec
from c360.entity.analytics import Collector, GlobalWindows
from c360.entity.derive import EntityHooks
from c360.entity.logic import Logic
from c360.entity.rules import Decision
from c360.entity.shard import Failed, Routed, Shard, ShardBatch, shard_of
from c360.errors import InvalidEvent, StateFormatError
from c360.model.delta import Delta, Lifecycle
from c360.model.events import Catalogue
from c360.store.entity_log import EntityLog, log_path
from c360.store.memory import EntityStore
from c360.store.replica import Materializer
from c360.topics.changes import RESET_STREAM
from c360.topics.source import NO_TIME, Polled, event_time_of

DEFAULT_SHARDS = 16
DEFAULT_LATENESS = timedelta(hours=1)
_JSON = msgspec.json.Encoder()


class Decoded(msgspec.Struct):
    """One polled item after decoding: good events grouped by shard, and the rejects."""

    by_shard: dict[str, ShardBatch]
    failed: list[Failed]
    late: list[Failed] = []  # events later than the allowed lateness: the late topic


def shard_keys(shards: int) -> list[str]:
    """Every shard key (customer and product shards): where a watermark is broadcast."""
    return [f"{k}{i}" for k in ("c", "p") for i in range(shards)]


def make_decoder(
    catalogue: Catalogue, shards: int, max_bytes: int,
    allowed_lateness: timedelta | None = DEFAULT_LATENESS,
) -> Callable[[Polled | list[Message]], Decoded]:
    """Decode and route one source item; judge lateness against its partition's clock.

    An event is *late* when its event time is before its source partition's watermark at
    its position: the latest event time that partition emitted before it, less
    ``allowed_lateness`` (docs/event-time.md). The source emits each partition in an order
    that depends only on the topics' contents, so what is late is the same in every run.
    """
    decode = catalogue.decode_with_stream
    commands = catalogue.commands.name if hasattr(catalogue, "commands") else "commands"
    lateness = allowed_lateness.total_seconds() if allowed_lateness is not None else 0.0
    check = allowed_lateness is not None
    keys = shard_keys(shards)
    # Plain lists of messages (tests, tools) get a clock per partition kept here.
    clocks: dict[int, float] = {}

    def decode_batch(polled: Polled | list[Message]) -> Decoded:
        if not isinstance(polled, Polled):
            part = (polled[0].partition() or 0) if polled else 0
            times = [event_time_of(m.value()) for m in polled]
            polled = Polled(part, 1, polled, [math.nan if t is None else t for t in times],
                            clocks.get(part, NO_TIME))
            clocks[part] = polled.end_clock()
        part, parts = polled.part, polled.parts
        by_shard: dict[str, ShardBatch] = {}
        failed: list[Failed] = []
        late: list[Failed] = []
        clock = polled.clock
        for m, t_read in zip(polled.msgs, polled.times, strict=True):
            mark = clock - lateness
            if t_read > clock:
                clock = t_read
            raw = m.value()
            topic = m.topic() or ""  # None only on some consumer errors
            try:
                if m.error() is not None:
                    raise InvalidEvent(f"consumer error: {m.error()}")
                if raw is not None and len(raw) > max_bytes:
                    raise InvalidEvent(f"payload too large: {len(raw)} bytes > {max_bytes}")
                stream, event = decode(topic, raw)
            except InvalidEvent as exc:
                failed.append(Failed(exc.reason, topic, m.partition() or 0,
                                     m.offset() or 0, m.key(), raw))
                continue
            if check and stream.name != commands:
                ts = t_read if t_read == t_read else event.event_time.timestamp()
                if ts < mark:
                    t = event.event_time
                    late.append(Failed(
                        f"too late: event time {t.isoformat()} is {mark + lateness - ts:.0f}"
                        f" s behind the latest event time of source partition {part} "
                        f"({_iso(mark + lateness)}); allowed lateness is {lateness:.0f} s",
                        topic, m.partition() or 0,
                        m.offset() or 0, m.key(), raw))
                    continue
            kind = stream.entity_kind
            entity_id = getattr(event, stream.key_field)
            key = shard_of(kind, entity_id, shards)
            routed = Routed(stream.name, kind, entity_id, event,
                            (topic, m.partition() or 0, m.offset() or 0), mark)
            bucket = by_shard.get(key)
            if bucket is None:
                by_shard[key] = ShardBatch(key, part, parts, [routed], NO_TIME)
            else:
                bucket.items.append(routed)
        end = clock - lateness
        final = clock if polled.final else None
        for b in by_shard.values():
            b.mark, b.idle, b.final = end, polled.idle, final
        if polled.tick:  # every shard hears the partition's watermark
            for k in keys:
                if k not in by_shard:
                    by_shard[k] = ShardBatch(k, part, parts, [], end, polled.idle, final)
        return Decoded(by_shard, failed, late)

    return decode_batch


def _iso(ts: float) -> str:
    if ts == NO_TIME:
        return "(none)"
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


class Folded(NamedTuple):
    """What folding one shard batch gave, by name (the graph splits it into four streams)."""

    deltas: list[Delta | Lifecycle]  # field changes and lifecycle notes, in version order
    failed: list[Failed]  # events the fold refused: to the dead-letter topic
    decisions: list[Decision]  # what the rules decided: to the decisions topic
    partials: list[tuple[str, Any]]  # pre-aggregates and watermarks for the global windows


class ShardLogic(StatefulBatchLogic[ShardBatch, Folded, bytes | None]):
    """Bytewax state of one shard: folds every batch routed to it in one call.

    Resumed from a recovery snapshot, it first emits every entity's whole state at the
    snapshot's version (stream ``recovery``): the restarted process's store is rebuilt from
    it, and stores that outlived the crash repair what the replay changes (c360.store.replica).
    With analytics, each batch also reports the shard's watermark of its source partition
    to the global windows (a ``("mark", ...)`` partial), which close on the minimum.
    At the end of a bounded run (:meth:`on_eof`) every customer is aged to the end of input.

    With ``entity_log`` (a directory: the recovery directory's ``entities``), snapshots are
    incremental (:mod:`c360.store.entity_log`): the entities changed since the last snapshot
    go to the shard key's log, the snapshot is the shard's bookkeeping and the log's seq.
    Without it, each snapshot is the whole shard (format 2).
    """

    def __init__(self, resume: bytes | None, logic: Logic | None, recoverable: bool,
                 hooks: EntityHooks | None = None,
                 allowed_lateness: timedelta | None = DEFAULT_LATENESS,
                 analytics: bool = False, entity_log: str | Path | None = None) -> None:
        self.analytics = analytics
        self.kind: str | None = None  # every entity of a shard has one kind (see shard_of)
        self.key: str | None = None  # the shard key: known from a snapshot or the first batch
        self._logs = Path(entity_log) if entity_log is not None and recoverable else None
        self._log: EntityLog | None = None
        self._seq = 0  # the last snapshot's seq in the log
        # The settings are the ones given now, resumed or not: a snapshot holds data only.
        lateness = allowed_lateness or timedelta(0)
        if resume:
            self.kind, self.shard, ref = codec.decode_head(resume, hooks, lateness)
            if ref is not None:
                self.key, self._seq = ref
                if self.key is not None:
                    self._resume_log(self.key, self._seq)
            else:  # a whole snapshot: all its entities go to the log at the next snapshot
                self.shard.dirty.update(self.shard.entities)
        else:
            self.shard = Shard(hooks, lateness)
        self.logic = logic
        self.recoverable = recoverable
        self._reset_due = bool(resume) and self.kind is not None
        self._reported: dict[int, tuple[float, bool]] = {}

    def _resume_log(self, key: str, seq: int) -> None:
        if self._logs is None:
            raise StateFormatError(
                f"shard {key}: this recovery snapshot is incremental (format 3): its entities "
                "are in the recovery directory's entity log; resume it with c360 run "
                "--recovery-dir or Pipeline(recovery_dir=...), or start afresh with an empty "
                "recovery directory")
        log = self._log = EntityLog(log_path(self._logs, key))
        # Rows after seq are an epoch bytewax never committed: resume() drops them.
        self.shard.entities = {eid: codec.decode_entity(data) for eid, data in log.resume(seq)}

    def notify_at(self) -> datetime | None:
        # Called right after a resumed logic is built: publish its reset at once.
        return datetime.now(timezone.utc) if self._reset_due else None

    def on_notify(self) -> tuple[list[Folded], bool]:
        return self._reset(), StatefulBatchLogic.RETAIN

    def _reset(self) -> list[Folded]:
        if not self._reset_due:
            return []
        self._reset_due = False
        shard, kind = self.shard, self.kind
        if kind is None:  # never: a reset is due only after a snapshot with a kind
            return []
        at = shard.latest or datetime.now(timezone.utc)
        deltas: list[Delta | Lifecycle] = [
            Delta(eid, kind, state.version, at, RESET_STREAM, f"{RESET_STREAM}:{state.version}",
                  dict(state.fields))
            for eid, state in shard.entities.items() if state.version > 0]
        return [Folded(deltas, [], [], [])] if deltas else []

    def on_batch(self, values: list[ShardBatch]) -> tuple[list[Folded], bool]:
        out = self._reset()
        for batch in values:
            if self.key is None:
                self.key = batch.key
            if self.kind is None and batch.items:
                self.kind = batch.items[0].kind
            decisions: list[Decision] = []
            collector = Collector() if self.analytics else None
            deltas, failed = self.shard.apply(batch, self.logic, decisions, collector)
            partials: list = collector.partials() if collector is not None else []
            if self.analytics:
                mark = self.shard.marks.get(batch.part, NO_TIME)
                if self._reported.get(batch.part) != (mark, batch.idle):
                    self._reported[batch.part] = (mark, batch.idle)
                    partials.append(("mark", (batch.key, batch.part, batch.parts, mark,
                                              batch.idle)))
            if deltas or failed or decisions or partials:
                out.append(Folded(deltas, failed, decisions, partials))
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Folded], bool]:
        deltas = self.shard.finish()
        return ([Folded(deltas, [], [], [])] if deltas else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        # Encoded now, so later folds cannot change what recovery stores; the versioned
        # format of c360.entity.codec (data, no settings, no module paths).
        if not self.recoverable:
            return None
        shard, key = self.shard, self.key
        if self._logs is None or key is None:  # key None: resumed whole, no batch since
            return codec.encode_shard(self.kind, shard)
        log = self._log
        if log is None:  # a fresh shard: rows left by a start that never committed go
            log = self._log = EntityLog(log_path(self._logs, key))
            log.resume(0)
        if shard.dirty:
            # Committed before bytewax stores these bytes: the snapshot never points at rows
            # that are not there; rows of a snapshot bytewax then fails to commit are dropped
            # at the resume (their seq is after the one resumed).
            self._seq += 1
            entities = shard.entities
            log.write(self._seq, [
                (eid, None if (st := entities.get(eid)) is None else codec.encode_entity(st))
                for eid in shard.dirty], len(entities))
            shard.dirty.clear()
        return codec.encode_head(key, self._seq, self.kind, shard)


def dead_letter(f: Failed) -> KafkaSinkMessage[bytes | None, bytes]:
    """The dead-letter record: the reason, where the event came from and its raw bytes."""
    value = _JSON.encode({
        "reason": f.reason,
        "topic": f.topic,
        "partition": f.partition,
        "offset": f.offset,
        "key": f.key.decode("utf-8", "replace") if f.key is not None else None,
        "raw_base64": base64.b64encode(f.raw).decode() if f.raw is not None else None,
        "rejected_at": datetime.now(timezone.utc),
    })
    headers = [("c360-reason", f.reason[:200].encode())]
    return KafkaSinkMessage(key=f.key, value=value, headers=headers)


def decision_record(d: Decision) -> KafkaSinkMessage[bytes, bytes]:
    """A decision on the decisions topic, keyed by customer."""
    return KafkaSinkMessage(key=d.customer_id.encode(), value=_JSON.encode(d),
                            headers=[("c360-rule", d.rule.encode())])




class GlobalWindowsLogic(StatefulBatchLogic[tuple[str, Any], list[Delta], bytes]):
    """Bytewax state around :class:`c360.entity.analytics.GlobalWindows` (one for all)."""

    def __init__(self, resume: bytes | None, shard_keys: int) -> None:
        self.windows = (codec.decode_global(resume, shard_keys) if resume
                        else GlobalWindows(shard_keys))

    def on_batch(self, values: list[tuple[str, Any]]) -> tuple[list[list[Delta]], bool]:
        return self.windows.on_batch(values), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[list[Delta]], bool]:
        return self.windows.on_eof(), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return codec.encode_global(self.windows)


class _Applies(Protocol):
    def apply(self, changes: list[Delta | Lifecycle], /) -> None: ...


class _StorePartition(StatelessSinkPartition[list[Delta | Lifecycle]]):
    def __init__(self, store: _Applies) -> None:
        self._store = store

    def write_batch(self, items: list[list[Delta | Lifecycle]]) -> None:
        for deltas in items:
            self._store.apply(deltas)


class StoreSink(DynamicSink[list[Delta | Lifecycle]]):
    """Writes batches of deltas into an :class:`EntityStore` (every worker into the same one).

    With ``recovering``, through a :class:`~c360.store.replica.Materializer`: a resumed dataflow
    replays deltas, and a store that outlived the previous run must not take them twice.
    """

    def __init__(self, store: EntityStore, recovering: bool = False) -> None:
        self.store = store
        self._into: EntityStore | Materializer = Materializer(store) if recovering else store
        self._lock = threading.Lock()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        if isinstance(self._into, Materializer):
            return _StorePartition(_Locked(self._into, self._lock))
        return _StorePartition(self._into)


class _Locked:
    """One materializer shared by the workers of a process: one apply at a time."""

    def __init__(self, into: Materializer, lock: threading.Lock) -> None:
        self._into, self._lock = into, lock

    def apply(self, deltas: list[Delta | Lifecycle]) -> None:
        with self._lock:
            self._into.apply(deltas)
