"""Shared fixtures: one real embedded broker per test session, fresh topics per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from c360.config import Settings
from c360.dev.broker import EmbeddedBroker
from c360.model.events import Catalogue
from c360.topics.admin import create_topics

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture()
def settings(broker: EmbeddedBroker) -> Settings:
    """Settings on the session's broker with a topic prefix of this test's own,
    so that tests never see each other's events. Topics are created."""
    s = Settings(bootstrap=broker.bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
                 partitions=2)
    cat = Catalogue(s.topic_prefix)
    create_topics(s, [*cat.input_topics, cat.dlq_topic, cat.late_topic, cat.decisions_topic])
    return s


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
