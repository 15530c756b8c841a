"""Time travel (c360.store.history, docs/time-travel.md): any entity as of any moment equals
a fresh replay of only the events up to then through the same fold, and training sets are
point-in-time correct: equal to pandas on the Olist files, and nothing after a label leaks.

The fold is driven directly (a Shard fed Routed events, its deltas applied to the history's
store, as the dataflow's sink applies them); no broker is needed for what is tested here."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from itertools import islice

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c360.config import Settings
from c360.dev.olist import OlistData, events, load
from c360.dev.simulator import generate
from c360.entity.derive import EntityHooks
from c360.entity.logic import first_logic
from c360.entity.shard import Routed, Shard
from c360.errors import ConfigError, DataError
from c360.model import events as ev
from c360.model.events import Catalogue
from c360.store.history import History
from c360.store.memory import EntityStore

START = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
KINDS = {name: s.entity_kind for name, s in Catalogue("c360.").by_name.items()}
LATENESS = timedelta(hours=1)


def _routed(items: list[tuple[str, str, ev.Event]]) -> list[Routed]:
    return [Routed(stream, KINDS[stream], key, e, (stream, 0, n))
            for n, (stream, key, e) in enumerate(items)]


def _fold(routed: list[Routed], batch: int, history: History | None = None) -> Shard:
    """Fold ``routed`` in batches of ``batch`` through the full fold (windows, aging, rules,
    segments); the deltas go to ``history``'s store."""
    shard = Shard(EntityHooks(allowed_lateness=LATENESS), allowed_lateness=LATENESS)
    for i in range(0, len(routed), batch):
        deltas, failed = shard.apply(routed[i:i + batch], first_logic)
        assert not failed, failed[0].reason
        if history is not None:
            history.store.apply(deltas)
    return shard


def _shop(customers: int, seed: int, n: int) -> list[tuple[str, str, ev.Event]]:
    """A simulated shop's first ``n`` events, in event time (its late events put in place:
    a fresh replay of the events up to ``t`` is then a prefix)."""
    items = list(islice(generate(customers, seed, START, tick=timedelta(hours=3)), n))
    return sorted(items, key=lambda item: item[2].event_time)


def _entity(shard: Shard, entity_id: str) -> dict | None:
    state = shard.entities.get(entity_id)
    if state is None or state.version == 0:
        return None
    return {"id": entity_id, "kind": "customer", "version": state.version, **state.fields}


# -- as_of is a replay ------------------------------------------------------------------------

def _aging_times(history: History) -> list[datetime]:
    """The deadlines of the history's aging deltas (where "as of" is easiest to get wrong:
    the fold ages a quiet customer only once a later event's watermark passes them)."""
    return sorted(t for cid in history.ids() for s, t in
                  history.history(cid)[["stream", "event_time"]].itertuples(index=False)
                  if s == "relevance")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), customers=st.integers(2, 6), n=st.integers(40, 200),
       batch=st.integers(1, 40), cut=st.floats(0.0, 1.0), at_aging=st.booleans(),
       shift=st.sampled_from([timedelta(0), timedelta(microseconds=-1), timedelta(minutes=30),
                              timedelta(hours=3)]))
def test_as_of_equals_a_fresh_replay_of_only_the_events_up_to_that_time(
        seed: int, customers: int, n: int, batch: int, cut: float, at_aging: bool,
        shift: timedelta) -> None:
    items = _shop(customers, seed, n)
    history = History()
    _fold(_routed(items), batch, history)
    aging = _aging_times(history)
    times = aging if at_aging and aging else [e.event_time for _, _, e in items]
    t = times[min(int(cut * len(times)), len(times) - 1)] + shift
    fresh = _fold(_routed([i for i in items if i[2].event_time <= t]), 1)  # other batches
    ids = {key for stream, key, _ in items if KINDS[stream] == "customer"}
    for cid in sorted(ids):
        assert history.as_of(cid, t) == _entity(fresh, cid), (cid, t)


