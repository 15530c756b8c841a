"""Bring your own streams (issue 16's acceptance): a model declared in this file alone, two
new streams and a field of every generic fold, produced to the real broker as JSON, folded by
the real dataflow, and every customer's fields equal to a pandas computation over the same
events; the same events in another order, batching and partitioning give the same fields;
each kind of modelling mistake is one ModelError line naming the field, and ``c360 run
--model`` with a bad name is one line on stderr, exit 2.

The events: 30 customers, 40 days from 2026-03-10, 482 app sessions (``user_id`` and ``ts``
on the wire: the key and the event time named otherwise) and 150 returns (``shopper_id``),
with per-customer events out of order (within the allowed lateness), a tie at one event
time, and duplicates.

What the oracle restates (c360/entity/fold.py): latest and last N by event time, ties by the
greater event id; sums exact (cents for money, millionths for floats); windows over calendar
days (UTC), today included, and decay (2^-(age / half-life), 6 decimals) read as of the
customer's "now": the end of input in a bounded run with aging on (``store.as_of``), the
customer's own latest event time with aging off.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from confluent_kafka import Producer

from c360.config import REPO_ROOT, Settings
from c360.dev.broker import EmbeddedBroker
from c360.errors import ModelError
from c360.model import declare as d
from c360.models.retail import RETAIL

if TYPE_CHECKING:  # imported where used: `c360 run --model tests.test_declared_model:...`
    # imports this module, and these (bytewax, pandas) were 5 of its 7 s on a loaded machine
    import pandas as pd

    from c360.run.pipeline import Pipeline
    from c360.store.memory import EntityStore

START = datetime(2026, 3, 10, tzinfo=timezone.utc)
DAYS = 40
CUSTOMERS = [f"cust-{n:02d}" for n in range(30)]
DEVICES = ("android", "ios", "web")
REASONS = ("damaged", "late", "not_as_described", "wrong_size")
HALF_LIFE = timedelta(days=3)
IDLE = 1.5  # seconds of quiet that end a bounded run

# -- the model: declared here, nothing of it in c360 ------------------------------------------

SESSIONS = d.stream("app_sessions", {"session_id": str, "device": str, "duration_s": float},
                    key="user_id", time="ts")
RETURNS = d.stream("returns_detail", {"order_id": str, "reason": str, "amount": float},
                   key="shopper_id")


def _avg(app_time_s: float | None, session_count: int | None) -> float | None:
    return app_time_s / session_count if app_time_s is not None and session_count else None


def _heavy(avg_session_s: float | None) -> bool | None:
    return None if avg_session_s is None else avg_session_s >= 900


def _share(sessions_7d: int | None, session_count: int | None) -> float | None:
    return (sessions_7d or 0) / session_count if session_count else None


def _rate(detail_returns: int | None, session_count: int | None) -> float | None:
    return (detail_returns or 0) / session_count if session_count else None


FIELDS = (
    d.Field("last_device", "str", d.Latest("app_sessions", "device"),
            "Device of the latest app session"),
    d.Field("last_app_device", "str",
            d.Latest("app_sessions", "device", where=lambda e: e.device != "web"),
            "Device of the latest session in the app (not the web)"),
    d.Field("app_time_s", "float", d.Sum("app_sessions", "duration_s"),
            "Time spent in the app, all time"),
    d.Field("session_count", "int", d.Count("app_sessions"), "App sessions, all time"),
    d.Field("sessions_7d", "int", d.Windowed("app_sessions", days=7),
            "App sessions in the last 7 days"),
    d.Field("session_heat", "float", d.Decayed("app_sessions", half_life=HALF_LIFE),
            "App sessions, each weighing half as much every 3 days"),
    d.Field("device_affinity", "map",
            d.Decayed("app_sessions", half_life=HALF_LIFE, value="duration_s", by="device"),
            "Session time per device, decayed with a 3-day half-life"),
    d.Field("recent_sessions", "list", d.LastN("app_sessions", n=3,
                                               item=("device", "duration_s")),
            "The 3 latest sessions, newest first"),
    d.Field("longest_session_s", "float", d.Max("app_sessions", "duration_s"),
            "The longest app session"),
    d.Field("first_session_at", "time", d.Min("app_sessions", "event_time"),
            "When the first app session started"),
    d.Field("devices", "list", d.Distinct("app_sessions", "device"), "Devices used, sorted"),
    d.Field("app_time_monthly", "map", d.Monthly("app_sessions", "duration_s", months=1),
            "Time in the app this calendar month"),
    d.Field("detail_returns", "int", d.Count("returns_detail"), "Returns, all time"),
    d.Field("returns_by_reason", "map", d.Count("returns_detail", by="reason"),
            "Returns per reason, all time"),
    d.Field("refunded", "money", d.Sum("returns_detail", "amount"), "Refunded, all time"),
    d.Field("refunded_by_reason", "map", d.Sum("returns_detail", "amount", by="reason"),
            "Refunded per reason, all time"),
    d.Field("returns_30d_by_reason", "map", d.Windowed("returns_detail", days=30, by="reason"),
            "Returns in the last 30 days by reason"),
    d.Field("refunded_30d", "money", d.Windowed("returns_detail", days=30, value="amount"),
            "Refunded in the last 30 days"),
    d.Field("last_return_reason", "str", d.Latest("returns_detail", "reason"),
            "Reason of the latest return"),
    d.Field("avg_session_s", "float", d.Derived(("app_time_s", "session_count"), _avg),
            "Average app session"),
    d.Field("heavy_user", "bool", d.Derived(("avg_session_s",), _heavy),
            "Average session of 15 minutes or more"),
    d.Field("active_share_7d", "float", d.Derived(("sessions_7d", "session_count"), _share),
            "Share of all sessions in the last 7 days"),
    d.Field("returns_per_session", "float", d.Derived(("detail_returns", "session_count"), _rate),
            "Returns per app session"),
)
MODEL = RETAIL.extend(name="retail+app", streams=[SESSIONS, RETURNS], fields=FIELDS)
DECLARED = [f.name for f in FIELDS]
DECAYED = {"session_heat", "device_affinity"}
NOT_A_MODEL = "a string, not a model"  # for `c360 run --model tests.test_declared_model:...`
BROKEN = RETAIL.extend(streams=[SESSIONS], fields=[
    d.Field("app_reason", "str", d.Latest("app_sessions", "reason"), "No such attribute")])


# -- the events ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """One message as produced: its stream, the entity id (the message key) and its JSON."""

    stream: str
    key: str
    value: dict[str, Any]
    order: float  # where it is produced: its event time, or just after an event it lags


WIRE = {"app_sessions": ("user_id", "ts"), "returns_detail": ("shopper_id", "event_time")}


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def generate(seed: int = 16) -> list[Record]:
    """The events in production order (deterministic): duplicates and late ones included."""
    rng = random.Random(seed)
    out: list[Record] = []
    span = DAYS * 86_400

    def add(stream: str, cid: str, eid: str, t: datetime, order: float,
            **attrs: Any) -> Record:
        key, time = WIRE[stream]
        r = Record(stream, cid, {"event_id": eid, key: cid, time: _iso(t), **attrs}, order)
        out.append(r)
        return r

    for n in range(450):
        i = rng.randrange(25)  # customers 25-29 only return things
        cid = CUSTOMERS[i]  # customers 20-24 stop using the app after 20 days:
        t = START + timedelta(seconds=rng.randrange(span // 2 if i >= 20 else span))
        r = add("app_sessions", cid, f"s{n:04d}", t, t.timestamp(), session_id=f"x{n}",
                device=rng.choice(DEVICES), duration_s=round(rng.uniform(5, 1800), 1))
        if n % 15 == 0:  # a session of the same customer, older, produced just after it
            late = t - timedelta(minutes=rng.randrange(5, 40))
            add("app_sessions", cid, f"s{n:04d}L", late, r.order + 0.5, session_id=f"x{n}L",
                device=rng.choice(DEVICES), duration_s=round(rng.uniform(5, 1800), 1))
    for n in range(150):
        cid = CUSTOMERS[5 + rng.randrange(25)]  # customers 0-4 never return anything
        t = START + timedelta(seconds=rng.randrange(span))
        add("returns_detail", cid, f"r{n:04d}", t, t.timestamp(), order_id=f"o{n}",
            reason=rng.choice(REASONS), amount=round(rng.uniform(5, 300), 2))
    # A tie: two sessions of one customer at one event time (the greater event id is later).
    tie = START + timedelta(days=DAYS - 1, hours=5)
    add("app_sessions", "cust-03", "s9998", tie, tie.timestamp(), session_id="t1",
        device="ios", duration_s=60.0)
    add("app_sessions", "cust-03", "s9999", tie, tie.timestamp(), session_id="t2",
        device="android", duration_s=90.0)
    out.sort(key=lambda r: r.order)
    # Duplicates: the same message again, soon after and much later.
    for r in (out[10], out[200], out[-50]):
        out.append(replace(r, order=r.order + 3_000))
    out.sort(key=lambda r: r.order)
    return out


def frames(records: Iterable[Record]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The distinct events of each stream as the fold reads them (one row per event id)."""
    import pandas as pd

    rows: dict[str, list[dict[str, Any]]] = {"app_sessions": [], "returns_detail": []}
    for r in records:
        v = dict(r.value)
        key, time = WIRE[r.stream]
        v["customer_id"], v["event_time"] = v.pop(key), v.pop(time)
        rows[r.stream].append(v)
    out = []
    for stream in ("app_sessions", "returns_detail"):
        attrs = ["session_id", "device", "duration_s"] if stream == "app_sessions" else [
            "order_id", "reason", "amount"]
        df = pd.DataFrame(rows[stream], columns=["event_id", "customer_id", "event_time", *attrs])
        df = df.drop_duplicates("event_id")
        df = df.astype({c: object for c in df.columns if df[c].dtype.kind not in "fi"})
        df["event_time"] = pd.to_datetime(df["event_time"], utc=True)
        out.append(df)
    return out[0], out[1]


