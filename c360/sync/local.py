"""The replica interface in-process, for notebooks that run the dataflow inline.

``c360.local(store)`` offers what ``c360.connect(url, token)`` offers -- ``entities``,
``sync``, ``on_change``, ``dataframe``, ``command`` -- straight from an
:class:`~c360.store.memory.EntityStore`, with no server, no token and no JSON in between.
Commands need Kafka (``settings``): they go through the dataflow like any client's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from c360.config import Settings
from c360.errors import CommandTimeout, Unavailable
from c360.model.commands import command_event, parse_args
from c360.model.delta import Delta
from c360.model.events import Catalogue, encode
from c360.store.memory import EntityStore, Subscription, entity_frame
from c360.sync.protocol import escape

ChangeCallback = Callable[[str, dict[str, Any], list[dict[str, Any]]], None]


class Copies:
    """Copies of entities and their versions, read under one lock: what both replicas, this
    one and :class:`c360.sync.client.Replica`, hold and how they are read."""

    def __init__(self) -> None:
        self.entities: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}
        self._lock = threading.RLock()

    def get(self, entity_id: str) -> dict[str, Any] | None:
        with self._lock:
            e = self.entities.get(entity_id)
            return None if e is None else dict(e)

    def dataframe(self) -> pd.DataFrame:
        """One row per synced entity (with its version), nested fields flattened."""
        with self._lock:
            rows = [{**e, "version": self.versions[k]} for k, e in self.entities.items()]
        return entity_frame(rows)


class LocalReplica(Copies):
    """Copies of some entities of an in-process store, kept current by a subscription."""

    def __init__(self, store: EntityStore, settings: Settings | None = None) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self._selection: dict[str, frozenset[str] | None] = {}
        self._all: frozenset[str] | None | bool = False  # False: no wildcard sync
        self._callbacks: list[ChangeCallback] = []
        self._applied = threading.Condition(self._lock)
        self._sub: Subscription = store.subscribe(self._on_delta)

    def sync(self, entity: str = "*", fields: Iterable[str] | None = None) -> None:
        wanted = frozenset(fields) if fields is not None else None
        with self._lock:
            if entity == "*":
                self._all = wanted
                for eid in self.store.ids():
                    self._snapshot(eid, wanted)
            else:
                self._selection[entity] = wanted
                self._snapshot(entity, wanted)

    def unsync(self, entity: str) -> None:
        with self._lock:
            if entity == "*":
                self._all = False
            self._selection.pop(entity, None)
            self.entities.pop(entity, None)
            self.versions.pop(entity, None)

    def on_change(self, callback: ChangeCallback) -> ChangeCallback:
        self._callbacks.append(callback)
        return callback

    def command(self, entity: str, name: str, *, timeout: float = 30.0, issued_by: str = "local",
                **args: Any) -> int:
        """Write a command to Kafka and wait until the dataflow applied it; its version.
        ``issued_by`` is recorded with the command (the dashboard passes its user)."""
        parse_args(name, args)
        if self.settings is None:
            raise Unavailable("commands need Kafka: c360.local(store, settings)", entity=entity)
        from kafka import KafkaProducer

        event = command_event(entity, name, args, issued_by)
        seen: list[int] = []
        done = threading.Event()

        def watch(d: Delta) -> None:
            if d.event_id == event.event_id:
                seen.append(d.version)
                done.set()

        sub = self.store.subscribe(watch, ids=entity)
        producer = KafkaProducer(**self.settings.kafka_python(), acks="all")
        try:
            producer.send(Catalogue(self.settings.topic_prefix).commands_topic,
                          key=entity.encode(), value=encode(event)).get(timeout=10)
            if not done.wait(timeout):
                raise CommandTimeout(f"command {name} on {entity} not applied within "
                                     f"{timeout:g}s", entity=entity)
        finally:
            producer.close(timeout=5)
            sub.close()
        with self._lock:
            if entity in self.versions:
                self._applied.wait_for(lambda: self.versions.get(entity, 0) >= seen[0], timeout)
        return seen[0]

    def close(self) -> None:
        self._sub.close()

    def _wanted(self, eid: str) -> frozenset[str] | None | bool:
        if eid in self._selection:
            return self._selection[eid]
        return self._all

    def _snapshot(self, eid: str, wanted: frozenset[str] | None) -> None:
        e = self.store.get(eid)
        if e is None:
            return
        version = e.pop("version")
        if wanted is not None:
            e = {k: v for k, v in e.items() if k in wanted or k in ("id", "kind")}
        self.entities[eid] = e
        self.versions[eid] = version
        self._notify(eid, [])

    def _on_delta(self, d: Delta) -> None:
        with self._lock:
            wanted = self._wanted(d.entity_id)
            if wanted is False:
                return
            assert not isinstance(wanted, bool)
            have = self.versions.get(d.entity_id)
            if have is None or have <= 0:
                self._snapshot(d.entity_id, wanted)
                return
            if d.version <= have:
                return
            changes = d.changes if wanted is None else {
                k: v for k, v in d.changes.items() if k in wanted}
            self.entities[d.entity_id].update(changes)
            self.versions[d.entity_id] = d.version
            ops = [{"op": "add", "path": escape(k), "value": v} for k, v in changes.items()]
            self._notify(d.entity_id, ops)

    def _notify(self, eid: str, ops: list[dict[str, Any]]) -> None:
        self._applied.notify_all()
        entity = self.entities.get(eid, {})
        for cb in self._callbacks:
            cb(eid, entity, ops)


def local(store: EntityStore, settings: Settings | None = None) -> LocalReplica:
    """The replica interface over an in-process store (no server, no token)."""
    return LocalReplica(store, settings)
