"""Declared entity models: the streams and the fields they fold into, in plain Python.

A model is data a person can read in a notebook. Each :class:`~c360.model.events.Stream`
names its topic, its schema (a msgspec Struct, or a field list: :func:`stream`), its key
and event-time fields and the kind of entity it feeds. Each :class:`Field` names its type,
how it folds from its source stream(s), how long it stays relevant, whether it is personal
data and what it means in one line::

    from datetime import timedelta
    from c360.model import declare as d

    sessions = d.stream("app_sessions", {"session_id": str, "device": str,
                                          "duration_s": float}, key="user_id", time="ts")
    model = retail.extend(streams=[sessions], fields=[
        d.Field("sessions_7d", "int", d.Windowed("app_sessions", days=7),
                "App sessions in the last 7 days of the customer's event time"),
        d.Field("app_time_s", "float", d.Sum("app_sessions", "duration_s"),
                "Time spent in the app, all time"),
    ])

Everything downstream reads the model: the decoders and their dead-letter reasons
(:class:`~c360.model.events.Catalogue`), the fold (``c360.entity.fold`` compiles the
generic folds below; a stream may also bring a hand-written fold of its own), PII
redaction in the sync server, the export's columns and dtypes, the dashboard's labels,
and the field reference in ``docs/fields.md`` (:mod:`c360.model.reference`).

:meth:`EntityModel.check` refuses a model that does not hold together with one
:class:`~c360.errors.ModelError` line naming the field (or stream) and what to fix.

Every generic fold is a function of the *set* of events: latest is by event time (ties by
event id), windows and decay are read as of the entity's latest event time, so reading order
and batch boundaries never change a value (docs/event-time.md).
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Literal, cast, get_args, get_origin

import msgspec

from c360.errors import ModelError
from c360.model.events import CustomerEvent, Event, Id, Stream, Time

# The types a field can have, and how the export and the dashboard read them.
FieldType = Literal["int", "float", "money", "share", "str", "bool", "time", "date", "list",
                    "map", "record"]
TYPES: tuple[str, ...] = get_args(FieldType)
NUMERIC = frozenset({"int", "float", "money", "share"})
# pandas dtypes of the export's columns (lists and maps are not columns; records are
# flattened to parent.child columns; a date stays a Python date, pandas having no date dtype).
DTYPES: dict[str, str] = {"int": "Int64", "float": "float64", "money": "float64",
                          "share": "float64", "str": "string", "bool": "boolean",
                          "time": "datetime64[ns, UTC]"}

# Keys the store and the export write beside the fields: a field of that name would be
# overwritten by them (the entity's id, its kind, its version) or shadow the export's as_of.
RESERVED = {"id": "the entity's id", "kind": "the entity's kind",
            "version": "the entity's version", "as_of": "the export's as-of time"}

Value = str | Callable[[Any], Any]  # an attribute of the event, or a function of it
Where = Callable[[Any], bool] | None  # which events of the stream count (None: all)


# -- folds ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fold:
    """How a field folds from its source stream. ``where`` picks the events that count."""

    stream: str
    where: Where = field(default=None, kw_only=True)

    kind: ClassVar[str] = "fold"
    result: ClassVar[frozenset[str]] = frozenset(TYPES)  # the field types this fold can give

    @property
    def streams(self) -> tuple[str, ...]:
        return (self.stream,)

    def values(self) -> tuple[Value, ...]:
        """The event attributes (or functions) this fold reads."""
        return ()

    def describe(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Latest(Fold):
    """The value of the latest event by event time (ties: the greater event id)."""

    value: Value = ""
    kind = "latest"

    def values(self) -> tuple[Value, ...]:
        return (self.value,)

    def describe(self) -> str:
        return f"latest {_name(self.value)}"


@dataclass(frozen=True)
class Sum(Fold):
    """The sum of ``value`` over the stream's events (per ``by`` key: a map)."""

    value: Value = ""
    by: Value | None = field(default=None, kw_only=True)
    kind = "sum"
    result = frozenset({"int", "float", "money", "map"})

    def values(self) -> tuple[Value, ...]:
        return (self.value,) if self.by is None else (self.value, self.by)

    def describe(self) -> str:
        return f"sum of {_name(self.value)}" + _by(self.by)


