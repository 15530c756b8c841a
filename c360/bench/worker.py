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
        ends: set[str] = set()

        def apply(self, deltas: Any) -> None:  # type: ignore[override]
            deltas = list(deltas)
            super().apply(deltas)
            ends = [d.entity_id for d in deltas
                    if type(d) is Delta and d.entity_id.startswith(SENTINEL_PREFIX)]
            if ends:
                self.ends.update(ends)
                if len(self.ends) >= expected and not done.is_set():
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


def run_memory(args: dict[str, Any]) -> dict[str, Any]:
    """Fold ``events`` simulated events into shards and a store; RSS growth per customer."""
    import gc
    import pickle

    from c360.bench.data import START
    from c360.events import Catalogue
    from c360.logic import first_logic
    from c360.pipeline import tune_gc
    from c360.shard import Routed, Shard, shard_of
    from c360.simulator import generate
    from c360.store import EntityStore

    tune_gc()
    cat = Catalogue()
    streams = cat.by_name
    shards: dict[str, Shard] = {}
    store = EntityStore()
    gc.collect()
    rss0 = rss_bytes()
    batch: dict[str, list[Routed]] = {}
    n = 0

    def flush() -> None:
        for key, routed in batch.items():
            shard = shards.get(key)
            if shard is None:
                shard = shards[key] = Shard()
            deltas, _ = shard.apply(routed, first_logic)
            store.apply(deltas)
        batch.clear()

    for stream_name, _key, event in generate(args["customers"], 11, START):
        stream = streams[stream_name]
        entity_id = getattr(event, stream.key_field)
        key = shard_of(stream.entity_kind, entity_id, 16)
        batch.setdefault(key, []).append(
            Routed(stream_name, stream.entity_kind, entity_id, event, ("", 0, n)))
        n += 1
        if not n % 2000:
            flush()
        if n >= args["events"]:
            break
    flush()
    gc.collect()
    grown = rss_bytes() - rss0
    customers = store.count("customer")
    products = store.count("product")
    sample = [s.entities[i] for s in shards.values() for i in list(s.entities)[:50]]
    pickled = sum(len(pickle.dumps(e, protocol=5)) for e in sample) / max(1, len(sample))
    return {"customers": customers, "products": products, "events": n,
            "rss_growth_bytes": grown,
            "bytes_per_customer": round(grown / max(1, customers + products)),
            "pickled_state_bytes_per_entity": round(pickled)}


def run_latency(args: dict[str, Any]) -> dict[str, Any]:
    """Event time (stamped at produce) to delta in the store, and to a sync client's replica.

    Prints ``READY`` once the dataflow runs; the parent then produces at a paced rate,
    stamping each event with the wall clock, and ends every partition with a sentinel.
    """
    from c360.delta import Delta
    from c360.pipeline import Pipeline
    from c360.store import EntityStore

    expected = args["sentinels"]
    done = threading.Event()
    store_lat: list[float] = []

    class LatencyStore(EntityStore):
        ends: set[str] = set()

        def apply(self, deltas: Any) -> None:  # type: ignore[override]
            deltas = list(deltas)
            super().apply(deltas)
            now = time.time()
            for d in deltas:
                if type(d) is not Delta:
                    continue
                if d.entity_id.startswith(SENTINEL_PREFIX):
                    self.ends.add(d.entity_id)
                    if len(self.ends) >= expected:
                        done.set()
                    continue
                if d.entity_id.startswith("~"):
                    continue
                store_lat.append(now - d.event_time.timestamp())

    store = LatencyStore()
    pipeline = Pipeline(_settings(args), store)
    client = _sync_client(store, args.get("client_ids", []))
    pipeline.start()
    time.sleep(1.0)
    print("READY", flush=True)
    clock = Clock()
    while not done.wait(0.2):
        if not pipeline.alive():
            raise SystemExit(f"the dataflow stopped early: {pipeline.error}")
    cpu, wall = clock.read()
    out: dict[str, Any] = {"store": _percentiles(store_lat), "cpu_s": cpu, "wall_s": wall}
    if client is not None:
        time.sleep(0.5)
        out["client"] = _percentiles(client())
    return out


def _sync_client(store: Any, ids: list[str]) -> Any:
    """A WebSocket sync client following ``ids``; returns a function giving its latencies.

    None when the sync server is not available in this checkout.
    """
    try:
        from c360.sync import SyncServer, TokenBook, connect  # noqa: F401
    except ImportError:
        return None
    return None  # wired in once the client exposes per-patch arrival hooks


def _percentiles(values: list[float]) -> dict[str, Any]:
    """Percentiles in ms. Deltas more than a minute after their event time were not
    produced in this run (derived deltas keep older event times): counted, left out."""
    xs = sorted(v for v in values if v < 60.0)
    if not xs:
        return {"n": 0, "excluded": len(values)}

    def q(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2)

    return {"n": len(xs), "excluded": len(values) - len(xs), "p50_ms": q(0.50),
            "p99_ms": q(0.99), "p999_ms": q(0.999), "max_ms": round(xs[-1] * 1000, 2)}


def _settings(args: dict[str, Any]):  # noqa: ANN202
    from c360.config import Settings

    return Settings(bootstrap=args["bootstrap"], topic_prefix=args["prefix"],
                    partitions=args["partitions"])


MODES = {"bare": run_bare, "c360": run_c360, "memory": run_memory,
         "latency": run_latency}


def main() -> None:
    mode, raw = sys.argv[1], sys.argv[2]
    out = MODES[mode](json.loads(raw))
    print(json.dumps(out), flush=True)
    sys.stdout.flush()
    os._exit(0)  # no lingering threads (subscriptions, librdkafka) at exit


if __name__ == "__main__":
    main()
