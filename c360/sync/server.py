"""The sync server: entities out to WebSocket clients as snapshot + JSON Patch, commands in.

Threads and hand-offs::

    dataflow -> EntityStore.apply -> store subscription thread -> SyncServer._inbox
                 (never blocked: the store's own subscription buffers and coalesces)
             -> asyncio loop thread (call_soon_threadsafe, one wake-up per batch)
             -> per connection: bounded pending patches, coalesced per entity
             -> that connection's writer task -> websocket

A connection never holds more than ``Limits.max_pending`` entities' worth of pending
patches: past that its backlog is dropped and those entities get fresh snapshots once
it reads again. Scope (token expiry or revocation, entity, segment, fields, PII) is
checked when each message is built, right before it is sent. Which fields are PII is the
entity model's to say (the store's model, or ``SyncServer(model=...)``): they are redacted
for a token without the ``pii`` scope.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from c360.config import Settings
from c360.errors import (
    BadRequest,
    C360Error,
    CommandError,
    CommandFailed,
    CommandTimeout,
    Forbidden,
    InvalidToken,
    NotFound,
    SyncError,
    TokenExpired,
    TokenRevoked,
    Unauthenticated,
    Unavailable,
)
from c360.model.commands import command_event, parse_args
from c360.model.declare import EntityModel
from c360.model.delta import LIFECYCLE_TYPES, Delta, Lifecycle
from c360.model.events import Catalogue
from c360.model.events import Command as CommandEvent
from c360.model.events import encode as encode_event
from c360.store.memory import EntityStore, Subscription
from c360.sync import protocol as p
from c360.sync.auth import IDENTITY, PII_FIELDS, REDACTED, Scope, TokenBook

log = logging.getLogger(__name__)

# What each lifecycle event tells about the entity's fields (see lifecycle_detail).
_ABOUT_SEGMENTS = frozenset({"segment_entered", "segment_left"})  # membership: `segments`
_ABOUT_INPUTS = frozenset({"rule_fired", "decision"})  # detail["fields"]: the rule's inputs
_ABOUT_FIELD_LIST = frozenset({"decayed", "evicted"})  # detail["fields"]: narrowed per token
_ABOUT_FIELD = frozenset({"rolled_up", "forgotten"})  # detail["field"]
CATALOG_INPUT = "catalog."  # a rule input from the shop's catalogue, not the customer's fields
RESUME_PATCHES = 16  # a resume missing more versions than this gets them as one patch
_SKIP: dict[str, Any] = {}  # "send nothing for this entity" (compared by identity)


@dataclass(frozen=True)
class Limits:
    max_pending: int = 1_000  # entities with coalesced patches waiting, per connection
    max_events: int = 1_000  # lifecycle events waiting, per connection (oldest dropped)
    max_replies: int = 4_096  # replies a client has not read; past this it is disconnected
    history_versions: int = 64  # deltas kept per entity for resume
    history_entities: int = 10_000  # entities with a resume history (least recent dropped)
    ack_timeout: float = 30.0  # seconds a command may take to come back applied
    ping_interval: float | None = 20.0  # None: no pings (and no ping timeout)
    # A client that has not answered a ping this long after it was sent is cut, whether or
    # not it reads: the clock runs while the ping still waits in a full socket buffer.
    ping_timeout: float = 60.0
    close_timeout: float = 10.0  # a close handshake not done by then: the socket is dropped
    tick: float = 0.5  # how often expiry, revocation and command timeouts are checked


@dataclass
class _View:
    """One entity as one connection sees it."""

    fields: frozenset[str] | None  # None: all the token allows
    version: int = -1  # the version of the client's copy; -1: no snapshot sent yet
    explicit: bool = True  # False: part of the wildcard sync
    counted: bool = False  # in a wildcard's `count`: owed a snapshot or, if it left, unsynced


@dataclass
class _Wildcard:
    fields: frozenset[str] | None
    segment: str | None
    kind: str

    def matches(self, entity: dict[str, Any] | None) -> bool:
        if entity is None or entity.get("kind") != self.kind:
            return False
        return self.segment is None or self.segment in (entity.get("segments") or ())


@dataclass
class _Pending:
    version: int
    changes: dict[str, Any]


@dataclass
class _Step:
    base: int  # the version this delta applies to
    version: int
    changes: dict[str, Any]


@dataclass
class _Waiter:
    conn: _Connection
    request: p.RequestId
    entity: str
    deadline: float


@dataclass
class _LifecycleSub:
    types: frozenset[str]
    ids: frozenset[str] | None


@dataclass
class ConnectionStats:
    sent: int = 0
    coalesced: int = 0  # deltas merged into a pending patch
    overflows: int = 0  # times the backlog was dropped for fresh snapshots
    events_dropped: int = 0
    events_withheld: int = 0  # lifecycle events that would reveal fields outside the scope


class _Connection:
    """One client: its token, its views, its outgoing queues and its writer task."""

    def __init__(self, server: SyncServer, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.key: str | None = None  # token digest once authenticated
        self.views: dict[str, _View] = {}
        self.wild: _Wildcard | None = None
        self.lifecycle: _LifecycleSub | None = None
        self.replies: deque[dict[str, Any]] = deque()
        self.pending: dict[str, _Pending] = {}
        self.resnap: dict[str, None] = {}  # entities owed a fresh snapshot, in order
        self.events: deque[Lifecycle] = deque(maxlen=server.limits.max_events)
        self.wake = asyncio.Event()
        self.stats = ConnectionStats()
        self.closed = False
        self.cut: dict[str, Any] | None = None  # why the server closed it, once it did
        self._turn = 0

    # -- the server's side: what to send -------------------------------------------------
    def reply(self, message: dict[str, Any]) -> None:
        if len(self.replies) >= self.server.limits.max_replies:
            # A client that keeps asking and never reads: refuse to buffer for it.
            self.disconnect(1008, "too many unread replies")
            return
        self.replies.append(message)
        self.wake.set()

    def offer(self, d: Delta) -> None:
        eid = d.entity_id
        view = self.views.get(eid)
        if view is None:
            wild = self.wild
            if wild is not None and d.kind == wild.kind and (
                    wild.segment is None or wild.segment in d.changes.get("segments", ())):
                self.views[eid] = _View(wild.fields, explicit=False)
                self._owe_snapshot(eid)
            return
        if eid in self.resnap or d.version <= view.version:
            return
        if view.version <= 0:  # the entity did not exist when synced: send it whole
            self._owe_snapshot(eid)
            return
        wanted = view.fields
        changes = d.changes if wanted is None else {
            k: v for k, v in d.changes.items() if k in wanted}
        pending = self.pending.get(eid)
        if pending is not None:
            pending.version = d.version
            pending.changes.update(changes)
            self.stats.coalesced += 1
        elif len(self.pending) >= self.server.limits.max_pending:
            # Too far behind: drop the backlog; each of those entities gets a snapshot instead.
            self.stats.overflows += 1
            for other in self.pending:
                self.resnap[other] = None
            self.pending.clear()
            self.resnap[eid] = None
        else:
            self.pending[eid] = _Pending(d.version, dict(changes))
        self.wake.set()

    def offer_event(self, e: Lifecycle) -> None:
        sub = self.lifecycle
        if sub is None or e.type not in sub.types or (sub.ids is not None
                                                      and e.entity_id not in sub.ids):
            return
        if len(self.events) == self.events.maxlen:
            self.stats.events_dropped += 1
        self.events.append(e)
        self.wake.set()

    def _owe_snapshot(self, eid: str) -> None:
        self.pending.pop(eid, None)
        self.resnap[eid] = None
        self.wake.set()

    def forget(self, eid: str) -> None:
        self.views.pop(eid, None)
        self.pending.pop(eid, None)
        self.resnap.pop(eid, None)
        self.server._unwatch(self, eid)

    def drop_subscriptions(self) -> None:
        for eid in list(self.views):
            self.forget(eid)
        self.wild = None
        self.lifecycle = None
        self.events.clear()
        self.server._wildcards.discard(self)
        self.server._lifecycles.discard(self)

    def disconnect(self, code: int, reason: str) -> None:
        """Close with ``code``; a client that does not read cannot take the close frame, so
        the socket is dropped if the handshake is not done within ``close_timeout``."""
        if self.cut is not None:
            return
        self.closed = True
        self.wake.set()  # the writer stops (unless it is stuck in a send: then the abort does)
        transport = self.ws.transport
        self.cut = {"code": code, "reason": reason,
                    "unsent": transport.get_write_buffer_size() if transport else 0}
        self.server.disconnects.append(self.cut)
        log.info("sync: closing the connection from %s (%d): %s", self.ws.remote_address,
                 code, reason)
        asyncio.ensure_future(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code, reason), self.server.limits.close_timeout)
        except asyncio.TimeoutError:
            pass  # the close frame is stuck behind data the client does not read
        finally:
            if self.ws.transport is not None:
                self.ws.transport.abort()

    async def keepalive(self) -> None:
        """Ping every ``ping_interval``; cut the client if a pong is not back within
        ``ping_timeout`` of sending the ping. websockets' own keepalive cannot do this for a
        client that reads nothing: its ``ping()`` waits for the full socket buffer to drain
        before the timeout starts (websockets 17: still connected after 87 s)."""
        lim = self.server.limits
        assert lim.ping_interval is not None
        while not self.closed:
            await asyncio.sleep(lim.ping_interval)
            try:
                # ping() may wait for the socket buffer to drain: that time counts too.
                await asyncio.wait_for(self._ping(), lim.ping_timeout)
            except asyncio.TimeoutError:
                self.disconnect(1011, f"no pong within {lim.ping_timeout:g}s of a ping")
                return
            except ConnectionClosed:
                return

    async def _ping(self) -> None:
        pong = await self.ws.ping()
        await pong

    # -- the writer ------------------------------------------------------------------------
    async def write_loop(self) -> None:
        try:
            while not self.closed:
                await self.wake.wait()
                self.wake.clear()
                while not self.closed:
                    message = self._next_message()
                    if message is None:
                        break
                    await self.ws.send(p.encode(message), text=True)
                    self.stats.sent += 1
        except ConnectionClosed:
            pass

    def _scope(self) -> Scope | None:
        """The token's scope now; on expiry or revocation every subscription ends here."""
        if self.key is None:
            return None
        scope = self.server.tokens.scope(self.key)
        if scope is not None and not scope.expired():
            return scope
        then = "; every subscription was closed; authenticate again to continue"
        ended = (TokenRevoked("your token was revoked" + then) if scope is None else
                 TokenExpired(f"your token expired at {_expiry(scope)}" + then))
        self.key = None
        self.drop_subscriptions()
        self.replies.append(p.error(ended))
        return None

    def _next_message(self) -> dict[str, Any] | None:
        if self.replies:
            return self.replies.popleft()
        scope = self._scope()
        if scope is None:
            return self.replies.popleft() if self.replies else None
        # Round robin, so that a busy patch stream starves neither snapshots nor events.
        for _ in range(3):
            self._turn = (self._turn + 1) % 3
            message = (self._next_patch, self._next_snapshot, self._next_event)[self._turn](scope)
            if message is not None:
                return message
        return None

    def _next_patch(self, scope: Scope) -> dict[str, Any] | None:
        while self.pending:
            eid = next(iter(self.pending))
            pending = self.pending.pop(eid)
            view = self.views.get(eid)
            if view is None:
                continue
            refusal = self._refusal(scope, eid, view)
            if refusal is _SKIP:
                continue
            if refusal is not None:
                return refusal
            message = self.render_patch(scope, eid, view, pending.version, pending.changes)
            return message
        return None

    def _next_snapshot(self, scope: Scope) -> dict[str, Any] | None:
        store = self.server.store
        while self.resnap:
            eid = next(iter(self.resnap))
            del self.resnap[eid]
            view = self.views.get(eid)
            if view is None:
                continue
            entity = store.get(eid)
            refusal = self._refusal(scope, eid, view, entity)
            if refusal is _SKIP:
                continue
            if refusal is not None:
                return refusal
            if entity is None:
                view.version = 0
                return p.snapshot(eid, 0, None)
            self.pending.pop(eid, None)  # the snapshot holds every change up to its version
            view.version = entity["version"]
            pii = self.server.pii_fields
            data = {k: scope.shown(k, v, pii) for k, v in entity.items()
                    if k != "version" and _visible(k, view.fields, scope)}
            return p.snapshot(eid, view.version, data)
        return None

    def _next_event(self, scope: Scope) -> dict[str, Any] | None:
        while self.events:
            e = self.events.popleft()
            entity = self.server.store.get(e.entity_id) if scope.segment else None
            if not scope.allows_entity(e.entity_id, entity):
                continue
            detail = lifecycle_detail(scope, e, self.server.pii_fields)
            if detail is None:
                self.stats.events_withheld += 1
                continue
            return {"type": "lifecycle", "entity": e.entity_id, "kind": e.kind,
                    "event": e.type, "version": e.version, "event_time": e.event_time,
                    "detail": detail}
        return None

    def _refusal(self, scope: Scope, eid: str, view: _View,
                 entity: dict[str, Any] | None | bool = False) -> dict[str, Any] | None:
        """None when the entity may be sent. Otherwise the view is dropped and the result
        is an unsync notice (the client held a copy) or ``_SKIP`` (it never got one).
        Checked before every message, so scope and segment changes take effect at once."""
        wild = self.wild if not view.explicit else None
        wild_segment = wild is not None and wild.segment is not None
        if entity is False:  # fetched only when membership depends on the entity's state
            entity = (self.server.store.get(eid) if scope.segment is not None or wild_segment
                      else None)
        assert not isinstance(entity, bool)
        if not scope.allows_entity(eid, entity):
            reason = "the entity is not in your token's scope"
        elif wild is not None and wild.segment is not None and not wild.matches(entity):
            reason = f"the entity left segment {wild.segment!r}"
        else:
            return None
        # The client holds a copy, or counted on one (synced.count): tell it to drop it.
        known = view.version >= 0 or view.counted
        self.forget(eid)
        return p.unsynced(eid, reason) if known else _SKIP

    def render_patch(self, scope: Scope, eid: str, view: _View, version: int,
                     changes: dict[str, Any]) -> dict[str, Any]:
        # "add" on an existing member replaces it (RFC 6902 4.1), so one op fits both cases
        # without the server tracking which fields each client's copy already has.
        pii = self.server.pii_fields
        ops = [{"op": "add", "path": p.escape(k), "value": scope.shown(k, v, pii)}
               for k, v in changes.items() if _visible(k, view.fields, scope)]
        message = p.patch(eid, view.version, version, ops)
        view.version = version
        return message


