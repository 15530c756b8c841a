"""Faults on the real embedded broker, each killed with SIGKILL by pid:

- F1: ``kill -9`` during the first start's recovery set-up; the next start must work.
- F2: the memory broker killed and not restarted while the dataflow writes its output
  topics; the run must end with a one-line BrokerError, not hang in a Kafka flush.
- F3: the memory broker restarted and events re-sent; a resume with the old recovery
  directory would read stale offsets, so it must stop with exit 2 and say to start afresh.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.recovery import init_db_dir

from c360.config import REPO_ROOT, Settings
from c360.dev.broker import EmbeddedBroker, _stop_watched, _watched
from c360.dev.simulator import simulate
from c360.entity.derive import EntityHooks
from c360.errors import BrokerError
from c360.model.events import Catalogue
from c360.run.pipeline import Pipeline
from c360.run.recovery import MARKER, PAUSE_ENV, RecoveryMismatch, prepare
from c360.topics.admin import create_topics
from c360.topics.sinks import KafkaSink
from tests.factories import by_id

START = datetime(2026, 3, 1, tzinfo=timezone.utc)
NO_SWEEP = EntityHooks(sweep_per_batch=0)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.05)


def own_settings(broker: EmbeddedBroker) -> Settings:
    s = Settings(bootstrap=broker.bootstrap, topic_prefix=f"f{uuid.uuid4().hex[:6]}.",
                 partitions=2)
    cat = Catalogue(s.topic_prefix)
    create_topics(s, [*cat.input_topics, cat.dlq_topic, cat.late_topic, cat.decisions_topic,
                      cat.changes_topic])
    return s


def c360(settings: Settings, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "c360", *args], cwd=REPO_ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "C360_KAFKA_BOOTSTRAP": settings.bootstrap,
             "C360_TOPIC_PREFIX": settings.topic_prefix, **(env or {})})


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"c360 still running after {timeout:.0f}s; stderr: {err[-2000:]}")
    return proc.returncode, out, err


def error_line(err: str) -> str:
    """The one ``c360: error:`` line of stderr."""
    errors = [line[line.index("c360: error: "):] for line in err.splitlines()
              if "c360: error: " in line]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


def one_line_error(err: str) -> str:
    """The error line, which must be stderr's last and only one (progress lines may precede)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in lines if line.startswith("c360: error: ")]
    assert errors == lines[-1:], err[-3000:]
    return errors[0]


# F1 ----------------------------------------------------------------------------------------

def half_made(directory: Path, state: str) -> None:
    """What a kill inside bytewax's ``init_db_dir`` leaves behind (the pre-fix set-up wrote
    straight into the directory): the partition file created but still empty, or its
    tables made but its partition row not yet written. Both made every later start fail
    with NoPartitionsError."""
    directory.mkdir(parents=True)
    if state == "empty file":
        (directory / "part-0.sqlite3").write_bytes(b"")
        return
    init_db_dir(directory, 1)
    with sqlite3.connect(directory / "part-0.sqlite3") as db:
        db.execute("DELETE FROM parts")


@pytest.mark.parametrize("state", ["empty file", "no partition row"])
def test_a_half_made_recovery_directory_is_made_again(
        settings: Settings, tmp_path: Path, state: str) -> None:
    simulate(settings, customers=20, rate=0, events=400, seed=3, progress=False, start=START)
    rec = tmp_path / "rec"
    half_made(rec, state)
    store = Pipeline(settings, idle_timeout=3, recovery_dir=rec, snapshot_interval=0.2,
                     hooks=NO_SWEEP).run()
    assert by_id(store) == by_id(Pipeline(settings, idle_timeout=3, hooks=NO_SWEEP).run())
    assert (rec / MARKER).exists()
    # And it is a working recovery directory: the next start resumes from its snapshot.
    again = Pipeline(settings, idle_timeout=3, recovery_dir=rec, snapshot_interval=0.2,
                     hooks=NO_SWEEP).run()
    assert by_id(again) == by_id(store)
    assert again.lifecycle_counts["created"] == 0  # from the snapshot, not from re-reading