# -- the oracle ---------------------------------------------------------------------------------

def _exact(values: pd.Series, scale: int) -> pd.Series:
    """Values as the fold sums them: whole units of 1/scale."""
    return (values * scale).round()


def _nested(series: pd.Series, cast: Any = float) -> dict[str, dict[str, Any]]:
    """A (customer_id, key) series as ``{customer_id: {key: value}}``."""
    out: dict[str, dict[str, Any]] = {}
    for (cid, key), v in series.sort_index().items():
        out.setdefault(cid, {})[key] = cast(v)
    return out


def oracle(sessions: pd.DataFrame, returns: pd.DataFrame,
           now: pd.Timestamp | None) -> dict[str, dict[str, Any]]:
    """Every declared field of every customer, in pandas. ``now``: the time the windows and
    decay are read at (None: each customer's own latest event time, over both streams)."""
    import pandas as pd

    both = pd.concat([sessions[["customer_id", "event_time"]],
                      returns[["customer_id", "event_time"]]])
    latest = both.groupby("customer_id")["event_time"].max()
    at = latest if now is None else pd.Series(now, index=latest.index)
    hl = HALF_LIFE.total_seconds()
    s, r = sessions.copy(), returns.copy()
    for df in (s, r):
        df["now"] = df["customer_id"].map(at)
        df["day"] = df["event_time"].dt.floor("D")
        df["weight"] = 2.0 ** (-(df["now"] - df["event_time"]).dt.total_seconds() / hl)
    s["in_7d"] = s["day"] >= s["now"].dt.floor("D") - pd.Timedelta(days=6)
    s["this_month"] = ((s["event_time"].dt.year == s["now"].dt.year)
                       & (s["event_time"].dt.month == s["now"].dt.month))
    s["micros"] = _exact(s["duration_s"], 10**6)
    r["in_30d"] = r["day"] >= r["now"].dt.floor("D") - pd.Timedelta(days=29)
    r["cents"], r["micros"] = _exact(r["amount"], 100), _exact(r["amount"], 10**6)
    # Latest and last N: by event time, ties by the greater event id.
    s = s.sort_values(["event_time", "event_id"], ascending=False)
    r = r.sort_values(["event_time", "event_id"], ascending=False)
    gs, gr = s.groupby("customer_id"), r.groupby("customer_id")
    w30 = r[r["in_30d"]]
    per_session: dict[str, pd.Series] = {
        "last_device": gs["device"].first(), "app_time_s": gs["micros"].sum() / 10**6,
        "session_count": gs.size(), "session_heat": gs["weight"].sum().round(6),
        "longest_session_s": gs["duration_s"].max(),
        "first_session_at": gs["event_time"].min(),
        "last_app_device": s[s["device"] != "web"].groupby("customer_id")["device"].first()}
    per_return: dict[str, pd.Series] = {
        "detail_returns": gr.size(), "refunded": gr["cents"].sum() / 100,
        "last_return_reason": gr["reason"].first()}
    scalars = {name: col.to_dict() for name, col in (per_session | per_return).items()}
    sessions_7d = gs["in_7d"].sum().to_dict()
    refunded_30d = (w30.groupby("customer_id")["cents"].sum() / 100).to_dict()
    monthly = (s[s["this_month"]].groupby("customer_id")["micros"].sum() / 10**6).to_dict()
    maps = {
        "device_affinity": _nested(
            (s["weight"] * s["duration_s"]).groupby([s["customer_id"], s["device"]]).sum()
            .round(6)),
        "returns_by_reason": _nested(r.groupby(["customer_id", "reason"]).size(), int),
        "refunded_by_reason": _nested(
            r.groupby(["customer_id", "reason"])["micros"].sum() / 10**6),
    }
    in_30d = _nested(w30.groupby(["customer_id", "reason"]).size(), int)
    recent: dict[str, list[dict[str, Any]]] = {}
    for x in gs.head(3)[["customer_id", "device", "duration_s", "event_time"]].to_dict(
            "records"):  # newest first
        recent.setdefault(x["customer_id"], []).append(
            {"device": x["device"], "duration_s": x["duration_s"],
             "at": x["event_time"].to_pydatetime()})
    devices = {cid: sorted(g.unique()) for cid, g in gs["device"]}
    out: dict[str, dict[str, Any]] = {}
    for cid in latest.index:
        # Every customer of the model's streams has the windowed fields (0 or {}: none).
        row: dict[str, Any] = {
            "sessions_7d": int(sessions_7d.get(cid, 0)),
            "returns_30d_by_reason": in_30d.get(cid, {}),
            "refunded_30d": float(refunded_30d.get(cid, 0.0)),
            "app_time_monthly": ({at[cid].strftime("%Y-%m"): monthly[cid]}
                                 if cid in monthly else {}),
        }
        for name, values in scalars.items():
            if cid in values:
                row[name] = values[cid]
        for name, values in maps.items():
            if cid in values:
                row[name] = values[cid]
        if cid in recent:
            row["recent_sessions"], row["devices"] = recent[cid], devices[cid]
        if "first_session_at" in row:
            row["first_session_at"] = row["first_session_at"].to_pydatetime()
        if "session_count" in row:  # the derived fields
            row["avg_session_s"] = row["app_time_s"] / row["session_count"]
            row["heavy_user"] = row["avg_session_s"] >= 900
            row["active_share_7d"] = row["sessions_7d"] / row["session_count"]
            row["returns_per_session"] = row.get("detail_returns", 0) / row["session_count"]
        out[cid] = row
    return out


