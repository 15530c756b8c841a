"""The customer-360 dataflow: every stream topic in, one live entity per customer out.

    Kafka (one topic per stream)
      -> decode + validate (msgspec)          bad -> c360.dlq with the reason
      -> route to the entity's shard (by id, not by topic: no stream join)
      -> fold into the entity + business logic -> field-level deltas
      -> the in-memory entity store

This module is the graph only: :func:`build_flow` between any source and sinks, and
:func:`kafka_flow` wired to Kafka and a store. The steps it calls are in
:mod:`dataflows.steps`; the fold itself in :mod:`c360.entity`. Importing it reads no
settings; :mod:`dataflows.customer360` holds the ``flow`` that ``python -m bytewax.run``
runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import Source
from bytewax.outputs import Sink
from confluent_kafka import Message

from c360.config import Settings, producer_config
from c360.entity.derive import EntityHooks
from c360.entity.logic import Logic, first_logic
from c360.entity.rules import Decision
from c360.entity.shard import Failed, ShardBatch
from c360.model.delta import Delta, Lifecycle
from c360.model.events import Catalogue
from c360.store.memory import EntityStore
from c360.topics.changes import change_records, changes_sink, new_run_id
from c360.topics.sinks import KafkaSink
from c360.topics.source import KafkaBatchSource, Polled
from dataflows.steps import (
    DEFAULT_LATENESS,
    DEFAULT_SHARDS,
    Folded,
    GlobalWindowsLogic,
    ShardLogic,
    StoreSink,
    dead_letter,
    decision_record,
    make_decoder,
)

# What a source gives the decoder: the Kafka source's Polled, or plain lists of messages
# (tests, tools). A TypeVar, not a union: bytewax's Source[X] is invariant in X.
Batch = TypeVar("Batch", Polled, list[Message])


@dataclass(frozen=True)
class FoldOut:
    """The fold's outputs by name (as bytewax's ``KafkaOpOut.oks/.errs``)."""

    deltas: Stream[list[Delta | Lifecycle]]
    """Field changes and lifecycle notes: one batch per shard per poll, in version order."""
    failures: Stream[Failed]
    """Events the fold refused (an unknown command, a bad field): dead letters."""
    decisions: Stream[Decision]
    """What the rules decided."""
    partials: Stream[tuple[str, Any]]
    """Pre-aggregates and watermark reports for the global windows."""


@operator
def fold_entities(step_id: str, routed: Stream[tuple[str, ShardBatch]],
                  builder: Any) -> FoldOut:
    """Fold each shard's batches into its entities (:class:`dataflows.steps.ShardLogic`)."""
    folded = op.stateful_batch("state", routed, builder)
    # folded: (shard key, Folded)
    values = op.map("values", folded, _value)
    # values: Folded
    return FoldOut(
        deltas=op.filter_map("deltas", values, lambda f: f.deltas or None),
        failures=op.flat_map("failures", values, lambda f: f.failed),
        decisions=op.flat_map("decisions", values, lambda f: f.decisions),
        partials=op.flat_map("partials", values, lambda f: f.partials),
    )


def _value(kv: tuple[str, Folded]) -> Folded:
    return kv[1]


@operator
def global_analytics(step_id: str, partials: Stream[tuple[str, Any]],
                     shards: int) -> Stream[list[Delta]]:
    """Tumbling event-time windows over the shards' partials; deltas of global entities.

    A window closes once every shard has reported, for every source partition that is not
    idle, a watermark at or past its end (``("mark", ...)`` partials): the minimum over
    them, Flink's rule. Every open window closes at the end of input. Partials of a window
    already closed are too late and dropped, counted in ``GlobalWindows.late``.
    """
    keyed = op.map("by_global", partials, lambda kv: ("global", kv))
    # keyed: ("global", (window length key, Acc) or ("mark", report)): one state for all
    out = op.stateful_batch("windows", keyed,
                            lambda resume: GlobalWindowsLogic(resume, 2 * shards))
    # out: ("global", list[Delta]) per batch that closed windows
    return op.map("deltas", out, lambda kv: kv[1])


