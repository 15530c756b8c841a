"""Rule-defined segments with live membership: the entity field ``segments``.

A segment is a predicate over the customer's fields, registered with the fields it
reads, so it is re-evaluated only when one of them changes::

    from c360.entity.segments import segment

    @segment("big_spender", fields=("spend_30d",))
    def big_spender(c):
        return c.get("spend_30d", 0) >= 500

Membership is a pure function of the entity's fields, so it comes out the same in any
reading order of the streams. ``dormant`` is the one segment no event can tell: the
shard's sweep puts customers there when the stream's event time has moved on without
them (see :func:`c360.entity.windows.sweep`), and their next event takes them out. Entering and
leaving are deltas of ``segments`` and lifecycle events ``segment_entered`` /
``segment_left``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
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


SEGMENTS: dict[str, Segment] = {}
_inputs: frozenset[str] = frozenset()  # every field some segment reads
_lock = threading.Lock()


def register(name: str, test: Callable[[Fields], bool], fields: Iterable[str]) -> Segment:
    global _inputs
    s = Segment(name, test, frozenset(fields))
    with _lock:
        SEGMENTS[name] = s
        _inputs = frozenset().union(*(x.fields for x in SEGMENTS.values()))
    return s


def unregister(name: str) -> None:
    global _inputs
    with _lock:
        SEGMENTS.pop(name, None)
        _inputs = frozenset().union(*(x.fields for x in SEGMENTS.values()))


def segment(name: str, *, fields: Iterable[str]) -> Callable[[Callable[[Fields], bool]],
                                                              Callable[[Fields], bool]]:
    def wrap(test: Callable[[Fields], bool]) -> Callable[[Fields], bool]:
        register(name, test, fields)
        return test

    return wrap


@segment("vip", fields=("lifetime_value", "loyalty_tier"))
def vip(c: Fields) -> bool:
    return c.get("lifetime_value", 0) >= 2000 or c.get("loyalty_tier") in ("gold", "platinum")


@segment("at_risk", fields=("churn_risk",))
def at_risk(c: Fields) -> bool:
    return c.get("churn_risk", 0) >= 0.6


@segment("bargain_hunter", fields=("recent_orders",))
def bargain_hunter(c: Fields) -> bool:
    orders = c.get("recent_orders") or ()
    if len(orders) < 3:
        return False
    discounted = sum(1 for o in orders if any(li.get("discount", 0) > 0 for li in o["lines"]))
    return discounted / len(orders) >= 0.6


@segment("new", fields=("first_seen", "as_of_day"))
def new(c: Fields) -> bool:
    first, today = c.get("first_seen"), c.get("as_of_day")
    return first is not None and today is not None and (today - first.date()).days <= 30


def membership(fields: Fields, changes: Fields, current: list[str]) -> list[str] | None:
    """The new ``segments`` list, or None when unchanged (only touched segments re-run)."""
    if _inputs.isdisjoint(changes) and DORMANT not in current:
        return None  # the common case: nothing any segment reads has changed
    members = set(current)
    members.discard(DORMANT)  # an event: the customer is not dormant any more
    for s in SEGMENTS.values():
        if s.fields.isdisjoint(changes):
            continue
        if s.test(fields):
            members.add(s.name)
        else:
            members.discard(s.name)
    new_list = sorted(members)
    return None if new_list == current else new_list