def differences(store: EntityStore, expected: dict[str, dict[str, Any]]) -> list[str]:
    """What differs, field by field (decayed scores within their 6 decimals)."""
    live = {e["id"]: e for e in store.entities("customer")}
    out = [f"customers: live {sorted(live)} != pandas {sorted(expected)}"] \
        if set(live) != set(expected) else []
    for cid, want in expected.items():
        got = live.get(cid, {})
        for name in DECLARED:
            a, b = got.get(name), want.get(name)
            if name in DECAYED and a is not None and b is not None:
                same = (a == pytest.approx(b, abs=2e-6) if isinstance(b, float) else
                        a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=2e-6)
                                                     for k in b))
            else:
                same = a == b
            if not same:
                out.append(f"{cid}.{name}: live {a!r} != pandas {b!r}")
    return out


# -- running it through the broker --------------------------------------------------------------

def topics_of(broker: EmbeddedBroker, **options: Any) -> Settings:
    return Settings(bootstrap=broker.bootstrap, topic_prefix=f"dm{uuid.uuid4().hex[:8]}.",
                    **{"partitions": 2, **options})


def produce(settings: Settings, records: Iterable[Record], model: d.EntityModel = MODEL) -> int:
    """The records as JSON to their stream's topics, keyed by entity id; how many."""
    from c360.run.pipeline import Pipeline

    pipeline = Pipeline(settings, model=model)
    pipeline.ensure_topics()
    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 5})
    n = 0
    for r in records:
        producer.produce(pipeline.catalogue.topic(r.stream), key=r.key.encode(),
                         value=msgspec.json.encode(r.value))
        n += 1
    assert producer.flush(30) == 0
    return n


