"""Settings read from the environment (``C360_*``), in one place.

When ``C360_KAFKA_BOOTSTRAP`` is set c360 uses that cluster and starts nothing;
otherwise the commands start the embedded broker. The security settings are
passed to both Kafka clients c360 uses: kafka-python (producers, admin) and
librdkafka (bytewax's connector).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from c360.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _int_env(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class KafkaSecurity:
    """SASL/SSL settings for a user's own cluster; all empty for the embedded broker."""

    protocol: str = ""  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str = ""  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""

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

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        olist = env.get("C360_OLIST_DIR")
        return cls(
            bootstrap=env.get("C360_KAFKA_BOOTSTRAP", "").strip(),
            security=KafkaSecurity(
                protocol=env.get("C360_KAFKA_SECURITY_PROTOCOL", ""),
                sasl_mechanism=env.get("C360_KAFKA_SASL_MECHANISM", ""),
                sasl_username=env.get("C360_KAFKA_SASL_USERNAME", ""),
                sasl_password=env.get("C360_KAFKA_SASL_PASSWORD", ""),
                ssl_cafile=env.get("C360_KAFKA_SSL_CAFILE", ""),
            ),
            topic_prefix=env.get("C360_TOPIC_PREFIX", "c360."),
            partitions=_int_env("C360_PARTITIONS", 2),
            replication=_int_env("C360_REPLICATION", 1),
            broker_port=_int_env("C360_BROKER_PORT", 0, minimum=0),
            olist_dir=Path(olist) if olist else cls.olist_dir,
            max_event_bytes=_int_env("C360_MAX_EVENT_BYTES", 1_000_000),
            allowed_lateness_s=_int_env("C360_ALLOWED_LATENESS_S", 3600, minimum=0),
        )

    def with_bootstrap(self, bootstrap: str) -> Settings:
        return replace(self, bootstrap=bootstrap)

    def require_bootstrap(self) -> str:
        if not self.bootstrap:
            raise ConfigError(
                "no Kafka cluster: set C360_KAFKA_BOOTSTRAP=host:port, "
                "or start the embedded broker with `c360 broker` and export its address"
            )
        return self.bootstrap

    def librdkafka(self) -> dict[str, str]:
        """Base librdkafka config: bootstrap servers plus security settings."""
        return {"bootstrap.servers": self.require_bootstrap(), **self.security.librdkafka()}

    def kafka_python(self) -> dict[str, object]:
        """Base kafka-python config: bootstrap servers plus security settings."""
        return {"bootstrap_servers": self.require_bootstrap().split(","),
                **self.security.kafka_python()}