@dataclass(frozen=True)
class Count(Fold):
    """How many events (per ``by`` key: a map)."""

    by: Value | None = field(default=None, kw_only=True)
    kind = "count"
    result = frozenset({"int", "map"})

    def values(self) -> tuple[Value, ...]:
        return () if self.by is None else (self.by,)

    def describe(self) -> str:
        return "count" + _by(self.by)


@dataclass(frozen=True)
class Min(Fold):
    """The smallest ``value`` seen."""

    value: Value = ""
    kind = "min"
    result = frozenset({"int", "float", "money", "share", "str", "time"})

    def values(self) -> tuple[Value, ...]:
        return (self.value,)

    def describe(self) -> str:
        return f"{self.kind} of {_name(self.value)}"


@dataclass(frozen=True)
class Max(Min):
    """The largest ``value`` seen."""

    kind = "max"


@dataclass(frozen=True)
class Distinct(Fold):
    """The distinct values seen, sorted (at most ``limit``: the smallest are kept)."""

    value: Value = ""
    limit: int | None = field(default=None, kw_only=True)
    kind = "distinct set"
    result = frozenset({"list"})

    def values(self) -> tuple[Value, ...]:
        return (self.value,)

    def describe(self) -> str:
        return f"distinct {_name(self.value)}" + (f", at most {self.limit}" if self.limit else "")


@dataclass(frozen=True)
class LastN(Fold):
    """The ``n`` latest items by event time, newest first. ``item``: an attribute, a tuple
    of attributes (each item a dict of them), or a function of the event."""

    n: int = 10
    item: Value | tuple[str, ...] = ""
    kind = "last N"
    result = frozenset({"list"})

    def values(self) -> tuple[Value, ...]:
        return self.item if isinstance(self.item, tuple) else (self.item,)

    def describe(self) -> str:
        return f"last {self.n} of {_name(self.item)}"


@dataclass(frozen=True)
class Windowed(Fold):
    """A sum of ``value`` (None: a count) over the last ``days`` calendar days (UTC) of the
    entity's event time, today included; per ``by`` key: a map."""

    days: int = 7
    value: Value | None = None
    by: Value | None = field(default=None, kw_only=True)
    kind = "windowed"
    result = frozenset({"int", "float", "money", "map"})

    def values(self) -> tuple[Value, ...]:
        return tuple(v for v in (self.value, self.by) if v is not None)

    def describe(self) -> str:
        what = "count" if self.value is None else f"sum of {_name(self.value)}"
        return f"{what} over {self.days} days" + _by(self.by)


@dataclass(frozen=True)
class Decayed(Fold):
    """A score that loses half its weight every ``half_life`` of the entity's event time:
    the sum of ``value`` (default 1 per event) times 2^-(age / half_life); per ``by``: a map."""

    half_life: timedelta = timedelta(days=7)
    value: Value | float = 1.0
    by: Value | None = field(default=None, kw_only=True)
    kind = "decayed"
    result = frozenset({"float", "map"})

    def values(self) -> tuple[Value, ...]:
        vals = () if isinstance(self.value, int | float) else (self.value,)
        return vals if self.by is None else (*vals, self.by)

    def describe(self) -> str:
        return f"decayed sum of {_name(self.value)}, half-life {_span(self.half_life)}" + _by(
            self.by)


@dataclass(frozen=True)
class Monthly(Fold):
    """The sum of ``value`` per calendar month (UTC), ``{"YYYY-MM": sum}``, the last
    ``months`` months of the entity's event time kept."""

    value: Value = ""
    months: int = 24
    kind = "monthly roll-up"
    result = frozenset({"map"})

    def values(self) -> tuple[Value, ...]:
        return (self.value,)

    def describe(self) -> str:
        return f"monthly sum of {_name(self.value)}, {self.months} months kept"


@dataclass(frozen=True)
class Derived:
    """A Python function of declared fields (keyword arguments named as the inputs), re-run
    only when one of its inputs changes. An input not yet set is passed as None."""

    inputs: tuple[str, ...]
    fn: Callable[..., Any]
    kind = "derived"

    @property
    def streams(self) -> tuple[str, ...]:
        return ()

    def describe(self) -> str:
        return "derived from " + ", ".join(self.inputs)


