"""Who the dashboard user is and what they may see and do.

Panel authenticates (``panel serve --basic-auth users.json`` against a user file, or
``--oauth-provider ...``); this module authorizes. Each user name maps to a
:class:`c360.sync.auth.Scope` -- the same scopes sync tokens have -- in the file named by
``C360_DASHBOARD_SCOPES`` (JSON)::

    {"users": {"manager": {"pii": true, "commands": ["*"]},
               "analyst": {"pii": false, "commands": []}}}

A user missing from the file, and a session without a login, get :data:`NARROW`: no
PII and no commands. So forgetting to list a user never shows them more.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from c360.errors import ConfigError
from c360.sync.auth import PII_FIELDS, Scope

NARROW = Scope(name="narrow", pii=False, commands=[])
FULL = Scope(name="full", pii=True, commands=["*"])
ENV = "C360_DASHBOARD_SCOPES"
USERS_ENV = "C360_DASHBOARD_USERS"  # Panel's basic-auth users: see check_users


def load_scopes(path: str | Path) -> dict[str, Scope]:
    """``{user: Scope}`` from a scopes file; :class:`ConfigError` saying what is wrong."""
    path = Path(path)
    try:
        raw: Any = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the dashboard scopes file {path}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(raw, Mapping) and "users" in raw:
        raw = raw["users"]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected an object of user -> scope")
    out: dict[str, Scope] = {}
    for user, spec in raw.items():
        try:
            scope = msgspec.convert(spec, Scope, strict=False)
        except (msgspec.ValidationError, ValueError) as exc:
            raise ConfigError(f"{path}: user {user!r}: {exc}") from None
        out[user] = scope if scope.name else msgspec.structs.replace(scope, name=user)
    return out


def check_users(value: str) -> None:
    """``C360_DASHBOARD_USERS`` as Panel's ``basic_auth`` reads it: a file of
    ``{user: password}`` (JSON), else one password for every user. A ``.json`` name that
    cannot be read, or a file that is not such an object, is a :class:`ConfigError` before
    any server starts: Panel reads the file only at each login (``BasicLoginHandler``), and
    takes a missing file's name for the password."""
    value = value.strip()
    if not (value.endswith(".json") or Path(value).is_file()):
        return  # a password
    try:
        table = json.loads(Path(value).read_text())
    except OSError as exc:
        raise ConfigError(f"{USERS_ENV}={value!r}: {exc.strerror or exc} (a JSON file of "
                          "user -> password)") from None
    except ValueError as exc:
        raise ConfigError(f"{USERS_ENV}={value!r} is not valid JSON: {exc}") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ConfigError(f"{USERS_ENV}={value!r}: expected a JSON object of "
                          "user -> password")


def scope_for(user: str | None, scopes: Mapping[str, Scope] | None = None,
              anonymous: Scope = NARROW) -> Scope:
    """The scope of ``user`` (None: no login). Unknown users get the narrow scope."""
    if scopes is None:
        path = os.environ.get(ENV, "").strip()
        scopes = load_scopes(path) if path else {}
    if not user:
        return anonymous
    scope = scopes.get(user)
    if scope is None:
        return msgspec.structs.replace(NARROW, name=user)
    return scope if not scope.expired() else msgspec.structs.replace(NARROW, name=user)


def redact(entity: Mapping[str, Any], scope: Scope,
           pii_fields: frozenset[str] | None = None) -> dict[str, Any]:
    """The entity as ``scope`` may see it: fields outside it dropped, PII (the model's
    ``pii_fields``; default the retail model's) redacted."""
    pii = PII_FIELDS if pii_fields is None else pii_fields
    return {k: scope.shown(k, v, pii) for k, v in entity.items()
            if k == "version" or scope.allows_field(k)}
