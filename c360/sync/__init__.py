"""Live entity sync over WebSocket: snapshot, then JSON-Patch diffs, per token scope.

``SyncServer`` serves an :class:`~c360.store.memory.EntityStore`; ``connect`` is the Python
client (a local replica); ``local`` gives the same interface in-process. The wire
protocol is documented in ``docs/sync-protocol.md``.
"""

from c360.sync.auth import Scope, TokenBook
from c360.sync.client import Replica, connect
from c360.sync.local import LocalReplica, local
from c360.sync.server import Limits, SyncServer

__all__ = ["Limits", "LocalReplica", "Replica", "Scope", "SyncServer", "TokenBook", "connect",
           "local"]
