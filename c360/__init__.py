"""c360: a Jupyter-first, real-time Customer 360.

The public API is the names below (``__all__``); the subpackages behind them are private,
except :mod:`c360.errors` (the exception tree), :mod:`c360.sync` (the sync server, for
serving entities to other processes) and :mod:`c360.model.declare` (the language of entity
models: streams, fields and their folds). By what you do:

Run the dataflow
    :class:`Pipeline` (live in the background, or bounded with ``run()``),
    :func:`run_until_idle` (read every stream topic until idle; returns the store),
    :class:`Settings` (the cluster, topic prefix and limits; ``Settings.from_env()``).
Read the entities
    :class:`EntityStore` (what a pipeline keeps: ``get``, ``dataframe``, ``subscribe``,
    ``wait_until``, ``export``), :class:`Delta` (one applied change, what subscribers get),
    :class:`History` (every version: ``history``, ``as_of``, point-in-time ``training_set``;
    give a pipeline its ``.store``).
Bring your own streams and fields
    :class:`EntityModel` (streams and the fields they fold into, checked at start; build
    one with :mod:`c360.model.declare`), :data:`RETAIL` (the default model: extend it, or
    start empty); ``Pipeline(model=...)``, ``c360 run --model pkg.module:name``.
Add business logic
    :class:`RuleBook` and :class:`SegmentBook`: a pipeline's rules (with the product index
    its offer rules read) and segments, the built-in ones fresh per pipeline;
    ``@pipeline.rule(...)`` / ``@pipeline.segment(...)`` add to them, and :func:`decide`
    is what a rule returns.
Get events in
    :func:`embedded_broker` (a broker for a ``with`` block; :class:`EmbeddedBroker` to start
    and stop one across notebook cells), :func:`simulate` (the simulated shop's streams),
    :func:`replay` (the Olist history), :func:`encode` (an event as the topics carry it;
    ``pipeline.catalogue.topic(stream)`` names the topic).
Use the entities elsewhere
    :func:`connect` (a WebSocket replica), :func:`local` (the same, in-process),
    :func:`replica_from_kafka` (a store materialized from the changes topic).
Handle errors
    :class:`C360Error`: every error c360 raises on purpose derives from it (the tree is in
    :mod:`c360.errors`).

The names are imported when first used (PEP 562): ``import c360`` and the ``c360``
command's argument checks then take milliseconds, not the ~2 s that bytewax,
pandas and Panel take to import (measured on the 2-core CI machine). Errors and
settings are imported at once: they are small and every module uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from c360.config import Settings
from c360.errors import C360Error

_LAZY = {
    "Pipeline": "c360.run.pipeline",
    "run_until_idle": "c360.run.pipeline",
    "EntityStore": "c360.store.memory",
    "History": "c360.store.history",
    "Delta": "c360.model.delta",
    "EntityModel": "c360.model.declare",
    "RETAIL": "c360.models.retail",
    "RuleBook": "c360.entity.rules",
    "SegmentBook": "c360.entity.segments",
    "decide": "c360.entity.rules",
    "EmbeddedBroker": "c360.dev.broker",
    "embedded_broker": "c360.dev.broker",
    "simulate": "c360.dev.simulator",
    "replay": "c360.dev.olist",
    "encode": "c360.model.events",
    "connect": "c360.sync",
    "local": "c360.sync",
    "replica_from_kafka": "c360.store.replica",
}

if TYPE_CHECKING:
    from c360.dev.broker import EmbeddedBroker, embedded_broker
    from c360.dev.olist import replay
    from c360.dev.simulator import simulate
    from c360.entity.rules import RuleBook, decide
    from c360.entity.segments import SegmentBook
    from c360.model.declare import EntityModel
    from c360.model.delta import Delta
    from c360.model.events import encode
    from c360.models.retail import RETAIL
    from c360.run.pipeline import Pipeline, run_until_idle
    from c360.store.history import History
    from c360.store.memory import EntityStore
    from c360.store.replica import replica_from_kafka
    from c360.sync import connect, local


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'c360' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "C360Error",
    "Delta",
    "EmbeddedBroker",
    "EntityModel",
    "EntityStore",
    "History",
    "Pipeline",
    "RETAIL",
    "RuleBook",
    "SegmentBook",
    "Settings",
    "connect",
    "decide",
    "embedded_broker",
    "encode",
    "local",
    "replay",
    "replica_from_kafka",
    "run_until_idle",
    "simulate",
]
