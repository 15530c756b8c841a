"""The field reference of an entity model, in Markdown: what docs/fields.md holds.

:func:`reference` is a pure function of a model (c360.model.declare.EntityModel): its
streams, then a table per entity kind, a row per field (field, type, source, fold,
window / relevance, PII, description). The retail model's page is written by
``python -m c360.models.retail`` (this room may not import the models: a room imports only
the rooms above it, docs/architecture.md), and tests/test_model_reference.py fails when
docs/fields.md and the model differ.
"""

from __future__ import annotations

import msgspec

from c360.model.declare import Custom, Derived, EntityModel, Field, Fold
from c360.model.events import Stream

COLUMNS = ("field", "type", "source", "fold", "window / relevance", "PII", "description")
ENTITIES = ("customer", "product")  # first, in this order; any other kind after, sorted


def reference(model: EntityModel, *, command: str = "python -m c360.models.retail") -> str:
    """The Markdown field reference of ``model``; ``command``: what regenerates it."""
    kinds = [k for k in ENTITIES if model.fields_of(k)]
    kinds += sorted({f.entity for f in model.fields} - set(kinds))
    counts = ", ".join(f"{len(model.fields_of(k))} {k}" for k in kinds)
    out = [f"# Fields of the {model.name} model", "",
           f"Generated from the model by `{command}`: do not edit by hand (a test fails "
           f"when this page and the model differ). {len(model.streams)} streams; "
           f"fields: {counts or 'none'}.", "",
           "## Streams", "",
           _row(("stream", "entity", "key", "event time", "fields")),
           _row(("---",) * 5)]
    out += [_row(_stream_cells(s)) for s in model.streams]
    for kind in kinds:
        out += ["", f"## {kind.capitalize()} fields", "", _row(COLUMNS), _row(("---",) * 7)]
        out += [_row(field_cells(f)) for f in model.fields_of(kind)]
    return "\n".join(out) + "\n"


def source_of(f: Field) -> str:
    """The stream(s) and code a field comes from: ``orders``, ``loyalty, (commands)``."""
    fold = f.fold
    if isinstance(fold, Custom):
        return ", ".join(fold.sources)
    if isinstance(fold, Derived):
        return "(derived)"
    return fold.stream


def field_cells(f: Field) -> tuple[str, ...]:
    fold = f.fold
    how = fold.describe()
    if isinstance(fold, Fold) and fold.where is not None:
        how += ", some events"  # a where= picks them: a function, said as such
    return (f"`{f.name}`", f.type, source_of(f), how, f.relevance, "yes" if f.pii else "",
            f.description)


def _stream_cells(s: Stream) -> tuple[str, ...]:
    key, time = s.wire_key or s.key_field, s.wire_time or "event_time"
    try:
        names = [x.encode_name for x in msgspec.structs.fields(s.schema)]
    except TypeError:
        names = []
    rest = [n for n in names if n not in ("event_id", key, time)]
    return (f"`{s.name}`", s.entity_kind, f"`{key}`", f"`{time}`", ", ".join(rest))


def _row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


__all__ = ["COLUMNS", "field_cells", "reference", "source_of"]
