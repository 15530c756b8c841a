"""The binary format of state that outlives a process: its marker, version and values.

Recovery snapshots (:mod:`c360.entity.codec`) and changes-topic records
(:mod:`c360.topics.changes`) are read by another process, often by a later c360. So they
are a *format*, not a memory dump: every blob starts with :data:`MAGIC`, a byte naming what
it holds (:data:`SHARD`, :data:`GLOBAL`, :data:`CHANGE`) and its format version, then
MessagePack (msgspec) of plain data: maps, arrays, strings, numbers, booleans, nil and
timestamps. No class or module name is written anywhere, so renaming or moving code never
changes what a blob means; a layout change is a new version, and a reader meeting a
version it does not read raises :class:`~c360.errors.StateFormatError` in one line that
says what to do (docs/reliability.md, "State format").

Values (entity fields, delta changes) are plain data as the store and the sync protocol
hold them: ``None``, ``bool``, ``int`` (64 bits), ``float``, ``str``, ``bytes``, ``list``,
``dict``, ``datetime`` (timezone-aware; read back in UTC, the same instant) and, at the top
level of a fields or changes map, ``date`` (``as_of_day``) and ``tuple``, which keep their
type through MessagePack extensions. Deeper down, a ``date`` reads back as its ISO string
and a tuple as a list: keeping them would take a Python walk over every field of every
entity in each snapshot, where the top level costs one type test per field, in C.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import msgspec

from c360.errors import DataError, StateFormatError

MAGIC = b"C360"
SHARD = b"S"  # a shard's entities and clocks (c360.entity.codec)
GLOBAL = b"G"  # the global windows' open windows and entities (c360.entity.codec)
CHANGE = b"C"  # one delta or lifecycle event of the changes topic (c360.topics.changes)
_WHAT = {SHARD: "recovery snapshot", GLOBAL: "recovery snapshot", CHANGE: "changes record"}
HEADER = len(MAGIC) + 2

_DATE, _TUPLE = 1, 2  # MessagePack extension codes
_SPECIAL = (date, tuple)

ENCODER = msgspec.msgpack.Encoder()


def header(kind: bytes, version: int) -> bytes:
    """The first bytes of a blob of ``kind`` in format ``version``."""
    return MAGIC + kind + bytes((version,))


def payload(raw: bytes | memoryview | None, kind: bytes, reads: int | tuple[int, ...],
            advice: str) -> memoryview:
    """The MessagePack after a blob's header, once the header says ``kind`` in format
    ``reads``. Another version, or a pickle of a c360 from before versions: a
    :class:`StateFormatError` saying which and ``advice``; not a c360 blob of ``kind`` at
    all: a :class:`DataError`."""
    what = _WHAT[kind]
    versions = (reads,) if isinstance(reads, int) else reads
    reads_text = " or ".join(map(str, versions))
    if not raw:
        raise DataError(f"an empty {what}: {advice}")
    view = memoryview(raw)
    head = bytes(view[:HEADER])
    if head[:len(MAGIC)] != MAGIC:
        if head[:1] == b"\x80":  # a pickle's first opcode (PROTO)
            raise StateFormatError(f"this {what} is an unversioned pickle of an earlier c360; "
                                   f"this c360 reads {what} format {reads_text}: {advice}")
        raise DataError(f"this is not a c360 {what} (it starts {head!r}): {advice}")
    if len(head) < HEADER or head[len(MAGIC):len(MAGIC) + 1] != kind:
        raise DataError(f"this c360 blob is not a {what} (it starts {head!r}): {advice}")
    version = head[-1]
    if version not in versions:
        raise StateFormatError(f"this {what} is format {version}, this c360 reads format "
                               f"{reads_text}: {advice}")
    return view[HEADER:]


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` ready to encode: its top-level dates and tuples as extensions (the same
    dict when it holds none, the usual case: one type test per value, in C)."""
    if not any(map(_SPECIAL.__contains__, map(type, values.values()))):
        return values
    return {k: _ext(v) if type(v) in _SPECIAL else v for k, v in values.items()}


def _ext(value: date | tuple) -> msgspec.msgpack.Ext:
    if isinstance(value, tuple):
        return msgspec.msgpack.Ext(_TUPLE, ENCODER.encode(list(value)))
    return msgspec.msgpack.Ext(_DATE, value.toordinal().to_bytes(4, "big"))


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == _DATE:
        return date.fromordinal(int.from_bytes(data, "big"))
    if code == _TUPLE:
        return tuple(_PLAIN.decode(data))
    raise ValueError(f"unknown MessagePack extension {code}")


def decoder(type_: Any) -> msgspec.msgpack.Decoder:
    """A decoder of ``type_`` that reads :func:`plain`'s extensions back."""
    return msgspec.msgpack.Decoder(type_, ext_hook=_ext_hook)


_PLAIN = decoder(Any)


def decode(data: memoryview, dec: msgspec.msgpack.Decoder, kind: bytes, advice: str) -> Any:
    """``dec.decode(data)``; a damaged payload as a :class:`DataError`."""
    try:
        return dec.decode(data)
    except (msgspec.DecodeError, ValueError, OverflowError) as exc:
        raise DataError(f"a damaged {_WHAT[kind]} ({exc}): {advice}") from None
