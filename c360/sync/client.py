"""The Python sync client: a local replica of entities, kept in sync over WebSocket.

    import c360
    r = c360.connect("ws://127.0.0.1:8765", token="...")
    r.sync("cust-00042", fields=["loyalty_points", "loyalty_tier"])
    r.on_change(lambda eid, entity, ops: print(eid, entity["loyalty_points"]))
    r.command("cust-00042", "grant_points", points=100)   # -> the version that applied it
    r.dataframe()

The connection runs in a background thread with its own event loop; callbacks run on
that thread, after the change is applied to ``r.entities``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import jsonpatch
import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from c360.errors import NotConnected, VersionTimeout, from_wire
from c360.sync.local import Copies
from c360.sync.protocol import unescape

log = logging.getLogger(__name__)

ChangeCallback = Callable[[str, dict[str, Any], list[dict[str, Any]]], None]
EventCallback = Callable[[dict[str, Any]], None]
_JSON = msgspec.json.Encoder()


def apply_ops(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """Apply a JSON Patch in place; top-level add/replace (all c360 sends) take a fast path."""
    for op in ops:
        path = op["path"]
        if op["op"] in ("add", "replace") and path.count("/") == 1:
            doc[unescape(path)] = op["value"]
        else:
            jsonpatch.apply_patch(doc, [op], in_place=True)


class Replica(Copies):
    """Entities kept in sync with a c360 sync server. Create it with :func:`connect`."""

    def __init__(self, url: str, token: str, *, timeout: float = 10.0) -> None:
        super().__init__()
        self.url = url
        self.timeout = timeout
        self.errors: list[dict[str, Any]] = []  # errors not tied to a request (e.g. expiry)
        self.scope: dict[str, Any] = {}
        self._fields: dict[str, list[str] | None] = {}  # the selection of each synced entity
        self._resuming: set[str] = set()
        self._ids = itertools.count(1)
        self._replies: dict[int, Future[dict[str, Any]]] = {}
        self._change_callbacks: list[ChangeCallback] = []
        self._event_callbacks: list[EventCallback] = []
        self._version_waiters: list[tuple[str, int, threading.Event]] = []
        self._ws: ClientConnection | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="c360-replica",
                                        daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout)
            self.scope = self._request({"type": "auth", "token": token})["scope"]
        except BaseException:
            self.close()
            raise

    # -- the public interface ------------------------------------------------------------
    def sync(self, entity: str = "*", fields: Iterable[str] | None = None, *,
             segment: str | None = None, wait: bool = True) -> dict[str, Any]:
        """Sync one entity (or "*": every customer, or those of ``segment``).

        With ``wait``, returns once a single entity's snapshot is in ``entities``."""
        selection = list(fields) if fields is not None else None
        message: dict[str, Any] = {"type": "sync", "entity": entity, "fields": selection}
        if segment is not None:
            message["segment"] = segment
        self._fields[entity] = selection
        reply = self._request(message)
        if wait and entity != "*":
            self._wait_version(entity, 0)
        return reply

    def unsync(self, entity: str) -> None:
        self._request({"type": "unsync", "entity": entity})
        with self._lock:
            self._fields.pop(entity, None)
            if entity != "*":
                self.entities.pop(entity, None)
                self.versions.pop(entity, None)

    def on_change(self, callback: ChangeCallback) -> ChangeCallback:
        """``callback(entity_id, entity, ops)`` after each change is applied (ops: the JSON
        Patch, or ``[]`` for a snapshot)."""
        self._change_callbacks.append(callback)
        return callback

    def on_lifecycle(self, callback: EventCallback, types: Iterable[str] | None = None,
                     entities: Iterable[str] | None = None) -> None:
        self._event_callbacks.append(callback)
        self._request({"type": "lifecycle", "types": list(types) if types else None,
                       "entities": list(entities) if entities else None})

    def command(self, entity: str, name: str, *, timeout: float = 30.0, **args: Any) -> int:
        """Send a command; returns the entity version that applied it (after this replica
        has caught up to it, if it syncs that entity)."""
        reply = self._request({"type": "command", "entity": entity, "name": name,
                               "args": args}, timeout=timeout)
        version = int(reply["version"])
        if entity in self.versions:
            self._wait_version(entity, version, timeout)
        return version

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._ws is not None:
            with contextlib.suppress(Exception):  # already closed
                asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------
    async def _open(self) -> None:
        self._ws = await ws_connect(self.url, max_size=None, open_timeout=self.timeout)
        self._loop.create_task(self._read())

    def _request(self, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        rid = next(self._ids)
        future: Future[dict[str, Any]] = Future()
        self._replies[rid] = future
        data = _JSON.encode({**message, "id": rid}).decode()
        ws = self._ws
        if ws is None:
            raise NotConnected("not connected")
        asyncio.run_coroutine_threadsafe(ws.send(data), self._loop).result(self.timeout)
        try:
            reply = future.result(timeout or self.timeout)
        finally:
            self._replies.pop(rid, None)
        if reply.get("type") == "error":
            raise from_wire(reply)
        return reply

    def _wait_version(self, entity: str, version: int, timeout: float | None = None) -> None:
        done = threading.Event()
        with self._lock:
            if self.versions.get(entity, -1) >= version:
                return
            self._version_waiters.append((entity, version, done))
        if not done.wait(timeout or self.timeout):
            raise VersionTimeout(f"{entity} did not reach version {version}", entity=entity)

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                try:
                    self._on_message(msgspec.json.decode(raw))
                except Exception:  # a callback's bug must not stop the replica
                    log.exception("sync client failed on a message")
        except ConnectionClosed:
            pass
        finally:
            for future in list(self._replies.values()):
                if not future.done():
                    future.set_result({"type": "error", "code": "closed",
                                       "message": "the connection closed"})

    def _on_message(self, m: dict[str, Any]) -> None:
        kind = m.get("type")
        if kind == "snapshot":
            self._on_snapshot(m)
        elif kind == "patch":
            self._on_patch(m)
        elif kind == "lifecycle":
            for cb in self._event_callbacks:
                cb(m)
        else:
            if kind == "unsynced" and m.get("id") is None:
                with self._lock:
                    self.entities.pop(m["entity"], None)
                    self.versions.pop(m["entity"], None)
            rid = m.get("id")
            future = self._replies.get(rid) if rid is not None else None
            if future is not None and not future.done():
                future.set_result(m)
            elif kind == "error":
                self.errors.append(m)
                log.warning("c360 sync: %s: %s", m.get("code"), m.get("message"))

    def _on_snapshot(self, m: dict[str, Any]) -> None:
        eid, data = m["entity"], m["data"]
        with self._lock:
            self._resuming.discard(eid)
            self.versions[eid] = m["version"]
            if data is None:
                self.entities.pop(eid, None)
            else:
                self.entities[eid] = data
        self._changed(eid, [])

    def _on_patch(self, m: dict[str, Any]) -> None:
        eid = m["entity"]
        with self._lock:
            have = self.versions.get(eid)
            if have != m["from"] or eid not in self.entities:
                # A gap: ask for what we missed (patches if still held, else a snapshot).
                if eid not in self._resuming and have is not None:
                    self._resuming.add(eid)
                    fields = self._fields.get(eid, self._fields.get("*"))
                    self._loop.create_task(self._send({"type": "resume", "entity": eid,
                                                       "from_version": have,
                                                       "fields": fields}))
                return
            self._resuming.discard(eid)
            apply_ops(self.entities[eid], m["ops"])
            self.versions[eid] = m["version"]
        self._changed(eid, m["ops"])

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send(_JSON.encode(message).decode())

    def _changed(self, eid: str, ops: list[dict[str, Any]]) -> None:
        with self._lock:
            version = self.versions.get(eid, -1)
            ready = [w for w in self._version_waiters if w[0] == eid and version >= w[1]]
            for w in ready:
                self._version_waiters.remove(w)
                w[2].set()
            entity = self.entities.get(eid)
        for cb in self._change_callbacks:
            cb(eid, entity if entity is not None else {}, ops)


def connect(url: str, token: str, *, timeout: float = 10.0) -> Replica:
    """Connect to a c360 sync server and authenticate; raises the
    :class:`~c360.errors.SyncError` the server refuses the token with (``InvalidToken``,
    ``TokenExpired``)."""
    started = time.monotonic()
    replica = Replica(url, token, timeout=timeout)
    log.debug("connected to %s in %.3fs", url, time.monotonic() - started)
    return replica
