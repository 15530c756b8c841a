"""c360: a Jupyter-first, real-time Customer 360.

The public API is what this module exports; everything else is private.

The names are imported when first used (PEP 562): ``import c360`` and the ``c360``
command's argument checks then take milliseconds, not the ~2 s that bytewax,
pandas and Panel take to import (measured on the 2-core CI machine). Errors and
settings are imported at once: they are small and every module uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from c360.config import Settings
from c360.errors import BrokerError, C360Error, ConfigError, DataError, InvalidEvent

_LAZY = {
    "EmbeddedBroker": "c360.dev.broker",
    "create_topics": "c360.dev.broker",
    "embedded_broker": "c360.dev.broker",
    "kafka_for": "c360.dev.broker",
    "Delta": "c360.model.delta",
    "Catalogue": "c360.model.events",
    "encode": "c360.model.events",
    "chain": "c360.entity.logic",
    "first_logic": "c360.entity.logic",
    "Pipeline": "c360.run.pipeline",
    "run_until_idle": "c360.run.pipeline",
    "ChangesReplica": "c360.store.replica",
    "replica_from_kafka": "c360.store.replica",
    "EntityStore": "c360.store.memory",
    "Subscription": "c360.store.memory",
    "Replica": "c360.sync",
    "SyncServer": "c360.sync",
    "TokenBook": "c360.sync",
    "connect": "c360.sync",
    "local": "c360.sync",
}

if TYPE_CHECKING:
    from c360.dev.broker import EmbeddedBroker, create_topics, embedded_broker, kafka_for
    from c360.entity.logic import chain, first_logic
    from c360.model.delta import Delta
    from c360.model.events import Catalogue, encode
    from c360.run.pipeline import Pipeline, run_until_idle
    from c360.store.memory import EntityStore, Subscription
    from c360.store.replica import ChangesReplica, replica_from_kafka
    from c360.sync import Replica, SyncServer, TokenBook, connect, local


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
    "BrokerError",
    "C360Error",
    "ChangesReplica",
    "Catalogue",
    "ConfigError",
    "DataError",
    "Delta",
    "EmbeddedBroker",
    "EntityStore",
    "InvalidEvent",
    "Pipeline",
    "Replica",
    "Settings",
    "Subscription",
    "SyncServer",
    "TokenBook",
    "chain",
    "connect",
    "create_topics",
    "embedded_broker",
    "encode",
    "first_logic",
    "kafka_for",
    "local",
    "replica_from_kafka",
    "run_until_idle",
]
