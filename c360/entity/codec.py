"""Recovery snapshots of the fold's state: a shard's entities and the global windows.

A snapshot holds data only: each entity's fields, version and bookkeeping (recent event
ids, known orders, cart marks, windows of relevance, cool-downs), and the shard's clocks
(watermark per source partition, aging deadlines, end-of-input times). It never holds
settings (the hooks' flags, the aging, the allowed lateness) nor code (rules, segments):
a resumed dataflow folds with the ones it was started with, as a fresh one would.

The layout below is format :data:`SHARD_FORMAT` / :data:`GLOBAL_FORMAT` of
:mod:`c360.model.codec` (a header, then MessagePack of these structs, arrays of values in
field order: no field, class or module names in the bytes). A change to any of them is a
new version; the reader refuses other versions with a one-line
:class:`~c360.errors.StateFormatError`. ``tests/fixtures/make_state_fixtures.py`` wrote
the committed snapshots that ``tests/test_state_format.py`` resumes from.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import msgspec

from c360.entity.analytics import Acc, GlobalEntities, GlobalWindows
from c360.entity.derive import EntityHooks
from c360.entity.shard import Shard
from c360.entity.state import EntityState
from c360.entity.windows import Windows
from c360.errors import DataError
from c360.model.codec import ENCODER, GLOBAL, MAGIC, SHARD, decode, decoder, header, payload, plain

SHARD_FORMAT = 2  # 2: each entity also holds its declared folds' bookkeeping (aux)
# 3: incremental: the shard's bookkeeping and a sequence number; its entities are rows of the
# shard's entity log (c360.store.entity_log), each an EntityV2 without a header.
SHARD_LOG_FORMAT = 3
SHARD_READS = (1, 2, 3)  # format 1 resumes with no bookkeeping (no declared folds ran then)
GLOBAL_FORMAT = 1
ADVICE = ("start afresh with an empty recovery directory (a new --recovery-dir, or delete "
          "this one), or resume it with the c360 that wrote it")


class WindowsV1(msgspec.Struct, array_like=True):
    now: datetime | None
    day: int
    daily: dict[str, dict[int, int]]  # measure -> day -> amount (cents or counts)
    scores: dict[str, dict[str, float]]
    refs: dict[str, float]
    at: dict[str, float]
    quiet: bool
    swept: float
    due: float | None


class EntityV1(msgspec.Struct, array_like=True):
    fields: dict[str, Any]
    version: int
    seen: dict[str, tuple[int, float] | None]  # event id -> (source partition, time) or nil
    orders: dict[str, str]
    review_sum: int
    cart_marks: dict[str, tuple[datetime, int]]
    windows: WindowsV1 | None
    fired: dict[str, float] | None


class EntityV2(msgspec.Struct, array_like=True):
    fields: dict[str, Any]
    version: int
    seen: dict[str, tuple[int, float] | None]
    orders: dict[str, str]
    review_sum: int
    cart_marks: dict[str, tuple[datetime, int]]
    windows: WindowsV1 | None
    fired: dict[str, float] | None
    aux: dict[str, Any] | None  # c360.entity.fold's bookkeeping: plain lists, maps, numbers


class ShardV1(msgspec.Struct, array_like=True):
    kind: str | None  # "customer" or "product"; None before the shard's first event
    entities: dict[str, EntityV1]
    latest: datetime | None
    marks: dict[int, float]  # source partition -> watermark (epoch s)
    due: dict[int, list[tuple[float, str]]]  # source partition -> (deadline, id) heap
    clocks: dict[int, float]
    ended: dict[int, float]


class ShardV2(msgspec.Struct, array_like=True):
    kind: str | None
    entities: dict[str, EntityV2]
    latest: datetime | None
    marks: dict[int, float]
    due: dict[int, list[tuple[float, str]]]
    clocks: dict[int, float]
    ended: dict[int, float]


class ShardV3(msgspec.Struct, array_like=True):
    key: str | None  # the shard key: whose entity log holds the entities
    seq: int  # the snapshot's number in that log: the state is each entity's row <= seq
    kind: str | None
    latest: datetime | None
    marks: dict[int, float]
    due: dict[int, list[tuple[float, str]]]
    clocks: dict[int, float]
    ended: dict[int, float]


class AccV1(msgspec.Struct, array_like=True):
    start: datetime
    revenue: int
    orders: int
    customers: list[str]
    streams: dict[str, int]
    products: dict[str, int]
    categories: dict[str, int]
    queries: dict[str, int]
    returns: int


class GlobalV1(msgspec.Struct, array_like=True):
    versions: dict[str, int]
    series: dict[str, list[dict[str, Any]]]
    open: list[tuple[datetime, str, AccV1]]  # (end, "minute" or "five", window)
    watermark: datetime | None
    late: int
    marks: list[tuple[str, int, float, bool]]  # (shard key, partition, watermark, idle)


_SHARDS = {1: decoder(ShardV1), 2: decoder(ShardV2), 3: decoder(ShardV3)}
_ENTITY = decoder(EntityV2)
_GLOBAL = decoder(GlobalV1)


def check(raw: bytes) -> None:
    """Raise :class:`StateFormatError` (or :class:`DataError`) unless ``raw`` is a snapshot
    this c360 resumes from; reads the header only."""
    kind = bytes(memoryview(raw)[len(MAGIC):len(MAGIC) + 1])
    if kind == GLOBAL:
        payload(raw, GLOBAL, GLOBAL_FORMAT, ADVICE)
    else:
        payload(raw, SHARD, SHARD_READS, ADVICE)


# -- shards ---------------------------------------------------------------------------------

def encode_shard(kind: str | None, shard: Shard) -> bytes:
    """A shard's snapshot: its data, not its hooks or lateness."""
    entities = {eid: _entity_out(st) for eid, st in shard.entities.items()}
    return header(SHARD, SHARD_FORMAT) + ENCODER.encode(ShardV2(
        kind, entities, shard.latest, shard.marks, shard._due, shard._clocks, shard.ended))


