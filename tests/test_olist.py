"""The Olist replay: events from the real files, and the acceptance tests that the live
dataflow gives every customer, and every global window, the same values as a pandas batch
computation over the CSVs (c360.dev.olist.batch_customers / batch_windows), with 1 and 2
workers, the default settings (1 h lateness, sweep on) and the real embedded broker; and
that the two runs give byte-identical exports and the same decisions (issue 13: the values
must not depend on batches or on the interleaving of the 17 topics, which differ between 1
and 2 workers, each worker polling its own partitions; ``benchmarks/event_time_oracle.py
--runs 5`` does five runs and reports them).

One replay is produced for the module, and folded twice: by the CLI with its defaults (one
worker) and by a ``Pipeline`` with two workers. (CI time: a produce costs ~30 s and a fold
~40 s; this module once produced twice and folded five times.)"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
import pytest

# The oracle script's recorder and topic reader: one of each for both.
from benchmarks.event_time_oracle import RecordingStore, next_offsets, read_topic
from c360 import cli
from c360.config import REPO_ROOT, Settings
from c360.dev.broker import EmbeddedBroker
from c360.dev.olist import (
    ORACLE_COLUMNS,
    PLAIN_COLUMNS,
    OlistData,
    ReplayReport,
    batch_customers,
    batch_metrics,
    batch_windows,
    compare_customers,
    compare_windows,
    end_of_data,
    events,
    load,
    replay,
)
from c360.entity import windows
from c360.errors import DataError
from c360.model import events as ev
from c360.model.delta import Delta
from c360.model.events import Catalogue
from c360.run.pipeline import Pipeline

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


def test_order_lines_carry_the_products_category(
        data: OlistData, replayed: list[tuple[str, str, ev.Event]]) -> None:
    """Category affinity and the global top categories need it (they were always empty)."""
    product_category = {e.product_id: e.category for s, _, e in replayed if s == "products"}
    lines = [line for s, _, e in replayed if s == "orders" for line in e.lines]
    assert len(lines) == len(data.items) == 30_263
    assert all(line.category == product_category[line.product_id] for line in lines)
    # 460 item rows are of the 610 products Olist left without a category.
    assert sum(1 for line in lines if not line.category) == 460
    assert len({line.category for line in lines}) > 60
    assert all(line.brand == "" for line in lines)  # Olist has no brand (see c360.dev.olist)
    # Untranslated categories keep Olist's own name rather than vanishing.
    assert "pc_gamer" in product_category.values()


def _subset(tmp: Path, orders: int = 25, kaggle: bool = False) -> Path:
    """A small Olist directory: the first ``orders`` orders with all their rows. With
    ``kaggle``, laid out as the public download: plain .csv files, all at the top level."""
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
        if kaggle:
            df.to_csv(tmp / f"{name.removeprefix('partial/')}.csv", index=False)
        else:
            df.to_csv(tmp / f"{name}.csv.gz", index=False, compression="gzip")
    if kaggle:
        (tmp / "partial").rmdir()
        picked.to_csv(tmp / "olist_orders_dataset.csv", index=False)
    else:
        picked.to_csv(tmp / "olist_orders_dataset.csv.gz", index=False, compression="gzip")
    return tmp


def test_the_public_download_of_plain_csv_files_is_read(tmp_path: Path) -> None:
    """The Kaggle download unzipped (plain .csv, geolocation at the top level) gives the
    same events as the gzipped layout shipped here (issue 14: plain .csv was refused)."""
    plain = _subset(tmp_path / "kaggle", orders=40, kaggle=True)
    gzipped = _subset(tmp_path / "shipped", orders=40)
    assert not list(plain.rglob("*.gz")) and (plain / "olist_geolocation_dataset.csv").is_file()
    from_plain, from_gzip = list(events(load(plain))), list(events(load(gzipped)))
    assert Counter(s for s, _, _ in from_plain)["orders"] == 40
    assert from_plain == from_gzip
    assert batch_metrics(plain).equals(batch_metrics(gzipped))

    (plain / "olist_order_reviews_dataset.csv").unlink()
    with pytest.raises(DataError, match=r"Olist file missing: .*olist_order_reviews_dataset"
                                        r".*expected olist_order_reviews_dataset.csv or "
                                        r"olist_order_reviews_dataset.csv.gz"):
        load(plain)


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


@pytest.fixture(scope="module")
def olist_topics(broker: EmbeddedBroker) -> tuple[Settings, ReplayReport]:
    """The whole Olist replay, once, on topics of this module's own."""
    s = Settings(bootstrap=broker.bootstrap, topic_prefix=f"olist{uuid.uuid4().hex[:6]}.",
                 partitions=2)
    report = replay(s, progress=False)
    print(f"\n{report}")
    return s, report


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    rows = (msgspec.json.decode(line) for line in path.read_bytes().splitlines())
    return {r["customer_id"]: r for r in rows}


