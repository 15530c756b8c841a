"""A shard: the entities of a slice of the id space, folded batch by batch.

Bytewax keys state by shard rather than by entity so that one stateful call
handles a whole batch of events: per-item operator overhead is paid per batch,
which is what lets the pipeline run near the speed of a bare Python loop.
Every event of one entity lands in the same shard, whatever its stream: there is
no stream join, each stream updates its slice of the one entity.
"""

from __future__ import annotations

import heapq
import math
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec

from c360.entity.analytics import Collector
from c360.entity.derive import EntityHooks
from c360.entity.logic import Logic
from c360.entity.rules import Decision
from c360.entity.state import FOLDS, EntityState
from c360.entity.windows import next_due
from c360.model.delta import Delta, Lifecycle
from c360.model.events import Event, encode

NO_MARK = -math.inf


class Routed(msgspec.Struct, frozen=True, array_like=True):
    """A decoded event on its way to its entity (a Struct: cheap to build per event)."""

    stream: str
    kind: str
    entity_id: str
    event: Event
    origin: tuple[str, int, int]  # topic, partition, offset: where to point at when it fails
    # The watermark (epoch s) of its source partition at its position: that partition's
    # latest event time before it, less the allowed lateness. NaN: not known (events fed
    # to a shard directly); the shard then keeps a clock per partition itself.
    mark: float = math.nan


class ShardBatch(msgspec.Struct):
    """What one source partition's item brings to one shard: events, then its watermark."""

    key: str  # the shard's key
    part: int  # the source partition
    parts: int  # how many source partitions the dataflow reads
    items: list[Routed]
    mark: float  # the partition's watermark after these events (epoch s)
    idle: bool = False  # the partition is idle: it must not hold global windows back
    final: float | None = None  # end of input: the partition's latest event time


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


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