def test_kill_9_during_recovery_set_up_then_the_next_start_works(
        settings: Settings, tmp_path: Path) -> None:
    simulate(settings, customers=20, rate=0, events=400, seed=4, progress=False, start=START)
    customers = f"{Pipeline(settings, idle_timeout=3).run().count('customer')} customers"
    rec, flag = tmp_path / "rec", tmp_path / "paused"
    rec.mkdir()  # as a user would: an empty directory made beforehand
    proc = c360(settings, "run", "--recovery-dir", str(rec), "--until-idle", "3",
                env={PAUSE_ENV: str(flag)})
    try:
        wait_for(lambda: flag.exists() or proc.poll() is not None, 120,
                 "c360 run reaches the middle of its recovery set-up")
        assert proc.poll() is None, proc.communicate()
        assert int(flag.read_text()) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The partitions were made (in the set-up's own directory); the kill left them unfinished.
    assert list(tmp_path.glob(".rec.setup-*/part-0.sqlite3"))
    assert not (rec / MARKER).exists()
    code, out, err = finish(c360(settings, "run", "--recovery-dir", str(rec),
                                 "--until-idle", "3"), 180)
    assert code == 0, err[-3000:]
    assert out.startswith(customers), out
    assert (rec / MARKER).exists() and not list(tmp_path.glob(".rec.setup-*"))
    code, out, err = finish(c360(settings, "run", "--recovery-dir", str(rec),
                                 "--until-idle", "3"), 180)
    assert code == 0 and out.startswith(customers), err[-3000:]


def test_a_directory_made_before_the_marker_existed_is_resumed_not_redone(
        settings: Settings, tmp_path: Path) -> None:
    simulate(settings, customers=15, rate=0, events=300, seed=8, progress=False, start=START)
    rec = tmp_path / "rec"
    first = Pipeline(settings, idle_timeout=3, recovery_dir=rec, snapshot_interval=0.2,
                     hooks=NO_SWEEP).run()
    (rec / MARKER).unlink()  # as an earlier c360 (or python -m bytewax.recovery) left it
    again = Pipeline(settings, idle_timeout=3, recovery_dir=rec, snapshot_interval=0.2,
                     hooks=NO_SWEEP).run()
    assert by_id(again) == by_id(first)
    assert again.lifecycle_counts["created"] == 0  # resumed from its snapshot
    assert (rec / MARKER).exists()


def test_recorded_topic_ids_refuse_other_topics(tmp_path: Path) -> None:
    rec = prepare(tmp_path / "rec", topic_ids={"a": "id1", "b": "id2"})
    prepare(rec, topic_ids={"a": "id1", "b": "id2", "c": "id3"})  # a new topic: recorded
    with pytest.raises(RecoveryMismatch, match=r"c were re-created.*rm -r"):
        prepare(rec, topic_ids={"a": "id1", "c": "other"})


# F2 ----------------------------------------------------------------------------------------

def has_records(broker: EmbeddedBroker, topic: str) -> bool:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "t",
                         "enable.auto.commit": "false"})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
        return bool(consumer.consume(1, 1.0))
    finally:
        consumer.close()


