"""A simulated retailer that produces every stream of the catalogue to Kafka.

Customers sign up (their details first, third-party records soon after), search,
browse, fill carts and order; orders are paid, earn loyalty points, ship, arrive,
get reviewed and sometimes returned; stock sells out and comes back; people walk
around their city under its changing weather, post about what they bought and hear
of events nearby.

The streams come from one small world model rather than from independent random
draws because the business rules look for stories across streams (a wishlist item
back in stock, rain forecast with a raincoat in the wishlist, a customer near a store
that stocks what they viewed), and those only happen when the streams agree.

The event sequence -- content, ids and times -- is a pure function of
``(customers, seed, start, tick)``: :func:`generate` is what tests and notebooks
inspect, and :func:`simulate` paces the same sequence into Kafka.

A shop has a past: :func:`backfill` produces weeks of history in seconds (event times
spread over the last ``days``, customers signing up along the way, churned customers
fading out), and ``simulate(simulation=...)`` then continues the same world live at now.
"""

from __future__ import annotations

import heapq
import importlib.util
import itertools
import logging
import math
import random
import threading
import time
import unicodedata
import zlib
from bisect import bisect
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from c360.config import Settings, paced_linger_ms
from c360.errors import BrokerError, ConfigError
from c360.model import events as ev
from c360.model.events import Catalogue, Event, encode
from c360.topics.admin import create_topics

if TYPE_CHECKING:
    from kafka import KafkaProducer

    from c360.store.memory import EntityStore

log = logging.getLogger(__name__)

Item = tuple[str, str, Event]  # (stream name, key, event)
# A process is one strand of the story (a shopping session, an order's delivery...).
# It yields its events one at a time; yielding an int sleeps it for that many steps.
Process = Iterator[Item | int]
E = TypeVar("E", bound=Event)

# Event time advances this much per event when producing flat out (rate 0).
FLAT_OUT_TICK = timedelta(milliseconds=10)
# Streams whose events plausibly arrive late (buffered on phones, polled from partners).
LATE_STREAMS = frozenset({"search", "location", "social", "weather", "wishlist", "reviews",
                          "physical_events"})
P_LATE = 0.0135  # of the late-capable events, which make up ~3/4 of all: ~1% overall
LATE_MINUTES = (1.0, 15.0)
P_DUPLICATE = 0.005
DUPLICATE_WITHIN = 20  # steps: well inside the pipeline's per-entity window of recent ids
WISHLIST_CAP = 15
# A backfilled history: 90 days, ~150 events per customer (about what the demo's 500
# customers do in six minutes live), so that 7-, 30- and 90-day windows, segments and
# churn differ from lifetime totals. 75,000 events take ~10 s through the embedded broker.
BACKFILL_DAYS = 90.0
BACKFILL_EVENTS_PER_CUSTOMER = 150
# Of the customers, this share existed before the history starts; the others sign up
# evenly over it (so about a fifth are "new", signed up in its last 30 days).
SIGNED_UP_BEFORE = 0.4
BACKFILL_QUIET_S = 1.0  # the store is caught up once this long without a change...
BACKFILL_WAIT_S = 180.0  # ...and gives up waiting after this long

_FAR_FUTURE = 1 << 62


# -- the static world -------------------------------------------------------------------------

@dataclass(frozen=True)
class City:
    name: str
    state: str
    country: str
    lat: float
    lon: float
    phone_prefix: str
    zip_prefix: str
    temperature: float  # typical, in °C
    share: int  # relative number of customers living there


@dataclass(frozen=True)
class Store:
    store_id: str
    name: str
    city: str
    lat: float
    lon: float


CITIES: tuple[City, ...] = (
    City("São Paulo", "SP", "BR", -23.5505, -46.6333, "+55 11", "0", 21.0, 30),
    City("Rio de Janeiro", "RJ", "BR", -22.9068, -43.1729, "+55 21", "2", 26.0, 18),
    City("Belo Horizonte", "MG", "BR", -19.9167, -43.9345, "+55 31", "3", 22.0, 10),
    City("Curitiba", "PR", "BR", -25.4284, -49.2733, "+55 41", "8", 17.0, 8),
    City("Porto Alegre", "RS", "BR", -30.0346, -51.2177, "+55 51", "9", 19.0, 7),
    City("Salvador", "BA", "BR", -12.9777, -38.5016, "+55 71", "4", 27.0, 7),
    City("Lisbon", "Lisboa", "PT", 38.7223, -9.1393, "+351", "1", 17.0, 5),
)
_CITY_CUM = list(itertools.accumulate(c.share for c in CITIES))

# The shop's physical stores; rules such as "near a store that stocks a viewed item" need them.
STORES: tuple[Store, ...] = (
    Store("store-sp-paulista", "c360 Paulista", "São Paulo", -23.5614, -46.6559),
    Store("store-sp-pinheiros", "c360 Pinheiros", "São Paulo", -23.5670, -46.6920),
    Store("store-rj-copacabana", "c360 Copacabana", "Rio de Janeiro", -22.9711, -43.1822),
    Store("store-bh-savassi", "c360 Savassi", "Belo Horizonte", -19.9380, -43.9370),
    Store("store-cwb-batel", "c360 Batel", "Curitiba", -25.4420, -49.2890),
)
_STORES_IN: dict[str, tuple[Store, ...]] = {
    c.name: tuple(s for s in STORES if s.city == c.name) for c in CITIES}

_VENUES: dict[str, tuple[str, ...]] = {
    "São Paulo": ("Allianz Parque", "Parque Ibirapuera", "Anhembi"),
    "Rio de Janeiro": ("Maracanã", "Jeunesse Arena", "Praia de Copacabana"),
    "Belo Horizonte": ("Mineirão", "Praça da Estação"),
    "Curitiba": ("Pedreira Paulo Leminski", "Arena da Baixada"),
    "Porto Alegre": ("Beira-Rio", "Auditório Araújo Vianna"),
    "Salvador": ("Arena Fonte Nova", "Pelourinho"),
    "Lisbon": ("MEO Arena", "Estádio da Luz", "Coliseu dos Recreios"),
}
_HAPPENINGS: dict[str, tuple[str, ...]] = {
    "concert": ("Banda Maré Alta live", "DJ Solaris", "Orquestra Aurora", "Os Tropicais tour"),
    "sports": ("City derby", "Half marathon", "Volleyball final", "Basketball cup"),
    "festival": ("Food festival", "Craft beer festival", "Book fair", "Design week"),
}

_FEMALE = ("Ana", "Maria", "Juliana", "Fernanda", "Camila", "Beatriz", "Larissa", "Mariana",
           "Patrícia", "Aline", "Gabriela", "Letícia", "Luana", "Sofia", "Helena", "Inês")
_MALE = ("João", "Pedro", "Lucas", "Gabriel", "Rafael", "Felipe", "Gustavo", "Mateus", "Bruno",
         "Thiago", "Rodrigo", "André", "Carlos", "Eduardo", "Diego", "Tiago")
_INTL_FEMALE = ("Emma", "Olivia", "Chloé", "Yuki", "Aisha", "Priya", "Hannah", "Mei")
_INTL_MALE = ("Liam", "Noah", "Hiroshi", "Omar", "Arjun", "Luca", "Jonas", "Wei")
_SURNAMES = ("Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira",
             "Lima", "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Almeida", "Araújo")
