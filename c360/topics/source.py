"""The Kafka source of the customer-360 dataflow: topics merged in event time, offsets in
snapshots.

Why not bytewax's ``KafkaSource`` as is: it runs one librdkafka consumer per topic
partition and builds a Python object per message, so with one topic per stream
(17+) a poll returns a handful of messages and the per-batch overhead dominates;
measured here it ran at about 10% of a bare consumer loop. This source keeps
bytewax's model — fixed partitions, offsets as recoverable state — but makes
partition ``p`` of *every* stream topic one source partition served by one
consumer. Since every stream topic is keyed by entity id with the same partitioner and
partition count, partition ``p`` of each topic holds the same entities.

Event-time order (docs/event-time.md). Messages are buffered per topic partition and
emitted merged by (event time, topic), each topic partition in offset order, only while
every topic partition that is not idle has a buffered message: what comes out is a
function of the topics' contents, not of how their fetches interleaved (Kafka Streams'
task processing in timestamp order). A topic partition is *idle* once it has been at
its end, with nothing buffered, for ``partition_idle`` seconds; it then stops holding
the others back, and rejoins when data arrives. A topic partition with more than
``align_max`` buffered messages is paused (Flink's watermark alignment), so a topic one
day behind the others costs a bounded buffer, not a day of the others' events.

Each item is a :class:`Polled`: the messages, their event times and the source
partition's clock — the latest event time emitted so far — from which the decoder
derives the watermark. Event time is read from the record's JSON (``"event_time"``,
see :func:`event_time_of`); a record without a readable one is passed on at once for
the decoder to dead-letter. The commands topic is not merged (commands act now).

Adaptive polling (issue 18). Live, a poll returns what arrived since the previous one; polled
back to back under load that can be a few messages, and the dataflow's cost per item (bytewax's
steps, the shards, the store) then dominates. :class:`Pacing` estimates the arrival rate and,
when a wait of ``poll_wait`` (5 ms) would gather at least ``POLL_LOADED`` messages, waits that
long before the next poll; when quiet it polls again at once (no latency added), and after a
full poll (a backlog) too. Only *when* polls happen changes: what comes out, and in which
order, is the merge's function of the topics' contents, whatever the batch boundaries.
Measured (docs/benchmarks.md, "Adaptive polling"): on one topic per stream the merge already
emits large items (median ~270 messages at 5k events/s per partition) and the wait changes the
CPU per event by no more than the noise (10k events/s: 94-96 vs 93-103 us at load 3-6); it is
for layouts the merge does not batch (the mixed ingest topic).

It tails (the embedded broker's end offsets are wrong, so no end is trusted; the
fetch responses' high watermarks, which partition-end events use, are right) and
stops when told (``stop``) or when every topic has been idle ``idle_timeout`` seconds:
the bounded run mode, which then emits everything buffered and a final item.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from c360.config import Settings
from c360.errors import BrokerError
from c360.topics.admin import TopicWatch

Offsets = dict[str, int]  # topic -> next offset to read, for one partition index

POLL_PAUSE = timedelta(milliseconds=5)  # back-off when a poll comes back empty
# Under load, the wait between polls: as long as the empty-poll back-off, so a loaded topic's
# events wait no longer than a quiet topic's first one already does. Measured live (docs/
# benchmarks.md, "Adaptive polling"): see there for CPU per event before and after.
POLL_WAIT = 0.005
POLL_LOADED = 10  # messages a wait must be expected to gather to be worth its latency
RATE_TAU = 0.1  # seconds over which the arrival rate is averaged (exponentially)
CLOCK_KEY = "@clock_us"  # in a snapshot: the partition's clock (latest event time emitted)
# How often (wall time) a partition's clock is broadcast to every shard when it moved
# without the events saying so to all of them: the live aging and window closing lag by
# at most this. A broadcast is 2 x shards small items; twice a second is nothing.
TICK_S = 0.5
NO_TIME = -math.inf
_EOF = KafkaError._PARTITION_EOF
_KEY = b'"event_time"'


def time_key(field: str) -> bytes:
    """The JSON key :func:`event_time_of` looks for, for a stream whose event time is
    ``field`` on the wire (a declared stream may name it ``ts``: c360.model.declare.stream)."""
    return b'"' + field.encode() + b'"'


def event_time_of(raw: bytes | None, key: bytes = _KEY) -> float | None:
    """The record's event time (epoch seconds) read from its JSON without decoding it, or
    None when there is none to read (the decoder then says what is wrong with the record).

    The first ``"event_time"`` key of the record counts: the top-level one for every
    c360 schema (msgspec writes it second, after ``event_id``) and for any producer that
    does not nest another ``"event_time"`` before it. About 1 us per record (measured:
    the string search is a quarter of it, ``datetime.fromisoformat`` the rest; a hand
    parse of the digits in Python was slower).
    """
    if not raw:
        return None
    i = raw.find(key)
    if i < 0:
        return None
    end = i + len(key)
    if raw[end:end + 2] == b':"':  # compact JSON
        j = end + 1
    else:
        j = raw.find(b'"', end)
        if j < 0 or raw[end:j].strip(b" \t\r\n:") != b"":
            return None
    k = raw.find(b'"', j + 1)
    if k < 0:
        return None
    try:
        t = datetime.fromisoformat(raw[j + 1:k].decode())
    except (ValueError, UnicodeDecodeError):
        return None
    if t.tzinfo is None:
        return None  # the schemas reject naive times: let the decoder say so
    return t.timestamp()


class Polled:
    """One item of a source partition: messages in emission order and its clock.

    ``times`` holds each message's event time as read by :func:`event_time_of` (NaN when
    unreadable, and for commands); ``clock`` is the partition's latest event time emitted
    *before* these messages (``-inf`` at first). ``tick``: broadcast the clock after this
    item to every shard. ``idle``: every topic partition of it is idle (its clock must not
    hold global windows back). ``final``: the bounded run's end of input.
    """

    __slots__ = ("part", "parts", "msgs", "times", "clock", "tick", "idle", "final")

    def __init__(self, part: int, parts: int, msgs: list[Message], times: list[float],
                 clock: float, tick: bool = False, idle: bool = False,
                 final: bool = False) -> None:
        self.part, self.parts, self.msgs, self.times = part, parts, msgs, times
        self.clock, self.tick, self.idle, self.final = clock, tick, idle, final

    def __len__(self) -> int:
        return len(self.msgs)

    def __iter__(self) -> Iterator[Message]:
        return iter(self.msgs)

    def end_clock(self) -> float:
        """The clock after these messages."""
        c = self.clock
        for t in self.times:
            if t > c:
                c = t
        return c


class Pacing:
    """When a source partition polls next, from the rate messages arrive at.

    :meth:`polled` is told how many messages each poll read; it answers how long to wait
    before the next one: ``wait`` when the rate says a wait that long gathers at least
    ``loaded`` messages (under load: fewer, larger polls), else 0 (quiet: poll again at
    once, so a message is not held back), and 0 after a full poll (a backlog: read on).
    The counts say what it chose, for tests and benchmarks. ``wait=0`` never waits: the
    behaviour before issue 18.
    """

    __slots__ = ("limit", "wait", "loaded", "tau", "rate", "_last",
                 "polls", "messages", "waited", "waited_messages", "full")

    def __init__(self, limit: int, wait: float | None = None, loaded: int = POLL_LOADED,
                 tau: float = RATE_TAU) -> None:
        self.limit = limit
        self.wait = POLL_WAIT if wait is None else wait
        self.loaded = loaded
        self.tau = tau
        self.rate = 0.0  # messages per second, averaged over about tau
        self._last: float | None = None
        self.polls = 0  # polls that read data
        self.messages = 0  # messages they read
        self.waited = 0  # polls followed by a wait
        self.waited_messages = 0  # messages read by the polls that followed a wait
        self.full = 0  # polls that read ``limit`` messages

    def polled(self, n: int, now: float) -> float:
        """Seconds to wait before the next poll, after one that read ``n`` data messages at
        ``now`` (monotonic seconds)."""
        last, self._last = self._last, now
        if last is not None and now > last:
            dt = now - last
            # The exponential average of the arrivals over tau, whatever the poll times.
            self.rate += (1.0 - math.exp(-dt / self.tau)) * (n / dt - self.rate)
        if not n:
            return 0.0
        self.polls += 1
        self.messages += n
        if n >= self.limit:
            self.full += 1
            return 0.0
        if self.wait > 0 and self.rate * self.wait >= self.loaded:
            self.waited += 1
            return self.wait
        return 0.0

    def per_poll(self) -> float:
        """Messages per poll that read any."""
        return self.messages / self.polls if self.polls else 0.0


class Idle:
    """When the source last read a message, and how many it emitted (handed to the
    dataflow: read and no longer held by the merge), shared by every partition of a
    process."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.messages = 0
        self._lock = threading.Lock()

    def touch(self, n: int) -> None:
        self.last = time.monotonic()

    def emitted(self, n: int) -> None:
        with self._lock:  # partitions run on several worker threads
            self.messages += n

    def seconds(self) -> float:
        return time.monotonic() - self.last


