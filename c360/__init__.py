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
    "EmbeddedBroker": "c360.broker",
    "create_topics": "c360.broker",
    "embedded_broker": "c360.broker",
    "kafka_for": "c360.broker",
    "Delta": "c360.delta",
    "Catalogue": "c360.events",
    "encode": "c360.events",
    "chain": "c360.logic",
    "first_logic": "c360.logic",
    "Pipeline": "c360.pipeline",
    "run_until_idle": "c360.pipeline",
    "ChangesReplica": "c360.replica",
    "replica_from_kafka": "c360.replica",
    "EntityStore": "c360.store",
    "Subscription": "c360.store",
    "Replica": "c360.sync",
    "SyncServer": "c360.sync",
    "TokenBook": "c360.sync",
    "connect": "c360.sync",
    "local": "c360.sync",
}

if TYPE_CHECKING:
    from c360.broker import EmbeddedBroker, create_topics, embedded_broker, kafka_for
    from c360.delta import Delta
    from c360.events import Catalogue, encode
    from c360.logic import chain, first_logic
    from c360.pipeline import Pipeline, run_until_idle
    from c360.replica import ChangesReplica, replica_from_kafka
    from c360.store import EntityStore, Subscription
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
