"""Commands that stream back to a customer entity: their arguments and their effect.

A command travels as a :class:`c360.model.events.Command` on the commands topic and is
folded by the dataflow like any event (so it is applied once: duplicates by
``event_id`` are dropped). The sync server validates a command here *before* it
produces it, so that a sender learns about a bad command at once, and the fold
validates again, because anyone with access to the topic may write to it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated, Any

import msgspec

from c360.errors import CommandError, UnknownCommand
from c360.model.events import Command

NOTES_MAX = 20  # notes kept per customer, newest first


class GrantPoints(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    points: Annotated[int, msgspec.Meta(gt=0, le=1_000_000)]
    reason: Annotated[str, msgspec.Meta(max_length=200)] = ""


class AddNote(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]


class MarkContacted(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    channel: Annotated[str, msgspec.Meta(max_length=50)] = ""


class OptOutMarketing(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class SendOffer(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An offer sent to the customer (the dashboard sends the next-best offer)."""

    action: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


COMMANDS: dict[str, type[msgspec.Struct]] = {
    "grant_points": GrantPoints,
    "add_note": AddNote,
    "mark_contacted": MarkContacted,
    "opt_out_marketing": OptOutMarketing,
    "send_offer": SendOffer,
}
OFFERS_MAX = 20  # offers sent kept per customer, newest first


def parse_args(name: str, args: dict[str, Any]) -> msgspec.Struct:
    """The command's typed arguments; :class:`UnknownCommand` or :class:`CommandError`
    saying what is wrong."""
    schema = COMMANDS.get(name)
    if schema is None:
        raise UnknownCommand(f"unknown command {name!r}; known: {', '.join(sorted(COMMANDS))}")
    if not isinstance(args, dict):
        raise CommandError(f"{name}: args must be an object")
    try:
        return msgspec.convert(args, schema)
    except msgspec.ValidationError as exc:
        raise CommandError(f"{name}: bad args: {exc}") from None


def command_event(entity: str, name: str, args: dict[str, Any], issued_by: str) -> Command:
    """The command as it goes on the commands topic: a new event id (the fold drops a
    duplicate of it) and the time it is issued as its event time."""
    return Command(event_id=f"cmd-{uuid.uuid4().hex}", event_time=datetime.now(timezone.utc),
                   customer_id=entity, name=name, args=args, issued_by=issued_by)


def changes_of(fields: dict[str, Any], name: str, args: msgspec.Struct, at: datetime,
               issued_by: str) -> dict[str, Any]:
    """The field changes a command makes to an entity whose fields are ``fields``."""
    if isinstance(args, GrantPoints):
        return {"loyalty_points": fields.get("loyalty_points", 0) + args.points}
    if isinstance(args, AddNote):
        note = {"text": args.text, "by": issued_by, "at": at}
        return {"notes": [note, *fields.get("notes", ())][:NOTES_MAX]}
    if isinstance(args, MarkContacted):
        out: dict[str, Any] = {"last_contacted_at": at}
        if args.channel:
            out["last_contact_channel"] = args.channel
        return out
    if isinstance(args, OptOutMarketing):
        return {"marketing_opt_out": True}
    if isinstance(args, SendOffer):
        offer = {"action": args.action, "reason": args.reason, "by": issued_by, "at": at}
        return {"offers_sent": [offer, *fields.get("offers_sent", ())][:OFFERS_MAX]}
    raise CommandError(f"no effect defined for command {name!r}")
