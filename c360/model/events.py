"""The event model: one typed schema per stream, and the catalogue that ties
each stream to its Kafka topic, its schema and its key.

Events are JSON on the wire and decoded with msgspec, which validates types and
constraints while it parses (a few microseconds an event). Every event carries
``event_id`` (duplicates share it) and a timezone-aware ``event_time``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from c360.errors import InvalidEvent

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Time = Annotated[datetime, msgspec.Meta(tz=True)]
# Bounded: sums of amounts near float's maximum overflow to infinity and the fold fails
# (found by fuzzing); no single amount of a retailer comes near 10^15.
Money = Annotated[float, msgspec.Meta(ge=0, le=1e15)]
# Bounded to int64: JSON allows any integer, and a larger count breaks the exports (found by
# fuzzing: 2**64 loyalty points were accepted).
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Lat = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Lon = Annotated[float, msgspec.Meta(ge=-180, le=180)]
Text = Annotated[str, msgspec.Meta(max_length=10_000)]


class Event(msgspec.Struct, kw_only=True, frozen=True):
    event_id: Id
    event_time: Time


class CustomerEvent(Event, kw_only=True, frozen=True):
    customer_id: Id


class Address(msgspec.Struct, frozen=True):
    street: str = ""
    city: str = ""
    state: str = ""
    zip: str = ""
    country: str = ""


class CustomerDetails(CustomerEvent, kw_only=True, frozen=True):
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    gender: str | None = None
    birthdate: str | None = None
    address: Address | None = None


class OrderLine(msgspec.Struct, frozen=True):
    product_id: Id
    quantity: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)] = 1
    price: Money = 0.0
    discount: Money = 0.0
    # The product's category and brand as the shop knew them when it was sold: the
    # customer's affinity scores need them, and a lookup in the product entities would make
    # them depend on which topic happened to be read first.
    category: str = ""
    brand: str = ""


class Order(CustomerEvent, kw_only=True, frozen=True):
    order_id: Id
    order_date: Time
    status: str
    total_amount: Money  # what the customer pays: line prices less discounts, plus freight
    freight: Money = 0.0
    lines: list[OrderLine] = []


class Payment(CustomerEvent, kw_only=True, frozen=True):
    order_id: Id
    payment_date: Time
    method: str
    amount: Money
    installments: Count = 1


class Wishlist(CustomerEvent, kw_only=True, frozen=True):
    product_id: Id
    action: Literal["added", "removed"] = "added"


class Review(CustomerEvent, kw_only=True, frozen=True):
    review_id: Id
    order_id: str = ""
    product_id: str = ""
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)]
    text: Text = ""


class Return(CustomerEvent, kw_only=True, frozen=True):
    return_id: Id
    order_id: Id
    product_id: Id
    reason: str = ""
    status: str = "requested"


class Loyalty(CustomerEvent, kw_only=True, frozen=True):
    points_earned: Count = 0
    points_redeemed: Count = 0
    tier: str | None = None
    reason: str = ""


class StoreStock(msgspec.Struct, frozen=True):
    store_id: Id
    quantity: int


class Product(Event, kw_only=True, frozen=True):
    product_id: Id
    name: str = ""
    category: str = ""
    subcategory: str = ""
    price: Money = 0.0
    discount: Money = 0.0
    brand: str = ""
    gender: str = ""
    age_group: str = ""


class Inventory(Event, kw_only=True, frozen=True):
    product_id: Id
    stock: list[StoreStock]


class Search(CustomerEvent, kw_only=True, frozen=True):
    event_type: Literal["search", "view", "add_to_cart", "remove_from_cart"]
    query: str = ""
    results: Count = 0
    product_id: str = ""
    category: str = ""  # of the product viewed or carted (see OrderLine.category)
    brand: str = ""


class Location(CustomerEvent, kw_only=True, frozen=True):
    event_type: str = "ping"
    latitude: Lat
    longitude: Lon
    city: str = ""


class Social(CustomerEvent, kw_only=True, frozen=True):
    event_type: Literal["post", "mention", "like"]
    details: Text = ""
    sentiment: Annotated[float, msgspec.Meta(ge=-1, le=1)] = 0.0


class Weather(CustomerEvent, kw_only=True, frozen=True):
    event_type: str = "observation"  # or "forecast"
    temperature: Annotated[float, msgspec.Meta(ge=-90, le=60)]
    condition: str


class PhysicalEvent(CustomerEvent, kw_only=True, frozen=True):
    venue_event_id: Id
    kind: str  # concert, store_opening, sports, ...
    name: str = ""
    venue: str = ""
    starts_at: Time
    distance_km: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class ThirdPartyPurchase(CustomerEvent, kw_only=True, frozen=True):
    partner: str
    category: str = ""
    amount: Money
    purchased_at: Time


class Demographics(CustomerEvent, kw_only=True, frozen=True):
    age: Annotated[int, msgspec.Meta(ge=0, le=130)] | None = None
    income: Money | None = None
    education_level: str | None = None
    marketing_opt_in: bool | None = None


class Psychographics(CustomerEvent, kw_only=True, frozen=True):
    interests: list[str] = []
    values: list[str] = []
    personality_traits: list[str] = []


class Command(CustomerEvent, kw_only=True, frozen=True):
    """An instruction sent to a customer entity (by a sync client), applied by the dataflow.

    ``name`` is one of ``c360.model.commands.COMMANDS``; ``args`` are checked against that
    command's argument schema when it is applied. ``event_id`` makes it exactly-once:
    the dataflow drops duplicates, and the sender is acknowledged by that id.
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    args: dict[str, Any] = {}
    issued_by: str = ""


