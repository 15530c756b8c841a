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

A replica can publish a checkpoint (:meth:`ChangesReplica.checkpoint`): its whole state at a
cut of the changes topic, on the companion topic of :func:`~c360.topics.changes.checkpoints_topic`.
:func:`replica_from_kafka` starts from the newest whole checkpoint and reads the changes topic
only after its cut (docs/scaling.md, "Replicas start from a checkpoint").
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from c360.config import Settings, producer_config
from c360.errors import BrokerError, C360Error, DataError, StateFormatError
from c360.model.delta import Delta, Lifecycle
from c360.model.events import Catalogue
from c360.store.memory import EntityStore
from c360.topics.admin import create_topics
from c360.topics.changes import (
    CHECKPOINT_HEADER,
    RESET_STREAM,
    RUN_HEADER,
    TRAILER_HEADER,
    StateV1,
    TrailerV1,
    checkpoints_topic,
    decode_change,
    decode_checkpoint,
    encode_checkpoint,
)

log = logging.getLogger(__name__)
_META = ("id", "kind", "version")
# The stream of the deltas that load a checkpoint into a replica's store (one per entity).
CHECKPOINT_STREAM = "checkpoint"


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

    def state_of(self, entity: dict[str, Any], checkpoint: str, run_version: int) -> StateV1:
        """``entity`` (a copy of the store's) and what this materializer keeps of it."""
        eid = entity["id"]
        shadow = self._shadows.get(eid)
        return StateV1(checkpoint, entity, eid in self._passing,
                       shadow.version if shadow is not None else 0,
                       dict(shadow.fields) if shadow is not None else {}, run_version)

    def restore(self, states: list[StateV1], trailer: TrailerV1) -> None:
        """Load a checkpoint: the store gets one delta per entity (stream ``checkpoint``) and
        this materializer the bookkeeping, so later changes are decided as from offset 0."""
        deltas = []
        for st in states:
            f = st.fields
            eid, version = f["id"], f["version"]
            self._versions[eid] = version
            if st.passing:
                self._passing.add(eid)
            if st.shadow_version:
                self._shadows[eid] = _Shadow(dict(st.shadow), st.shadow_version)
            deltas.append(Delta(eid, f["kind"], version, trailer.taken_at, CHECKPOINT_STREAM,
                                "", {k: v for k, v in f.items() if k not in _META}))
        self.store.apply(deltas)
        self.resets, self.repaired, self.dropped = (trailer.resets, trailer.repaired,
                                                    trailer.dropped)
        # The counters as a replica that read every change has them (not the load's deltas);
        # set before the replica's thread starts, the only writer of this store.
        store = self.store
        store.events_by_stream.clear()
        store.events_by_stream.update(trailer.stream_counts)
        store.lifecycle_counts.clear()
        store.lifecycle_counts.update(trailer.lifecycle_counts)
        store.stale_deltas = trailer.stale_deltas


