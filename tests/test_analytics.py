"""Global analytics: per-minute windows in the store equal pandas resampling of the same
events (duplicates once, late events in their own minute)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pandas as pd

from c360.dev.simulator import generate
from tests.factories import run
from tests.test_windows import as_messages

START = datetime(2026, 2, 1, tzinfo=timezone.utc)


def test_per_minute_analytics_equal_pandas_resampling() -> None:
    # One second of event time per event: 2,700 events make 45 minutes.
    items = [(s, e) for s, _, e in itertools.islice(
        generate(40, seed=9, start=START, tick=timedelta(seconds=1)), 2_700)]
    store, dlq = run(as_messages(items), workers=1, batch=100, analytics=True)
    assert dlq == []

    df = pd.DataFrame([{"stream": s, "event_id": e.event_id, "t": e.event_time,
                        "customer": getattr(e, "customer_id", None),
                        "order_id": getattr(e, "order_id", None) if s == "orders" else None,
                        "amount": getattr(e, "total_amount", None)} for s, e in items])
    df = df.drop_duplicates("event_id").set_index("t").sort_index()
    assert df.index.min() < START  # late events from before the start are in the data
    orders = df[df.stream == "orders"].drop_duplicates("order_id")  # placements only
    minutes = df.resample("1min").size()
    minutes = minutes[minutes > 0].index
    revenue = orders["amount"].resample("1min").sum().reindex(minutes, fill_value=0).round(2)
    placed = orders["amount"].resample("1min").size().reindex(minutes, fill_value=0)
    active = df["customer"].dropna().resample("1min").nunique().reindex(minutes, fill_value=0)
    per_stream = df.groupby([pd.Grouper(freq="1min"), "stream"]).size()

    series = store["global:revenue_per_minute"]["series"]
    assert [p["minute"] for p in series] == list(minutes)  # every minute, in order
    assert {p["minute"]: p["revenue"] for p in series} == revenue.to_dict()
    assert {p["minute"]: p["orders"] for p in series} == placed.to_dict()
    assert sum(placed) > 20
    got_active = {p["minute"]: p["customers"] for p in store["global:active_customers"]["series"]}
    assert got_active == active.to_dict()
    got_streams = {(p["minute"], s): n
                   for p in store["global:events_per_minute"]["series"]
                   for s, n in p["events"].items()}
    assert got_streams == per_stream.to_dict()

    # Five-minute windows: top products by units and the returns rate, in the store too.
    top = store["global:top_products"]
    lines = [(e.event_time, li.product_id, li.quantity) for s, e in items if s == "orders"
             for li in e.lines if e.event_id in set(orders["event_id"])]
    last = pd.DataFrame(lines, columns=["t", "product", "units"])
    last = last[(last.t >= top["window"]) & (last.t < top["window"] + timedelta(minutes=5))]
    units = last.groupby("product")["units"].sum()
    assert dict(map(tuple, top["top"])) == {p: units[p] for p, _ in top["top"]}
    assert top["top"][0][1] == units.max()
    assert store["global:returns_rate"]["version"] >= 9
    assert store.count("global") == 7 and store.count("customer") == 40