def test_as_of_a_version_is_that_version_and_history_names_the_event_of_each() -> None:
    items = _shop(3, 7, 150)
    history = History()
    shard = _fold(_routed(items), 16, history)
    cid = max(shard.entities, key=lambda k: shard.entities[k].version)
    h = history.history(cid)
    assert h["version"].tolist() == list(range(1, shard.entities[cid].version + 1))
    assert history.as_of(cid, version=len(h)) == _entity(shard, cid) == history.store.get(cid)
    mine = [e for stream, key, e in items if key == cid]
    ids = {e.event_id for e in mine}
    events_ = h[h["stream"] != "relevance"]
    assert set(events_["event_id"]) <= ids  # each event version names its event...
    assert len(events_) == len(ids)  # ...once (the duplicates were not applied)
    assert (h["known_at"] >= h["event_time"]).all()
    assert h["known_at"].is_monotonic_increasing
    assert "created" in h["lifecycle"].iloc[0]
    for k in (1, len(h) // 2, len(h)):
        v = history.as_of(cid, version=k)
        assert v is not None and v["version"] == k
        assert history.as_of(cid, h["known_at"].iloc[k - 1])["version"] >= k
    assert history.as_of(cid, version=0) is None
    assert history.as_of(cid, START - timedelta(days=1)) is None
    assert history.as_of("nobody", START) is None and history.history("nobody").empty


def test_a_late_event_is_known_from_the_latest_time_folded_before_it_never_earlier() -> None:
    def pay(n: int, hours: float) -> tuple[str, str, ev.Event]:
        t = START + timedelta(hours=hours)
        return ("payments", "c1", ev.Payment(event_id=f"p{n}", event_time=t, customer_id="c1",
                                             order_id=f"o{n}", payment_date=t, method="card",
                                             amount=10.0 * n))

    history = History()
    _fold(_routed([pay(1, 0), pay(2, 2), pay(3, 1)]), 1, history)  # p3 arrives late
    assert history.as_of("c1", START + timedelta(hours=1.5))["total_spent"] == 10.0
    assert history.as_of("c1", START + timedelta(hours=2))["total_spent"] == 60.0
    h = history.history("c1")
    assert h["known_at"].iloc[2] == START + timedelta(hours=2)  # not its own 1 h


def test_a_replayed_delta_is_kept_once_as_the_store_keeps_it() -> None:
    items = _shop(2, 3, 60)
    shard = Shard(EntityHooks(allowed_lateness=LATENESS), allowed_lateness=LATENESS)
    deltas, _ = shard.apply(_routed(items), first_logic)
    history = History()
    history.store.apply(deltas)
    kept = len(history)
    history.store.apply(deltas)  # a replay after a restart, without a materializer
    assert len(history) == kept == sum(1 for d in deltas if hasattr(d, "changes"))
    assert history.store.stale_deltas == kept


def test_keep_retains_every_version_but_only_the_fields_named() -> None:
    items = _shop(3, 5, 120)
    full, slim = History(), History(keep=["total_spent", "order_count"])
    for h in (full, slim):
        _fold(_routed(items), 10, h)
    cid = full.ids()[0]
    assert len(slim) == len(full)
    a, b = full.as_of(cid, version=len(full.history(cid))), slim.as_of(cid, version=10**9)
    assert set(b) <= {"id", "kind", "version", "total_spent", "order_count"}
    assert b["version"] == a["version"] and b.get("total_spent") == a.get("total_spent")
    labels = pd.DataFrame({"customer_id": [cid], "time": [START + timedelta(days=30)]})
    with pytest.raises(DataError, match="keep="):
        slim.training_set(labels, ["churn_risk"])


# -- training sets ----------------------------------------------------------------------------

def _payments(history: History, *at: tuple[str, timedelta, float]) -> None:
    rows = []
    for n, (cid, dt, amount) in enumerate(at):
        t = START + dt
        rows.append(("payments", cid, ev.Payment(event_id=f"p{n}", event_time=t,
                                                 customer_id=cid, order_id=f"o{n}",
                                                 payment_date=t, method="card",
                                                 amount=amount)))
    _fold(_routed(rows), 1, history)


def test_a_field_that_changes_right_after_a_labels_time_is_not_in_its_row() -> None:
    history = History()
    hour = timedelta(hours=1)
    _payments(history, ("a", 0 * hour, 10.0), ("a", hour, 5.0),
              ("a", hour + timedelta(microseconds=1), 1.0), ("b", 2 * hour, 7.0))
    labels = pd.DataFrame({
        "customer_id": ["a", "a", "a", "a", "b", "b"],
        "time": [START, START + hour, START + hour + timedelta(microseconds=1),
                 START + 2 * hour, START + 2 * hour, START + 3 * hour],
        "label": [0, 1, 0, 1, 0, 1],
    }, index=[10, 11, 12, 13, 14, 15])
    ts = history.training_set(labels, ["total_spent", "payment_count"])
    assert ts.index.tolist() == labels.index.tolist() and ts["label"].tolist() == [0, 1, 0, 1, 0, 1]
    # At the label's own time the change is not in: strictly before.
    assert ts["total_spent"].fillna(0).tolist() == [0.0, 10.0, 15.0, 16.0, 0.0, 7.0]
    assert ts["as_of_version"].tolist() == [0, 1, 2, 3, 0, 1]
    known = ts["as_of_time"].dropna()
    assert (known < ts.loc[known.index, "time"]).all()
    # Naive label times are UTC, as c360's event times are.
    naive = labels.assign(time=labels["time"].dt.tz_localize(None))
    pd.testing.assert_frame_equal(history.training_set(naive, ["total_spent"])[["total_spent"]],
                                  ts[["total_spent"]])


def test_training_set_refuses_labels_it_cannot_read_in_one_line() -> None:
    history = History()
    _payments(history, ("a", timedelta(0), 1.0))
    with pytest.raises(DataError, match="no \\['time'\\] column"):
        history.training_set(pd.DataFrame({"customer_id": ["a"]}), ["total_spent"])
    with pytest.raises(DataError, match="already columns"):
        history.training_set(pd.DataFrame({"customer_id": ["a"], "time": [START],
                                           "total_spent": [1]}), ["total_spent"])
    with pytest.raises(ConfigError, match="exactly one"):
        history.as_of("a")
    with pytest.raises(ConfigError, match="cannot read"):
        history.as_of("a", "not a time")


@pytest.fixture(scope="module")
def olist() -> tuple[OlistData, History, list[str]]:
    """A sample of Olist: every 60th person (about 450), their events folded in event time."""
    full = load(Settings.from_env().olist_dir)
    people = sorted(full.customers["customer_unique_id"].unique())[::60]
    customers = full.customers[full.customers["customer_unique_id"].isin(set(people))]
    orders = full.orders[full.orders["customer_id"].isin(set(customers["customer_id"]))]
    mine = set(orders["order_id"])
    data = replace(full, customers=customers, orders=orders,
                   items=full.items[full.items["order_id"].isin(mine)],
                   payments=full.payments[full.payments["order_id"].isin(mine)],
                   reviews=full.reviews[full.reviews["order_id"].isin(mine)])
    history = History()
    _fold(_routed([item for item in events(data) if item[0] != "products"]), 200, history)
    return data, history, people


def _pandas_point_in_time(data: OlistData, labels: pd.DataFrame) -> pd.DataFrame:
    """Per label row, from the CSV tables alone: orders, payments and reviews strictly before
    the row's time (naive, as the files are), then counted, summed, averaged."""
    orders = data.orders.merge(data.customers[["customer_id", "customer_unique_id"]],
                               on="customer_id")
    orders["t"] = pd.to_datetime(orders["order_purchase_timestamp"])
    orders["paid_t"] = pd.to_datetime(orders["order_approved_at"].fillna(
        orders["order_purchase_timestamp"]))
    owner = orders[["order_id", "customer_unique_id", "paid_t"]]
    pay = data.payments.merge(owner, on="order_id")
    rev = data.reviews.merge(owner[["order_id", "customer_unique_id"]], on="order_id")
    rev["t"] = pd.to_datetime(rev["review_creation_date"])
    rows = labels.rename(columns={"customer_id": "customer_unique_id"}).reset_index(
        names="row")
    rows["lt"] = rows["time"].dt.tz_localize(None)

    def before(table: pd.DataFrame, when: str) -> pd.DataFrame:
        j = rows[["row", "customer_unique_id", "lt"]].merge(table, on="customer_unique_id")
        return j[j[when] < j["lt"]]

    out = pd.DataFrame(index=rows["row"])
    o = before(orders, "t").groupby("row")
    out["order_count"] = o["order_id"].nunique()
    out["last_order_at"] = o["t"].max().dt.tz_localize("UTC")
    out["total_spent"] = before(pay, "paid_t").groupby("row")["payment_value"].sum().round(2)
    out["avg_review_score"] = before(rev, "t").groupby("row")["review_score"].mean()
    out[["order_count", "total_spent"]] = out[["order_count", "total_spent"]].fillna(0)
    return out.set_axis(labels.index)


def test_training_set_equals_a_pandas_point_in_time_computation_on_olist(
        olist: tuple[OlistData, History, list[str]]) -> None:
    data, history, people = olist
    rng = np.random.default_rng(20)
    lo, hi = pd.Timestamp("2016-09-01", tz="UTC"), pd.Timestamp("2018-10-20", tz="UTC")
    span = int((hi - lo).total_seconds())
    random = pd.DataFrame({"customer_id": rng.choice(people, 3000),
                           "time": lo + pd.to_timedelta(rng.integers(0, span, 3000), unit="s")})
    # And every order's own purchase time: the order itself must not be in its row.
    own = data.orders.merge(data.customers, on="customer_id")
    own = own[own["customer_unique_id"].isin(set(people))]
    exact = pd.DataFrame({"customer_id": own["customer_unique_id"].to_numpy(),
                          "time": pd.to_datetime(own["order_purchase_timestamp"]).dt.tz_localize(
                              "UTC").to_numpy()})
    labels = pd.concat([random, exact], ignore_index=True)
    fields = ["order_count", "total_spent", "avg_review_score", "last_order_at"]
    got = history.training_set(labels, fields)
    want = _pandas_point_in_time(data, labels)
    assert len(got) == len(labels) > 3000 and (got["as_of_version"] > 0).sum() > 1000
    for f in ("order_count", "total_spent"):
        assert np.allclose(got[f].fillna(0).to_numpy(float), want[f].to_numpy(float),
                           atol=0.005), f
    pd.testing.assert_series_equal(got["avg_review_score"], want["avg_review_score"],
                                   check_names=False, check_dtype=False)
    assert (got["last_order_at"].isna() == want["last_order_at"].isna()).all()
    both = got["last_order_at"].notna()
    assert (got.loc[both, "last_order_at"] == want.loc[both, "last_order_at"]).all()
    ahead = got["as_of_time"].notna()
    assert (got.loc[ahead, "as_of_time"] < got.loc[ahead, "time"]).all()


# -- the time slider, in a real Chromium ------------------------------------------------------

@pytest.mark.browser
def test_the_time_slider_shows_the_customer_as_of_the_version_picked_in_chromium() -> None:
    """dashboards/history.py served in this process; Chromium drags the slider's handle to
    the start and back by keys, and the page shows each version's entity and event."""
    import panel as pn
    from playwright.sync_api import expect, sync_playwright

    from c360.dev.broker import free_port
    from c360.sync.auth import Scope
    from dashboards.history import HistoryView
    from tests.test_notebook_dashboard import CHROMIUM, CHROMIUM_ARGS

    history = History()
    hour = timedelta(hours=1)
    _payments(history, ("c1", 0 * hour, 10.0), ("c1", hour, 5.0), ("c1", 2 * hour, 1.0))
    views: list[HistoryView] = []

    def app() -> HistoryView:
        view = HistoryView(history, Scope(pii=True))
        view.open("c1")
        views.append(view)
        return view

    port = free_port()
    server = pn.serve({"/": app}, port=port, address="127.0.0.1", show=False, threaded=True,
                      websocket_origin=[f"127.0.0.1:{port}"])
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded",
                          timeout=60_000)
                at, entity = page.locator(".c360-history-at"), page.locator(
                    ".c360-history-entity")
                expect(at).to_contain_text("Version 3 of 3: payments p2", timeout=60_000)
                expect(entity).to_contain_text("16.0")
                handle = page.locator(".c360-history-slider .noUi-handle")
                box = page.locator(".c360-history-slider .noUi-base").bounding_box()
                assert box is not None
                handle.hover()
                page.mouse.down()
                page.mouse.move(box["x"] - 20, box["y"] + box["height"] / 2, steps=8)
                page.mouse.up()
                expect(at).to_contain_text("Version 0 of 3", timeout=30_000)
                handle.focus()
                page.keyboard.press("ArrowRight")
                expect(at).to_contain_text("Version 1 of 3: payments p0", timeout=30_000)
                expect(entity).to_contain_text("10.0")
                expect(entity).not_to_contain_text("15.0")
                page.keyboard.press("ArrowRight")
                expect(at).to_contain_text("Version 2 of 3: payments p1", timeout=30_000)
                expect(entity).to_contain_text("15.0")
                assert views and views[-1].slider.value == 2
            finally:
                browser.close()
    finally:
        server.stop()