@dataclass(frozen=True)
class Custom:
    """A field written by hand-written code of the library (a stream's own fold, the
    windows of relevance, the business logic or the rules), declared so that everything
    downstream knows it. ``how`` says what that code does, in a few words."""

    sources: tuple[str, ...]
    how: str
    kind = "custom"

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(s for s in self.sources if not s.startswith("("))

    def describe(self) -> str:
        return self.how


AnyFold = Fold | Derived | Custom


# -- fields and models ------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One field of the entity: its name, type, fold, a one-line description, its relevance
    (how long it stays: decayed, rolled up, forgotten, evicted after...), whether it is
    personal data (redacted for tokens without the pii scope) and its dashboard label."""

    name: str
    type: str
    fold: AnyFold
    description: str
    relevance: str = "kept"
    pii: bool = False
    label: str = ""
    entity: str = "customer"

    @property
    def title(self) -> str:
        """How people read its name: the label, or its words capitalised."""
        if self.label:
            return self.label
        words = self.name.replace("_", " ").strip()
        return words[:1].upper() + words[1:]


@dataclass(frozen=True)
class EntityModel:
    """Streams, and the entity fields folded from them. Build with the constructor, extend
    with :meth:`extend`, check with :meth:`check` (the pipeline checks it at start)."""

    name: str
    streams: tuple[Stream, ...] = ()
    fields: tuple[Field, ...] = ()

    def extend(self, *, name: str | None = None, streams: Iterable[Stream] = (),
               fields: Iterable[Field] = (), replace: bool = False) -> EntityModel:
        """A new model with more streams and fields (``replace``: fields of the same name
        replace this model's; otherwise a name declared twice is refused by check)."""
        fields = tuple(fields)
        mine = self.fields
        if replace:
            new = {(f.entity, f.name) for f in fields}
            mine = tuple(f for f in mine if (f.entity, f.name) not in new)
        return EntityModel(name or f"{self.name}+", (*self.streams, *streams), (*mine, *fields))

    def stream(self, name: str) -> Stream:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(f"unknown stream {name!r}; declared: {', '.join(self.stream_names)}")

    @property
    def stream_names(self) -> list[str]:
        return [s.name for s in self.streams]

    def field(self, name: str, entity: str = "customer") -> Field:
        for f in self.fields:
            if f.name == name and f.entity == entity:
                return f
        raise KeyError(f"unknown {entity} field {name!r}")

    def fields_of(self, entity: str = "customer") -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.entity == entity)

    @property
    def pii_fields(self) -> frozenset[str]:
        """Personal data: redacted for tokens without the pii scope."""
        return frozenset(f.name for f in self.fields if f.pii)

    @property
    def money_fields(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields if f.type == "money")

    @property
    def titles(self) -> dict[str, str]:
        return {f.name: f.title for f in self.fields}

    def dtypes(self, entity: str = "customer") -> dict[str, str]:
        """pandas dtypes of the export's scalar columns."""
        return {f.name: DTYPES[f.type] for f in self.fields_of(entity) if f.type in DTYPES}

    def check(self) -> EntityModel:
        """This model, or :class:`ModelError` naming the first field (or stream) that does
        not hold together."""
        _check(self)
        return self


def stream(name: str, fields: Mapping[str, Any] | type[Event], *, key: str = "customer_id",
           time: str = "event_time", kind: str = "customer", topic: str = "",
           fold: Callable[[Any, Any], Any] | None = None) -> Stream:
    """A stream from a field list (``{"amount": float, "reason": str}``) or a schema.

    Every event also has ``event_id`` (duplicates share it). ``key`` and ``time`` are the
    names of its entity-id and event-time fields *on the wire*; inside c360 they are read
    as ``customer_id`` and ``event_time`` (the schema renames them), so the fold, the
    store and the changes topic are the same for every stream. A field with a default
    (``{"reason": (str, "")}``) may be left out of an event.
    """
    if kind != "customer":
        raise ModelError(f"stream {name!r}: kind {kind!r} is not supported for declared "
                         "streams; use kind='customer'")
    if not name.isidentifier():
        raise ModelError(f"stream {name!r}: a stream's name must be a Python identifier")
    if isinstance(fields, type):
        schema = fields
    else:
        spec: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for attr, tp in fields.items():
            if not attr.isidentifier() or keyword.iskeyword(attr):
                raise ModelError(f"stream {name!r}: field name {attr!r} is not an identifier")
            if attr in ("event_id", "event_time", "customer_id", key, time):
                raise ModelError(f"stream {name!r}: field {attr!r} is declared by key=, "
                                 "time= or event_id already; leave it out of the field list")
            spec.append((attr, *tp) if isinstance(tp, tuple) else (attr, tp))
        # The key and the time are redeclared under their names on the wire (a rename on
        # the class would not reach the inherited fields).
        spec[:0] = [("customer_id", Id, msgspec.field(name=key)),
                    ("event_time", Time, msgspec.field(name=time))]
        # defstruct is typed as making a Struct; with CustomerEvent as its base it is one.
        schema = cast("type[Event]", msgspec.defstruct(_class_name(name), spec,
                                                       bases=(CustomerEvent,), kw_only=True,
                                                       frozen=True))
    return Stream(name, schema, "customer_id", topic, fold=fold, kind=kind, wire_key=key,
                  wire_time=time)


