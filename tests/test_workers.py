"""The dataflow with 2 workers gives exactly the entities of 1 worker, on the real broker."""

from __future__ import annotations

from datetime import datetime, timezone

from c360.config import Settings
from c360.dev.simulator import simulate
from c360.run.pipeline import run_until_idle
from tests.factories import comparable


def test_two_workers_equal_one_on_simulated_traffic(settings: Settings) -> None:
    report = simulate(settings, customers=200, rate=0, events=20_000, seed=11, progress=False,
                      start=datetime(2026, 3, 1, tzinfo=timezone.utc))
    one = run_until_idle(2, settings, workers=1)
    two = run_until_idle(2, settings, workers=2)
    assert one.count("customer") == 200
    # Global analytics entities count closed windows, not events.
    assert sum(e["version"] for e in one.entities(None)
               if e["kind"] != "global") == report.events - report.duplicates

    def by_id(store):
        return {e["id"]: comparable(e) for e in store.entities(None)}

    a, b = by_id(one), by_id(two)
    assert a.keys() == b.keys()
    differing = [k for k in a if a[k] != b[k]]
    assert differing == [], {k: {f: (a[k].get(f), b[k].get(f)) for f in a[k].keys() | b[k].keys()
                                 if a[k].get(f) != b[k].get(f)} for k in differing[:3]}