def run(settings: Settings, **options: Any) -> tuple[Pipeline, EntityStore]:
    from c360.run.pipeline import Pipeline

    pipeline = Pipeline(settings, model=MODEL, idle_timeout=IDLE, **options)
    return pipeline, pipeline.run()


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return generate()


@pytest.fixture(scope="module")
def in_order(broker: EmbeddedBroker, records: list[Record], cli_export: Any,
             bad_model_runs: Any) -> tuple[Pipeline, EntityStore]:
    """The events roughly in event time order (late ones within the hour allowed), 2
    partitions, one worker, default lateness and aging. (The ``c360`` children of the CLI
    tests are started first, to run beside it.) Two malformed sessions are sent too."""
    settings = topics_of(broker)
    produce(settings, [*records, *MALFORMED])
    return run(settings)


# Sessions the app's schema refuses: they go to the dead-letter topic, saying why.
MALFORMED = [
    Record("app_sessions", "cust-01", {"event_id": "bad1", "user_id": "cust-01",
                                       "session_id": "b1", "device": "ios", "duration_s": 3.0},
           0.0),
    Record("app_sessions", "cust-02", {"event_id": "bad2", "user_id": "cust-02",
                                       "ts": "2026-03-20T10:00:00Z", "session_id": "b2",
                                       "device": "ios", "duration_s": "long"}, 0.0),
]