class Merge:
    """Per topic partition buffers, merged by (event time, topic index), offsets in order.

    Kept apart from the consumer so that the rule can be tested alone: :meth:`add` a
    message (``topic`` index, event time), :meth:`at_end` when its topic partition
    reported its end, :meth:`take` what may be emitted now.
    """

    def __init__(self, topics: int, idle_s: float, align_max: int) -> None:
        # (time, topic, message) per topic partition, in offset order
        self.bufs: list[deque[tuple[float, int, Any]]] = [deque() for _ in range(topics)]
        self.heads: list[tuple[float, int, Any]] = []  # the head entry of each non-empty one
        self.idle_s = idle_s
        self.align_max = align_max
        self.ended: list[float | None] = [None] * topics  # monotonic time it reported its end
        self.last_time = [NO_TIME] * topics  # its last time taken: key of unreadable ones

    def add(self, topic: int, t: float | None, msg: Any) -> None:
        buf = self.bufs[topic]
        if t is None or t != t:  # unreadable: goes out as soon as it is its topic's head
            t = buf[-1][0] if buf else self.last_time[topic]
        entry = (t, topic, msg)  # (time, topic) never ties between heads: one per topic
        if not buf:
            heapq.heappush(self.heads, entry)
        buf.append(entry)
        self.ended[topic] = None  # data again: not idle any more (rejoins the merge)

    def at_end(self, topic: int, now: float) -> None:
        # Reported after the messages it covers: what is buffered is all there was.
        if self.ended[topic] is None:
            self.ended[topic] = now

    def idle(self, topic: int, now: float, drain: bool = False) -> bool:
        """Empty and at its end for ``idle_s`` (at the end of input: at its end at all)."""
        ended = self.ended[topic]
        return ended is not None and not self.bufs[topic] and (
            drain or now - ended >= self.idle_s)

    def waiting_for(self, now: float, drain: bool = False) -> list[int]:
        """Topic partitions that hold the merge back: empty and not idle."""
        return [i for i, b in enumerate(self.bufs) if not b and not self.idle(i, now, drain)]

    def all_idle(self, now: float, drain: bool = False) -> bool:
        return all(self.idle(i, now, drain) for i in range(len(self.bufs)))

    def take(self, now: float, limit: int, drain: bool = False,
             out: list | None = None, times: list[float] | None = None
             ) -> tuple[list, list[float]]:
        """Messages that may go out now, in order, at most ``limit``. ``drain`` (end of
        input): a topic partition is waited for only until it reports its end."""
        out = [] if out is None else out
        times = [] if times is None else times
        heads, bufs = self.heads, self.bufs
        if not heads or self.waiting_for(now, drain):
            return out, times
        room = limit - len(out)
        heapreplace, heappop = heapq.heapreplace, heapq.heappop
        while heads and room > 0:
            t, i, msg = heads[0]
            buf = bufs[i]
            buf.popleft()
            out.append(msg)
            times.append(t)
            room -= 1
            if buf:
                heapreplace(heads, buf[0])
            else:
                heappop(heads)
                self.last_time[i] = t
                # Its next message may be earlier than the others' heads: wait for it,
                # unless it is idle (it reported its end long enough ago).
                if not self.idle(i, now, drain):
                    break
        return out, times

    def over(self, topic: int) -> bool:
        return len(self.bufs[topic]) > self.align_max

    def under(self, topic: int) -> bool:
        return len(self.bufs[topic]) <= self.align_max // 2


