"""Settings read from the environment (``C360_*``), in one place.

When ``C360_KAFKA_BOOTSTRAP`` is set c360 uses that cluster and starts nothing;
otherwise the commands start the embedded broker. The security settings are
passed to both Kafka clients c360 uses: kafka-python (producers, admin) and
librdkafka (bytewax's connector).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from c360.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _int_env(name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value} must be at most {maximum}")
    return value


# A host name, an IPv4 address or a bracketed IPv6 address, then a port.
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?)"
                        r":(?P<port>[0-9]{1,5})")


def parse_bootstrap(value: str, origin: str = "C360_KAFKA_BOOTSTRAP") -> list[tuple[str, int]]:
    """``host:port,host:port`` as (host, port) pairs, or :class:`ConfigError` naming
    ``origin`` (the variable or option it came from) and what a good value looks like."""
    pairs: list[tuple[str, int]] = []
    for part in value.split(","):
        part = part.strip()
        match = _HOST_PORT.fullmatch(part)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            what = f"{value!r}" if part == value.strip() else f"{value!r}: {part!r}"
            raise ConfigError(f"{origin}={what} is not host:port "
                              "(for example 127.0.0.1:9092; several: host1:9092,host2:9092)")
        pairs.append((match["host"].strip("[]"), int(match["port"])))
    return pairs


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")
# Kafka's rule for topic names (249 characters at most; we leave room for the stream name).
_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]*")
TOPIC_PREFIX_MAX = 200


def check_topic_name(name: str, origin: str) -> str:
    if not name or len(name) > 249 or _TOPIC_CHARS.fullmatch(name) is None:
        raise ConfigError(f"{origin}={name!r} is not a Kafka topic name (1-249 characters "
                          "among letters, digits, '.', '_' and '-')")
    return name


# librdkafka's own log threshold (syslog levels 0-7) for every client c360 creates; None is
# librdkafka's default (6, info). The CLI sets 2 (critical only) unless -v: each client logs
# every failed reconnect, 2,610 lines measured in the 60 s before a lost broker becomes
# c360's one-line BrokerError.
_librdkafka_log_level: int | None = None


@contextmanager
def quiet_kafka_clients(level: int | None = 2) -> Iterator[None]:
    """Mute librdkafka's log lines below ``level`` for the clients made inside this block
    (None: its default); the level before is restored after it, so a command run in-process
    (tests, notebooks) leaves no setting behind. c360 reports what goes wrong itself, as
    exceptions that say what to do."""
    global _librdkafka_log_level
    before, _librdkafka_log_level = _librdkafka_log_level, level
    try:
        yield
    finally:
        _librdkafka_log_level = before


@dataclass(frozen=True)
class KafkaSecurity:
    """SASL/SSL settings for a user's own cluster; all empty for the embedded broker."""

    protocol: str = ""  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str = ""  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""

    def validate(self) -> KafkaSecurity:
        """These settings, normalised, or :class:`ConfigError` for a value no client accepts
        (so a typo fails at once, not after a connection attempt has timed out)."""
        protocol = self.protocol.strip().upper()
        mechanism = self.sasl_mechanism.strip().upper()
        if protocol and protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(f"C360_KAFKA_SECURITY_PROTOCOL={self.protocol!r} is not one of "
                              f"{', '.join(SECURITY_PROTOCOLS)}")
        if mechanism and mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"C360_KAFKA_SASL_MECHANISM={self.sasl_mechanism!r} is not one "
                              f"of {', '.join(SASL_MECHANISMS)}")
        if mechanism and not protocol.startswith("SASL_"):
            raise ConfigError("C360_KAFKA_SASL_MECHANISM is set: set "
                              "C360_KAFKA_SECURITY_PROTOCOL to SASL_SSL or SASL_PLAINTEXT too")
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not self.sasl_username:
            raise ConfigError(f"C360_KAFKA_SASL_MECHANISM={mechanism} needs "
                              "C360_KAFKA_SASL_USERNAME and C360_KAFKA_SASL_PASSWORD")
        if self.ssl_cafile and not Path(self.ssl_cafile).is_file():
            raise ConfigError(f"C360_KAFKA_SSL_CAFILE={self.ssl_cafile!r}: no such file")
        return replace(self, protocol=protocol, sasl_mechanism=mechanism)

    def kafka_python(self) -> dict[str, str]:
        """Keyword arguments for kafka-python's clients."""
        cfg: dict[str, str] = {}
        if self.protocol:
            cfg["security_protocol"] = self.protocol
        if self.sasl_mechanism:
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = self.sasl_password
        if self.ssl_cafile:
            cfg["ssl_cafile"] = self.ssl_cafile
        return cfg

    def librdkafka(self) -> dict[str, str]:
        """Configuration properties for librdkafka (confluent-kafka, bytewax)."""
        cfg: dict[str, str] = {}
        if self.protocol:
            cfg["security.protocol"] = self.protocol
        if self.sasl_mechanism:
            cfg["sasl.mechanisms"] = self.sasl_mechanism
            cfg["sasl.username"] = self.sasl_username
            cfg["sasl.password"] = self.sasl_password
        if self.ssl_cafile:
            cfg["ssl.ca.location"] = self.ssl_cafile
        if _librdkafka_log_level is not None:  # every librdkafka client's config passes here
            cfg["log_level"] = str(_librdkafka_log_level)
        return cfg


