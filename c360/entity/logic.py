"""Business logic: plain Python functions of the entity that re-run on every change.

A logic function gets the entity's fields (with the event's changes already
applied), the changes themselves and the event, and returns further changes
(derived fields) or None. ``first_logic`` is the built-in one; pass your own to
``build_flow(..., logic=...)`` or chain several with :func:`chain`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from c360.model.events import Event

Changes = dict[str, Any]
Logic = Callable[[Mapping[str, Any], Changes, Event], "Changes | None"]

# Points thresholds of the loyalty programme, highest first.
TIERS: tuple[tuple[int, str], ...] = ((10_000, "platinum"), (5_000, "gold"), (1_000, "silver"),
                                      (0, "bronze"))


def tier_for(points: int) -> str:
    for threshold, tier in TIERS:
        if points >= threshold:
            return tier
    return TIERS[-1][1]


def first_logic(fields: Mapping[str, Any], changes: Changes, event: Event) -> Changes | None:
    """Lifetime value, last seen, first seen and loyalty tier."""
    out: Changes = {}
    t = event.event_time
    last = fields.get("last_seen")
    if last is None or t > last:
        out["last_seen"] = t
    first = fields.get("first_seen")
    if first is None or t < first:
        out["first_seen"] = t
    if "total_spent" in changes:
        out["lifetime_value"] = changes["total_spent"]
    if "loyalty_points" in changes or "loyalty_program_tier" in changes:
        tier = fields.get("loyalty_program_tier") or tier_for(fields.get("loyalty_points", 0))
        if tier != fields.get("loyalty_tier"):
            out["loyalty_tier"] = tier
    return out


def chain(*logics: Logic) -> Logic:
    """One logic that runs ``logics`` in order, each seeing the others' changes."""

    def chained(fields: Mapping[str, Any], changes: Changes, event: Event) -> Changes | None:
        out: Changes = {}
        view = dict(fields)
        for logic in logics:
            more = logic(view, {**changes, **out}, event)
            if more:
                out.update(more)
                view.update(more)
        return out

    return chained
