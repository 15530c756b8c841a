"""Pathway: per-key count and money over every benchmark topic (its Rust dataflow)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import uuid

import pathway as pw

SENTINEL = "~end."


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Record(pw.Schema):
    customer_id: str | None = pw.column_definition(default_value=None)
    product_id: str | None = pw.column_definition(default_value=None)
    total_amount: float | None = pw.column_definition(default_value=None)
    amount: float | None = pw.column_definition(default_value=None)


def main() -> None:
    args = json.loads(sys.argv[1])
    expected = args["sentinels"]
    # One reader per topic: this version reads only the first topic of a list.
    tables = [
        pw.io.kafka.read(
            rdkafka_settings={"bootstrap.servers": args["bootstrap"],
                              "group.id": f"bench-pathway-{uuid.uuid4().hex[:8]}",
                              "auto.offset.reset": "earliest", "session.timeout.ms": "6000",
                              "fetch.wait.max.ms": "10"},
            topic=topic, format="json", schema=Record, autocommit_duration_ms=50)
        for topic in args["topics"]
    ]
    rows = pw.Table.concat_reindex(*tables)
    rows = rows.select(key=pw.coalesce(pw.this.customer_id, pw.this.product_id, ""),
                       money=pw.coalesce(pw.this.total_amount, pw.this.amount, 0.0))
    per_key = rows.groupby(pw.this.key).reduce(pw.this.key, n=pw.reducers.count(),
                                               money=pw.reducers.sum(pw.this.money))
    pw.io.null.write(per_key)
    total = rows.reduce(n=pw.reducers.count())
    ends = rows.filter(pw.this.key.str.startswith(SENTINEL)).reduce(n=pw.reducers.count())
    seen = {"total": 0}

    def on_total(key, row, time, is_addition) -> None:  # noqa: ANN001
        if is_addition:
            seen["total"] = row["n"]

    def on_ends(key, row, time, is_addition) -> None:  # noqa: ANN001
        if is_addition and row["n"] >= expected:
            out = {"events": seen["total"] - expected, "cpu_s": cpu() - cpu0,
                   "wall_s": time_now() - wall0}
            print(json.dumps(out), flush=True)
            os._exit(0)

    time_now = time.perf_counter
    pw.io.subscribe(total, on_change=on_total)
    pw.io.subscribe(ends, on_change=on_ends)
    cpu0, wall0 = cpu(), time.perf_counter()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


if __name__ == "__main__":
    main()
