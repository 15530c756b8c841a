"""Running the customer-360 dataflow against Kafka, in the foreground or in the background.

``run_until_idle`` is the bounded mode for notebooks, tests and batch users: it
consumes every stream topic from the beginning until they have been idle for a
while, and returns the store. ``Pipeline.start()`` runs the same flow in a
background thread for live use (the demo, a dashboard server, a notebook).
"""

from __future__ import annotations

import gc
import logging
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import cluster_main

from c360.config import Settings
from c360.dev.broker import create_topics
from c360.entity.derive import EntityHooks
from c360.entity.logic import Logic, first_logic
from c360.entity.rules import CATALOG
from c360.errors import C360Error, ConfigError
from c360.model.delta import Delta
from c360.model.events import Catalogue
from c360.run.recovery import recovery_config
from c360.store.memory import EntityStore
from c360.store.replica import Materializer
from c360.topics.changes import changes_sink, new_run_id
from c360.topics.sinks import KafkaSink
from c360.topics.source import KafkaBatchSource

log = logging.getLogger(__name__)


class _StorePartition(StatelessSinkPartition[list[Delta]]):
    def __init__(self, store: EntityStore | Materializer) -> None:
        self._store = store

    def write_batch(self, items: list[list[Delta]]) -> None:
        for deltas in items:
            self._store.apply(deltas)


class StoreSink(DynamicSink[list[Delta]]):
    """Writes batches of deltas into an :class:`EntityStore` (every worker into the same one).

    With ``recovering``, through a :class:`~c360.store.replica.Materializer`: a resumed dataflow
    replays deltas, and a store that outlived the previous run must not take them twice.
    """

    def __init__(self, store: EntityStore, recovering: bool = False) -> None:
        self.store = store
        self._into: EntityStore | Materializer = Materializer(store) if recovering else store
        self._lock = threading.Lock()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        if isinstance(self._into, Materializer):
            return _StorePartition(_Locked(self._into, self._lock))  # type: ignore[arg-type]
        return _StorePartition(self._into)


class _Locked:
    """One materializer shared by the workers of a process: one apply at a time."""

    def __init__(self, into: Materializer, lock: threading.Lock) -> None:
        self._into, self._lock = into, lock

    def apply(self, deltas: list[Delta]) -> None:
        with self._lock:
            self._into.apply(deltas)


def c360_cause(exc: BaseException) -> BaseException:
    """The C360Error behind a bytewax error (bytewax wraps what a step raises), or ``exc``:
    a BrokerError's guidance should reach the user as is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, C360Error):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def tune_gc() -> None:
    """Collect young objects less often.

    The entity state is many small long-lived dicts; with Python's default
    thresholds the cyclic collector keeps re-scanning them and took over half of
    the dataflow's CPU time in our measurements. This is process-wide.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 100_000), max(gen1, 50), max(gen2, 100))


