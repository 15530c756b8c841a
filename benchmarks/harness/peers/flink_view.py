"""PyFlink SQL: the per-customer view over several streams, one way per run (section 3).

Runs inside the bench's ``apache-flink`` venv (Java 17), streaming mode, parallelism 1,
reading one JSON-lines file per stream ({customer_id, ts, payload}). Variants:

* ``chained_joins``: stream s0 JOIN s1 ON customer_id JOIN s2 ... (regular joins: every
  row of every stream stays in join state; a customer with n rows per stream yields n^k);
* ``aggregate_then_join``: per stream, the latest payload per customer (GROUP BY), then
  the per-stream aggregates joined on customer_id;
* ``union_group_by``: all streams UNION ALL into (customer_id, stream, payload), then one
  GROUP BY customer_id with the latest payload per stream.

The view is wrapped in a COUNT(*) (and the payload bytes, so that no column is pruned)
collected with mini-batches: progress is visible as it grows. A run that passes its time
or memory budget (RSS of this process and its JVM; time counted from submitting the job,
after a warm-up job) is stopped and reported with what it reached. Prints one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


def rss_tree(pid: int) -> int:
    """RSS bytes of ``pid`` and its descendants (from /proc: psutil is not in this venv)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}").joinpath("task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except (OSError, ValueError):
            continue
    return total


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(k) for k in (task / "children").read_text().split()]
    return out


def view_sql(variant: str, names: list[str]) -> str:
    streams = [f"`{s}`" for s in names]  # `search` and others are SQL keywords
    cols = ", ".join(f"COALESCE(p{i}, '')" for i in range(len(streams)))
    if variant == "chained_joins":
        first = streams[0]
        joins = " ".join(f"JOIN {s} ON {s}.customer_id = {first}.customer_id"
                         for s in streams[1:])
        picks = ", ".join(f"{s}.payload AS p{i}" for i, s in enumerate(streams))
        inner = f"SELECT {first}.customer_id, {picks} FROM {first} {joins}"
    elif variant == "aggregate_then_join":
        aggs = [f"(SELECT customer_id, LAST_VALUE(payload) AS p FROM {s} GROUP BY customer_id)"
                f" AS a{i}" for i, s in enumerate(streams)]
        joins = " ".join(f"JOIN {a} ON a{i + 1}.customer_id = a0.customer_id"
                         for i, a in enumerate(aggs[1:]))
        picks = ", ".join(f"a{i}.p AS p{i}" for i in range(len(streams)))
        inner = f"SELECT a0.customer_id, {picks} FROM {aggs[0]} {joins}"
    elif variant == "union_group_by":
        union = " UNION ALL ".join(f"SELECT customer_id, {i} AS s, payload FROM {s}"
                                   for i, s in enumerate(streams))
        picks = ", ".join(f"LAST_VALUE(CASE WHEN s = {i} THEN payload END) AS p{i}"
                          for i in range(len(streams)))
        inner = f"SELECT customer_id, {picks} FROM ({union}) GROUP BY customer_id"
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    return (f"SELECT COUNT(*) AS n, SUM(CAST(CHAR_LENGTH(CONCAT({cols})) AS BIGINT)) AS b "
            f"FROM ({inner})")


def main() -> None:
    t0 = time.monotonic()
    args = json.loads(sys.argv[1])
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("parallelism.default", "1")
    conf.set("table.exec.mini-batch.enabled", "true")
    conf.set("table.exec.mini-batch.allow-latency", "1 s")
    conf.set("table.exec.mini-batch.size", "50000")
    streams = args["streams"]
    for s in streams:
        env.execute_sql(
            f"CREATE TABLE `{s}` (customer_id STRING, ts BIGINT, payload STRING) WITH ("
            f"'connector' = 'filesystem', 'path' = '{args['dir']}/{s}.jsonl', "
            "'format' = 'json')")
    budget_s, budget_bytes = args["budget_s"], args["budget_mb"] * 2**20
    state = {"n": 0, "bytes": 0, "peak_rss": 0, "updates": 0}
    # Warm-up: the JVM's start and class loading (tens of seconds on a busy machine) are
    # not the variant's cost; the clock starts when the real job is submitted.
    warm = time.monotonic()
    with env.execute_sql("SELECT COUNT(*) FROM (VALUES (1)) AS t(x)").collect() as rows:
        list(rows)
    began = time.monotonic()
    warm_job_s = began - warm  # a one-row job's own cost: submitting, scheduling, collecting
    stop = threading.Event()

    def report(status: str) -> None:
        wall = time.monotonic() - began
        print(json.dumps({
            "variant": args["variant"], "status": status, "rows": state["n"],
            "payload_bytes": state["bytes"], "startup_s": round(warm - t0, 2),
            "one_row_job_s": round(warm_job_s, 2),
            "wall_s": round(wall, 2), "peak_rss_mb": round(state["peak_rss"] / 2**20),
            "input_rows": args["input_rows"],
            "input_rows_per_s": round(args["input_rows"] / wall) if status == "completed"
            else None, "rows_per_s": round(state["n"] / wall)}), flush=True)

    def watch() -> None:
        # The budget: past it, report what was reached and stop the JVM with us.
        while not stop.wait(0.5):
            state["peak_rss"] = max(state["peak_rss"], rss_tree(os.getpid()))
            over = None
            if time.monotonic() - began > budget_s:
                over = f"time budget ({budget_s:g} s) exceeded"
            elif state["peak_rss"] > budget_bytes:
                over = f"memory budget ({args['budget_mb']} MB) exceeded"
            if over:
                report(over)
                for kid in children(os.getpid()):
                    os.kill(kid, signal.SIGKILL)
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    result = env.execute_sql(view_sql(args["variant"], streams))
    with result.collect() as rows:
        for row in rows:
            state["updates"] += 1
            state["n"], state["bytes"] = row[0], row[1] or 0
    stop.set()
    state["peak_rss"] = max(state["peak_rss"], rss_tree(os.getpid()))
    report("completed")
    for kid in children(os.getpid()):
        os.kill(kid, signal.SIGKILL)
    os._exit(0)


if __name__ == "__main__":
    main()
