"""Child processes of the bench: each runs one engine over pre-produced topics and prints
one JSON line with its own CPU time, so that engines never share a process.

    python -m c360.bench.worker c360|bare '<json args>'

CPU is ``getrusage(RUSAGE_SELF)`` (every thread of the process, librdkafka's included),
from just before the consumer or dataflow starts to the moment the last sentinel is
handled.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from typing import Any

from c360.bench.data import SENTINEL_PREFIX


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class Clock:
    """CPU and wall time since construction."""

    def __init__(self) -> None:
        self.cpu0 = cpu_seconds()
        self.wall0 = time.perf_counter()

    def read(self) -> tuple[float, float]:
        return cpu_seconds() - self.cpu0, time.perf_counter() - self.wall0


def run_bare(args: dict[str, Any]) -> dict[str, Any]:
    """The Python limit: one consumer, the same decoding, one dict update per event."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from c360.events import Catalogue

    cat = Catalogue(args["prefix"])
    decode = cat.decode_with_stream
    expected = args["sentinels"]
    clock = Clock()
    consumer = Consumer({"bootstrap.servers": args["bootstrap"], "group.id": "c360-bench-bare",
                         "enable.auto.commit": "false", "fetch.wait.max.ms": "10"})
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                     for t in args["topics"] for p in range(args["partitions"])])
    state: dict[str, dict[str, Any]] = {}
    n = seen = 0
    while seen < expected:
        for m in consumer.consume(5000, 0.1):
            if m.error() is not None:
                continue
            stream, event = decode(m.topic(), m.value())
            key = getattr(event, stream.key_field)
            if key.startswith(SENTINEL_PREFIX):
                seen += 1
                continue
            entity = state.get(key)
            if entity is None:
                entity = state[key] = {}
            entity[stream.name] = event
            n += 1
    cpu, wall = clock.read()
    consumer.close()
    return {"events": n, "cpu_s": cpu, "wall_s": wall, "keys": len(state)}


def run_c360(args: dict[str, Any]) -> dict[str, Any]:
    """The full dataflow (validate, fold, business logic, deltas into the store)."""
    import msgspec

    from c360.delta import Delta
    from c360.pipeline import Pipeline
    from c360.store import EntityStore

    expected = args["sentinels"]
    done = threading.Event()
    result: dict[str, Any] = {}

    class BenchStore(EntityStore):
        seen = 0

        def apply(self, deltas: Any) -> None:  # type: ignore[override]
            deltas = list(deltas)
            super().apply(deltas)
            ends = sum(1 for d in deltas
                       if type(d) is Delta and d.entity_id.startswith(SENTINEL_PREFIX))
            if ends:
                self.seen += ends
                if self.seen >= expected and not done.is_set():
                    result["cpu_s"], result["wall_s"] = clock.read()
                    done.set()

    settings = _settings(args)
    store = BenchStore()
    rss0 = rss_bytes()
    pipeline = Pipeline(settings, store, workers=args.get("workers", 1))
    clock = Clock()
    pipeline.start()
    while not done.wait(0.2):
        if not pipeline.alive():
            raise SystemExit(f"the dataflow stopped early: {pipeline.error}")
    assert pipeline.source is not None
    consumed = pipeline.source.idle.messages - expected
    entities = [e for e in store.entities() if not e["id"].startswith(SENTINEL_PREFIX)]
    enc = msgspec.json.Encoder()
    skip = {"id", "kind", "version"}
    sizes = [len(enc.encode({k: v for k, v in e.items() if k not in skip})) for e in entities]
    result.update({
        "events": consumed,
        "customers": len(entities),
        "entity_json_bytes": sum(sizes) / len(sizes) if sizes else 0.0,
        "rss_growth_bytes": rss_bytes() - rss0,
        "deltas_applied": sum(store.stream_counts().values()) - expected,
    })
    pipeline.stop()
    return result


def _settings(args: dict[str, Any]):  # noqa: ANN202
    from c360.config import Settings

    return Settings(bootstrap=args["bootstrap"], topic_prefix=args["prefix"],
                    partitions=args["partitions"])


MODES = {"bare": run_bare, "c360": run_c360}


def main() -> None:
    mode, raw = sys.argv[1], sys.argv[2]
    out = MODES[mode](json.loads(raw))
    print(json.dumps(out), flush=True)
    sys.stdout.flush()
    os._exit(0)  # no lingering threads (subscriptions, librdkafka) at exit


if __name__ == "__main__":
    main()