def _class_name(name: str) -> str:
    return "".join(part.title() for part in name.split("_")) or "Stream"


# -- checks -----------------------------------------------------------------------------------

def _check(model: EntityModel) -> None:
    streams: dict[str, Stream] = {}
    for s in model.streams:
        if s.name in streams:
            raise ModelError(f"stream {s.name!r} is declared twice")
        streams[s.name] = s
    # One topic, one schema: the decoder picks the stream by topic, so a second stream on
    # a topic would take every event of the first (decoded with its schema, or dead-lettered).
    topics: dict[str, str] = {}
    for s in model.streams:
        if s.topic and s.topic in topics:
            raise ModelError(f"stream {s.name!r}: topic {s.topic!r} is stream "
                             f"{topics[s.topic]!r}'s already; give each stream its own topic")
        if s.topic:
            topics[s.topic] = s.name
    declared: dict[tuple[str, str], Field] = {}  # (entity kind, name): one name per entity
    for f in model.fields:
        where = f"field {f.name!r}" if f.entity == "customer" else f"{f.entity} field {f.name!r}"
        if (f.entity, f.name) in declared:
            raise ModelError(f"{where} is declared twice (extend(..., replace=True) replaces)")
        declared[(f.entity, f.name)] = f
        if f.name in RESERVED:
            raise ModelError(f"{where}: the name is the store's own ({RESERVED[f.name]}); "
                             "give the field another name")
        if not f.name.isidentifier() or keyword.iskeyword(f.name):
            raise ModelError(f"{where}: a field's name must be a Python identifier (derived "
                             "fields take their inputs as keyword arguments)")
        if f.type not in TYPES:
            raise ModelError(f"{where}: unknown type {f.type!r}; use one of {', '.join(TYPES)}")
        if not f.description.strip():
            raise ModelError(f"{where}: give it a one-line description")
        fold = f.fold
        for name in fold.streams:
            if name not in streams:
                raise ModelError(f"{where}: stream {name!r} is not declared "
                                 f"(declared: {', '.join(streams) or 'none'})")
        if isinstance(fold, Fold):
            _check_fold(where, f, fold, streams[fold.stream])
    for f in model.fields:
        if isinstance(f.fold, Derived):
            for name in f.fold.inputs:
                if (f.entity, name) not in declared:
                    raise ModelError(f"field {f.name!r}: derived from {name!r}, which is not a "
                                     "declared field")
                _check_late_input(f, declared[(f.entity, name)])
    _check_cycles(model)


