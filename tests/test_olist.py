"""The Olist replay: events from the real files, and the acceptance test that the live
dataflow gives every customer the same numbers as a pandas batch computation."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from c360 import cli
from c360 import events as ev
from c360.config import REPO_ROOT, Settings
from c360.errors import DataError
from c360.olist import OlistData, batch_metrics, events, load, replay

OLIST = Settings.from_env().olist_dir
METRICS = ["order_count", "total_spent", "items_bought", "avg_review_score", "last_order_at"]


@pytest.fixture(scope="module")
def data() -> OlistData:
    return load(OLIST)


@pytest.fixture(scope="module")
def replayed(data: OlistData) -> list[tuple[str, str, ev.Event]]:
    return list(events(data))


def test_events_are_in_event_time_order_and_one_per_row(
        data: OlistData, replayed: list[tuple[str, str, ev.Event]]) -> None:
    times = [e.event_time for _, _, e in replayed]
    assert all(a <= b for a, b in zip(times, times[1:], strict=False))
    assert all(t.utcoffset() is not None and t.utcoffset().total_seconds() == 0 for t in times)

    counts = Counter(stream for stream, _, _ in replayed)
    distinct_reviews = len(data.reviews[["review_id", "order_id"]].drop_duplicates())
    assert not data.reviews["review_id"].is_unique  # hence review events are per (review, order)
    assert distinct_reviews == len(data.reviews) == 27_333
    people = data.customers["customer_unique_id"].nunique()
    assert counts["orders"] == 27_288
    assert counts["payments"] == 28_881
    assert counts["reviews"] == 27_333
    assert counts["products"] == 32_951
    assert counts["customer_details"] == people == 26_924
    assert 0 < counts["location"] <= people
    assert set(counts) == {"orders", "payments", "reviews", "products", "customer_details",
                           "location"}
    # The dataflow drops an event id it saw recently for the same entity, whatever the stream.
    assert len({e.event_id for _, _, e in replayed}) == len(replayed)


def test_every_event_decodes_and_is_keyed_by_its_entity(
        replayed: list[tuple[str, str, ev.Event]]) -> None:
    cat = ev.Catalogue()
    for stream, key, event in replayed:
        decoded = cat.decode(cat.topic(stream), ev.encode(event))
        assert decoded == event
        assert key == ev.key_of(event)


def test_mapping_of_olist_rows(data: OlistData, replayed: list[tuple[str, str, ev.Event]]) -> None:
    first_order = next(i for i, (s, _, _) in enumerate(replayed) if s == "orders")
    assert {s for s, _, _ in replayed[:first_order]} <= {"products", "customer_details",
                                                         "location"}
    assert all(s != "products" for s, _, _ in replayed[first_order:])

    # The person is customer_unique_id; their details come just before their first order.
    seen_details: set[str] = set()
    for stream, key, e in replayed:
        if stream == "customer_details":
            seen_details.add(key)
            assert e.name is None and e.email is None and e.address is not None
        elif stream == "orders":
            assert key in seen_details
    orders = data.orders.merge(data.customers, on="customer_id")
    person = dict(zip(orders["order_id"], orders["customer_unique_id"], strict=True))
    status = dict(zip(orders["order_id"], orders["order_status"], strict=True))
    bought = dict(zip(orders["order_id"], pd.to_datetime(orders["order_purchase_timestamp"]),
                      strict=True))
    approved = pd.to_datetime(orders["order_approved_at"].fillna(
        orders["order_purchase_timestamp"]))
    paid = dict(zip(orders["order_id"], approved, strict=True))
    items = data.items.assign(total=data.items["price"] + data.items["freight_value"])
    lines = items.groupby("order_id").size().to_dict()
    totals = items.groupby("order_id")["total"].sum().to_dict()
    created = dict(zip(zip(data.reviews["review_id"], data.reviews["order_id"], strict=True),
                       pd.to_datetime(data.reviews["review_creation_date"]), strict=True))
    for stream, key, e in replayed:
        if stream == "orders":
            assert key == e.customer_id == person[e.order_id]
            assert e.status == status[e.order_id]
            assert e.order_date.replace(tzinfo=None) == bought[e.order_id]
            assert len(e.lines) == lines.get(e.order_id, 0)
            assert all(line.quantity == 1 for line in e.lines)
            assert e.total_amount == pytest.approx(totals.get(e.order_id, 0.0), abs=0.005)
        elif stream == "payments":
            assert key == person[e.order_id]
            assert e.payment_date.replace(tzinfo=None) == paid[e.order_id]
        elif stream == "reviews":
            assert key == person[e.order_id]
            assert e.event_id == f"review:{e.review_id}:{e.order_id}"
            assert e.event_time.replace(tzinfo=None) == created[e.review_id, e.order_id]

    english = dict(zip(data.categories["product_category_name"],
                       data.categories["product_category_name_english"], strict=True))
    products = {e.product_id: e.category for s, _, e in replayed if s == "products"}
    some = data.products.dropna(subset=["product_category_name"]).iloc[0]
    assert products[some["product_id"]] == english[some["product_category_name"]]


def _subset(tmp: Path, orders: int = 25) -> Path:
    """A small Olist directory: the first ``orders`` orders with all their rows."""
    picked = pd.read_csv(OLIST / "olist_orders_dataset.csv.gz", dtype=str).head(orders)
    ids = set(picked["order_id"])
    (tmp / "partial").mkdir(parents=True)
    for name in ["olist_customers_dataset", "olist_order_items_dataset",
                 "olist_order_payments_dataset", "olist_order_reviews_dataset",
                 "olist_products_dataset", "product_category_name_translation",
                 "partial/olist_geolocation_dataset"]:
        df = pd.read_csv(OLIST / f"{name}.csv.gz", dtype=str)
        if "order_id" in df:
            df = df[df["order_id"].isin(ids)]
        elif name == "olist_customers_dataset":
            df = df[df["customer_id"].isin(picked["customer_id"])]
        elif name == "olist_products_dataset":
            items = pd.read_csv(OLIST / "olist_order_items_dataset.csv.gz", dtype=str)
            df = df[df["product_id"].isin(items.loc[items["order_id"].isin(ids), "product_id"])]
        df.to_csv(tmp / f"{name}.csv.gz", index=False, compression="gzip")
    picked.to_csv(tmp / "olist_orders_dataset.csv.gz", index=False, compression="gzip")
    return tmp


def test_replay_paces_itself_by_event_time(settings: Settings, tmp_path: Path) -> None:
    small = _subset(tmp_path / "olist")
    todo = list(events(load(small)))
    span = (todo[-1][2].event_time - todo[0][2].event_time).total_seconds()
    report = replay(settings, data_dir=small, speed=span / 1.5, progress=False)
    assert report.events == len(todo)
    assert report.counts["orders"] == 25
    assert 1.4 <= report.elapsed < 10


def test_missing_data_is_a_clear_error(settings: Settings, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = tmp_path / "no-such-dir"
    with pytest.raises(DataError, match="Olist data directory not found: .*no-such-dir"):
        load(nowhere)
    with pytest.raises(DataError, match="no-such-dir"):
        batch_metrics(nowhere)

    partial = _subset(tmp_path / "olist", orders=3)
    (partial / "partial" / "olist_geolocation_dataset.csv.gz").unlink()
    with pytest.raises(DataError, match="Olist file missing: .*partial/olist_geolocation"):
        replay(settings, data_dir=partial, progress=False)

    code = cli.main(["replay", "olist", "--data", str(nowhere), "--bootstrap",
                     settings.bootstrap, "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("c360: error: Olist data directory not found:")
    assert str(nowhere) in err


def test_replayed_olist_through_kafka_equals_the_pandas_batch(settings: Settings,
                                                              tmp_path: Path) -> None:
    """THE acceptance test: the real files, the real broker, the real dataflow (the CLI)."""
    report = replay(settings, progress=False)
    assert report.events > 150_000 and report.counts["orders"] == 27_288
    print(f"\n{report}")

    out = tmp_path / "out.parquet"
    env = {**os.environ, "C360_TOPIC_PREFIX": settings.topic_prefix}
    env.pop("C360_KAFKA_BOOTSTRAP", None)
    run = subprocess.run(
        [sys.executable, "-m", "c360", "run", "--until-idle", "3", "--export", str(out),
         "--bootstrap", settings.bootstrap],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "26924 customers, 32951 products" in run.stdout, run.stdout

    live = pd.read_parquet(out).set_index("customer_id")
    batch = batch_metrics(OLIST)
    assert set(live.index) == set(batch.index)
    assert len(batch) == 26_924
    live = live.reindex(batch.index)
    # A field is absent when no event of its kind reached the customer. Every customer has an
    # order event (so order_count, items_bought and last_order_at are always set: an order
    # without items sets items_bought to 0), but one customer's only order has no payment:
    # total_spent is then missing and counts as 0. No review leaves avg_review_score NaN.
    assert live["order_count"].notna().all() and live["items_bought"].notna().all()
    assert (live["order_count"].astype("int64") == batch["order_count"]).all()
    assert (live["items_bought"].astype("int64") == batch["items_bought"]).all()

    spent = live["total_spent"].fillna(0.0)
    off = (spent - batch["total_spent"]).abs() > 0.005
    assert not off.any(), pd.DataFrame({"live": spent[off], "batch": batch["total_spent"][off]})

    live_avg, batch_avg = live["avg_review_score"], batch["avg_review_score"]
    assert (live_avg.isna() == batch_avg.isna()).all()
    assert batch_avg.isna().sum() > 0  # the case is exercised
    both = batch_avg.notna()
    assert ((live_avg[both] - batch_avg[both]).abs() <= 1e-9).all()

    last = pd.to_datetime(live["last_order_at"]).dt.tz_convert("UTC").dt.tz_localize(None)
    assert (last.to_numpy() == batch["last_order_at"].to_numpy()).all()