_INTL_SURNAMES = ("Müller", "Rossi", "Tanaka", "Kim", "Nguyen", "Smith", "García", "Dubois",
                  "Kowalski", "Okafor", "Patel", "Schmidt")
_STREETS = {
    "BR": ("Rua Augusta", "Avenida Paulista", "Rua das Flores", "Rua XV de Novembro",
           "Avenida Brasil", "Rua Sete de Setembro", "Rua da Consolação", "Avenida Atlântica",
           "Rua Bahia", "Rua dos Andradas"),
    "PT": ("Rua Augusta", "Avenida da Liberdade", "Rua do Ouro", "Rua Garrett",
           "Avenida de Roma", "Rua de São Bento"),
}
_EMAIL_DOMAINS = {"BR": ("gmail.com", "hotmail.com", "outlook.com", "yahoo.com.br", "uol.com.br",
                         "icloud.com"),
                  "PT": ("gmail.com", "sapo.pt", "outlook.pt", "icloud.com")}

# category -> subcategory -> (product nouns, lowest and highest price in whole units)
_CATALOGUE: dict[str, dict[str, tuple[tuple[str, ...], int, int]]] = {
    "fashion": {
        "raincoats": (("Raincoat", "Rain Jacket", "Waterproof Parka"), 150, 600),
        "umbrellas": (("Umbrella", "Compact Umbrella"), 30, 150),
        "sneakers": (("Sneakers", "Trainers", "Canvas Shoes"), 180, 900),
        "t-shirts": (("T-Shirt", "Polo Shirt", "Tank Top"), 40, 160),
        "dresses": (("Summer Dress", "Maxi Dress", "Shirt Dress"), 90, 450),
    },
    "electronics": {
        "smartphones": (("Smartphone", "Phone"), 900, 6000),
        "headphones": (("Headphones", "Earbuds"), 80, 1500),
        "smartwatches": (("Smartwatch", "Fitness Band"), 200, 2500),
        "laptops": (("Laptop", "Notebook"), 2500, 9000),
    },
    "home": {
        "cookware": (("Frying Pan", "Pressure Cooker", "Knife Set"), 60, 700),
        "bedding": (("Duvet", "Pillow Set", "Sheet Set"), 80, 600),
        "coffee": (("Espresso Machine", "Coffee Grinder", "French Press"), 70, 2500),
        "decor": (("Lamp", "Vase", "Wall Clock"), 40, 400),
    },
    "sports": {
        "running": (("Running Shoes", "Running Jacket", "Hydration Vest"), 120, 900),
        "cycling": (("Bike Helmet", "Cycling Gloves", "Bike Light"), 50, 700),
        "football": (("Football", "Football Boots", "Jersey"), 60, 800),
        "yoga": (("Yoga Mat", "Yoga Block", "Yoga Pants"), 40, 350),
    },
    "beauty": {
        "skincare": (("Moisturiser", "Sunscreen", "Serum"), 30, 400),
        "perfume": (("Eau de Parfum", "Body Mist"), 90, 900),
        "makeup": (("Lipstick", "Mascara", "Foundation"), 25, 250),
    },
    "toys": {
        "building sets": (("Building Set", "Construction Kit"), 60, 900),
        "board games": (("Board Game", "Puzzle"), 40, 400),
    },
    "books": {
        "fiction": (("Novel", "Short Stories"), 30, 120),
        "travel guides": (("Travel Guide", "City Atlas"), 40, 150),
        "cookbooks": (("Cookbook", "Baking Book"), 50, 200),
    },
}
_BRANDS = {
    "fashion": ("Aurora", "Verde Mar", "Urbano", "Solis"),
    "electronics": ("Voltix", "Nimbus", "Kora"),
    "home": ("Casa Viva", "Lar & Co", "Ferro"),
    "sports": ("Pulse", "Trilha", "Atleta"),
    "beauty": ("Flor de Lis", "Bela", "Lume"),
    "toys": ("Pipoca", "Brincar"),
    "books": ("Editora Sol", "Letra Viva"),
}
_ADJECTIVES = ("Classic", "Urban", "Eco", "Pro", "Lite", "Max", "Soft", "Sport", "Essential")
_INTERESTS: dict[str, str] = {  # interest -> the category it makes a customer browse
    "fashion": "fashion", "technology": "electronics", "gaming": "electronics",
    "music": "electronics", "cooking": "home", "home decor": "home", "fitness": "sports",
    "running": "sports", "football": "sports", "yoga": "sports", "outdoors": "sports",
    "beauty": "beauty", "parenting": "toys", "reading": "books", "travel": "books",
}
_INTEREST_NAMES = tuple(_INTERESTS)
_VALUES = ("sustainability", "value for money", "quality", "convenience", "family",
           "innovation", "tradition", "health", "status")
_TRAITS = ("adventurous", "practical", "social", "analytical", "impulsive", "cautious",
           "creative", "loyal")
_EDUCATION = (("high school", 2500), ("some college", 3500), ("bachelor", 6500),
              ("master", 9500), ("doctorate", 12000))  # with a typical monthly income
_PARTNERS = (("SuperCompra", "groceries"), ("FarmaBem", "pharmacy"), ("ViagemJá", "travel"),
             ("CineClube", "entertainment"), ("TechPoint", "electronics"),
             ("PetAmigo", "pets"))
_CONDITIONS = ("clear", "cloudy", "drizzle", "rain", "storm")
_CONDITION_CUM = list(itertools.accumulate((35, 30, 8, 22, 5)))
_PAYMENTS = (("credit_card", 62), ("pix", 16), ("boleto", 12), ("debit_card", 6),
             ("voucher", 4))
_PAYMENT_CUM = list(itertools.accumulate(w for _, w in _PAYMENTS))
_RETURN_REASONS = ("wrong size", "damaged on arrival", "not as described", "changed my mind",
                   "arrived too late")
_REVIEWS = {
    1: ("Terrible. Arrived broken and support never answered.",
        "Worst purchase this year, {name} stopped working in two days."),
    2: ("Not great, the {name} feels cheap.", "Delivery was late and the box was damaged."),
    3: ("It's okay, expected better for the price.", "Average {name}, does the job."),
    4: ("Good quality for the price.", "Nice {name}, delivery was quick."),
    5: ("Excellent {name}, exactly as described!", "Loved it, will buy again."),
}
_SOCIAL: dict[str, dict[int, tuple[str, ...]]] = {
    "post": {1: ("Just got my new {name} from @c360, loving it!", "Best {category} buy ever."),
             0: ("Ordered a {name} from @c360 today.", "Thinking about a new {category} item."),
             -1: ("My {name} from @c360 broke after a week. Not happy.",
                  "Still waiting for @c360 to answer about my order...")},
    "mention": {1: ("@c360 thanks for the fast delivery!",),
                0: ("@c360 do you ship to Lisbon?", "@c360 when is the next sale?"),
                -1: ("@c360 your support is useless.", "@c360 where is my refund?")},
    "like": {1: ("liked a post about {name}",), 0: ("liked a post by @c360",),
             -1: ("liked a complaint about @c360",)},
}