def build_flow(
    source: Source[Batch],
    store_sink: Sink[list[Delta | Lifecycle]],
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
    entity_log: str | Path | None = None,
) -> Dataflow:
    """The customer-360 dataflow between any batch source and any sinks.

    ``hooks`` (default: windows, rules and segments all on) run after each customer
    event's fold; pass ``EntityHooks(rules=False, ...)`` to turn parts off. Events before
    their source partition's watermark (its latest event time less ``allowed_lateness``,
    docs/event-time.md) go to ``late_sink`` (None: dropped
    and not applied; ``allowed_lateness=None`` applies every event). ``analytics`` adds the
    global per-minute analytics (:mod:`c360.entity.analytics`) to the store as ``global:*``
    entities. ``recoverable=False`` skips state snapshots: right when bytewax runs
    without recovery, where it would discard them anyway. ``changes_sink`` gets every
    change the store gets, as entity-changes records tagged with ``run_id``
    (:mod:`c360.topics.changes`). ``entity_log`` (with ``recoverable``; the recovery
    directory's ``entities``): snapshots are incremental, each shard's changed entities go to
    its log there (:mod:`c360.store.entity_log`); without it each snapshot is whole shards.
    """
    catalogue = catalogue or Catalogue()
    hooks = hooks if hooks is not None else EntityHooks(allowed_lateness=allowed_lateness)
    flow = Dataflow(flow_id)
    polled = op.input("kafka_in", flow, source)
    # polled: c360.topics.source.Polled, one source partition's messages merged in event time
    decoded = op.map("decode", polled, make_decoder(catalogue, shards, max_event_bytes,
                                                    allowed_lateness))
    # decoded: Decoded
    routed = op.flat_map("by_shard", decoded, lambda d: list(d.by_shard.items()))
    # routed: (shard key, ShardBatch)

    folded = fold_entities("fold", routed, lambda resume: ShardLogic(
        resume, logic, recoverable, hooks, allowed_lateness, analytics, entity_log))
    # folded.deltas: list[Delta | Lifecycle], one batch per shard per poll, in version order
    deltas = folded.deltas
    if analytics:
        deltas = op.merge("with_globals", deltas, global_analytics("globals", folded.partials,
                                                                   shards))
    op.output("store_out", deltas, store_sink)
    if changes_sink is not None:
        records = op.flat_map("change_records", deltas, change_records(run_id or new_run_id()))
        op.output("changes_out", records, changes_sink)

    if decisions_sink is not None:
        op.output("decisions_out", op.map("decision_record", folded.decisions, decision_record),
                  decisions_sink)
    if late_sink is not None:
        late = op.flat_map("late_events", decoded, lambda d: d.late)
        op.output("late_out", op.map("late_record", late, dead_letter), late_sink)

    rejected = op.flat_map("decode_failures", decoded, lambda d: d.failed)
    failures = op.merge("failures", rejected, folded.failures)
    # failures: Failed
    op.output("dlq_out", op.map("dead_letter", failures, dead_letter), dlq_sink)
    return flow


@dataclass
class KafkaFlow:
    """The dataflow wired to Kafka and a store, with its source (for ``as_of``)."""

    flow: Dataflow
    source: KafkaBatchSource


def kafka_flow(settings: Settings, store: EntityStore, *, catalogue: Catalogue | None = None,
               idle_timeout: float | None = None, stop: threading.Event | None = None,
               recoverable: bool = False, changes_topic: str | None = None, run_id: str = "",
               hooks: EntityHooks | None = None, analytics: bool = True,
               logic: Logic | None = first_logic,
               entity_log: str | Path | None = None) -> KafkaFlow:
    """The graph between c360's Kafka topics and ``store``. Builds objects only: nothing
    connects until bytewax runs the flow, and no topic is created."""
    s = settings
    cat = catalogue or Catalogue(s.topic_prefix)
    brokers = s.bootstrap.split(",")
    # Not s.librdkafka(): that insists on a cluster, and building the graph needs none (the
    # source says what to set when bytewax runs it).
    config = {"bootstrap.servers": s.bootstrap, **s.security.librdkafka()}
    source = KafkaBatchSource(config, cat.input_topics, idle_timeout=idle_timeout,
                              stop=stop, unordered=[cat.commands_topic],
                              partition_idle=s.partition_idle_ms / 1000,
                              align_max=s.align_max,
                              time_fields={st.topic: st.wire_time for st in cat.streams
                                           if st.wire_time != "event_time"})
    records = producer_config(s)
    large = producer_config(s, message_max_bytes=20_000_000)  # a dead letter holds the event
    flow = build_flow(
        source, StoreSink(store, recoverable), KafkaSink(brokers, cat.dlq_topic, add_config=large),
        late_sink=KafkaSink(brokers, cat.late_topic, add_config=large),
        decisions_sink=KafkaSink(brokers, cat.decisions_topic, add_config=records),
        changes_sink=changes_sink(s, changes_topic) if changes_topic else None,
        run_id=run_id, hooks=hooks, analytics=analytics, catalogue=cat, logic=logic,
        max_event_bytes=s.max_event_bytes,
        allowed_lateness=timedelta(seconds=s.allowed_lateness_s), recoverable=recoverable,
        entity_log=entity_log)
    return KafkaFlow(flow, source)
