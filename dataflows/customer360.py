"""The customer-360 dataflow: every stream topic in, one live entity per customer out.

    Kafka (one topic per stream)
      -> decode + validate (msgspec)          bad -> c360.dlq with the reason
      -> route to the entity's shard (by id, not by topic: no stream join)
      -> fold into the entity + business logic -> field-level deltas
      -> the in-memory entity store

Run against Kafka with ``python -m bytewax.run dataflows.customer360:flow`` (it
reads ``C360_KAFKA_BOOTSTRAP``), or plug in other sources and sinks with
:func:`build_flow`, as the tests and notebooks do.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink
from confluent_kafka import Message

from c360.analytics import Collector, global_analytics
from c360.changes import RESET_STREAM, change_records, new_run_id
from c360.delta import Delta
from c360.errors import InvalidEvent
from c360.events import Catalogue
from c360.hooks import EntityHooks
from c360.logic import Logic, first_logic
from c360.rules import Decision
from c360.shard import Failed, Routed, Shard, shard_of

DEFAULT_SHARDS = 16
DEFAULT_LATENESS = timedelta(hours=1)
_JSON = msgspec.json.Encoder()


class Decoded(msgspec.Struct):
    """One polled batch after decoding: good events grouped by shard, and the rejects."""

    by_shard: dict[str, list[Routed]]
    failed: list[Failed]
    late: list[Failed] = []  # events later than the allowed lateness: the late topic


def make_decoder(
    catalogue: Catalogue, shards: int, max_bytes: int,
    allowed_lateness: timedelta | None = DEFAULT_LATENESS,
) -> Callable[[list[Message]], Decoded]:
    decode = catalogue.decode_with_stream
    # Event time per topic partition: the latest event time read from it. A partition is
    # read in offset order by exactly one consumer, so whether an event is "too late" is
    # the same in every run, however the topics' reads interleave (a per-entity or
    # per-shard clock would depend on which topic happened to be read first).
    latest: dict[tuple[str, int], datetime] = {}
    commands = catalogue.commands.name if hasattr(catalogue, "commands") else "commands"

    def decode_batch(msgs: list[Message]) -> Decoded:
        by_shard: dict[str, list[Routed]] = {}
        failed: list[Failed] = []
        late: list[Failed] = []
        for m in msgs:
            raw = m.value()
            try:
                if m.error() is not None:
                    raise InvalidEvent(f"consumer error: {m.error()}")
                if raw is not None and len(raw) > max_bytes:
                    raise InvalidEvent(f"payload too large: {len(raw)} bytes > {max_bytes}")
                stream, event = decode(m.topic(), raw)
            except InvalidEvent as exc:
                failed.append(Failed(exc.reason, m.topic() or "", m.partition() or 0,
                                     m.offset() or 0, m.key(), raw))
                continue
            if allowed_lateness is not None and stream.name != commands:
                where = (m.topic(), m.partition())
                t = event.event_time
                mark = latest.get(where)
                if mark is None or t > mark:
                    latest[where] = t
                elif mark - t > allowed_lateness:
                    late.append(Failed(
                        f"too late: event time {t.isoformat()} is {(mark - t).total_seconds():.0f}"
                        f" s behind its partition's latest ({mark.isoformat()}); allowed "
                        f"lateness is {allowed_lateness.total_seconds():.0f} s",
                        m.topic() or "", m.partition() or 0, m.offset() or 0, m.key(), raw))
                    continue
            kind = stream.entity_kind
            entity_id = getattr(event, stream.key_field)
            key = shard_of(kind, entity_id, shards)
            routed = Routed(stream.name, kind, entity_id, event,
                            (m.topic(), m.partition(), m.offset()))
            bucket = by_shard.get(key)
            if bucket is None:
                by_shard[key] = [routed]
            else:
                bucket.append(routed)
        return Decoded(by_shard, failed, late)

    return decode_batch


class ShardLogic(StatefulBatchLogic[list[Routed], tuple[list[Delta], list[Failed]], bytes]):
    """Bytewax state of one shard: folds every batch routed to it in one call.

    Resumed from a recovery snapshot, it first emits every entity's whole state at the
    snapshot's version (stream ``recovery``): the restarted process's store is rebuilt from
    it, and stores that outlived the crash repair what the replay changes (c360.replica).
    """

    def __init__(self, resume: bytes | None, logic: Logic | None, recoverable: bool,
                 hooks: EntityHooks | None = None,
                 allowed_lateness: timedelta | None = DEFAULT_LATENESS,
                 analytics: bool = False) -> None:
        self.analytics = analytics
        self.kind: str | None = None  # every entity of a shard has one kind (see shard_of)
        restored = pickle.loads(resume) if resume else None
        if isinstance(restored, tuple):
            self.kind, restored = restored
        self.shard: Shard = restored if restored is not None else Shard(
            hooks, allowed_lateness or timedelta(0))
        self.logic = logic
        self.recoverable = recoverable
        self._reset_due = restored is not None and self.kind is not None

    def notify_at(self) -> datetime | None:
        # Called right after a resumed logic is built: publish its reset at once.
        return datetime.now(timezone.utc) if self._reset_due else None

    def on_notify(self) -> tuple[list, bool]:
        return self._reset(), StatefulBatchLogic.RETAIN

    def _reset(self) -> list:
        if not self._reset_due:
            return []
        self._reset_due = False
        shard, kind = self.shard, self.kind
        at = shard.latest or datetime.now(timezone.utc)
        deltas = [Delta(eid, kind, state.version, at, RESET_STREAM, f"{RESET_STREAM}:"
                        f"{state.version}", dict(state.fields))
                  for eid, state in shard.entities.items() if state.version > 0]
        return [(deltas, [], [], [])] if deltas else []

    def on_batch(self, values: list[list[Routed]]) -> tuple[list, bool]:
        out = self._reset()
        if self.kind is None and values and values[0]:
            self.kind = values[0][0].kind
        for batch in values:
            decisions: list[Decision] = []
            collector = Collector() if self.analytics else None
            deltas, failed = self.shard.apply(batch, self.logic, decisions, collector)
            partials = collector.partials() if collector is not None else []
            if deltas or failed or decisions or partials:
                out.append((deltas, failed, decisions, partials))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:  # type: ignore[override]
        # Pickled now, so later folds cannot change what recovery stores. Much
        # cheaper than the deep copy bytewax's stateful_map makes per epoch.
        if not self.recoverable:
            return None
        return pickle.dumps((self.kind, self.shard), protocol=pickle.HIGHEST_PROTOCOL)


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


def build_flow(
    source: Source[list[Message]],
    store_sink: Sink[list[Delta]],
    dlq_sink: Sink[KafkaSinkMessage],
    *,
    late_sink: Sink[KafkaSinkMessage] | None = None,
    decisions_sink: Sink[KafkaSinkMessage] | None = None,
    catalogue: Catalogue | None = None,
    logic: Logic | None = first_logic,
    hooks: EntityHooks | None = None,
    analytics: bool = True,
    allowed_lateness: timedelta | None = DEFAULT_LATENESS,
    shards: int = DEFAULT_SHARDS,
    max_event_bytes: int = 1_000_000,
    flow_id: str = "customer360",
    recoverable: bool = True,
    changes_sink: Sink[KafkaSinkMessage] | None = None,
    run_id: str = "",
) -> Dataflow:
    """The customer-360 dataflow between any batch source and any sinks.

    ``hooks`` (default: windows, rules and segments all on) run after each customer
    event's fold; pass ``EntityHooks(rules=False, ...)`` to turn parts off. Events later
    than ``allowed_lateness`` behind their partition go to ``late_sink`` (None: dropped
    and not applied; ``allowed_lateness=None`` applies every event). ``analytics`` adds the
    global per-minute analytics (:mod:`c360.analytics`) to the store as ``global:*``
    entities. ``recoverable=False`` skips state snapshots: right when bytewax runs
    without recovery, where it would discard them anyway. ``changes_sink`` gets every
    change the store gets, as entity-changes records tagged with ``run_id``
    (:mod:`c360.changes`).
    """
    catalogue = catalogue or Catalogue()
    hooks = hooks if hooks is not None else EntityHooks(allowed_lateness=allowed_lateness)
    flow = Dataflow(flow_id)
    polled = op.input("kafka_in", flow, source)
    # polled: list[confluent_kafka.Message], one poll of one partition index
    decoded = op.map("decode", polled, make_decoder(catalogue, shards, max_event_bytes,
                                                    allowed_lateness))
    # decoded: Decoded
    routed = op.flat_map("by_shard", decoded, lambda d: list(d.by_shard.items()))
    # routed: (shard key, list[Routed])

    folded = op.stateful_batch("fold", routed, lambda resume: ShardLogic(
        resume, logic, recoverable, hooks, allowed_lateness, analytics))
    # folded: (shard key, (deltas, failures, decisions, analytics partials))
    deltas = op.filter_map("deltas", folded, lambda kv: kv[1][0] or None)
    # deltas: list[Delta | Lifecycle], one batch per shard per poll, in version order
    if analytics:
        partials = op.flat_map("partials", folded, lambda kv: kv[1][3])
        wait = allowed_lateness if allowed_lateness is not None else DEFAULT_LATENESS
        deltas = op.merge("with_globals", deltas, global_analytics(partials, wait))
    op.output("store_out", deltas, store_sink)
    if changes_sink is not None:
        records = op.flat_map("change_records", deltas, change_records(run_id or new_run_id()))
        op.output("changes_out", records, changes_sink)

    if decisions_sink is not None:
        made = op.flat_map("decisions", folded, lambda kv: kv[1][2])
        op.output("decisions_out", op.map("decision_record", made, decision_record),
                  decisions_sink)
    if late_sink is not None:
        late = op.flat_map("late_events", decoded, lambda d: d.late)
        op.output("late_out", op.map("late_record", late, dead_letter), late_sink)

    rejected = op.flat_map("decode_failures", decoded, lambda d: d.failed)
    apply_failed = op.flat_map("apply_failures", folded, lambda kv: kv[1][1])
    failures = op.merge("failures", rejected, apply_failed)
    # failures: Failed
    op.output("dlq_out", op.map("dead_letter", failures, dead_letter), dlq_sink)
    return flow


def _kafka_flow() -> Dataflow:
    """The flow ``python -m bytewax.run`` runs: Kafka in, the process's store and DLQ out."""
    from c360.pipeline import Pipeline

    pipeline = Pipeline()
    pipeline.recoverable = True  # bytewax.run may be given a recovery directory
    pipeline.ensure_topics()
    return pipeline.build()


def __getattr__(name: str) -> Any:
    # Built on first access so that importing build_flow needs no Kafka settings.
    if name == "flow":
        return _kafka_flow()
    raise AttributeError(name)