def _check_fold(where: str, f: Field, fold: Fold, s: Stream) -> None:
    if f.type not in fold.result:
        raise ModelError(f"{where}: a {fold.kind} fold gives {' or '.join(sorted(fold.result))}, "
                         f"not {f.type!r}")
    attrs = s.schema.__struct_fields__
    types = _attr_types(s.schema)
    for value in fold.values():
        if isinstance(value, str) and value not in attrs:
            raise ModelError(f"{where}: stream {s.name!r} has no field {value!r} "
                             f"(its fields: {', '.join(a for a in attrs)})")
    numeric: list[Value] = []
    if isinstance(fold, Sum | Monthly | Windowed | Decayed) and isinstance(fold.value, str):
        numeric = [fold.value]
    for value in numeric:
        if isinstance(value, str) and not _is_number(types.get(value)):
            raise ModelError(f"{where}: a {fold.kind} fold needs a number, but {s.name}.{value} "
                             f"is {_type_name(types.get(value))}")
    if (isinstance(fold, Min | Latest) and isinstance(fold.value, str) and f.type in NUMERIC
            and not _is_number(types.get(fold.value))):
        raise ModelError(f"{where}: declared {f.type!r}, but {s.name}.{fold.value} is "
                         f"{_type_name(types.get(fold.value))}")
    if isinstance(fold, Sum | Windowed | Count) and (fold.by is None) == (f.type == "map"):
        raise ModelError(f"{where}: a {fold.kind} fold {'with' if fold.by else 'without'} by= "
                         f"gives {'a map' if fold.by else 'a number'}, not {f.type!r}")
    if isinstance(fold, LastN | Distinct):
        n = fold.n if isinstance(fold, LastN) else (fold.limit or 1)
        if n < 1:
            raise ModelError(f"{where}: keep at least one item, not {n}")
    if isinstance(fold, Windowed) and fold.days < 1:
        raise ModelError(f"{where}: a window is at least 1 day, not {fold.days}")
    if isinstance(fold, Decayed) and not fold.half_life > timedelta(0):
        raise ModelError(f"{where}: the half-life must be more than 0")


def _check_late_input(f: Field, source: Field) -> None:
    """A derived field runs in its stream's fold; a field written after the fold, by the
    logic, the windows, the rules or the segments (a Custom field with a "(...)" source),
    is not there yet, so the derived field would never be set (measured: a derived copy
    of lifetime_value, loyalty_tier or spend_30d stayed None for all 20 customers of a
    simulated shop)."""
    fold = source.fold
    if isinstance(fold, Custom):
        late = [s.strip("()") for s in fold.sources if s.startswith("(")]
        if late:
            raise ModelError(f"field {f.name!r}: derived from {source.name!r}, which is "
                             f"written after the folds (by c360's {late[0]}), so it would never "
                             "be read; derive from the fields it is made of, or declare a fold")


def _check_cycles(model: EntityModel) -> None:
    derived = {f.name: f.fold.inputs for f in model.fields if isinstance(f.fold, Derived)}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ModelError(f"field {name!r}: derived from itself ({' -> '.join((*path, name))})")
        if name in done or name not in derived:
            return
        for dep in derived[name]:
            visit(dep, (*path, name))
        done.add(name)

    for name in derived:
        visit(name, ())


def derived_order(model: EntityModel) -> list[Field]:
    """The derived fields, each after the derived fields it reads (the model is checked)."""
    fields = {f.name: f for f in model.fields if isinstance(f.fold, Derived)}  # per entity kind:
    # the compiler keeps those of the stream's kind (a name is one field per kind)
    out: list[Field] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in fields:
            return
        seen.add(name)
        fold = fields[name].fold
        assert isinstance(fold, Derived)
        for dep in fold.inputs:
            visit(dep)
        out.append(fields[name])

    for name in fields:
        visit(name)
    return out


def _attr_types(schema: type) -> dict[str, Any]:
    try:
        return {f.name: f.type for f in msgspec.structs.fields(schema)}
    except TypeError:
        return {}


def _is_number(tp: Any) -> bool:
    if tp is None:
        return True  # unknown (a function of the event): trusted
    origin = get_origin(tp)
    if origin is not None and str(origin).endswith("Annotated"):
        return _is_number(get_args(tp)[0])
    if hasattr(tp, "__metadata__"):
        return _is_number(tp.__origin__)
    args = get_args(tp)
    if args and type(None) in args:
        return all(_is_number(a) for a in args if a is not type(None))
    return tp in (int, float) and tp is not bool


def _type_name(tp: Any) -> str:
    if hasattr(tp, "__metadata__"):
        tp = tp.__origin__
    return getattr(tp, "__name__", str(tp))


def _name(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(value) + ")"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return getattr(value, "__name__", "a function")


def _by(by: Value | None) -> str:
    return "" if by is None else f" by {_name(by)}"


def _span(t: timedelta) -> str:
    if t.total_seconds() % 86_400 == 0:
        return f"{t.days} days"
    return f"{t.total_seconds() / 3600:g} hours"


__all__ = ["Count", "Custom", "Decayed", "Derived", "Distinct", "EntityModel", "Field", "Latest",
           "LastN", "Max", "Min", "Monthly", "Sum", "Windowed", "derived_order", "stream"]
