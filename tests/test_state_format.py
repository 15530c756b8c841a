"""State that outlives a process is a format (docs/reliability.md, "State format").

Recovery snapshots and changes-topic records are versioned bytes of plain data: a snapshot
committed in tests/fixtures/state (written by tests/fixtures/make_state_fixtures.py) still
resumes and folds on; a resumed shard folds with the settings given at restart, not the
ones of the run that wrote it; no module path is written; another version is refused in
one line that says what to do.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir
from kafka import KafkaProducer

from c360.config import REPO_ROOT, Settings
from c360.entity.derive import EntityHooks
from c360.entity.logic import first_logic
from c360.entity.shard import Routed, ShardBatch
from c360.errors import DataError, StateFormatError
from c360.model import events as ev
from c360.model.delta import Delta, Lifecycle
from c360.run import recovery
from c360.store.replica import ChangesReplica
from c360.topics.admin import create_topics
from c360.topics.changes import decode_change, encode_change
from dataflows.steps import Folded, GlobalWindowsLogic, ShardLogic
from tests.fixtures.make_state_fixtures import HERE, LATENESS, at, changes, folded_logic, routed

UTC = timezone.utc


def fixture(name: str) -> bytes:
    return (HERE / name).read_bytes()


def fold(logic: ShardLogic, *items: tuple[str, str, ev.Event], mark: float | None = None,
         first_offset: int = 100) -> Folded:
    """One batch of customer events (of source partition 0) through the logic."""
    routed_items = routed(list(items), first_offset)
    last = max((e.event_time.timestamp() for _, _, e in items), default=0.0)
    batch = ShardBatch("c0", 0, 1, routed_items, last - 3600 if mark is None else mark)
    out, _ = logic.on_batch([batch])
    merged = Folded([], [], [], [])
    for f in out:
        merged.deltas.extend(f.deltas)
        merged.decisions.extend(f.decisions)
    return merged


def loyalty(n: int, minutes: float, points: int) -> tuple[str, str, ev.Event]:
    return ("loyalty", "cust-a", ev.Loyalty(event_id=f"l-more-{n}", event_time=at(minutes),
                                            customer_id="cust-a", points_earned=points))


# -- (a) a committed snapshot resumes ---------------------------------------------------------

def test_the_committed_snapshot_resumes_its_entities_and_folds_on() -> None:
    logic = ShardLogic(fixture("shard-v1.bin"), first_logic, True,
                       EntityHooks(allowed_lateness=LATENESS), LATENESS)
    assert logic.kind == "customer"
    # A resumed shard first publishes every entity's whole state at its snapshot version.
    reset, _ = logic.on_notify()
    shown = {d.entity_id: d for f in reset for d in f.deltas}
    assert {e: d.version for e, d in shown.items()} == {"cust-a": 6, "cust-b": 2}
    assert all(d.stream == "recovery" for d in shown.values())
    a, b = shown["cust-a"].changes, shown["cust-b"].changes
    assert (a["name"], a["order_count"], a["total_spent"], a["loyalty_points"],
            a["loyalty_tier"]) == ("Ana Lima", 1, 40.0, 500, "bronze")
    assert type(a["as_of_day"]) is date and a["as_of_day"] == date(2026, 1, 10)
    assert a["last_order_at"] == at(1) and a["last_order_at"].tzinfo is not None
    assert a["cart"] == [{"product_id": "p2", "added_at": at(4)}]
    assert a["recent_orders"][0]["lines"][0] == {"product_id": "p1", "quantity": 2,
                                                 "price": 20.0, "discount": 0.0,
                                                 "category": "books", "brand": "acme"}
    assert a["category_affinity"] == {"books": 6.0} and a["segments"] == ["new"]
    assert b["recent_searches"] == [{"query": "boots", "results": 12, "at": at(2)}]
    assert b["social_sentiment"] == 0.5

    # The bookkeeping came back too: a duplicate is recognised, the cart marks compare
    # (buying the carted product empties the cart), the windows add to their buckets...
    again = ("payments", "cust-a", ev.Payment(
        event_id="pay1", event_time=at(2), customer_id="cust-a", order_id="ord-1",
        payment_date=at(2), method="card", amount=40.0))
    order = ("orders", "cust-a", ev.Order(
        event_id="o2", event_time=at(7), customer_id="cust-a", order_id="ord-2",
        order_date=at(7), status="created", total_amount=25.5,
        lines=[ev.OrderLine("p2", 1, 25.5, category="shoes", brand="acme")]))
    out = fold(logic, again, order, loyalty(1, 8, 1000))
    deltas = [d for d in out.deltas if isinstance(d, Delta)]
    assert [(d.event_id, d.version) for d in deltas] == [("o2", 7), ("l-more-1", 8)]
    o2, l2 = deltas[0].changes, deltas[1].changes
    assert (o2["order_count"], o2["orders_value"], o2["orders_1d"], o2["cart"]) == (
        2, 65.5, 2, [])
    # The resumed decayed score: 6 points 6 minutes ago at a 14-day half-life, plus 3 new.
    assert o2["category_affinity"] == {"books": round(6 * 0.5 ** (6 / (14 * 24 * 60)), 4),
                                       "shoes": 3.0}
    # ... and the rules run on the resumed state: 500 + 1000 points is a tier upgrade.
    assert (l2["loyalty_points"], l2["loyalty_tier"]) == (1500, "silver")
    assert [(d.rule, d.action) for d in out.decisions] == [("loyalty_tier_change",
                                                            "tier_upgrade")]
    # The aging deadlines came back: a watermark two days on ages both customers.
    aged = fold(logic, mark=at(2 * 24 * 60).timestamp())
    relevance = {d.entity_id: d for d in aged.deltas
                 if isinstance(d, Delta) and d.stream == "relevance"}
    assert sorted(relevance) == ["cust-a", "cust-b"]
    assert relevance["cust-a"].changes["spend_1d"] == 0.0
    assert relevance["cust-b"].version == 3


def test_the_committed_global_windows_snapshot_resumes() -> None:
    logic = GlobalWindowsLogic(fixture("global-v1.bin"), 1)
    closed = {d.entity_id: d for batch in logic.on_eof()[0] for d in batch}
    revenue = closed["global:revenue_per_minute"].changes["series"]
    assert {"minute": at(1), "revenue": 40.0, "orders": 1} in revenue
    assert closed["global:top_products"].changes["top"] == [["p1", 2]]
    assert closed["global:active_customers"].changes["last"] == {"minute": at(5),
                                                                 "customers": 1}


def test_the_committed_change_records_decode_exactly() -> None:
    delta, life = changes()
    got = decode_change(fixture("delta-v1.bin"))
    assert got == delta and type(got.changes["as_of_day"]) is date
    assert decode_change(fixture("lifecycle-v1.bin")) == life
    # What this c360 writes reads back the same (a tuple at the top level stays one).
    odd = Delta("c1", "customer", 3, at(0), "orders", "e3",
                {"pair": (1, 2), "day": date(2026, 1, 1), "raw": b"\x00", "n": None})
    assert decode_change(encode_change(odd)) == odd


# -- (b) the settings given at restart take effect --------------------------------------------

def test_a_resumed_shard_folds_with_the_settings_given_now() -> None:
    """Written with rules, segments, aging on and 1 h of lateness; resumed with all of them
    off and 5 minutes: the new ones apply (a snapshot used to keep the old hooks)."""
    written, _ = folded_logic()
    assert written.shard.hooks is not None and written.shard.hooks.rules
    snapshot = written.snapshot()
    assert snapshot is not None
    quiet = EntityHooks(rules=False, segments=False, sweep_per_batch=0,
                        allowed_lateness=timedelta(minutes=5))
    logic = ShardLogic(snapshot, first_logic, True, quiet, timedelta(minutes=5))
    assert logic.shard.hooks is quiet and not logic.shard.aging
    out = fold(logic, loyalty(1, 8, 1000))
    reset = [d for d in out.deltas if isinstance(d, Delta) and d.stream == "recovery"]
    assert sorted(d.entity_id for d in reset) == ["cust-a", "cust-b"]
    (delta,) = [d for d in out.deltas if isinstance(d, Delta) and d.stream != "recovery"]
    assert (delta.version, delta.changes["loyalty_tier"]) == (7, "silver")
    assert out.decisions == [] and "decisions" not in delta.changes  # rules are off
    # Aging is off: a watermark days later ages nobody.
    aged = fold(logic, mark=at(5 * 24 * 60).timestamp())
    assert [d for d in aged.deltas if isinstance(d, Delta) and d.stream == "relevance"] == []
    assert logic.on_eof()[0] == []
    # The lateness is 5 minutes: events without a watermark of their own (here of source
    # partition 1, new to the shard) get the shard's clock of their partition less 5
    # minutes, not less the hour the snapshot was made with.
    shard = logic.shard
    for n, minutes in enumerate((10, 11)):
        e = ev.Loyalty(event_id=f"late-{n}", event_time=at(minutes), customer_id="cust-b",
                       points_earned=1)
        shard.apply([Routed("loyalty", "customer", "cust-b", e, ("t", 1, n))], None)
    assert shard.marks[1] == at(10).timestamp() - 300


def test_aging_turned_on_at_restart_ages() -> None:
    """The reverse: written with aging off (c360 run --no-sweep), resumed with it on."""
    off = EntityHooks(sweep_per_batch=0, allowed_lateness=LATENESS)
    logic = ShardLogic(None, first_logic, True, off, LATENESS)
    fold(logic, loyalty(1, 0, 10), ("payments", "cust-b", ev.Payment(
        event_id="p-b", event_time=at(1), customer_id="cust-b", order_id="o-b",
        payment_date=at(1), method="card", amount=12.0)), first_offset=0)
    on = EntityHooks(allowed_lateness=LATENESS)
    resumed = ShardLogic(logic.snapshot(), first_logic, True, on, LATENESS)
    assert resumed.shard.aging
    fold(resumed, loyalty(2, 2, 10))  # cust-a has an event: it gets a deadline
    aged = fold(resumed, mark=at(2 * 24 * 60).timestamp())
    assert [d.entity_id for d in aged.deltas
            if isinstance(d, Delta) and d.stream == "relevance"] == ["cust-a"]
    # cust-b had no event since: aged at the end of input, not before (its deadline was
    # never set, aging being off when it was last folded).
    final = resumed.shard.finish(at(3 * 24 * 60).timestamp())
    assert sorted({d.entity_id for d in final if isinstance(d, Delta)}) == ["cust-a",
                                                                            "cust-b"]


def test_a_resumed_pipeline_folds_with_the_hooks_it_is_started_with(
        settings: Settings, tmp_path: Path) -> None:
    """End to end through Kafka and bytewax recovery: rules and segments on, then the same
    recovery directory resumed with them off: the later events make no decision."""
    from c360.dev.simulator import simulate
    from c360.run.pipeline import Pipeline

    start = datetime(2026, 3, 1, tzinfo=UTC)
    on = EntityHooks(sweep_per_batch=0, allowed_lateness=timedelta(hours=1))
    off = EntityHooks(rules=False, segments=False, sweep_per_batch=0,
                      allowed_lateness=timedelta(hours=1))
    rec = tmp_path / "rec"
    simulate(settings, customers=60, rate=0, events=2500, seed=8, progress=False, start=start)
    first = Pipeline(settings, idle_timeout=4, recovery_dir=rec, snapshot_interval=0.2,
                     hooks=on).run()
    simulate(settings, customers=60, rate=0, events=2500, seed=8, progress=False,
             start=start + timedelta(days=2))
    second = Pipeline(settings, idle_timeout=4, recovery_dir=rec, snapshot_interval=0.2,
                      hooks=off).run()
    reference = Pipeline(settings, idle_timeout=4, hooks=on).run()  # rules on throughout

    def made(store: object) -> dict[str, tuple]:
        return {e["id"]: (e.get("decisions"), e.get("segments"))
                for e in store.entities(None) if e["kind"] == "customer"}  # type: ignore

    before, after = made(first), made(second)
    assert second.count("customer") == reference.count("customer") >= first.count("customer")
    # With rules on, the later events decide things and move segments...
    assert any(v != before.get(eid, (None, None)) for eid, v in made(reference).items())
    # ... resumed with them off, nothing does: every entity keeps what the first run made.
    assert after == {eid: before.get(eid, (None, None)) for eid in after}
    # (The first run's customers came back from the snapshot and took more events.)
    grew = [eid for eid in before
            if second.get(eid)["version"] > first.get(eid)["version"]]  # type: ignore[index]
    assert len(grew) > len(before) // 2
    assert second.lifecycle_counts["created"] < reference.lifecycle_counts["created"]


# -- (c) no module path in the bytes ----------------------------------------------------------

def test_snapshots_and_change_records_hold_no_class_or_module_name() -> None:
    logic, windows = folded_logic()
    blobs = [logic.snapshot() or b"", windows.snapshot(),
             *(encode_change(c) for c in changes())]
    for blob in blobs:
        # Shards are in format 2 (declared folds' bookkeeping), the rest in format 1.
        assert blob[:4] == b"C360" and blob[5] == (2 if blob[4:5] == b"S" else 1)
        for name in (b"c360.", b"EntityState", b"EntityHooks", b"Shard", b"Windows",
                     b"Delta", b"Lifecycle", b"datetime", b"builtins"):
            assert name not in blob, name


def test_the_snapshots_a_real_run_stores_hold_no_module_path(settings: Settings,
                                                                tmp_path: Path) -> None:
    from c360.dev.simulator import simulate
    from c360.run.pipeline import Pipeline

    simulate(settings, customers=20, rate=0, events=400, seed=3, progress=False,
             start=datetime(2026, 3, 1, tzinfo=UTC))
    Pipeline(settings, idle_timeout=3, recovery_dir=tmp_path / "rec",
             snapshot_interval=0.2).run()
    kinds: dict[bytes, int] = {}
    for f in sorted((tmp_path / "rec").glob(recovery.PARTITION_GLOB)):
        with contextlib.closing(sqlite3.connect(f)) as db:
            for step, blob in db.execute("SELECT step_id, ser_change FROM snaps "
                                         "WHERE ser_change IS NOT NULL"):
                snap = pickle.loads(blob)  # bytewax's pickle around each step's state
                if isinstance(snap, dict):  # a source partition's offsets and clock
                    assert step.endswith("kafka_in") and all(
                        type(v) is int for v in snap.values()), step
                    continue
                assert isinstance(snap, bytes) and snap[:4] == b"C360", step
                assert b"c360." not in snap and b"EntityHooks" not in snap
                kinds[snap[:6]] = kinds.get(snap[:6], 0) + 1
    # Shards (customers and products) in format 3 (incremental), the global windows in
    # format 1; the entities are rows of the shard keys' entity logs, plain data too.
    assert set(kinds) == {b"C360S\x03", b"C360G\x01"} and kinds[b"C360S\x03"] > 2
    logs = sorted((tmp_path / "rec" / "entities").glob("*.sqlite3"))
    assert logs
    for f in logs:
        with contextlib.closing(sqlite3.connect(f)) as db:
            for (row,) in db.execute("SELECT data FROM rows WHERE data IS NOT NULL"):
                assert b"c360." not in row and b"EntityState" not in row
    recovery.check_snapshots(tmp_path / "rec")  # and the check at start accepts them


# -- (d) another version: one line that says what to do ---------------------------------------

def _bumped(raw: bytes, version: int = 2) -> bytes:
    return raw[:5] + bytes((version,)) + raw[6:]


def test_a_snapshot_of_another_version_is_refused_in_one_line() -> None:
    hooks = EntityHooks()
    with pytest.raises(StateFormatError) as err:
        ShardLogic(_bumped(fixture("shard-v1.bin"), 4), first_logic, True, hooks, LATENESS)
    msg = str(err.value)
    assert "\n" not in msg
    assert "is format 4, this c360 reads format 1 or 2 or 3: start afresh with an empty " in msg
    with pytest.raises(StateFormatError, match="format 7, this c360 reads format 1"):
        GlobalWindowsLogic(_bumped(fixture("global-v1.bin"), 7), 1)
    # A pickle as the releases before the format wrote them.
    with pytest.raises(StateFormatError, match="unversioned pickle of an earlier c360; this "
                                               "c360 reads recovery snapshot format 1 or 2 or 3"):
        ShardLogic(pickle.dumps(("customer", {})), first_logic, True, hooks, LATENESS)
    with pytest.raises(DataError, match="damaged recovery snapshot"):
        ShardLogic(fixture("shard-v1.bin")[:-40], first_logic, True, hooks, LATENESS)


def test_a_change_record_of_another_version_is_refused_in_one_line() -> None:
    with pytest.raises(StateFormatError) as err:
        decode_change(_bumped(fixture("delta-v1.bin"), 9))
    assert "\n" not in str(err.value)
    assert "changes record is format 9, this c360 reads format 1" in str(err.value)
    with pytest.raises(StateFormatError, match="unversioned pickle"):
        decode_change(pickle.dumps(Lifecycle("c", "customer", 1, at(0), "created")))
    with pytest.raises(DataError, match="not a c360 changes record") as other:
        decode_change(b'{"json": 1}')
    assert not isinstance(other.value, StateFormatError)


def test_a_recovery_directory_of_another_format_stops_the_start(tmp_path: Path) -> None:
    """Checked when the dataflow starts, before any worker: one line naming the directory."""
    rec = tmp_path / "rec"
    recovery.prepare(rec, 1)
    old = pickle.dumps(("customer", {"cust-a": None}))  # what a release before wrote
    with contextlib.closing(sqlite3.connect(rec / "part-0.sqlite3")) as db:
        db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                   "VALUES ('customer360.kafka_in', 'p0', 3, ?)", (pickle.dumps({"t": 1}),))
        db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                   "VALUES ('customer360.fold', 'c3', 3, ?)", (pickle.dumps(old),))
        db.commit()
    with pytest.raises(StateFormatError) as err:
        recovery.prepare(rec, 1)
    msg = str(err.value)
    assert "\n" not in msg and str(rec) in msg and "customer360.fold key c3" in msg
    assert "start afresh with an empty recovery directory" in msg
    # An empty directory made by bytewax's own tool has nothing to check.
    plain = tmp_path / "plain"
    plain.mkdir()
    init_db_dir(plain, 1)
    recovery.check_snapshots(plain)


def test_a_replica_stops_at_a_change_record_of_another_version(settings: Settings) -> None:
    topic = f"{settings.topic_prefix}changes"
    create_topics(settings, [topic], partitions=1)
    delta, _ = changes()
    producer = KafkaProducer(**settings.kafka_python())
    producer.send(topic, key=b"cust-a", value=encode_change(delta))
    producer.send(topic, key=b"x", value=b"not ours")  # skipped, counted
    producer.send(topic, key=b"cust-a", value=_bumped(encode_change(
        Delta("cust-a", "customer", 8, at(7), "orders", "o3", {"order_count": 3})), 4))
    producer.flush()
    producer.close()
    replica = ChangesReplica(settings, topic=topic).start()
    try:
        with pytest.raises(StateFormatError) as err:
            replica.wait_for({"cust-a": 8}, timeout=120)
        msg = str(err.value)
        assert "\n" not in msg and f"stopped at {topic} partition 0 offset 2" in msg
        assert "changes record is format 4, this c360 reads format 1" in msg
        # What came before it was applied; the record not written by c360 was skipped.
        assert replica.versions() == {"cust-a": 7} and replica.bad_records == 1
    finally:
        with pytest.raises(StateFormatError):
            replica.stop()


def test_c360_run_on_a_recovery_directory_of_another_format_exits_2_in_one_line(
        settings: Settings, tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    recovery.prepare(rec, 1)
    with contextlib.closing(sqlite3.connect(rec / "part-0.sqlite3")) as db:
        db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                   "VALUES ('customer360.fold.state', 'c0', 3, ?)",
                   (pickle.dumps(_bumped(fixture("shard-v1.bin"), 4)),))
        db.commit()
    proc = subprocess.run(
        [sys.executable, "-m", "c360", "run", "--recovery-dir", str(rec), "--until-idle", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "C360_KAFKA_BOOTSTRAP": settings.bootstrap,
             "C360_TOPIC_PREFIX": settings.topic_prefix})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"c360: error: recovery directory {rec}, step "
                               "customer360.fold.state key c0: this recovery snapshot is "
                               "format 4, this c360 reads format 1 or 2 or 3: start afresh"
                               ), lines[0]


# -- (e) the declared folds' bookkeeping is part of the format (shard format 2) ----------------

def test_a_shard_with_declared_fields_resumes_from_its_snapshot_as_if_never_stopped() -> None:
    from c360.entity import codec
    from c360.entity.fold import compile_aging, compile_folds
    from c360.entity.shard import Shard
    from c360.model import declare as d
    from c360.models.retail import RETAIL

    taps = d.stream("taps", {"screen": str, "ms": float}, key="user", time="ts")
    model = RETAIL.extend(streams=[taps], fields=[
        d.Field("tap_ms", "float", d.Sum("taps", "ms"), "Time on screens"),
        d.Field("taps_2d", "int", d.Windowed("taps", days=2), "Taps in 2 days"),
        d.Field("tap_heat", "float", d.Decayed("taps", half_life=timedelta(hours=12)),
                "Taps, decayed"),
        d.Field("last_screens", "list", d.LastN("taps", 3, "screen"), "Latest screens"),
        d.Field("first_screen", "str", d.Latest("taps", "screen", where=lambda e: e.ms > 50),
                "Latest long-viewed screen"),
    ])
    hooks = EntityHooks(allowed_lateness=LATENESS, folds=compile_folds(model),
                        age=compile_aging(model))

    def events(lo: int, hi: int) -> list[Routed]:
        return [Routed("taps", "customer", f"u{n % 3}",
                       taps.schema(event_id=f"t{n}", event_time=at(n * 97.0),
                                   customer_id=f"u{n % 3}", screen=f"s{n % 5}",
                                   ms=float(n % 120)), ("c360.taps", 0, n))
                for n in range(lo, hi)]

    whole = Shard(hooks, LATENESS)
    whole.apply(events(0, 60), None)
    whole.apply(events(60, 120), None)
    first = Shard(hooks, LATENESS)
    first.apply(events(0, 60), None)
    raw = codec.encode_shard("customer", first)
    assert raw[:6] == b"C360S\x02"
    kind, resumed = codec.decode_shard(raw, hooks, LATENESS)
    assert kind == "customer" and resumed.entities["u1"].aux == first.entities["u1"].aux
    resumed.apply(events(60, 120), None)
    for cid in ("u0", "u1", "u2"):
        assert resumed.entity(cid) == whole.entity(cid)
        assert resumed.entities[cid].version == whole.entities[cid].version
    assert whole.entity("u1")["taps_2d"] > 0 and len(whole.entity("u1")["last_screens"]) == 3