class ChangesReplica:
    """An :class:`EntityStore` materialized from the entity-changes topic, in the background.

    Usable wherever a store is: ``c360.sync.SyncServer(replica.store)``, dashboards, notebooks.
    It reads the topic from the beginning, so it rebuilds everything the dataflow published;
    with ``from_checkpoint`` it loads the newest whole checkpoint first (when there is one)
    and reads the topic only after that checkpoint's cut (a store of every version,
    :class:`~c360.store.history.History`, must not: it needs every change).
    ``checkpoint_every``: publish a checkpoint after every that many changes read (0: never;
    :meth:`checkpoint` publishes one when called).
    """

    def __init__(self, settings: Settings, store: EntityStore | None = None, *,
                 topic: str | None = None, from_checkpoint: bool = False,
                 checkpoint_every: int = 0) -> None:
        self.settings = settings
        self.topic = topic or Catalogue(settings.topic_prefix).changes_topic
        self.store = store if store is not None else EntityStore()
        self.materializer = Materializer(self.store)
        self.from_checkpoint = from_checkpoint
        self.checkpoint_every = checkpoint_every
        self.records = 0  # changes records read
        self.checkpoint_records = 0  # checkpoint records read (all, not only the one loaded)
        self.started_from: TrailerV1 | None = None  # the checkpoint loaded at start
        self.last_checkpoint: TrailerV1 | None = None  # the last one this replica published
        self.checkpoint_bytes = 0  # its size (the records' values)
        self.bad_records = 0
        self._partitions: list[int] = []
        self._positions: dict[int, int] = {}  # partition -> the next offset to read
        self._checkpointed_at = 0  # self.records when the last periodic checkpoint was taken
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
        self._partitions = sorted(tmeta.partitions)
        self._positions = dict.fromkeys(self._partitions, 0)
        try:
            found = self._newest_checkpoint(cfg) if self.from_checkpoint else None
            if found is not None:
                self._check_not_truncated(consumer, found[1])
        except BaseException:
            consumer.close()
            raise
        if found is None:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                             for p in self._partitions])
        else:
            states, trailer = found
            self.materializer.restore(states, trailer)
            self.run_id = trailer.run_id or None
            if self.run_id is not None:
                self.run_seen_at[self.run_id] = time.monotonic()
            self.run_versions = {st.fields["id"]: st.run_version for st in states
                                 if st.run_version}
            self._positions = dict(zip(self._partitions, trailer.offsets, strict=True))
            self.started_from = trailer
            consumer.assign([TopicPartition(self.topic, p, o)
                             for p, o in self._positions.items()])
            log.info("replica of %s: checkpoint %s loaded (%d entities), reading from offsets "
                     "%s", self.topic, trailer.checkpoint, trailer.count, trailer.offsets)
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
                every = self.checkpoint_every
                if every and self.records - self._checkpointed_at >= every:
                    self._checkpointed_at = self.records
                    try:
                        self.checkpoint()
                    except C360Error as exc:  # the replica goes on; the next one may succeed
                        log.warning("a periodic checkpoint failed: %s", exc)
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
        positions = self._positions
        with self._lock:
            for m in msgs:
                if m.error() is not None:
                    raise BrokerError(f"reading {self.topic}: {m.error()}")
                positions[m.partition()] = m.offset() + 1
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

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self) -> TrailerV1:
        """Publish this replica's whole state at the changes it has read so far, as one
        checkpoint on ``checkpoints_topic(topic)``; returns its trailer.

        The cut is taken under the replica's lock (copies of the entities: their values are
        never mutated in place), then encoded and produced outside it, so the replica keeps
        reading meanwhile. The trailer goes last, alone in its produce batch, after every
        state record was acknowledged: a checkpoint interrupted before it is never used."""
        if self._thread is None:
            raise C360Error("start the replica before publishing a checkpoint")
        cid = uuid.uuid4().hex[:12]
        m, store = self.materializer, self.store
        with self._lock:
            offsets = [self._positions[p] for p in self._partitions]
            states = [m.state_of(e, cid, self.run_versions.get(e["id"], 0))
                      for e in store.entities(None)]
            trailer = TrailerV1(cid, self.topic, len(states), offsets,
                                datetime.now(timezone.utc), dict(store.events_by_stream),
                                dict(store.lifecycle_counts), store.stale_deltas,
                                self.run_id or "", m.resets, m.repaired, m.dropped)
        topic = checkpoints_topic(self.topic)
        create_topics(self.settings, [topic], partitions=1)
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        # One request in flight: a retried batch never lands after a later one.
        producer = Producer(producer_config(
            self.settings, linger_ms=5, message_max_bytes=20_000_000,
            max_in_flight_requests_per_connection=1,
            queue_buffering_max_messages=10_000_000, queue_buffering_max_kbytes=4_194_304))
        size = 0
        # Partition 0 whatever the topic has: one checkpoint's records in one order.
        header: list[tuple[str, str | bytes | None]] = [(CHECKPOINT_HEADER, cid.encode())]
        for st in states:
            raw = encode_checkpoint(st)
            size += len(raw)
            producer.produce(topic, raw, st.fields["id"].encode(), partition=0,
                             headers=header, on_delivery=delivered)
            producer.poll(0)
        self._flush(producer, failures, cid)
        raw = encode_checkpoint(trailer)
        producer.produce(topic, raw, b"", partition=0,
                         headers=[(TRAILER_HEADER, cid.encode())], on_delivery=delivered)
        self._flush(producer, failures, cid)
        self.checkpoint_bytes = size + len(raw)
        self.last_checkpoint = trailer
        log.info("checkpoint %s of %s: %d entities, %d bytes, offsets %s", cid, self.topic,
                 len(states), self.checkpoint_bytes, offsets)
        return trailer

    @staticmethod
    def _flush(producer: Producer, failures: list[str], cid: str) -> None:
        left = producer.flush(60)
        if left or failures:
            raise BrokerError(f"checkpoint {cid} was not published ({left} records unsent; "
                              f"{'; '.join(failures[:3]) or 'timed out'}); it will never be "
                              "used: publish another")

    def _newest_checkpoint(self, cfg: dict[str, str]
                           ) -> tuple[list[StateV1], TrailerV1] | None:
        """The newest whole checkpoint of this topic's partitions, or None.

        Reads the checkpoints topic from its beginning to the end it reports at the start
        (the embedded broker reports the start of the last batch + 1: the trailer goes alone
        in its batch, so that is past the newest trailer), keeps the raw records of each
        checkpoint until its trailer and decodes only the newest whole one."""
        topic = checkpoints_topic(self.topic)
        consumer = Consumer(cfg)
        try:
            meta = consumer.list_topics(topic, timeout=10)
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                return None
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                                      cached=False)[1]
                    for p in sorted(tmeta.partitions)}
            pending = {p for p, end in ends.items() if end > 0}
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
            building: dict[bytes, list[bytes]] = {}
            newest: tuple[list[bytes], TrailerV1] | None = None
            quiet_since = time.monotonic()
            while pending:
                msgs = consumer.consume(5000, 0.5)
                if not msgs and time.monotonic() - quiet_since > 60:
                    raise BrokerError(f"reading {topic}: no records for 60 s before its end "
                                      f"{ends}; is the broker up?")
                quiet_since = time.monotonic() if msgs else quiet_since
                for msg in msgs:
                    if msg.error() is not None:
                        raise BrokerError(f"reading {topic}: {msg.error()}")
                    self.checkpoint_records += 1
                    if (msg.offset() or 0) + 1 >= ends[msg.partition()]:
                        pending.discard(msg.partition())
                    headers = dict(msg.headers() or ())
                    state_of, end_of = headers.get(CHECKPOINT_HEADER), headers.get(TRAILER_HEADER)
                    if isinstance(state_of, bytes):
                        building.setdefault(state_of, []).append(msg.value() or b"")
                    elif isinstance(end_of, bytes):
                        raws = building.pop(end_of, [])
                        trailer = decode_checkpoint(msg.value())
                        if self._usable(trailer, len(raws)):
                            assert isinstance(trailer, TrailerV1)
                            newest = (raws, trailer)
                    else:
                        self.bad_records += 1
                        log.warning("skipped record %s/%s@%s: not a c360 checkpoint record",
                                    topic, msg.partition(), msg.offset())
        finally:
            consumer.close()
        if newest is None:
            return None
        raws, trailer = newest
        states = [decode_checkpoint(r) for r in raws]
        if not all(isinstance(st, StateV1) and st.checkpoint == trailer.checkpoint
                   for st in states):
            raise DataError(f"checkpoint {trailer.checkpoint} on {topic} holds records that "
                            "are not its state records: start the replica without a "
                            "checkpoint, or publish a new one")
        return [st for st in states if isinstance(st, StateV1)], trailer

    def _usable(self, trailer: StateV1 | TrailerV1, records: int) -> bool:
        if not isinstance(trailer, TrailerV1):
            return False
        if trailer.count != records:
            log.warning("checkpoint %s of %s is not whole (%d of %d state records read): "
                        "not used", trailer.checkpoint, self.topic, records, trailer.count)
            return False
        if trailer.topic != self.topic or len(trailer.offsets) != len(self._partitions):
            log.warning("checkpoint %s is of %s with %d partitions, not of %s with %d: not "
                        "used", trailer.checkpoint, trailer.topic, len(trailer.offsets),
                        self.topic, len(self._partitions))
            return False
        return True

    def _check_not_truncated(self, consumer: Consumer, trailer: TrailerV1) -> None:
        for p, offset in zip(self._partitions, trailer.offsets, strict=True):
            low, _ = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10,
                                                    cached=False)
            if low > offset:
                raise BrokerError(f"{self.topic} partition {p} starts at offset {low}, after "
                                  f"the newest checkpoint's cut ({offset}): the changes "
                                  "between them are gone; publish checkpoints more often "
                                  "than the topic is truncated")

    def positions(self) -> dict[int, int]:
        """The next offset the replica reads, per partition of the changes topic (a copy)."""
        with self._lock:
            return dict(self._positions)

    def reported_ends(self) -> dict[int, int]:
        """The end offset the broker reports now, per partition: on a Kafka cluster the end,
        on the embedded broker the start of its last batch + 1 (a lower bound: reaching it
        is reaching the last batch)."""
        consumer = Consumer({**self.settings.librdkafka(), "group.id": "c360-replica-unused"})
        try:
            return {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10,
                                                      cached=False)[1]
                    for p in self._partitions}
        except KafkaException as exc:
            raise BrokerError(f"cannot read the end offsets of {self.topic}: {exc}") from exc
        finally:
            consumer.close()

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
                       topic: str | None = None, from_checkpoint: bool = True,
                       checkpoint_every: int = 0) -> ChangesReplica:
    """Start a store replica that follows the entity-changes topic; ``.store`` is the store.
    It starts from the newest whole checkpoint when there is one (``from_checkpoint``) and
    publishes one after every ``checkpoint_every`` changes read (0: never)."""
    return ChangesReplica(settings or Settings.from_env(), store, topic=topic,
                          from_checkpoint=from_checkpoint,
                          checkpoint_every=checkpoint_every).start()
