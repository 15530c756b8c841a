"""Quix Streams: per-key count and money over every benchmark topic (RocksDB state)."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
import uuid

from quixstreams import Application

SENTINEL = "~end."


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    args = json.loads(sys.argv[1])
    expected = args["sentinels"]
    app = Application(
        broker_address=args["bootstrap"], consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest", use_changelog_topics=False,
        state_dir=tempfile.mkdtemp(prefix="quix-state-"),
        consumer_extra_config={"session.timeout.ms": 6000, "fetch.wait.max.ms": 10},
        loglevel="WARNING",
    )
    sdf = None
    for name in args["topics"]:
        s = app.dataframe(app.topic(name, value_deserializer="json", key_deserializer="str"))
        sdf = s if sdf is None else sdf.concat(s)
    counts = {"events": 0, "seen": 0}
    result: dict = {}

    def fold(value: dict, state) -> None:  # noqa: ANN001
        key = value.get("customer_id") or value.get("product_id") or ""
        if key.startswith(SENTINEL):
            counts["seen"] += 1
            if counts["seen"] >= expected and not result:
                result.update(events=counts["events"], cpu_s=cpu() - cpu0,
                              wall_s=time.perf_counter() - wall0)
                app.stop()
            return
        money = value.get("total_amount") or value.get("amount") or 0.0
        state.set("n", state.get("n", 0) + 1)
        state.set("money", state.get("money", 0.0) + money)
        counts["events"] += 1

    sdf.update(fold, stateful=True)
    cpu0, wall0 = cpu(), time.perf_counter()
    app.run()
    print(json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
