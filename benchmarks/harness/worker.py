"""Child processes of the bench: each runs one engine over pre-produced topics and prints
one JSON line with its own CPU time, so that engines never share a process.

    python -m benchmarks.harness.worker c360|bare '<json args>'

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

from benchmarks.harness.data import SENTINEL_PREFIX


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

    from c360.model.events import Catalogue

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

    from c360.model.delta import Delta
    from c360.run.pipeline import Pipeline
    from c360.store.memory import EntityStore

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
    if args.get("logic_off"):
        # Section 2's like-for-like leg: no rules, relevance windows, segments, global
        # analytics or logic function; every stream still folds into its entity.
        from c360.entity.derive import EntityHooks

        off = EntityHooks(windows=False, rules=False, segments=False)
        pipeline = Pipeline(settings, store, workers=args.get("workers", 1), logic=None,
                            hooks=off, analytics=False)
    else:
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
    from datetime import timedelta

    from benchmarks.harness.data import START
    from c360.entity.derive import EntityHooks
    from c360.entity.logic import first_logic
    from c360.entity.shard import Routed, Shard, shard_of
    from c360.model.events import Catalogue
    from c360.run.pipeline import tune_gc

    lateness = timedelta(hours=1)  # the dataflow's default allowed lateness
    from c360.dev.simulator import generate
    from c360.store.memory import EntityStore

    tune_gc()
    cat = Catalogue()
    streams = cat.by_name
    shards: dict[str, Shard] = {}
    # The dataflow's default hooks: relevance windows, rules, segments; one for every shard,
    # as in the dataflow, so the offer rules see the products of the product shards.
    hooks = EntityHooks(allowed_lateness=lateness)
    store = EntityStore()
    gc.collect()
    rss0 = rss_bytes()
    batch: dict[str, list[Routed]] = {}
    n = 0

    def flush() -> None:
        for key, routed in batch.items():
            shard = shards.get(key)
            if shard is None:
                shard = shards[key] = Shard(hooks, lateness)
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


def run_live(args: dict[str, Any]) -> dict[str, Any]:
    """The dataflow fed live, for sections 4 and 6 (see :mod:`benchmarks.harness.paced`).

    Optionally serves its store over a sync server (``sync``) and the live Panel page
    (``panel``). Protocol: ``READY {urls}`` once it runs; it then waits for ``GO`` on stdin
    (its clock starts there); ``DONE {report}`` when every sentinel reached the store;
    ``STATS {servers}`` for each ``STATS``; after ``STOP``, ``FINAL {servers}``. Latency is
    event time (stamped at produce) to the delta being applied in the store; with
    ``versions_out``, every delta's (entity, version, event time) is written there for the
    client leg.
    """
    from c360.model.delta import Delta
    from c360.run.pipeline import Pipeline
    from c360.store.memory import EntityStore

    expected = args["sentinels"]
    done = threading.Event()
    store_lat: list[float] = []
    versions: dict[str, dict[int, float]] = {}
    keep_versions = bool(args.get("versions_out"))

    warm: set[str] = set()
    warmed = threading.Event()

    class LatencyStore(EntityStore):
        ends: set[str] = set()

        def apply(self, deltas: Any) -> None:  # type: ignore[override]
            deltas = list(deltas)
            super().apply(deltas)
            now = time.time()
            for d in deltas:
                if type(d) is not Delta:
                    continue
                eid = d.entity_id
                if eid.startswith(SENTINEL_PREFIX):
                    self.ends.add(eid)
                    if len(self.ends) >= expected:
                        done.set()
                    continue
                if eid.startswith("~"):
                    if eid.startswith("~warm."):
                        warm.add(eid)
                        if len(warm) >= expected:
                            warmed.set()
                    continue
                ts = d.event_time.timestamp()
                store_lat.append(now - ts)
                if keep_versions:
                    versions.setdefault(eid, {})[d.version] = ts

    store = LatencyStore()
    pipeline = Pipeline(_settings(args), store)
    urls: dict[str, Any] = {}
    sync = None
    if args.get("sync"):
        from c360.sync import SyncServer, TokenBook

        sync = SyncServer(store, TokenBook.from_tokens({args["token"]: {"pii": True}})).start()
        urls["sync_url"] = sync.url
    if args.get("panel"):
        urls["panel_url"] = _serve_panel(store)
    pipeline.start()
    # Ready once the record put on every partition before the start (paced.prepare) is in
    # the store: the consumer has joined and every run counts from the same point.
    if not warmed.wait(args.get("warm_timeout", 180.0)):
        print(f"TIMEOUT {len(warm)} of {expected} partitions' first records reached the "
              "store", flush=True)
        os._exit(1)
    print("READY " + json.dumps(urls), flush=True)
    sys.stdin.readline()  # GO: the parent's clients are connected, it starts producing
    applied0 = sum(store.stream_counts().values())
    clock = Clock()
    threads0 = thread_cpu()
    deadline = time.monotonic() + args.get("timeout", 600.0)
    while not done.wait(0.2):
        if not pipeline.alive():
            raise SystemExit(f"the dataflow stopped early: {pipeline.error}")
        if time.monotonic() > deadline:  # the parent reads our line: it fails with this
            print(f"TIMEOUT {len(store.ends)} of {expected} sentinels reached the store",
                  flush=True)
            os._exit(1)
    cpu, wall = clock.read()
    threads = {k: round(v - threads0.get(k, 0.0), 3) for k, v in thread_cpu().items()}
    report: dict[str, Any] = {
        "store": percentiles(store_lat), "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
        "thread_cpu_s": threads,
        "applied": sum(store.stream_counts().values()) - applied0 - expected}
    print("DONE " + json.dumps(report), flush=True)

    def servers() -> dict[str, Any]:
        out: dict[str, Any] = {"thread_cpu_s": {k: round(v - threads0.get(k, 0.0), 3)
                                                for k, v in thread_cpu().items()}}
        if sync is not None:
            st = sync.stats()
            out["sync"] = {"connections": st["connections"], "sent": sum(st["sent"]),
                           "coalesced": sum(st["coalesced"]),
                           "overflows": sum(st["overflows"]), "pending_now": sum(st["pending"])}
        return out

    # STATS (while the parent's clients are still connected) and STOP, from the parent.
    while sys.stdin.readline().strip() == "STATS":
        print("STATS " + json.dumps(servers()), flush=True)
    final = servers()
    if keep_versions:
        with open(args["versions_out"], "w") as f:
            json.dump(versions, f)
    print("FINAL " + json.dumps(final), flush=True)
    return final


def _serve_panel(store: Any) -> str:
    """The live page (dashboards/live.py) over ``store``, served like ``c360 demo`` does."""
    import panel as pn

    from c360.dev.broker import free_port, wait_for_port
    from c360.run import shared as live
    from dashboards.live import app

    live.set_shared(store)
    port = free_port()
    server = pn.serve({"live": app}, port=port, address="127.0.0.1", show=False,
                      threaded=True, websocket_origin=[f"127.0.0.1:{port}"], verbose=False)
    server.name = "panel-server"  # its CPU is reported under this name (thread_cpu)
    wait_for_port("127.0.0.1", port)
    return f"http://127.0.0.1:{port}/live"


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread group: Python threads by name, the rest as ``native``
    (librdkafka, bytewax's runtime)."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "native")
        if name.startswith("Thread-"):  # tornado / Panel server and executor threads
            name = "other-python"
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def percentiles(values: list[float]) -> dict[str, Any]:
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


MODES = {"bare": run_bare, "c360": run_c360, "memory": run_memory, "live": run_live}


def main() -> None:
    mode, raw = sys.argv[1], sys.argv[2]
    out = MODES[mode](json.loads(raw))
    if mode != "live":  # the live worker speaks its own line protocol
        print(json.dumps(out), flush=True)
    sys.stdout.flush()
    os._exit(0)  # no lingering threads (subscriptions, librdkafka) at exit


if __name__ == "__main__":
    main()
