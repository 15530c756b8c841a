"""Section 4 — latency: event produced → delta in the store (→ patch at a sync client).

First the dataflow's maximum throughput on pre-produced topics (events per wall-second);
then, per load level, a child process runs the dataflow while this process produces at
that share of the maximum, stamping each event's time with the wall clock at produce.
The store leg is measured where the sink applies the delta.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from typing import Any

import msgspec

from c360.bench.common import Scale, best_of, broker, worker
from c360.bench.data import SENTINEL_PREFIX, START, produce, sentinel
from c360.bench.progress import Progress
from c360.bench.s1_python_limit import worker_args
from c360.broker import create_topics
from c360.config import Settings
from c360.events import Catalogue, Event, encode
from c360.simulator import generate

LOADS = (0.1, 0.5, 0.8)
TARGET_STORE_P99_MS = 50.0
TARGET_CLIENT_P99_MS = 100.0


def steps(scale: Scale) -> int:
    return 2 + len(LOADS)


def _mark_partitions(bootstrap: str, prefix: str, tag: str) -> int:
    """One valid record for the entity ``<tag><topic>.<p>`` on every stream topic partition."""
    from confluent_kafka import Producer

    cat = Catalogue(prefix)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    n = 0
    for stream, template in _templates(cat).items():
        s = cat.by_name[stream]
        for p in range(2):
            ev = sentinel(s.key_field, template, s.topic, p)
            entity = getattr(ev, s.key_field).replace(SENTINEL_PREFIX, tag, 1)
            ev = msgspec.structs.replace(ev, event_id=entity, **{s.key_field: entity})
            producer.produce(s.topic, encode(ev), entity.encode(), partition=p)
            n += 1
    producer.flush(60)
    return n


def _paced(bootstrap: str, prefix: str, rate: float, seconds: float, customers: int) -> int:
    """Produce ``rate`` events/s for ``seconds``, event time = now; then the sentinels."""
    from datetime import datetime, timezone

    from confluent_kafka import Producer

    cat = Catalogue(prefix)
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "linger.ms": 1})
    templates = _templates(cat)
    total = int(rate * seconds)
    items = list(itertools.islice(generate(customers, 5, START), total))
    began = time.monotonic()
    for n, (stream, key, event) in enumerate(items):
        ahead = began + n / rate - time.monotonic()
        if ahead > 0.0005:
            time.sleep(ahead)
        stamped = msgspec.structs.replace(event, event_time=datetime.now(timezone.utc))
        while True:
            try:
                producer.produce(cat.topic(stream), encode(stamped), key.encode())
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    sentinels = 0
    for stream, template in templates.items():
        s = cat.by_name[stream]
        for p in range(2):
            ev = sentinel(s.key_field, template, s.topic, p)
            # Stamped now like the events: older records may fall outside a window.
            ev = msgspec.structs.replace(ev, event_time=datetime.now(timezone.utc))
            producer.produce(s.topic, encode(ev), getattr(ev, s.key_field).encode(),
                             partition=p)
            sentinels += 1
    producer.flush(60)
    return sentinels


def _templates(cat: Catalogue) -> dict[str, Event]:
    """One event of every stream, for the sentinels (whatever the paced run produced)."""
    out: dict[str, Event] = {}
    for stream, _key, event in generate(1000, 3, START):
        out.setdefault(stream, event)
        if len(out) == len(cat.streams):
            return out
    raise RuntimeError("the simulator did not produce every stream")


def run(scale: Scale, progress: Progress) -> dict[str, Any]:
    seconds = 3.0 if scale.quick else 10.0
    out: dict[str, Any] = {"target_store_p99_ms_at_50pct": TARGET_STORE_P99_MS,
                           "target_client_p99_ms_at_50pct": TARGET_CLIENT_P99_MS, "levels": []}
    with broker() as bootstrap:
        ds = produce(bootstrap, "b4max.", events=scale.events, customers=scale.customers)
        progress.step("s4 produced")
        best = best_of([worker("c360", worker_args(ds))])
        max_rate = best["events_per_wall_s"]
        out["max_events_per_wall_s"] = round(max_rate)
        progress.step("s4 max throughput")
        for i, load in enumerate(LOADS):
            prefix = f"b4l{i}."
            cat = Catalogue(prefix)
            create_topics(Settings(bootstrap=bootstrap, topic_prefix=prefix, partitions=2),
                          [*cat.input_topics, cat.dlq_topic])
            # Every stream topic partition gets a sentinel, whatever the paced run produced.
            # The dataflow starts on partitions that already hold a record: started on empty
            # ones, the embedded broker's consumer skipped records produced later.
            _mark_partitions(bootstrap, prefix, "~warm.")
            args = {"bootstrap": bootstrap, "prefix": prefix, "partitions": 2,
                    "sentinels": 2 * len(Catalogue().streams)}
            child = subprocess.Popen([sys.executable, "-m", "c360.bench.worker", "latency",
                                      json.dumps(args)], stdout=subprocess.PIPE, text=True)
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line.startswith("READY"):
                child.kill()
                raise RuntimeError(f"latency worker did not start: {line!r}")
            sent = _paced(bootstrap, prefix, load * max_rate, seconds, scale.customers)
            tail = child.communicate(timeout=300)[0]
            result = json.loads([ln for ln in tail.splitlines() if ln.startswith("{")][-1])
            result.update(load=load, rate=round(load * max_rate), sentinels=sent)
            if "client" not in result:
                result["client"] = {"skipped": "client leg not wired yet"}
            out["levels"].append(result)
            progress.step(f"s4 {int(load * 100)}% load")
    half = next(lv for lv in out["levels"] if lv["load"] == 0.5)
    out["store_p99_ms_at_50pct"] = half["store"].get("p99_ms")
    out["met_store"] = (half["store"].get("p99_ms") or 1e9) <= TARGET_STORE_P99_MS
    out["met_client"] = None
    return out
