"""The one live pipeline of a process, shared by every dashboard session of it.

A Panel server runs a dashboard script once per browser session, but the
dataflow must run once per process: two sessions must see the same entities,
and a pipeline per session would re-read every topic and multiply the load on
Kafka. So "the current pipeline" is legitimately one per process (a web server, a
notebook kernel), and it is the one piece of process-wide state c360 keeps: one small
object, :data:`CURRENT`, with its lock. Everything else (rules, segments, the product
index, stores) belongs to a pipeline.

- ``c360 demo`` starts its own pipeline and registers it with :func:`set_shared`;
- under ``panel serve dashboards/live.py`` nothing is registered, and the first
  session's call to :func:`shared_store` starts one pipeline in the background
  for the whole process, reading the cluster named by ``C360_KAFKA_BOOTSTRAP``.

The module functions are :data:`CURRENT`'s methods.
"""

from __future__ import annotations

import atexit
import logging
import threading

from c360.config import Settings
from c360.errors import C360Error
from c360.run.pipeline import Pipeline
from c360.store.memory import EntityStore

log = logging.getLogger(__name__)


class SharedPipeline:
    """The process's live store and the pipeline feeding it (if any)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # sessions open concurrently: one may start it
        self.store: EntityStore | None = None
        self.pipeline: Pipeline | None = None
        self._owned = False  # True when this object started the pipeline (and must stop it)
        self._atexit = False

    def set(self, source: Pipeline | EntityStore) -> EntityStore:
        """Make ``source`` (a running pipeline, or just a store) the process's live store."""
        with self._lock:
            if isinstance(source, Pipeline):
                self.pipeline, self.store = source, source.store
            else:
                self.pipeline, self.store = None, source
            self._owned = False
            return self.store

    def get_store(self, settings: Settings | None = None) -> EntityStore:
        """The live store; starts a pipeline on first use if nobody registered one.

        Raises :class:`~c360.errors.ConfigError` when no Kafka cluster is configured,
        so that a dashboard can say so instead of showing an empty page.
        """
        with self._lock:
            if self.store is not None:
                return self.store
            settings = settings or Settings.from_env()
            settings.require_bootstrap()
            pipeline = Pipeline(settings).start()
            self.pipeline, self.store, self._owned = pipeline, pipeline.store, True
            if not self._atexit:
                atexit.register(self._stop_owned)
                self._atexit = True
            log.info("c360 live: started the dataflow on %s", settings.bootstrap)
            return self.store

    def problem(self) -> str | None:
        """Why the live store is no longer being updated, or None while all is well."""
        pipeline = self.pipeline
        if pipeline is None or pipeline.alive():
            return None
        if pipeline.error is not None:
            return f"the dataflow stopped with an error: {pipeline.error}"
        return "the dataflow has stopped; the page shows the last state it reached"

    def reset(self) -> None:
        """Forget the live store (stopping the pipeline if this object started it)."""
        with self._lock:
            pipeline, owned = self.pipeline, self._owned
            self.store, self.pipeline, self._owned = None, None, False
        if pipeline is not None and owned:
            pipeline.stop()

    def _stop_owned(self) -> None:
        # At interpreter exit under `panel serve`: let the consumer leave its group cleanly.
        try:
            self.reset()
        except C360Error as exc:
            log.warning("c360 live: %s", exc)


CURRENT = SharedPipeline()  # the process's one; see the module docstring for why


def set_shared(source: Pipeline | EntityStore) -> EntityStore:
    """Make ``source`` (a running pipeline, or just a store) the process's live store."""
    return CURRENT.set(source)


def shared_store(settings: Settings | None = None) -> EntityStore:
    """The process's live store; starts the pipeline on first use if nobody registered one
    (:meth:`SharedPipeline.get_store`)."""
    return CURRENT.get_store(settings)


def shared_pipeline() -> Pipeline | None:
    """The pipeline feeding the shared store, if there is one."""
    return CURRENT.pipeline


def problem() -> str | None:
    """Why the live store is no longer being updated, or None while all is well."""
    return CURRENT.problem()


def reset() -> None:
    """Forget the shared store (stopping the pipeline if it was started here). For tests."""
    CURRENT.reset()