def _ascii(text: str) -> str:
    """'João Araújo' -> 'joaoaraujo': the part of a name that can go into an email address."""
    flat = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in flat.lower() if ch.isalnum())


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in km; the flat-earth approximation is plenty within a city."""
    dx = (lon2 - lon1) * 111.32 * math.cos(math.radians((lat1 + lat2) / 2))
    dy = (lat2 - lat1) * 110.57
    return math.hypot(dx, dy)


def _clamp(x: float, lo: float = -1.0, hi: float = 1.0) -> float:
    return lo if x < lo else hi if x > hi else x


# -- the world's changing state ---------------------------------------------------------------

@dataclass(eq=False, slots=True)
class _Product:
    id: str
    name: str
    category: str
    subcategory: str
    brand: str
    price: int  # cents: sums of cents are exact, floats are made only for the wire
    discount: int  # cents off the unit price
    gender: str
    age_group: str
    stock: dict[str, int]  # store id -> units

    @property
    def total(self) -> int:
        return sum(self.stock.values())


@dataclass(eq=False, slots=True)
class _Customer:
    id: str
    city: City
    first: str
    last: str
    gender: str
    birthdate: date
    email: str
    phone: str
    street: str
    zip: str
    lat: float
    lon: float
    interests: list[str]
    categories: tuple[str, ...]  # what they mostly browse, from their interests
    mood: float  # -1..1: colours reviews and social posts
    churn_at: int  # the step after which they mostly stop coming back
    cart: list[str] = field(default_factory=list)
    wishlist: list[str] = field(default_factory=list)
    viewed: list[str] = field(default_factory=list)
    points: int = 0
    shopping: bool = False


@dataclass(eq=False, slots=True)
class _Weather:
    temperature: float
    condition: str
    coming: str  # what the forecast says comes next


@dataclass(eq=False, slots=True)
class _Happening:
    id: str
    kind: str
    name: str
    venue: str
    lat: float
    lon: float
    starts_at: datetime


# -- the story ------------------------------------------------------------------------------

class Simulation:
    """The world and its story: iterate it for an endless sequence of (stream, key, event).

    ``n`` counts events handed out (duplicates included) and drives the simulated
    clock: event ``n`` happens at ``start + n * tick`` (after :meth:`retime`, at the new
    start plus the events since). ``duplicates`` and ``late`` count the deliberately
    imperfect events handed out so far; ``imperfect = False`` hands out none (a clean
    history, in event-time order on every stream).

    ``signups_over``: customers sign up gradually over that many events (a share
    :data:`SIGNED_UP_BEFORE` at once, the others evenly), instead of all at the start.
    """

    def __init__(self, customers: int, seed: int, start: datetime,
                 tick: timedelta = FLAT_OUT_TICK, *, signups_over: int | None = None) -> None:
        if customers < 1:
            raise ConfigError(f"customers={customers}: simulate at least one customer")
        if start.tzinfo is None:
            raise ConfigError(f"start={start.isoformat()} must be timezone-aware")
        if tick <= timedelta(0):
            raise ConfigError(f"tick={tick} must be positive")
        self.rng = random.Random(seed)
        self.customers = customers
        self.start = start
        self.tick = tick
        self.now = start
        self.n = 0
        self.duplicates = 0
        self.late = 0
        self.imperfect = True
        self._clock_n = 0  # the n at which the current clock (start, tick) began
        self._signups_over = signups_over
        self._items: Iterator[Item] | None = None
        # Runs with another seed or start get other ids, so that they never pass for duplicates.
        self._tag = f"{zlib.crc32(f'{seed}/{start.isoformat()}'.encode()):08x}"[:6]
        self._ids = itertools.count(1)
        self._seq = itertools.count()  # tie-breaker for the heaps
        self._sleeping: list[tuple[int, int, Process]] = []
        self._signed_up = 0
        self._ready: list[_Customer] = []  # signed-up customers; frequent shoppers appear thrice
        self.concurrency = min(64, max(4, customers // 10))  # customers acting at the same time
        self.products = self._make_products(max(50, customers // 5))
        self._product = {p.id: p for p in self.products}
        self._by_subcategory: dict[str, list[_Product]] = {}
        for p in self.products:
            self._by_subcategory.setdefault(p.subcategory, []).append(p)
        self._subcategories = {cat: [s for s in subs if s in self._by_subcategory]
                               for cat, subs in _CATALOGUE.items()}
        self._subcategories = {c: s for c, s in self._subcategories.items() if s}
        self._weather = {c.name: _Weather(c.temperature, "clear", "clear") for c in CITIES}
        self._happenings = {c.name: [self._new_happening(c) for _ in range(3)] for c in CITIES}
        self._spawners: tuple[Callable[[], Process], ...] = (
            self._shopping, self._move, self._observe_weather, self._post, self._wish,
            self._stock_moves, self._nearby_event, self._loyalty, self._reprice,
            self._update_details, self._onboard)
        weights = (30, 22, 8, 6, 4, 5, 2, 1.5, 0.6, 0.6)
        self._cum_steady = list(itertools.accumulate(weights))
        self._cum_signup = [*self._cum_steady, self._cum_steady[-1] + 25]

    def __iter__(self) -> Iterator[Item]:
        # One story per simulation: iterating again continues it (a history, then live).
        if self._items is None:
            self._items = self._run()
        return self._items

    def retime(self, start: datetime, tick: timedelta) -> None:
        """Continue the same world on a new clock: the next event happens at ``start``,
        the ones after ``tick`` apart (a backfilled history going live)."""
        if start.tzinfo is None:
            raise ConfigError(f"start={start.isoformat()} must be timezone-aware")
        if tick <= timedelta(0):
            raise ConfigError(f"tick={tick} must be positive")
        if start < self.now:
            raise ConfigError(f"start={start.isoformat()} is before the simulation's clock "
                              f"({self.now.isoformat()}): time only moves forward")
        self.start, self.tick, self._clock_n, self.now = start, tick, self.n, start

    # -- the clock, late events and duplicates -------------------------------------------------
    def _run(self) -> Iterator[Item]:
        rng = self.rng
        story = self._story()
        resend: list[tuple[int, int, Item]] = []
        while True:
            if resend and resend[0][0] <= self.n:
                item = heapq.heappop(resend)[2]
                self.duplicates += 1
            else:
                item = next(story)
                if self.imperfect:
                    if item[0] in LATE_STREAMS and rng.random() < P_LATE:
                        item = self._delayed(item)
                    if rng.random() < P_DUPLICATE:  # a producer retry after a lost ack
                        due = self.n + rng.randint(1, DUPLICATE_WITHIN)
                        heapq.heappush(resend, (due, next(self._seq), item))
            # The clock moves on before the item is handed out, so that between items it
            # reads the time of the next event (a retime then starts exactly there).
            self.n += 1
            self.now = self.start + self.tick * (self.n - self._clock_n)
            yield item

    def _delayed(self, item: Item) -> Item:
        """The event as it arrives now, having happened some minutes ago."""
        stream, key, event = item
        minutes = self.rng.uniform(*LATE_MINUTES)
        self.late += 1
        return stream, key, msgspec.structs.replace(
            event, event_time=event.event_time - timedelta(minutes=minutes))

    # -- interleaving the strands of the story -------------------------------------------------
    def _story(self) -> Iterator[Item]:
        yield from self._open_shop()
        rng = self.rng
        active: list[Process] = []
        sleeping = self._sleeping
        while True:
            while sleeping and sleeping[0][0] <= self.n:
                active.append(heapq.heappop(sleeping)[2])
            if not active or (len(active) < self.concurrency and rng.random() < 0.5):
                active.append(self._spawn())
                i = len(active) - 1
            else:
                i = rng.randrange(len(active))
            step = next(active[i], None)
            if step is None or isinstance(step, int):  # done, or sleeping: out of the active set
                proc = active[i]
                active[i] = active[-1]
                active.pop()
                if step is not None:
                    self._sleep(proc, step)
                continue
            yield step

    def _spawn(self) -> Process:
        if not self._ready:
            return self._onboard()
        cum = self._cum_signup if self._signed_up < self._signup_quota() else self._cum_steady
        return self._spawners[bisect(cum, self.rng.random() * cum[-1])]()

    def _signup_quota(self) -> int:
        """How many customers have signed up by now."""
        if self._signups_over is None:
            return self.customers
        share = SIGNED_UP_BEFORE + (1 - SIGNED_UP_BEFORE) * self.n / self._signups_over
        return min(self.customers, max(1, math.ceil(self.customers * share)))

    def _sleep(self, proc: Process, steps: int) -> None:
        heapq.heappush(self._sleeping, (self.n + steps, next(self._seq), proc))

    def _pick(self) -> _Customer:
        ready, rng = self._ready, self.rng
        c = ready[rng.randrange(len(ready))]
        if c.churn_at < self.n and rng.random() < 0.9:  # churned customers seldom come back
            c = ready[rng.randrange(len(ready))]
        return c

    # -- building events -----------------------------------------------------------------------
    def _event(self, stream: str, key: str, schema: type[E],
               **fields: Any) -> tuple[str, str, E]:
        event = schema(event_id=f"{stream}-{self._tag}-{next(self._ids)}", event_time=self.now,
                       **fields)
        return stream, key, event

    def _of(self, stream: str, c: _Customer, schema: type[E],
            **fields: Any) -> tuple[str, str, E]:
        return self._event(stream, c.id, schema, customer_id=c.id, **fields)

    def _product_event(self, p: _Product) -> Item:
        return self._event("products", p.id, ev.Product, product_id=p.id, name=p.name,
                           category=p.category, subcategory=p.subcategory,
                           price=p.price / 100, discount=p.discount / 100, brand=p.brand,
                           gender=p.gender, age_group=p.age_group)

    def _inventory_event(self, p: _Product) -> Item:
        stock = [ev.StoreStock(s, q) for s, q in p.stock.items()]
        return self._event("inventory", p.id, ev.Inventory, product_id=p.id, stock=stock)

    # -- the shop ------------------------------------------------------------------------------
    def _make_products(self, count: int) -> list[_Product]:
        rng = self.rng
        kinds = [(cat, sub) for cat, subs in _CATALOGUE.items() for sub in subs]
        products = []
        for i in range(count):
            # Every subcategory exists at least once, so raincoats and umbrellas always do.
            cat, sub = kinds[i] if i < len(kinds) else rng.choice(kinds)
            nouns, lo, hi = _CATALOGUE[cat][sub]
            brand = rng.choice(_BRANDS[cat])
            price = rng.randint(lo, hi) * 100 - 10  # prices end in ,90
            discount = 0 if rng.random() < 0.7 else price * rng.choice((5, 10, 15, 20)) // 100
            gendered = cat in ("fashion", "beauty")
            gender = rng.choice(("women", "men", "unisex")) if gendered else "unisex"
            age_group = "kids" if cat == "toys" else rng.choice(("adult", "adult", "teen"))
            stores = rng.sample(STORES, rng.randint(3, 5))
            launched_sold_out = rng.random() < 0.08  # so "back in stock" happens early on
            stock = {s.store_id: 0 if launched_sold_out else rng.randint(0, 25) for s in stores}
            products.append(_Product(
                f"prod-{i + 1:05d}", f"{brand} {rng.choice(_ADJECTIVES)} {rng.choice(nouns)}",
                cat, sub, brand, price, discount, gender, age_group, stock))
        return products

    def _open_shop(self) -> Iterator[Item]:
        for p in self.products:
            yield self._product_event(p)
        for p in self.products:
            yield self._inventory_event(p)

    def _stock_moves(self) -> Process:
        p = self.rng.choice(self.products)
        self._move_stock(p)
        yield self._inventory_event(p)

    def _move_stock(self, p: _Product) -> None:
        """Change the product's stock, always: inventory events that change nothing are noise."""
        rng, stock = self.rng, p.stock
        if p.total == 0:  # the supplier delivers: back in stock
            for s in stock:
                stock[s] = rng.randint(5, 30)
        elif rng.random() < 0.15:  # a flash sale or a marketplace order empties every store
            for s in stock:
                stock[s] = 0
        else:
            store = rng.choice(list(stock))
            if stock[store] and rng.random() < 0.6:
                stock[store] -= rng.randint(1, stock[store])  # sold over the counter
            else:
                stock[store] += rng.randint(3, 20)

    def _take_stock(self, p: _Product, quantity: int) -> None:
        for store in sorted(p.stock, key=p.stock.__getitem__, reverse=True):
            taken = min(quantity, p.stock[store])
            p.stock[store] -= taken
            quantity -= taken
            if not quantity:
                return

    def _reprice(self) -> Process:
        rng = self.rng
        p = rng.choice(self.products)
        if p.discount:  # the promotion ends, sometimes with a new list price
            p.discount = 0
            if rng.random() < 0.3:
                p.price = max(990, p.price + rng.choice((-1, 1)) * (p.price // 1000) * 100)
        else:
            p.discount = p.price * rng.choice((10, 15, 20, 30)) // 100
        yield self._product_event(p)

    # -- customers -----------------------------------------------------------------------------
    def _onboard(self) -> Process:
        rng = self.rng
        c = self._new_customer()
        self._ready.append(c)
        if rng.random() < 0.2:  # frequent shoppers
            self._ready.extend((c, c))
        yield self._of("customer_details", c, ev.CustomerDetails, name=f"{c.first} {c.last}",
                       email=c.email, phone=c.phone, gender=c.gender,
                       birthdate=c.birthdate.isoformat(), address=self._address(c))
        yield rng.randint(1, 40)  # third-party data arrives a little after sign-up
        yield self._demographics(c)
        yield rng.randint(1, 40)
        yield self._of("tp_psychographics", c, ev.Psychographics, interests=c.interests,
                       values=rng.sample(_VALUES, rng.randint(1, 3)),
                       personality_traits=rng.sample(_TRAITS, rng.randint(1, 3)))
        for _ in range(rng.randint(1, 3)):
            yield rng.randint(1, 40)
            partner, category = rng.choice(_PARTNERS)
            yield self._of("tp_purchases", c, ev.ThirdPartyPurchase, partner=partner,
                           category=category, amount=rng.randint(1000, 80000) / 100,
                           purchased_at=self.now - timedelta(days=rng.uniform(1, 365)))

    def _new_customer(self) -> _Customer:
        rng = self.rng
        self._signed_up += 1
        city = CITIES[bisect(_CITY_CUM, rng.random() * _CITY_CUM[-1])]
        gender = rng.choices(("female", "male", "non-binary"), (49, 49, 2))[0]
        foreign = rng.random() < 0.12
        female = gender == "female" or (gender == "non-binary" and rng.random() < 0.5)
        if foreign:
            first = rng.choice(_INTL_FEMALE if female else _INTL_MALE)
            last = rng.choice(_INTL_SURNAMES)
        else:
            first = rng.choice(_FEMALE if female else _MALE)
            last = f"{rng.choice(_SURNAMES)} {rng.choice(_SURNAMES)}" if rng.random() < 0.3 \
                else rng.choice(_SURNAMES)
        age = int(rng.triangular(18, 80, 32))
        birthdate = self.start.date() - timedelta(days=age * 365 + rng.randint(0, 364))
        interests = rng.sample(_INTEREST_NAMES, rng.randint(2, 4))
        categories = tuple(dict.fromkeys(_INTERESTS[i] for i in interests))
        churn_at = self.n + rng.randint(1_000, 20_000) if rng.random() < 0.15 else _FAR_FUTURE
        return _Customer(
            id=f"cust-{self._signed_up:05d}", city=city, first=first, last=last, gender=gender,
            birthdate=birthdate, email=self._email(city, first, last), phone=self._phone(city),
            street=self._street(city), zip=self._zip(city),
            lat=city.lat + rng.uniform(-0.05, 0.05), lon=city.lon + rng.uniform(-0.05, 0.05),
            interests=interests, categories=categories, mood=rng.uniform(-0.2, 0.6),
            churn_at=churn_at)

    def _email(self, city: City, first: str, last: str) -> str:
        rng = self.rng
        domain = rng.choice(_EMAIL_DOMAINS[city.country])
        return f"{_ascii(first)}.{_ascii(last.split()[-1])}{rng.randint(1, 999)}@{domain}"

    def _phone(self, city: City) -> str:
        r = self.rng.randint
        if city.country == "PT":
            return f"+351 9{r(1, 6)}{r(0, 9)} {r(100, 999)} {r(100, 999)}"
        return f"{city.phone_prefix} 9{r(1000, 9999)}-{r(1000, 9999)}"

    def _street(self, city: City) -> str:
        return f"{self.rng.choice(_STREETS[city.country])}, {self.rng.randint(1, 2999)}"

    def _zip(self, city: City) -> str:
        r = self.rng.randint
        if city.country == "PT":
            return f"{city.zip_prefix}{r(0, 999):03d}-{r(0, 999):03d}"
        return f"{city.zip_prefix}{r(1000, 9999)}-{r(0, 999):03d}"

    @staticmethod
    def _address(c: _Customer) -> ev.Address:
        return ev.Address(c.street, c.city.name, c.city.state, c.zip, c.city.country)

    def _demographics(self, c: _Customer) -> Item:
        rng = self.rng
        today = self.now.date()
        age = today.year - c.birthdate.year - (
            (today.month, today.day) < (c.birthdate.month, c.birthdate.day))
        level, typical = rng.choice(_EDUCATION[1:] if age >= 24 else _EDUCATION[:2])
        income = round(typical * rng.uniform(0.6, 1.8) * (1.4 if c.city.country == "PT" else 1),
                       -1)
        return self._of("tp_demographics", c, ev.Demographics, age=max(0, age),
                        income=income, education_level=level,
                        marketing_opt_in=rng.random() < 0.6)

    def _update_details(self) -> Process:
        """A changed phone, email or address: only the changed field is sent."""
        rng = self.rng
        c = self._pick()
        what = rng.random()
        if what < 0.4:
            old = c.phone
            while c.phone == old:
                c.phone = self._phone(c.city)
            yield self._of("customer_details", c, ev.CustomerDetails, phone=c.phone)
        elif what < 0.7:
            old = c.email
            while c.email == old:
                c.email = self._email(c.city, c.first, c.last)
            yield self._of("customer_details", c, ev.CustomerDetails, email=c.email)
        else:  # moved house within the city
            old_street = c.street
            while c.street == old_street:
                c.street = self._street(c.city)
            c.zip = self._zip(c.city)
            yield self._of("customer_details", c, ev.CustomerDetails, address=self._address(c))

    # -- shopping ------------------------------------------------------------------------------
    def _shopping(self) -> Process:
        c = self._pick()
        if c.shopping:  # one session per customer at a time keeps their cart coherent
            return
        c.shopping = True
        try:
            yield from self._session(c)
        finally:
            c.shopping = False

    def _session(self, c: _Customer) -> Process:
        """Search, view, maybe wish, maybe add to cart, maybe check out."""
        rng = self.rng
        viewed = yield from self._browse(c)
        if not viewed:
            return
        for p in viewed:  # "tell me when it is back"
            if p.total == 0 and p.id not in c.wishlist and len(c.wishlist) < WISHLIST_CAP \
                    and rng.random() < 0.5:
                c.wishlist.append(p.id)
                yield self._of("wishlist", c, ev.Wishlist, product_id=p.id, action="added")
        wanted = [p for p in dict.fromkeys(viewed) if p.total > 0 and p.id not in c.cart]
        if not wanted or rng.random() < 0.4:
            return  # just looking
        for p in rng.sample(wanted, min(len(wanted), rng.randint(1, 2))):
            c.cart.append(p.id)
            yield self._of("search", c, ev.Search, event_type="add_to_cart", product_id=p.id)
        if len(c.cart) > 1 and rng.random() < 0.15:
            gone = c.cart.pop(rng.randrange(len(c.cart)))
            yield self._of("search", c, ev.Search, event_type="remove_from_cart",
                           product_id=gone)
        if rng.random() < 0.35:
            return  # the cart is abandoned, for now
        yield from self._checkout(c)

    def _browse(self, c: _Customer) -> Generator[Item | int, None, list[_Product]]:
        """The search and product views of a session; returns the products viewed."""
        rng = self.rng
        back = [pid for pid in c.wishlist if self._product[pid].total > 0]
        if back and rng.random() < 0.3:  # a wished-for item is back: straight to it
            p = self._product[rng.choice(back)]
            yield self._of("search", c, ev.Search, event_type="view", product_id=p.id,
                           category=p.category, brand=p.brand)
            return [p]
        category = rng.choice(c.categories) if rng.random() < 0.75 else None
        if category not in self._subcategories:
            category = rng.choice(list(self._subcategories))
        sub = rng.choice(self._subcategories[category])
        found = self._by_subcategory[sub]
        if rng.random() < 0.05:  # a typo, or something the shop does not sell
            query = rng.choice((f"{sub[:-2]}x", f"vintage {sub}", f"{sub} {c.city.name}"))
            yield self._of("search", c, ev.Search, event_type="search", query=query.lower(),
                           results=0)
            return []
        query = sub if rng.random() < 0.6 else f"{rng.choice(found).brand} {sub}"
        yield self._of("search", c, ev.Search, event_type="search", query=query.lower(),
                       results=len(found))
        viewed = []
        for _ in range(rng.randint(1, 4)):
            p = rng.choice(found)
            viewed.append(p)
            yield self._of("search", c, ev.Search, event_type="view", product_id=p.id,
                           category=p.category, brand=p.brand)
        c.viewed = [*(p.id for p in viewed), *c.viewed][:8]
        return viewed

    def _checkout(self, c: _Customer) -> Process:
        """The order, its payments, its points, the stock it takes; then its delivery."""
        rng = self.rng
        lines = []
        for pid in c.cart:
            p = self._product[pid]
            if p.total == 0:
                continue  # sold out since it went into the cart: it stays there
            quantity = rng.randint(5, 10) if rng.random() < 0.01 else (
                1 if rng.random() < 0.8 else rng.randint(2, 3))  # the odd bulk order
            lines.append((p, min(quantity, p.total)))
        if not lines:
            return
        bought = {p.id for p, _ in lines}
        c.cart = [pid for pid in c.cart if pid not in bought]
        total = sum(q * (p.price - p.discount) for p, q in lines)
        order_id = f"order-{self._tag}-{next(self._ids)}"
        placed = self._of(
            "orders", c, ev.Order, order_id=order_id, order_date=self.now, status="created",
            total_amount=total / 100,
            lines=[ev.OrderLine(p.id, q, p.price / 100, p.discount / 100, p.category, p.brand)
                   for p, q in lines])
        order = placed[2]
        yield placed
        for method, amount, installments in self._payment_split(total):
            yield self._of("payments", c, ev.Payment, order_id=order_id, payment_date=self.now,
                           method=method, amount=amount / 100, installments=installments)
        points = max(1, total // 100)  # one point per whole unit spent
        c.points += points
        yield self._of("loyalty", c, ev.Loyalty, points_earned=points, reason=f"order {order_id}")
        for p, q in lines:
            self._take_stock(p, q)
            yield self._inventory_event(p)
        for pid in sorted(bought & set(c.wishlist)):
            if pid not in c.wishlist:  # another strand of this customer removed it meanwhile
                continue
            c.wishlist.remove(pid)
            yield self._of("wishlist", c, ev.Wishlist, product_id=pid, action="removed")
        self._sleep(self._fulfil(c, order, points), rng.randint(100, 800))

    def _payment_split(self, total: int) -> list[tuple[str, int, int]]:
        """(method, cents, installments) that add up to ``total`` cents exactly."""
        rng = self.rng
        method = _PAYMENTS[bisect(_PAYMENT_CUM, rng.random() * _PAYMENT_CUM[-1])][0]
        if method == "voucher" and total > 2000:  # a voucher covers part, a card the rest
            voucher = rng.randint(10, min(100, total // 200)) * 100
            return [("voucher", voucher, 1), ("credit_card", total - voucher, 1)]
        if method == "credit_card":
            installments = 1 if total < 10000 else rng.choice((1, 1, 2, 3, 4, 6, 10))
            return [(method, total, installments)]
        return [(method, total, 1)]

    def _status(self, c: _Customer, order: ev.Order, status: str) -> Item:
        """The same order, re-sent with its new status."""
        event = msgspec.structs.replace(order, event_id=f"orders-{self._tag}-{next(self._ids)}",
                                        event_time=self.now, status=status)
        return "orders", c.id, event

    def _fulfil(self, c: _Customer, order: ev.Order, points: int) -> Process:
        """Shipping and delivery; then, sometimes, a return or a review."""
        rng = self.rng
        if rng.random() < 0.02:  # cancelled before shipping: the points go back
            yield self._status(c, order, "canceled")
            taken = min(points, c.points)
            if taken:
                c.points -= taken
                yield self._of("loyalty", c, ev.Loyalty, points_redeemed=taken,
                               reason=f"canceled {order.order_id}")
            return
        yield self._status(c, order, "shipped")
        yield rng.randint(100, 1000)
        yield self._status(c, order, "delivered")
        c.mood = _clamp(c.mood + 0.03)
        if rng.random() < 0.08:
            yield rng.randint(20, 500)
            yield from self._return(c, order)
            if rng.random() < 0.5:
                yield rng.randint(10, 300)
                yield from self._review(c, order)
        elif rng.random() < 0.35:
            yield rng.randint(20, 800)
            yield from self._review(c, order)

    def _return(self, c: _Customer, order: ev.Order) -> Process:
        rng = self.rng
        line = rng.choice(order.lines)
        return_id = f"return-{self._tag}-{next(self._ids)}"
        c.mood = _clamp(c.mood - 0.2)
        yield self._of("returns", c, ev.Return, return_id=return_id, order_id=order.order_id,
                       product_id=line.product_id, reason=rng.choice(_RETURN_REASONS))
        taken = min(c.points, int(line.quantity * (line.price - line.discount)))
        if taken:
            c.points -= taken
            yield self._of("loyalty", c, ev.Loyalty, points_redeemed=taken,
                           reason=f"return {return_id}")
        p = self._product[line.product_id]  # the item goes back on a shelf
        store = rng.choice(list(p.stock))
        p.stock[store] += line.quantity
        yield self._inventory_event(p)

    def _review(self, c: _Customer, order: ev.Order) -> Process:
        rng = self.rng
        line = rng.choice(order.lines)
        p = self._product[line.product_id]
        # Shaped like Olist's real ratings (mostly 5s, then a tail of angry 1s), moved by mood.
        score = rng.random() + 0.08 * c.mood
        rating = 1 if score < 0.10 else 2 if score < 0.13 else 3 if score < 0.21 \
            else 4 if score < 0.40 else 5
        if rating <= 2:
            c.mood = _clamp(c.mood - 0.3)
        text = rng.choice(_REVIEWS[rating]).format(name=p.name)
        yield self._of("reviews", c, ev.Review, review_id=f"review-{self._tag}-{next(self._ids)}",
                       order_id=order.order_id, product_id=p.id, rating=rating, text=text)
        if rng.random() < 0.5:  # the loyalty programme rewards reviews
            c.points += 20
            yield self._of("loyalty", c, ev.Loyalty, points_earned=20, reason="review")

    def _wish(self) -> Process:
        rng = self.rng
        c = self._pick()
        if c.wishlist and (len(c.wishlist) >= WISHLIST_CAP or rng.random() < 0.35):
            pid = c.wishlist.pop(rng.randrange(len(c.wishlist)))
            yield self._of("wishlist", c, ev.Wishlist, product_id=pid, action="removed")
            return
        candidates = [pid for pid in c.viewed if pid not in c.wishlist]
        pid = rng.choice(candidates) if candidates else rng.choice(self.products).id
        if pid in c.wishlist:
            return
        c.wishlist.append(pid)
        yield self._of("wishlist", c, ev.Wishlist, product_id=pid, action="added")

    def _loyalty(self) -> Process:
        rng = self.rng
        c = self._pick()
        if c.points >= 500 and rng.random() < 0.6:
            spent = 500 * rng.randint(1, min(4, c.points // 500))
            c.points -= spent
            yield self._of("loyalty", c, ev.Loyalty, points_redeemed=spent, reason="redemption")
        else:
            bonus = rng.choice((50, 100, 200))
            c.points += bonus
            yield self._of("loyalty", c, ev.Loyalty, points_earned=bonus,
                           reason=rng.choice(("birthday", "campaign", "app check-in")))

    # -- the world around them -----------------------------------------------------------------
    def _move(self) -> Process:
        """A few location pings as the customer moves around their city."""
        rng = self.rng
        c = self._pick()
        for i in range(rng.randint(1, 3)):
            if i:
                yield rng.randint(5, 60)  # a while later, a little further
            self._walk(c)
            yield self._of("location", c, ev.Location, latitude=round(c.lat, 6),
                           longitude=round(c.lon, 6), city=c.city.name)

    def _walk(self, c: _Customer) -> None:
        rng, city = self.rng, c.city
        stores = _STORES_IN[city.name]
        if stores and rng.random() < 0.08:  # drops into (or passes by) one of the shop's stores
            s = rng.choice(stores)
            c.lat = s.lat + rng.uniform(-0.001, 0.001)
            c.lon = s.lon + rng.uniform(-0.001, 0.001)
            return
        c.lat += rng.uniform(-0.004, 0.004)
        c.lon += rng.uniform(-0.004, 0.004)
        if abs(c.lat - city.lat) > 0.1 or abs(c.lon - city.lon) > 0.1:  # stays in town
            c.lat = (c.lat + city.lat) / 2
            c.lon = (c.lon + city.lon) / 2

    def _observe_weather(self) -> Process:
        rng = self.rng
        c = self._pick()
        w = self._weather_in(c.city)
        if rng.random() < 0.25:
            cooler = 2.0 if w.coming in ("rain", "storm") else 0.0
            yield self._of("weather", c, ev.Weather, event_type="forecast", condition=w.coming,
                           temperature=round(w.temperature - cooler + rng.uniform(-1, 1), 1))
        else:
            yield self._of("weather", c, ev.Weather, event_type="observation",
                           condition=w.condition,
                           temperature=round(w.temperature + rng.uniform(-0.7, 0.7), 1))

    def _weather_in(self, city: City) -> _Weather:
        """The city's weather, a step further: temperature drifts, conditions come as forecast."""
        rng = self.rng
        w = self._weather[city.name]
        w.temperature += rng.uniform(-0.4, 0.4) + 0.05 * (city.temperature - w.temperature)
        if rng.random() < 0.06:
            w.condition = w.coming
            w.coming = _CONDITIONS[bisect(_CONDITION_CUM, rng.random() * _CONDITION_CUM[-1])]
            if w.condition in ("rain", "storm"):
                w.temperature -= 2.0
        return w

    def _post(self) -> Process:
        rng = self.rng
        c = self._pick()
        kind = rng.choice(("post", "post", "mention", "mention", "like", "like", "like"))
        sentiment = round(_clamp(c.mood + rng.uniform(-0.4, 0.4)), 2)
        tone = 1 if sentiment > 0.25 else -1 if sentiment < -0.25 else 0
        p = self._product[c.viewed[0]] if c.viewed else rng.choice(self.products)
        text = rng.choice(_SOCIAL[kind][tone]).format(name=p.name, category=p.category)
        yield self._of("social", c, ev.Social, event_type=kind, details=text,
                       sentiment=sentiment)

    def _nearby_event(self) -> Process:
        rng = self.rng
        c = self._pick()
        options = self._happenings[c.city.name]
        i = rng.randrange(len(options))
        if options[i].starts_at <= self.now:  # it happened: the city announces something new
            options[i] = self._new_happening(c.city)
        h = options[i]
        yield self._of("physical_events", c, ev.PhysicalEvent, venue_event_id=h.id, kind=h.kind,
                       name=h.name, venue=h.venue, starts_at=h.starts_at,
                       distance_km=round(_km(c.lat, c.lon, h.lat, h.lon), 2))

    def _new_happening(self, city: City) -> _Happening:
        rng = self.rng
        starts_at = self.now + timedelta(hours=rng.randint(6, 240))
        hid = f"venue-{self._tag}-{next(self._ids)}"
        stores = _STORES_IN[city.name]
        if stores and rng.random() < 0.15:
            s = rng.choice(stores)
            return _Happening(hid, "store_opening", f"{s.name} reopening party", s.name,
                              s.lat, s.lon, starts_at)
        kind = rng.choice(tuple(_HAPPENINGS))
        return _Happening(hid, kind, rng.choice(_HAPPENINGS[kind]),
                          rng.choice(_VENUES[city.name]), city.lat + rng.uniform(-0.06, 0.06),
                          city.lon + rng.uniform(-0.06, 0.06), starts_at)


def generate(customers: int, seed: int, start: datetime, *,
             tick: timedelta = FLAT_OUT_TICK) -> Iterator[Item]:
    """The endless, deterministic event sequence of a simulated shop: (stream, key, event).

    The same arguments give the same events, ids and times. Event ``n`` (counting
    from 0) is stamped ``start + n * tick``, except the deliberately late ones and
    the duplicates, which repeat an earlier event exactly.
    """
    return iter(Simulation(customers, seed, start, tick))


# -- producing to Kafka -----------------------------------------------------------------------

@dataclass(frozen=True)
class SimulationReport:
    """What one :func:`simulate` run produced."""

    per_stream: dict[str, int]  # messages per stream, duplicates included
    duplicates: int
    late: int
    elapsed: float  # seconds

    @property
    def events(self) -> int:
        return sum(self.per_stream.values())

    @property
    def rate(self) -> float:
        """Events per second achieved."""
        return self.events / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        streams = sum(1 for n in self.per_stream.values() if n)
        return (f"simulated {self.events:,} events on {streams} streams in {self.elapsed:.1f}s "
                f"({self.rate:,.0f} events/s; {self.duplicates:,} duplicates, "
                f"{self.late:,} late)")


def simulate(settings: Settings, *, customers: int, rate: float, duration: float | None = None,
             events: int | None = None, seed: int = 42, progress: bool = True,
             start: datetime | None = None, stop: threading.Event | None = None,
             simulation: Simulation | None = None) -> SimulationReport:
    """Produce the simulated shop's streams to Kafka, ``rate`` events per second (0: flat out).

    Stops after ``duration`` seconds or ``events`` events; with neither, when ``stop``
    is set or on Ctrl-C. Topics are created first. Event times start at ``start``
    (default: now) and advance ``1/rate`` seconds per event, so that at real-time
    pacing they track the wall clock. ``simulation`` (from :func:`backfill`) continues
    that world, with its customers and stock, on this clock; ``customers`` and ``seed``
    are then its own.
    """
    if rate < 0:
        raise ConfigError(f"rate={rate} must be 0 (flat out) or positive")
    if events is not None and events < 0:
        raise ConfigError(f"events={events} must not be negative")
    start = start or datetime.now(timezone.utc)
    tick = timedelta(seconds=1 / rate) if rate > 0 else FLAT_OUT_TICK
    if simulation is None:
        sim = Simulation(customers, seed, start, tick)
    else:
        sim = simulation
        sim.retime(max(start, sim.now), tick)
        sim.imperfect = True
    total = events if events is not None else (
        int(duration * rate) if duration is not None and rate > 0 else None)
    return _produce(settings, sim, rate=rate, events=events, duration=duration, stop=stop,
                    bar=_progress_bar(total) if progress else None)


def history(customers: int, seed: int = 42, *, end: datetime | None = None,
            days: float = BACKFILL_DAYS, events: int | None = None) -> Simulation:
    """A simulation of the ``days`` before ``end`` (default now) in ``events`` events
    (default :data:`BACKFILL_EVENTS_PER_CUSTOMER` per customer): customers sign up along
    the way, and no event is late or duplicated, so every stream is in event-time order."""
    if days <= 0:
        raise ConfigError(f"days={days} must be positive")
    events = BACKFILL_EVENTS_PER_CUSTOMER * customers if events is None else events
    if events < 1:
        raise ConfigError(f"events={events}: a history needs at least one event")
    end = end or datetime.now(timezone.utc)
    sim = Simulation(customers, seed, end - timedelta(days=days), timedelta(days=days) / events,
                     signups_over=events)
    sim.imperfect = False
    return sim


def backfill(settings: Settings, *, customers: int, days: float = BACKFILL_DAYS,
             events: int | None = None, seed: int = 42, end: datetime | None = None,
             store: EntityStore | None = None, stop: threading.Event | None = None
             ) -> Simulation:
    """Produce :func:`history` to Kafka as fast as it takes it; returns the simulation,
    to be continued live with ``simulate(settings, ..., simulation=it)``.

    With ``store`` (a running pipeline's), returns once the store has caught up: every
    customer is there, the newest ``last_seen`` is the history's end, and no change came
    for :data:`BACKFILL_QUIET_S` (or after :data:`BACKFILL_WAIT_S`, logged).
    """
    events = BACKFILL_EVENTS_PER_CUSTOMER * customers if events is None else events
    sim = history(customers, seed, end=end, days=days, events=events)
    report = _produce(settings, sim, rate=0, events=events, duration=None, stop=stop,
                      bar=None)
    if store is not None and not (stop is not None and stop.is_set()):
        last = sim.now - sim.tick  # the newest event time of the history
        _wait_caught_up(store, sim.customers, last - timedelta(hours=1), stop)
    log.info("backfilled %s", report.summary())
    return sim


def _wait_caught_up(store: EntityStore, customers: int, seen_by: datetime,
                    stop: threading.Event | None) -> None:
    def newest() -> datetime | None:
        return max((e["last_seen"] for e in store.entities("customer") if "last_seen" in e),
                   default=None)

    deadline = time.monotonic() + BACKFILL_WAIT_S
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        changed = store.updated_at
        if store.count("customer") >= customers and (newest() or seen_by) >= seen_by \
                and changed and time.time() - changed >= BACKFILL_QUIET_S:
            return
        _wait(0.2, stop)
    if not (stop is not None and stop.is_set()):
        log.warning("the dataflow had not caught up with the backfill after %.0f s",
                    BACKFILL_WAIT_S)


def _produce(settings: Settings, sim: Simulation, *, rate: float, events: int | None,
             duration: float | None, stop: threading.Event | None, bar: Any
             ) -> SimulationReport:
    catalogue = Catalogue(settings.topic_prefix)
    mixed = settings.simulate_ingest  # every stream to the mixed ingest topic (dev broker)
    create_topics(settings, [*catalogue.topics, catalogue.dlq_topic,
                             *([catalogue.ingest_topic] if mixed else [])])
    topics = {s.name: catalogue.ingest_topic if mixed else s.topic for s in catalogue.streams}
    # On the ingest topic a record names its stream (Catalogue's envelope): a last field.
    named = {s.name: b',"stream":"' + s.name.encode() + b'"}' for s in catalogue.streams}
    producer = _producer(settings, rate)
    failures: list[BaseException] = []
    counts = dict.fromkeys(topics, 0)
    duplicates, late = sim.duplicates, sim.late

    began = time.monotonic()
    deadline = began + duration if duration is not None else math.inf
    limit = events if events is not None else _FAR_FUTURE
    n = 0
    items = iter(sim)
    try:
        while n < limit:
            if stop is not None and stop.is_set():
                break
            now = time.monotonic()
            if now >= deadline:
                break
            if rate > 0:
                # An event due at or after the deadline is not sent, however early the
                # loop gets here: a run of ``duration`` s sends at most duration x rate
                # events (CI sent 202 for 0.5 s at 400/s when this was checked before the
                # wait only: event 201 was due at 0.5025 s).
                if began + n / rate >= deadline:
                    break
                # Sleeping is coarse: wait only when a millisecond ahead of the schedule;
                # the schedule is absolute, so the events in between still come on time.
                ahead = began + n / rate - now
                if ahead > 0.001 and _wait(ahead, stop):
                    break
            stream, key, event = next(items)
            value = encode(event)
            if mixed:
                value = value[:-1] + named[stream]
            producer.send(topics[stream], value=value,
                          key=key.encode()).add_errback(failures.append)
            counts[stream] += 1
            n += 1
            if bar is not None and not n & 1023:
                bar.update(1024)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends an open-ended run: what was produced is still flushed
    finally:
        _close(producer)
        if bar is not None:
            bar.update(n - bar.n)
            bar.close()
    report = SimulationReport(counts, sim.duplicates - duplicates, sim.late - late,
                              time.monotonic() - began)
    if failures:
        raise BrokerError(f"{len(failures)} of {n} events could not be produced to "
                          f"{settings.bootstrap}: {failures[0]}")
    if bar is not None:
        print(report.summary(), flush=True)
    return report


def _producer(settings: Settings, rate: float) -> KafkaProducer:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    from kafka.partitioner.default import DefaultPartitioner, murmur2

    class CachedMurmur2(DefaultPartitioner):
        """The default partitioner (murmur2 of the key) remembering each key's hash: the
        simulator sends the same few thousand keys over and over, and pure-Python murmur2
        is a good share of kafka-python's per-message cost."""

        def __init__(self) -> None:
            self._hashes: dict[bytes, int] = {}

        def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                      serialized_value: Any, cluster: Any) -> int:
            if serialized_key is None:
                return super().partition(topic, key, serialized_key, value, serialized_value,
                                         cluster)
            h = self._hashes.get(serialized_key)
            if h is None:
                h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
            partitions = sorted(cluster.partitions_for_topic(topic))
            return partitions[h % len(partitions)]

    # Every new batch wakes kafka-python's sender thread, and the two threads then fight
    # over the GIL: flat out, a long linger (big batches) nearly doubles throughput.
    # Paced runs linger as long as the broker needs batches to keep up, and no longer
    # (paced_linger_ms: 20 ms at 2k events/s, 50 ms at 10k; it was rate / 100, 100 ms at 10k).
    linger_ms = 200 if rate == 0 else paced_linger_ms(rate)
    if importlib.util.find_spec("crc32c") is None:
        log.info("kafka-python checksums record batches in pure Python: `pip install crc32c` "
                 "about doubles the simulator's throughput")
    try:
        return KafkaProducer(**settings.kafka_python(), linger_ms=linger_ms,
                             batch_size=1024 * 1024, partitioner=CachedMurmur2(),
                             client_id="c360-simulator")
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap}: {exc}") from exc


def _close(producer: KafkaProducer) -> None:
    from kafka.errors import KafkaError

    try:
        producer.flush(timeout=60)
    except KafkaError as exc:
        raise BrokerError(f"could not flush the simulated events: {exc}") from exc
    finally:
        producer.close(timeout=5)


def _wait(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep, waking early when ``stop`` is set; True when it was."""
    if stop is not None:
        return stop.wait(seconds)
    time.sleep(seconds)
    return False


def _progress_bar(total: int | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, desc="simulate", mininterval=0.5,
                smoothing=0.1)
