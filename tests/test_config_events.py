"""Settings from the environment and the event catalogue's validation."""

from __future__ import annotations

import pytest

from c360.config import Settings, producer_config
from c360.errors import ConfigError, InvalidEvent
from c360.model import events as ev
from c360.model.events import Catalogue, encode
from tests.factories import at


def test_security_settings_reach_both_kafka_clients(monkeypatch) -> None:
    monkeypatch.setenv("C360_KAFKA_BOOTSTRAP", "k1:9093,k2:9093")
    monkeypatch.setenv("C360_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("C360_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("C360_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("C360_KAFKA_SASL_PASSWORD", "s3cret")
    s = Settings.from_env()
    assert s.kafka_python() == {
        "bootstrap_servers": ["k1:9093", "k2:9093"], "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
        "sasl_plain_password": "s3cret"}
    assert s.librdkafka() == {
        "bootstrap.servers": "k1:9093,k2:9093", "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "svc", "sasl.password": "s3cret"}
    # Every producer of the dataflow: the same cluster and security, murmur2 like
    # kafka-python's producers, overrides with librdkafka's dots spelt as underscores.
    assert producer_config(s, message_max_bytes=20_000_000, linger_ms=5) == {
        **s.librdkafka(), "partitioner": "murmur2_random", "message.max.bytes": "20000000",
        "linger.ms": "5"}
    assert producer_config(Settings())["bootstrap.servers"] == ""  # a graph needs no cluster
    assert "s3cret" not in repr(s)


def test_bad_settings_say_which_variable(monkeypatch) -> None:
    monkeypatch.setenv("C360_PARTITIONS", "many")
    with pytest.raises(ConfigError, match="C360_PARTITIONS='many' is not a whole number"):
        Settings.from_env()
    monkeypatch.delenv("C360_PARTITIONS")
    monkeypatch.delenv("C360_KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(ConfigError, match="set C360_KAFKA_BOOTSTRAP"):
        Settings.from_env().require_bootstrap()


def test_every_stream_has_a_topic_a_schema_and_a_key() -> None:
    cat = Catalogue("shop.")
    assert len(cat.streams) == 17
    assert cat.topic("orders") == "shop.orders"
    assert {s.key_field for s in cat.streams} == {"customer_id", "product_id"}
    assert cat.by_name["inventory"].entity_kind == "product"
    with pytest.raises(KeyError, match="unknown stream 'nope'"):
        cat.topic("nope")


def test_decode_round_trips_and_rejects_with_reasons() -> None:
    cat = Catalogue()
    pay = ev.Payment(event_id="e", event_time=at(0), customer_id="c", order_id="o",
                     payment_date=at(0), method="pix", amount=12.5)
    assert cat.decode(cat.topic("payments"), encode(pay)) == pay
    cases = {
        b'{"event_id":"e","event_time":"2026-01-01T00:00:00","customer_id":"c","order_id":"o",'
        b'"payment_date":"2026-01-01T00:00:00Z","method":"pix","amount":1}':
            "datetime` with a timezone",
        encode(pay).replace(b'"amount":12.5', b'"amount":-3'): "Expected `float` >= 0",
        encode(pay).replace(b'"customer_id":"c"', b'"customer_id":""'): "length >= 1",
    }
    for raw, reason in cases.items():
        with pytest.raises(InvalidEvent, match=reason):
            cat.decode(cat.topic("payments"), raw)
    # The mixed ingest topic: records name their stream.
    mixed = encode(pay)[:-1] + b',"stream":"payments"}'
    assert cat.decode(cat.ingest_topic, mixed) == pay


def test_bootstrap_values_are_checked_before_any_connection(monkeypatch) -> None:
    from c360.config import parse_bootstrap

    assert parse_bootstrap("k1:9093, k2:9093") == [("k1", 9093), ("k2", 9093)]
    assert parse_bootstrap("[::1]:9092,10.0.0.7:19092") == [("::1", 9092), ("10.0.0.7", 19092)]
    for bad in ["not a host", "host", "host:0", "host:70000", "k1:9093,", ":9092", "h:p"]:
        with pytest.raises(ConfigError, match="is not host:port"):
            parse_bootstrap(bad)
    monkeypatch.setenv("C360_KAFKA_BOOTSTRAP", "not a host")
    with pytest.raises(ConfigError, match="C360_KAFKA_BOOTSTRAP='not a host' is not host:port"):
        Settings.from_env()
    with pytest.raises(ConfigError, match="--bootstrap='x' is not host:port"):
        Settings().with_bootstrap("x", "--bootstrap")


def test_security_and_topic_settings_are_checked(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("C360_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("C360_KAFKA_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("C360_KAFKA_SASL_USERNAME", "svc")
    s = Settings.from_env()  # normalised to what both clients accept
    assert (s.security.protocol, s.security.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    cases = {
        ("C360_KAFKA_SECURITY_PROTOCOL", "TLS"): "is not one of PLAINTEXT, SSL",
        ("C360_KAFKA_SASL_MECHANISM", "MD5"): "is not one of PLAIN, SCRAM-SHA-256",
        ("C360_KAFKA_SASL_USERNAME", ""): "needs C360_KAFKA_SASL_USERNAME",
        ("C360_KAFKA_SSL_CAFILE", str(tmp_path / "none.pem")): "none.pem': no such file",
        ("C360_TOPIC_PREFIX", "shop orders."): "is not a Kafka topic name",
        ("C360_BROKER_PORT", "65536"): "C360_BROKER_PORT=65536 must be at most 65535",
    }
    for (name, value), says in cases.items():
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(ConfigError, match=says):
                Settings.from_env()
    monkeypatch.setenv("C360_KAFKA_SECURITY_PROTOCOL", "SSL")
    with pytest.raises(ConfigError, match="set C360_KAFKA_SECURITY_PROTOCOL to SASL_SSL"):
        Settings.from_env()


def test_a_library_run_without_a_cluster_says_how_to_start_one(monkeypatch) -> None:
    import c360

    monkeypatch.delenv("C360_KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(ConfigError, match=r"with c360\.embedded_broker\(\) as settings"):
        c360.run_until_idle(1)


def test_a_library_run_with_nonsense_arguments_fails_before_it_starts() -> None:
    import c360

    s = Settings(bootstrap="127.0.0.1:1")  # never reached: the arguments are checked first
    for kwargs, says in [({"idle": -5}, "idle_timeout must be more than 0 seconds, not -5"),
                         ({"idle": float("nan")}, "idle_timeout must be more than 0"),
                         ({"workers": 0}, "workers must be at least 1, not 0")]:
        with pytest.raises(ConfigError, match=says):
            c360.run_until_idle(settings=s, **kwargs)
    with pytest.raises(ConfigError, match="snapshot_interval must be more than 0"):
        c360.Pipeline(s, snapshot_interval=0)
