"""Bad invocations of the ``c360`` command: each is one line on stderr and exit code 2, at
once, before any work (nothing on stdout: no broker started, no run, no summary).

Each case runs the real command in a child process. The 10 s bound is the acceptance's
upper bound, not a measurement: the checks take well under a second on an idle machine,
except the one that waits for a listener that never answers (5 s, by design).
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from c360.config import REPO_ROOT
from c360.dev.broker import EmbeddedBroker

LIMIT = 10.0  # seconds: the acceptance's bound per invocation


@dataclass
class Case:
    argv: str  # shell-like words; {names} filled from the fixtures below
    says: str  # a fragment the one line must hold
    env: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    # argument values
    "workers-0": Case("run --workers 0 --until-idle 1", "--workers: must be ≥ 1, not 0"),
    "until-idle-negative": Case("run --until-idle -5", "--until-idle: must be more than 0"),
    "until-idle-nan": Case("run --until-idle nan", "--until-idle: must be more than 0"),
    "snapshot-interval-0": Case("run --snapshot-interval 0", "--snapshot-interval"),
    "broker-partitions-0": Case("broker --partitions 0", "--partitions: must be ≥ 1"),
    "broker-port-99999": Case("broker --port 99999", "--port: must be from 0 to 65535"),
    "broker-port-busy": Case("broker --port {busy}", "--port {busy} is in use"),
    "bench-sections-9": Case("bench --sections 9", "give section numbers 1-6"),
    "bench-sections-word": Case("bench --sections one,two", "give section numbers 1-6"),
    "bench-out-unwritable": Case("bench --out /proc/c360-none/b.json", "cannot write the bench"),
    "simulate-rate-negative": Case("simulate --rate -1", "--rate: must be 0 or more"),
    "simulate-duration-and-events": Case("simulate --duration 5 --events 10",
                                         "not allowed with argument"),
    "demo-customers-0": Case("demo --customers 0", "--customers: must be ≥ 1"),
    "demo-port-busy": Case("demo --no-browser --port {busy}", "--port {busy} is in use"),
    "demo-same-ports": Case("demo --no-browser --port 5999 --sync-port 5999",
                            "--port and --sync-port are both 5999"),
    "run-changes-bad-topic": Case("run --changes bad/topic", "--changes='bad/topic' is not a "
                                  "Kafka topic name"),
    "run-process-id-out-of-range": Case("run --addresses 127.0.0.1:1;127.0.0.1:2 "
                                        "--process-id 2", "--process-id 2 is not an index"),
    "run-addresses-no-port": Case("run --addresses somehost", "--addresses='somehost' is not "
                                  "host:port"),
    "unknown-option": Case("run --frobnicate", "unrecognized arguments: --frobnicate"),
    "unknown-subcommand": Case("frobnicate", "invalid choice: 'frobnicate'"),
    "no-subcommand": Case("", "the following arguments are required: COMMAND"),
    "unknown-dataset": Case("replay movies", "invalid choice: 'movies'"),
    "replay-no-data": Case("replay olist --data {tmp}/nowhere --bootstrap {kafka}",
                           "Olist data directory not found"),
    # export paths, checked before a run that would otherwise wait 30 s for idleness
    "export-xlsx": Case("run --until-idle 30 --export {tmp}/x.xlsx --bootstrap {kafka}",
                        "cannot export to 'x.xlsx': use a name ending in .parquet"),
    "export-unwritable": Case("run --until-idle 30 --export /proc/c360-none/x.csv "
                              "--bootstrap {kafka}", "cannot write the export"),
    "export-is-a-directory": Case("run --until-idle 30 --export {tmp} --bootstrap {kafka}",
                                  "cannot export to"),
    "export-under-a-file": Case("run --until-idle 30 --export {tmp}/file.txt/x.csv "
                                "--bootstrap {kafka}", "is not a directory"),
    # the cluster
    "bootstrap-not-a-host": Case("run --bootstrap not_a_host!", "is not host:port"),
    "bootstrap-with-spaces": Case("run", "C360_KAFKA_BOOTSTRAP='not a host' is not host:port",
                                  {"C360_KAFKA_BOOTSTRAP": "not a host"}),
    "bootstrap-stale": Case("run --until-idle 1 --bootstrap 127.0.0.1:{closed}",
                            "cannot reach Kafka at 127.0.0.1:{closed}"),
    "bootstrap-unknown-host": Case("simulate --events 5 --bootstrap no-such-host.invalid:9092",
                                   "unknown host 'no-such-host.invalid'"),
    "bootstrap-not-kafka": Case("run --until-idle 1 --bootstrap 127.0.0.1:{silent}",
                                "did not answer within 5s"),
    "demo-bootstrap-stale": Case("demo --no-browser --port 0", "cannot reach Kafka",
                                 {"C360_KAFKA_BOOTSTRAP": "127.0.0.1:{closed}"}),
    # settings from the environment
    "env-partitions-0": Case("broker", "C360_PARTITIONS=0 must be at least 1",
                             {"C360_PARTITIONS": "0"}),
    "env-partitions-word": Case("run", "C360_PARTITIONS='many' is not a whole number",
                                {"C360_PARTITIONS": "many"}),
    "env-broker-port": Case("broker", "C360_BROKER_PORT=70000 must be at most 65535",
                            {"C360_BROKER_PORT": "70000"}),
    "env-security-protocol": Case("run --until-idle 1", "C360_KAFKA_SECURITY_PROTOCOL='TLS'",
                                  {"C360_KAFKA_SECURITY_PROTOCOL": "TLS"}),
    "env-sasl-without-protocol": Case("simulate", "set C360_KAFKA_SECURITY_PROTOCOL",
                                      {"C360_KAFKA_SASL_MECHANISM": "PLAIN"}),
    "env-cafile-missing": Case("run", "C360_KAFKA_SSL_CAFILE='/no/such/ca.pem': no such file",
                               {"C360_KAFKA_SSL_CAFILE": "/no/such/ca.pem"}),
    "env-topic-prefix": Case("run", "C360_TOPIC_PREFIX='my shop.' is not a Kafka topic name",
                             {"C360_TOPIC_PREFIX": "my shop."}),
    # sync tokens: checked before the demo starts its broker
    "tokens-file-missing": Case("demo --no-browser --port 0", "cannot read the tokens file",
                                {"C360_TOKENS_FILE": "{tmp}/missing.json"}),
    "tokens-file-bad-json": Case("demo --no-browser --port 0", "cannot parse the tokens file",
                                 {"C360_TOKENS_FILE": "{tmp}/bad.json"}),
    "tokens-inline-bad-json": Case("demo --no-browser --port 0", "C360_TOKENS is not valid JSON",
                                   {"C360_TOKENS": "{{not json"}),
    "dashboard-users-missing": Case("demo --no-browser --port 0", "No such file or directory",
                                    {"C360_DASHBOARD_USERS": "{tmp}/users.json"}),
    "dashboard-users-bad-json": Case("demo --no-browser --port 0", "is not valid JSON",
                                     {"C360_DASHBOARD_USERS": "{tmp}/bad.json"}),
    "dashboard-scopes-missing": Case("demo --no-browser --port 0",
                                     "cannot read the dashboard scopes file",
                                     {"C360_DASHBOARD_SCOPES": "{tmp}/scopes.json"}),
    "tokens-inline-bad-scope": Case("demo --no-browser --port 0", "C360_TOKENS: token",
                                    {"C360_TOKENS": '{{"t": {{"pii": "maybe"}}}}'}),
}


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory,
           broker: EmbeddedBroker) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "bad.json").write_text("{ not json")
    (tmp / "file.txt").write_text("a file, not a directory")
    busy = socket.socket()  # a port something listens on
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    silent = socket.socket()  # accepts connections, never answers: not Kafka
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    closed = socket.socket()  # a port nothing listens on (a stale bootstrap)
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        yield {"tmp": str(tmp), "busy": str(busy.getsockname()[1]),
               "silent": str(silent.getsockname()[1]), "closed": str(closed_port),
               "kafka": broker.bootstrap}
    finally:
        busy.close()
        silent.close()


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_invocation_is_one_line_and_exit_2(name: str, places: dict[str, str]) -> None:
    case = CASES[name]
    argv = [w.format(**places) for w in case.argv.split()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("C360_")}
    env.update({k: v.format(**places) for k, v in case.env.items()})
    # The CPU the command spent, not the wall clock: on the loaded 2-core CI machine the
    # same refusal took 12.2 s of wall time (importing pandas for the Olist check), and a
    # wall-clock bound failed at random. A command that waited (for idleness, a broker)
    # instead of refusing is caught by the timeout and by the empty stdout below.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "c360", *argv], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=LIMIT + 20)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    took = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("c360"), lines[0]
    assert "Traceback" not in done.stderr
    assert case.says.format(**places) in lines[0], lines[0]
    assert done.stdout == "", done.stdout  # nothing started: no broker, no run, no summary
    assert took < LIMIT, f"{took:.1f} s of CPU"


def test_a_demo_error_goes_to_stderr(places: dict[str, str]) -> None:
    """An error inside the demo itself (not the CLI's checks) is one line on stderr too;
    stdout keeps only the demo's own lines ("stopping...", "stopped")."""
    code = ("import sys; from dashboards.demo import run_demo; "
            f"sys.exit(run_demo(port={places['busy']}, show=False))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("C360_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"c360 demo: error: port {places['busy']} is in use: pass --port 0 (any free port) "
        "or another port"], done.stderr
    assert "error" not in done.stdout, done.stdout


def test_a_lost_broker_is_one_line_without_the_kafka_clients_logs(tmp_path: Path) -> None:
    """The memory-only broker restarts under a running `c360 run`: librdkafka would log every
    reconnect of every client (thousands of lines); stderr holds c360's one line only."""
    from kafka import KafkaProducer

    from tests.factories import read_dlq
    from tests.test_broker_restart import fresh_settings, wait_for

    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        settings = fresh_settings(broker)
        env = {k: v for k, v in os.environ.items() if not k.startswith("C360_")}
        env.update({"C360_KAFKA_BOOTSTRAP": broker.bootstrap,
                    "C360_TOPIC_PREFIX": settings.topic_prefix})
        proc = subprocess.Popen([sys.executable, "-m", "c360", "run", "--until-idle", "120",
                                 "--progress", "never"], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
            producer.send(settings.topic_prefix + "orders", b"not json").get(10)
            producer.close()
            # The run reads once its dead letter is out: only then restart the broker.
            dlq = settings.topic_prefix + "dlq"
            wait_for(lambda: read_dlq(settings, dlq, 1, timeout=1) != [], 60,
                     "c360 run dead-letters the malformed event")
            broker.restart()
            _, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        broker.stop()
    assert proc.returncode == 2, stderr[-3000:]
    lines = stderr.splitlines()
    assert [line for line in lines if line.startswith("%")] == [], stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("c360: error: "), stderr[-3000:]