def lifecycle_detail(scope: Scope, e: Lifecycle,
                     pii_fields: frozenset[str] = PII_FIELDS) -> dict[str, Any] | None:
    """The event's detail as this token may see it, or None: the event is not sent, since
    even its type would tell something about a field outside the token's fields.

    Rules build their reasons from the entity fields they list in ``fields`` (a reason
    quotes their values): a decision goes only to tokens that may see all of them, its
    reason and key redacted without the ``pii`` scope when one of them is PII
    (``pii_fields``: the model's; default the retail model's).
    """
    d = e.detail
    if e.type in _ABOUT_FIELD_LIST:
        fields = [f for f in d.get("fields") or () if scope.allows_field(f)]
        if not fields and scope.fields != "*":
            return None
        return {**d, "fields": fields}
    about: list[str]
    if e.type == "created":
        about = []  # the stream that created the entity is not one of its fields
    elif e.type in _ABOUT_SEGMENTS:
        about = ["segments"]
    elif e.type in _ABOUT_FIELD:
        about = [str(d.get("field"))]
    elif e.type in _ABOUT_INPUTS:
        inputs = d.get("fields")
        if not isinstance(inputs, list):  # inputs unknown: only for a token that sees all
            if scope.fields != "*":
                return None
            inputs = []
        about = [f for f in inputs if not str(f).startswith(CATALOG_INPUT)]
    else:  # a type this server does not know: only the keys that are visible fields
        return {k: scope.shown(k, v, pii_fields) for k, v in d.items()
                if scope.allows_field(k)}
    if not all(scope.allows_field(f) for f in about):
        return None
    out = {k: scope.shown(k, v, pii_fields) for k, v in d.items()}
    if not scope.pii and not pii_fields.isdisjoint(about):
        for k in ("reason", "key"):
            if k in out:
                out[k] = REDACTED
    return out


