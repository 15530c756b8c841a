"""A store replica materialized from the entity-changes topic, and the rule that keeps any
store right across dataflow restarts.

Why a rule is needed: bytewax recovery is at-least-once. A dataflow killed between two
snapshots is resumed from the last one, and the events it had folded since are folded
again — possibly in another interleaving of the stream topics, so the replayed deltas can
carry the same versions with other contents. A store that simply drops versions it has
already seen would then keep the first attempt's fields and miss the second attempt's.

:class:`Materializer` sits in front of an :class:`~c360.store.memory.EntityStore`. A resumed
dataflow first emits each entity's whole state at its snapshot version (a reset, stream
``recovery``). If the store holds that version or a later one, the reset starts a private
shadow copy that the replayed deltas update while the store (and its subscribers) keep
the version they had; when the shadow passes it, one delta carries every field that
differs. Subscribers therefore see versions only grow, never repeat, and end equal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from c360.config import Settings
from c360.errors import BrokerError, C360Error, DataError, StateFormatError
from c360.model.delta import Delta, Lifecycle
from c360.model.events import Catalogue
from c360.store.memory import EntityStore
from c360.topics.changes import RESET_STREAM, RUN_HEADER, decode_change

log = logging.getLogger(__name__)
_META = ("id", "kind", "version")


class _Shadow:
    __slots__ = ("fields", "version")

    def __init__(self, fields: dict[str, Any], version: int) -> None:
        self.fields = fields
        self.version = version


class Materializer:
    """Applies changes to ``store`` so that it converges across dataflow restarts."""

    def __init__(self, store: EntityStore) -> None:
        self.store = store
        self._versions: dict[str, int] = {}  # the version the store shows, per entity
        self._shadows: dict[str, _Shadow] = {}
        self._passing: set[str] = set()  # entities whose latest delta reached the store
        self.resets = 0  # restart points read
        self.repaired = 0  # shown entities switched to the state of a later run
        self.dropped = 0  # replayed deltas not passed on

    def apply(self, changes: Iterable[Delta | Lifecycle]) -> None:
        out: list[Delta | Lifecycle] = []
        versions, shadows, passing = self._versions, self._shadows, self._passing
        shadow: _Shadow | None
        for c in changes:
            eid = c.entity_id
            if not isinstance(c, Delta):  # a Lifecycle (an exact type test: as fast)
                # It follows its version's delta: passed with it, or dropped with a replay.
                if eid in passing:
                    out.append(c)
                continue
            shown = versions.get(eid, 0)
            if c.stream == RESET_STREAM or (c.version == 1 and shown >= 1):
                # A restart point: the entity's whole state at c.version (a version-1 delta
                # is one too: an entity the resumed run had no snapshot of starts afresh).
                self.resets += 1
                shadow = shadows[eid] = _Shadow(dict(c.changes), c.version)
            else:
                shadow = shadows.get(eid)
                if shadow is None:
                    if c.version > shown:
                        versions[eid] = c.version
                        passing.add(eid)
                        out.append(c)
                    else:
                        passing.discard(eid)
                        self.dropped += 1
                    continue
                if c.version != shadow.version + 1:
                    passing.discard(eid)
                    continue  # a replay of what the shadow has (or a gap: wait for a reset)
                shadow.fields.update(c.changes)
                shadow.version = c.version
            if shadow.version > shown:
                self._switch(c, shadow, out)
                passing.add(eid)
            else:
                passing.discard(eid)
        if out:
            self.store.apply(out)

    def _switch(self, d: Delta, shadow: _Shadow, out: list[Delta | Lifecycle]) -> None:
        """Take the visible entity to the shadow's state and version with one delta."""
        eid = d.entity_id
        del self._shadows[eid]
        shown: dict[str, Any] = {}
        if self._versions.get(eid, 0) > 0:
            if out:  # the store must hold every earlier change before the difference is taken
                self.store.apply(out)
                out.clear()
            shown = self.store.get(eid) or {}
            self.repaired += 1
        changes = {k: v for k, v in shadow.fields.items() if k not in shown or shown[k] != v}
        for k in shown:
            if k not in _META and k not in shadow.fields:
                changes[k] = None  # a field the shadow does not have (yet)
        self._versions[eid] = shadow.version
        out.append(Delta(eid, d.kind, shadow.version, d.event_time, d.stream, d.event_id,
                         changes))

    @property
    def repairing(self) -> int:
        """Entities whose replayed state has not yet passed the version shown."""
        return len(self._shadows)


