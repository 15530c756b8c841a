"""The exceptions c360 raises; catch :class:`C360Error` to catch them all."""

from __future__ import annotations


class C360Error(Exception):
    """Base class of every error c360 raises on purpose."""


class ConfigError(C360Error):
    """A setting is missing or malformed."""


class BrokerError(C360Error):
    """The Kafka broker could not be started, reached or used."""


class InvalidEvent(C360Error):
    """An event failed validation; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DataError(C360Error):
    """Input data (for example the Olist files) is missing or unusable."""
