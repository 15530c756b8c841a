"""A shard: the entities of a slice of the id space, folded batch by batch.

Bytewax keys state by shard rather than by entity so that one stateful call
handles a whole batch of events: per-item operator overhead is paid per batch,
which is what lets the pipeline run near the speed of a bare Python loop.
Every event of one entity lands in the same shard, whatever its stream: there is
no stream join, each stream updates its slice of the one entity.
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta
from typing import Any

import msgspec

from c360.analytics import Collector
from c360.delta import Delta, Lifecycle
from c360.entity import FOLDS, EntityState
from c360.events import Event, encode
from c360.hooks import EntityHooks
from c360.logic import Logic
from c360.rules import CATALOG, Decision


class Routed(msgspec.Struct, frozen=True, array_like=True):
    """A decoded event on its way to its entity (a Struct: cheap to build per event)."""

    stream: str
    kind: str
    entity_id: str
    event: Event
    origin: tuple[str, int, int]  # topic, partition, offset: where to point at when it fails


class Failed(msgspec.Struct, frozen=True):
    """An event that could not be applied; it goes to the dead-letter topic."""

    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None


def shard_of(kind: str, entity_id: str, shards: int) -> str:
    """The shard key of an entity: stable across processes and runs (unlike ``hash``)."""
    return f"{kind[0]}{zlib.crc32(entity_id.encode()) % shards}"


class Shard:
    """Entity states of one shard.

    With ``hooks`` (:class:`c360.hooks.EntityHooks`), customer events also maintain the
    windows of relevance, rules and segments, and each batch ends with a bounded sweep
    that ages quiet customers to the shard's watermark (its latest event time less the
    allowed lateness): decay, roll-up and eviction need no event of theirs.
    """

    __slots__ = ("entities", "hooks", "watermark", "latest", "_cursor", "_lateness",
                 "partitions")

    def __init__(self, hooks: EntityHooks | None = None,
                 allowed_lateness: timedelta = timedelta(hours=1)) -> None:
        self.entities: dict[str, EntityState] = {}
        self.hooks = hooks
        self.latest: datetime | None = None  # latest event time seen by this shard
        self.watermark: datetime | None = None
        self._lateness = allowed_lateness
        self._cursor: list[str] = []  # ids still to visit in this round of the sweep
        # (topic, partition) -> latest event time (epoch s) this shard saw from it
        self.partitions: dict[tuple[str, int], float] = {}

    def __getstate__(self) -> tuple:
        return (self.entities, self.hooks, self.latest, self.watermark, self._lateness)

    def __setstate__(self, state: tuple | dict) -> None:
        if isinstance(state, dict):  # a snapshot from before hooks existed
            state = (state, None, None, None, timedelta(hours=1))
        self.entities, self.hooks, self.latest, self.watermark, self._lateness = state
        self._cursor = []
        self.partitions = {}  # starts afresh: ids are then kept a little longer, never less

    def apply(self, batch: list[Routed], logic: Logic | None,
              decisions: list[Decision] | None = None, collector: Collector | None = None
              ) -> tuple[list[Delta | Lifecycle], list[Failed]]:
        """Fold a batch; the deltas and lifecycle events in order, and the failures.

        Decisions made by rules are appended to ``decisions`` when given; applied events
        are counted into ``collector`` (global analytics) when given.
        """
        deltas: list[Delta | Lifecycle] = []
        failed: list[Failed] = []
        entities = self.entities
        hooks = self.hooks
        made: list[Decision] = [] if decisions is None else decisions
        latest = self.latest
        partitions = self.partitions
        for r in batch:
            state = entities.get(r.entity_id)
            if state is None:
                state = entities[r.entity_id] = EntityState()
            event = r.event
            if state.is_duplicate(event.event_id):
                continue
            notes: list[tuple[str, dict[str, Any]]] = []
            try:
                # An event that changes nothing (a late reading, an item already in the cart)
                # still counts: a version is one applied event, so versions do not depend on
                # the order in which topics were read, and they prove nothing was lost.
                changes = FOLDS[r.stream](state, event) or {}
                fields = state.fields
                if hooks is not None:
                    before = {k: fields.get(k) for k in changes}
                fields.update(changes)
                if logic is not None and r.kind == "customer":
                    derived = logic(fields, changes, event)
                    if derived:
                        if hooks is not None:
                            for k in derived:
                                if k not in before:
                                    before[k] = fields.get(k)
                        fields.update(derived)
                        changes.update(derived)
                if hooks is not None:
                    if r.kind == "customer":
                        where = (r.origin[0], r.origin[1])
                        ts = event.event_time.timestamp()
                        if ts > partitions.get(where, 0.0):
                            partitions[where] = ts
                        hooks.on_customer_event(state, r.stream, r.entity_id, event, changes,
                                                before, notes, made, where, partitions)
                    else:
                        CATALOG.observe(r.entity_id, fields, changes, event)
            except Exception as exc:  # a bug in a fold or a rule must not stop the flow
                topic, partition, offset = r.origin
                failed.append(Failed(f"could not apply {r.stream} event {event.event_id}: "
                                     f"{type(exc).__name__}: {exc}", topic, partition, offset,
                                     r.entity_id.encode(), encode(event)))
                continue
            state.version += 1
            t = event.event_time
            deltas.append(Delta(r.entity_id, r.kind, state.version, t, r.stream,
                                event.event_id, changes))
            if state.version == 1:
                deltas.append(Lifecycle(r.entity_id, r.kind, 1, t, "created",
                                        {"stream": r.stream}))
            for type_, detail in notes:
                deltas.append(Lifecycle(r.entity_id, r.kind, state.version, t, type_, detail))
            if latest is None or t > latest:
                latest = t
            if collector is not None:
                collector.add(r.stream, r.kind, r.entity_id, event, changes)
        self.latest = latest
        if hooks is not None and latest is not None:
            self._sweep(latest - self._lateness, deltas, len(batch))
        return deltas, failed

    def _sweep(self, watermark: datetime, deltas: list[Delta | Lifecycle], events: int) -> None:
        """Age customers to the watermark, round robin: up to ``hooks.sweep_per_batch`` a
        batch and one per event in it, so that the sweep's cost per event stays the same
        when a live stream arrives in many small batches."""
        hooks = self.hooks
        assert hooks is not None
        if self.watermark is None or watermark > self.watermark:
            self.watermark = watermark
        watermark = self.watermark
        cursor = self._cursor
        if not cursor:
            cursor.extend(self.entities)
            cursor.reverse()
        for _ in range(min(hooks.sweep_per_batch, events, len(cursor))):
            entity_id = cursor.pop()
            state = self.entities.get(entity_id)
            if state is None or state.windows is None:
                continue
            notes: list[tuple[str, dict[str, Any]]] = []
            changes = hooks.sweep(state, watermark, notes)
            if changes is None and not notes:
                continue
            state.version += 1
            deltas.append(Delta(entity_id, "customer", state.version, watermark, "relevance",
                                f"relevance:{entity_id}:{state.version}", changes or {}))
            for type_, detail in notes:
                deltas.append(Lifecycle(entity_id, "customer", state.version, watermark, type_,
                                        detail))

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        state = self.entities.get(entity_id)
        return None if state is None else dict(state.fields)
