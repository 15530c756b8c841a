"""Live runs: the dataflow in a child process fed at a paced rate, for sections 4 and 6.

The parent produces events stamped with the wall clock at produce time, then ends every
stream topic partition with a sentinel; the child (``worker live``) runs the dataflow (and,
when asked, a sync server and a Panel server over its store) and reports when every
sentinel reached the store. Client processes (:mod:`benchmarks.harness.clients`) connect between
``READY`` and the end of the run.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

import msgspec

from benchmarks.harness.common import child_env
from benchmarks.harness.data import SENTINEL_PREFIX, START, sentinel
from c360.config import Settings, paced_linger_ms
from c360.dev.simulator import generate
from c360.model.events import Catalogue, Event, encode
from c360.topics.admin import create_topics

PARTITIONS = 2


def templates(cat: Catalogue) -> dict[str, Event]:
    """One event of every stream, for the sentinels (whatever the paced run produced)."""
    out: dict[str, Event] = {}
    for stream, _key, event in generate(1000, 3, START):
        out.setdefault(stream, event)
        if len(out) == len(cat.streams):
            return out
    raise RuntimeError("the simulator did not produce every stream")


def _named(raw: bytes, stream: str) -> bytes:
    """A record for the mixed ingest topic: it names its stream."""
    return raw[:-1] + b',"stream":"' + stream.encode() + b'"}'


def prepare(bootstrap: str, prefix: str, ingest: bool = False) -> int:
    """Create the topics and put one record on every stream topic partition (``ingest``: and
    on every partition of the mixed ingest topic, which the events then go to).

    The dataflow starts on partitions that already hold a record: started on empty ones,
    the embedded broker's consumer skipped records produced later. Returns the number of
    sentinels a run on these topics ends with.
    """
    from confluent_kafka import Producer

    cat = Catalogue(prefix)
    create_topics(Settings(bootstrap=bootstrap, topic_prefix=prefix, partitions=PARTITIONS),
                  [*cat.input_topics, cat.dlq_topic])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    n = 0
    for stream, template in templates(cat).items():
        s = cat.by_name[stream]
        for p in range(PARTITIONS):
            ev = sentinel(s.key_field, template, s.topic, p)
            entity = getattr(ev, s.key_field).replace(SENTINEL_PREFIX, "~warm.", 1)
            ev = msgspec.structs.replace(ev, event_id=entity, **{s.key_field: entity})
            producer.produce(s.topic, encode(ev), entity.encode(), partition=p)
            n += 1
            if ingest and s.topic == cat.topics[0]:
                ev = sentinel(s.key_field, template, cat.ingest_topic, p)
                entity = getattr(ev, s.key_field).replace(SENTINEL_PREFIX, "~warm.", 1)
                ev = msgspec.structs.replace(ev, event_id=entity, **{s.key_field: entity})
                producer.produce(cat.ingest_topic, _named(encode(ev), stream), entity.encode(),
                                 partition=p)
                n += 1
    producer.flush(60)
    return n


Item = tuple[str, str, Event]  # (stream, key, event), as the simulator yields them


def paced_items(customers: int, total: int) -> list[Item]:
    """The first ``total`` events a paced run produces (deterministic): a caller may look
    at them before producing (section 4 picks the customers its browser watches)."""
    cat = Catalogue("")
    # The simulator opens with its product catalogue (every product once, no customer):
    # a live store has that already, and a short run would otherwise see no customer.
    keyed_by_customer = {s.name for s in cat.streams if s.key_field == "customer_id"}
    events = itertools.dropwhile(lambda item: item[0] not in keyed_by_customer,
                                 generate(customers, 5, START))
    return list(itertools.islice(events, total))


def paced(bootstrap: str, prefix: str, rate: float, seconds: float,
          customers: int, ingest: bool = False,
          items: list[Item] | None = None) -> dict[str, Any]:
    """Produce ``rate`` events/s for ``seconds``, event time = now; then the sentinels.
    ``ingest``: every event to the mixed ingest topic (after ``prepare(..., ingest=True)``).
    ``items``: :func:`paced_items` of these arguments, if the caller made them already."""
    from confluent_kafka import Producer

    cat = Catalogue(prefix)
    # The linger the simulator uses at this rate (c360.config.paced_linger_ms): with 1 ms
    # the embedded broker fell seconds behind at 10k events/s (docs/benchmarks.md).
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "linger.ms": paced_linger_ms(rate)})
    total = int(rate * seconds)
    if items is None:
        items = paced_items(customers, total)
    assert len(items) == total, "items made for another rate or duration"
    began = time.monotonic()
    for n, (stream, key, event) in enumerate(items):
        ahead = began + n / rate - time.monotonic()
        if ahead > 0.0005:
            time.sleep(ahead)
        stamped = msgspec.structs.replace(event, event_time=datetime.now(timezone.utc))
        topic, value = cat.topic(stream), encode(stamped)
        if ingest:
            topic, value = cat.ingest_topic, _named(value, stream)
        while True:
            try:
                producer.produce(topic, value, key.encode())
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    took = time.monotonic() - began
    sentinels = 0
    for stream, template in templates(cat).items():
        s = cat.by_name[stream]
        for p in range(PARTITIONS):
            ev = sentinel(s.key_field, template, s.topic, p)
            # Stamped now like the events: older records may fall outside a window.
            ev = msgspec.structs.replace(ev, event_time=datetime.now(timezone.utc))
            producer.produce(s.topic, encode(ev), getattr(ev, s.key_field).encode(),
                             partition=p)
            sentinels += 1
            if ingest and s.topic == cat.topics[0]:  # as prepare: one per ingest partition
                ev = msgspec.structs.replace(
                    sentinel(s.key_field, template, cat.ingest_topic, p),
                    event_time=datetime.now(timezone.utc))
                producer.produce(cat.ingest_topic, _named(encode(ev), stream),
                                 getattr(ev, s.key_field).encode(), partition=p)
                sentinels += 1
    producer.flush(60)
    return {"produced": total, "produce_seconds": round(took, 2),
            "achieved_rate": round(total / took) if took > 0 else 0, "sentinels": sentinels}


class LineChild:
    """A child process speaking a line protocol: ``TAG {json}`` lines on stdout, commands
    (``GO``, ``STATS``, ``STOP``) on stdin.

    ``python -m benchmarks.harness.worker live`` (the dataflow and its servers): ``READY``, then
    after ``GO`` ``DONE`` (every sentinel reached the store), ``STATS`` per ``STATS`` and
    ``FINAL`` after ``STOP``. ``python -m benchmarks.harness.clients``: ``READY`` (all connected),
    ``FINAL`` after ``STOP``. A child that says anything else is killed and the run fails
    with its words.
    """

    def __init__(self, module: str, mode: str, args: dict[str, Any]) -> None:
        self.name = f"{module.rsplit('.', 1)[-1]} {mode}"
        self.proc = subprocess.Popen([sys.executable, "-m", module, mode, json.dumps(args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=child_env())

    def expect(self, tag: str) -> dict[str, Any]:
        """The next line, which must be ``tag {json}``. Blocks: every child bounds its own
        waits (connect timeouts, the dataflow's liveness) and exits when they run out."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(tag + " "):
            self.kill()
            raise RuntimeError(f"{self.name} said {line.strip()[:300]!r}, expected {tag}")
        return json.loads(line[len(tag) + 1:])

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stats(self) -> dict[str, Any]:
        """The live worker's server statistics now (its clients still connected)."""
        self.send("STATS")
        return self.expect("STATS")

    def stop(self, timeout: float = 120.0) -> dict[str, Any]:
        """Send STOP; the child's ``FINAL`` report."""
        self.send("STOP")
        out = self.expect("FINAL")
        self.proc.wait(timeout)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def live_worker(args: dict[str, Any]) -> LineChild:
    return LineChild("benchmarks.harness.worker", "live", args)
