"""The declared folds compiled: one fold function per stream, from an entity model.

:func:`compile_folds` turns a :class:`~c360.model.declare.EntityModel` into the
``{stream: fold}`` map the shard calls (``fold(state, event) -> changes``, the shape of the
hand-written folds of :mod:`c360.entity.state`). A stream's fold runs, in order: its
hand-written fold (if the stream has one), the declared folds of the fields it feeds, the
time-dependent fields (windows, decay, months) when the entity's event time moved, then the
derived fields whose inputs changed. A stream whose fields are all hand-written gets its
hand-written fold itself, untouched: the retail model's fold costs what it cost before.

Time-dependent fields (windowed, decayed, monthly) are read as of the entity's "now": its
latest event time over the model's streams, moved on by the shard's aging of quiet
customers (:func:`compile_aging`, called from ``EntityHooks.sweep`` at the same deadlines
as the retail windows, and at the end of a bounded run for everyone: the store's
``as_of``). With aging off (``--no-sweep``) they stay as of each entity's latest event.

Order independence (docs/event-time.md): sums are kept as exact integers (cents for money,
millionths for other floats), latest and last N are by event time with ties broken by event id,
windows and decay are read as of the entity's latest event time and only from the set of
events, so any reading order and any batching gives the same fields. (Decayed scores are
floats rounded to 6 decimals: re-expressed at different times they can differ in the last
bits of a double, never in what is shown.)

The bookkeeping (day buckets, times, decay anchors) lives in ``EntityState.aux`` as plain
lists, maps and numbers: recovery snapshots write it as is (c360.entity.codec, format 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any

from c360.entity.state import FOLDS, Changes, EntityState
from c360.model import declare as d
from c360.model.events import Event

StreamFold = Callable[[EntityState, Any], "Changes | None"]
Op = Callable[[dict[str, Any], dict[str, Any], Event, float, Changes], None]  # ts: its time
Aging = Callable[[EntityState, float], "Changes | None"]

DAY_S = 86_400
NOW = "@now"  # aux key of the entity's latest event time (epoch s) over the model's streams
SCALE = {"money": 100, "float": 1_000_000, "share": 1_000_000, "int": 1, "map": 1_000_000}
DECAY_DIGITS = 6
REANCHOR = 256  # half-lives between decay anchors: 2^256 is far inside a double's range


def compile_folds(model: d.EntityModel) -> dict[str, StreamFold]:
    """``{stream: fold}`` for every stream of ``model`` (checked first) and for commands."""
    model.check()
    fields = [f for f in model.fields if isinstance(f.fold, d.Fold)]
    clocked = [f for f in fields if isinstance(f.fold, d.Windowed | d.Decayed | d.Monthly)]
    derived = d.derived_order(model)
    clock_ops = [_clock_op(f) for f in clocked]
    derived_ops = [_derived_op(f) for f in derived]
    folds: dict[str, StreamFold] = {}
    for s in model.streams:
        ops = [_op(f) for f in fields if f.fold.stream == s.name]  # type: ignore[union-attr]
        hand = s.fold
        if not ops and not clock_ops and not derived_ops:
            folds[s.name] = hand if hand is not None else _nothing
        else:
            folds[s.name] = _stream_fold(hand, ops, clock_ops, derived_ops)
    command = FOLDS["commands"]
    folds["commands"] = _stream_fold(command, [], [], derived_ops) if derived_ops else command
    return folds


def _nothing(state: EntityState, event: Any) -> None:
    return None


def _stream_fold(hand: StreamFold | None, ops: list[Op], clock_ops: list[Op],
                 derived_ops: list[Op]) -> StreamFold:
    def fold(state: EntityState, event: Any) -> Changes | None:
        ch: Changes = dict(hand(state, event) or {}) if hand is not None else {}
        aux = state.aux
        if aux is None:
            aux = state.aux = {}
        fields = state.fields
        ts = event.event_time.timestamp()
        for op in ops:
            op(fields, aux, event, ts, ch)
        if clock_ops:
            now = aux.get(NOW)
            if now is None or ts > now:
                aux[NOW] = ts
            for op in clock_ops:
                op(fields, aux, event, ts, ch)
        for op in derived_ops:
            op(fields, aux, event, ts, ch)
        return ch or None

    return fold


def _getter(value: d.Value | tuple[str, ...]) -> Callable[[Any], Any]:
    if isinstance(value, tuple):
        names = value
        get = attrgetter(*names)
        if len(names) == 1:
            return lambda e: {names[0]: get(e), "at": e.event_time}
        return lambda e: {**dict(zip(names, get(e), strict=True)), "at": e.event_time}
    if isinstance(value, str):
        return attrgetter(value)
    return value


def _rank(value: Any) -> tuple[str, Any]:
    """A total order over values, for ties at one event time (any type, deterministic)."""
    if isinstance(value, bool | int | float | str):
        return (type(value).__name__, value)
    return (type(value).__name__, repr(value))


def _scale(f: d.Field, fold: d.Fold) -> int:
    if isinstance(fold, d.Count) or (isinstance(fold, d.Windowed) and fold.value is None):
        return 1
    return SCALE.get(f.type, 1_000_000)


def _out(total: int, scale: int) -> int | float:
    return total if scale == 1 else total / scale


def _op(f: d.Field) -> Op:
    """The per-event step of one declared field (time-dependent parts: _clock_op)."""
    fold = f.fold
    assert isinstance(fold, d.Fold)
    name, where = f.name, fold.where
    if isinstance(fold, d.Latest):
        get = _getter(fold.value)

        def latest(fields: dict, aux: dict, e: Event, ts: float, ch: Changes) -> None:
            v = get(e)
            if v is None or (where is not None and not where(e)):
                return
            mark = [ts, e.event_id]
            old = aux.get(name)
            if old is None or mark > old:
                aux[name] = mark
                if fields.get(name) != v:
                    ch[name] = v
        return latest
    if isinstance(fold, d.Sum | d.Count):
        get = _getter(fold.value) if isinstance(fold, d.Sum) else (lambda e: 1)
        by = None if fold.by is None else _getter(fold.by)
        scale = _scale(f, fold)

        def total(fields: dict, aux: dict, e: Event, ts: float, ch: Changes) -> None:
            if where is not None and not where(e):
                return
            v = get(e)
            if v is None:
                return
            units = v if scale == 1 else round(v * scale)
            if by is None:
                t = aux.get(name, 0) + units
                aux[name] = t
                ch[name] = t if scale == 1 else t / scale
            else:
                key = str(by(e))
                sums = dict(aux.get(name) or {})
                sums[key] = sums.get(key, 0) + units
                aux[name] = sums
                ch[name] = {k: _out(t, scale) for k, t in sorted(sums.items())}
        return total
    if isinstance(fold, d.Min):  # Max too
        get = _getter(fold.value)
        better = (lambda a, b: a > b) if isinstance(fold, d.Max) else (lambda a, b: a < b)

        def extreme(fields: dict, aux: dict, e: Event, ts: float, ch: Changes) -> None:
            v = get(e)
            if v is None or (where is not None and not where(e)):
                return
            current = fields.get(name)
            if current is None or better(v, current):
                ch[name] = v
        return extreme
    if isinstance(fold, d.Distinct):
        get = _getter(fold.value)
        limit = fold.limit

        def distinct(fields: dict, aux: dict, e: Event, ts: float, ch: Changes) -> None:
            v = get(e)
            if v is None or (where is not None and not where(e)):
                return
            current = fields.get(name) or []
            if v in current:
                return
            new = sorted([*current, v], key=_rank)
            if limit is not None:
                new = new[:limit]
            if new != current:
                ch[name] = new
        return distinct
    if isinstance(fold, d.LastN):
        get = _getter(fold.item)
        n = fold.n

        def last_n(fields: dict, aux: dict, e: Event, ts: float, ch: Changes) -> None:
            if where is not None and not where(e):
                return
            item = get(e)
            mark = [ts, e.event_id]
            marks: list = aux.get(name) or []
            items: list = fields.get(name) or []
            i = 0
            while i < len(marks) and marks[i] >= mark:  # newest first
                i += 1
            if i >= n:
                return
            aux[name] = [*marks[:i], mark, *marks[i:]][:n]
            ch[name] = [*items[:i], item, *items[i:]][:n]
        return last_n
    if isinstance(fold, d.Windowed | d.Monthly | d.Decayed):
        return _bucket_op(f, fold)
    raise TypeError(f"field {name!r}: no fold for {type(fold).__name__}")


# -- time-dependent fields: buckets per event, read as of the entity's latest event time ------

def _month(ts: float) -> int:
    t = datetime.fromtimestamp(ts, timezone.utc)
    return t.year * 12 + t.month - 1


def _month_name(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _bucket_op(f: d.Field, fold: d.Windowed | d.Monthly | d.Decayed) -> Op:
    """Per event: add to the field's buckets (kept in aux under the field's name)."""
    name, where = f.name, fold.where
    by = None if getattr(fold, "by", None) is None else _getter(fold.by)  # type: ignore[arg-type]
    if isinstance(fold, d.Decayed):
        value = fold.value
        get: Callable[[Any], Any] = ((lambda e: value) if isinstance(value, int | float)
                                     else _getter(value))
        hl = fold.half_life.total_seconds()

        def decay(fields: dict, aux: dict, e: Event, ts: float, ch: Changes) -> None:
            if where is not None and not where(e):
                return
            v = get(e)
            if v is None:
                return
            state = aux.get(name)
            if state is None:
                state = aux[name] = [_anchor(ts, hl), {}]
            key = "" if by is None else str(by(e))
            totals = state[1]
            totals[key] = totals.get(key, 0.0) + v * 2.0 ** ((ts - state[0]) / hl)
        return decay
    scale = _scale(f, fold)
    getv = (lambda e: 1) if fold.value is None else _getter(fold.value)  # type: ignore[arg-type]
    monthly = isinstance(fold, d.Monthly)

    def bucket(fields: dict, aux: dict, e: Event, ts: float, ch: Changes) -> None:
        if where is not None and not where(e):
            return
        v = getv(e)
        if v is None:
            return
        index = _month(ts) if monthly else int(ts // DAY_S)
        buckets = aux.get(name)
        if buckets is None:
            buckets = aux[name] = {}
        units = round(v * scale)
        if by is None:
            buckets[index] = buckets.get(index, 0) + units
        else:
            per = buckets.get(index)
            if per is None:
                per = buckets[index] = {}
            key = str(by(e))
            per[key] = per.get(key, 0) + units
    return bucket


def _anchor(ts: float, hl: float) -> float:
    """The decay anchor for time ``ts``: a multiple of REANCHOR half-lives (a function of the
    time only, so every reading order re-anchors at the same points)."""
    span = REANCHOR * hl
    return math.floor(ts / span) * span


def _clock_op(f: d.Field) -> Op:
    """After every event of the entity: the field's value as of the entity's latest event
    time, from its buckets (old buckets dropped)."""
    fold = f.fold
    name = f.name
    if isinstance(fold, d.Decayed):
        hl = fold.half_life.total_seconds()
        keyed = fold.by is not None

        def decayed(fields: dict, aux: dict, e: Event, ts: float, ch: Changes) -> None:
            state = aux.get(name)
            if state is None:
                return
            now = aux[NOW]
            anchor = _anchor(now, hl)
            if anchor != state[0]:  # re-express at the new anchor (scores shrink, never grow)
                k = 2.0 ** ((state[0] - anchor) / hl)
                state[0], state[1] = anchor, {key: t * k for key, t in state[1].items()}
            factor = 2.0 ** ((anchor - now) / hl)
            value: Any
            if keyed:
                value = {key: round(t * factor, DECAY_DIGITS)
                         for key, t in sorted(state[1].items())}
            else:
                value = round(state[1].get("", 0.0) * factor, DECAY_DIGITS)
            if fields.get(name) != value:
                ch[name] = value
        return decayed
    assert isinstance(fold, d.Windowed | d.Monthly)
    scale = _scale(f, fold)
    monthly = isinstance(fold, d.Monthly)
    span = fold.months if isinstance(fold, d.Monthly) else fold.days
    keyed = getattr(fold, "by", None) is not None

    def window(fields: dict, aux: dict, e: Event, ts: float, ch: Changes) -> None:
        buckets = aux.get(name)
        if buckets is None:
            buckets = aux[name] = {}
        now = aux[NOW]
        last = _month(now) if monthly else int(now // DAY_S)
        first = last - span + 1
        old = [k for k in buckets if k < first]
        for k in old:  # out of the window for good: the entity's time only moves forward
            del buckets[k]
        value: Any
        if monthly:
            value = {_month_name(k): _out(t, scale) for k, t in sorted(buckets.items())}
        elif keyed:
            sums: dict[str, int] = {}
            for per in buckets.values():
                for key, t in per.items():
                    sums[key] = sums.get(key, 0) + t
            value = {key: _out(t, scale) for key, t in sorted(sums.items())}
        else:
            value = _out(sum(buckets.values()), scale)
        if fields.get(name) != value:
            ch[name] = value
    return window


def _derived_op(f: d.Field) -> Op:
    fold = f.fold
    assert isinstance(fold, d.Derived)
    name, inputs, fn = f.name, fold.inputs, fold.fn
    wanted = frozenset(inputs)

    def derived(fields: dict, aux: dict, e: Event, ts: float, ch: Changes) -> None:
        if wanted.isdisjoint(ch):
            return
        value = fn(**{i: ch[i] if i in ch else fields.get(i) for i in inputs})
        if fields.get(name) != value or name not in fields:
            ch[name] = value
    return derived


def compile_aging(model: d.EntityModel) -> Aging | None:
    """What the shard's aging of a quiet customer does to the model's time-dependent fields
    (and the derived fields they feed): read them as of the aging time. None: the model
    has none (the retail model: its windows are c360.entity.windows's)."""
    clocked = [f for f in model.fields if isinstance(f.fold, d.Windowed | d.Decayed | d.Monthly)]
    if not clocked:
        return None
    clock_ops = [_clock_op(f) for f in clocked]
    derived_ops = [_derived_op(f) for f in d.derived_order(model)]

    def age(state: EntityState, ts: float) -> Changes | None:
        aux = state.aux
        if not aux or NOW not in aux:
            return None  # none of the model's time-dependent fields has an event yet
        if ts > aux[NOW]:
            aux[NOW] = ts
        ch: Changes = {}
        fields = state.fields
        for op in (*clock_ops, *derived_ops):
            op(fields, aux, _AGING, ts, ch)
        return ch or None

    return age


_AGING: Any = None  # the "event" the clock and derived steps get when aging: they read none


def folds_of(model: d.EntityModel | None) -> Mapping[str, StreamFold]:
    """The compiled folds of ``model``; None: the hand-written retail folds as they are."""
    return FOLDS if model is None else compile_folds(model)