def _differing(diff: dict[str, list[str]], live: dict[str, dict[str, Any]],
               batch: dict[str, dict[str, Any]]) -> str:
    """The columns that differ: how many customers, and one of them."""
    out = []
    for column, ids in diff.items():
        if ids:
            cid = ids[0]
            want = msgspec.json.decode(msgspec.json.encode(batch.get(cid, {}).get(column)))
            out.append(f"{column}: {len(ids)} customers, e.g. {cid}: live "
                       f"{live.get(cid, {}).get(column)!r} != pandas {want!r}")
    return "\n".join(out)


@pytest.fixture(scope="module")
def oracle() -> dict[str, dict[str, Any]]:
    return batch_customers(end_of_data(OLIST))


@dataclass
class Run:
    export: bytes  # the .jsonl export, as written
    rows: dict[str, dict[str, Any]]
    decisions: dict[str, list[bytes]]  # each customer's decisions on the topic, in order
    global_deltas: list[Delta]
    as_of: Any
    stdout: str = ""


def _decisions_since(settings: Settings, before: dict[int, int]) -> dict[str, list[bytes]]:
    """Each customer's decisions written to the decisions topic after offsets ``before``."""
    per_customer: dict[str, list[bytes]] = defaultdict(list)
    for p, offset, key, value in read_topic(settings, Catalogue(settings.topic_prefix)
                                            .decisions_topic):
        if offset >= before.get(p, 0):  # this run's
            per_customer[key.decode()].append(value)
    return dict(per_customer)


def _decisions_end(settings: Settings) -> dict[int, int]:
    return next_offsets(read_topic(settings, Catalogue(settings.topic_prefix).decisions_topic))


