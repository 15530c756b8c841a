"""Memory of the dataflow while one topic is held back a day of event time.

A producer writes the simulated shop's events (``c360.dev.simulator.generate``, ``--tick`` of
event time per event) to the embedded broker as fast as it can, except one stream
(``--held``, default ``orders``), whose events it holds back and writes only once the
others' event time is ``--lag`` (default one day) past them: that stream's producer runs a
day behind. Meanwhile ``c360 run --until-idle`` (default settings, a child process)
consumes every topic; its RSS is sampled every ``--every`` seconds. The same events are
then produced in step (no stream held back) to a second set of topics and run again, as
the control. Reported: RSS over time for both, each run's peak and the RSS at the end,
and whether both runs' exports hold the same customers with the same values.

    .venv/bin/python benchmarks/held_back.py       # 400k events at 2k/s, 1 day lag
    .venv/bin/python benchmarks/held_back.py --events 100000 --tick 2

Why it matters: the dataflow must not buffer a day of the other streams' events in memory
while it waits for the slow one (docs/event-time.md: alignment pauses the topics that run
ahead; the rest waits in Kafka).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from c360.config import REPO_ROOT, Settings  # noqa: E402
from c360.dev.broker import EmbeddedBroker  # noqa: E402
from c360.dev.simulator import generate  # noqa: E402
from c360.model import events as ev  # noqa: E402
from c360.topics.admin import create_topics  # noqa: E402

START = datetime(2024, 3, 1, tzinfo=timezone.utc)


def produce(settings: Settings, items: list[tuple[str, str, ev.Event]], held: str | None,
            lag: timedelta, rate: float) -> None:
    """Every item, in order, except ``held``'s, which trail the others by ``lag``.

    The held stream falls behind gradually (at half the others' pace until it is ``lag``
    behind): a producer that only started a day late would leave its topic empty, hence
    idle (docs/event-time.md rule 3), for the first day, and its events would then be
    judged against the others' clock, i.e. late. A slow producer is never empty.
    ``rate``: events per second, below what the dataflow sustains, so that it reads live
    (one topic a day behind) rather than a backlog of complete topics.
    """
    from kafka import KafkaProducer

    cat = ev.Catalogue(settings.topic_prefix)
    topics = {s.name: s.topic for s in cat.streams}
    producer = KafkaProducer(**settings.kafka_python(), linger_ms=20, batch_size=256 * 1024)
    waiting: deque[tuple[str, str, ev.Event]] = deque()

    def send(item: tuple[str, str, ev.Event]) -> None:
        stream, key, event = item
        producer.send(topics[stream], key=key.encode(), value=ev.encode(event))

    t0 = time.monotonic()
    for n, item in enumerate(items):
        if n % 500 == 0:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        if item[0] == held:
            waiting.append(item)
            continue
        now = item[2].event_time
        while waiting:
            t = waiting[0][2].event_time
            if now < t + min(lag, t - START):
                break
            send(waiting.popleft())
        send(item)
    while waiting:
        send(waiting.popleft())
    producer.flush()
    producer.close()


def run_dataflow(settings: Settings, items: list, held: str | None, lag: timedelta,
                 rate: float, every: float, export: Path) -> dict:
    """Start the dataflow, produce meanwhile, sample its RSS until it has exported."""
    cat = ev.Catalogue(settings.topic_prefix)
    create_topics(settings, [*cat.input_topics, cat.dlq_topic, cat.late_topic,
                             cat.decisions_topic])
    env = {**os.environ, "C360_TOPIC_PREFIX": settings.topic_prefix}
    env.pop("C360_KAFKA_BOOTSTRAP", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "c360", "run", "--until-idle", "10", "--export", str(export),
         "--bootstrap", settings.bootstrap, "--progress", "never"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    producing = threading.Thread(target=produce, args=(settings, items, held, lag, rate))
    t0 = time.monotonic()
    producing.start()
    samples: list[tuple[float, float, bool]] = []  # (s, RSS MB, still producing)
    while child.poll() is None:
        try:
            samples.append((time.monotonic() - t0, proc.memory_info().rss / 2**20,
                            producing.is_alive()))
        except psutil.NoSuchProcess:
            break
        time.sleep(every)
    producing.join()
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"c360 run failed ({child.returncode}): {err[-2000:]}")
    produced_s = max((s for s, _, p in samples if p), default=0.0)
    return {"samples": samples, "seconds": time.monotonic() - t0, "produced_s": produced_s,
            "summary": out.strip().splitlines()[-1] if out.strip() else "",
            "late": count_records(settings, cat.late_topic)}


def count_records(settings: Settings, topic: str) -> int:
    """Records in ``topic``, read to each partition's end as the fetches report it."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    c = Consumer({**settings.librdkafka(), "group.id": "held-back-count",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        ended: set[int] = set()
        n = 0
        while len(ended) < len(parts):
            for m in c.consume(10_000, timeout=1):
                if m.error() is None:
                    n += 1
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(m.partition())
        return n
    finally:
        c.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--tick", type=float, default=1.0, help="event-time seconds per event")
    ap.add_argument("--held", default="orders", help="the stream held back")
    ap.add_argument("--lag", type=float, default=86_400.0, help="held back by (event-time s)")
    ap.add_argument("--rate", type=float, default=2_000.0, help="events produced per second")
    ap.add_argument("--every", type=float, default=2.0, help="RSS sample interval (s)")
    ap.add_argument("--out", type=Path, default=None, help="keep both exports there")
    args = ap.parse_args(argv)
    if args.events < 1 or args.tick <= 0 or args.lag < 0 or args.rate <= 0:
        print("held_back: --events, --tick and --rate must be positive, --lag not negative",
              file=sys.stderr)
        return 2
    items = list(itertools.islice(generate(args.customers, 7, START,
                                           tick=timedelta(seconds=args.tick)), args.events))
    span = items[-1][2].event_time - items[0][2].event_time
    held = sum(1 for s, _, _ in items if s == args.held)
    print(f"{len(items):,} events over {span} of event time; {args.held}: {held:,} events "
          f"held back {timedelta(seconds=args.lag)}", flush=True)
    lag = timedelta(seconds=args.lag)
    results = {}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as scratch:
        tmp = args.out or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        for i, (name, stream) in enumerate((("held back", args.held), ("in step", None))):
            s = Settings(bootstrap=broker.bootstrap, partitions=2, topic_prefix=f"hb{i}.")
            results[name] = r = run_dataflow(s, items, stream, lag, args.rate, args.every,
                                             Path(tmp) / f"{i}.jsonl")
            rss = [m for _, m, _ in r["samples"]]
            during = [m for _, m, p in r["samples"] if p]
            half = [m for t, m, p in r["samples"] if p and t >= r["produced_s"] / 2]
            print(f"\n{name}: {r['summary']}; {r['seconds']:.0f}s, producing "
                  f"{r['produced_s']:.0f}s; {r['late']:,} events to the late topic", flush=True)
            print(f"  RSS MB: peak {max(rss):.0f}, end {rss[-1]:.0f}; while producing: first "
                  f"half peak {max(during[:len(during) - len(half)] or [0]):.0f}, second half "
                  f"peak {max(half or [0]):.0f}")
            step = max(1, len(r["samples"]) // 12)
            print("  t s / RSS MB: " + ", ".join(
                f"{t:.0f}/{m:.0f}{'' if p else '*'}" for t, m, p in r["samples"][::step])
                  + "  (* producing done)")
        a = (Path(tmp) / "0.jsonl").read_bytes().splitlines()
        b = (Path(tmp) / "1.jsonl").read_bytes().splitlines()
        differ = len(set(a) ^ set(b)) // 2
        print(f"\nexports: {'byte-identical' if a == b else 'DIFFERENT'} ({len(a):,} and "
              f"{len(b):,} customers; {differ:,} rows differ)")
        if a != b:  # which fields (decisions of catalogue rules may: docs/event-time.md)
            rows = [{r["customer_id"]: r for r in map(msgspec.json.decode, x)} for x in (a, b)]
            fields: Counter[str] = Counter()
            for cid, row in rows[0].items():
                other = rows[1].get(cid, {})
                fields.update(f for f in row.keys() | other.keys() if row.get(f) != other.get(f))
            print("  customers differing per field: " + ", ".join(
                f"{f} {n:,}" for f, n in fields.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
