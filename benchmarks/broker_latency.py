"""The latency floor without c360, per topic layout: produce -> a bare consumer on the
embedded broker.

Section 4 of ``c360 bench`` measures produce -> store -> client. This is its baseline, and
the experiment behind the embedded setup's defaults (issue 18): a paced confluent-kafka
producer in its own process -> a fresh embedded broker -> one plain confluent-kafka consumer
polling as c360's source does (``consume(5000, 0)``, a 5 ms pause when empty), no dataflow.
Latency is the consumer's wall clock minus the record's timestamp (CreateTime, set by
librdkafka when ``produce()`` is called; milliseconds). What varies, one point at a time:

- ``topics``: ``streams`` (one topic per stream, 17) or ``ingest`` (the mixed ingest topic
  every record names its stream in, ``Catalogue.ingest_topic``);
- ``partitions`` per topic;
- the producer's ``linger.ms`` and ``batch.num.messages``;
- the consumer's ``fetch.wait.max.ms`` and ``fetch.min.bytes``;
- ``read_all``: the consumer also fetches the empty input topics, as c360's source does
  (it reads every stream topic, the ingest topic and the commands topic: 19).

The payloads are the simulator's events (a pool of 20,000, cycled). A fresh broker per
point, so no backlog is carried over; every partition holds a record before the consumer
starts (started on empty ones, the embedded broker's consumer skipped records produced
later; see ``benchmarks.harness.paced.prepare``).

    .venv/bin/python -m benchmarks.broker_latency                  # the sweep (~6 min)
    .venv/bin/python -m benchmarks.broker_latency --points 'streams:2 linger=5 @10000' \
        --seconds 10 --repeat 2
    .venv/bin/python -m benchmarks.broker_latency --live 2000,10000   # c360 CPU per event
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from benchmarks.harness.common import child_env
from benchmarks.harness.data import START
from benchmarks.harness.paced import PARTITIONS, LineChild, paced, prepare
from c360.config import Settings
from c360.dev.broker import EmbeddedBroker
from c360.dev.simulator import generate
from c360.model.events import Catalogue, encode
from c360.topics.admin import create_topics

PREFIX = "lat."
POOL = 20_000  # distinct payloads, cycled
DRAIN_S = 3.0  # after the producer ends, how long the consumer may still read


@dataclass(frozen=True)
class Layout:
    """One configuration of the produce -> consume path."""

    topics: str = "streams"  # "streams" (one topic per stream) or "ingest" (mixed)
    partitions: int = 2
    linger: float = 5.0  # producer linger.ms
    batch: int = 10_000  # producer batch.num.messages
    wait: int = 10  # consumer fetch.wait.max.ms (c360's source: 10)
    min: int = 1  # consumer fetch.min.bytes
    read_all: bool = True  # the consumer fetches every input topic, as c360's source does

    @staticmethod
    def parse(spec: str) -> tuple[Layout, float]:
        """``'streams:2 linger=5 wait=10 @10000'`` -> (layout, rate)."""
        head, *rest = spec.split()
        topics, _, parts = head.partition(":")
        layout = Layout(topics=topics, partitions=int(parts or 2))
        rate = 10_000.0
        kinds = {f.name: f.type for f in fields(Layout)}
        for item in rest:
            if item.startswith("@"):
                rate = float(item[1:])
                continue
            name, _, value = item.partition("=")
            kind = kinds[name]
            parsed: Any = (value.lower() in ("1", "true", "yes") if kind == "bool"
                           else float(value) if kind == "float" else int(value))
            layout = replace(layout, **{name: parsed})
        if layout.topics not in ("streams", "ingest"):
            raise SystemExit(f"topics must be streams or ingest, not {layout.topics!r}")
        return layout, rate

    @property
    def label(self) -> str:
        n = len(Catalogue(PREFIX).topics) if self.topics == "streams" else 1
        extra = "" if self.read_all or self.topics == "streams" else ", reads ingest only"
        return (f"{n} topic{'s' if n > 1 else ''} x {self.partitions}, linger {self.linger:g} ms"
                f", batch {self.batch}, wait {self.wait} ms, min {self.min} B{extra}")


def write_pool(path: Path, topics: str) -> None:
    """The payloads (stream, key, bytes) the producer cycles through, stamped nothing: the
    record timestamp carries the produce time. Mixed-topic payloads name their stream."""
    cat = Catalogue(PREFIX)
    customers = {s.name for s in cat.streams if s.key_field == "customer_id"}
    events = itertools.dropwhile(lambda item: item[0] not in customers,
                                 generate(5000, 5, START))
    pool = []
    for stream, key, event in itertools.islice(events, POOL):
        raw = encode(event)
        if topics == "ingest":
            raw = b'{"stream":"' + stream.encode() + b'",' + raw[1:]
        pool.append((cat.topic(stream) if topics == "streams" else cat.ingest_topic,
                     key.encode(), raw))
    path.write_bytes(pickle.dumps(pool))


def produce(args: dict[str, Any]) -> dict[str, Any]:
    """The paced producer (its own process, no GIL shared with the consumer)."""
    pool = pickle.loads(Path(args["pool"]).read_bytes())
    producer = Producer({"bootstrap.servers": args["bootstrap"], "partitioner": "murmur2_random",
                         "linger.ms": args["linger"], "batch.num.messages": args["batch"]})
    rate, total = args["rate"], int(args["rate"] * args["seconds"])
    cpu0 = time.process_time()
    began = time.monotonic()
    for n in range(total):
        ahead = began + n / rate - time.monotonic()
        if ahead > 0.0005:
            time.sleep(ahead)
        topic, key, value = pool[n % len(pool)]
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    took = time.monotonic() - began
    left = producer.flush(30)
    return {"produced": total, "achieved_rate": round(total / took) if took > 0 else 0,
            "unflushed": left, "producer_cpu_s": round(time.process_time() - cpu0, 2)}


def _broker_cpu(broker: EmbeddedBroker) -> float:
    """CPU seconds of the broker process (the watchdog shell's children)."""
    if broker.pid is None:
        return 0.0
    total = 0.0
    for p in psutil.Process(broker.pid).children(recursive=True):
        t = p.cpu_times()
        total += t.user + t.system
    return total


def _prepare(bootstrap: str, layout: Layout) -> list[str]:
    """Create the topics; one record on every partition of the topics the consumer reads."""
    cat = Catalogue(PREFIX)
    reads = cat.input_topics if layout.read_all else (
        cat.topics if layout.topics == "streams" else [cat.ingest_topic])
    create_topics(Settings(bootstrap=bootstrap, topic_prefix=PREFIX,
                           partitions=layout.partitions), reads)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    for t in reads:
        for p in range(layout.partitions):
            producer.produce(t, b'{"warm":1}', b"~warm", partition=p)
    producer.flush(30)
    return reads


def measure(layout: Layout, rate: float, seconds: float, pool: Path) -> dict[str, Any]:
    with EmbeddedBroker() as broker:
        reads = _prepare(broker.bootstrap, layout)
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "broker-latency",
                             "enable.auto.commit": "false",
                             "fetch.wait.max.ms": str(layout.wait),
                             "fetch.min.bytes": str(layout.min)})
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING)
                         for t in reads for p in range(layout.partitions)])
        warm = 0
        deadline = time.monotonic() + 10
        while warm < len(reads) * layout.partitions and time.monotonic() < deadline:
            warm += sum(1 for m in consumer.consume(1000, 0.1) if m.error() is None)
        args = {"bootstrap": broker.bootstrap, "pool": str(pool), "rate": rate,
                "seconds": seconds, "linger": layout.linger, "batch": layout.batch}
        cpu0, broker0 = resource.getrusage(resource.RUSAGE_SELF), _broker_cpu(broker)
        child = subprocess.Popen([sys.executable, "-m", "benchmarks.broker_latency", "produce",
                                  json.dumps(args)], stdout=subprocess.PIPE, text=True,
                                 env=child_env())
        latencies: list[float] = []
        polls = 0
        stop_at = None
        total = int(rate * seconds)
        while stop_at is None or time.monotonic() < stop_at:
            msgs = consumer.consume(5000, 0)  # as c360's source polls: no wait for a batch
            if not msgs:
                time.sleep(0.005)
            else:
                polls += 1
                now_ms = time.time() * 1000
                latencies.extend(now_ms - m.timestamp()[1] for m in msgs if m.error() is None)
            if stop_at is None and child.poll() is not None:
                stop_at = time.monotonic() + DRAIN_S
            if stop_at is not None and len(latencies) >= total:
                break
        cpu1, broker1 = resource.getrusage(resource.RUSAGE_SELF), _broker_cpu(broker)
        out, _ = child.communicate()
        consumer.close()
    produced = json.loads(out.strip().splitlines()[-1])
    latencies.sort()
    n = len(latencies)

    def q(p: float) -> float:
        return round(latencies[min(n - 1, int(p * n))], 1) if n else float("nan")

    consumer_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {"layout": asdict(layout), "label": layout.label, "rate": rate, **produced,
            "consumed": n, "polls": polls, "per_poll": round(n / polls, 1) if polls else 0,
            "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0),
            "consumer_cpu_us_per_event": round(1e6 * consumer_cpu / n, 1) if n else None,
            "broker_cpu_s": round(broker1 - broker0, 2), "load1": round(os.getloadavg()[0], 1)}


