"""Adaptive polling in the Kafka source (issue 18): polled again at once when quiet, after a
short wait under load (fewer, larger polls), back to back in a backlog; and what comes out
never depends on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from confluent_kafka import Producer

from c360.config import Settings
from c360.model import events as ev
from c360.model.events import encode
from c360.topics.admin import create_topics
from c360.topics.source import POLL_LOADED, POLL_WAIT, KafkaBatchSource, Pacing

START = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


# -- the pacing, alone ------------------------------------------------------------------------

def _feed(pacing: Pacing, per_poll: int, every: float, polls: int) -> list[float]:
    """``polls`` polls ``every`` seconds apart, each reading ``per_poll`` messages."""
    return [pacing.polled(per_poll, k * every) for k in range(polls)]


def test_a_quiet_partition_is_polled_again_at_once() -> None:
    pacing = Pacing(limit=5000)
    waits = _feed(pacing, 1, 0.02, 100)  # 50 messages/s
    assert set(waits) == {0.0}
    assert (pacing.polls, pacing.messages, pacing.waited, pacing.full) == (100, 100, 0, 0)
    assert pacing.rate < POLL_LOADED / POLL_WAIT  # a wait would gather under POLL_LOADED


def test_a_loaded_partition_waits_between_polls_for_larger_batches() -> None:
    pacing = Pacing(limit=5000)
    waits = _feed(pacing, 50, 0.005, 100)  # 10k messages/s
    assert waits[0] == 0.0  # no rate known yet
    assert waits[-1] == POLL_WAIT
    assert pacing.waited >= 90
    assert 9_000 < pacing.rate < 10_001


def test_a_backlog_is_read_in_full_polls_back_to_back() -> None:
    pacing = Pacing(limit=500)
    waits = _feed(pacing, 500, 0.001, 20)  # 500k messages/s: more is waiting
    assert set(waits) == {0.0}
    assert pacing.full == 20 and pacing.waited == 0


def test_empty_polls_count_no_poll_and_bring_the_rate_down() -> None:
    pacing = Pacing(limit=5000)
    _feed(pacing, 50, 0.005, 100)
    loaded = pacing.rate
    waits = [pacing.polled(0, 0.5 + k * 0.005) for k in range(100)]
    assert set(waits) == {0.0}
    assert pacing.polls == 100  # the data polls only
    assert pacing.rate < loaded / 10
    assert pacing.polled(1, 1.1) == 0.0  # quiet again: a message goes out at once


def test_a_wait_of_zero_never_waits() -> None:
    pacing = Pacing(limit=5000, wait=0.0)
    assert set(_feed(pacing, 50, 0.005, 100)) == {0.0}
    assert pacing.waited == 0


# -- the source on the real broker ------------------------------------------------------------

def _payment(n: int, t: datetime, customer: str) -> bytes:
    return encode(ev.Payment(event_id=f"{customer}-{n}", event_time=t, customer_id=customer,
                             order_id=f"o{n}", payment_date=t, method="card", amount=1.0))


def _drive(part: Any, until: int, timeout: float = 45.0, already: Sequence[Any] = ()) -> list[Any]:
    """Call ``next_batch`` as bytewax does (again at once, or at ``next_awake``) until
    ``until`` messages went out in all, counting those ``already`` out."""
    out: list[Any] = []
    done = sum(len(p.msgs) for p in already)
    deadline = time.monotonic() + timeout
    while done < until and time.monotonic() < deadline:
        batch = part.next_batch()
        out += batch
        done += sum(len(p.msgs) for p in batch)
        awake = part.next_awake()
        if awake is not None:
            time.sleep(max(0.0, (awake - datetime.now(timezone.utc)).total_seconds()))
    return out


def _produce(producer: Producer, topics: list[str], first: int, count: int,
             rate: float) -> None:
    """``count`` payments alternating between the topics, event times one ms apart, paced."""
    began = time.monotonic()
    for k in range(count):
        ahead = began + k / rate - time.monotonic()
        if ahead > 0.001:
            time.sleep(ahead)
        n = first + k
        producer.produce(topics[n % 2], _payment(n, START + timedelta(milliseconds=n), "c1"),
                         partition=0)
        producer.poll(0)
    producer.flush(30)


def test_on_the_broker_a_trickle_goes_out_poll_by_poll_and_load_in_larger_polls(
        settings: Settings) -> None:
    a, b = f"{settings.topic_prefix}ap.a", f"{settings.topic_prefix}ap.b"
    create_topics(replace(settings, partitions=1), [a, b])
    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 1})
    # No topic partition ever counts as idle here: an idle one stops holding the merge back,
    # and which message is fetched first then decides the order (stop 23's CI: with 1 s, b33
    # went out before a32 because the quiet phase had ended by waiting a idle). So each phase
    # is driven until all but its last message went out (that one waits for the next phase's
    # first), and one closing message on a lets the last go.
    never = 3600.0
    source = KafkaBatchSource(settings.librdkafka(), [a, b], partition_idle=never)
    [name] = source.list_parts()
    part = source.build_part("test", name, None)
    warm, quiet_n, loaded_n = 2, 30, 5000
    total = warm + quiet_n + loaded_n
    try:
        # Fetching before the trickle starts (the first fetch may take a while here).
        _produce(producer, [a, b], 0, warm, 50)
        emitted = _drive(part, warm - 1)
        before = (part.pacing.polls, part.pacing.messages, part.pacing.waited)
        trickle = threading.Thread(target=_produce,
                                   args=(producer, [a, b], warm, quiet_n, 50))
        trickle.start()
        emitted += _drive(part, warm + quiet_n - 1, already=emitted)
        trickle.join()
        quiet = tuple(n - n0 for n, n0 in zip((part.pacing.polls, part.pacing.messages,
                                               part.pacing.waited), before, strict=True))
        load = threading.Thread(target=_produce,
                                args=(producer, [a, b], warm + quiet_n, loaded_n + 1, 10_000))
        load.start()  # ... and the closing message
        emitted += _drive(part, total, already=emitted)
        load.join()
        pacing = part.pacing
    finally:
        part.close()
    assert quiet[1] == quiet_n
    assert quiet[2] == 0  # quiet: never waited
    assert quiet[0] >= quiet_n / 3  # about a message per poll
    assert pacing.messages == total + 1
    assert pacing.waited > 0  # loaded: waited between polls ...
    assert pacing.waited_messages / pacing.waited > 3 * quiet[1] / quiet[0]  # ... for more
    # Whatever the polls were, the merge's order: event time, each topic in offset order.
    msgs = [m for p in emitted for m in p.msgs]
    assert len(msgs) == total  # the closing message waits for b
    assert [m.topic() for m in msgs] == [(a, b)[n % 2] for n in range(total)]
    assert [m.offset() for m in msgs if m.topic() == a] == list(range(total // 2))

    # The same topics read again without waits (now a backlog: full polls) give the same.
    again = KafkaBatchSource(settings.librdkafka(), [a, b], partition_idle=never,
                             batch_size=500, poll_wait=0.0)
    again.list_parts()
    reread = again.build_part("test", name, None)
    try:
        second = _drive(reread, total)
    finally:
        reread.close()
    assert [(m.topic(), m.offset()) for p in second for m in p.msgs] == \
        [(m.topic(), m.offset()) for m in msgs]
    assert reread.pacing.waited == 0 and reread.pacing.full > 0
