"""The in-memory entity store that the dataflow writes into and consumers read.

The dataflow's sink calls :meth:`EntityStore.apply` with batches of deltas.
Readers get copies (:meth:`get`, :meth:`dataframe`) or subscribe to deltas.
Each subscription has its own thread and a bounded buffer: a slow subscriber
never blocks the dataflow or other subscribers; when it falls too far behind,
its pending deltas are merged per entity (fewer, larger deltas, still in
version order).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pandas as pd

from c360.errors import C360Error
from c360.model.delta import LIFECYCLE_TYPES, Delta, Lifecycle

if TYPE_CHECKING:
    from c360.model.declare import EntityModel

log = logging.getLogger(__name__)

Callback = Callable[[Delta], None]
# Delta streams the dataflow makes itself (global analytics, the relevance sweep).
NOT_EVENTS = frozenset({"analytics", "relevance"})
LifecycleCallback = Callable[[Lifecycle], None]


class Subscription:
    """Deltas for some entities (or all) and some fields (or all), delivered in order."""

    def __init__(self, store: EntityStore, ids: frozenset[str] | None,
                 fields: frozenset[str] | None, callback: Callback | LifecycleCallback,
                 max_pending: int, lifecycle: frozenset[str] | None = None) -> None:
        self.ids = ids
        self.fields = fields
        self.lifecycle = lifecycle  # lifecycle types wanted; None: deltas, not lifecycle
        # Any: deltas and a Callback, or with ``lifecycle`` Lifecycles and a LifecycleCallback.
        self._callback: Callable[[Any], None] = callback
        self._store = store
        self._max_pending = max_pending
        self._pending: list[Any] = []
        self._cond = threading.Condition()
        self._closed = False
        self.delivered = 0
        self.coalesced = 0  # deltas merged into others because the subscriber lagged
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="c360-subscription", daemon=True)
        self._thread.start()

    def _offer(self, deltas: list[Delta], events: list[Lifecycle]) -> None:
        ids, fields, wanted = self.ids, self.fields, self.lifecycle
        if wanted is not None:
            picked_events = [e for e in events
                             if e.type in wanted and (ids is None or e.entity_id in ids)]
            if picked_events:
                with self._cond:
                    self._pending.extend(picked_events)  # never merged: each one matters
                    self._cond.notify()
            return
        picked = []
        for d in deltas:
            if ids is not None and d.entity_id not in ids:
                continue
            if fields is not None:
                part = d.only(fields)
                if part is None:
                    continue
                d = part
            picked.append(d)
        if not picked:
            return
        with self._cond:
            self._pending.extend(picked)
            if len(self._pending) > self._max_pending:
                self._coalesce()
            self._cond.notify()

    def _coalesce(self) -> None:
        merged: OrderedDict[str, Delta] = OrderedDict()
        for d in self._pending:
            prev = merged.get(d.entity_id)
            if prev is not None:
                d = msgspec.structs.replace(d, changes={**prev.changes, **d.changes})
            merged[d.entity_id] = d
        self.coalesced += len(self._pending) - len(merged)
        self._pending = list(merged.values())

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch, self._pending = self._pending, []
            for d in batch:
                try:
                    self._callback(d)
                except Exception:  # the subscriber's bug is logged, never propagated
                    self.errors += 1
                    log.exception("subscriber callback failed on %s v%s", d.entity_id, d.version)
                self.delivered += 1

    def close(self) -> None:
        self._store.unsubscribe(self)

    def _stop(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()


class EntityStore:
    """Live entities by id. Thread-safe; written by the dataflow, read by anyone."""

    def __init__(self, max_pending: int = 100_000, *, model: EntityModel | None = None) -> None:
        """``model``: the declared entity model whose entities this store holds (default:
        the retail model); the export's column dtypes and the sync server's PII set are
        read from it."""
        self._model = model
        self._lock = threading.RLock()
        self._entities: dict[str, dict[str, Any]] = {}
        self._subs: list[Subscription] = []
        self._max_pending = max_pending
        self.events_by_stream: Counter[str] = Counter()
        self.lifecycle_counts: Counter[str] = Counter()
        self.stale_deltas = 0  # deltas at or below the version held (replays); dropped
        self.updated_at = 0.0
        # After a bounded run: the event time every customer was aged to (the end of the
        # data, docs/event-time.md); exports carry it as a column.
        self.as_of: datetime | None = None

    @property
    def model(self) -> EntityModel:
        """The entity model of this store's entities: the one given (or used, see
        :meth:`use_model`), else the retail model (imported on first use: a store alone
        does not need the retail folds)."""
        if self._model is not None:
            return self._model
        from c360.models.retail import RETAIL

        return RETAIL

    def use_model(self, model: EntityModel) -> None:
        """The model of the pipeline that writes into this store, unless the store was
        given a model of its own: ``Pipeline(model=mine)`` makes the store's export and the
        sync server over it read ``mine`` without the caller passing it twice."""
        if self._model is None:
            self._model = model

    # -- writing (the dataflow's sink) ------------------------------------------------------
    def apply(self, deltas: Iterable[Delta | Lifecycle]) -> None:
        applied: list[Delta] = []
        events: list[Lifecycle] = []
        with self._lock:
            entities = self._entities
            counts = self.events_by_stream
            for d in deltas:
                if not isinstance(d, Delta):  # a Lifecycle (an exact type test: as fast)
                    events.append(d)
                    self.lifecycle_counts[d.type] += 1
                    continue
                e = entities.get(d.entity_id)
                if e is None:
                    e = entities[d.entity_id] = {"id": d.entity_id, "kind": d.kind, "version": 0}
                if d.version <= e["version"]:
                    self.stale_deltas += 1
                    continue
                e.update(d.changes)
                e["version"] = d.version
                if d.stream not in NOT_EVENTS:  # windows closing, sweeps: not input events
                    counts[d.stream] += 1
                applied.append(d)
            subs = list(self._subs)
            self.updated_at = time.time()
        for sub in subs:
            sub._offer(applied, events)

    # -- reading -------------------------------------------------------------------------
    def get(self, entity_id: str) -> dict[str, Any] | None:
        """A copy of the entity, or None. Field values are never mutated in place."""
        with self._lock:
            e = self._entities.get(entity_id)
            return None if e is None else dict(e)

    def __getitem__(self, entity_id: str) -> dict[str, Any]:
        e = self.get(entity_id)
        if e is None:
            raise KeyError(entity_id)
        return e

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self._entities

    def __len__(self) -> int:
        return len(self._entities)

    def wait_until(self, predicate: Callable[[EntityStore], bool], timeout: float = 30.0,
                   what: str = "the condition") -> None:
        """Block until ``predicate(store)`` holds (live pipelines, notebooks, tests).

        Raises :class:`C360Error` naming ``what`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise C360Error(f"waited {timeout:.0f}s for {what}; the store holds "
                                f"{len(self._entities)} entities")
            time.sleep(0.02)

    def stream_counts(self) -> dict[str, int]:
        """Events applied so far, per stream (a copy)."""
        with self._lock:
            return dict(self.events_by_stream)

    def ids(self, kind: str | None = "customer") -> list[str]:
        with self._lock:
            return [k for k, e in self._entities.items() if kind is None or e["kind"] == kind]

    def entities(self, kind: str | None = "customer") -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._entities.values() if kind is None or e["kind"] == kind]

    def count(self, kind: str = "customer") -> int:
        with self._lock:
            return sum(1 for e in self._entities.values() if e["kind"] == kind)

    def dataframe(self, kind: str = "customer",
                  fields: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per entity; nested objects flattened to ``parent.child`` columns."""
        rows = self.entities(kind)
        if fields is not None:
            keep = ["id", "version", *fields]
            rows = [{k: r.get(k) for k in keep} for r in rows]
        return entity_frame(rows)

    # -- subscribing -----------------------------------------------------------------------
    def subscribe(self, callback: Callback, ids: str | Iterable[str] | None = None,
                  fields: Iterable[str] | None = None) -> Subscription:
        """Call ``callback(delta)`` for every applied delta of ``ids`` (None: all) that
        touches ``fields`` (None: any), restricted to those fields, in version order."""
        idset = frozenset([ids] if isinstance(ids, str) else ids) if ids is not None else None
        fieldset = frozenset(fields) if fields is not None else None
        sub = Subscription(self, idset, fieldset, callback, self._max_pending)
        with self._lock:
            self._subs.append(sub)
        return sub

    def subscribe_lifecycle(self, callback: LifecycleCallback,
                            ids: str | Iterable[str] | None = None,
                            types: Iterable[str] | None = None) -> Subscription:
        """Call ``callback(event)`` for lifecycle events (entity created, rule fired, ...)
        of ``ids`` (None: all) and of ``types`` (None: all of LIFECYCLE_TYPES)."""
        wanted = frozenset(types) if types is not None else LIFECYCLE_TYPES
        unknown = wanted - LIFECYCLE_TYPES
        if unknown:
            raise C360Error(f"unknown lifecycle types {sorted(unknown)}; "
                            f"known: {sorted(LIFECYCLE_TYPES)}")
        idset = frozenset([ids] if isinstance(ids, str) else ids) if ids is not None else None
        sub = Subscription(self, idset, None, callback, self._max_pending, lifecycle=wanted)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
        sub._stop()

    # -- export ----------------------------------------------------------------------------
    def export(self, path: str | Path, kind: str = "customer") -> Path:
        """Write one row per entity to ``path``: .parquet, .csv or .jsonl by extension.

        Tables (.parquet, .csv) have a column for every scalar field the model declares for
        ``kind``, in the declared dtype (:func:`typed_frame`), so that a field no entity has
        yet, or that is empty everywhere, is still its column of its type; other columns
        (undeclared fields, records' ``parent.child`` columns) are as pandas reads them.
        The .jsonl export is the entities as they are, typed by JSON."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".parquet", ".csv", ".jsonl"):
            raise C360Error(f"cannot export to {path.name!r}: use .parquet, .csv or .jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".jsonl":
            enc = msgspec.json.Encoder()
            with path.open("wb") as out:
                for e in sorted(self.entities(kind), key=lambda e: e["id"]):
                    row = _exported(e)
                    if self.as_of is not None:
                        row["as_of"] = self.as_of
                    out.write(enc.encode(row) + b"\n")
            return path
        df = typed_frame(self.dataframe(kind), self.model.dtypes(kind))
        if self.as_of is not None:
            df["as_of"] = self.as_of
        df = df.rename(columns={"id": f"{kind}_id"}).sort_values(f"{kind}_id")
        # Tables hold scalars; lists and nested records stay in the .jsonl export. Only an
        # object column can hold them (a typed column's map() may keep its dtype).
        nested = [c for c in df.columns if df[c].dtype == object
                  and df[c].map(lambda v: isinstance(v, (list, dict))).any()]
        df = df.drop(columns=nested)
        if suffix == ".csv":
            df.to_csv(path, index=False)
        else:
            df.to_parquet(path, index=False)
        return path


def entity_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Entities as a frame, one row each, indexed by id; nested objects flattened to
    ``parent.child`` columns. The store, the sync client and the local replica all use it."""
    df = pd.json_normalize(rows, max_level=1) if rows else pd.DataFrame(columns=["id"])
    return df.set_index("id", drop=False).rename_axis(None)


def typed_frame(df: pd.DataFrame, dtypes: Mapping[str, str]) -> pd.DataFrame:
    """``df`` with each declared column (``{field: dtype}``, :meth:`EntityModel.dtypes`) in
    its dtype, and the declared columns it lacks added, empty, at the end in declared order.

    pandas alone gives an all-empty column ``object`` (or ``float64``), and an int column
    with one entity lacking the field ``float64`` (so the CSV read ``3.0``): the declared
    dtype is what a reader of the table can count on. A column whose values do not fit its
    declared dtype (a model that says ``int`` for a field holding 2.5) keeps pandas' dtype,
    with a warning naming the field: an export at the end of a long run is not refused.
    """
    df = df.copy()
    for name, dtype in dtypes.items():
        if name not in df.columns:  # all missing: object, which each dtype casts from
            df[name] = _as(pd.Series(None, index=df.index, dtype=object), dtype)
            continue
        try:
            df[name] = _as(df[name], dtype)
        except (TypeError, ValueError) as exc:
            log.warning("export: field %r does not fit its declared dtype %s (%s); its column "
                        "keeps pandas' dtype %s: fix the field's type in the model",
                        name, dtype, exc, df[name].dtype)
    return df


def _as(column: pd.Series, dtype: str) -> pd.Series:
    if column.dtype == dtype:
        return column
    if dtype.startswith("datetime64"):  # values are datetimes or ISO 8601 text
        return pd.to_datetime(column, utc=True).astype(dtype)
    return column.astype(dtype)


def _exported(entity: dict[str, Any]) -> dict[str, Any]:
    out = dict(entity)
    out[f"{entity['kind']}_id"] = out.pop("id")
    return out
