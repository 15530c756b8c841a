"""The latency floor without c360: produce -> a bare consumer on the embedded broker.

Section 4 of ``c360 bench`` measures produce -> store -> client. This is its baseline:
the same paced producer (``benchmarks.harness.paced.paced``, event time stamped when the event is
created) and one plain confluent-kafka consumer over every stream topic, no dataflow. If
this already lags at a rate, the pipeline cannot do better there.

    .venv/bin/python benchmarks/broker_latency.py --rates 2000,10000,20000 --seconds 6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from benchmarks.harness.paced import PARTITIONS, prepare
from c360.dev.broker import EmbeddedBroker
from c360.errors import InvalidEvent
from c360.model.events import Catalogue

PREFIX = "lat."


def measure(bootstrap: str, rate: float, seconds: float) -> dict[str, float]:
    cat = Catalogue(PREFIX)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "broker-latency",
                         "enable.auto.commit": "false", "fetch.wait.max.ms": "10"})
    consumer.assign([TopicPartition(t, p, OFFSET_END)
                     for t in cat.input_topics for p in range(PARTITIONS)])
    latencies: list[float] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            msgs = consumer.consume(5000, 0)  # as c360's source polls: no wait for a full batch
            if not msgs:
                time.sleep(0.005)
            for m in msgs:
                if m.error() is not None:
                    continue
                try:
                    _, event = cat.decode_with_stream(m.topic(), m.value())
                except InvalidEvent:
                    continue
                latencies.append(time.time() - event.event_time.timestamp())

    reader = threading.Thread(target=consume)
    reader.start()
    time.sleep(2)  # assigned and fetching before the first event
    # The producer in its own process, as in section 4 (no GIL shared with the consumer).
    code = ("import json; from benchmarks.harness.paced import paced; "
            f"print(json.dumps(paced({bootstrap!r}, {PREFIX!r}, {rate}, {seconds}, 5000)))")
    produced = json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                         capture_output=True, text=True).stdout)
    time.sleep(3)
    stop.set()
    reader.join()
    consumer.close()
    latencies.sort()
    n = len(latencies)

    def ms(q: float) -> float:
        return round(1000 * latencies[min(n - 1, int(q * n))], 1)

    return {"rate": rate, "produced": produced["produced"], "consumed": n,
            "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": round(1000 * latencies[-1], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="2000,10000,20000")
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    for rate in (float(r) for r in args.rates.split(",")):
        with EmbeddedBroker() as broker:  # a fresh broker per rate: no backlog carried over
            prepare(broker.bootstrap, PREFIX)
            print(json.dumps(measure(broker.bootstrap, rate, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
