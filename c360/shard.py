"""A shard: the entities of a slice of the id space, folded batch by batch.

Bytewax keys state by shard rather than by entity so that one stateful call
handles a whole batch of events: per-item operator overhead is paid per batch,
which is what lets the pipeline run near the speed of a bare Python loop.
Every event of one entity lands in the same shard, whatever its stream: there is
no stream join, each stream updates its slice of the one entity.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

from c360.delta import Delta, Lifecycle
from c360.entity import FOLDS, EntityState
from c360.events import Event, encode
from c360.logic import Logic


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
    """Entity states of one shard."""

    __slots__ = ("entities",)

    def __init__(self) -> None:
        self.entities: dict[str, EntityState] = {}

    def __getstate__(self) -> dict[str, EntityState]:
        return self.entities

    def __setstate__(self, state: dict[str, EntityState]) -> None:
        self.entities = state

    def apply(self, batch: list[Routed],
              logic: Logic | None) -> tuple[list[Delta | Lifecycle], list[Failed]]:
        """Fold a batch; the deltas and lifecycle events in order, and the failures."""
        deltas: list[Delta | Lifecycle] = []
        failed: list[Failed] = []
        entities = self.entities
        for r in batch:
            state = entities.get(r.entity_id)
            if state is None:
                state = entities[r.entity_id] = EntityState()
            event = r.event
            if state.is_duplicate(event.event_id):
                continue
            try:
                # An event that changes nothing (a late reading, an item already in the cart)
                # still counts: a version is one applied event, so versions do not depend on
                # the order in which topics were read, and they prove nothing was lost.
                changes = FOLDS[r.stream](state, event) or {}
                fields = state.fields
                fields.update(changes)
                if logic is not None and r.kind == "customer":
                    derived = logic(fields, changes, event)
                    if derived:
                        fields.update(derived)
                        changes.update(derived)
            except Exception as exc:  # a bug in a fold or a rule must not stop the flow
                topic, partition, offset = r.origin
                failed.append(Failed(f"could not apply {r.stream} event {event.event_id}: "
                                     f"{type(exc).__name__}: {exc}", topic, partition, offset,
                                     r.entity_id.encode(), encode(event)))
                continue
            state.version += 1
            deltas.append(Delta(r.entity_id, r.kind, state.version, event.event_time, r.stream,
                                event.event_id, changes))
            if state.version == 1:
                deltas.append(Lifecycle(r.entity_id, r.kind, 1, event.event_time, "created",
                                        {"stream": r.stream}))
        return deltas, failed

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        state = self.entities.get(entity_id)
        return None if state is None else dict(state.fields)
