"""Running the customer-360 dataflow against Kafka, in the foreground or in the background.

``run_until_idle`` is the bounded mode for notebooks, tests and batch users: it
consumes every stream topic from the beginning until they have been idle for a
while, and returns the store. ``Pipeline.start()`` runs the same flow in a
background thread for live use (the demo, a dashboard server, a notebook).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.testing import cluster_main

from c360.config import Settings
from c360.entity.derive import EntityHooks
from c360.entity.fold import compile_aging, compile_folds
from c360.entity.logic import Logic, first_logic
from c360.entity.rules import RuleBook, RuleFn
from c360.entity.segments import SegmentBook
from c360.entity.state import FOLDS
from c360.errors import C360Error, ConfigError, ModelError
from c360.model.declare import EntityModel
from c360.model.events import Catalogue
from c360.models.retail import RETAIL
from c360.run.recovery import recovery_config
from c360.store.entity_log import ENTITY_LOG_DIR
from c360.store.memory import EntityStore
from c360.topics.admin import create_topics
from c360.topics.changes import new_run_id
from c360.topics.source import KafkaBatchSource
from dataflows.graph import kafka_flow

log = logging.getLogger(__name__)


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
                 addresses: list[str] | None = None, process_id: int = 0,
                 rules: RuleBook | None = None, segments: SegmentBook | None = None,
                 model: EntityModel | None = None) -> None:
        """``recovery_dir``: run with bytewax recovery there, snapshotting every
        ``snapshot_interval`` seconds (:mod:`c360.run.recovery`). ``changes_topic``: also
        publish every entity change there (:mod:`c360.topics.changes`; ``Catalogue.changes_topic``
        is the usual one). ``addresses``/``process_id``: this process's place in a cluster
        of dataflow processes (bytewax ``-a``/``-i``). ``hooks``, ``analytics``: see
        ``build_flow``. ``rules``, ``segments``: this pipeline's rule book (with the product
        index its offer rules read) and segment book; default: the built-in ones, fresh for
        this pipeline (:attr:`rules`, :attr:`segments`, :meth:`rule`, :meth:`segment`).
        ``model``: the declared entity model to fold (c360.model.declare); default: the
        retail model, ``c360.models.retail.RETAIL``. It is checked here: a model that does
        not hold together is refused with one ModelError line naming the field."""
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
        self.model = (model if model is not None else RETAIL).check()
        # The store's export dtypes and a sync server's PII set follow the model folded
        # into it (a store given its own model keeps it).
        self.store.use_model(self.model)
        self.catalogue = Catalogue(self.settings.topic_prefix, self.model.streams)
        self.workers = workers
        self.logic = logic
        self.idle_timeout = idle_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.source: KafkaBatchSource | None = None
        # Snapshots cost an encoding of the state per epoch; only worth it with recovery on.
        self.recoverable = recovery_dir is not None
        self.recovery_dir = Path(recovery_dir) if recovery_dir is not None else None
        self.snapshot_interval = snapshot_interval
        self.changes_topic = changes_topic
        # Its own rules, product index and segments: two pipelines in one kernel never see
        # each other's (a book given to both is shared, on purpose).
        self.rules = rules if rules is not None else RuleBook.builtin()
        self.segments = segments if segments is not None else SegmentBook.builtin()
        # The hooks' settings as given, with this pipeline's books: a hooks object given to
        # several pipelines is copied, never changed.
        self.hooks = dataclasses.replace(
            hooks if hooks is not None else EntityHooks(
                allowed_lateness=timedelta(seconds=self.settings.allowed_lateness_s)),
            rule_book=self.rules, segment_book=self.segments,
            folds=FOLDS if model is None else compile_folds(self.model),
            age=None if model is None else compile_aging(self.model))
        check_names(self.model, self.rules, self.segments)
        self.analytics = analytics
        self.addresses = addresses or []
        self.process_id = process_id
        self.run_id = new_run_id()  # tags this run's records on the changes topic

    def rule(self, name: str, **options: Any) -> Callable[[RuleFn], RuleFn]:
        """Decorator: add a rule to this pipeline (``RuleBook.rule``; it runs from the next
        event on, also while the pipeline runs)."""
        return self.rules.rule(name, **options)

    def segment(self, name: str, *, fields: Iterable[str]
                ) -> Callable[[Callable[[Mapping[str, Any]], bool]],
                              Callable[[Mapping[str, Any]], bool]]:
        """Decorator: add a segment to this pipeline (``SegmentBook.segment``)."""
        return self.segments.segment(name, fields=fields)

    def build(self) -> Dataflow:
        check_names(self.model, self.rules, self.segments)  # rules added since init too
        self.settings.require_bootstrap()
        self.rules.products.clear()  # a run starts from its own products, not an earlier run's
        wired = kafka_flow(self.settings, self.store, catalogue=self.catalogue,
                           idle_timeout=self.idle_timeout, stop=self._stop,
                           recoverable=self.recoverable, changes_topic=self.changes_topic,
                           run_id=self.run_id, hooks=self.hooks, analytics=self.analytics,
                           logic=self.logic, entity_log=None if self.recovery_dir is None
                           else self.recovery_dir / ENTITY_LOG_DIR)
        self.source = wired.source
        return wired.flow

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


def check_names(model: EntityModel, rules: RuleBook, segments: SegmentBook) -> None:
    """Rules and segments name fields as the model declares them: a ``when=`` field of a
    rule or a ``fields=`` field of a segment that the model does not declare is refused in
    one :class:`ModelError` line (the rule would never run, the segment never change)."""
    declared = {f.name for f in model.fields}
    for name in rules:
        for f in sorted(rules[name].when or ()):
            if f not in declared:
                raise ModelError(f"rule {name!r}: field {f!r} (in when=) is not declared in "
                                 f"model {model.name!r}; declare it, or leave the rule out "
                                 "(Pipeline(rules=RuleBook()) starts with none)")
    for name in segments:
        for f in sorted(segments[name].fields):
            if f not in declared:
                raise ModelError(f"segment {name!r}: field {f!r} is not declared in model "
                                 f"{model.name!r}; declare it, or leave the segment out "
                                 "(Pipeline(segments=SegmentBook()) starts with none)")


def run_until_idle(idle: float = 5.0, settings: Settings | None = None, *,
                   export: str | Path | None = None, workers: int = 1,
                   logic: Logic | None = first_logic,
                   store: EntityStore | None = None, rules: RuleBook | None = None,
                   segments: SegmentBook | None = None) -> EntityStore:
    """Consume every stream topic from the beginning until idle for ``idle`` seconds.

    Returns the store; with ``export``, also writes one row per customer there. Every
    customer is aged to the latest event time read, ``store.as_of`` (an ``as_of`` column
    of the export; docs/event-time.md). ``rules``, ``segments``: as for :class:`Pipeline`.
    """
    pipeline = Pipeline(settings, store, workers=workers, logic=logic, idle_timeout=idle,
                        rules=rules, segments=segments)
    pipeline.run()
    log.info("input ended; every customer is as of %s", pipeline.as_of)
    if export is not None:
        pipeline.store.export(export)
    return pipeline.store
