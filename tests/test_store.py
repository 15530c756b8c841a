"""The in-memory entity store: reads, subscriptions, slow subscribers, export."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from c360.errors import C360Error
from c360.model.delta import Delta
from c360.store.memory import EntityStore
from tests.factories import at


def d(eid: str, version: int, **changes) -> Delta:
    return Delta(eid, "customer", version, at(version), "orders", f"{eid}-{version}", changes)


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def test_get_returns_a_copy_with_id_kind_and_version() -> None:
    store = EntityStore()
    store.apply([d("a", 1, order_count=1), d("a", 2, total_spent=9.5)])
    e = store["a"]
    assert e == {"id": "a", "kind": "customer", "version": 2, "order_count": 1, "total_spent": 9.5}
    e["order_count"] = 99
    assert store["a"]["order_count"] == 1
    assert store.get("missing") is None
    with pytest.raises(KeyError):
        store["missing"]


def test_replayed_deltas_are_dropped_not_reapplied() -> None:
    store = EntityStore()
    store.apply([d("a", 1, n=1), d("a", 2, n=2)])
    store.apply([d("a", 2, n=999), d("a", 1, n=998)])
    assert store["a"]["n"] == 2
    assert store.stale_deltas == 2


def test_subscriber_gets_only_selected_fields_in_version_order() -> None:
    store = EntityStore()
    got: list[Delta] = []
    sub = store.subscribe(got.append, ids="a", fields=["loyalty_points"])
    store.apply([d("a", 1, order_count=1), d("b", 1, loyalty_points=5),
                 d("a", 2, loyalty_points=10, order_count=2), d("a", 3, loyalty_points=20)])
    wait_for(lambda: len(got) == 2)
    sub.close()
    assert [(x.version, x.changes) for x in got] == [(2, {"loyalty_points": 10}),
                                                     (3, {"loyalty_points": 20})]


def test_a_stalled_subscriber_blocks_nobody_and_its_backlog_is_bounded() -> None:
    store = EntityStore(max_pending=100)
    release = threading.Event()
    slow: list[Delta] = []
    fast: list[Delta] = []

    def stalled(delta: Delta) -> None:
        release.wait()
        slow.append(delta)

    store.subscribe(stalled)
    store.subscribe(fast.append)
    started = time.monotonic()
    for v in range(1, 2001):
        store.apply([d(f"c{v % 10}", (v + 9) // 10, n=v)])
    assert time.monotonic() - started < 5  # the writer never waited for the stalled reader
    final = {f"c{i}": 200 for i in range(10)}
    # The other subscriber is current while the stalled one still holds its first delta.
    wait_for(lambda: {x.entity_id: x.version for x in fast} == final)
    assert slow == []
    release.set()
    wait_for(lambda: {x.entity_id: x.version for x in slow} == final)
    assert len(slow) < 300  # coalesced per entity instead of queued without bound
    last = {}
    for x in slow:
        assert x.version > last.get(x.entity_id, 0)  # still in version order
        last[x.entity_id] = x.version
    assert slow[-1].changes["n"] > 1990  # the merged delta carries the latest values


def test_a_failing_callback_does_not_stop_deliveries() -> None:
    store = EntityStore()
    got: list[int] = []

    def flaky(delta: Delta) -> None:
        if delta.version == 1:
            raise RuntimeError("subscriber bug")
        got.append(delta.version)

    sub = store.subscribe(flaky)
    store.apply([d("a", 1, n=1), d("a", 2, n=2)])
    wait_for(lambda: got == [2])
    assert sub.errors == 1


def test_dataframe_flattens_nested_fields() -> None:
    store = EntityStore()
    store.apply([d("a", 1, location={"city": "Recife", "latitude": -8.0}, order_count=3),
                 d("b", 1, order_count=1)])
    df = store.dataframe()
    assert list(df.index) == ["a", "b"]
    assert df.loc["a", "location.city"] == "Recife"
    assert df.loc["b", "order_count"] == 1


def test_the_local_replica_reads_like_the_store_and_escapes_pointers_as_the_server() -> None:
    from c360.sync.client import apply_ops
    from c360.sync.local import local
    from c360.sync.protocol import escape

    store = EntityStore()
    store.apply([d("a", 1, location={"city": "Recife"}, order_count=3), d("b", 1, order_count=1)])
    replica = local(store)
    seen: list[list[dict]] = []
    replica.on_change(lambda eid, entity, ops: seen.append(ops))
    try:
        replica.sync("*")
        store.apply([d("a", 2, **{"odd/name~": 1})])
        wait_for(lambda: replica.versions.get("a") == 2)
        # The replica's frame is the store's, row for row (it syncs every entity).
        pd.testing.assert_frame_equal(replica.dataframe(), store.dataframe(), check_like=True)
        assert replica.get("a") == {k: v for k, v in store.get("a").items() if k != "version"}
    finally:
        replica.close()
    assert seen[-1] == [{"op": "add", "path": escape("odd/name~"), "value": 1}]
    assert seen[-1][0]["path"] == "/odd~1name~0"  # RFC 6901
    copy: dict = {}
    apply_ops(copy, seen[-1])  # the client's fast path reads the pointer back
    assert copy == {"odd/name~": 1}


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_export_writes_one_row_per_customer(tmp_path, suffix: str) -> None:
    store = EntityStore()
    store.apply([d("a", 1, order_count=3, recent_orders=[{"order_id": "o"}]),
                 d("b", 1, order_count=1)])
    path = store.export(tmp_path / f"out{suffix}")
    df = {".parquet": pd.read_parquet, ".csv": pd.read_csv,
          ".jsonl": lambda p: pd.read_json(p, lines=True)}[suffix](path)
    assert list(df["customer_id"]) == ["a", "b"]
    assert list(df["order_count"]) == [3, 1]


def test_export_refuses_unknown_formats(tmp_path) -> None:
    with pytest.raises(C360Error, match="use .parquet, .csv or .jsonl"):
        EntityStore().export(tmp_path / "out.xlsx")


def test_lifecycle_subscribers_get_entity_events_and_delta_subscribers_do_not() -> None:
    from c360.model.delta import Lifecycle

    store = EntityStore()
    born: list[Lifecycle] = []
    changed: list[Delta] = []
    store.subscribe_lifecycle(born.append, types=["created"])
    store.subscribe(changed.append)
    store.apply([d("a", 1, n=1), Lifecycle("a", "customer", 1, at(1), "created"), d("a", 2, n=2)])
    wait_for(lambda: len(born) == 1 and len(changed) == 2)
    assert born[0].entity_id == "a" and store.lifecycle_counts["created"] == 1
    with pytest.raises(C360Error, match="unknown lifecycle types"):
        store.subscribe_lifecycle(born.append, types=["exploded"])
