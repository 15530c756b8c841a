"""Topic admin on any Kafka cluster: is it reachable, create topics, notice lost topics.

Used by the dataflow's source and sinks, the pipeline and the dev tools alike; nothing here
knows the embedded broker (``c360.dev.broker``), so a user's cluster gets the same checks.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from c360.config import Settings, parse_bootstrap
from c360.errors import BrokerError

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

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
    # Any: librdkafka takes callbacks in its config too, which confluent-kafka's stubs omit.
    config: dict[str, Any] = {**settings.librdkafka(), "log_level": 0,
                              "error_cb": lambda err: errors.append(str(err))}
    admin = AdminClient(config)
    try:
        admin.list_topics(timeout=max(0.5, deadline - time.monotonic()))
    except KafkaException as exc:
        admin.poll(0)  # delivers the error callbacks: the reason, if librdkafka knows one
        reason = errors[-1] if errors else str(exc.args[0].str() if exc.args else exc)
        raise BrokerError(f"Kafka at {bootstrap} did not answer within {timeout:g}s ({reason}): "
                          "is it a Kafka broker, and are the C360_KAFKA_SECURITY_PROTOCOL / "
                          "SASL / SSL settings right?") from None


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

    def __init__(self, config: Mapping[str, str | int | float | bool], topics: Iterable[str], *,
                 interval: float = 1.0, unreachable_timeout: float = 60.0) -> None:
        self._config: dict[str, str | int | float | bool] = dict(config)
        self._topics = list(topics)
        self._interval = interval
        self._unreachable_timeout = unreachable_timeout
        self._admin: AdminClient | None = None
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
