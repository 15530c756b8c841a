"""Tokens and their scopes: which entities, which fields and which commands a token allows.

The operator configures tokens in a JSON or TOML file named by ``C360_TOKENS_FILE``, or
inline JSON in ``C360_TOKENS``::

    {"tokens": {"s3cret-dashboard": {"name": "dashboard", "entities": "*", "fields": "*",
                                     "pii": false, "commands": [],
                                     "expires_at": "2030-01-01T00:00:00Z"}}}

Tokens are kept by their SHA-256 digest only, and the file is re-read when it changes,
so that revoking a token takes effect on open connections too.

Which fields are personal data is the entity model's to say (``Field(..., pii=True)``,
:attr:`c360.model.declare.EntityModel.pii_fields`): a token without the ``pii`` scope sees
them redacted. :data:`PII_FIELDS` is the retail model's set, the default; the sync server
passes its model's set to :meth:`Scope.shown`, so a model that declares one more personal
field gets it redacted with no change here. A scope file says *whether* a token sees PII,
never *which* fields are PII.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import msgspec

from c360.errors import ConfigError
from c360.models.retail import RETAIL

PII_FIELDS: frozenset[str] = RETAIL.pii_fields  # the default model's personal data
REDACTED = "[redacted]"
IDENTITY = frozenset({"id", "kind"})  # always visible: they say which entity a message is about


class InSegment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    segment: str


class Scope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one token allows. ``entities``: "*", a list of ids, or {"segment": name}."""

    name: str = ""
    entities: Literal["*"] | list[str] | InSegment = "*"
    fields: Literal["*"] | list[str] = "*"
    pii: bool = False
    commands: list[str] = []
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone (e.g. 2030-01-01T00:00:00Z)")

    @property
    def segment(self) -> str | None:
        return self.entities.segment if isinstance(self.entities, InSegment) else None

    def expired(self, now: datetime | None = None) -> bool:
        return (self.expires_at is not None
                and (now or datetime.now(timezone.utc)) >= self.expires_at)

    def allows_entity(self, entity_id: str, entity: Mapping[str, Any] | None) -> bool:
        """Whether the entity is in scope; a segment scope needs the entity's current state."""
        if self.entities == "*":
            return True
        if isinstance(self.entities, InSegment):
            return entity is not None and self.entities.segment in (entity.get("segments") or ())
        return entity_id in self.entities

    def allows_field(self, field: str) -> bool:
        return field in IDENTITY or self.fields == "*" or field in self.fields

    def fields_outside(self, wanted: list[str]) -> list[str]:
        return [f for f in wanted if not self.allows_field(f)]

    def allows_command(self, name: str) -> bool:
        return name in self.commands or "*" in self.commands

    def redacts(self, field: str, pii_fields: frozenset[str] = PII_FIELDS) -> bool:
        """Whether this token sees ``field`` redacted: a PII field (``pii_fields``: the
        model's, default the retail model's) without the pii scope."""
        return not self.pii and field in pii_fields

    def shown(self, field: str, value: Any, pii_fields: frozenset[str] = PII_FIELDS) -> Any:
        """The value as this token may see it: PII is redacted without the pii scope."""
        return REDACTED if not self.pii and field in pii_fields else value

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "entities": self.entities, "fields": self.fields,
                "pii": self.pii, "commands": self.commands, "expires_at": self.expires_at}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _scopes(raw: Any, origin: str) -> dict[str, Scope]:
    if isinstance(raw, Mapping) and "tokens" in raw:
        raw = raw["tokens"]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: expected an object of token -> scope")
    out: dict[str, Scope] = {}
    for token, spec in raw.items():
        if not token:
            raise ConfigError(f"{origin}: empty token")
        try:
            scope = msgspec.convert(spec, Scope, strict=False)
        except (msgspec.ValidationError, ValueError) as exc:
            raise ConfigError(f"{origin}: token {scope_label(token)}: {exc}") from None
        if not scope.name:
            scope = msgspec.structs.replace(scope, name=scope_label(token))
        out[digest(token)] = scope
    return out


def scope_label(token: str) -> str:
    """A name for a token that does not reveal it."""
    return "token-" + digest(token)[:8]


def _toml(text: str) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ConfigError("TOML token files need Python 3.11+; use JSON") from None
    return tomllib.loads(text)


class TokenBook:
    """Scopes by token digest; re-reads its file when the file changes."""

    def __init__(self, scopes: Mapping[str, Scope] | None = None,
                 path: Path | None = None) -> None:
        self._scopes = dict(scopes or {})
        self._path = path
        self._mtime: float | None = None
        if path is not None:
            self.refresh()

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, Mapping[str, Any] | Scope]) -> TokenBook:
        """A book from ``{token: scope}`` (scopes as dicts or :class:`Scope`)."""
        plain = {t: msgspec.to_builtins(s) if isinstance(s, Scope) else s
                 for t, s in tokens.items()}
        return cls(_scopes(plain, "tokens"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TokenBook:
        env = os.environ if env is None else env
        path = env.get("C360_TOKENS_FILE", "").strip()
        if path:
            return cls(path=Path(path))
        inline = env.get("C360_TOKENS", "").strip()
        if inline:
            try:
                return cls(_scopes(json.loads(inline), "C360_TOKENS"))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"C360_TOKENS is not valid JSON: {exc}") from None
        return cls()

    def __len__(self) -> int:
        return len(self._scopes)

    def refresh(self) -> bool:
        """Re-read the token file if it changed; True when it was re-read."""
        if self._path is None:
            return False
        try:
            mtime = self._path.stat().st_mtime
        except OSError as exc:
            raise ConfigError(f"cannot read the tokens file {self._path}: {exc}") from None
        if mtime == self._mtime:
            return False
        text = self._path.read_text()
        try:
            raw = _toml(text) if self._path.suffix.lower() == ".toml" else json.loads(text)
        except ValueError as exc:  # both parsers' errors are ValueErrors
            raise ConfigError(f"cannot parse the tokens file {self._path}: {exc}") from None
        self._scopes = _scopes(raw, str(self._path))
        self._mtime = mtime
        return True

    def lookup(self, token: str) -> tuple[str, Scope] | None:
        key = digest(token)
        scope = self._scopes.get(key)
        return None if scope is None else (key, scope)

    def scope(self, key: str) -> Scope | None:
        """The current scope of a token digest; None once the token is revoked."""
        return self._scopes.get(key)
