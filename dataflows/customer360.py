"""The customer-360 dataflow for ``python -m bytewax.run dataflows.customer360:flow``.

``flow`` is built at import from the environment's settings (``C360_KAFKA_BOOTSTRAP`` and
the others in the README), writing into this process's store and the dead-letter, late and
decisions topics. Building it connects nothing and creates no topics (``c360 broker`` or
your cluster's tooling does). The graph is :mod:`dataflows.graph`; a ``Pipeline`` builds it
from its own settings, so importing the library never reads the environment here.
"""

from __future__ import annotations

from c360.config import Settings
from c360.store.memory import EntityStore
from dataflows.graph import build_flow, kafka_flow

__all__ = ["build_flow", "flow", "kafka_flow"]

flow = kafka_flow(Settings.from_env(), EntityStore(), recoverable=True).flow
