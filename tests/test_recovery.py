"""Crash recovery: change records, the materializer's repair of replays, and a restarted
pipeline rebuilding its store from the recovery snapshot (the chaos test kills for real)."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from c360.config import Settings
from c360.dev.simulator import simulate
from c360.entity.derive import EntityHooks
from c360.errors import DataError, StateFormatError
from c360.model.delta import Delta, Lifecycle
from c360.run.pipeline import Pipeline
from c360.store.memory import EntityStore
from c360.store.replica import Materializer
from c360.topics.changes import RESET_STREAM, decode_change, encode_change
from tests.factories import by_id

T = datetime(2026, 1, 1, tzinfo=timezone.utc)


def d(version: int, changes: dict, stream: str = "orders", eid: str = "c1") -> Delta:
    return Delta(eid, "customer", version, T, stream, f"e{version}", changes)


class _Touch:
    """Unpickling it creates a file: proof that a reader unpickled what it was given."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def test_change_records_round_trip_exactly_and_refuse_pickles_unread(tmp_path: Path) -> None:
    delta = d(3, {"as_of_day": T.date(), "last_order_at": T + timedelta(hours=1),
                  "recent": [{"at": T, "n": 1}], "pair": (1, 2)})
    assert decode_change(encode_change(delta)) == delta
    life = Lifecycle("c1", "customer", 3, T, "created", {"stream": "orders"})
    assert decode_change(encode_change(life)) == life
    # Records are not pickles (tests/test_state_format.py): a pickle, of a change as the
    # releases before the state format wrote them or of anything, is refused unread.
    touched = tmp_path / "touched"
    for raw in (pickle.dumps(_Touch(touched)), pickle.dumps(delta.__class__),
                pickle.dumps({"a": 1}), b"\x80\x05garbage"):
        with pytest.raises(StateFormatError, match="unversioned pickle of an earlier c360"):
            decode_change(raw)
    assert not touched.exists()
    with pytest.raises(DataError, match="damaged changes record"):
        decode_change(encode_change(delta)[:-3])


def test_replayed_deltas_in_another_order_converge_without_versions_going_back() -> None:
    store = EntityStore()
    seen: list[tuple[str, int]] = []
    sub = store.subscribe(lambda delta: seen.append((delta.entity_id, delta.version)))
    m = Materializer(store)
    # The first run: v1 from the snapshot, then v2, v3 it published before being killed.
    m.apply([d(1, {"a": 1}), d(2, {"pay": 5}), d(3, {"loc": "x"})])
    # The resumed run: the snapshot's state at v1, then the same events in another order
    # and one that is new; v2 and v3 now carry other fields than the store showed.
    m.apply([d(1, {"a": 1}, RESET_STREAM), d(2, {"loc": "x"}), d(3, {"rev": 4})])
    assert store.get("c1")["version"] == 3 and m.repairing == 1
    m.apply([d(4, {"pay": 5})])
    assert store.get("c1") == {"id": "c1", "kind": "customer", "version": 4, "a": 1, "pay": 5,
                               "loc": "x", "rev": 4}
    # An entity the resumed run had no snapshot of starts again at version 1.
    m.apply([d(1, {"b": 1}, eid="c2"), d(2, {"b": 2}, eid="c2")])
    m.apply([d(1, {"c": 1}, eid="c2"), d(2, {"b": 1}, eid="c2"), d(3, {"b": 2}, eid="c2")])
    assert store.get("c2") == {"id": "c2", "kind": "customer", "version": 3, "b": 2, "c": 1}
    store.wait_until(lambda s: len(seen) >= 7, timeout=10)
    sub.close()
    # What a subscriber saw: each version once, in order, none going back.
    assert [v for e, v in seen if e == "c1"] == [1, 2, 3, 4]
    assert [v for e, v in seen if e == "c2"] == [1, 2, 3]
    assert m.repaired == 2


def test_a_restarted_pipeline_rebuilds_its_store_from_the_snapshot(
        settings: Settings, tmp_path: Path) -> None:
    start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    hooks = EntityHooks(sweep_per_batch=0, allowed_lateness=timedelta(hours=1))
    simulate(settings, customers=80, rate=0, events=4000, seed=5, progress=False, start=start)
    first = Pipeline(settings, idle_timeout=4, recovery_dir=tmp_path / "rec",
                     snapshot_interval=0.2, hooks=hooks).run()
    assert first.count("customer") == 80
    simulate(settings, customers=120, rate=0, events=3000, seed=6, progress=False,
             start=start + timedelta(hours=2))
    # A new process would start with an empty store: so does this one.
    second = Pipeline(settings, idle_timeout=4, recovery_dir=tmp_path / "rec",
                      snapshot_interval=0.2, hooks=hooks).run()
    reference = Pipeline(settings, idle_timeout=4, hooks=hooks).run()
    assert by_id(second) == by_id(reference)
    assert second.count("customer") == 120
    assert second.stale_deltas == 0
    # The old customers came back from the snapshot, not from re-reading their events.
    assert second.lifecycle_counts["created"] < reference.lifecycle_counts["created"]