def decode_shard(raw: bytes, hooks: EntityHooks | None, allowed_lateness: timedelta
                 ) -> tuple[str | None, Shard]:
    """The kind and shard of a whole (format 1 or 2) snapshot; see :func:`decode_head`."""
    kind, shard, log = decode_head(raw, hooks, allowed_lateness)
    if log is not None:
        raise DataError("an incremental (format 3) shard snapshot needs its entity log")
    return kind, shard


def decode_head(raw: bytes, hooks: EntityHooks | None, allowed_lateness: timedelta
                ) -> tuple[str | None, Shard, tuple[str | None, int] | None]:
    """The kind and shard of a snapshot, folding with ``hooks`` and ``allowed_lateness``
    (the settings given now), and for a format-3 one (key, seq): where its entities are, to
    read with :func:`decode_entity` (until then the shard has none); :class:`StateFormatError`
    when it is of another format."""
    body = payload(raw, SHARD, SHARD_READS, ADVICE)
    s: ShardV1 | ShardV2 | ShardV3 = decode(body, _SHARDS[raw[len(MAGIC) + 1]], SHARD, ADVICE)
    shard = Shard(hooks, allowed_lateness)
    shard.latest = s.latest
    shard.marks, shard._due, shard._clocks, shard.ended = s.marks, s.due, s.clocks, s.ended
    if isinstance(s, ShardV3):
        return s.kind, shard, (s.key, s.seq)
    shard.entities = {eid: _entity_in(e) for eid, e in s.entities.items()}
    return s.kind, shard, None


def encode_head(key: str | None, seq: int, kind: str | None, shard: Shard) -> bytes:
    """An incremental (format 3) snapshot: the shard's bookkeeping, not its entities, which
    are in ``key``'s entity log up to ``seq`` (:func:`encode_entity`)."""
    return header(SHARD, SHARD_LOG_FORMAT) + ENCODER.encode(ShardV3(
        key, seq, kind, shard.latest, shard.marks, shard._due, shard._clocks, shard.ended))


def encode_entity(st: EntityState) -> bytes:
    """One entity's row of an entity log (format 3's: an EntityV2, no header)."""
    return ENCODER.encode(_entity_out(st))


def decode_entity(data: bytes) -> EntityState:
    return _entity_in(decode(memoryview(data), _ENTITY, SHARD, ADVICE))


def _entity_out(st: EntityState) -> EntityV2:
    w = st.windows
    return EntityV2(plain(st.fields), st.version, st.seen, st.orders, st.review_sum,
                    st.cart_marks, None if w is None else WindowsV1(
                        w.now, w.day, w.daily, w.scores, w.refs, w.at, w.quiet, w.swept, w.due),
                    st.fired, st.aux)


def _entity_in(e: EntityV1 | EntityV2) -> EntityState:
    st = EntityState()
    st.fields, st.version, st.seen, st.orders = e.fields, e.version, e.seen, e.orders
    st.review_sum, st.cart_marks, st.fired = e.review_sum, e.cart_marks, e.fired
    if isinstance(e, EntityV2):
        st.aux = e.aux
    if e.windows is not None:
        v = e.windows
        w = st.windows = Windows()
        w.now, w.day, w.daily, w.scores, w.refs = v.now, v.day, v.daily, v.scores, v.refs
        w.at, w.quiet, w.swept, w.due = v.at, v.quiet, v.swept, v.due
    return st


# -- the global windows -----------------------------------------------------------------------

def encode_global(g: GlobalWindows) -> bytes:
    """The global windows' snapshot: open windows, watermarks and the global entities."""
    open_ = [(end, key, AccV1(a.start, a.revenue, a.orders, sorted(a.customers),
                              dict(a.streams), dict(a.products), dict(a.categories),
                              dict(a.queries), a.returns))
             for (end, key), a in g.open.items()]
    marks = [(shard, part, mark, idle) for (shard, part), (mark, idle) in g.marks.items()]
    return header(GLOBAL, GLOBAL_FORMAT) + ENCODER.encode(GlobalV1(
        g.entities.versions, g.entities.series, open_, g.watermark, g.late, marks))


def decode_global(raw: bytes, shard_keys: int) -> GlobalWindows:
    s: GlobalV1 = decode(payload(raw, GLOBAL, GLOBAL_FORMAT, ADVICE), _GLOBAL, GLOBAL, ADVICE)
    g = GlobalWindows(shard_keys)
    entities = GlobalEntities()
    entities.versions, entities.series = s.versions, s.series
    g.entities = entities
    for end, key, a in s.open:
        acc = Acc(a.start)
        acc.revenue, acc.orders, acc.returns = a.revenue, a.orders, a.returns
        acc.customers = set(a.customers)
        acc.streams, acc.products = Counter(a.streams), Counter(a.products)
        acc.categories, acc.queries = Counter(a.categories), Counter(a.queries)
        g.open[(end, key)] = acc
    g.watermark, g.late = s.watermark, s.late
    g.marks = {(shard, part): (mark, idle) for shard, part, mark, idle in s.marks}
    return g
