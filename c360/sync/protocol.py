"""The sync protocol's client messages (typed, validated by msgspec) and server messages.

Every message is one JSON object with a ``type``. Client requests may carry an ``id``
that the server echoes in its reply, so that a client can match replies to requests.
Server messages are plain dicts built by the functions below; values are encoded by
msgspec (datetimes become ISO 8601 strings).
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from c360.errors import BadRequest, SyncError

RequestId = str | int | float | None


class Auth(msgspec.Struct, tag="auth", tag_field="type", forbid_unknown_fields=True):
    token: str
    id: RequestId = None


class Sync(msgspec.Struct, tag="sync", tag_field="type", forbid_unknown_fields=True):
    entity: str  # an entity id, or "*" for every entity (of ``kind``, in ``segment``)
    fields: list[str] | None = None  # None: every field the token may see
    segment: str | None = None  # wildcard only: entities whose "segments" contain it
    kind: str = "customer"  # wildcard only
    id: RequestId = None


class Resume(msgspec.Struct, tag="resume", tag_field="type", forbid_unknown_fields=True):
    entity: str
    from_version: int
    fields: list[str] | None = None
    id: RequestId = None


class Unsync(msgspec.Struct, tag="unsync", tag_field="type", forbid_unknown_fields=True):
    entity: str  # an entity id, or "*" for the wildcard sync
    id: RequestId = None


class WatchLifecycle(msgspec.Struct, tag="lifecycle", tag_field="type", forbid_unknown_fields=True):
    types: list[str] | None = None  # None: every lifecycle type
    entities: list[str] | None = None  # None: every entity the token may see
    id: RequestId = None


class SendCommand(msgspec.Struct, tag="command", tag_field="type", forbid_unknown_fields=True):
    entity: str
    name: str
    args: dict[str, Any] = {}
    id: RequestId = None


ClientMessage = Auth | Sync | Resume | Unsync | WatchLifecycle | SendCommand
_DECODER = msgspec.json.Decoder(ClientMessage)
_ENCODER = msgspec.json.Encoder()


def decode(raw: str | bytes) -> ClientMessage:
    """The request in a frame, or :class:`~c360.errors.BadRequest` whose ``request`` is the
    frame's top-level ``"id"`` (so that the reply can echo it)."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadRequest(f"not a valid request: {exc}", request=request_id(raw)) from None
    except RecursionError:  # msgspec recurses per level of nesting of an untyped value (args)
        raise BadRequest("not a valid request: nested too deeply (at most a few hundred "
                         "levels)", request=request_id(raw)) from None


# A JSON string, or a bracket: enough to find the top-level keys of a broken frame.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[][{}]')
_COLON = re.compile(r"\s*:\s*")
_ID_VALUE = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?')


def _is_id_key(token: str) -> bool:
    try:
        return bool(json.loads(token) == "id")  # "\\u0069d" is "id" too
    except ValueError:
        return False


class _IdOnly(msgspec.Struct):
    id: Any = None


_ID_DECODER = msgspec.json.Decoder(_IdOnly)
SCAN_LIMIT = 64 * 1024  # characters of a broken frame searched for its id (~30 ms at worst)


def request_id(raw: str | bytes) -> RequestId:
    """The top-level ``"id"`` of a frame that is not a valid request, if it is a string or a
    number. A frame that is JSON gives it at C speed, whatever its size; one that is not
    JSON, or nested too deeply to decode, is scanned, not parsed (no stack, only a depth
    count), in its first ``SCAN_LIMIT`` characters."""
    try:
        found = _ID_DECODER.decode(raw).id
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        found = _scan_id(raw[:SCAN_LIMIT])
    if isinstance(found, bool) or not isinstance(found, (str, int, float)):
        return None
    return found


def _scan_id(raw: str | bytes) -> Any:
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw
    if not text.lstrip().startswith("{"):
        return None
    depth = 0
    for m in _TOKEN.finditer(text):
        token = m.group()
        if token in ("{", "["):
            depth += 1
        elif token in ("}", "]"):
            depth -= 1
            if depth <= 0:
                return None
        elif depth == 1 and (token == '"id"' or "\\" in token and _is_id_key(token)):
            colon = _COLON.match(text, m.end())
            if colon is None:
                continue  # "id" as a value, not a key
            value = _ID_VALUE.match(text, colon.end())
            if value is None:
                return None  # an id that is neither a string nor a number
            try:
                found = json.loads(value.group())
                if isinstance(found, str):
                    found.encode()  # a lone surrogate (JSON "\\ud800") cannot be sent back
            except (ValueError, UnicodeEncodeError):
                return None
            return found
    return None


def encode(message: dict[str, Any]) -> bytes:
    return _ENCODER.encode(message)


def escape(field: str) -> str:
    """A top-level field name as an RFC 6901 JSON pointer."""
    return "/" + field.replace("~", "~0").replace("/", "~1")


def unescape(pointer: str) -> str:
    """The top-level field name of an RFC 6901 JSON pointer (``escape``'s inverse)."""
    return pointer[1:].replace("~1", "/").replace("~0", "~")


def error(exc: SyncError, request: RequestId = None) -> dict[str, Any]:
    """The error message that refuses a request with ``exc``: its code is the exception
    type's (``docs/sync-protocol.md`` lists them), never read from its text. ``request``
    defaults to the id the exception carries."""
    out: dict[str, Any] = {"type": "error", "code": exc.code, "message": str(exc),
                           "id": exc.request if request is None else request}
    if exc.entity is not None:
        out["entity"] = exc.entity
    return out


def snapshot(entity_id: str, version: int, data: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "snapshot", "entity": entity_id, "version": version, "data": data}


def patch(entity_id: str, base: int, version: int, ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "patch", "entity": entity_id, "from": base, "version": version, "ops": ops}


def unsynced(entity_id: str, reason: str, request: RequestId = None) -> dict[str, Any]:
    return {"type": "unsynced", "entity": entity_id, "reason": reason, "id": request}