def test_the_events_exercise_what_they_should(records: list[Record]) -> None:
    sessions, returns = frames(records)
    ids = [r.value["event_id"] for r in records]
    assert len(ids) - len(set(ids)) == 3  # duplicates
    late = 0
    last: dict[str, str] = {}
    for r in records:
        t = r.value[WIRE[r.stream][1]]
        late += last.get(r.key, "") > t  # per customer, older than one produced before it
        last[r.key] = max(last.get(r.key, ""), t)
    assert late >= 20
    assert (len(sessions), len(returns)) == (482, 150)
    assert sessions["customer_id"].nunique() == 25 and returns["customer_id"].nunique() == 25
    span = max(sessions["event_time"].max(), returns["event_time"].max()) - min(
        sessions["event_time"].min(), returns["event_time"].min())
    assert timedelta(days=39) < span <= timedelta(days=DAYS)


def test_every_declared_field_equals_pandas_as_of_the_end_of_input(
        in_order: tuple[Pipeline, EntityStore], records: list[Record]) -> None:
    pipeline, store = in_order
    sessions, returns = frames(records)
    end = max(sessions["event_time"].max(), returns["event_time"].max())
    assert store.as_of == end.to_pydatetime()  # aging read every window as of the end
    # Every distinct event applied once: none late, none dead-lettered, duplicates dropped.
    assert store.events_by_stream["app_sessions"] == len(sessions)
    assert store.events_by_stream["returns_detail"] == len(returns)
    expected = oracle(sessions, returns, end)
    assert len(expected) == 30
    assert differences(store, expected) == []
    from tests.factories import read_dlq

    dead = read_dlq(pipeline.settings, pipeline.catalogue.dlq_topic, 2, timeout=30)
    assert sorted(r["reason"] for r in dead) == [
        "invalid app_sessions event: Expected `float`, got `str` - at `$.duration_s`",
        "invalid app_sessions event: Object missing required field `ts`"]
    # The cases are exercised: empty windows, a tie, both kinds of customer.
    cust = store["cust-03"]
    assert [s["device"] for s in cust["recent_sessions"][:2]] == ["android", "ios"]  # the tie
    assert cust["last_device"] == "android"
    assert store["cust-27"].get("session_count") is None and store["cust-27"]["sessions_7d"] == 0
    assert store["cust-01"].get("detail_returns") is None
    assert sum(e["returns_30d_by_reason"] == {} for e in store.entities()) >= 5
    assert sum(e["sessions_7d"] == 0 and bool(e.get("session_count"))
               for e in store.entities()) == 5


