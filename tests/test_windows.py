"""Windows of relevance: per-customer event-time windows equal pandas over the same events
(late and duplicate events included) at several points in event time; too-late events go
to the late sink; quiet customers decay, roll up and are evicted without events."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from bytewax.testing import TestingSink

from c360.dev.simulator import generate
from c360.entity.derive import EntityHooks
from c360.entity.logic import first_logic
from c360.entity.shard import Routed, Shard
from c360.entity.windows import RELEVANCE, relevance_table
from c360.model import events as ev
from c360.model.delta import Lifecycle
from tests.factories import CAT, message, run

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def simulated(n: int) -> list[tuple[str, ev.Event]]:
    # Ten minutes of event time per event: 20,000 events span about 140 days, so every
    # window, the roll-up into months and the 90-day returns rate all come into play.
    items = itertools.islice(generate(25, seed=5, start=START, tick=timedelta(minutes=10)), n)
    return [(stream, event) for stream, _, event in items]


def as_messages(items: list[tuple[str, ev.Event]]) -> list:
    offsets: dict[str, int] = defaultdict(int)
    out = []
    for stream, event in items:
        out.append(message(CAT, stream, event, offsets[stream]))
        offsets[stream] += 1
    return out


def expected(items: list[tuple[str, ev.Event]]) -> pd.DataFrame:
    """The windowed aggregates computed in batch with pandas."""
    rows = [{"stream": s, "customer": e.customer_id, "event_id": e.event_id,
             "t": e.event_time, "amount": getattr(e, "amount", None),
             "order_id": getattr(e, "order_id", None) if s == "orders" else None,
             "return_id": getattr(e, "return_id", None)}
            for s, e in items if hasattr(e, "customer_id")]
    df = pd.DataFrame(rows).drop_duplicates("event_id")  # duplicates count once
    df["day"] = df["t"].map(lambda t: int(t.timestamp() // 86400))
    now_day = df.groupby("customer")["day"].max()
    df["age"] = df["customer"].map(now_day) - df["day"]  # days before the customer's latest
    pay = df[df.stream == "payments"]
    orders = df[df.stream == "orders"].drop_duplicates("order_id")  # status updates don't count
    rets = df[df.stream == "returns"].drop_duplicates("return_id")
    out = pd.DataFrame(index=now_day.index)
    for n in (1, 7, 30):
        out[f"spend_{n}d"] = pay[pay.age < n].groupby("customer")["amount"].sum()
    for n in (1, 7, 30, 90):
        out[f"orders_{n}d"] = orders[orders.age < n].groupby("customer").size()
    out["returns_90d"] = rets[rets.age < 90].groupby("customer").size()
    out = out.fillna(0)
    out["returns_rate_90d"] = (out.returns_90d / out.orders_90d.where(out.orders_90d > 0)
                               ).fillna(0.0).round(4)
    old = pay[pay.age >= 90]
    months = old.groupby(["customer", old.t.map(lambda t: t.strftime("%Y-%m"))])["amount"].sum()
    out["monthly_spend"] = [
        {m: round(v, 2) for m, v in months.get(c, pd.Series(dtype=float)).items()}
        for c in out.index]
    return out


@pytest.mark.parametrize("n", [3_000, 9_000, 20_000])
def test_windowed_aggregates_equal_pandas(n: int) -> None:
    items = simulated(n)
    store, dlq = run(as_messages(items), workers=1, batch=200,
                     hooks=EntityHooks(sweep_per_batch=0))  # windows at each customer's now
    assert dlq == []
    want = expected(items)
    got = store.dataframe("customer")
    assert set(got.index) == set(want.index)
    for col in ("spend_1d", "spend_7d", "spend_30d"):
        assert got[col].round(2).to_dict() == pytest.approx(want[col].round(2).to_dict()), col
    for col in ("orders_1d", "orders_7d", "orders_30d", "orders_90d", "returns_90d",
                "returns_rate_90d"):
        assert got[col].to_dict() == want[col].to_dict(), col
    monthly = {c: {m: round(v, 2) for m, v in store[c].get("monthly_spend", {}).items()}
               for c in want.index}
    assert monthly == want["monthly_spend"].to_dict()
    ids = [e.event_id for _, e in items]
    assert len(ids) > len(set(ids))  # duplicates were in the stream
    assert any(b.event_time < a.event_time for (_, a), (_, b) in itertools.pairwise(items))
    if n == 20_000:  # long enough for the roll-up into months
        assert any(monthly.values())


def test_too_late_events_go_to_the_late_sink_with_the_reason() -> None:
    t0 = START
    pay = [ev.Payment(event_id=f"p{i}", event_time=t0 + timedelta(minutes=30 * i),
                      customer_id="c1", order_id=f"o{i}", payment_date=t0, method="card",
                      amount=10.0) for i in range(6)]
    stale = ev.Payment(event_id="old", event_time=t0, customer_id="c1", order_id="ox",
                       payment_date=t0, method="card", amount=99.0)  # 2.5 h behind
    ok = ev.Payment(event_id="ok", event_time=t0 + timedelta(hours=2), customer_id="c1",
                    order_id="oy", payment_date=t0, method="card", amount=1.0)  # 30 min behind
    msgs = [message(CAT, "payments", e, i) for i, e in enumerate([*pay, stale, ok, ok])]
    late: list = []
    store, dlq = run(msgs, workers=1, late_sink=TestingSink(late),
                     allowed_lateness=timedelta(hours=1))
    assert dlq == [] and len(late) == 1
    assert b"too late" in late[0].value and b"allowed lateness is 3600 s" in late[0].value
    c = store["c1"]
    assert c["payment_count"] == 7 and c["total_spent"] == 61.0  # late-but-allowed counted once
    assert c["spend_1d"] == 61.0


def test_quiet_customers_decay_roll_up_and_are_evicted_without_events() -> None:
    shard = Shard(EntityHooks(sweep_per_batch=10), allowed_lateness=timedelta(hours=1))

    def apply(stream: str, event: ev.Event) -> list:
        key = ev.key_of(event)
        deltas, failed = shard.apply([Routed(stream, "customer", key, event, ("t", 0, 0))],
                                     first_logic)
        assert failed == []
        return deltas

    apply("payments", ev.Payment(event_id="a1", event_time=START, customer_id="quiet",
                                 order_id="o1", payment_date=START, method="card", amount=50.0))
    apply("search", ev.Search(event_id="a2", event_time=START, customer_id="quiet",
                              event_type="view", product_id="p", category="books"))
    out = []
    for day in range(1, 100):  # another customer keeps the shard's event time moving
        t = START + timedelta(days=day)
        out += apply("location", ev.Location(event_id=f"b{day}", event_time=t,
                                             customer_id="busy", latitude=1, longitude=1))
    quiet = shard.entity("quiet")
    assert quiet is not None
    assert quiet["spend_30d"] == 0 and quiet["spend_1d"] == 0
    assert quiet["monthly_spend"] == {"2026-01": 50.0}
    # Aged at its deadlines without any event, the last one 90 days after its latest event.
    assert quiet["category_affinity"] == {"books": round(0.5 ** (90 / 14), 4)}
    assert quiet["recent_views"] is None and "dormant" in quiet["segments"]
    # The end of input ages everyone to it: 98 days are 7 half-lives of 14 days.
    out += shard.finish(as_of=(START + timedelta(days=98)).timestamp())
    quiet = shard.entity("quiet")
    assert quiet is not None and quiet["category_affinity"] == {"books": round(0.5 ** 7, 4)}
    assert quiet["as_of_day"] == (START + timedelta(days=98)).date()
    mine = [d for d in out if d.entity_id == "quiet"]
    kinds = {d.type for d in mine if isinstance(d, Lifecycle)}
    assert {"decayed", "rolled_up", "evicted", "segment_entered"} <= kinds
    versions = [d.version for d in mine if not isinstance(d, Lifecycle)]
    assert versions == list(range(3, 3 + len(versions)))  # every sweep change is a version
    assert all(d.stream == "relevance" for d in mine if not isinstance(d, Lifecycle))


def test_a_quiet_customers_churn_risk_grows_as_it_is_aged() -> None:
    """Churn risk reads recency in days to the customer's as_of_day: aging without an event
    of theirs must move it (it stayed at its last event's value before; wrong for 2,795 Olist
    customers' at_risk segment at the end of the data)."""
    from c360.entity.rules import churn_score

    shard = Shard(EntityHooks(), allowed_lateness=timedelta(hours=1))
    order = ev.Order(event_id="o", event_time=START, customer_id="quiet", order_id="o1",
                     order_date=START, status="delivered", total_amount=10.0, lines=[])
    deltas, failed = shard.apply([Routed("orders", "customer", "quiet", order, ("t", 0, 0))],
                                 first_logic)
    assert failed == [] and shard.entity("quiet")["churn_risk"] == 0.0
    shard.finish(as_of=(START + timedelta(days=45)).timestamp())
    quiet = shard.entity("quiet")
    assert quiet is not None and quiet["as_of_day"] == (START + timedelta(days=45)).date()
    # 45 quiet days: recency 45/60, and no order in 30 days after one in 90 (slowing).
    assert quiet["churn_risk"] == churn_score(quiet) == round(0.5 * 45 / 60 + 0.25, 2)
    assert "at_risk" in quiet["segments"]


def test_a_dormant_customer_keeps_its_summary_and_loses_its_last_visit() -> None:
    """Eviction bounds what a customer holds by time, not by how many events it had: after
    90 quiet days the last visit's detail goes (cart included, so an add starts a new
    cart), and months of spend older than 24 calendar months are forgotten."""
    shard = Shard(EntityHooks(sweep_per_batch=10), allowed_lateness=timedelta(hours=1))

    def apply(stream: str, event: ev.Event) -> list:
        deltas, failed = shard.apply(
            [Routed(stream, "customer", ev.key_of(event), event, ("t", 0, 0))], first_logic)
        assert failed == []
        return deltas

    apply("payments", ev.Payment(event_id="a1", event_time=START, customer_id="quiet",
                                 order_id="o1", payment_date=START, method="card", amount=50.0))
    apply("location", ev.Location(event_id="a2", event_time=START, customer_id="quiet",
                                  latitude=2, longitude=2, city="Lyon"))
    apply("search", ev.Search(event_id="a3", event_time=START, customer_id="quiet",
                              event_type="add_to_cart", product_id="old"))
    quiet = shard.entity("quiet")
    assert quiet is not None and quiet["cart"] and quiet["location"]["city"] == "Lyon"
    out = []
    for day in range(1, 800):  # another customer keeps the shard's event time moving
        t = START + timedelta(days=day)
        out += apply("location", ev.Location(event_id=f"b{day}", event_time=t,
                                             customer_id="busy", latitude=1, longitude=1))
        if day == 100:
            quiet = shard.entity("quiet")
            assert quiet is not None
            assert all(quiet[f] is None for f in ("cart", "location", "last_payment"))
            assert quiet["total_spent"] == 50.0 and quiet["payment_count"] == 1
            assert quiet["monthly_spend"] == {"2026-01": 50.0}
    quiet = shard.entity("quiet")
    assert quiet is not None and quiet["monthly_spend"] == {}  # January 2026 is 26 months back
    forgotten = [d.detail for d in out if isinstance(d, Lifecycle) and d.type == "forgotten"
                 and d.entity_id == "quiet"]
    assert forgotten == [{"field": "monthly_spend", "months": ["2026-01"]}]
    t = START + timedelta(days=800)
    apply("search", ev.Search(event_id="a4", event_time=t, customer_id="quiet",
                              event_type="add_to_cart", product_id="new"))
    quiet = shard.entity("quiet")
    assert quiet is not None and [c["product_id"] for c in quiet["cart"]] == ["new"]


def test_the_relevance_table_is_declared_in_one_place() -> None:
    rows = relevance_table()
    assert len(rows) >= len(RELEVANCE)
    names = {r["field"] for r in rows}
    assert {"recent_searches", "spend_30d", "returns_rate_90d", "category_affinity",
            "monthly_spend"} <= names


def test_recent_lists_do_not_depend_on_which_topic_was_read_first() -> None:
    """An order 100 days older than a location ping of the same customer: read before the
    ping, it leaves ``recent_orders`` (90 days) when the ping moves the customer's day on;
    read after it, it must not stay either — else the list depends on topic read order."""
    order = ev.Order(event_id="o1", event_time=START, customer_id="c1", order_id="o1",
                     order_date=START, status="delivered", total_amount=10.0)
    ping = ev.Location(event_id="l1", event_time=START + timedelta(days=100),
                       customer_id="c1", latitude=1.0, longitude=2.0)

    def fold(items: list[tuple[str, ev.Event]]) -> dict:
        shard = Shard(EntityHooks(rules=False, segments=False), timedelta(hours=1))
        for n, (stream, e) in enumerate(items):
            shard.apply([Routed(stream, "customer", "c1", e, (stream, 0, n))], first_logic)
        return shard.entities["c1"].fields

    first = fold([("orders", order), ("location", ping)])
    second = fold([("location", ping), ("orders", order)])
    assert first["order_count"] == second["order_count"] == 1
    assert first["recent_orders"] == second["recent_orders"] == []
    assert first["recent_locations"] == second["recent_locations"]
