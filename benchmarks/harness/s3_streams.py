"""Section 3 — why no stream join: c360 with 1, 4, 8 and 15 streams feeding the entity.

The same number of events is spread over more and more customer streams; every stream
updates its slice of the one entity, so throughput should stay flat and the entity
should stay about the size of the latest record per stream (it also keeps rolled-up
values and a small window of recent items). Beside it, the same per-customer view as
PyFlink SQL — chained joins, aggregate-then-join, union + GROUP BY — when the Flink leg
is run.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness.common import Scale, best_of, broker, run_child, worker
from benchmarks.harness.data import START, produce
from benchmarks.harness.progress import Progress
from benchmarks.harness.s1_python_limit import worker_args
from benchmarks.harness.venvs import ensure_venv, installed_version
from c360.dev.simulator import generate
from c360.model.events import Catalogue, encode

# Customer streams, most frequent first: a k-stream run uses the first k.
CUSTOMER_STREAMS = ["search", "tp_purchases", "location", "orders", "customer_details",
                    "tp_demographics", "tp_psychographics", "loyalty", "payments", "weather",
                    "wishlist", "social", "reviews", "physical_events", "returns"]
COUNTS = (1, 4, 8, 15)
TARGET_THROUGHPUT = 0.9  # 15 streams >= 0.9x the 1-stream events per CPU-second
TARGET_STATE = 1.2  # entity <= 1.2x the latest record per stream
WORKER_TIMEOUT = 300.0  # a run that never sees its sentinels is recorded, not waited on
HERE = Path(__file__).resolve().parent
# The PyFlink leg: the earlier measurement's shape (12 streams, 10k customers, at most two
# rows per customer and stream), each variant stopped past its budget.
FLINK_STREAMS = 12
FLINK_CUSTOMERS = 10_000
FLINK_EVENTS = 600_000
FLINK_CAP = 2
FLINK_BUDGET_S = 180.0
FLINK_BUDGET_MB = 3_000
FLINK_VARIANTS = ("union_group_by", "aggregate_then_join", "chained_joins")


def steps(scale: Scale) -> int:
    return len(COUNTS) * (1 + scale.repeats) + 1


def run(scale: Scale, progress: Progress, *, flink: bool = False) -> dict[str, Any]:
    rows = []
    with broker() as bootstrap:
        for k in COUNTS:
            ds = produce(bootstrap, f"b3k{k}.", events=scale.events, customers=scale.customers,
                         streams=CUSTOMER_STREAMS[:k], track_latest=True)
            progress.step(f"s3 produced {k} streams")
            runs, errors = [], []
            for i in range(scale.repeats):
                try:
                    runs.append(worker("c360", worker_args(ds), timeout=WORKER_TIMEOUT))
                except Exception as exc:  # e.g. a sentinel never reached the store
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                progress.step(f"s3 c360 {k} streams {i + 1}")
            if not runs:
                rows.append({"streams": k, "events": ds.events, "error": errors[0]})
                continue
            best = best_of(runs)
            latest = ds.latest_record_bytes or 0.0
            rows.append({
                "streams": k, "events": ds.events, "customers": best["customers"],
                "events_per_cpu_s": round(best["events_per_cpu_s"]),
                "all_events_per_cpu_s": best["all_events_per_cpu_s"],
                "entity_json_bytes": round(best["entity_json_bytes"], 1),
                "latest_record_bytes": round(latest, 1),
                "state_to_latest_records": round(best["entity_json_bytes"] / latest, 3)
                if latest else None,
                **({"failed_runs": errors} if errors else {}),
            })
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return {"c360": rows, "error": "no stream count could be measured"}
    one = ok[0]["events_per_cpu_s"]
    for r in ok:
        r["throughput_vs_1_stream"] = round(r["events_per_cpu_s"] / one, 3)
    last = ok[-1]
    out: dict[str, Any] = {
        "c360": rows,
        "baseline_streams": ok[0]["streams"],
        "throughput_15_vs_1": last["throughput_vs_1_stream"],
        "target_throughput": TARGET_THROUGHPUT,
        "met_throughput": last["throughput_vs_1_stream"] >= TARGET_THROUGHPUT,
        "state_15_vs_latest_records": last["state_to_latest_records"],
        "target_state": TARGET_STATE,
        "met_state": (last["state_to_latest_records"] or 0) <= TARGET_STATE,
        "state_measure": "JSON bytes of the entity's fields (store mirror) vs the sum of the "
                         "JSON bytes of the customer's latest record on each stream",
    }
    if flink:
        out["flink"] = flink_leg(scale, progress)
    else:
        out["flink"] = {"skipped": "the PyFlink leg runs only in full runs (or with --flink): "
                                   "it needs its own venv (apache-flink, Java 17) and minutes"}
        progress.step("s3 flink")
    return out


def write_stream_files(folder: Path, streams: list[str], customers: int, events: int,
                       cap: int) -> dict[str, Any]:
    """The simulator's events of ``streams`` as one JSON-lines file per stream for Flink:
    {customer_id, ts (ms), payload (the event's JSON)}, at most ``cap`` rows per customer
    and stream. Also the exact row count a chained inner join of all of them produces."""
    cat = Catalogue()
    wanted = set(streams)
    files = {s: (folder / f"{s}.jsonl").open("w") for s in streams}
    rows: dict[str, dict[str, int]] = {}
    n = 0
    try:
        for stream, key, event in generate(customers, 7, START):
            if n >= events:
                break
            if stream not in wanted or cat.by_name[stream].key_field != "customer_id":
                continue
            n += 1
            per = rows.setdefault(key, {})
            if per.get(stream, 0) >= cap:
                continue
            per[stream] = per.get(stream, 0) + 1
            files[stream].write(json.dumps({
                "customer_id": key, "ts": int(event.event_time.timestamp() * 1000),
                "payload": encode(event).decode()}) + "\n")
    finally:
        for f in files.values():
            f.close()
    join_rows = sum(math.prod(per.get(s, 0) for s in streams) for per in rows.values())
    per_stream = {s: sum(per.get(s, 0) for per in rows.values()) for s in streams}
    return {"streams": streams, "customers": len(rows), "rows_per_customer_stream_cap": cap,
            "input_rows": sum(per_stream.values()), "rows_per_stream": per_stream,
            "chained_join_rows_expected": join_rows,
            "customers_with_every_stream": sum(1 for per in rows.values()
                                               if all(per.get(s) for s in streams))}


def flink_leg(scale: Scale, progress: Progress) -> dict[str, Any]:
    """The per-customer view in PyFlink SQL, three ways, each within a time/memory budget."""
    progress.note("s3 flink venv")
    venv, reason = ensure_venv("flink")
    if reason:
        progress.step("s3 flink")
        return {"skipped": reason}
    streams = CUSTOMER_STREAMS[:FLINK_STREAMS]
    # --quick --flink: a tenth of the data and a third of the time, to try the leg out.
    customers, events, budget_s = ((FLINK_CUSTOMERS // 10, FLINK_EVENTS // 10,
                                    FLINK_BUDGET_S / 3) if scale.quick
                                   else (FLINK_CUSTOMERS, FLINK_EVENTS, FLINK_BUDGET_S))
    out: dict[str, Any] = {"version": installed_version(venv, "apache-flink") or venv.version,
                           "budget_s": budget_s, "budget_mb": FLINK_BUDGET_MB,
                           "variants": {}}
    with tempfile.TemporaryDirectory(prefix="c360-flink-") as tmp:
        out["data"] = write_stream_files(Path(tmp), streams, customers, events, FLINK_CAP)
        for variant in FLINK_VARIANTS:
            progress.note(f"s3 flink {variant}")
            args = {"dir": tmp, "streams": streams, "variant": variant,
                    "budget_s": budget_s, "budget_mb": FLINK_BUDGET_MB,
                    "input_rows": out["data"]["input_rows"]}
            try:
                # The JVM's start and a warm-up job come before the budget's clock.
                out["variants"][variant] = run_child(
                    [str(venv.python), str(HERE / "peers" / "flink_view.py"), json.dumps(args)],
                    timeout=budget_s + 600)
            except Exception as exc:  # recorded; the other variants still run
                out["variants"][variant] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    progress.step("s3 flink")
    return out
