"""Section 5 — memory: bytes per customer entity at steady state.

Folds the simulator's events straight through the dataflow's shards and into an
:class:`~c360.store.memory.EntityStore` in one child process (no Kafka: the state is the
same), with the default relevance windows, and reports the process's RSS growth per
customer — the entity state and the store's mirror of it together.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness.common import Scale, worker
from benchmarks.harness.progress import Progress

TARGET = 2048  # bytes per customer
EVENTS_PER_CUSTOMER = 10


def sizes(scale: Scale) -> list[int]:
    return [1_000, 2_500] if scale.quick else [10_000, 50_000, 100_000]


def steps(scale: Scale) -> int:
    return len(sizes(scale))


def run(scale: Scale, progress: Progress) -> dict[str, Any]:
    rows = []
    for n in sizes(scale):
        r = worker("memory", {"customers": n, "events": n * EVENTS_PER_CUSTOMER}, timeout=3600)
        rows.append(r)
        progress.step(f"s5 {n:,} customers")
    last = rows[-1]
    return {"rows": rows, "target_bytes_per_customer": TARGET,
            "bytes_per_customer": last["bytes_per_customer"],
            "met": last["bytes_per_customer"] <= TARGET,
            "method": "RSS growth of the folding process / customer entities; state (shards) "
                      "and store mirror together; events per customer as generated"}
