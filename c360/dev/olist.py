"""Replaying the real Olist e-commerce dataset as c360 events.

Olist (Brazilian E-Commerce Public Dataset by Olist, CC BY-NC-SA 4.0, non-commercial;
credit Olist) is a set of CSV files; ``shared/data/olist/SOURCE.md`` says which subset
is here. This module reads them once (:func:`load`), turns them into c360 events in
event-time order (:func:`events`) and produces them to Kafka (:func:`replay`).
:func:`batch_metrics` computes the per-customer numbers the dataflow must reproduce,
in plain pandas and independently of the event code.

How Olist maps onto the streams:

* the person is Olist's ``customer_unique_id`` (Olist's ``customer_id`` is one per order);
* ``products``: one event per product row, all emitted first (at the earliest event time);
  ``category`` is the English name where the translation file has one;
* ``customer_details``: one per person, just before their first order, with the address
  (city, state, zip prefix) of that order; Olist has no name, e-mail or phone;
* ``location``: one per person whose zip prefix is in the partial geolocation table, at
  the mean latitude/longitude of that prefix, right after their details;
* ``orders``: one per order at ``order_purchase_timestamp``, one line per item row
  (quantity 1, the item price, the product's ``category`` as on the products stream);
  ``total_amount`` is the sum of price + freight. Lines carry no ``brand``: Olist has
  none. The only candidate, ``seller_id``, is a marketplace shop that sells many makers'
  goods (and one product is sold by several sellers), so "brand affinity" to a seller
  hash would be a made-up signal; ``brand_affinity`` stays empty on Olist;
* ``payments``: one per payment row, at ``order_approved_at`` (else the purchase time);
* ``reviews``: one per review row at ``review_creation_date``. ``review_id`` is not unique
  (one review can cover several orders), so the event id is ``review_id:order_id``.
  ``product_id`` is filled only when the order holds a single distinct product.

Olist timestamps are naive local times (Brazil); the schemas need aware datetimes, so
UTC is attached with the wall values unchanged.

Where the data comes from and what the directory must hold (``docs/olist.md`` says more):
the public Kaggle release "Brazilian E-Commerce Public Dataset by Olist"
(https://www.kaggle.com/datasets/olistbr/brazilian-ecommerce) unzipped as is: plain
``.csv`` files side by side. The copy shipped in ``shared/data/olist`` is a consistent
27% subset, gzipped (``.csv.gz``), with the geolocation table under ``partial/``. Each
table is looked up as :data:`_FILES` names it, then plain ``.csv``, then at the top level
(Kaggle's layout) for the geolocation. Files this module reads:

================================================ =============================================
file                                             columns used
================================================ =============================================
olist_orders_dataset                             order_id, customer_id, order_status,
                                                 order_purchase_timestamp, order_approved_at
olist_customers_dataset                          customer_id, customer_unique_id,
                                                 customer_zip_code_prefix, customer_city,
                                                 customer_state
olist_order_items_dataset                        order_id, order_item_id, product_id, price,
                                                 freight_value
olist_order_payments_dataset                     order_id, payment_sequential, payment_type,
                                                 payment_installments, payment_value
olist_order_reviews_dataset                      review_id, order_id, review_score,
                                                 review_comment_title, review_comment_message,
                                                 review_creation_date
olist_products_dataset                           product_id, product_category_name
product_category_name_translation                product_category_name,
                                                 product_category_name_english
olist_geolocation_dataset                        geolocation_zip_code_prefix,
                                                 geolocation_lat, geolocation_lng
================================================ =============================================
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd

from c360.config import Settings
from c360.errors import BrokerError, ConfigError, DataError
from c360.model import events as ev

# File name and the columns this module reads (with the dtype of the string-like ones).
_FILES: dict[str, tuple[str, dict[str, str]]] = {
    "orders": ("olist_orders_dataset.csv.gz", {
        "order_id": "str", "customer_id": "str", "order_status": "str",
        "order_purchase_timestamp": "str", "order_approved_at": "str"}),
    "customers": ("olist_customers_dataset.csv.gz", {
        "customer_id": "str", "customer_unique_id": "str", "customer_zip_code_prefix": "str",
        "customer_city": "str", "customer_state": "str"}),
    "items": ("olist_order_items_dataset.csv.gz", {
        "order_id": "str", "order_item_id": "int64", "product_id": "str",
        "price": "float64", "freight_value": "float64"}),
    "payments": ("olist_order_payments_dataset.csv.gz", {
        "order_id": "str", "payment_sequential": "int64", "payment_type": "str",
        "payment_installments": "int64", "payment_value": "float64"}),
    "reviews": ("olist_order_reviews_dataset.csv.gz", {
        "review_id": "str", "order_id": "str", "review_score": "int64",
        "review_comment_title": "str", "review_comment_message": "str",
        "review_creation_date": "str"}),
    "products": ("olist_products_dataset.csv.gz", {
        "product_id": "str", "product_category_name": "str"}),
    "categories": ("product_category_name_translation.csv.gz", {
        "product_category_name": "str", "product_category_name_english": "str"}),
    "geolocation": ("partial/olist_geolocation_dataset.csv.gz", {
        "geolocation_zip_code_prefix": "str", "geolocation_lat": "float64",
        "geolocation_lng": "float64"}),
}

_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# Tie-break at equal event time: catalogue first, then who the customer is, then what they do.
_PRIORITY = {"products": 0, "customer_details": 1, "location": 2, "orders": 3, "payments": 4,
             "reviews": 5}


@dataclass(frozen=True)
class OlistData:
    """The Olist tables, read once. Id and text columns are strings."""

    data_dir: Path
    orders: pd.DataFrame
    customers: pd.DataFrame
    items: pd.DataFrame
    payments: pd.DataFrame
    reviews: pd.DataFrame
    products: pd.DataFrame
    categories: pd.DataFrame
    geolocation: pd.DataFrame


@dataclass(frozen=True)
class ReplayReport:
    """What a replay produced: events per stream and how long it took."""

    counts: dict[str, int]
    elapsed: float  # seconds, from the first event produced to the final flush
    data_dir: Path
    topic_prefix: str
    load_seconds: float = 0.0  # reading the files and building the events

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        """Events per second while producing."""
        return self.events / self.elapsed if self.elapsed > 0 else float("inf")

    def __str__(self) -> str:
        per = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
        return (f"replayed {self.events:,} Olist events in {self.elapsed:.1f}s "
                f"({self.rate:,.0f} events/s) to {self.topic_prefix}*: {per}")


def _check_dir(data_dir: Path) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"Olist data directory not found: {data_dir} (expected a directory holding "
            f"olist_orders_dataset.csv (or .csv.gz) and the other Olist files of the Kaggle "
            f"download; pass --data DIR or set C360_OLIST_DIR)")
    return data_dir


def _candidates(name: str) -> list[str]:
    """Where a table may be: as shipped here (gzipped, geolocation under ``partial/``), or
    as in the Kaggle download (plain ``.csv``, every file at the top level)."""
    plain = name.removesuffix(".gz")
    names = [name, plain]
    if "/" in name:
        top = name.rsplit("/", 1)[1]
        names += [top, top.removesuffix(".gz")]
    return names


def _path(data_dir: Path, table: str) -> Path:
    name = _FILES[table][0]
    for candidate in _candidates(name):
        if (data_dir / candidate).is_file():
            return data_dir / candidate
    plain = name.removesuffix(".gz")
    raise DataError(f"Olist file missing: {data_dir / name} (expected {plain} or {plain}.gz "
                    f"in the Olist data directory {data_dir}; see docs/olist.md)")


def _read(data_dir: Path, table: str) -> pd.DataFrame:
    columns = _FILES[table][1]
    path = _path(data_dir, table)
    try:
        df = pd.read_csv(path, usecols=lambda c: c in columns, dtype=columns)
    except (ValueError, OSError, EOFError) as exc:  # bad gzip, bad CSV, bad dtype
        raise DataError(f"cannot read Olist file {path}: {exc}") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"Olist file {path} lacks column(s) {', '.join(missing)}")
    return df


def load(data_dir: Path) -> OlistData:
    """Read every Olist table this module uses from ``data_dir`` (.csv or .csv.gz)."""
    data_dir = _check_dir(data_dir)
    return OlistData(data_dir=data_dir, **{t: _read(data_dir, t) for t in _FILES})


def sample(every: int, data_dir: Path | None = None) -> tuple[Path, list[str]]:
    """Every ``every``-th Olist person (``customer_unique_id``, sorted) with all their rows,
    written as the Kaggle CSV files in a new temporary directory, so that :func:`replay` and
    :func:`load` read it like the real download; and the people taken.

    Why: a quarter of Olist keeps its real customers and their histories whole in a quarter
    of the replay's time (notebooks 03 and 08).
    """
    import tempfile

    if every < 1:
        raise ConfigError(f"every={every} must be 1 (everyone) or more")
    data = load(Path(data_dir) if data_dir is not None else Settings.from_env().olist_dir)
    people = sorted(data.customers["customer_unique_id"].unique())[::every]
    customers = data.customers[data.customers["customer_unique_id"].isin(set(people))]
    orders = data.orders[data.orders["customer_id"].isin(set(customers["customer_id"]))]
    mine = set(orders["order_id"])
    items = data.items[data.items["order_id"].isin(mine)]
    tables = {
        "customers": customers, "orders": orders, "order_items": items,
        "order_payments": data.payments[data.payments["order_id"].isin(mine)],
        "order_reviews": data.reviews[data.reviews["order_id"].isin(mine)],
        "products": data.products[data.products["product_id"].isin(set(items["product_id"]))],
        "geolocation": data.geolocation,
    }
    out = Path(tempfile.mkdtemp(prefix=f"c360-olist-1-in-{every}-"))
    for name, table in tables.items():
        table.to_csv(out / f"olist_{name}_dataset.csv", index=False)
    data.categories.to_csv(out / "product_category_name_translation.csv", index=False)
    return out, people


def _utc(values: pd.Series) -> list[datetime]:
    """Naive Olist wall times as aware datetimes: UTC attached, wall values unchanged."""
    parsed = pd.to_datetime(values, format=_TIME_FORMAT).dt.tz_localize("UTC")
    return parsed.array.to_pydatetime().tolist()  # datetime.datetime, not pd.Timestamp


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _cols(df: pd.DataFrame, *names: str) -> Iterator[tuple]:
    """Rows of some columns as tuples of plain Python values (fast; no iterrows)."""
    return zip(*(df[n].tolist() for n in names), strict=True)


def _build(data: OlistData) -> list[tuple[str, str, ev.Event]]:
    """Every event, sorted by event time (stable, with :data:`_PRIORITY` on ties)."""
    rows: list[tuple[datetime, int, str, str, ev.Event]] = []

    # Whose is each order: Olist's per-order customer_id -> the person (customer_unique_id).
    orders = data.orders.merge(data.customers, on="customer_id", how="left", validate="1:1")
    if orders["customer_unique_id"].isna().any():
        bad = orders.loc[orders["customer_unique_id"].isna(), "order_id"].iloc[0]
        raise DataError(f"order {bad} has no customer in {_FILES['customers'][0]}")
    # Python datetimes stay in lists: a DataFrame column would turn them into Timestamps.
    bought = _utc(orders["order_purchase_timestamp"])
    approved = orders["order_approved_at"].fillna(orders["order_purchase_timestamp"])
    person = dict(_cols(orders, "order_id", "customer_unique_id"))
    paid_at = dict(zip(orders["order_id"].tolist(), _utc(approved), strict=True))

    # Order lines, in item order, with the product's category as the products stream has it.
    category = categories(data)
    items = data.items.sort_values(["order_id", "order_item_id"], kind="stable")
    lines: defaultdict[str, list[ev.OrderLine]] = defaultdict(list)
    totals: defaultdict[str, float] = defaultdict(float)
    for oid, pid, price, freight in _cols(items, "order_id", "product_id", "price",
                                          "freight_value"):
        lines[oid].append(ev.OrderLine(product_id=pid, quantity=1, price=price,
                                       category=category.get(pid, "")))
        totals[oid] += price + freight

    prio = _PRIORITY["orders"]
    for (oid, cuid, status), t in zip(
            _cols(orders, "order_id", "customer_unique_id", "order_status"), bought,
            strict=True):
        rows.append((t, prio, "orders", cuid, ev.Order(
            event_id=f"order:{oid}", event_time=t, customer_id=cuid, order_id=oid, order_date=t,
            status=_str(status), total_amount=round(totals.get(oid, 0.0), 2),
            lines=lines.get(oid, []))))

    # Customer details and location: once per person, with the address of their first order.
    orders["_n"] = range(len(orders))
    orders["_t"] = pd.to_datetime(orders["order_purchase_timestamp"], format=_TIME_FORMAT)
    first = orders.sort_values(["_t", "order_id"], kind="stable").drop_duplicates(
        "customer_unique_id")
    geo = data.geolocation.groupby("geolocation_zip_code_prefix")[
        ["geolocation_lat", "geolocation_lng"]].mean()
    lat, lng = geo["geolocation_lat"].to_dict(), geo["geolocation_lng"].to_dict()
    p_details, p_location = _PRIORITY["customer_details"], _PRIORITY["location"]
    for cuid, zip_, city, state, n in _cols(first, "customer_unique_id",
                                            "customer_zip_code_prefix", "customer_city",
                                            "customer_state", "_n"):
        t = bought[n]
        zip_, city = _str(zip_), _str(city)
        # Olist has no PII beyond the address, and every address is in Brazil.
        address = ev.Address(city=city, state=_str(state), zip=zip_, country="BR")
        rows.append((t, p_details, "customer_details", cuid, ev.CustomerDetails(
            event_id=f"customer:{cuid}", event_time=t, customer_id=cuid, address=address)))
        if zip_ in lat:
            rows.append((t, p_location, "location", cuid, ev.Location(
                event_id=f"location:{cuid}", event_time=t, customer_id=cuid,
                event_type="address", latitude=lat[zip_], longitude=lng[zip_], city=city)))

    # Payments: no timestamp of their own; the order's approval (else purchase) time.
    prio = _PRIORITY["payments"]
    for oid, seq, method, installments, amount in _cols(
            data.payments, "order_id", "payment_sequential", "payment_type",
            "payment_installments", "payment_value"):
        cuid = _owner(person, oid, "payments")
        t = paid_at[oid]
        rows.append((t, prio, "payments", cuid, ev.Payment(
            event_id=f"payment:{oid}:{seq}", event_time=t, customer_id=cuid, order_id=oid,
            payment_date=t, method=_str(method), amount=amount, installments=installments)))

    # Reviews are of orders; the product is known only when the order has one distinct product.
    single = {}
    for oid, order_lines in lines.items():
        products = {line.product_id for line in order_lines}
        if len(products) == 1:
            single[oid] = products.pop()
    prio = _PRIORITY["reviews"]
    rev = data.reviews
    for (rid, oid, score, title, message), t in zip(
            _cols(rev, "review_id", "order_id", "review_score", "review_comment_title",
                  "review_comment_message"), _utc(rev["review_creation_date"]), strict=True):
        cuid = _owner(person, oid, "reviews")
        text = "\n".join(s for s in (_str(title).strip(), _str(message).strip()) if s)
        rows.append((t, prio, "reviews", cuid, ev.Review(
            event_id=f"review:{rid}:{oid}", event_time=t, customer_id=cuid, review_id=rid,
            order_id=oid, product_id=single.get(oid, ""), rating=score, text=text)))

    rows.sort(key=lambda r: (r[0], r[1]))  # stable: file order within a tie

    # Products: the whole catalogue, at the earliest event time, before anything else.
    start = rows[0][0] if rows else datetime(1970, 1, 1, tzinfo=timezone.utc)
    out: list[tuple[str, str, ev.Event]] = []
    for pid in data.products["product_id"].tolist():
        out.append(("products", pid, ev.Product(
            event_id=f"product:{pid}", event_time=start, product_id=pid,
            category=category.get(pid, ""))))
    out.extend((s, k, e) for _, _, s, k, e in rows)
    return out


def categories(data: OlistData) -> dict[str, str]:
    """product_id -> its category: the English name where the translation file has one,
    else Olist's Portuguese name (2 categories, 13 products, lack a translation), else ""
    (610 products have no category)."""
    english = dict(_cols(data.categories, "product_category_name",
                         "product_category_name_english"))
    out: dict[str, str] = {}
    for pid, cat in _cols(data.products, "product_id", "product_category_name"):
        cat = _str(cat)
        out[pid] = _str(english.get(cat)) or cat
    return out


def _owner(person: dict[str, str], order_id: str, table: str) -> str:
    try:
        return person[order_id]
    except KeyError:
        raise DataError(f"{table} row refers to order {order_id}, which is not in "
                        f"{_FILES['orders'][0]}") from None


def events(data: OlistData) -> Iterator[tuple[str, str, ev.Event]]:
    """``(stream name, key, event)`` for every Olist row, in non-decreasing event time.

    The key is the entity id: ``customer_unique_id``, or ``product_id`` for products.
    """
    yield from _build(data)


def replay(settings: Settings, *, data_dir: Path | None = None, speed: float = 0.0,
           progress: bool = True) -> ReplayReport:
    """Produce the Olist events to the stream topics of ``settings`` in event-time order.

    ``speed`` is event-time seconds per wall-clock second (0: as fast as possible); when
    ahead of that pace the replay sleeps. Creates the topics first (existing ones are kept).
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    from tqdm import tqdm

    from c360.topics.admin import create_topics

    if speed < 0:
        raise ConfigError(f"speed must be 0 (as fast as possible) or positive, not {speed}")
    settings.require_bootstrap()
    started = time.monotonic()
    data = load(Path(data_dir) if data_dir is not None else settings.olist_dir)
    todo = _build(data)
    load_seconds = time.monotonic() - started

    cat = ev.Catalogue(settings.topic_prefix)
    create_topics(settings, [*cat.input_topics, cat.dlq_topic])
    topics = {s.name: s.topic for s in cat.streams}
    try:
        producer = KafkaProducer(**settings.kafka_python(), client_id="c360-olist-replay",
                                 linger_ms=20, batch_size=256 * 1024)
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap}: {exc}") from exc

    errors: list[BaseException] = []
    counts: Counter[str] = Counter()
    encode = ev.encode
    t0 = time.monotonic()
    first_time = todo[0][2].event_time.timestamp() if todo else 0.0
    bar = tqdm(todo, total=len(todo), desc="olist replay", unit="ev", unit_scale=True,
               disable=not progress, mininterval=0.5)
    try:
        for stream, key, event in bar:
            if speed > 0:
                ahead = (event.event_time.timestamp() - first_time) / speed - (
                    time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            producer.send(topics[stream], key=key.encode(), value=encode(event)).add_errback(
                errors.append)
            counts[stream] += 1
        producer.flush()
    except KafkaError as exc:
        raise BrokerError(f"producing Olist events to {settings.bootstrap} failed: {exc}") from exc
    finally:
        bar.close()
        producer.close(timeout=10)
    elapsed = time.monotonic() - t0
    if errors:
        raise BrokerError(f"{len(errors)} of {len(todo)} Olist events were not acknowledged "
                          f"by {settings.bootstrap}; first error: {errors[0]}")
    report = ReplayReport(counts={s: counts[s] for s in _PRIORITY if counts[s]},
                          elapsed=elapsed, data_dir=data.data_dir,
                          topic_prefix=settings.topic_prefix, load_seconds=load_seconds)
    if progress:
        tqdm.write(str(report))
    return report


def batch_metrics(data_dir: Path | None = None) -> pd.DataFrame:
    """Per-person metrics straight from the CSV files, in plain pandas.

    One row per ``customer_unique_id`` (index ``customer_id``): ``order_count`` (distinct
    orders), ``total_spent`` (sum of payment_value over all their orders, any status,
    rounded to cents), ``items_bought`` (order item rows), ``avg_review_score`` (mean
    review_score over the reviews of their orders; NaN when none) and ``last_order_at``
    (latest purchase timestamp, naive as in the files).
    """
    data_dir = _check_dir(Path(data_dir) if data_dir is not None else Settings.from_env().olist_dir)
    orders = _read(data_dir, "orders").merge(
        _read(data_dir, "customers")[["customer_id", "customer_unique_id"]], on="customer_id")
    orders["order_purchase_timestamp"] = pd.to_datetime(orders["order_purchase_timestamp"],
                                                        format=_TIME_FORMAT)
    owner = orders[["order_id", "customer_unique_id"]]

    per = orders.groupby("customer_unique_id").agg(
        order_count=("order_id", "nunique"), last_order_at=("order_purchase_timestamp", "max"))
    items = _read(data_dir, "items").merge(owner, on="order_id")
    payments = _read(data_dir, "payments").merge(owner, on="order_id")
    reviews = _read(data_dir, "reviews").merge(owner, on="order_id")

    per["items_bought"] = items.groupby("customer_unique_id").size()
    per["total_spent"] = payments.groupby("customer_unique_id")["payment_value"].sum()
    per["avg_review_score"] = reviews.groupby("customer_unique_id")["review_score"].mean()
    per["items_bought"] = per["items_bought"].fillna(0).astype("int64")
    per["total_spent"] = per["total_spent"].fillna(0.0).round(2)
    per.index.name = "customer_id"
    return per[["order_count", "total_spent", "items_bought", "avg_review_score",
                "last_order_at"]].sort_index()


# -- the batch oracle: every exported column and every global window, in plain pandas ----------
#
# What the dataflow must give at the end of a bounded run of the Olist replay, computed
# from the CSV files alone: no c360 event, fold, window or segment code is used, only the
# definitions (docs/analytics.md, c360.entity.windows.RELEVANCE, c360.entity.segments,
# c360.entity.rules' churn score) restated here. ``tests/test_olist.py`` and
# ``benchmarks/event_time_oracle.py``
# compare a replay's export and global windows with it.

_SPEND_DAYS = (1, 7, 30)
_ORDER_DAYS = (1, 7, 30, 90)
_EVICT_AFTER = timedelta(days=90)  # last visit's detail dropped after this long quiet
_DORMANT_AFTER = timedelta(days=30)
_NEW_DAYS = 30  # "new": first seen at most this many days before the day of the data
_RECENT_ORDERS, _RECENT_ORDERS_AGE = 10, timedelta(days=90)
_RECENT_LOCATIONS_AGE = timedelta(days=30)
_DAILY_DAYS, _MONTHS = 90, 24  # days older than 90 roll up into months; 24 months kept
_AFFINITY_HALF_LIFE_S, _AFFINITY_KEEP = 14 * 86_400.0, 12
_TEXT_MAX = 280

# Columns of the export the oracle computes, by kind (the report groups them so).
PLAIN_COLUMNS = ("order_count", "items_bought", "orders_value", "last_order_at", "total_spent",
                 "payment_count", "lifetime_value", "review_count", "avg_review_score",
                 "first_seen", "last_seen", "address")
WINDOWED_COLUMNS = ("as_of", "as_of_day", "spend_1d", "spend_7d", "spend_30d", "orders_1d",
                    "orders_7d", "orders_30d", "orders_90d", "returns_90d", "returns_rate_90d",
                    "monthly_spend", "category_affinity", "brand_affinity", "recent_orders",
                    "recent_locations", "location", "cart", "last_payment", "last_review")
DERIVED_COLUMNS = ("churn_risk", "segments")
ORACLE_COLUMNS = PLAIN_COLUMNS + WINDOWED_COLUMNS + DERIVED_COLUMNS
# Global windows: the entity, and what identifies its window in a delta's changes.
MINUTE_ENTITIES = ("global:events_per_minute", "global:revenue_per_minute",
                   "global:active_customers")
FIVE_ENTITIES = ("global:top_products", "global:top_categories", "global:returns_rate",
                 "global:trending_searches")


def _naive(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, format=_TIME_FORMAT)


def _aware(t: pd.Timestamp) -> datetime:
    return t.tz_localize("UTC").to_pydatetime()


def _tables(data_dir: Path) -> dict[str, pd.DataFrame]:
    """The CSVs with each row's owner (customer_unique_id) and event time (naive, as read)."""
    orders = _read(data_dir, "orders").merge(_read(data_dir, "customers"), on="customer_id",
                                             how="left", validate="1:1")
    orders["t"] = _naive(orders["order_purchase_timestamp"])
    orders["paid_t"] = _naive(orders["order_approved_at"].fillna(
        orders["order_purchase_timestamp"]))
    owner = orders[["order_id", "customer_unique_id", "t", "paid_t"]]
    products = _read(data_dir, "products")
    english = _read(data_dir, "categories")
    products = products.merge(english, on="product_category_name", how="left")
    products["category"] = products["product_category_name_english"].fillna(
        products["product_category_name"]).fillna("")
    items = _read(data_dir, "items").merge(owner, on="order_id").merge(
        products[["product_id", "category"]], on="product_id", how="left")
    items["category"] = items["category"].fillna("")
    items["cents"] = (items["price"] * 100).round().astype("int64") + (
        items["freight_value"] * 100).round().astype("int64")
    payments = _read(data_dir, "payments").merge(owner, on="order_id")
    payments["cents"] = (payments["payment_value"] * 100).round().astype("int64")
    reviews = _read(data_dir, "reviews").merge(owner.drop(columns=["t", "paid_t"]), on="order_id")
    reviews["rt"] = _naive(reviews["review_creation_date"])
    geo = _read(data_dir, "geolocation").groupby("geolocation_zip_code_prefix")[
        ["geolocation_lat", "geolocation_lng"]].mean()
    return {"orders": orders, "items": items, "payments": payments, "reviews": reviews,
            "geo": geo, "products": products}


def _affinity(lines: list[tuple[float, str]], ref_day_start: float) -> dict[str, float]:
    """Decayed units bought per category (3 per unit, half-life 14 days), published as of
    ``max(start of the day of the data, latest scoring time)``: top 12, 4 decimals, >= 0.001.

    A key whose score, re-expressed at the start of a later day of the customer, is under
    0.0005 is forgotten then (its later purchases start afresh): lines are (time, key) in
    time order, and a new day of the customer's events is where that happens.
    """
    tau = _AFFINITY_HALF_LIFE_S / math.log(2)
    scores: dict[str, tuple[float, float]] = {}  # key -> (value, at time)
    day = -1
    for ts, key in lines:
        d = int(ts // 86_400)
        if d > day:
            day = d
            start = d * 86_400.0
            scores = {k: (v, at) for k, (v, at) in scores.items()
                      if v * math.exp(-(max(start, at) - at) / tau) >= 0.0005}
        v, at = scores.get(key, (0.0, ts))
        scores[key] = (v * math.exp(-(ts - at) / tau) + 3.0, ts)
    ref = max([ref_day_start, *(at for _, at in scores.values())])
    now = {k: v * math.exp(-(ref - at) / tau) for k, (v, at) in scores.items()}
    top = sorted(now.items(), key=lambda kv: (-kv[1], kv[0]))[:_AFFINITY_KEEP]
    return {k: round(v, 4) for k, v in top if v >= 0.001}


def _first_kept_month(today: pd.Timestamp) -> str:
    index = today.year * 12 + today.month - _MONTHS  # (today's month included)
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def end_of_data(data_dir: Path | None = None) -> datetime:
    """The latest event time of the replay (of any order, payment or review): what a
    bounded run's export is "as of"."""
    data_dir = _check_dir(Path(data_dir) if data_dir is not None else Settings.from_env().olist_dir)
    tb = _tables(data_dir)
    latest = max(tb["orders"]["t"].max(), tb["payments"]["paid_t"].max(), tb["reviews"]["rt"].max())
    return _aware(latest)


def _py(values: pd.Series) -> list[datetime]:
    """Naive times as aware Python datetimes (UTC attached, wall values unchanged)."""
    return values.dt.tz_localize("UTC").array.to_pydatetime().tolist()


def _day(t: datetime) -> int:
    return int(t.timestamp() // 86_400)


def _kept(t: datetime, evicted: bool, gone_after: datetime | None) -> bool:
    """Whether a detail set at ``t`` is still there: no eviction since."""
    return not evicted and (gone_after is None or gone_after < t)


def batch_customers(as_of: datetime, data_dir: Path | None = None, *,
                    ties: str = "content") -> dict[str, dict[str, Any]]:
    """Every :data:`ORACLE_COLUMNS` column of every customer as of event time ``as_of``
    (the run's final watermark), from the CSV files in plain pandas and Python.

    A column a customer never had is absent; a detail evicted (90 days quiet) is None.
    ``ties``: which of several payments (reviews, orders) at the same event time is the
    customer's latest: by content, as docs/event-time.md (rule 10) says ("content": the
    greatest (order id, method, amount) of a payment, (order id, product id, rating, text)
    of a review, order id of an order), or the one the replay produced last ("offset").
    """
    if ties not in ("content", "offset"):
        raise ConfigError(f"ties must be 'content' or 'offset', not {ties!r}")
    data_dir = _check_dir(Path(data_dir) if data_dir is not None else Settings.from_env().olist_dir)
    tb = _tables(data_dir)
    orders, items, payments, reviews, geo = (tb["orders"], tb["items"], tb["payments"],
                                             tb["reviews"], tb["geo"])
    end = as_of.astimezone(timezone.utc)
    by_content = ties == "content"

    lines_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    cents_of: defaultdict[str, int] = defaultdict(int)
    items = items.sort_values(["order_id", "order_item_id"], kind="stable")
    for oid, pid, price, cat, cents in _cols(items, "order_id", "product_id", "price",
                                             "category", "cents"):
        lines_of[oid].append({"product_id": pid, "quantity": 1, "price": price,
                              "discount": 0.0, "category": cat, "brand": ""})
        cents_of[oid] += cents
    single = {o: ls[0]["product_id"] for o, ls in lines_of.items()
              if len({li["product_id"] for li in ls}) == 1}

    # Per customer, in file order: (time, tie key, row).
    cust_orders: defaultdict[str, list[tuple]] = defaultdict(list)
    for n, (cuid, oid, status, city, state, zip_), t in zip(
            range(len(orders)), _cols(orders, "customer_unique_id", "order_id", "order_status",
                                      "customer_city", "customer_state",
                                      "customer_zip_code_prefix"),
            _py(orders["t"]), strict=True):
        tie = oid if by_content else n
        cust_orders[cuid].append((t, tie, oid, _str(status), _str(city), _str(state),
                                  _str(zip_)))
    cust_pay: defaultdict[str, list[tuple]] = defaultdict(list)
    for n, (cuid, oid, _seq, method, value, cents), t in zip(
            range(len(payments)), _cols(payments, "customer_unique_id", "order_id",
                                        "payment_sequential", "payment_type", "payment_value",
                                        "cents"), _py(payments["paid_t"]), strict=True):
        tie = (oid, _str(method), value) if by_content else n
        cust_pay[cuid].append((t, tie, oid, _str(method), value, cents))
    cust_rev: defaultdict[str, list[tuple]] = defaultdict(list)
    for n, (cuid, _rid, oid, score, title, message), t in zip(
            range(len(reviews)), _cols(reviews, "customer_unique_id", "review_id", "order_id",
                                       "review_score", "review_comment_title",
                                       "review_comment_message"), _py(reviews["rt"]),
            strict=True):
        text = "\n".join(x for x in (_str(title).strip(), _str(message).strip()) if x)
        tie = (oid, single.get(oid, ""), score, text[:_TEXT_MAX]) if by_content else n
        cust_rev[cuid].append((t, tie, oid, score, text))
    lat = geo["geolocation_lat"].to_dict()
    lng = geo["geolocation_lng"].to_dict()

    out: dict[str, dict[str, Any]] = {}
    for cuid, og in cust_orders.items():
        og.sort(key=lambda r: (r[0], r[1]))  # by time, then the tie rule
        # Details and location come with the first order (by time, then order id).
        fo_t, _, _, _, city, state, zip_ = min(og, key=lambda r: (r[0], r[2]))
        pg = sorted(cust_pay.get(cuid, ()), key=lambda r: (r[0], r[1]))
        rg = sorted(cust_rev.get(cuid, ()), key=lambda r: (r[0], r[1]))
        # (Olist has reviews created before the purchase: 47 customers are first seen so.)
        first = min(og[0][0], *(r[0] for r in pg[:1]), *(r[0] for r in rg[:1]))
        last = max(og[-1][0], *(r[0] for r in pg[-1:]), *(r[0] for r in rg[-1:]))
        today = max(_day(end), _day(last))
        start = datetime.fromtimestamp(today * 86_400, timezone.utc)
        quiet = end - last
        evicted = quiet >= _EVICT_AFTER
        # A customer quiet for 90 days loses the detail of their last visit then, also when
        # they come back later: a detail survives only if no such gap followed it.
        times = sorted([r[0] for r in og] + [r[0] for r in pg] + [r[0] for r in rg])
        gaps = [a for a, b in itertools.pairwise(times) if b - a >= _EVICT_AFTER]
        gone_after = gaps[-1] if gaps else None  # the last eviction came after this time

        c: dict[str, Any] = {}
        oids = [r[2] for r in og]
        c["order_count"] = len(set(oids))
        c["items_bought"] = sum(len(lines_of.get(o, ())) for o in oids)
        c["orders_value"] = sum(cents_of.get(o, 0) for o in oids) / 100
        c["last_order_at"] = og[-1][0]
        c["first_seen"], c["last_seen"] = first, last
        c["address"] = {"street": "", "city": city, "state": state, "zip": zip_,
                        "country": "BR"}
        c["as_of"], c["as_of_day"] = end, start.date()
        for n in _ORDER_DAYS:
            c[f"orders_{n}d"] = sum(1 for r in og if today - _day(r[0]) < n)
        c["returns_90d"], c["returns_rate_90d"] = 0, 0.0
        spend = dict.fromkeys(_SPEND_DAYS, 0)
        if pg:
            c["total_spent"] = sum(r[5] for r in pg) / 100
            c["payment_count"] = len(pg)
            c["lifetime_value"] = c["total_spent"]
            months: defaultdict[str, int] = defaultdict(int)
            rolled = False
            for t, _, _, _, _, cents in pg:
                ago = today - _day(t)
                for n in _SPEND_DAYS:
                    if ago < n:
                        spend[n] += cents
                if ago >= _DAILY_DAYS:
                    rolled = True
                    months[t.strftime("%Y-%m")] += cents
            if rolled:
                kept = _first_kept_month(pd.Timestamp(start))
                c["monthly_spend"] = {m: months[m] / 100 for m in sorted(months) if m >= kept}
            t, _, oid, method, value, _ = pg[-1]
            c["last_payment"] = None if not _kept(t, evicted, gone_after) else {
                "order_id": oid, "method": method, "amount": value, "payment_date": t}
        for n in _SPEND_DAYS:
            c[f"spend_{n}d"] = spend[n] / 100
        if rg:
            c["review_count"] = len(rg)
            c["avg_review_score"] = sum(r[3] for r in rg) / len(rg)
            t, _, oid, score, text = rg[-1]
            c["last_review"] = None if not _kept(t, evicted, gone_after) else {
                "product_id": single.get(oid, ""), "order_id": oid, "rating": score,
                "text": text[:_TEXT_MAX], "at": t}
        scored = [(r[0].timestamp(), li["category"]) for r in og
                  for li in lines_of.get(r[2], ()) if li["category"]]
        if scored:
            c["category_affinity"] = _affinity(scored, start.timestamp())
        since = [r for r in og if gone_after is None or r[0] > gone_after]
        if evicted or not since:  # (an order after the eviction starts them afresh)
            c["recent_orders"] = c["cart"] = None
        else:
            c["recent_orders"] = [
                {"order_id": oid, "order_date": t, "status": status,
                 "total_amount": cents_of.get(oid, 0) / 100, "lines": lines_of.get(oid, [])}
                for t, _, oid, status, *_ in since[::-1][:_RECENT_ORDERS]
                if t >= start - _RECENT_ORDERS_AGE]
            c["cart"] = []
        if zip_ in lat:
            loc = {"latitude": lat[zip_], "longitude": lng[zip_], "city": city, "at": fo_t}
            if not _kept(fo_t, evicted, gone_after):
                c["location"] = c["recent_locations"] = None
            else:
                c["location"] = loc
                c["recent_locations"] = [loc] if fo_t >= start - _RECENT_LOCATIONS_AGE else []
        # The churn score (c360.entity.rules.churn_score) and the segments (c360.entity.segments).
        recency = min(1.0, (today - _day(og[-1][0])) / 60)
        slowing = 1.0 if c["orders_90d"] > 0 and c["orders_30d"] == 0 else 0.0
        c["churn_risk"] = round(min(1.0, 0.5 * recency + 0.25 * slowing), 2)
        segments = set()
        if c.get("lifetime_value", 0) >= 2000:
            segments.add("vip")
        if c["churn_risk"] >= 0.6:
            segments.add("at_risk")
        if today - _day(first) <= _NEW_DAYS:
            segments.add("new")
        if quiet >= _DORMANT_AFTER:
            segments.add("dormant")
        c["segments"] = sorted(segments)
        out[cuid] = c
    return out


def batch_windows(data_dir: Path | None = None) -> dict[str, dict[datetime, Any]]:
    """Every global window of the replay, in plain pandas: entity -> window start -> what
    its delta must hold (the per-minute entities' ``last`` item; the five-minute entities'
    ``top`` list, or the returns-rate record). Every event is applied (none is late)."""
    data_dir = _check_dir(Path(data_dir) if data_dir is not None else Settings.from_env().olist_dir)
    tb = _tables(data_dir)
    orders, items, payments, reviews, products = (tb["orders"], tb["items"], tb["payments"],
                                                  tb["reviews"], tb["products"])
    geo = tb["geo"]
    first = orders.sort_values(["t", "order_id"], kind="stable").drop_duplicates(
        "customer_unique_id")
    located = first[first["customer_zip_code_prefix"].isin(geo.index)]
    start = min(orders["t"].min(), payments["paid_t"].min(), reviews["rt"].min())
    events = pd.concat([
        pd.DataFrame({"stream": "products", "t": start, "cuid": None}, index=products.index),
        pd.DataFrame({"stream": "customer_details", "t": first["t"],
                      "cuid": first["customer_unique_id"]}),
        pd.DataFrame({"stream": "location", "t": located["t"],
                      "cuid": located["customer_unique_id"]}),
        pd.DataFrame({"stream": "orders", "t": orders["t"], "cuid": orders["customer_unique_id"]}),
        pd.DataFrame({"stream": "payments", "t": payments["paid_t"],
                      "cuid": payments["customer_unique_id"]}),
        pd.DataFrame({"stream": "reviews", "t": reviews["rt"],
                      "cuid": reviews["customer_unique_id"]}),
    ], ignore_index=True)
    events["minute"] = events["t"].dt.floor("min")
    out: dict[str, dict[datetime, Any]] = {e: {} for e in (*MINUTE_ENTITIES, *FIVE_ENTITIES)}
    per_minute: defaultdict[pd.Timestamp, dict[str, int]] = defaultdict(dict)
    for (m, stream), n in events.groupby(["minute", "stream"]).size().items():
        per_minute[m][stream] = int(n)
    active = events.dropna(subset=["cuid"]).groupby("minute")["cuid"].nunique().to_dict()
    totals = items.groupby("order_id")["cents"].sum()
    placed = orders.assign(minute=orders["t"].dt.floor("min"),
                           total=orders["order_id"].map(totals).fillna(0).astype("int64"))
    revenue = placed.groupby("minute")["total"].sum().to_dict()
    count = placed.groupby("minute").size().to_dict()
    for m, by_stream in per_minute.items():
        at = _aware(m)
        out["global:events_per_minute"][at] = {"minute": at,
                                               "events": dict(sorted(by_stream.items()))}
        out["global:revenue_per_minute"][at] = {
            "minute": at, "revenue": int(revenue.get(m, 0)) / 100, "orders": int(count.get(m, 0))}
        out["global:active_customers"][at] = {"minute": at, "customers": int(active.get(m, 0))}

    def top(counts: dict[str, int]) -> list[list[Any]]:
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        return [[k, int(n)] for k, n in ranked]

    five = items["t"].dt.floor("5min")
    units: defaultdict[pd.Timestamp, Counter[str]] = defaultdict(Counter)
    kinds: defaultdict[pd.Timestamp, Counter[str]] = defaultdict(Counter)
    for f, pid, cat in zip(five.tolist(), items["product_id"].tolist(),
                           items["category"].tolist(), strict=True):
        units[f][pid] += 1
        if cat:
            kinds[f][cat] += 1
    for f, n in orders.groupby(orders["t"].dt.floor("5min")).size().items():
        at = _aware(f)
        out["global:top_products"][at] = top(units.get(f, {}))
        out["global:top_categories"][at] = top(kinds.get(f, {}))
        out["global:trending_searches"][at] = []
        out["global:returns_rate"][at] = {"returns": 0, "orders": int(n), "rate": 0.0}
    return out


def window_of(delta_changes: dict[str, Any], entity_id: str) -> tuple[datetime, Any]:
    """What a global delta says about its window, in :func:`batch_windows`' terms."""
    if entity_id in MINUTE_ENTITIES:
        last = delta_changes["last"]
        return last["minute"], last
    start = delta_changes["window"]
    if entity_id == "global:returns_rate":
        return start, {k: delta_changes[k] for k in ("returns", "orders", "rate")}
    return start, delta_changes["top"]


_JSON_ENC = msgspec.json.Encoder()
_AFFINITY_TOL = 0.00011  # a score printed with 4 decimals may round either way of a 5


def _plain(value: Any) -> Any:
    """A value as the .jsonl export writes it (times as ISO strings)."""
    return msgspec.json.decode(_JSON_ENC.encode(value))


def _same(column: str, live: Any, batch: Any) -> bool:
    if column == "segments":  # never having had a segment reads as no segment
        return (live or []) == batch
    if column in ("category_affinity", "brand_affinity") and live and batch:
        return live.keys() == batch.keys() and all(
            abs(live[k] - batch[k]) <= _AFFINITY_TOL for k in live)
    return live == batch


def compare_customers(export: dict[str, dict[str, Any]], oracle: dict[str, dict[str, Any]]
                      ) -> dict[str, list[str]]:
    """Column -> the customers whose exported value differs from the oracle's (sorted ids).

    ``export``: customer id -> the row of a .jsonl export (as decoded JSON). The key
    ``"(customers)"`` lists the ids present in one and not the other.
    """
    out: dict[str, list[str]] = {
        "(customers)": sorted(set(export).symmetric_difference(oracle))}
    for column in ORACLE_COLUMNS:
        out[column] = sorted(
            cid for cid, want in oracle.items() if cid in export
            and not _same(column, export[cid].get(column), _plain(want.get(column))))
    return out


def compare_windows(deltas: list[Any], oracle: dict[str, dict[datetime, Any]]
                    ) -> dict[str, dict[str, int]]:
    """Per global entity: windows expected, closed, missing, extra, closed twice, differing.

    ``deltas``: every :class:`c360.model.delta.Delta` of the ``global:*`` entities a run made.
    """
    got: dict[str, dict[datetime, Any]] = {e: {} for e in oracle}
    twice: Counter[str] = Counter()
    for d in deltas:
        if d.entity_id not in got:
            continue
        start, value = window_of(d.changes, d.entity_id)
        if start in got[d.entity_id]:
            twice[d.entity_id] += 1
        got[d.entity_id][start] = value
    report: dict[str, dict[str, int]] = {}
    for entity, want in oracle.items():
        have = got[entity]
        report[entity] = {
            "expected": len(want), "closed": len(have),
            "missing": len(want.keys() - have.keys()), "extra": len(have.keys() - want.keys()),
            "twice": twice[entity],
            "differing": sum(1 for k in want.keys() & have.keys()
                             if _plain(have[k]) != _plain(want[k]))}
    return report
