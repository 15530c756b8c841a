"""Rule-defined segments with live membership: the entity field ``segments``.

A segment is a predicate over the customer's fields, added to a pipeline's
:class:`SegmentBook` with the fields it reads, so it is re-evaluated only when one of them
changes::

    @pipeline.segment("big_spender", fields=("spend_30d",))
    def big_spender(c):
        return c.get("spend_30d", 0) >= 500

:meth:`SegmentBook.builtin` holds the built-in segments, fresh each time: every pipeline
has its own book, and a segment added to one is in no other.

Membership is a pure function of the entity's fields, so it comes out the same in any
reading order of the streams. ``dormant`` is the one segment no event can tell: the
shard's sweep puts customers there when the stream's event time has moved on without
them (see :func:`c360.entity.windows.sweep`), and their next event takes them out. Entering and
leaving are deltas of ``segments`` and lifecycle events ``segment_entered`` /
``segment_left``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

Fields = Mapping[str, Any]
DORMANT = "dormant"
DORMANT_AFTER = timedelta(days=30)


@dataclass(frozen=True)
class Segment:
    name: str
    test: Callable[[Fields], bool]
    fields: frozenset[str]


class SegmentBook:
    """The segments one pipeline keeps. Added or removed while it runs, a segment takes
    effect from the next event that changes a field it reads. Not pickled into recovery
    snapshots (segments are code): a resumed pipeline keeps the ones it is given."""

    def __init__(self, segments: Iterable[Segment] = ()) -> None:
        self._lock = threading.Lock()
        self._set({s.name: s for s in segments})

    @classmethod
    def builtin(cls) -> SegmentBook:
        """The built-in segments (vip, at_risk, bargain_hunter, new), in a book of its own."""
        return cls(_BUILTIN)

    def _set(self, segments: dict[str, Segment]) -> None:
        # One tuple, replaced whole: the fold's worker threads read it without a lock.
        inputs = frozenset().union(*(x.fields for x in segments.values()))
        self._state: tuple[dict[str, Segment], frozenset[str]] = (segments, inputs)

    def add(self, name: str, test: Callable[[Fields], bool], fields: Iterable[str]) -> Segment:
        """Add (or replace) a segment: ``test(fields)`` says whether a customer is in it."""
        s = Segment(name, test, frozenset(fields))
        with self._lock:
            self._set({**self._state[0], name: s})
        return s

    def remove(self, name: str) -> None:
        """Take a segment away (nothing happens if there is none of that name)."""
        with self._lock:
            self._set({k: v for k, v in self._state[0].items() if k != name})

    def segment(self, name: str, *, fields: Iterable[str]
                ) -> Callable[[Callable[[Fields], bool]], Callable[[Fields], bool]]:
        """Decorator form of :meth:`add`."""

        def wrap(test: Callable[[Fields], bool]) -> Callable[[Fields], bool]:
            self.add(name, test, fields)
            return test

        return wrap

    def __contains__(self, name: object) -> bool:
        return name in self._state[0]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._state[0]))

    def __len__(self) -> int:
        return len(self._state[0])

    def __getitem__(self, name: str) -> Segment:
        return self._state[0][name]

    def __repr__(self) -> str:
        return f"SegmentBook({sorted(self._state[0])})"

    def membership(self, fields: Fields, changes: Fields, current: list[str]
                   ) -> list[str] | None:
        """The new ``segments`` list, or None when unchanged (only touched segments re-run)."""
        segments, inputs = self._state
        if inputs.isdisjoint(changes) and DORMANT not in current:
            return None  # the common case: nothing any segment reads has changed
        members = set(current)
        members.discard(DORMANT)  # an event: the customer is not dormant any more
        for s in segments.values():
            if s.fields.isdisjoint(changes):
                continue
            if s.test(fields):
                members.add(s.name)
            else:
                members.discard(s.name)
        new_list = sorted(members)
        return None if new_list == current else new_list


# -- the built-in segments ------------------------------------------------------------------------

_BUILTIN: list[Segment] = []  # filled once at import; SegmentBook.builtin() copies it


def _builtin(name: str, *, fields: Iterable[str]
             ) -> Callable[[Callable[[Fields], bool]], Callable[[Fields], bool]]:
    def wrap(test: Callable[[Fields], bool]) -> Callable[[Fields], bool]:
        _BUILTIN.append(Segment(name, test, frozenset(fields)))
        return test

    return wrap


@_builtin("vip", fields=("lifetime_value", "loyalty_tier"))
def vip(c: Fields) -> bool:
    return c.get("lifetime_value", 0) >= 2000 or c.get("loyalty_tier") in ("gold", "platinum")


@_builtin("at_risk", fields=("churn_risk",))
def at_risk(c: Fields) -> bool:
    return c.get("churn_risk", 0) >= 0.6


@_builtin("bargain_hunter", fields=("recent_orders",))
def bargain_hunter(c: Fields) -> bool:
    orders = c.get("recent_orders") or ()
    if len(orders) < 3:
        return False
    discounted = sum(1 for o in orders if any(li.get("discount", 0) > 0 for li in o["lines"]))
    return discounted / len(orders) >= 0.6


@_builtin("new", fields=("first_seen", "as_of_day"))
def new(c: Fields) -> bool:
    first, today = c.get("first_seen"), c.get("as_of_day")
    return first is not None and today is not None and (today - first.date()).days <= 30