class ChangesReplica:
    """An :class:`EntityStore` materialized from the entity-changes topic, in the background.

    Usable wherever a store is: ``c360.sync.SyncServer(replica.store)``, dashboards, notebooks.
    It reads the topic from the beginning, so it rebuilds everything the dataflow published.
    """

    def __init__(self, settings: Settings, store: EntityStore | None = None, *,
                 topic: str | None = None) -> None:
        self.settings = settings
        self.topic = topic or Catalogue(settings.topic_prefix).changes_topic
        self.store = store if store is not None else EntityStore()
        self.materializer = Materializer(self.store)
        self.records = 0
        self.bad_records = 0
        self.run_id: str | None = None  # the dataflow run whose records came last
        self.run_seen_at: dict[str, float] = {}  # run id -> when its first record was read
        self.run_versions: dict[str, int] = {}  # the latest run's top version per entity
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()

    def start(self) -> ChangesReplica:
        if self._thread is not None:
            raise C360Error("this replica is already running")
        cfg = {**self.settings.librdkafka(), "group.id": "c360-replica-unused",
               "enable.auto.commit": "false", "fetch.wait.max.ms": "50"}
        consumer = Consumer(cfg)
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
        except KafkaException as exc:
            consumer.close()
            raise BrokerError(f"cannot read Kafka topic metadata: {exc}") from exc
        tmeta = meta.topics.get(self.topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            consumer.close()
            raise BrokerError(f"the entity-changes topic {self.topic!r} does not exist; run the "
                              "dataflow with changes on (c360 run --changes) first")
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                         for p in sorted(tmeta.partitions)])
        self._consumer = consumer
        self._thread = threading.Thread(target=self._run, name="c360-replica", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._consumer is not None
        try:
            while not self._stop.is_set():
                msgs = self._consumer.consume(5000, 0.1)
                if msgs:
                    self._take(msgs)
        except C360Error as exc:  # surfaced by wait_for() and stop(), in one line
            self.error = exc
            log.error("%s", exc)
        except BaseException as exc:  # surfaced by wait_for() and stop()
            self.error = exc
            log.exception("the changes replica stopped with an error")
        finally:
            self._consumer.close()

    def _take(self, msgs: list) -> None:
        changes: list[Delta | Lifecycle] = []
        now = time.monotonic()
        with self._lock:
            for m in msgs:
                if m.error() is not None:
                    raise BrokerError(f"reading {self.topic}: {m.error()}")
                try:
                    c = decode_change(m.value())
                except StateFormatError as exc:  # a whole topic of them, most likely: stop
                    self.materializer.apply(changes)  # the records before it
                    raise StateFormatError(f"the changes replica stopped at {self.topic} "
                                           f"partition {m.partition()} offset {m.offset()}: "
                                           f"{exc}") from None
                except DataError as exc:  # one bad record (not written by c360): skip it
                    self.bad_records += 1
                    log.warning("skipped record %s/%s@%s: %s", m.topic(), m.partition(),
                                m.offset(), exc)
                    continue
                run = dict(m.headers() or ()).get(RUN_HEADER)
                if run is not None:
                    run_id = run.decode()
                    if run_id != self.run_id:
                        self.run_id = run_id
                        self.run_seen_at.setdefault(run_id, now)
                        self.run_versions = {}
                    if type(c) is Delta and c.version > self.run_versions.get(c.entity_id, 0):
                        self.run_versions[c.entity_id] = c.version
                changes.append(c)
            self.records += len(msgs)
            self.materializer.apply(changes)

    def versions(self) -> dict[str, int]:
        """The version the replica shows, per entity (a copy)."""
        with self._lock:
            return dict(self.materializer._versions)

    def latest_run(self) -> tuple[str | None, dict[str, int]]:
        """The id of the latest dataflow run read, and its top version per entity (a copy)."""
        with self._lock:
            return self.run_id, dict(self.run_versions)

    def wait_for(self, versions: dict[str, int], timeout: float = 60.0) -> bool:
        """Wait until every entity shows at least ``versions[id]``; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.versions()
            if all(shown.get(k, 0) >= v for k, v in versions.items()):
                return True
            self._raise_error()
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._raise_error()

    def _raise_error(self) -> None:
        if isinstance(self.error, C360Error):
            raise self.error  # one line that says what to do (a StateFormatError, say)
        if self.error is not None:
            raise C360Error(f"the changes replica failed: {self.error}") from self.error

    def __enter__(self) -> ChangesReplica:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def replica_from_kafka(settings: Settings | None = None, store: EntityStore | None = None, *,
                       topic: str | None = None) -> ChangesReplica:
    """Start a store replica that follows the entity-changes topic; ``.store`` is the store."""
    return ChangesReplica(settings or Settings.from_env(), store, topic=topic).start()