@dataclass(frozen=True)
class Settings:
    """Everything c360 reads from the environment. ``Settings.from_env()`` builds it."""

    bootstrap: str = ""  # empty: start the embedded broker
    security: KafkaSecurity = KafkaSecurity()
    topic_prefix: str = "c360."
    partitions: int = 2
    replication: int = 1
    broker_port: int = 0  # 0: any free port
    olist_dir: Path = REPO_ROOT.parent / "shared" / "data" / "olist"
    max_event_bytes: int = 1_000_000
    allowed_lateness_s: int = 3600  # event time an event may lag its partition by
    # A topic partition at its end with nothing buffered this long stops holding the
    # event-time merge back (docs/event-time.md): 50x the consumer's fetch wait (10 ms),
    # so one whose data is in flight is not given up on even on a busy machine, while a
    # quiet topic adds at most this to the latency of the others.
    partition_idle_ms: int = 500
    align_max: int = 20_000  # messages buffered per topic partition before it is paused
    # A development-broker choice (C360_SIMULATE_INGEST=1): the simulator (`c360 simulate`,
    # `c360 demo`) produces every stream to the mixed ingest topic instead of one topic per
    # stream. On the embedded broker, whose cost is per partition batch, it is the layout with
    # the lowest floor measured (a bare consumer reading it alone at 10k events/s: p50 15-23 ms
    # vs 40-69 ms for one topic per stream; docs/benchmarks.md, "The floor per layout"). A real
    # cluster keeps one topic per stream.
    simulate_ingest: bool = False

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of the environment, every one checked: a bad value is a
        :class:`ConfigError` naming the variable, before anything has started."""
        env = os.environ
        olist = env.get("C360_OLIST_DIR")
        bootstrap = env.get("C360_KAFKA_BOOTSTRAP", "").strip()
        if bootstrap:
            parse_bootstrap(bootstrap)
        prefix = env.get("C360_TOPIC_PREFIX", "c360.")
        if len(prefix) > TOPIC_PREFIX_MAX:
            raise ConfigError(f"C360_TOPIC_PREFIX is {len(prefix)} characters long; "
                              f"keep it to {TOPIC_PREFIX_MAX}")
        check_topic_name(prefix, "C360_TOPIC_PREFIX")
        return cls(
            bootstrap=bootstrap,
            security=KafkaSecurity(
                protocol=env.get("C360_KAFKA_SECURITY_PROTOCOL", ""),
                sasl_mechanism=env.get("C360_KAFKA_SASL_MECHANISM", ""),
                sasl_username=env.get("C360_KAFKA_SASL_USERNAME", ""),
                sasl_password=env.get("C360_KAFKA_SASL_PASSWORD", ""),
                ssl_cafile=env.get("C360_KAFKA_SSL_CAFILE", ""),
            ).validate(),
            topic_prefix=prefix,
            partitions=_int_env("C360_PARTITIONS", 2),
            replication=_int_env("C360_REPLICATION", 1),
            broker_port=_int_env("C360_BROKER_PORT", 0, minimum=0, maximum=65535),
            olist_dir=Path(olist) if olist else cls.olist_dir,
            max_event_bytes=_int_env("C360_MAX_EVENT_BYTES", 1_000_000),
            allowed_lateness_s=_int_env("C360_ALLOWED_LATENESS_S", 3600, minimum=0),
            partition_idle_ms=_int_env("C360_PARTITION_IDLE_MS", 500, minimum=0),
            align_max=_int_env("C360_ALIGN_MAX", 20_000, minimum=10),
            simulate_ingest=_int_env("C360_SIMULATE_INGEST", 0, minimum=0, maximum=1) == 1,
        )

    def with_bootstrap(self, bootstrap: str, origin: str = "bootstrap") -> Settings:
        """These settings on another cluster; ``origin`` names where the value came
        from in the error a malformed one raises (``--bootstrap``, say)."""
        bootstrap = bootstrap.strip()
        parse_bootstrap(bootstrap, origin)
        return replace(self, bootstrap=bootstrap)

    def require_bootstrap(self) -> str:
        if not self.bootstrap:
            raise ConfigError(
                "no Kafka cluster: set C360_KAFKA_BOOTSTRAP=host:port, or start the embedded "
                "broker with `c360 broker` and export the address it prints (in Python: "
                "`with c360.embedded_broker() as settings: ...`)"
            )
        return self.bootstrap

    def librdkafka(self) -> dict[str, str]:
        """Base librdkafka config: bootstrap servers plus security settings."""
        return {"bootstrap.servers": self.require_bootstrap(), **self.security.librdkafka()}

    def kafka_python(self) -> dict[str, object]:
        """Base kafka-python config: bootstrap servers plus security settings."""
        return {"bootstrap_servers": self.require_bootstrap().split(","),
                **self.security.kafka_python()}


def paced_linger_ms(rate: float) -> int:
    """The producer linger (ms) for events produced at ``rate`` per second over one topic per
    stream (17 topics x 2 partitions): 5 ms under 1,000 events/s, else ``rate / 200`` from
    20 to 100 ms (2k: 20 ms, 10k: 50 ms, 20k: 100 ms).

    Why (docs/benchmarks.md, "The floor per layout"; a bare consumer on the embedded broker,
    shared 2 cores at load 7-17, p50 over repeated runs): the broker's cost is per partition
    batch, not per event. At 10k events/s a 5 ms linger makes thousands of one-event batches
    a second over 34 partitions and the broker falls seconds behind (p50 1.3-3.8 s); 50 ms
    gives p50 40-69 ms (100 ms: 69-90; 200 ms: 151-156). At 2k, 5 ms: p50 0.2-3.3 s, 20 ms:
    25-125 ms; at 1k, 5 ms: 15 or 472 ms, 20 ms: 28-32 ms; at 500/s 5 ms is better (18-24
    vs 34-38 ms). Each event waits at most the linger in the producer; a real cluster takes
    the same batches happily.
    """
    if rate < 1000:
        return 5
    return int(max(20.0, min(100.0, rate / 200)))


def producer_config(settings: Settings, **overrides: str | int) -> dict[str, str]:
    """The librdkafka config of a c360 producer (the dataflow's sinks): the cluster, its
    security, and ``murmur2_random``, the partitioner kafka-python uses, so that a record
    keyed by customer id lands in the partition index that customer's events have.
    ``overrides`` spell librdkafka's dots as underscores (``linger_ms=5``). The cluster may
    still be unset (building a dataflow graph needs none; running it does)."""
    config = {"bootstrap.servers": settings.bootstrap, **settings.security.librdkafka(),
              "partitioner": "murmur2_random"}
    config.update((name.replace("_", "."), str(value)) for name, value in overrides.items())
    return config
