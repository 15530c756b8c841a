"""Time travel: every version of every entity, any entity as of any moment, and
point-in-time-correct training sets (docs/time-travel.md).

A :class:`History` keeps every delta its store applies, per entity, in version order. Its
``store`` is an :class:`~c360.store.memory.EntityStore` like any other: give it to a pipeline
(``c360.run_until_idle(3, store=history.store)``, ``Pipeline(store=history.store)``) or fill
it from the changes topic (:meth:`History.from_kafka`); everything the live store does still
works. ``keep=[fields]`` retains only those fields (and every version), for training sets.

Why a retained store and not a re-read of the changes topic per question: a training set asks
about tens of thousands of customers at once, and the deltas are already in this process (the
store applies them); keeping each costs a reference plus the changed values the live store
would otherwise have dropped. Measured on the whole Olist replay (307,130 versions of 26,924
customers): about 1.5 KB per version with every field, most of it the windows' lists and maps
(docs/time-travel.md).

What "as of t" means. The entity as c360 showed it once it had folded every event up to ``t``
and nothing later: what a fresh replay of only those events through the same fold gives (a test
checks it), and what a live rule scoring at ``t`` saw, so a model trained on it sees what it
sees when deployed. Each version is *known at* an event time: its event's time, or for aging
deltas (stream ``relevance``, made by the fold right before the event whose watermark aged
them) that next event's time; then the running maximum per entity, so a late event (older than
one already folded) is known from the latest event time folded before it. ``as_of(t)`` is the
last version known at or before ``t``; :meth:`History.training_set` takes the last one known
strictly before each row's time. Every delta included has an event time at or before that
time: nothing leaks.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from itertools import chain
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pandas as pd

from c360.config import Settings
from c360.errors import ConfigError, DataError
from c360.model.delta import Delta, Lifecycle
from c360.store.memory import EntityStore

if TYPE_CHECKING:
    from c360.store.replica import ChangesReplica

# Deltas the fold makes by aging a quiet entity, right before the event whose watermark
# passed the entity's deadline (c360.entity.shard.Shard._age); they are known from that event.
AGING_STREAMS = frozenset({"relevance"})
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
ADDED = ("as_of_version", "as_of_time")  # the columns training_set adds besides the fields


def _us(t: datetime) -> int:
    """Microseconds since the epoch, exactly (a float timestamp rounds)."""
    return (t - _EPOCH) // _US


def _utc(t: datetime | pd.Timestamp | str) -> datetime:
    """An instant as an aware UTC datetime; naive times are read as UTC, as c360's are."""
    try:
        ts = pd.Timestamp(t)
    except (TypeError, ValueError):
        ts = pd.NaT
    if ts is pd.NaT:
        raise ConfigError(f"cannot read {t!r} as a time; give a datetime or an ISO string")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    out: datetime = ts.to_pydatetime()
    return out


class _Versions:
    """One entity's retained versions: deltas, when each was known, its lifecycle events."""

    __slots__ = ("code", "deltas", "known", "lifecycle")

    def __init__(self, code: int) -> None:
        self.code = code  # the entity's number in this history (fast merge keys)
        self.deltas: list[Delta] = []
        self.known: list[int] = []  # microseconds since the epoch, non-decreasing
        self.lifecycle: list[Lifecycle] = []