# The default sweep: the four layouts at c360's settings and three rates, then the
# producer's linger and the consumer's fetch settings on the one-topic-per-stream layouts.
SWEEP = [
    *(f"{t} linger=5 @{r}" for r in (2000, 10000, 20000)
      for t in ("streams:1", "streams:2", "ingest:1", "ingest:2")),
    *(f"{t} linger={lg} @10000" for t in ("streams:1", "streams:2") for lg in (1, 20, 50)),
    "streams:2 linger=50 batch=100000 @20000", "streams:1 linger=20 @20000",
    "streams:1 linger=5 wait=100 @10000", "streams:1 linger=5 wait=500 @10000",
    "streams:1 linger=5 wait=100 min=65536 @10000",
    "ingest:2 linger=5 read_all=0 @10000",
]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| layout | rate | achieved | consumed | p50 ms | p99 ms | max ms | msgs/poll "
             "| consumer µs/ev | broker CPU s | load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['rate']:,.0f} | {r['achieved_rate']:,} | "
                     f"{r['consumed']:,} | {r['p50_ms']:,} | {r['p99_ms']:,} | {r['max_ms']:,} | "
                     f"{r['per_poll']} | {r['consumer_cpu_us_per_event']} | "
                     f"{r['broker_cpu_s']} | {r['load1']} |")
    return "\n".join(lines)