def test_the_parquet_export_has_the_declared_columns_in_their_dtypes(
        in_order: tuple[Pipeline, EntityStore], tmp_path: Path) -> None:
    """The export reads the pipeline's model: every scalar declared field is a column of its
    declared dtype (an int field with customers lacking it stays Int64, not float)."""
    import pandas as pd

    _, store = in_order
    assert store.model is MODEL
    table = pd.read_parquet(store.export(tmp_path / "customers.parquet"))
    want = {"session_count": "Int64", "sessions_7d": "Int64", "app_time_s": "float64",
            "refunded": "float64", "heavy_user": "boolean",
            "first_session_at": "datetime64[ns, UTC]"}
    assert {c: str(table[c].dtype) for c in want} == want
    assert pd.api.types.is_string_dtype(table["last_device"])  # parquet reads "string" as str
    assert table["session_count"].isna().sum() == 5  # the customers who only return things


def test_another_order_batching_and_partitioning_give_the_same_fields(
        broker: EmbeddedBroker, records: list[Record],
        in_order: tuple[Pipeline, EntityStore]) -> None:
    """Event time is the truth: the events shuffled (days out of order: the lateness allowed
    is 60 days), on 3 partitions, folded by 2 workers, give every field of the first run."""
    shuffled = list(records)
    random.Random(7).shuffle(shuffled)
    settings = topics_of(broker, partitions=3, allowed_lateness_s=60 * 86_400)
    produce(settings, shuffled)
    _, store = run(settings, workers=2)
    _, first = in_order
    want = {e["id"]: {k: e.get(k) for k in DECLARED} for e in first.entities()}
    assert differences(store, want) == []
    assert store.as_of == first.as_of


def test_with_aging_off_windows_and_decay_are_as_of_each_customers_latest_event(
        broker: EmbeddedBroker, records: list[Record]) -> None:
    """``EntityHooks(sweep_per_batch=0)`` (``c360 run --no-sweep``): nobody is aged, so a
    customer's windows and decay stay as of their own latest event. (The newest 200 events
    are produced first, newest first, then the rest in order.)"""
    settings = topics_of(broker, allowed_lateness_s=60 * 86_400)
    produce(settings, [*reversed(records[-200:]), *records[:-200]])
    from c360.entity.derive import EntityHooks

    pipeline, store = run(settings, hooks=EntityHooks(sweep_per_batch=0))
    assert pipeline.as_of is None and store.as_of is None
    sessions, returns = frames(records)
    assert differences(store, oracle(sessions, returns, None)) == []


# -- modelling mistakes: one line naming the field -------------------------------------------

def _pipeline(settings: Settings, **options: Any) -> Pipeline:
    from c360.run.pipeline import Pipeline

    return Pipeline(settings, **options)


def _field(name: str, type_: str, fold: Any) -> d.Field:
    return d.Field(name, type_, fold, "a field of the test")


