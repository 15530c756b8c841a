"""The dataflow under bytewax's own runner: ``python -m bytewax.run dataflows.customer360:flow``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from kafka import KafkaProducer

from c360.config import Settings
from c360.model.events import Catalogue
from tests.factories import read_dlq


def test_bytewax_run_consumes_the_topics_and_dead_letters_bad_events(settings: Settings) -> None:
    cat = Catalogue(settings.topic_prefix)
    env = {**os.environ, "C360_KAFKA_BOOTSTRAP": settings.bootstrap,
           "C360_TOPIC_PREFIX": settings.topic_prefix}
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.customer360:flow"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        producer = KafkaProducer(**settings.kafka_python())
        producer.send(cat.topic("orders"), key=b"c1", value=b"{oops")
        producer.flush()
        producer.close()
        records = read_dlq(settings, cat.dlq_topic, 1, timeout=60)
        assert [r["reason"][:14] for r in records] == ["malformed JSON"]
        assert proc.poll() is None, "the flow stopped after a bad event"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