class Shard:
    """Entity states of one shard.

    With ``hooks`` (:class:`c360.entity.derive.EntityHooks`), customer events also maintain the
    windows of relevance, rules and segments, and quiet customers are aged in event time:
    per source partition, a heap of (deadline, customer id) (deadlines from
    :func:`c360.entity.windows.next_due`). Before an event whose watermark is ``w`` is applied,
    every customer of that partition whose deadline is at most ``w`` is aged to its
    deadline, in (deadline, id) order. Every event of a customer comes from one source
    partition, in an order that is a function of the topics' contents (c360.topics.source), so
    what is aged when, and every version, is the same in every run. :meth:`finish` ages
    everyone to the end of input.

    Recovery snapshots hold its data, never its hooks or lateness (c360.entity.codec).
    """

    __slots__ = ("entities", "hooks", "latest", "_lateness", "marks", "_due", "_clocks",
                 "ended", "dirty")

    def __init__(self, hooks: EntityHooks | None = None,
                 allowed_lateness: timedelta = timedelta(hours=1)) -> None:
        self.entities: dict[str, EntityState] = {}
        self.hooks = hooks
        self.latest: datetime | None = None  # latest event time seen by this shard
        self._lateness = allowed_lateness
        self.marks: dict[int, float] = {}  # source partition -> its watermark here (epoch s)
        self._due: dict[int, list[tuple[float, str]]] = {}  # partition -> deadline heap
        self._clocks: dict[int, float] = {}  # events without a mark: latest time per partition
        self.ended: dict[int, float] = {}  # source partition -> its final event time
        # Ids of the entities changed since the last incremental snapshot (c360.entity.codec
        # format 3 writes only these): every entity an event reached, aged or removed. A
        # superset is harmless (an unchanged entity is written again), a subset loses state.
        self.dirty: set[str] = set()

    @property
    def aging(self) -> bool:
        return self.hooks is not None and self.hooks.windows and self.hooks.sweep_per_batch > 0

    def apply(self, batch: ShardBatch | list[Routed], logic: Logic | None,
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
        folds = FOLDS if hooks is None else hooks.folds
        aging = self.aging
        made: list[Decision] = [] if decisions is None else decisions
        latest = self.latest
        marks = self.marks
        dirty = self.dirty
        items = batch.items if isinstance(batch, ShardBatch) else batch
        part = -1
        mark = NO_MARK
        for r in items:
            p = r.origin[1]
            if p != part:
                part, mark = p, marks.get(p, NO_MARK)
            w = r.mark
            if w != w:  # no mark: this shard's own clock of the partition, less the lateness
                clock = self._clocks.get(p, NO_MARK)
                w = clock - self._lateness.total_seconds()
                ts = r.event.event_time.timestamp()
                if ts > clock:
                    self._clocks[p] = ts
            if w > mark:
                marks[p] = mark = w
                if aging:
                    self._age(p, w, deltas)
            state = entities.get(r.entity_id)
            if state is None:
                state = entities[r.entity_id] = EntityState()
            dirty.add(r.entity_id)  # before the duplicate check: it records the event id
            event = r.event
            if state.is_duplicate(event.event_id):
                continue
            notes: list[tuple[str, dict[str, Any]]] = []
            try:
                # An event that changes nothing (a late reading, an item already in the cart)
                # still counts: a version is one applied event, so versions do not depend on
                # the order in which topics were read, and they prove nothing was lost.
                changes = folds[r.stream](state, event) or {}
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
                        hooks.on_customer_event(state, r.stream, r.entity_id, event, changes,
                                                before, notes, made, p, marks)
                        win = state.windows
                        if aging and win is not None and win.due is None:
                            due = next_due(win, state.fields)
                            if due is not None:
                                win.due = due
                                heapq.heappush(self._due.setdefault(p, []), (due, r.entity_id))
                    else:
                        hooks.on_product_event(r.entity_id, fields, changes, event)
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
        if isinstance(batch, ShardBatch):
            if batch.mark > marks.get(batch.part, NO_MARK):
                marks[batch.part] = batch.mark
                if aging:
                    self._age(batch.part, batch.mark, deltas)
            if batch.final is not None:
                self.ended[batch.part] = batch.final
        return deltas, failed

    def _age(self, part: int, watermark: float, deltas: list[Delta | Lifecycle]) -> None:
        """Age the partition's customers whose deadline is at most ``watermark``, each to its
        deadline, in (deadline, id) order."""
        heap = self._due.get(part)
        if not heap:
            return
        entities = self.entities
        while heap and heap[0][0] <= watermark:
            due, entity_id = heapq.heappop(heap)
            state = entities.get(entity_id)
            w = state.windows if state is not None else None
            if state is None or w is None or w.due != due:
                continue  # a stale entry
            self.dirty.add(entity_id)  # its deadline moves, aged or not
            nxt = next_due(w, state.fields)
            if nxt is not None and nxt > due:  # it had events since: later
                w.due = nxt
                heapq.heappush(heap, (nxt, entity_id))
                continue
            self._age_one(entity_id, state, due, deltas)
            nxt = next_due(w, state.fields)
            w.due = nxt
            if nxt is not None:
                heapq.heappush(heap, (nxt, entity_id))

    def _age_one(self, entity_id: str, state: EntityState, ts: float,
                 deltas: list[Delta | Lifecycle], final: bool = False) -> None:
        hooks = self.hooks
        assert hooks is not None
        self.dirty.add(entity_id)
        w = state.windows
        if ts > w.swept:
            w.swept = ts
        at = _at(ts)
        notes: list[tuple[str, dict[str, Any]]] = []
        changes = hooks.sweep(state, at, notes, final)
        if changes is None and not notes:
            return
        state.version += 1
        deltas.append(Delta(entity_id, "customer", state.version, at, "relevance",
                            f"relevance:{entity_id}:{state.version}", changes or {}))
        for type_, detail in notes:
            deltas.append(Lifecycle(entity_id, "customer", state.version, at, type_, detail))

    def finish(self, as_of: float | None = None) -> list[Delta | Lifecycle]:
        """End of input: age every customer to ``as_of`` (default: the latest event time of
        every source partition that ended), deadlines first. (A customer whose windows do
        not move, its latest event being on that day, gets no delta.)"""
        if as_of is None:
            if not self.ended:
                return []
            as_of = max(self.ended.values())
        deltas: list[Delta | Lifecycle] = []
        if not math.isfinite(as_of):  # no source partition read an event time: nothing to age to
            return deltas
        if not self.aging:
            return deltas
        for part in sorted(self._due):
            self._age(part, as_of, deltas)
        for entity_id in sorted(self.entities):
            state = self.entities[entity_id]
            if state.windows is not None and state.windows.now is not None:
                self._age_one(entity_id, state, as_of, deltas, final=True)
        return deltas

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        state = self.entities.get(entity_id)
        return None if state is None else dict(state.fields)