MISTAKES: dict[str, tuple[list[d.Field], str]] = {
    "unknown stream": ([_field("pushes_7d", "int", d.Windowed("push_notifications", days=7))],
                       "field 'pushes_7d': stream 'push_notifications' is not declared"),
    "derived with a missing input": (
        [_field("per_visit", "float", d.Derived(("app_time_s", "visits"), _avg))],
        "field 'per_visit': derived from 'visits', which is not a declared field"),
    "derived from a field written after the folds": (
        [_field("ltv_eur", "money", d.Derived(("lifetime_value",), lambda lifetime_value: 1))],
        "field 'ltv_eur': derived from 'lifetime_value', which is written after the folds "
        "(by c360's logic)"),
    "sum of a str attribute": ([_field("reason_sum", "float", d.Sum("returns_detail", "reason"))],
                               "field 'reason_sum': a sum fold needs a number, but "
                               "returns_detail.reason is str"),
    "count declared str": ([_field("return_total", "str", d.Count("returns_detail"))],
                           "field 'return_total': a count fold gives int or map, not 'str'"),
    "windowed by= declared a number": (
        [_field("returns_30d", "int", d.Windowed("returns_detail", days=30, by="reason"))],
        "field 'returns_30d': a windowed fold with by= gives a map, not 'int'"),
    "latest of a str declared a number": (
        [_field("device_n", "int", d.Latest("app_sessions", "device"))],
        "field 'device_n': declared 'int', but app_sessions.device is str"),
    "unknown attribute": ([_field("screen", "str", d.Latest("app_sessions", "screen"))],
                          "field 'screen': stream 'app_sessions' has no field 'screen'"),
    "unknown by attribute": (
        [_field("by_sku", "map", d.Count("returns_detail", by="sku"))],
        "field 'by_sku': stream 'returns_detail' has no field 'sku'"),
    "declared twice": ([_field("app_time_s", "float", d.Sum("app_sessions", "duration_s"))],
                       "field 'app_time_s' is declared twice"),
    "declared twice over the retail model": (
        [_field("email", "str", d.Latest("app_sessions", "device"))],
        "field 'email' is declared twice"),
    "derived cycle": ([_field("a", "float", d.Derived(("b",), lambda b: b)),
                       _field("b", "float", d.Derived(("a",), lambda a: a))],
                      "field 'a': derived from itself (a -> b -> a)"),
    "a name of the store's own": ([_field("version", "int", d.Count("app_sessions"))],
                                  "field 'version': the name is the store's own (the "
                                  "entity's version)"),
    "a name that is not an identifier": (
        [_field("sessions 7d", "int", d.Windowed("app_sessions", days=7))],
        "field 'sessions 7d': a field's name must be a Python identifier"),
    "unknown type": ([_field("sessions", "integer", d.Count("app_sessions"))],
                     "field 'sessions': unknown type 'integer'"),
    "no description": ([d.Field("sessions", "int", d.Count("app_sessions"), " ")],
                       "field 'sessions': give it a one-line description"),
    "a window of 0 days": ([_field("sessions_0d", "int", d.Windowed("app_sessions", days=0))],
                           "field 'sessions_0d': a window is at least 1 day, not 0"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_modelling_mistake_is_one_line_naming_the_field(mistake: str) -> None:
    fields, says = MISTAKES[mistake]
    model = MODEL.extend(fields=fields)
    with pytest.raises(ModelError) as raised:
        model.check()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(says), message
    with pytest.raises(ModelError) as again:  # the pipeline refuses it at start, as check does
        _pipeline(Settings(), model=model)
    assert str(again.value) == message


def test_a_stream_declared_twice_or_badly_is_one_line() -> None:
    with pytest.raises(ModelError, match=r"^stream 'app_sessions' is declared twice$"):
        MODEL.extend(streams=[SESSIONS]).check()
    with pytest.raises(ModelError, match=r"^stream 'pings': topic 'shop.app' is stream "
                       r"'taps''s already; give each stream its own topic$"):
        MODEL.extend(streams=[d.stream("taps", {"x": int}, topic="shop.app"),
                              d.stream("pings", {"y": str}, topic="shop.app")]).check()
    with pytest.raises(ModelError, match=r"^stream 'app-sessions': a stream's name must be"):
        d.stream("app-sessions", {"device": str})
    with pytest.raises(ModelError, match=r"^stream 'pings': field 'user_id' is declared by key="):
        d.stream("pings", {"user_id": str}, key="user_id")


def test_replace_true_replaces_a_field_of_the_same_name() -> None:
    again = _field("app_time_s", "float", d.Sum("app_sessions", "duration_s"))
    model = MODEL.extend(fields=[again], replace=True).check()
    assert model.field("app_time_s") is again
    assert [f.name for f in model.fields].count("app_time_s") == 1


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def _c360(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``c360 ARGV`` started in a child process (the children of this file run side by side:
    each spends 2-4 s importing, on 2 cores)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("C360_")},
           "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "c360", *argv], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen[str]) -> Done:
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Done(proc.returncode, out, err)


BAD_MODELS = {
    "nope:x": "c360: error: --model 'nope:x': cannot import nope",
    "tests.test_declared_model:NOT_A_MODEL": (
        "c360: error: --model 'tests.test_declared_model:NOT_A_MODEL': "
        "tests.test_declared_model.NOT_A_MODEL is str, not a c360 EntityModel"),
    "tests.test_declared_model": "c360: error: --model 'tests.test_declared_model': write it "
                                 "as package.module:name",
    "tests.test_declared_model:BROKEN": "c360: error: field 'app_reason': stream "
                                        "'app_sessions' has no field 'reason'",
}


@pytest.fixture(scope="module")
def bad_model_runs() -> dict[str, subprocess.Popen[str]]:
    """Every bad ``--model`` at once (each test awaits its own)."""
    return {spec: _c360("run", "--model", spec, "--until-idle", "1") for spec in BAD_MODELS}


@pytest.mark.parametrize("spec", list(BAD_MODELS))
def test_c360_run_with_a_bad_model_is_one_line_and_exit_2(
        spec: str, bad_model_runs: dict[str, subprocess.Popen[str]]) -> None:
    done = _wait(bad_model_runs[spec])
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[0].startswith(BAD_MODELS[spec]), lines[0]
    assert done.stdout == ""  # refused before anything connects


@pytest.fixture(scope="module")
def cli_export(broker: EmbeddedBroker, records: list[Record],
               tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.Popen[str], Path]:
    """``c360 run --model`` on topics of its own, started at once (it runs beside the
    in-process runs) and awaited by its test."""
    settings = topics_of(broker)
    produce(settings, records)
    out = tmp_path_factory.mktemp("cli") / "customers.jsonl"
    proc = _c360("run", "--model", "tests.test_declared_model:MODEL", "--until-idle", str(IDLE),
                 "--bootstrap", broker.bootstrap, "--export", str(out), "--progress", "never",
                 env={"C360_TOPIC_PREFIX": settings.topic_prefix})
    return proc, out


def test_c360_run_with_the_model_of_this_file_exports_its_fields(
        cli_export: tuple[subprocess.Popen[str], Path], records: list[Record]) -> None:
    """``c360 run --model tests.test_declared_model:MODEL`` folds the declared streams: the
    export's declared fields are pandas's, as of the end of input (as the library's run)."""
    proc, out = cli_export
    done = _wait(proc)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [msgspec.json.decode(line) for line in out.read_bytes().splitlines()]
    sessions, returns = frames(records)
    expected = oracle(sessions, returns, max(sessions["event_time"].max(),
                                             returns["event_time"].max()))
    assert sorted(r["customer_id"] for r in rows) == sorted(expected)
    for row in rows:
        want = expected[row["customer_id"]]
        for name in ("session_count", "sessions_7d", "refunded", "returns_30d_by_reason",
                     "last_device", "avg_session_s"):
            assert row.get(name) == want.get(name), (row["customer_id"], name)