@dataclass(frozen=True)
class Stream:
    """One stream: its name, its topic, its schema and the field that keys it.

    ``fold``: a hand-written fold of the whole stream, ``(EntityState, event) -> changes``
    (the retail streams have one, c360.entity.state); a declared stream usually has none and
    folds through its fields' declared folds (c360.model.declare). ``wire_key`` and
    ``wire_time`` are the key and event-time fields' names on the wire, when the schema
    renames them to ``customer_id`` and ``event_time`` (c360.model.declare.stream).
    """

    name: str
    schema: type[Event]
    key_field: str  # "customer_id" or "product_id"
    topic: str = ""
    fold: Callable[[Any, Any], Any] | None = field(default=None, compare=False)
    kind: str = ""
    wire_key: str = ""
    wire_time: str = "event_time"

    @property
    def entity_kind(self) -> str:
        if self.kind:
            return self.kind
        return "customer" if self.key_field == "customer_id" else "product"


_STREAMS: tuple[Stream, ...] = (
    Stream("customer_details", CustomerDetails, "customer_id"),
    Stream("orders", Order, "customer_id"),
    Stream("payments", Payment, "customer_id"),
    Stream("wishlist", Wishlist, "customer_id"),
    Stream("reviews", Review, "customer_id"),
    Stream("returns", Return, "customer_id"),
    Stream("loyalty", Loyalty, "customer_id"),
    Stream("products", Product, "product_id"),
    Stream("inventory", Inventory, "product_id"),
    Stream("search", Search, "customer_id"),
    Stream("location", Location, "customer_id"),
    Stream("social", Social, "customer_id"),
    Stream("weather", Weather, "customer_id"),
    Stream("physical_events", PhysicalEvent, "customer_id"),
    Stream("tp_purchases", ThirdPartyPurchase, "customer_id"),
    Stream("tp_demographics", Demographics, "customer_id"),
    Stream("tp_psychographics", Psychographics, "customer_id"),
)

# Commands flow back to the entities on a topic of their own. They are not one of the
# brief's data streams (the simulator does not produce them), hence not in _STREAMS.
COMMANDS = Stream("commands", Command, "customer_id")