class _Partition(StatefulSourcePartition[Polled, Offsets]):
    def __init__(self, config: dict[str, Any], topics: list[str], index: int, parts: int,
                 resume: Offsets | None, batch_size: int, idle: Idle,
                 idle_timeout: float | None, stop: threading.Event | None,
                 watch: TopicWatch | None = None, *, unordered: frozenset[str] = frozenset(),
                 partition_idle: float = 0.5, align_max: int = 20_000,
                 source: KafkaBatchSource | None = None,
                 poll_wait: float | None = None,
                 time_fields: Mapping[str, str] | None = None) -> None:
        self._offsets: Offsets = dict(resume or {})
        clock_us = self._offsets.pop(CLOCK_KEY, None)
        self._clock = NO_TIME if clock_us is None else clock_us / 1e6
        self._index = index
        self._parts = parts
        self._consumer = Consumer(config)
        self._tps = [TopicPartition(t, index, self._offsets.get(t, OFFSET_BEGINNING))
                     for t in topics]
        self._consumer.assign(self._tps)
        # Keyed by what Message.topic() returns: None (some errors) is in no topic.
        self._topic_index: dict[str | None, int] = {
            t: i for i, t in enumerate(topics) if t not in unordered}
        # The JSON key of each topic's event time: "event_time" unless its stream says.
        self._time_keys = [time_key((time_fields or {}).get(t, "event_time")) for t in topics]
        self._merge = Merge(len(topics), partition_idle, align_max)
        for i, t in enumerate(topics):
            if t in unordered:  # never waited for
                self._merge.ended[i] = -math.inf
        self._paused = [False] * len(topics)
        self._batch_size = batch_size
        self.pacing = Pacing(batch_size, poll_wait)
        self._waited = False  # this poll came after a wait chosen by the pacing
        self._idle = idle
        self._idle_timeout = idle_timeout
        self._stop = stop
        self._awake: datetime | None = None
        self._last_tick = -math.inf
        self._ticked_clock: float | None = None
        self._ticked_idle = False
        self._done = False
        self._draining = False
        self._source = source
        # A consumer never fails when its topics vanish (a memory-only broker restarted):
        # the watch turns that, and a broker unreachable too long, into a BrokerError.
        self._watch = watch

    def next_batch(self) -> list[Polled]:
        if self._done or (self._stop is not None and self._stop.is_set()):
            raise StopIteration
        if self._watch is not None:
            self._watch.check()
        msgs = self._consumer.consume(self._batch_size, 0)
        now = time.monotonic()
        merge = self._merge
        first: list[Message] = []  # errors and unordered topics: out at once
        data = 0
        index = self._topic_index
        keys = self._time_keys
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == _EOF:
                    i = index.get(m.topic())
                    if i is not None:
                        merge.at_end(i, now)
                    continue
                first.append(m)
                continue
            data += 1
            i = index.get(m.topic())
            if i is None:
                first.append(m)
                continue
            merge.add(i, event_time_of(m.value(), keys[i]), m)
        if data:
            self._idle.touch(data)
            if self._waited:
                self.pacing.waited_messages += data
        wait = self.pacing.polled(data, now)
        if not data and not self._draining and self._idle_timeout is not None \
                and self._idle.seconds() >= self._idle_timeout:
            if self._watch is not None:
                self._watch.check(force=True)  # idle because the broker is gone?
            self._draining = True  # end of input: everything buffered goes out, then the end
        drain = self._draining
        out, times = merge.take(now, self._batch_size * 2, drain, first,
                                [math.nan] * len(first))
        self._align(drain)
        # The end: every topic partition reported its end and everything buffered went out.
        final = drain and not merge.heads and merge.all_idle(now, drain=True)
        item = self._item(out, times, now, final=final)
        if final:
            self._done = True
            if self._source is not None:
                self._source.clock_ended(self._clock)
        self._waited = False
        if item is None:
            self._awake = datetime.now(timezone.utc) + POLL_PAUSE
            return []
        if wait > 0:  # loaded: let the next poll gather a larger batch
            self._awake = datetime.now(timezone.utc) + timedelta(seconds=wait)
            self._waited = True
        else:
            self._awake = None
        return [item]

    def _item(self, out: list[Message], times: list[float], now: float,
              final: bool) -> Polled | None:
        clock = self._clock
        offsets = self._offsets
        end = clock
        for m, t in zip(out, times, strict=True):
            offset = m.offset()
            if offset is not None and offset >= 0:
                topic = m.topic()
                if topic is not None:
                    offsets[topic] = offset + 1
            if t > end:
                end = t
        self._clock = end
        if out:
            self._idle.emitted(len(out))
        idle = not out and self._merge.all_idle(now)
        tick = final or (now - self._last_tick >= TICK_S
                         and (end != self._ticked_clock or idle != self._ticked_idle))
        if not out and not tick:
            return None
        if tick:
            self._last_tick = now
            self._ticked_clock = end
            self._ticked_idle = idle
        return Polled(self._index, self._parts, out, times, clock, tick, idle, final)

    def _align(self, drain: bool = False) -> None:
        """Pause topic partitions buffered past the bound; resume them at half of it (and
        all of them at the end of input, whose end must be read)."""
        merge = self._merge
        for i, paused in enumerate(self._paused):
            if not paused and not drain and merge.over(i):
                self._consumer.pause([self._tps[i]])
                self._paused[i] = True
            elif paused and (drain or merge.under(i)):
                tp = self._tps[i]
                # Fetching resumes after the last message consumed (librdkafka drops what
                # it had prefetched when pausing): nothing is skipped or read twice.
                self._consumer.resume([tp])
                self._paused[i] = False

    def paused(self) -> list[str]:
        return [tp.topic for tp, p in zip(self._tps, self._paused, strict=True) if p]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Offsets:
        # Offsets of emitted messages only: what is buffered is read again after a resume.
        snap = dict(self._offsets)
        if self._clock > NO_TIME:
            snap[CLOCK_KEY] = round(self._clock * 1e6)
        return snap

    def close(self) -> None:
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[Polled, Offsets]):
    """Partition index ``p`` of all ``topics`` as one source partition, merged in event time.

    Items are :class:`Polled`. Messages that carry a consumer error are passed on too,
    for the dataflow to dead-letter. ``unordered`` topics (commands) are not merged.
    ``partition_idle``: seconds a topic partition at its end stops holding the merge
    back; ``align_max``: buffered messages per topic partition before it is paused;
    ``poll_wait``: seconds between polls under load (default :data:`POLL_WAIT`; 0: never
    wait, see :class:`Pacing`). ``time_fields``: topic -> the JSON key of its event time,
    for the topics of declared streams that do not call it ``event_time``.
    """

    def __init__(self, config: dict[str, str], topics: list[str], *,
                 idle_timeout: float | None = None, stop: threading.Event | None = None,
                 batch_size: int = 5000, unordered: list[str] | None = None,
                 partition_idle: float = 0.5, align_max: int = 20_000,
                 poll_wait: float | None = None,
                 time_fields: Mapping[str, str] | None = None) -> None:
        if isinstance(topics, str):
            raise TypeError("topics must be a list of topic names, not a string")
        self._config: dict[str, str | int | float | bool] = dict(config)
        self._topics = list(topics)
        self._batch_size = batch_size
        self._idle_timeout = idle_timeout
        self._stop = stop
        self._unordered = frozenset(unordered or ())
        self._partition_idle = partition_idle
        self._align_max = align_max
        self._poll_wait = poll_wait
        self._time_fields = dict(time_fields or {})  # topic -> its event-time field on the wire
        self._parts: int | None = None
        self.idle = Idle()
        self._lock = threading.Lock()
        self.final_clock: float | None = None  # latest event time read, once input ended

    def clock_ended(self, clock: float) -> None:
        with self._lock:
            if clock > NO_TIME and (self.final_clock is None or clock > self.final_clock):
                self.final_clock = clock

    @property
    def as_of(self) -> datetime | None:
        """The event time a bounded run's results are as of: its latest event time."""
        c = self.final_clock
        return None if c is None else datetime.fromtimestamp(c, timezone.utc)

    def list_parts(self) -> list[str]:
        if not self._config.get("bootstrap.servers"):
            Settings().require_bootstrap()  # says how to name a cluster
        admin = AdminClient(self._config)
        try:
            meta = admin.list_topics(timeout=10)
        except KafkaException as exc:
            raise BrokerError(f"cannot list Kafka topics: {exc}") from exc
        missing = [t for t in self._topics if t not in meta.topics]
        if missing:
            raise BrokerError(f"topics do not exist: {', '.join(missing)}; create them first "
                              "(c360 broker, or Pipeline.ensure_topics)")
        count = max(len(meta.topics[t].partitions) for t in self._topics)
        self._parts = count
        return [f"p{i}" for i in range(count)]

    def build_part(self, step_id: str, for_part: str, resume_state: Offsets | None) -> _Partition:
        config = {
            **self._config,
            # Offsets live in bytewax's recovery state, not in a consumer group.
            "group.id": "c360-unused",
            "enable.auto.commit": "false",
            # A partition's end (from the fetch's high watermark, right on the embedded
            # broker too) is what lets it stop holding the merge back.
            "enable.partition.eof": "true",
            "fetch.wait.max.ms": "10",
        }
        parts = self._parts if self._parts is not None else len(self.list_parts())
        return _Partition(config, self._topics, int(for_part[1:]), parts, resume_state,
                          self._batch_size, self.idle, self._idle_timeout, self._stop,
                          TopicWatch(self._config, self._topics), unordered=self._unordered,
                          partition_idle=self._partition_idle, align_max=self._align_max,
                          source=self, poll_wait=self._poll_wait,
                          time_fields=self._time_fields)
