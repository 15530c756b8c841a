"""Incremental snapshots (issue 17, item 2): a shard snapshot writes the entities changed
since the last one to the shard's entity log (c360.store.entity_log) and is itself small; a
resume reads the log up to the snapshot's seq, ignoring rows of epochs bytewax never
committed; format-2 snapshots still resume; compaction keeps every resumable seq."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from c360.config import Settings
from c360.dev.simulator import simulate
from c360.entity.derive import EntityHooks
from c360.entity.logic import first_logic
from c360.entity.shard import Routed, ShardBatch
from c360.errors import StateFormatError
from c360.model import events as ev
from c360.run import recovery
from c360.run.pipeline import Pipeline
from c360.store.entity_log import ENTITY_LOG_DIR, KEEP, log_path
from dataflows.steps import ShardLogic
from tests.factories import by_id

LATENESS = timedelta(hours=1)
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
HOOKS = EntityHooks(sweep_per_batch=0, allowed_lateness=LATENESS)


def batch(customers: range, round_: int) -> ShardBatch:
    """One loyalty event per customer (distinct event ids per round), source partition 0."""
    items = [Routed("loyalty", "customer", f"c{n}",
                    ev.Loyalty(event_id=f"l{round_}-{n}", customer_id=f"c{n}",
                               event_time=T0 + timedelta(minutes=round_, seconds=n % 60),
                               points_earned=n + round_),
                    ("c360.loyalty", 0, round_ * 10_000 + n))
             for n in customers]
    return ShardBatch("c0", 0, 1, items, (T0 + timedelta(minutes=round_ - 60)).timestamp())


def logic(resume: bytes | None, logs: Path | None) -> ShardLogic:
    return ShardLogic(resume, first_logic, True, HOOKS, LATENESS, entity_log=logs)


def state(lg: ShardLogic) -> dict[str, tuple[int, dict]]:
    return {eid: (st.version, dict(st.fields)) for eid, st in lg.shard.entities.items()}


def rows(logs: Path, key: str = "c0") -> list[tuple[int, str, int]]:
    with contextlib.closing(sqlite3.connect(log_path(logs, key))) as db:
        return db.execute("SELECT seq, entity_id, length(data) FROM rows "
                          "ORDER BY seq, entity_id").fetchall()


def test_a_snapshot_after_changing_k_of_n_entities_writes_k_rows(tmp_path: Path) -> None:
    logs = tmp_path / "entities"
    lg = logic(None, logs)
    lg.on_batch([batch(range(500), 1)])
    first = lg.snapshot()
    assert first is not None and first[:6] == b"C360S\x03"
    lg.on_batch([batch(range(0, 500, 100), 2)])  # 5 of the 500 change
    second = lg.snapshot()
    assert second is not None
    by_seq: dict[int, list[int]] = {}
    for seq, _, size in rows(logs):
        by_seq.setdefault(seq, []).append(size)
    assert len(by_seq[1]) == 500 and len(by_seq[2]) == 5
    # The snapshot itself holds no entity: its size does not follow the 500.
    whole = ShardLogic(None, first_logic, True, HOOKS, LATENESS)  # no log: whole shards
    whole.on_batch([batch(range(500), 1)])
    whole_bytes = whole.snapshot()
    assert whole_bytes is not None and whole_bytes[:6] == b"C360S\x02"
    assert len(second) * 100 < len(whole_bytes)
    assert sum(by_seq[2]) * 50 < len(whole_bytes)
    # Nothing changed since: no row, the same seq.
    assert lg.snapshot() == second and len(rows(logs)) == 505


def test_a_resume_ignores_rows_of_an_epoch_bytewax_never_committed(tmp_path: Path) -> None:
    logs = tmp_path / "entities"
    lg = logic(None, logs)
    lg.on_batch([batch(range(40), 1)])
    committed = lg.snapshot()
    lg.on_batch([batch(range(0, 40, 2), 2)])
    lg.snapshot()  # its rows (seq 2) are in the log; bytewax crashed before committing it
    assert {seq for seq, _, _ in rows(logs)} == {1, 2}

    reference = logic(None, None)
    for r in (1, 2, 3):
        reference.on_batch([batch(range(0, 40, r), r)])

    resumed = logic(committed, logs)
    assert {seq for seq, _, _ in rows(logs)} == {1}  # the uncommitted rows are gone
    # Its reset publishes the state at the committed snapshot: version 1 each.
    reset = resumed.on_notify()[0][0].deltas
    assert len(reset) == 40 and {d.version for d in reset} == {1}
    resumed.on_batch([batch(range(0, 40, 2), 2)])  # the replay of the lost epoch
    again = resumed.snapshot()
    resumed.on_batch([batch(range(0, 40, 3), 3)])
    assert state(resumed) == state(reference)

    # And from the new snapshot (seq 2, rewritten by the replay) after another crash.
    twice = logic(again, logs)
    twice.on_batch([batch(range(0, 40, 3), 3)])
    assert state(twice) == state(reference)
    assert max(st.version for st in twice.shard.entities.values()) == 3


def test_a_format_2_snapshot_resumes_and_the_next_snapshot_is_incremental(
        tmp_path: Path) -> None:
    logs = tmp_path / "entities"
    old = logic(None, None)
    old.on_batch([batch(range(30), 1)])
    v2 = old.snapshot()
    assert v2 is not None and v2[:6] == b"C360S\x02"

    lg = logic(v2, logs)
    assert state(lg) == state(old)
    lg.on_notify()  # the reset, before any batch: still whole (the key is not known yet)
    assert (lg.snapshot() or b"")[:6] == b"C360S\x02"
    lg.on_batch([batch(range(5), 2)])
    v3 = lg.snapshot()
    assert v3 is not None and v3[:6] == b"C360S\x03"
    assert len(rows(logs)) == 30  # every entity of the whole snapshot went to the log
    old.on_batch([batch(range(5), 2)])
    assert state(logic(v3, logs)) == state(old)


def test_an_incremental_snapshot_without_its_entity_log_is_refused_in_one_line(
        tmp_path: Path) -> None:
    lg = logic(None, tmp_path / "entities")
    lg.on_batch([batch(range(3), 1)])
    snap = lg.snapshot()
    with pytest.raises(StateFormatError) as err:
        logic(snap, None)
    assert "\n" not in str(err.value) and "incremental (format 3)" in str(err.value)


def test_compaction_bounds_the_log_and_keeps_every_resumable_seq(tmp_path: Path) -> None:
    logs = tmp_path / "entities"
    lg = logic(None, logs)
    n, rounds = 50, 30
    snaps: list[tuple[bytes, dict]] = []
    for r in range(1, rounds + 1):
        lg.on_batch([batch(range(n), r)])  # every entity changes every snapshot
        snap = lg.snapshot()
        assert snap is not None
        snaps.append((snap, state(lg)))
    # 1,500 rows written; compaction keeps the live ones and the last KEEP snapshots' rows,
    # and runs once those beyond are as many as twice the live ones.
    assert len(rows(logs)) <= n * (KEEP + 1) + 2 * n
    for snap, expected in snaps[-(KEEP + 1):]:  # resumable at the last seq and KEEP before
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(logs, copy)
        assert state(logic(snap, copy)) == expected


def test_a_restarted_pipeline_resumes_from_incremental_snapshots(
        settings: Settings, tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    simulate(settings, customers=60, rate=0, events=2000, seed=3, progress=False, start=T0)
    first = Pipeline(settings, idle_timeout=4, recovery_dir=rec, snapshot_interval=0.2,
                     hooks=HOOKS).run()
    assert first.count("customer") == 60
    files = sorted((rec / ENTITY_LOG_DIR).glob("*.sqlite3"))
    assert files  # one log per shard key that snapshotted
    with contextlib.closing(sqlite3.connect(files[0])) as db:
        assert db.execute("SELECT COUNT(*) FROM rows").fetchone()[0] > 0
    recovery.check_snapshots(rec)  # the start's header check reads format 3
    simulate(settings, customers=90, rate=0, events=1500, seed=4, progress=False,
             start=T0 + timedelta(hours=2))
    second = Pipeline(settings, idle_timeout=4, recovery_dir=rec, snapshot_interval=0.2,
                      hooks=HOOKS).run()
    reference = Pipeline(settings, idle_timeout=4, hooks=HOOKS).run()
    assert by_id(second) == by_id(reference)
    assert second.lifecycle_counts["created"] < reference.lifecycle_counts["created"]


def test_a_recovery_directory_made_again_drops_its_entity_logs(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    stale = rec / ENTITY_LOG_DIR / "c0.sqlite3"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    recovery.prepare(rec)  # no marker, no partitions: set up afresh
    assert (rec / recovery.MARKER).exists() and not stale.exists()
    recovery.prepare(rec)  # set up: kept as is
    assert (rec / recovery.MARKER).exists()
