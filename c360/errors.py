"""Every exception c360 raises on purpose, in one tree; catch :class:`C360Error` for all.

::

    C360Error                 base class; never raised for a bug of c360 itself
    ├── ConfigError           a setting, option or tokens file is wrong: fix the named value
    │   ├── RecoveryMismatch  the recovery directory is of re-created topics: start afresh
    │   └── ModelError        a declared entity model does not hold together: fix the named field
    ├── BrokerError           Kafka cannot be started, reached or used: start it, check the address
    ├── DataError             input data is missing or unusable: fetch or fix the named file
    │   └── StateFormatError  a snapshot or changes record of another state format: start afresh
    ├── InvalidEvent          an event failed validation: fix its producer (``reason`` says why)
    └── SyncError             a sync request was refused or failed; ``code`` is its wire code
        ├── BadRequest        bad_request: not JSON or not a known request; fix the frame
        ├── Unauthenticated   unauthenticated: send ``auth`` with a token first
        ├── InvalidToken      invalid_token: the token is unknown; ask for a valid one
        ├── TokenExpired      token_expired: the token's ``expires_at`` has passed; get a new one
        ├── TokenRevoked      token_revoked: the operator removed the token; get a new one
        ├── Forbidden         forbidden: entity, field or command outside the token's scope
        ├── CommandError      bad_args: a command's arguments are wrong; fix them and resend
        │   └── UnknownCommand  unknown_command: no command of that name; use a known one
        ├── NotFound          not_found: a command for a customer that does not exist
        ├── Unavailable       unavailable: this replica or server takes no commands (no Kafka)
        ├── CommandFailed     command_failed: the command could not be written to Kafka; retry
        ├── CommandTimeout    command_timeout: written but not seen applied in time; check the run
        ├── NotConnected      closed: the client's connection is closed; connect again
        └── VersionTimeout    timeout: an entity did not reach a version in time; wait longer

Each class has a ``code``, unique in the tree. The sync server sends the code of the
exception it refuses a request with (``docs/sync-protocol.md`` lists them), and the Python
client raises the class of the code it receives: ``except c360.errors.Forbidden`` works on
both sides of the wire. ``closed`` and ``timeout`` are the client's own and never sent.
"""

from __future__ import annotations

from typing import Any


class C360Error(Exception):
    """Base class of every error c360 raises on purpose."""

    code: str = "error"


class ConfigError(C360Error):
    """A setting is missing or malformed; the message names it and what to set."""

    code = "config_error"


class RecoveryMismatch(ConfigError):
    """The recovery directory belongs to topics that have since been re-created or lost;
    the message says how to start afresh (remove it, or use a new ``--recovery-dir``)."""

    code = "recovery_mismatch"


class ModelError(ConfigError):
    """A declared entity model (c360.model.declare) does not hold together; the message
    names the field or stream and what to fix."""

    code = "model_error"


class BrokerError(C360Error):
    """The Kafka broker could not be started, reached or used."""

    code = "broker_error"


class DataError(C360Error):
    """Input data (for example the Olist files) is missing or unusable."""

    code = "data_error"


class StateFormatError(DataError):
    """A recovery snapshot or a changes-topic record this c360 cannot read: of another
    state format version, or an unversioned pickle of an earlier c360. The message says
    which and what to do (c360.model.codec, docs/reliability.md "State format")."""

    code = "state_format"


class InvalidEvent(C360Error):
    """An event failed validation; ``reason`` says why in one line."""

    code = "invalid_event"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SyncError(C360Error):
    """A sync request was refused or failed. ``code`` says why (``forbidden``,
    ``token_expired``, ...), ``entity`` names the entity it was about, if any, and
    ``request`` is the request's id, which the server echoes."""

    code = "sync_error"  # an instance of SyncError itself may carry a newer server's code

    def __init__(self, message: str, *, entity: str | None = None,
                 request: Any = None) -> None:
        super().__init__(message)
        self.entity = entity
        self.request = request


class BadRequest(SyncError):
    """A frame that is not JSON, not a known request, or a request with a bad field."""

    code = "bad_request"


class Unauthenticated(SyncError):
    """A request before ``auth``."""

    code = "unauthenticated"


class InvalidToken(SyncError):
    """An unknown token."""

    code = "invalid_token"


class TokenExpired(SyncError):
    """A token past its ``expires_at``; its subscriptions are closed."""

    code = "token_expired"


class TokenRevoked(SyncError):
    """A token the operator removed; its subscriptions are closed."""

    code = "token_revoked"


class Forbidden(SyncError):
    """An entity, field or command outside the token's scope (the same whether or not the
    entity exists)."""

    code = "forbidden"


class CommandError(SyncError):
    """A command with bad arguments (or that cannot be sent as asked)."""

    code = "bad_args"


class UnknownCommand(CommandError):
    """A command name that is not one of ``c360.model.commands.COMMANDS``."""

    code = "unknown_command"


class NotFound(SyncError):
    """A command for a customer that does not exist."""

    code = "not_found"


class Unavailable(SyncError):
    """A command sent where there is no Kafka to write it to."""

    code = "unavailable"


class CommandFailed(SyncError):
    """A command that could not be written to Kafka."""

    code = "command_failed"


class CommandTimeout(SyncError):
    """A command written to Kafka but not seen applied in time (is the dataflow running?)."""

    code = "command_timeout"


class NotConnected(SyncError):
    """The client's connection is closed (never sent by the server)."""

    code = "closed"


class VersionTimeout(SyncError):
    """An entity did not reach the version waited for in time (never sent by the server)."""

    code = "timeout"


def _tree(cls: type[C360Error]) -> list[type[C360Error]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _tree(sub))]


def by_code() -> dict[str, type[C360Error]]:
    """Every class of the tree by its code (subclasses defined elsewhere included)."""
    return {c.__dict__["code"]: c for c in _tree(C360Error) if "code" in c.__dict__}


def from_wire(message: dict[str, Any]) -> SyncError:
    """The exception of a server's ``error`` message: the class of its code, else a
    :class:`SyncError` carrying the code (one this client does not know)."""
    code = str(message.get("code", ""))
    text = str(message.get("message", ""))
    cls = by_code().get(code)
    if cls is None or not issubclass(cls, SyncError):
        err = SyncError(text or code, entity=message.get("entity"), request=message.get("id"))
        err.code = code
        return err
    return cls(text, entity=message.get("entity"), request=message.get("id"))