class HistoryStore(EntityStore):
    """The store of a :class:`History`: an :class:`EntityStore` that also records what it
    applies into its history (before applying it, under the history's lock)."""

    def __init__(self, history: History, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history = history

    def apply(self, deltas: Iterable[Delta | Lifecycle]) -> None:
        batch = deltas if isinstance(deltas, list) else list(deltas)
        self.history.record(batch)
        super().apply(batch)


class History:
    """Every version of every entity its :attr:`store` applied.

    ``history(id)``, ``as_of(id, t)`` / ``as_of(id, version=v)`` and ``training_set(labels,
    fields)`` read it. A delta at or below the version recorded is dropped, as the store
    drops it (a replay); when deltas may come from a restarted dataflow, a
    :class:`~c360.store.replica.Materializer` in front repairs them, as :meth:`from_kafka`
    does. ``keep``: retain only these fields of each delta (every version is still kept).
    """

    def __init__(self, keep: Iterable[str] | None = None, **store_options: Any) -> None:
        self.keep = frozenset(keep) if keep is not None else None
        self.store = HistoryStore(self, **store_options)
        self._versions: dict[str, _Versions] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_kafka(cls, settings: Settings | None = None, *, topic: str | None = None,
                   keep: Iterable[str] | None = None) -> tuple[History, ChangesReplica]:
        """A history filled from the entity-changes topic in the background (read from its
        beginning, a restarted dataflow's replays repaired), and the replica reading it (stop
        it with ``.stop()``). The dataflow must publish changes (``c360 run --changes``)."""
        from c360.store.replica import ChangesReplica  # confluent-kafka: only when asked for

        history = cls(keep)
        replica = ChangesReplica(settings or Settings.from_env(), history.store, topic=topic)
        return history, replica.start()

    # -- writing -----------------------------------------------------------------------------
    def record(self, batch: list[Delta | Lifecycle]) -> None:
        """Keep one batch of changes (as the dataflow's sink hands them to the store: the
        order in a batch tells which event an aging delta came before)."""
        causes = _causes(batch)
        keep = self.keep
        with self._lock:
            versions = self._versions
            for c, cause in zip(batch, causes, strict=True):
                v = versions.get(c.entity_id)
                if v is None:
                    v = versions[c.entity_id] = _Versions(len(versions))
                if not isinstance(c, Delta):
                    v.lifecycle.append(c)
                    continue
                if v.deltas and c.version <= v.deltas[-1].version:
                    continue  # a replayed version: the store drops it too
                if keep is not None:
                    c = msgspec.structs.replace(
                        c, changes={k: x for k, x in c.changes.items() if k in keep})
                known = _us(cause) if cause is not None else 0
                if v.known and v.known[-1] > known:
                    known = v.known[-1]  # a late event: known from the latest time before it
                v.deltas.append(c)
                v.known.append(known)

    # -- reading one entity ----------------------------------------------------------------------
    def history(self, entity_id: str) -> pd.DataFrame:
        """Every version of ``entity_id``, oldest first: ``version``, the event that made it
        (``stream``, ``event_id``, ``event_time``), ``known_at`` (see the module docstring),
        ``changes`` (the fields it set, with their new values) and ``lifecycle`` (the
        lifecycle events at that version: created, rule_fired, segment_entered...). Empty
        for an entity never seen."""
        with self._lock:
            v = self._versions.get(entity_id)
            deltas = list(v.deltas) if v is not None else []
            known = list(v.known) if v is not None else []
            events = list(v.lifecycle) if v is not None else []
        by_version: dict[int, list[str]] = {}
        for e in events:
            by_version.setdefault(e.version, []).append(e.type)
        return pd.DataFrame({
            "version": pd.Series([d.version for d in deltas], dtype="int64"),
            "event_time": pd.to_datetime([d.event_time for d in deltas], utc=True),
            "known_at": pd.to_datetime(pd.Series(known, dtype="int64"), unit="us", utc=True),
            "stream": pd.Series([d.stream for d in deltas], dtype=object),
            "event_id": pd.Series([d.event_id for d in deltas], dtype=object),
            "changes": pd.Series([dict(d.changes) for d in deltas], dtype=object),
            "lifecycle": pd.Series([by_version.get(d.version, []) for d in deltas],
                                   dtype=object),
        })

    def as_of(self, entity_id: str, t: datetime | pd.Timestamp | str | None = None, *,
              version: int | None = None) -> dict[str, Any] | None:
        """The entity as it was at time ``t`` (its last version known at or before ``t``;
        naive times are UTC) or at ``version``; None when it did not exist yet. The shape of
        :meth:`EntityStore.get`: ``id``, ``kind``, ``version`` and the fields."""
        if (t is None) == (version is None):
            raise ConfigError("as_of takes a time or version=, exactly one of them")
        with self._lock:
            v = self._versions.get(entity_id)
            if v is None:
                return None
            if version is not None:
                n = bisect.bisect_right(v.deltas, version, key=lambda d: d.version)
            else:
                assert t is not None
                n = bisect.bisect_right(v.known, _us(_utc(t)))
            deltas = v.deltas[:n]
        if not deltas:
            return None
        entity: dict[str, Any] = {"id": entity_id, "kind": deltas[0].kind, "version": 0}
        for d in deltas:
            entity.update(d.changes)
        entity["version"] = deltas[-1].version
        return entity

    def ids(self, kind: str | None = "customer") -> list[str]:
        """The entities with versions (of ``kind``; None: every kind)."""
        with self._lock:
            return [k for k, v in self._versions.items()
                    if v.deltas and (kind is None or v.deltas[0].kind == kind)]

    def __len__(self) -> int:
        """How many versions are kept, over every entity."""
        with self._lock:
            return sum(len(v.deltas) for v in self._versions.values())

    # -- reading many: point-in-time joins --------------------------------------------------------
    def _tables(self, fields: Sequence[str], kind: str
                ) -> tuple[dict[str, int], pd.DataFrame, dict[str, pd.DataFrame]]:
        """Entity codes, every version (code, known, version), and per field its changes
        (code, known, version, value): each sorted by (known, version), merge_asof's order."""
        wanted = frozenset(fields)
        with self._lock:
            chosen = [(eid, v.code, list(v.deltas), list(v.known))
                      for eid, v in self._versions.items()
                      if v.deltas and v.deltas[0].kind == kind]
        codes = {eid: code for eid, code, _, _ in chosen}
        sizes = np.fromiter((len(ds) for _, _, ds, _ in chosen), dtype=np.int64, count=len(chosen))
        versions = pd.DataFrame({
            "code": np.repeat(np.fromiter((c for _, c, _, _ in chosen), dtype=np.int64,
                                          count=len(chosen)), sizes),
            "known": np.fromiter(chain.from_iterable(k for _, _, _, k in chosen),
                                 dtype=np.int64, count=int(sizes.sum())),
            "version": np.fromiter((d.version for _, _, ds, _ in chosen for d in ds),
                                   dtype=np.int64, count=int(sizes.sum())),
        })
        rows: dict[str, tuple[list[int], list[int], list[int], list[Any]]] = {
            f: ([], [], [], []) for f in fields}
        for _, code, deltas, known in chosen:
            for d, k in zip(deltas, known, strict=True):
                for f in wanted.intersection(d.changes):
                    r = rows[f]
                    r[0].append(code)
                    r[1].append(k)
                    r[2].append(d.version)
                    r[3].append(d.changes[f])
        per_field = {}
        for f, (cs, ks, vs, xs) in rows.items():
            values = np.empty(len(xs), dtype=object)
            values[:] = xs
            per_field[f] = _sorted(pd.DataFrame({
                "code": np.array(cs, dtype=np.int64), "known": np.array(ks, dtype=np.int64),
                "version": np.array(vs, dtype=np.int64), "value": values}))
        return codes, _sorted(versions), per_field

    def training_set(self, labels: pd.DataFrame, fields: Sequence[str], *,
                     id_col: str = "customer_id", time_col: str = "time",
                     kind: str = "customer") -> pd.DataFrame:
        """``labels`` (rows of (customer id, time), any other columns kept) with each of
        ``fields`` as of just before the row's time: from the customer's last version known
        strictly before it, so nothing that happened at or after that time is in the row.

        Adds ``as_of_version`` (0: the customer did not exist yet, its fields are missing)
        and ``as_of_time`` (when that version became known). Rows keep their order and
        index; naive times are UTC. Vectorised: one ``merge_asof`` per field on integer keys
        (100,000 rows, 7 fields, all of Olist: see docs/time-travel.md for the time).
        """
        fields = list(fields)
        missing = [c for c in (id_col, time_col) if c not in labels.columns]
        if missing:
            raise DataError(f"the labels have no {missing} column; give (customer id, time) "
                            "rows, or name their columns with id_col= and time_col=")
        clash = [f for f in fields if f in labels.columns or f in ADDED]
        if clash:
            raise DataError(f"fields {clash} are already columns of the labels; rename those")
        if self.keep is not None and set(fields) - self.keep:
            raise DataError(f"this history keeps only {sorted(self.keep)}; "
                            f"{sorted(set(fields) - self.keep)} were not retained: "
                            "make the History with keep= listing them")
        times = pd.to_datetime(labels[time_col])
        if times.isna().any():
            raise DataError(f"{int(times.isna().sum())} label rows have no {time_col}; "
                            "drop them or give each a time")
        times = times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")
        codes, versions, per_field = self._tables(fields, kind)
        code = pd.Series(labels[id_col].astype(str).to_numpy()).map(codes)
        left = pd.DataFrame({
            "code": code.fillna(-1).astype(np.int64).to_numpy(),
            "known": times.dt.as_unit("us").astype("int64").to_numpy(),
            "row": np.arange(len(labels)),
        }).sort_values("known", kind="stable")
        out = labels.copy()
        at = _asof(left, versions)
        out["as_of_version"] = at["version"].fillna(0).astype("int64").to_numpy()
        out["as_of_time"] = pd.Series(pd.to_datetime(at["known"].to_numpy(), unit="us",
                                                     utc=True), index=out.index)
        for f in fields:
            out[f] = _column(_asof(left, per_field[f])["value"]).set_axis(out.index)
        return out


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    # Ties at one known time keep version order: merge_asof takes the last of equal keys.
    return df.sort_values(["known", "version"], kind="stable", ignore_index=True)


def _asof(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    """For each left row (code, known), the last right row of its code known strictly
    before; back in the labels' row order."""
    joined = pd.merge_asof(left, right.rename(columns={"known": "at"}), left_on="known",
                           right_on="at", by="code", allow_exact_matches=False,
                           direction="backward")
    joined = joined.sort_values("row", kind="stable").drop(columns=["known"])
    return joined.rename(columns={"at": "known"})


def _column(values: pd.Series) -> pd.Series:
    """A field's joined values as a column: numbers and times get their dtype, the rest
    (text, lists, records) stay objects; missing is NaN / NaT / None."""
    col = pd.Series(values.to_numpy(dtype=object), dtype=object)
    kind = pd.api.types.infer_dtype(col, skipna=True)
    if kind in ("integer", "floating", "mixed-integer-float", "decimal"):
        return pd.to_numeric(col, errors="coerce")
    if kind == "datetime":
        return pd.to_datetime(col, utc=True)
    return col


def _causes(batch: list[Delta | Lifecycle]) -> list[datetime | None]:
    """When each delta of one batch became known (None for lifecycle events): its event
    time; for an aging delta, the time of the next event delta of the batch (the event whose
    watermark aged it), else the batch's latest event time, else its own."""
    out: list[datetime | None] = [None] * len(batch)
    nxt: datetime | None = None
    for c in batch:
        if (isinstance(c, Delta) and c.stream not in AGING_STREAMS
                and (nxt is None or c.event_time > nxt)):
            nxt = c.event_time
    for i in range(len(batch) - 1, -1, -1):
        c = batch[i]
        if not isinstance(c, Delta):
            continue
        if c.stream in AGING_STREAMS:
            t = c.event_time
            out[i] = nxt if nxt is not None and nxt > t else t
        else:
            out[i] = nxt = c.event_time
    return out
