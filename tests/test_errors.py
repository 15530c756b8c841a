"""One exception tree (c360/errors.py), and the sync protocol's wire codes taken from its types.

The wire codes are read from the table in docs/sync-protocol.md, the tree from the module
docstring of c360/errors.py: what users read is what is checked.
"""

from __future__ import annotations

import ast
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

import c360
from c360 import errors
from c360.model.delta import Delta
from c360.store.memory import EntityStore
from c360.sync import SyncServer, TokenBook
from c360.sync import protocol as p

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ONLY = {"closed", "timeout"}  # raised by the Python client, never sent


def doc_table() -> dict[str, str]:
    """code -> exception name, from the error table of docs/sync-protocol.md."""
    text = (ROOT / "docs" / "sync-protocol.md").read_text()
    section = text[text.index("## Error codes"):]
    section = section[:section.index("\n## ", 1)]
    rows = re.findall(r"^\| `([a-z_]+)` \| `(\w+)` \|", section, re.M)
    assert rows, "no error table in docs/sync-protocol.md"
    codes = [code for code, _ in rows]
    assert len(codes) == len(set(codes)), codes
    return dict(rows)


def tree() -> list[type[errors.C360Error]]:
    out: list[type[errors.C360Error]] = []
    todo: list[type[errors.C360Error]] = [errors.C360Error]
    while todo:
        cls = todo.pop()
        if cls.__module__ == "c360.errors":
            out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_every_wire_code_in_the_docs_maps_to_exactly_one_exception_class() -> None:
    table = doc_table()
    for code, name in table.items():
        owners = [c for c in tree() if c.__dict__.get("code") == code]
        assert [c.__name__ for c in owners] == [name], (code, owners)
        assert issubclass(owners[0], errors.SyncError), code
    # ... and every code a SyncError can carry over the wire is in the table.
    sent = {c.code for c in tree() if issubclass(c, errors.SyncError) and "code" in c.__dict__}
    assert sent - CLIENT_ONLY - {errors.SyncError.code} == set(table)


def test_codes_are_unique_and_the_docstring_draws_the_whole_tree() -> None:
    classes = tree()
    codes = [c.__dict__["code"] for c in classes]
    assert len(codes) == len(set(codes)), sorted(codes)
    doc = errors.__doc__ or ""
    drawn = re.findall(r"^\s+[│├└─ ]*([A-Z]\w+)\s{2,}\S", doc, re.M)
    assert sorted(drawn) == sorted(c.__name__ for c in classes)
    # Each line names its parent by its indentation: the drawing is the real hierarchy.
    stack: list[str] = []
    for line in doc.splitlines():
        m = re.match(r"^(\s+[│├└─ ]*)([A-Z]\w+)\s{2,}\S", line)
        if m is None:
            continue
        del stack[len(m.group(1)) // 4 - 1:]  # four characters a level, below C360Error
        if stack:
            parent = getattr(errors, stack[-1])
            assert getattr(errors, m.group(2)).__bases__ == (parent,), line
        stack.append(m.group(2))


def test_no_exception_class_lives_outside_c360_errors() -> None:
    builtin = {"Exception", "ValueError", "RuntimeError", "KeyError", "TypeError",
               "LookupError", "OSError", "ArithmeticError"}
    outside = []
    for path in (ROOT / "c360").rglob("*.py"):
        if path.name == "errors.py" and path.parent.name == "c360":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                         for b in node.bases}
                if bases & builtin or any(b.endswith("Error") for b in bases):
                    outside.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert outside == []


class _Misleading(errors.Forbidden):
    """A Forbidden whose message names another code: the type decides."""


def test_the_wire_code_is_the_types_not_the_messages() -> None:
    m = p.error(_Misleading("unknown command: bad_args, not_found", entity="c01"), 3)
    assert (m["code"], m["entity"], m["id"]) == ("forbidden", "c01", 3)
    got = errors.from_wire({"type": "error", "code": "bad_args", "message": "unknown command",
                            "entity": "c01", "id": 4})
    assert type(got) is errors.CommandError and got.entity == "c01" and got.request == 4
    newer = errors.from_wire({"type": "error", "code": "from_a_newer_server", "message": "x"})
    assert type(newer) is errors.SyncError and newer.code == "from_a_newer_server"


def _server_store() -> EntityStore:
    store = EntityStore()
    store.apply([Delta("c01", "customer", 1, datetime(2026, 1, 1, tzinfo=timezone.utc),
                       "loyalty", "e1", {"loyalty_points": 1})])
    return store


def test_the_server_codes_a_command_by_its_exception_even_when_the_text_misleads() -> None:
    # msgspec quotes an unknown argument's name in its message: an argument named "unknown
    # command" made the old server, which matched the message text, answer unknown_command.
    book = TokenBook.from_tokens({"admin": {"pii": True, "commands": ["*"]},
                                  "narrow": {"entities": ["c02"], "commands": ["add_note"]}})
    requests: list[tuple[str, dict[str, Any], str]] = [
        ("admin", {"name": "grant_points", "args": {"points": 5, "unknown command": 1}},
         "bad_args"),
        ("admin", {"name": "grant_points", "args": {"points": "bad_args"}}, "bad_args"),
        ("admin", {"name": "bad_args", "args": {}}, "unknown_command"),
        ("admin", {"name": "grant_points", "args": {"points": 5}}, "unavailable"),
        ("admin", {"name": "grant_points", "args": {"points": 5}, "entity": "nobody"},
         "not_found"),
        ("narrow", {"name": "grant_points", "args": {"points": 5}}, "forbidden"),
    ]
    with SyncServer(_server_store(), book) as server:
        for token, command, want in requests:
            with ws_connect(server.url, max_size=None) as ws:
                ws.send(json.dumps({"type": "auth", "token": token, "id": 0}))
                assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
                ws.send(json.dumps({"type": "command", "entity": "c01", "id": "r",
                                    **command}))
                got = json.loads(ws.recv(timeout=10))
            assert (got["type"], got["code"], got["id"]) == ("error", want, "r"), (command, got)
            assert got["entity"] == command.get("entity", "c01")
        assert server.error is None


def test_the_python_client_raises_the_class_of_the_code() -> None:
    book = TokenBook.from_tokens({"admin": {"pii": True, "commands": ["*"]},
                                  "loyalty": {"fields": ["loyalty_points"]}})
    with SyncServer(_server_store(), book) as server:
        with pytest.raises(errors.InvalidToken) as refused:
            c360.connect(server.url, "no-such-token")
        assert refused.value.code == "invalid_token"
        with c360.connect(server.url, "admin") as replica:
            with pytest.raises(errors.CommandError) as bad:
                replica.command("c01", "grant_points", points=-5)
            assert (type(bad.value), bad.value.code, bad.value.entity) == (
                errors.CommandError, "bad_args", "c01")
            with pytest.raises(errors.UnknownCommand):
                replica.command("c01", "nuke")
        with c360.connect(server.url, "loyalty") as replica, \
                pytest.raises(errors.Forbidden, match="email"):
            replica.sync("c01", fields=["email"])
