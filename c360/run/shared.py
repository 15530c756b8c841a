"""The one live entity store of a web-server process, shared by every dashboard session.

A Panel server runs a dashboard script once per browser session, but the
dataflow must run once per process: two sessions must see the same entities,
and a pipeline per session would re-read every topic and multiply the load on
Kafka. So the store lives here, in an ordinary (cached) module:

- ``c360 demo`` starts its own pipeline and registers it with :func:`set_shared`;
- under ``panel serve dashboards/live.py`` nothing is registered, and the first
  session's call to :func:`shared_store` starts one pipeline in the background
  for the whole process, reading the cluster named by ``C360_KAFKA_BOOTSTRAP``.
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

_lock = threading.Lock()
_store: EntityStore | None = None
_pipeline: Pipeline | None = None
_owned = False  # True when this module started the pipeline (and so must stop it)


def set_shared(source: Pipeline | EntityStore) -> EntityStore:
    """Make ``source`` (a running pipeline, or just a store) the process's live store."""
    global _store, _pipeline, _owned
    with _lock:
        if isinstance(source, Pipeline):
            _pipeline, _store = source, source.store
        else:
            _pipeline, _store = None, source
        _owned = False
        return _store


def shared_store(settings: Settings | None = None) -> EntityStore:
    """The process's live store; starts the pipeline on first use if nobody registered one.

    Raises :class:`~c360.errors.ConfigError` when no Kafka cluster is configured,
    so that a dashboard can say so instead of showing an empty page.
    """
    global _store, _pipeline, _owned
    with _lock:  # sessions open concurrently; only the first one may start the pipeline
        if _store is not None:
            return _store
        settings = settings or Settings.from_env()
        settings.require_bootstrap()
        pipeline = Pipeline(settings).start()
        _pipeline, _store, _owned = pipeline, pipeline.store, True
        atexit.register(_stop_owned)
        log.info("c360 live: started the dataflow on %s", settings.bootstrap)
        return _store


def shared_pipeline() -> Pipeline | None:
    """The pipeline feeding the shared store, if there is one."""
    return _pipeline


def problem() -> str | None:
    """Why the live store is no longer being updated, or None while all is well."""
    pipeline = _pipeline
    if pipeline is None or pipeline.alive():
        return None
    if pipeline.error is not None:
        return f"the dataflow stopped with an error: {pipeline.error}"
    return "the dataflow has stopped; the page shows the last state it reached"


def reset() -> None:
    """Forget the shared store (stopping the pipeline if this module started it). For tests."""
    global _store, _pipeline, _owned
    with _lock:
        pipeline, owned = _pipeline, _owned
        _store, _pipeline, _owned = None, None, False
    if pipeline is not None and owned:
        pipeline.stop()


def _stop_owned() -> None:
    # At interpreter exit under `panel serve`: let the consumer leave its group cleanly.
    try:
        reset()
    except C360Error as exc:
        log.warning("c360 live: %s", exc)