DLQ = "dlq"
INGEST = "ingest"
_ENCODER = msgspec.json.Encoder()


class _Envelope(msgspec.Struct):
    """What the mixed ingest topic needs first: which stream a record belongs to."""

    stream: str


class Catalogue:
    """Streams by name and by topic, with their decoders, for one topic prefix."""

    def __init__(self, prefix: str = "c360.", streams: Iterable[Stream] | None = None) -> None:
        """``streams``: a model's streams (c360.model.declare); default: the retail ones."""
        self.prefix = prefix
        self.streams = tuple(
            replace(s, topic=s.topic or prefix + s.name)
            for s in (_STREAMS if streams is None else streams)
        )
        self.by_name = {s.name: s for s in self.streams}
        self.commands = Stream(COMMANDS.name, COMMANDS.schema, COMMANDS.key_field,
                               prefix + COMMANDS.name)
        self.commands_topic = self.commands.topic
        # Commands are decoded like any stream, but only from their own topic.
        self.by_topic = {s.topic: s for s in (*self.streams, self.commands)}
        self.dlq_topic = prefix + DLQ
        self.late_topic = prefix + "late"  # events later than the allowed lateness, with why
        self.decisions_topic = prefix + "decisions"  # what the business rules decided
        # Every entity change (deltas, lifecycle) keyed by entity id, when the dataflow
        # publishes them (c360.changes): what store replicas materialize from.
        self.changes_topic = prefix + "changes"
        # For producers that cannot fan out: records name their stream in a "stream" field.
        self.ingest_topic = prefix + INGEST
        self._decoders = {s.name: msgspec.json.Decoder(s.schema)
                          for s in (*self.streams, self.commands)}
        self._envelope = msgspec.json.Decoder(_Envelope)

    @property
    def topics(self) -> list[str]:
        """One topic per stream."""
        return [s.topic for s in self.streams]

    @property
    def input_topics(self) -> list[str]:
        """Every topic the dataflow reads: the stream topics, the mixed ingest topic and
        the commands topic."""
        return [*self.topics, self.ingest_topic, self.commands_topic]

    def topic(self, stream: str) -> str:
        try:
            return self.by_name[stream].topic
        except KeyError:
            raise KeyError(f"unknown stream {stream!r}; known: {sorted(self.by_name)}") from None

    def decode(self, topic: str, raw: bytes | None) -> Event:
        """Parse and validate one message, or raise :class:`InvalidEvent` saying why."""
        return self.decode_with_stream(topic, raw)[1]

    def decode_with_stream(self, topic: str, raw: bytes | None) -> tuple[Stream, Event]:
        """The message's stream and its validated event, or :class:`InvalidEvent`."""
        if not raw:
            raise InvalidEvent("empty message")
        stream = self.by_topic.get(topic)
        try:
            if stream is None:
                if topic != self.ingest_topic:
                    raise InvalidEvent(f"unknown stream: topic {topic!r} is not in the catalogue")
                name = self._envelope.decode(raw).stream
                stream = self.by_name.get(name)
                if stream is None:
                    raise InvalidEvent(f"unknown stream {name!r}; known: {', '.join(self.by_name)}")
            return stream, self._decoders[stream.name].decode(raw)
        except msgspec.ValidationError as exc:
            what = stream.name if stream else "ingest"
            raise InvalidEvent(f"invalid {what} event: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"malformed JSON: {exc}") from None


def encode(event: Event) -> bytes:
    """JSON bytes for the wire."""
    return _ENCODER.encode(event)


def key_of(event: Event) -> str:
    """The entity id an event belongs to (customer id, or product id)."""
    if isinstance(event, CustomerEvent):
        return event.customer_id
    if isinstance(event, Product | Inventory):
        return event.product_id
    raise TypeError(f"a {type(event).__name__} event belongs to no entity")
