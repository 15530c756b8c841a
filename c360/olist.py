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
  (quantity 1, the item price); ``total_amount`` is the sum of price + freight;
* ``payments``: one per payment row, at ``order_approved_at`` (else the purchase time);
* ``reviews``: one per review row at ``review_creation_date``. ``review_id`` is not unique
  (one review can cover several orders), so the event id is ``review_id:order_id``.
  ``product_id`` is filled only when the order holds a single distinct product.

Olist timestamps are naive local times (Brazil); the schemas need aware datetimes, so
UTC is attached with the wall values unchanged.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from c360 import events as ev
from c360.config import Settings
from c360.errors import BrokerError, ConfigError, DataError

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
            f"{_FILES['orders'][0]} and the other Olist .csv.gz files; pass --data DIR "
            f"or set C360_OLIST_DIR)")
    return data_dir


def _read(data_dir: Path, table: str) -> pd.DataFrame:
    name, columns = _FILES[table]
    path = data_dir / name
    if not path.is_file():
        raise DataError(f"Olist file missing: {path} (expected the gzipped CSV {name} "
                        f"in the Olist data directory {data_dir})")
    try:
        df = pd.read_csv(path, usecols=lambda c: c in columns, dtype=columns)
    except (ValueError, OSError, EOFError) as exc:  # bad gzip, bad CSV, bad dtype
        raise DataError(f"cannot read Olist file {path}: {exc}") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"Olist file {path} lacks column(s) {', '.join(missing)}")
    return df


def load(data_dir: Path) -> OlistData:
    """Read every Olist table this module uses from ``data_dir`` (gzipped CSVs)."""
    data_dir = _check_dir(data_dir)
    return OlistData(data_dir=data_dir, **{t: _read(data_dir, t) for t in _FILES})


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

    # Order lines, in item order.
    items = data.items.sort_values(["order_id", "order_item_id"], kind="stable")
    lines: defaultdict[str, list[ev.OrderLine]] = defaultdict(list)
    totals: defaultdict[str, float] = defaultdict(float)
    for oid, pid, price, freight in _cols(items, "order_id", "product_id", "price",
                                          "freight_value"):
        lines[oid].append(ev.OrderLine(product_id=pid, quantity=1, price=price))
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
    english = dict(_cols(data.categories, "product_category_name",
                         "product_category_name_english"))
    out: list[tuple[str, str, ev.Event]] = []
    for pid, cat in _cols(data.products, "product_id", "product_category_name"):
        cat = _str(cat)
        out.append(("products", pid, ev.Product(
            event_id=f"product:{pid}", event_time=start, product_id=pid,
            category=_str(english.get(cat)) or cat)))
    out.extend((s, k, e) for _, _, s, k, e in rows)
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

    from c360.broker import create_topics

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