@pytest.fixture(scope="module")
def cli_run(olist_topics: tuple[Settings, ReplayReport],
            tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The replay folded by the CLI with its default settings (one worker), to its end."""
    settings, _ = olist_topics
    before = _decisions_end(settings)
    out = tmp_path_factory.mktemp("cli") / "out.jsonl"
    env = {**os.environ, "C360_TOPIC_PREFIX": settings.topic_prefix}
    for name in ("C360_KAFKA_BOOTSTRAP", "C360_ALLOWED_LATENESS_S"):
        env.pop(name, None)
    run = subprocess.run(
        [sys.executable, "-m", "c360", "run", "--until-idle", "3", "--export", str(out),
         "--bootstrap", settings.bootstrap],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return Run(out.read_bytes(), _rows(out), _decisions_since(settings, before), [], None,
               run.stdout)


@pytest.fixture(scope="module")
def two_workers(olist_topics: tuple[Settings, ReplayReport],
                tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The replay folded in this process by a Pipeline with two workers, to its end."""
    settings, _ = olist_topics
    before = _decisions_end(settings)
    store = RecordingStore()
    pipeline = Pipeline(settings, store, workers=2, idle_timeout=3)
    pipeline.run()
    path = store.export(tmp_path_factory.mktemp("w2") / "customers.jsonl")
    return Run(path.read_bytes(), _rows(path), _decisions_since(settings, before),
               store.global_deltas, getattr(pipeline, "as_of", None))


def test_replayed_olist_through_kafka_equals_the_pandas_batch(
        olist_topics: tuple[Settings, ReplayReport], oracle: dict[str, dict[str, Any]],
        cli_run: Run) -> None:
    """THE acceptance test: the real files, the real broker, the real dataflow (the CLI,
    default settings); every per-customer column as of the end of the data."""
    _, report = olist_topics
    assert report.events > 150_000 and report.counts["orders"] == 27_288
    assert "26924 customers, 32951 products" in cli_run.stdout, cli_run.stdout

    rows = cli_run.rows
    live = pd.DataFrame.from_dict(rows, orient="index")
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

    spent = live["total_spent"].astype("float64").fillna(0.0)
    off = (spent - batch["total_spent"]).abs() > 0.005
    assert not off.any(), pd.DataFrame({"live": spent[off], "batch": batch["total_spent"][off]})

    live_avg = live["avg_review_score"].astype("float64")
    batch_avg = batch["avg_review_score"]
    assert (live_avg.isna() == batch_avg.isna()).all()
    assert batch_avg.isna().sum() > 0  # the case is exercised
    both = batch_avg.notna()
    assert ((live_avg[both] - batch_avg[both]).abs() <= 1e-9).all()

    last = pd.to_datetime(live["last_order_at"]).dt.tz_convert("UTC").dt.tz_localize(None)
    assert (last.to_numpy() == batch["last_order_at"].to_numpy()).all()

    # Every column, plain and windowed, segments and churn included, as of the end of the data.
    diff = compare_customers(rows, oracle)
    assert not any(diff.values()), _differing(diff, rows, oracle)


def test_two_workers_give_every_customer_column_of_pandas(
        two_workers: Run, oracle: dict[str, dict[str, Any]]) -> None:
    run = two_workers
    assert run.as_of == end_of_data(OLIST)  # the run says which event time it is as of
    diff = compare_customers(run.rows, oracle)
    # The plain columns first: if they differ, the windowed ones are no evidence.
    plain = {c: diff[c] for c in ("(customers)", *PLAIN_COLUMNS)}
    assert not any(plain.values()), _differing(plain, run.rows, oracle)
    assert not any(diff.values()), _differing(diff, run.rows, oracle)


def test_two_workers_give_every_global_window_of_pandas(two_workers: Run) -> None:
    report = compare_windows(two_workers.global_deltas, batch_windows(OLIST))
    assert report["global:events_per_minute"]["expected"] == 45_989  # every minute with data
    wrong = {e: r for e, r in report.items()
             if r["missing"] or r["extra"] or r["twice"] or r["differing"]}
    assert not wrong, "\n".join(f"{e}: {r}" for e, r in wrong.items())


def test_one_and_two_workers_give_byte_identical_exports_and_decisions(
        cli_run: Run, two_workers: Run) -> None:
    first, second = cli_run.export, two_workers.export
    assert first.count(b"\n") == 26_924
    assert b'"version":' in first and b'"decisions":' in first  # both are compared
    assert cli_run.decisions, "no decision at all: nothing was compared"
    if first != second:
        a, b = first.splitlines(), second.splitlines()
        differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        pytest.fail(f"{len(differ)} of {len(a)} exported customers differ; first:\n"
                    f"{a[differ[0]][:1500]!r}\n{b[differ[0]][:1500]!r}")
    one, two = cli_run.decisions, two_workers.decisions
    differ = sorted(c for c in one.keys() | two.keys() if one.get(c) != two.get(c))
    assert not differ, (f"decisions differ for {len(differ)} of {len(one)} customers, "
                        f"e.g. {differ[0]}: {one.get(differ[0])} vs {two.get(differ[0])}")


def test_oracle_restates_the_declared_windows() -> None:
    """The oracle restates the windows of relevance (it must not call them); if a
    declaration changes, this says the oracle needs the same change."""
    declared = {w.field: w.days for w in windows.WINDOWED}
    assert declared == {"spend_1d": 1, "spend_7d": 7, "spend_30d": 30, "orders_1d": 1,
                        "orders_7d": 7, "orders_30d": 30, "orders_90d": 90, "returns_90d": 90}
    assert windows.EVICTED.after.days == 90 and windows.ROLLED_UP.daily_days == 90
    assert windows.ROLLED_UP.months == 24
    decayed = {d.field: (d.half_life.days, d.keep) for d in windows.DECAYED}
    assert decayed["category_affinity"] == (14, 12)
    recent = {r.field: (r.limit, r.max_age.days) for r in windows.RECENT}
    assert recent["recent_orders"] == (10, 90) and recent["recent_locations"] == (10, 30)
    assert set(ORACLE_COLUMNS) >= {"spend_30d", "segments", "churn_risk", "last_payment"}