class Pipeline:
    """The customer-360 dataflow wired to Kafka and to an in-memory store."""

    def __init__(self, settings: Settings | None = None, store: EntityStore | None = None, *,
                 workers: int = 1, logic: Logic | None = first_logic,
                 idle_timeout: float | None = None, recovery_dir: str | Path | None = None,
                 snapshot_interval: float = 1.0, changes_topic: str | None = None,
                 hooks: EntityHooks | None = None, analytics: bool = True,
                 addresses: list[str] | None = None, process_id: int = 0) -> None:
        """``recovery_dir``: run with bytewax recovery there, snapshotting every
        ``snapshot_interval`` seconds (:mod:`c360.run.recovery`). ``changes_topic``: also
        publish every entity change there (:mod:`c360.topics.changes`; ``Catalogue.changes_topic``
        is the usual one). ``addresses``/``process_id``: this process's place in a cluster
        of dataflow processes (bytewax ``-a``/``-i``). ``hooks``, ``analytics``: see
        ``build_flow``."""
        # Checked here, not found out after a run: idle_timeout=-5 would end at once with
        # an empty store, workers=0 would run nothing; both looked like "0 customers".
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, not {workers}")
        if idle_timeout is not None and not idle_timeout > 0:  # NaN too
            raise ConfigError(f"idle_timeout must be more than 0 seconds, not {idle_timeout}")
        if not snapshot_interval > 0:
            raise ConfigError(f"snapshot_interval must be more than 0 seconds, "
                              f"not {snapshot_interval}")
        self.settings = settings or Settings.from_env()
        self.store = store if store is not None else EntityStore()
        self.catalogue = Catalogue(self.settings.topic_prefix)
        self.workers = workers
        self.logic = logic
        self.idle_timeout = idle_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.source: KafkaBatchSource | None = None
        # Snapshots cost a pickle of the state per epoch; only worth it with recovery on.
        self.recoverable = recovery_dir is not None
        self.recovery_dir = Path(recovery_dir) if recovery_dir is not None else None
        self.snapshot_interval = snapshot_interval
        self.changes_topic = changes_topic
        self.hooks = hooks
        self.analytics = analytics
        self.addresses = addresses or []
        self.process_id = process_id
        self.run_id = new_run_id()  # tags this run's records on the changes topic

    def build(self) -> Dataflow:
        from dataflows.customer360 import build_flow

        s = self.settings
        brokers = s.require_bootstrap().split(",")
        CATALOG.clear()  # a run starts from its own products, not an earlier run's
        self.source = KafkaBatchSource(s.librdkafka(), self.catalogue.input_topics,
                                       idle_timeout=self.idle_timeout, stop=self._stop,
                                       unordered=[self.catalogue.commands_topic],
                                       partition_idle=s.partition_idle_ms / 1000,
                                       align_max=s.align_max)
        # murmur2_random: the partitioner kafka-python uses, so keys land alike from both.
        dlq = KafkaSink(brokers, self.catalogue.dlq_topic,
                        add_config={**s.security.librdkafka(), "message.max.bytes": "20000000",
                                    "partitioner": "murmur2_random"})
        late = KafkaSink(brokers, self.catalogue.late_topic,
                         add_config={**s.security.librdkafka(), "message.max.bytes": "20000000",
                                     "partitioner": "murmur2_random"})
        decisions = KafkaSink(brokers, self.catalogue.decisions_topic,
                              add_config={**s.security.librdkafka(),
                                          "partitioner": "murmur2_random"})
        changes = changes_sink(s, self.changes_topic) if self.changes_topic else None
        return build_flow(self.source, StoreSink(self.store, self.recoverable), dlq,
                          late_sink=late, changes_sink=changes, run_id=self.run_id,
                          hooks=self.hooks, analytics=self.analytics,
                          decisions_sink=decisions, catalogue=self.catalogue,
                          logic=self.logic, max_event_bytes=s.max_event_bytes,
                          allowed_lateness=timedelta(seconds=s.allowed_lateness_s),
                          recoverable=self.recoverable)

    @property
    def as_of(self) -> datetime | None:
        """After a bounded run: the event time every customer was aged to (the latest event
        time read; also ``store.as_of``, a column of exports). None when it did not end on
        idleness, or when aging is off (``EntityHooks(sweep_per_batch=0)``, ``--no-sweep``:
        windows then stay at each customer's own latest event)."""
        if self.hooks is not None and (not self.hooks.windows or self.hooks.sweep_per_batch == 0):
            return None
        return self.source.as_of if self.source is not None else None

    def ensure_topics(self) -> None:
        cat = self.catalogue
        create_topics(self.settings, [*cat.input_topics, cat.dlq_topic, cat.late_topic,
                                      cat.decisions_topic,
                                      *([self.changes_topic] if self.changes_topic else [])])

    def _cluster_options(self) -> dict[str, Any]:
        if self.recovery_dir is None:
            return {}
        return {"epoch_interval": timedelta(seconds=self.snapshot_interval),
                "recovery_config": recovery_config(self.recovery_dir,
                                                   kafka=self.settings.librdkafka(),
                                                   topics=self.catalogue.input_topics)}

    def run(self) -> EntityStore:
        """Run in this thread until stopped or (with ``idle_timeout``) idle."""
        self.ensure_topics()
        flow = self.build()
        tune_gc()
        try:
            cluster_main(flow, self.addresses, self.process_id,
                         worker_count_per_proc=self.workers,
                         **({"epoch_interval": None} | self._cluster_options()))
        except Exception as exc:
            cause = c360_cause(exc)
            if cause is exc:
                raise
            raise cause from None
        self.store.as_of = self.as_of
        return self.store

    def start(self) -> Pipeline:
        """Run in a background thread; returns at once."""
        if self._thread is not None:
            raise C360Error("this pipeline is already running")
        self.ensure_topics()
        flow = self.build()
        tune_gc()
        options = self._cluster_options()  # a bad recovery directory raises here, not later

        def target() -> None:
            try:
                cluster_main(flow, self.addresses, self.process_id,
                             worker_count_per_proc=self.workers, **options)
                self.store.as_of = self.as_of
            except BaseException as exc:  # surfaced by stop() and alive()
                self.error = c360_cause(exc)
                log.exception("the customer-360 dataflow stopped with an error")

        self._thread = threading.Thread(target=target, name="c360-dataflow", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise C360Error(f"the dataflow did not stop within {timeout:.0f}s")
        if isinstance(self.error, C360Error):
            raise self.error
        if self.error is not None:
            raise C360Error(f"the dataflow failed: {self.error}") from self.error

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_until_idle(idle: float = 5.0, settings: Settings | None = None, *,
                   export: str | Path | None = None, workers: int = 1,
                   logic: Logic | None = first_logic,
                   store: EntityStore | None = None) -> EntityStore:
    """Consume every stream topic from the beginning until idle for ``idle`` seconds.

    Returns the store; with ``export``, also writes one row per customer there. Every
    customer is aged to the latest event time read, ``store.as_of`` (an ``as_of`` column
    of the export; docs/event-time.md).
    """
    pipeline = Pipeline(settings, store, workers=workers, logic=logic, idle_timeout=idle)
    pipeline.run()
    log.info("input ended; every customer is as of %s", pipeline.as_of)
    if export is not None:
        pipeline.store.export(export)
    return pipeline.store