def _expiry(scope: Scope) -> str:
    """When an expired token expired, in ISO 8601."""
    assert scope.expires_at is not None  # Scope.expired() is true only with an expiry
    return scope.expires_at.isoformat()


def _visible(field_name: str, wanted: frozenset[str] | None, scope: Scope) -> bool:
    if field_name in IDENTITY:
        return True
    return (wanted is None or field_name in wanted) and scope.allows_field(field_name)


class SyncServer:
    """Serves ``store`` to WebSocket clients; commands go to Kafka when ``settings`` is set.
    ``model``: whose PII fields are redacted for tokens without the pii scope (default: the
    store's model, the retail model unless the store was given one)."""

    def __init__(self, store: EntityStore, tokens: TokenBook | None = None,
                 settings: Settings | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 limits: Limits | None = None, model: EntityModel | None = None) -> None:
        self.store = store
        self.pii_fields: frozenset[str] = (model if model is not None else store.model).pii_fields
        self.tokens = tokens if tokens is not None else TokenBook.from_env()
        self.settings = settings
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        self._inbox: list[Delta | Lifecycle] = []
        self._inbox_lock = threading.Lock()
        self._scheduled = False
        self._last: dict[str, int] = {}
        self._history: OrderedDict[str, deque[_Step]] = OrderedDict()
        self._watchers: dict[str, set[_Connection]] = {}
        self._wildcards: set[_Connection] = set()
        self._lifecycles: set[_Connection] = set()
        self._held: dict[str, tuple[Lifecycle, int]] = {}  # rule_fired awaiting its decision
        self._ticks = 0
        self._connections: set[_Connection] = set()
        self._waiters: dict[str, _Waiter] = {}
        self._producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._subs: list[Subscription] = []
        self.error: BaseException | None = None
        # The connections the server closed itself, most recent last: code, reason, and the
        # bytes still unsent in the socket's buffer then (a client that stopped reading).
        self.disconnects: deque[dict[str, Any]] = deque(maxlen=100)

    # -- running ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> SyncServer:
        if self._thread is not None:
            raise C360Error("this sync server is already running")
        self._thread = threading.Thread(target=self._run, name="c360-sync", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self.error is not None:
            raise C360Error(f"the sync server did not start on {self.host}:{self.port}: "
                            f"{self.error}")
        # The versions held now and the subscription are one step (the store's lock is
        # reentrant): a delta applies to the version before it, also for the entities that
        # were there before the server (else their first patch would claim base 0).
        with self.store._lock:
            self._last.update((k, e["version"]) for k, e in self.store._entities.items())
            self._subs = [self.store.subscribe(self._take),
                          self.store.subscribe_lifecycle(self._take)]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        for sub in self._subs:
            sub.close()
        self._subs = []
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None

    def __enter__(self) -> SyncServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            log.exception("the sync server stopped with an error")
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        lim = self.limits
        # Pings are ours (see _Connection.keepalive), not websockets'.
        async with serve(self._handle, self.host, self.port, ping_interval=None,
                         close_timeout=lim.close_timeout, max_size=1 << 20) as server:
            self.port = _bound_port(server)
            self._ready.set()
            ticker = asyncio.create_task(self._tick())
            await self._stopping.wait()
            ticker.cancel()

    async def _tick(self) -> None:
        """Expiry, revocation and command time-outs happen without any traffic."""
        while True:
            await asyncio.sleep(self.limits.tick)
            self._ticks += 1
            for eid, (fired, tick) in list(self._held.items()):
                if tick < self._ticks - 1:  # no decision followed: send it as it is
                    del self._held[eid]
                    self._offer_event(fired)
            try:
                self.tokens.refresh()
            except C360Error as exc:  # keep the tokens we have; say why once per change
                log.error("%s", exc)
            now = time.monotonic()
            for event_id, w in list(self._waiters.items()):
                if now > w.deadline:
                    del self._waiters[event_id]
                    w.conn.reply(p.error(CommandTimeout(
                        "the command was produced but not seen applied within "
                        f"{self.limits.ack_timeout:g}s", entity=w.entity), w.request))
            for conn in self._connections:
                if conn.key is not None:
                    conn.wake.set()  # the writer re-checks the token

    # -- from the store's thread to the loop ------------------------------------------------
    def _take(self, item: Delta | Lifecycle) -> None:
        # Runs on a store subscription thread: append and, once per batch, wake the loop.
        with self._inbox_lock:
            self._inbox.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._inbox_lock:
            batch, self._inbox = self._inbox, []
            self._scheduled = False
        for item in batch:
            if isinstance(item, Delta):
                self._deliver(item)
            else:
                self._event(item)

    def _event(self, e: Lifecycle) -> None:
        # A rule_fired event does not say which fields the rule read; its decision, which
        # c360.entity.derive emits right after it (same entity, version and rule), does. Hold it
        # until then (or a tick at most), so it can be shown exactly to who sees the inputs.
        held = self._held.pop(e.entity_id, None)
        if held is not None:
            fired = held[0]
            if (e.type == "decision" and e.version == fired.version
                    and e.detail.get("rule") == fired.detail.get("rule")
                    and "fields" in e.detail):
                fired = msgspec.structs.replace(
                    fired, detail={**fired.detail, "fields": e.detail["fields"]})
            self._offer_event(fired)
        if e.type == "rule_fired" and "fields" not in e.detail:
            self._held[e.entity_id] = (e, self._ticks)
            return
        self._offer_event(e)

    def _offer_event(self, e: Lifecycle) -> None:
        for conn in self._lifecycles:
            conn.offer_event(e)

    def _deliver(self, d: Delta) -> None:
        eid = d.entity_id
        # The version this delta applies to: the last one delivered, else the entity's version
        # when the server subscribed (0: it did not exist). A delta the store merged for a
        # lagging subscription spans several versions from there: still the right base.
        base = self._last.get(eid, 0)
        if d.version <= base:
            return
        self._last[eid] = d.version
        history = self._history.get(eid)
        if history is None:
            history = self._history[eid] = deque(maxlen=self.limits.history_versions)
            if len(self._history) > self.limits.history_entities:
                self._history.popitem(last=False)
        else:
            self._history.move_to_end(eid)
        history.append(_Step(base, d.version, d.changes))
        watchers = self._watchers.get(eid)
        if watchers:
            for conn in watchers:
                conn.offer(d)
        for conn in self._wildcards:
            if watchers is None or conn not in watchers:
                conn.offer(d)
        if self._waiters:
            waiter = self._waiters.pop(d.event_id, None)
            if waiter is not None:
                waiter.conn.reply({"type": "ack", "id": waiter.request, "entity": eid,
                                   "version": d.version, "event_id": d.event_id})

    def _missed(self, eid: str, since: int) -> list[_Step] | None:
        """The deltas after version ``since``, if still held; else None (a snapshot).
        From version 0 it is always a snapshot: patches cannot apply to ``data: null``."""
        if since <= 0:
            return None
        history = self._history.get(eid)
        last = self._last.get(eid, 0)
        if since == last:
            return []
        if not history or since < history[0].base or since > last:
            return None
        return [s for s in history if s.version > since]

    def _watch(self, conn: _Connection, eid: str) -> None:
        self._watchers.setdefault(eid, set()).add(conn)

    def _unwatch(self, conn: _Connection, eid: str) -> None:
        watchers = self._watchers.get(eid)
        if watchers is not None:
            watchers.discard(conn)
            if not watchers:
                del self._watchers[eid]

    # -- a connection's requests ----------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        conn = _Connection(self, ws)
        self._connections.add(conn)
        writer = asyncio.create_task(conn.write_loop())
        pinger = (asyncio.create_task(conn.keepalive())
                  if self.limits.ping_interval is not None else None)
        try:
            async for raw in ws:
                try:
                    message = p.decode(raw)
                except SyncError as exc:  # BadRequest, carrying the frame's id if it has one
                    conn.reply(p.error(exc))
                    continue
                try:
                    self._on_message(conn, message)
                except SyncError as exc:  # the request is refused: the code is exc's type's
                    conn.reply(p.error(exc, message.id))
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            conn.drop_subscriptions()
            self._connections.discard(conn)
            for event_id, w in list(self._waiters.items()):
                if w.conn is conn:
                    del self._waiters[event_id]
            writer.cancel()
            if pinger is not None:
                pinger.cancel()

    def _on_message(self, conn: _Connection, m: p.ClientMessage) -> None:
        if isinstance(m, p.Auth):
            self._on_auth(conn, m)
            return
        scope = self._authorized(conn)
        if scope is None:
            return
        if isinstance(m, p.Sync):
            self._on_sync(conn, scope, m)
        elif isinstance(m, p.Resume):
            self._on_resume(conn, scope, m)
        elif isinstance(m, p.Unsync):
            self._on_unsync(conn, m)
        elif isinstance(m, p.WatchLifecycle):
            self._on_lifecycle(conn, m)
        else:
            self._on_command(conn, scope, m)

    def _on_auth(self, conn: _Connection, m: p.Auth) -> None:
        conn.key = None
        conn.drop_subscriptions()  # a new token starts from nothing
        found = self.tokens.lookup(m.token)
        if found is None:
            raise InvalidToken("unknown token")
        key, scope = found
        if scope.expired():
            raise TokenExpired(f"this token expired at {_expiry(scope)}")
        conn.key = key
        conn.reply({"type": "authenticated", "id": m.id, "scope": scope.describe()})

    def _authorized(self, conn: _Connection) -> Scope | None:
        if conn.key is None:
            raise Unauthenticated('send {"type": "auth", "token": ...} first')
        scope = self.tokens.scope(conn.key)
        if scope is None or scope.expired():
            conn._scope()  # ends the subscriptions and says why
            return None
        return scope

    @staticmethod
    def _fields(scope: Scope, wanted: list[str] | None, entity: str) -> frozenset[str] | None:
        """The field selection; :class:`Forbidden` if it reaches outside the scope."""
        if wanted is None:
            return None
        outside = scope.fields_outside(wanted)
        if outside:
            raise Forbidden(f"fields outside your token's scope: {', '.join(sorted(outside))}",
                            entity=entity)
        return frozenset(wanted)

    def _check_entity(self, scope: Scope, eid: str) -> None:
        entity = self.store.get(eid) if scope.segment else None
        if not scope.allows_entity(eid, entity):
            # The same answer whether or not the entity exists: existence is not leaked either.
            raise Forbidden(f"entity {eid!r} is outside your token's scope", entity=eid)

    def _on_sync(self, conn: _Connection, scope: Scope, m: p.Sync) -> None:
        fields = self._fields(scope, m.fields, m.entity)
        if m.entity == "*":
            for eid, view in list(conn.views.items()):
                if not view.explicit:
                    conn.forget(eid)
            wild = conn.wild = _Wildcard(fields, m.segment, m.kind)
            self._wildcards.add(conn)
            # Only what the token will get counts: a client may wait for `count` snapshots.
            by_state = scope.segment is not None or wild.segment is not None
            count = 0
            for eid in self.store.ids(m.kind):
                if eid in conn.views:
                    continue
                entity = self.store.get(eid) if by_state else None
                if not scope.allows_entity(eid, entity) or (
                        wild.segment is not None and not wild.matches(entity)):
                    continue
                conn.views[eid] = _View(fields, explicit=False, counted=True)
                conn.resnap[eid] = None
                count += 1
            conn.reply({"type": "synced", "id": m.id, "entity": "*", "count": count,
                        "fields": m.fields, "segment": m.segment})
            conn.wake.set()
            return
        self._check_entity(scope, m.entity)
        conn.views[m.entity] = _View(fields)
        self._watch(conn, m.entity)
        conn.reply({"type": "synced", "id": m.id, "entity": m.entity, "fields": m.fields})
        conn._owe_snapshot(m.entity)

    def _on_resume(self, conn: _Connection, scope: Scope, m: p.Resume) -> None:
        fields = self._fields(scope, m.fields, m.entity)
        self._check_entity(scope, m.entity)
        view = conn.views[m.entity] = _View(fields, version=m.from_version)
        self._watch(conn, m.entity)
        conn.pending.pop(m.entity, None)
        conn.resnap.pop(m.entity, None)
        missed = self._missed(m.entity, m.from_version)
        if missed is None:
            conn.reply({"type": "resumed", "id": m.id, "entity": m.entity, "patches": 0,
                        "snapshot": True})
            conn._owe_snapshot(m.entity)
            return
        if len(missed) > RESUME_PATCHES:  # fewer, larger patches: merged into one
            merged: dict[str, Any] = {}
            for step in missed:
                merged.update(step.changes)
            missed = [_Step(m.from_version, missed[-1].version, merged)]
        conn.reply({"type": "resumed", "id": m.id, "entity": m.entity, "patches": len(missed),
                    "snapshot": False})
        for step in missed:
            conn.reply(conn.render_patch(scope, m.entity, view, step.version, step.changes))

    def _on_unsync(self, conn: _Connection, m: p.Unsync) -> None:
        if m.entity == "*":
            for eid, view in list(conn.views.items()):
                if not view.explicit:
                    conn.forget(eid)
            conn.wild = None
            self._wildcards.discard(conn)
        else:
            conn.forget(m.entity)
        conn.reply(p.unsynced(m.entity, "requested", m.id))

    def _on_lifecycle(self, conn: _Connection, m: p.WatchLifecycle) -> None:
        types = frozenset(m.types) if m.types is not None else LIFECYCLE_TYPES
        unknown = types - LIFECYCLE_TYPES
        if unknown:
            raise BadRequest(f"unknown lifecycle types {sorted(unknown)}; "
                             f"known: {sorted(LIFECYCLE_TYPES)}")
        conn.lifecycle = _LifecycleSub(types, frozenset(m.entities) if m.entities else None)
        self._lifecycles.add(conn)
        conn.reply({"type": "lifecycle_subscribed", "id": m.id, "types": sorted(types)})

    def _on_command(self, conn: _Connection, scope: Scope, m: p.SendCommand) -> None:
        if not scope.allows_command(m.name):
            raise Forbidden(f"command {m.name!r} is not allowed by your token", entity=m.entity)
        self._check_entity(scope, m.entity)
        try:
            parse_args(m.name, m.args)
        except CommandError as exc:  # the same type (UnknownCommand too), with the entity
            raise type(exc)(str(exc), entity=m.entity) from None
        entity = self.store.get(m.entity)
        if entity is None or entity.get("kind") != "customer":
            raise NotFound(f"no customer {m.entity!r}", entity=m.entity)
        if self.settings is None:
            raise Unavailable("this server takes no commands (no Kafka)", entity=m.entity)
        event = command_event(m.entity, m.name, m.args, scope.name)
        # Registered before producing: the applied delta may come back before send returns.
        self._waiters[event.event_id] = _Waiter(conn, m.id, m.entity,
                                                time.monotonic() + self.limits.ack_timeout)
        asyncio.ensure_future(self._produce(conn, m, event))

    async def _produce(self, conn: _Connection, m: p.SendCommand, event: CommandEvent) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._send_blocking, event)
        except Exception as exc:
            self._waiters.pop(event.event_id, None)
            conn.reply(p.error(CommandFailed(f"could not write the command to Kafka: {exc}",
                                             entity=m.entity), m.id))

    def _send_blocking(self, event: CommandEvent) -> None:
        from kafka import KafkaProducer

        assert self.settings is not None
        if self._producer is None:
            self._producer = KafkaProducer(**self.settings.kafka_python(), linger_ms=0,
                                           acks="all", client_id="c360-sync")
        topic = Catalogue(self.settings.topic_prefix).commands_topic
        self._producer.send(topic, key=event.customer_id.encode(),
                            value=encode_event(event)).get(timeout=10)

    # -- numbers for tests and benchmarks -------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """A snapshot of queue sizes; safe to call from any thread (values may be a tick old)."""
        conns = list(self._connections)
        return {
            "connections": len(conns),
            "inbox": len(self._inbox),
            "history_entities": len(self._history),
            "pending": [len(c.pending) for c in conns],
            "resnap": [len(c.resnap) for c in conns],
            "sent": [c.stats.sent for c in conns],
            "coalesced": [c.stats.coalesced for c in conns],
            "overflows": [c.stats.overflows for c in conns],
            "events_withheld": [c.stats.events_withheld for c in conns],
            "disconnects": list(self.disconnects),
        }


def _bound_port(server: Server) -> int:
    for sock in server.sockets:
        return sock.getsockname()[1]
    raise C360Error("the sync server has no listening socket")


__all__ = ["PII_FIELDS", "Limits", "SyncServer"]