class _LiveWorker(LineChild):
    """``benchmarks.harness.worker live`` with the source's poll wait set first."""

    def __init__(self, args: dict[str, Any], poll_wait: float | None) -> None:
        self.name = "worker live"
        code = ("import runpy, c360.topics.source as s; "
                + ("" if poll_wait is None else f"s.POLL_WAIT = {poll_wait!r}; ")
                + "runpy.run_module('benchmarks.harness.worker', run_name='__main__')")
        self.proc = subprocess.Popen([sys.executable, "-c", code, "live", json.dumps(args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=child_env())


def live_cpu(rate: float, seconds: float, poll_wait: float | None,
             customers: int = 5000, ingest: bool = False) -> dict[str, Any]:
    """c360's dataflow live (``benchmarks.harness.paced``, section 4's layout: one topic per
    stream, 2 partitions): its process's CPU per event at a paced rate, with the source's
    poll wait under load ``poll_wait`` (0: never wait, as before issue 18; None: default).
    ``ingest``: the events go to the mixed ingest topic instead."""
    with EmbeddedBroker() as broker:
        sentinels = prepare(broker.bootstrap, "live.", ingest)
        worker = _LiveWorker({"bootstrap": broker.bootstrap, "prefix": "live.",
                              "partitions": PARTITIONS, "sentinels": sentinels}, poll_wait)
        try:
            worker.expect("READY")
            worker.send("GO")
            produced = paced(broker.bootstrap, "live.", rate, seconds, customers, ingest)
            done = worker.expect("DONE")
            worker.stop()
        finally:
            worker.kill()
    applied = max(1, done["applied"])
    return {"rate": rate, "seconds": seconds, "poll_wait": poll_wait, "ingest": ingest,
            "achieved_rate": produced["achieved_rate"], "applied": done["applied"],
            "cpu_s": done["cpu_s"], "wall_s": done["wall_s"],
            "cpu_us_per_event": round(1e6 * done["cpu_s"] / applied, 1),
            "store_p50_ms": done["store"].get("p50_ms"),
            "store_p99_ms": done["store"].get("p99_ms"), "load1": round(os.getloadavg()[0], 1)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "produce":
        print(json.dumps(produce(json.loads(sys.argv[2]))), flush=True)
        return
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--points", nargs="*", default=SWEEP,
                    help="'TOPICS:PARTITIONS [linger=MS] [batch=N] [wait=MS] [min=BYTES] "
                         "[read_all=0|1] @RATE' (default: the sweep)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--live", default="", help="rates: c360's CPU per event live instead")
    ap.add_argument("--poll-wait", default="default",
                    help="with --live: the source's poll waits to compare, in ms "
                         "(comma-separated; 0: never wait; default: POLL_WAIT)")
    ap.add_argument("--ingest", action="store_true",
                    help="with --live: produce to the mixed ingest topic")
    ap.add_argument("--out", help="append the JSON lines to this file")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    if args.live:
        waits = [None if w == "default" else float(w) / 1000
                 for w in args.poll_wait.split(",")]
        for rate in (float(r) for r in args.live.split(",")):
            for _ in range(args.repeat):
                for wait in waits:  # interleaved: the machine's load hits both alike
                    line = json.dumps(live_cpu(rate, args.seconds, wait,
                                               ingest=args.ingest))
                    print(line, flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(line + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="c360-lat-") as tmp:
        pools = {}
        for topics in ("streams", "ingest"):
            pools[topics] = Path(tmp) / f"{topics}.pickle"
            write_pool(pools[topics], topics)
        for spec in args.points:
            layout, rate = Layout.parse(spec)
            for _ in range(args.repeat):
                row = measure(layout, rate, args.seconds, pools[layout.topics])
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(line + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