def test_a_sink_record_kafka_never_acknowledges_is_a_broker_error(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        settings = own_settings(broker)
        topic = Catalogue(settings.topic_prefix).dlq_topic
        part = KafkaSink([broker.bootstrap], topic, timeout=3).build("dlq", 0, 1)
        part.write_batch([KafkaSinkMessage(b"k", b"delivered")])  # a live broker: fine
        broker.stop(kill=True)
        start = time.monotonic()
        with pytest.raises(BrokerError, match="did not acknowledge 2 output records within 3 s"):
            part.write_batch([KafkaSinkMessage(b"k", b"v1"), KafkaSinkMessage(b"k", b"v2")])
        # Bounded by the delivery timeout, not librdkafka's 300 s default (a generous bound).
        assert time.monotonic() - start < 60
    finally:
        broker.stop()


def test_broker_killed_and_not_restarted_ends_c360_run_with_a_broker_error(
        tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    stop = threading.Event()
    try:
        settings = own_settings(broker)
        cat = Catalogue(settings.topic_prefix)
        simulate(settings, customers=200, rate=0, events=3000, seed=9, progress=False,
                 start=START)
        proc = c360(settings, "run", "--changes", "--until-idle", "600")

        def produce() -> None:  # keeps the dataflow writing its output topics until the kill
            with contextlib.suppress(Exception):  # the broker is gone: that is the point
                simulate(settings, customers=200, rate=500, seed=10, progress=False,
                         start=START, stop=stop)

        feeder = threading.Thread(target=produce, daemon=True)
        feeder.start()
        # The dataflow is producing: records arrive on its changes topic.
        wait_for(lambda: has_records(broker, cat.changes_topic) or proc.poll() is not None,
                 120, "c360 run publishes changes")
        assert proc.poll() is None, proc.communicate()
        killed = time.monotonic()
        os.killpg(broker.pid, signal.SIGKILL)  # the broker's process group, by pid
        code, _, err = finish(proc, 90)  # docs: within 60 s; 90 is the generous bound
        took = time.monotonic() - killed
        print(f"c360 run ended {took:.1f}s after the broker was killed")
        assert code == 2, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        # librdkafka's own threads may still log connection failures after the error line.
        line = error_line(err)
        assert line.startswith("c360: error: Kafka at " + broker.bootstrap), line
        assert ("did not acknowledge" in line) or ("unreachable for" in line), line
        assert "memory-only" in line
    finally:
        stop.set()
        broker.stop()


# F3 ----------------------------------------------------------------------------------------

def test_the_watchdog_ends_with_its_process_and_stops_it_when_told() -> None:
    """The broker's liveness is the broker's, not its watchdog shell's: a broker that exits
    (one that could not bind its port, say) is seen as exited, with its own exit code."""
    gone = _watched([sys.executable, "-c", "raise SystemExit(7)"], None)
    assert gone.wait(30) == 7
    told = _watched([sys.executable, "-c", "import time; time.sleep(60)"], None)
    try:
        assert told.poll() is None
    finally:
        _stop_watched(told)  # closes its stdin: the watchdog kills the child, then ends
    assert told.returncode == 128 + signal.SIGTERM  # the shell's code for its child's end


def test_a_restart_waits_for_the_killed_broker_to_free_its_port(tmp_path: Path) -> None:
    """After SIGKILL the new broker must be the one listening: a restart on a port still held
    is refused in one line rather than a probe reaching whatever holds it."""
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        first = broker.pid
        broker.restart()  # SIGKILL, then the same port
        assert broker.pid != first and broker.alive()
        own_settings(broker)  # the new broker answers: its topics are created
        broker.stop()
        with socket.socket() as holder:  # someone else takes the port meanwhile
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("127.0.0.1", broker.port))
            holder.listen()
            with pytest.raises(BrokerError, match="still in use"):
                broker.start()
    finally:
        broker.stop()


def test_memory_broker_restarted_then_the_old_recovery_dir_is_refused(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        settings = own_settings(broker)
        rec = tmp_path / "rec"
        run = ["run", "--recovery-dir", str(rec), "--until-idle", "3", "--snapshot-interval",
               "0.2"]
        simulate(settings, customers=30, rate=0, events=600, seed=11, progress=False,
                 start=START)
        old = Pipeline(settings, idle_timeout=3).run().count("customer")
        code, out, err = finish(c360(settings, *run), 180)
        assert code == 0 and out.startswith(f"{old} customers"), err[-3000:]
        broker.restart()  # SIGKILL and start again, same port: every topic and record gone
        assert broker.bootstrap == settings.bootstrap
        simulate(settings, customers=12, rate=0, events=150, seed=12, progress=False,
                 start=START)
        new = Pipeline(settings, idle_timeout=3).run().count("customer")
        assert new != old  # else a stale resume could not be told from a right one
        code, out, err = finish(c360(settings, *run), 180)
        assert code == 2, out + err[-3000:]
        line = one_line_error(err)
        assert "re-created" in line and "start afresh" in line
        assert f"rm -r {rec}" in line and "--recovery-dir" in line
        # Doing what it says works, and the export is the new data only.
        shutil.rmtree(rec)  # rm -r: the directory holds the entity logs' directory too
        code, out, err = finish(c360(settings, *run), 180)
        assert code == 0 and out.startswith(f"{new} customers"), err[-3000:]
    finally:
        broker.stop()
