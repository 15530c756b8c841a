"""What runs in the shard after an event is folded: windows, rules, segments, and the sweep.

:class:`EntityHooks` is the one small hook :meth:`c360.entity.shard.Shard.apply` calls. Per
customer event it maintains the windows of relevance (:mod:`c360.entity.windows`), computes
the churn score, runs the rules of its rule book (:mod:`c360.entity.rules`) and the
segments of its segment book (:mod:`c360.entity.segments`); it returns extra field changes
(part of the event's delta), lifecycle notes (emitted right after that delta) and decisions
(sent to the decisions topic). :meth:`sweep` ages a quiet customer to one of its
deadlines (the shard keeps them in event time, see :class:`c360.entity.shard.Shard`), so
decay, roll-up and eviction happen without events of theirs. Product events feed the rule
book's product index (:meth:`on_product_event`), which the offer rules read.

The hooks' settings (the flags, the aging, the lateness) are plain values; the books are
code and live with the pipeline that made the hooks: they are never pickled (a resumed
pipeline gives its own).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from c360.entity import rules as rules_mod
from c360.entity import segments as segments_mod
from c360.entity import windows as win
from c360.entity.rules import RuleBook
from c360.entity.segments import SegmentBook
from c360.entity.state import FOLDS, EntityState, Fold
from c360.model.events import Event

FIRED_MAX = 32  # decision keys remembered per customer for cool-downs
DECISIONS_MAX = win.LIMITS["decisions"]


class Changed(dict):
    """The changes of this event, with ``before``: the values they replaced."""

    __slots__ = ("before",)
    before: dict[str, Any]


@dataclass
class EntityHooks:
    windows: bool = True
    rules: bool = True
    segments: bool = True
    # 0 turns aging of quiet customers off (windows then stay at each customer's latest
    # event). Any other value: on. (It once bounded a per-batch sweep; the aging is now
    # driven by per-customer deadlines in event time, see c360.entity.shard.)
    sweep_per_batch: int = 64
    # The decoder's allowed lateness, when it checks one: lets the entity forget the ids of
    # events whose duplicates could only arrive too late to be applied anyway.
    allowed_lateness: timedelta | None = None
    # The rules (and the product index they read) and the segments: the built-in ones,
    # fresh per hooks, unless given. A Pipeline gives its own (Pipeline.rules, .segments).
    rule_book: RuleBook = field(default_factory=RuleBook.builtin)
    segment_book: SegmentBook = field(default_factory=SegmentBook.builtin)
    # The fold of each stream: the retail model's hand-written ones unless a pipeline gives
    # its model's (c360.entity.fold.compile_folds). Code, like the books: never snapshotted.
    folds: Mapping[str, Fold] = field(default_factory=lambda: FOLDS)
    # The model's time-dependent declared fields, aged with the windows (c360.entity.fold.
    # compile_aging); None: the model has none.
    age: Callable[[EntityState, float], dict[str, Any] | None] | None = None

    def on_product_event(self, product_id: str, fields: dict[str, Any],
                         changes: dict[str, Any], event: Event) -> None:
        """Keep the rule book's product index up to date (``fields``: the product's)."""
        self.rule_book.products.observe(product_id, fields, changes, event)

    def on_customer_event(self, state: EntityState, stream: str, entity_id: str, event: Event,
                          changes: dict[str, Any], before: dict[str, Any],
                          notes: win.Notes, decisions: list[rules_mod.Decision],
                          where: int | None = None,
                          marks: dict[int, float] | None = None) -> None:
        """Update ``state.fields`` and ``changes`` in place; append notes and decisions.

        ``where`` is the event's source partition, ``marks`` the shard's watermark per
        source partition (to forget event ids safely, see :meth:`_remember`).
        """
        fields = state.fields
        if self.windows:
            w = state.windows
            if w is None:
                w = state.windows = win.Windows()
            more = win.observe(w, stream, event, changes, fields, notes)
            if more:
                fields.update(more)
                changes.update(more)
            if self.allowed_lateness is not None and marks is not None and where is not None:
                self._remember(state, event, where, marks, "as_of_day" in changes)
        if "as_of_day" in changes:  # a new day: forget bookkeeping past its relevance
            _forget(state, event.event_time)
        if self.rules:
            if not rules_mod.CHURN_INPUTS.isdisjoint(changes):
                score = rules_mod.churn_score(fields)
                if score != fields.get("churn_risk"):
                    fields["churn_risk"] = changes["churn_risk"] = score
            made = self._run_rules(state, stream, entity_id, event, changes, before, notes)
            if made:
                decisions.extend(made)
                merged = [d.record() for d in made] + list(fields.get("decisions") or ())
                # Newest first by event time: the same list whatever order decisions came in.
                merged.sort(key=lambda d: (d["at"], d["rule"], d["key"]), reverse=True)
                fields["decisions"] = changes["decisions"] = merged[:DECISIONS_MAX]
        if self.segments:
            self._segments(fields, changes, notes, swept=False)

    def _remember(self, state: EntityState, event: Event, where: int,
                  marks: dict[int, float], new_day: bool) -> None:
        """Keep this event's id with its source partition and time; forget the ids that no
        duplicate can need any more.

        A duplicate comes on the same topic partition as its original, so in the same
        source partition. Once an original's time is behind that partition's watermark,
        the decoder sends any later duplicate of it to the late topic: its id need not be
        kept. (The count bound ``SEEN_EVENT_IDS`` stays.) A customer then keeps about one
        session's ids, not 64.
        """
        seen = state.seen
        seen[event.event_id] = (where, event.event_time.timestamp())
        if len(seen) > 12 or new_day:
            # Oldest first, stopping at the first id still needed: ids are kept in the order
            # they were applied, which is nearly event-time order, so this looks at the
            # expired ones and one more. (An id out of order is kept a little longer.)
            expired: list[str] = []
            for k, v in seen.items():
                if v is not None and v[1] >= marks.get(v[0], -math.inf):
                    break
                if v is not None:
                    expired.append(k)
            for k in expired:
                del seen[k]

    def _run_rules(self, state: EntityState, stream: str, entity_id: str, event: Event,
                   changes: dict[str, Any], before: dict[str, Any],
                   notes: win.Notes) -> list[rules_mod.Decision]:
        fields = state.fields
        view = Changed(changes)
        view.before = before
        made: list[rules_mod.Decision] = []
        opted_out: bool | None = None
        always, triggered = self.rule_book.for_stream(stream)
        run = always
        if triggered:
            more = [r for r in triggered if r.when is not None and not r.when.isdisjoint(changes)]
            if more:
                run = [*always, *more]
        for r in run:
            if r.marketing:
                if opted_out is None:
                    opted_out = rules_mod.opted_out(fields)
                if opted_out:
                    continue
            d = r.fn(fields, view, event)
            if d is None:
                continue
            key = f"{r.name}:{d.key}"
            t = event.event_time.timestamp()
            fired = state.fired
            if fired is None:
                fired = state.fired = {}
            last = fired.get(key)
            if last is not None and abs(t - last) < r.cooldown.total_seconds():
                continue  # the same decision within its cool-down: not repeated
            fired[key] = t
            if len(fired) > FIRED_MAX:
                del fired[min(fired, key=fired.__getitem__)]
            d = _complete(d, r, entity_id, event)
            made.append(d)
            notes.append(("rule_fired", {"rule": r.name, "action": d.action}))
            notes.append(("decision", d.record()))
        return made

    def _segments(self, fields: dict[str, Any], changes: dict[str, Any], notes: win.Notes,
                  swept: bool) -> None:
        current: list[str] = fields.get("segments") or []
        new: list[str] | None
        if swept:  # dormant, and whatever the aged fields (as_of_day) changed
            members = self.segment_book.membership(fields, changes, current)
            new = sorted({*(current if members is None else members), segments_mod.DORMANT})
            new = None if new == current else new
        else:
            new = self.segment_book.membership(fields, changes, current)
        if new is None:
            return
        fields["segments"] = changes["segments"] = new
        for name in sorted(set(new) - set(current)):
            notes.append(("segment_entered", {"segment": name}))
        for name in sorted(set(current) - set(new)):
            notes.append(("segment_left", {"segment": name}))

    def sweep(self, state: EntityState, watermark: datetime, notes: win.Notes,
              final: bool = False) -> dict[str, Any] | None:
        """Age one customer to ``watermark``; its changes, or None.

        ``final``: the end of input, where every customer is aged, quiet or not, so that
        every windowed field reads as of that time.
        """
        w = state.windows
        if not self.windows or w is None or w.now is None:
            return None
        quiet = watermark - w.now
        if not final and (quiet < win.QUIET_AFTER or (
                w.quiet and win.day_of(watermark) <= w.day and quiet < win.EVICTED.after)):
            return None
        fields = state.fields
        changes = win.sweep(w, watermark, fields, notes)
        fields.update(changes)
        if self.age is not None:
            more = self.age(state, watermark.timestamp())
            if more:
                fields.update(more)
                changes.update(more)
        if self.rules and not rules_mod.CHURN_INPUTS.isdisjoint(changes):
            # Recency is in days to as_of_day: a customer who stops buying grows more at risk
            # with no event of theirs (left stale, 26,641 of 26,924 Olist customers kept an
            # old score at the end of the data and at_risk was wrong for 2,795).
            score = rules_mod.churn_score(fields)
            if score != fields.get("churn_risk"):
                fields["churn_risk"] = changes["churn_risk"] = score
        if self.segments:  # "new" reads the day; dormant is the passing of time itself
            self._segments(fields, changes, notes, swept=quiet >= segments_mod.DORMANT_AFTER)
        if quiet >= win.EVICTED.after:
            state.seen.clear()  # duplicates of events this old are not expected any more
            state.cart_marks.clear()  # the cart went with the rest of the detail
            _forget(state, watermark)
        return changes or None


SETTLED = frozenset({"delivered", "canceled", "cancelled"})  # no status update follows
FORGET_AFTER = timedelta(days=30)


def _forget(state: EntityState, now: datetime) -> None:
    """Once a day per customer: drop cool-down keys past the longest cool-down, settled
    orders that left the recent list and cart marks of products that left the cart long
    ago. Each is bounded in count already; this bounds them in time too, so a customer's
    memory stops growing long before the counts are reached."""
    horizon = (now - FORGET_AFTER).timestamp()
    # Each is rebuilt rather than deleted from: a CPython dict never gives back the room
    # it once needed, so deleting alone would leave every customer at its busiest size.
    if state.fired:
        state.fired = {k: t for k, t in state.fired.items() if t >= horizon}
    if state.orders:
        recent = {o["order_id"] for o in state.fields.get("recent_orders") or ()}
        state.orders = {k: s for k, s in state.orders.items()
                        if s not in SETTLED or k in recent}
    if state.cart_marks:
        old = now - FORGET_AFTER
        state.cart_marks = {k: m for k, m in state.cart_marks.items()
                            if m[1] != 0 or m[0] >= old}


def _complete(d: rules_mod.Decision, r: rules_mod.Rule, entity_id: str,
              event: Event) -> rules_mod.Decision:
    ids = [event.event_id, *(i for i in d.event_ids if i != event.event_id)]
    return rules_mod.Decision(rule=r.name, action=d.action, reason=d.reason, fields=d.fields,
                              event_ids=ids, at=event.event_time, customer_id=entity_id,
                              key=d.key, marketing=r.marketing)

