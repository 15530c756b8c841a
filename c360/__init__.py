"""c360: a Jupyter-first, real-time Customer 360.

The public API is what this module exports; everything else is private.
"""

from c360.broker import EmbeddedBroker, create_topics, kafka_for
from c360.config import Settings
from c360.delta import Delta
from c360.errors import BrokerError, C360Error, ConfigError, DataError, InvalidEvent
from c360.events import Catalogue, encode
from c360.logic import chain, first_logic
from c360.pipeline import Pipeline, run_until_idle
from c360.replica import ChangesReplica, replica_from_kafka
from c360.store import EntityStore, Subscription
from c360.sync import Replica, SyncServer, TokenBook, connect, local

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
    "encode",
    "first_logic",
    "kafka_for",
    "local",
    "replica_from_kafka",
    "run_until_idle",
]
