"""The unit of change that flows out of an entity: a field-level delta."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class Delta(msgspec.Struct, frozen=True, array_like=True):
    """One applied change to one entity.

    ``version`` grows by one per event applied to that entity (duplicates are
    not applied), so a consumer can tell a missed or repeated delta. ``changes``
    holds the new values of the top-level fields that changed; it is empty when
    the event changed nothing.
    """

    entity_id: str
    kind: str  # "customer" or "product"
    version: int
    event_time: datetime
    stream: str
    event_id: str
    changes: dict[str, Any]

    def only(self, fields: frozenset[str]) -> Delta | None:
        """This delta restricted to ``fields``; None when it touches none of them."""
        picked = {k: v for k, v in self.changes.items() if k in fields}
        if not picked:
            return None
        return msgspec.structs.replace(self, changes=picked)


class Lifecycle(msgspec.Struct, frozen=True):
    """Something that happened to an entity as a whole, not to one field.

    ``type`` is one of LIFECYCLE_TYPES; ``version`` is the entity's version when
    it happened (the lifecycle event follows that version's delta, if any).
    """

    entity_id: str
    kind: str
    version: int
    event_time: datetime
    type: str
    detail: dict[str, Any] = {}


LIFECYCLE_TYPES = frozenset({
    "created", "rule_fired", "decision", "decayed", "rolled_up", "forgotten", "evicted",
    "segment_entered", "segment_left",
})