def test_the_customer_360_view_of_a_history_store_has_the_slider_and_follows_new_versions(
        ) -> None:
    from c360.sync.auth import Scope
    from dashboards.customer import CustomerView

    history = History()
    shard = Shard(EntityHooks(allowed_lateness=LATENESS), allowed_lateness=LATENESS)

    def pay(n: int, hours: int, amount: float) -> None:
        t = START + timedelta(hours=hours)
        e = ev.Payment(event_id=f"p{n}", event_time=t, customer_id="c1", order_id=f"o{n}",
                       payment_date=t, method="card", amount=amount)
        history.store.apply(shard.apply(_routed([("payments", "c1", e)]), first_logic)[0])

    pay(1, 0, 10.0)
    pay(2, 1, 5.0)
    view = CustomerView(history.store, Scope(pii=True))
    view.open("c1")
    slider = view.history_view.slider if view.history_view is not None else None
    assert slider is not None and slider.value == slider.end == 2
    assert "Version 2 of 2" in view.history_view.at.object
    pay(3, 2, 1.0)
    assert view.refresh() and slider.value == slider.end == 3  # at the latest: it follows
    slider.value = 1
    shown = view.history_view.entity.object
    assert "10.0" in shown and "15.0" not in shown
    pay(4, 3, 1.0)
    assert view.refresh() and slider.value == 1 and slider.end == 4  # moved back: it stays
    view.open("nobody")
    assert view.history_view.customer_id is None
    assert CustomerView(EntityStore(), Scope(pii=True)).history_view is None
