"""The retail model: the 17 streams of the brief and every customer and product field.

The default model (``Pipeline(model=...)`` and ``c360 run --model`` take another). Its
streams fold through the hand-written folds of :mod:`c360.entity.state` (order status
updates, carts, ties broken by event time: more than a generic fold says), so each field
is declared :class:`~c360.model.declare.Custom` with the code that writes it; the windows
of relevance (:mod:`c360.entity.windows`) give the relevance column. Everything
downstream reads this declaration: PII redaction, the export's dtypes, the dashboard's
labels and docs/fields.md.
"""

from __future__ import annotations

from dataclasses import replace

from c360.entity.state import FOLDS
from c360.model.declare import Custom, EntityModel, Field
from c360.model.events import _STREAMS

STREAMS = tuple(replace(s, fold=FOLDS[s.name]) for s in _STREAMS)


def _f(name: str, type_: str, sources: str, how: str, description: str, *,
       pii: bool = False, label: str = "", relevance: str = "kept",
       entity: str = "customer") -> Field:
    return Field(name, type_, Custom(tuple(sources.split()), how), description,
                 relevance=relevance, pii=pii, label=label, entity=entity)


FIELDS: tuple[Field, ...] = (
    _f("name", "str", "customer_details", "latest given", "The customer's name", pii=True),
    _f("email", "str", "customer_details", "latest given", "The customer's email address",
       pii=True),
    _f("phone", "str", "customer_details", "latest given", "The customer's phone number",
       pii=True),
    _f("birthdate", "str", "customer_details", "latest given", "Date of birth (ISO)", pii=True),
    _f("address", "record", "customer_details", "latest given", "Postal address", pii=True),
)

RETAIL = EntityModel("retail", STREAMS, FIELDS)
