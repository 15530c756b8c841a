"""Section 1 — the c360 dataflow against the Python limit.

The full dataflow (validate, entity fold, business logic, deltas into the store) and a
bare single-process loop (confluent-kafka consume + the same msgspec decoding + one dict
update per event) read the same pre-produced topics, each in its own child process,
alternately; the best run of each counts. Main figure: events per CPU-second, as a ratio.
"""

from __future__ import annotations

from typing import Any

from benchmarks import declared_fold
from benchmarks.harness.common import Scale, best_of, broker, worker
from benchmarks.harness.data import Dataset, produce
from benchmarks.harness.progress import Progress

TARGET = 0.60  # c360 >= 60% of the bare loop's events per CPU-second
STEPS_PER_REPEAT = 2


def steps(scale: Scale) -> int:
    return 2 + STEPS_PER_REPEAT * scale.repeats


def worker_args(ds: Dataset, **extra: Any) -> dict[str, Any]:
    return {"bootstrap": ds.bootstrap, "prefix": ds.prefix, "topics": ds.topics,
            "partitions": ds.partitions, "sentinels": ds.sentinels, **extra}


def compare(ds: Dataset, scale: Scale, progress: Progress) -> dict[str, Any]:
    bare, c360 = [], []
    for i in range(scale.repeats):
        bare.append(worker("bare", worker_args(ds)))
        progress.step(f"s1 bare loop {i + 1}")
        c360.append(worker("c360", worker_args(ds)))
        progress.step(f"s1 c360 {i + 1}")
    b, c = best_of(bare), best_of(c360)
    for r in (b, c):
        if r["events"] != ds.events:
            r["warning"] = f"read {r['events']} events, {ds.events} were produced"
    return {"bare_loop": b, "c360": c}


def run(scale: Scale, progress: Progress) -> dict[str, Any]:
    with broker() as bootstrap:
        ds = produce(bootstrap, "b1.", events=scale.events, customers=scale.customers)
        progress.step("s1 produced")
        legs = compare(ds, scale, progress)
    # The declared retail model against the hand-written folds it declares (issue 16), in
    # this process and without Kafka: the fold alone, with the full hooks.
    declared = declared_fold.retail_ab(min(scale.events, 100_000), scale.customers,
                                       scale.repeats)
    progress.step("s1 declared fold")
    ratio = legs["c360"]["events_per_cpu_s"] / legs["bare_loop"]["events_per_cpu_s"]
    return {"dataset": ds.as_json(), **legs, "ratio": round(ratio, 3), "target": TARGET,
            "met": ratio >= TARGET, "declared_vs_hand_written_fold": declared,
            "unit": "events per CPU-second of the processing process"}
