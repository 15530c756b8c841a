"""Chaos: random ``kill -9`` of the dataflow process during an Olist replay mixed with
simulator traffic; the final entities must equal an uninterrupted run's.

    python benchmarks/chaos.py --kills 20 --scale full --out chaos.json

One broker (the embedded one, or ``--bootstrap``). Two producers run at once: the Olist
replay (``small``: one customer in 16 with the products they touch; ``full``: all of it)
and the simulator. The dataflow runs as a separate process, ``python -m c360 run
--recovery-dir DIR --changes --no-sweep``, and is killed with SIGKILL ``--kills`` times at
random moments — half of them any time after the start (during start-up, the resume or
the replay: up to 1.5 times the last restart's catch-up time), half a random while after
it caught up — and restarted with the same
recovery directory.

Event time: the Olist replay's events are dated 2016-2018, the simulator's from 2018-06-01,
and both producers write to the same topic partitions at once. With the default allowed
lateness (1 h behind the partition's latest event) every Olist event read after a
simulator event in its partition would be routed to the late topic — over half of them,
a different share in every run, since it depends on how the two producers interleave.
So every run here allows ``--lateness`` seconds (default: 3 years, the Olist span), and
no event is too late. (That, not a short read, is why an earlier version's reference
run looked short: most of its Olist events were "too late".)

A replica (``c360.store.replica``) follows the entity-changes topic through every run and a
subscriber on it checks that no entity's version ever goes backwards or repeats. For each
restart it reports the seconds until the new run published its first change (the store
rebuilt from the recovery snapshot) and until it had published, for every entity, at
least the version shown at the kill ("serving current state").

Once the producers are done, an uninterrupted run over the same topics is the reference;
it stops once it has read exactly the number of records produced (never by idleness, which
a loaded machine fakes). Then the dataflow is restarted one last time with
``--until-idle``; should it stop before the replica shows every reference entity at its
reference version (idle only because the machine was slow), it is restarted again.
Both the restarted run's export and the replica must equal it entity for entity: same
version (one per applied event: none lost, none applied twice) and same fields, leaving
out ``decisions``, whose list depends on the order in which the stream topics happen to
be read (two uninterrupted runs differ there too). The relevance sweep is off in every run
for the same reason: it ages quiet customers at batch-dependent moments, so its deltas (and
the versions they count) differ between uninterrupted runs.

Exit status 0 when everything matched, 1 otherwise. The JSON result has every number.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec

from c360.config import REPO_ROOT, Settings
from c360.dev.broker import EmbeddedBroker
from c360.dev.olist import events as olist_events
from c360.dev.olist import load
from c360.dev.simulator import simulate
from c360.entity.derive import EntityHooks
from c360.model import events as ev
from c360.model.delta import Delta
from c360.model.events import Catalogue
from c360.run.pipeline import Pipeline
from c360.store.memory import EntityStore
from c360.store.replica import ChangesReplica
from c360.topics.admin import create_topics

# Fields whose value depends on the interleaving of the stream topics, not on the events.
ARRIVAL_DEPENDENT = frozenset({"decisions"})
SIM_START = datetime(2018, 6, 1, tzinfo=timezone.utc)  # within the Olist years
# Allowed lateness of every run: the Olist span (2016-09 .. 2018-10), so that no event is
# "too late" however the two producers' records interleave in a partition.
LATENESS = 3 * 365 * 86400


@dataclass(frozen=True)
class Scale:
    olist_every: int  # one Olist customer in this many (1: all)
    sim_customers: int
    sim_events: int
    produce_seconds: float  # both producers spread their events over about this long
    snapshot_interval: float


SCALES = {
    "small": Scale(olist_every=16, sim_customers=150, sim_events=6_000, produce_seconds=25,
                   snapshot_interval=0.5),
    # A snapshot pickles every shard touched in the epoch (the whole state while catching
    # up: ~60 MB at full scale, seconds of CPU); at 1 s the run did little else.
    "full": Scale(olist_every=1, sim_customers=2_000, sim_events=60_000, produce_seconds=90,
                  snapshot_interval=10.0),
}


@dataclass
class Kill:
    index: int
    mode: str  # "any time" or "after catch-up"
    alive_seconds: float  # from the spawn to the kill
    restore_seconds: float | None = None  # restart -> its first published change
    current_seconds: float | None = None  # restart -> every entity at its version at the kill
    held_entities: int = 0


@dataclass
class Result:
    scale: str
    kills: int
    seed: int
    events_produced: int = 0
    olist_events: int = 0
    olist_entities: int = 0  # distinct customers and products of the Olist part
    sim_events: int = 0
    entities: int = 0
    kill_log: list[Kill] = field(default_factory=list)
    export_equal: bool = False
    replica_equal: bool = False
    export_mismatches: list[str] = field(default_factory=list)
    replica_mismatches: list[str] = field(default_factory=list)
    lost_events: int = 0
    double_applied_events: int = 0
    missing_entities: int = 0
    version_violations: int = 0  # a subscriber saw a version go backwards or repeat
    early_idle_stops: int = 0  # last runs that went idle before catching up (restarted)
    lateness_seconds: int = 0
    replica_repaired: int = 0
    replica_dropped: int = 0
    reference_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.export_equal and self.replica_equal and self.lost_events == 0
                and self.double_applied_events == 0 and self.missing_entities == 0
                and self.version_violations == 0)


# -- traffic -----------------------------------------------------------------------------------

def olist_subset(every: int) -> list[tuple[str, str, ev.Event]]:
    """Olist events of one customer in ``every`` (stable choice), and the products they touch."""
    items = list(olist_events(load(Settings.from_env().olist_dir)))
    if every == 1:
        return items
    keep = {k for s, k, _ in items if s != "products" and zlib.crc32(k.encode()) % every == 0}
    touched: set[str] = set()
    for _, k, e in items:
        if k in keep:
            touched.update(line.product_id for line in getattr(e, "lines", ()))
            if getattr(e, "product_id", None):
                touched.add(e.product_id)
    return [(s, k, e) for s, k, e in items
            if (k in touched if s == "products" else k in keep)]


def produce(settings: Settings, items: list[tuple[str, str, ev.Event]], seconds: float) -> None:
    """Send ``items`` in order, spread evenly over about ``seconds``."""
    from kafka import KafkaProducer

    cat = Catalogue(settings.topic_prefix)
    producer = KafkaProducer(**settings.kafka_python(), linger_ms=20, batch_size=256 * 1024)
    failures: list[BaseException] = []
    began = time.monotonic()
    rate = len(items) / seconds if seconds > 0 else 0
    for n, (stream, key, event) in enumerate(items):
        if rate and n % 200 == 0:
            ahead = began + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        producer.send(cat.topic(stream), key=key.encode(),
                      value=ev.encode(event)).add_errback(failures.append)
    producer.flush()
    producer.close()
    if failures:
        raise RuntimeError(f"{len(failures)} Olist events not acknowledged: {failures[0]}")


# -- the dataflow process ----------------------------------------------------------------------

class Flow:
    """``python -m c360 run`` with recovery, as a separate process we can kill -9."""

    def __init__(self, settings: Settings, recovery: Path, log: Path, interval: float) -> None:
        self.settings = settings
        self.recovery = recovery
        self.log = log
        self.interval = interval

    def spawn(self, *extra: str) -> subprocess.Popen:
        env = {**os.environ, "C360_KAFKA_BOOTSTRAP": self.settings.bootstrap,
               "C360_TOPIC_PREFIX": self.settings.topic_prefix,
               "C360_ALLOWED_LATENESS_S": str(self.settings.allowed_lateness_s),
               "PYTHONPATH": str(REPO_ROOT)}
        cmd = [sys.executable, "-m", "c360", "run", "--recovery-dir", str(self.recovery),
               "--snapshot-interval", str(self.interval), "--changes", "--no-sweep", *extra]
        with self.log.open("ab") as out:
            out.write(f"\n--- {' '.join(cmd)}\n".encode())
            return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=REPO_ROOT)


class Watch:
    """Follows one restart on the replica: first change published, then caught up."""

    def __init__(self, replica: ChangesReplica, previous_run: str | None,
                 held: dict[str, int]) -> None:
        self.replica = replica
        self.previous_run = previous_run
        self.held = held
        self.started = time.monotonic()
        self.restore: float | None = None
        self.current: float | None = None

    def poll(self) -> bool:
        """True once caught up."""
        if self.current is not None:
            return True
        run, versions = self.replica.latest_run()
        if run is None or run == self.previous_run:
            return False
        if self.restore is None:
            self.restore = self.replica.run_seen_at[run] - self.started
        if all(versions.get(k, 0) >= v for k, v in self.held.items()):
            self.current = time.monotonic() - self.started
            return True
        return False


def drained(replica: ChangesReplica, quiet: float = 0.5, limit: float = 10.0) -> None:
    """Wait until the replica has read nothing new for ``quiet`` seconds."""
    deadline = time.monotonic() + limit
    last, since = replica.records, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if replica.records != last:
            last, since = replica.records, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


# -- comparing ---------------------------------------------------------------------------------

_JSON = msgspec.json.Encoder()


def plain(entity: dict[str, Any]) -> dict[str, Any]:
    """An entity as its JSON export reads back, less the arrival-dependent fields."""
    out = json.loads(_JSON.encode({k: v for k, v in entity.items()
                                   if k not in ARRIVAL_DEPENDENT}))
    out[f"{out['kind']}_id"] = out.pop("id")
    return out


def compare(reference: dict[str, dict], got: dict[str, dict], result: Result,
            what: str) -> list[str]:
    """Mismatch descriptions (first few); counts lost/double-applied events into result."""
    bad: list[str] = []
    for eid, ref in reference.items():
        mine = got.get(eid)
        if mine is None:
            result.missing_entities += 1
            bad.append(f"{what}: {eid} missing")
            continue
        dv = mine["version"] - ref["version"]
        if dv < 0:
            result.lost_events += -dv
        elif dv > 0:
            result.double_applied_events += dv
        if mine != ref:
            fields = sorted(k for k in ref.keys() | mine.keys() if ref.get(k) != mine.get(k))
            first = fields[0]
            bad.append(f"{what}: {eid} differs in {fields}; {first}: reference "
                       f"{str(ref.get(first))[:300]}, got {str(mine.get(first))[:300]}")
    bad.extend(f"{what}: {eid} not in the reference" for eid in got.keys() - reference.keys())
    return bad


def by_id(store: EntityStore) -> dict[str, dict]:
    return {e["id"]: plain(e) for e in store.entities(None) if e["kind"] != "global"}


def read_export(path: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            # as_of: the run's end of data (docs/event-time.md), a column of every row of a
            # bounded run's export, not a field of the entity.
            row = {k: v for k, v in row.items() if k not in ARRIVAL_DEPENDENT and k != "as_of"}
            rows[row.get("customer_id") or row.get("product_id")] = row
    return rows


# -- the run -----------------------------------------------------------------------------------

def reference_run(settings: Settings, total: int, say: Any) -> dict[str, dict]:
    """The uninterrupted run over the finished topics: every entity, as compared.

    Stopped once it has read ``total`` records, not by idleness: on a busy machine a few
    idle seconds come sooner than the end of the topics.
    """
    lateness = timedelta(seconds=settings.allowed_lateness_s)
    pipeline = Pipeline(settings, hooks=EntityHooks(sweep_per_batch=0,
                                                    allowed_lateness=lateness)).start()
    deadline = time.monotonic() + 3600
    shown = time.monotonic()
    while (pipeline.source is None or pipeline.source.idle.messages < total) \
            and pipeline.alive():
        if time.monotonic() > deadline:
            pipeline.stop(60)
            raise RuntimeError("the reference run did not read every record within an hour")
        if time.monotonic() - shown > 15:
            read = pipeline.source.idle.messages if pipeline.source is not None else 0
            say(f"reference: {read} of {total} records read")
            shown = time.monotonic()
        time.sleep(0.2)
    read = pipeline.source.idle.messages if pipeline.source is not None else 0
    pipeline.stop(600)
    if read != total:
        raise RuntimeError(f"the reference run read {read} records, {total} were produced")
    return by_id(pipeline.store)


def run(kills: int, scale_name: str, seed: int = 7, bootstrap: str | None = None,
        prefix: str | None = None, workdir: Path | None = None,
        progress: bool = True, lateness: int = LATENESS) -> Result:
    scale = SCALES[scale_name]
    rng = random.Random(seed)
    result = Result(scale=scale_name, kills=kills, seed=seed)
    began = time.monotonic()

    def say(msg: str) -> None:
        if progress:
            print(f"[{time.monotonic() - began:6.1f}s] {msg}", flush=True)

    broker = None if bootstrap else EmbeddedBroker().start()
    tmp = tempfile.TemporaryDirectory(prefix="c360-chaos-") if workdir is None else None
    work = Path(tmp.name) if tmp is not None else workdir
    assert work is not None
    work.mkdir(parents=True, exist_ok=True)
    try:
        settings = Settings(bootstrap=bootstrap or broker.bootstrap,  # type: ignore[union-attr]
                            topic_prefix=prefix or f"chaos{uuid.uuid4().hex[:6]}.",
                            partitions=2, allowed_lateness_s=lateness)
        result.lateness_seconds = lateness
        cat = Catalogue(settings.topic_prefix)
        create_topics(settings, [*cat.input_topics, cat.dlq_topic, cat.late_topic,
                                 cat.decisions_topic, cat.changes_topic])
        olist = olist_subset(scale.olist_every)
        result.olist_events, result.sim_events = len(olist), scale.sim_events
        result.olist_entities = len({k for _, k, _ in olist})
        say(f"{len(olist)} Olist events and {scale.sim_events} simulated over "
            f"~{scale.produce_seconds:.0f}s; {kills} kills")

        replica = ChangesReplica(settings).start()
        last_seen: dict[str, int] = {}

        def check(d: Delta) -> None:  # a consumer of the replica: versions only grow
            if d.version <= last_seen.get(d.entity_id, 0):
                result.version_violations += 1
            last_seen[d.entity_id] = d.version

        sub = replica.store.subscribe(check)
        errors: list[BaseException] = []

        def guarded(fn: Any, *args: Any, **kw: Any) -> threading.Thread:
            def target() -> None:
                try:
                    fn(*args, **kw)
                except BaseException as exc:
                    errors.append(exc)
            t = threading.Thread(target=target, daemon=True)
            t.start()
            return t

        producers = [
            guarded(produce, settings, olist, scale.produce_seconds),
            guarded(simulate, settings, customers=scale.sim_customers,
                    rate=scale.sim_events / scale.produce_seconds, events=scale.sim_events,
                    seed=seed, progress=False, start=SIM_START),
        ]
        flow = Flow(settings, work / "recovery", work / "dataflow.log", scale.snapshot_interval)
        watch: Watch | None = None
        for k in range(kills):
            proc = flow.spawn()
            spawned = time.monotonic()
            mode = "any time" if rng.random() < 0.5 else "after catch-up"
            # Any time: during start-up, the resume or the replay — up to 1.5 times as long
            # as the last restart took to catch up (start-up alone can take longer than a
            # fixed few seconds on a loaded machine). Otherwise once caught up.
            caught_up = [e.current_seconds for e in result.kill_log if e.current_seconds]
            upper = max(6.0, 1.5 * caught_up[-1]) if caught_up else 6.0
            kill_at = spawned + rng.uniform(0.2, upper) if mode == "any time" else None
            while True:
                if watch is not None:
                    watch.poll()
                if proc.poll() is not None:
                    raise RuntimeError(f"the dataflow exited by itself ({proc.returncode}); "
                                       f"see {flow.log}")
                now = time.monotonic()
                if kill_at is None and (watch is None or watch.current is not None
                                        or now - spawned > 120):
                    kill_at = now + rng.uniform(0.0, 2.0)
                if kill_at is not None and now >= kill_at:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            entry = Kill(k + 1, mode, round(time.monotonic() - spawned, 2))
            if watch is not None:
                prev = result.kill_log[-1]
                prev.restore_seconds = _round(watch.restore)
                prev.current_seconds = _round(watch.current)
            result.kill_log.append(entry)
            drained(replica)
            held = replica.versions()
            entry.held_entities = len(held)
            watch = Watch(replica, replica.latest_run()[0], held)
            say(f"kill {k + 1}/{kills} ({mode}) after {entry.alive_seconds:.1f}s; "
                f"replica shows {len(held)} entities, repaired so far "
                f"{replica.materializer.repaired}")
            if errors:
                raise errors[0]

        for t in producers:
            t.join()
        if errors:
            raise errors[0]
        total = len(olist) + scale.sim_events
        say(f"producers done ({total} records); reference: an uninterrupted run")
        t0 = time.monotonic()
        ref = reference_run(settings, total, say)
        result.reference_seconds = round(time.monotonic() - t0, 1)
        result.entities = len(ref)
        result.events_produced = total
        want = {k: v["version"] for k, v in ref.items()}

        export = work / "final.jsonl"
        for attempt in range(1, 6):
            say(f"last run (attempt {attempt}): stops once idle, exports its store")
            proc = flow.spawn("--until-idle", "15", "--export", str(export))
            if watch is None:
                watch = Watch(replica, replica.latest_run()[0], {})
            while proc.poll() is None:
                watch.poll()
                time.sleep(0.05)
            if proc.returncode != 0:
                raise RuntimeError(f"the last run failed ({proc.returncode}); see {flow.log}")
            watch.poll()
            drained(replica, quiet=1.0)
            versions = replica.versions()
            behind = sum(1 for k, v in want.items() if versions.get(k, 0) < v)
            if not behind:
                break
            # Idle only because the machine was too slow to feed it: resume once more (a
            # clean stop, then a resume, is one more restart to get right).
            result.early_idle_stops += 1
            say(f"the last run stopped with {behind} entities behind the reference; again")
            if result.kill_log and result.kill_log[-1].current_seconds is None:
                result.kill_log[-1].restore_seconds = _round(watch.restore)
            watch = Watch(replica, replica.latest_run()[0], {})
        if result.kill_log:
            result.kill_log[-1].restore_seconds = _round(watch.restore)
            result.kill_log[-1].current_seconds = _round(watch.current)
        drained(replica, quiet=1.0)
        sub.close()
        replica.stop()
        result.replica_repaired = replica.materializer.repaired
        result.replica_dropped = replica.materializer.dropped

        exported = read_export(export)
        # The export holds customers; products are checked on the replica.
        ref_customers = {k: v for k, v in ref.items() if "customer_id" in v}
        mism = compare(ref_customers, exported, result, "export")
        result.export_mismatches, result.export_equal = mism[:10], not mism
        mism = compare(ref, by_id(replica.store), result, "replica")
        result.replica_mismatches, result.replica_equal = mism[:10], not mism
    finally:
        if broker is not None:
            broker.stop()
        if tmp is not None:
            tmp.cleanup()
    result.total_seconds = round(time.monotonic() - began, 1)
    return result


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def summary(r: Result) -> str:
    restores = [k.restore_seconds for k in r.kill_log if k.restore_seconds is not None]
    currents = [k.current_seconds for k in r.kill_log if k.current_seconds is not None]
    lines = [
        f"chaos {r.scale}: {r.kills} kills, {r.events_produced} events "
        f"({r.olist_events} Olist + {r.sim_events} simulated), {r.entities} entities",
        f"  export equal: {r.export_equal}; replica equal: {r.replica_equal}; "
        f"lost {r.lost_events}, double-applied {r.double_applied_events}, "
        f"missing {r.missing_entities}, version went back/repeated {r.version_violations}",
        f"  replica repaired {r.replica_repaired} entities after replays, dropped "
        f"{r.replica_dropped} replayed deltas",
    ]
    if restores:
        lines.append(f"  restart -> first change: median {statistics.median(restores):.2f}s, "
                     f"max {max(restores):.2f}s")
    if currents:
        lines.append(f"  restart -> current state: median {statistics.median(currents):.2f}s, "
                     f"max {max(currents):.2f}s ({len(currents)} of {len(r.kill_log)} restarts "
                     "caught up before their next kill)")
    lines.append(f"  total {r.total_seconds:.0f}s (reference run {r.reference_seconds:.0f}s); "
                 f"last runs that went idle early and were resumed: {r.early_idle_stops}")
    for m in r.export_mismatches + r.replica_mismatches:
        lines.append(f"  MISMATCH {m}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--bootstrap", default=None, help="a running broker (default: embedded)")
    p.add_argument("--prefix", default=None, help="topic prefix (default: a fresh one)")
    p.add_argument("--workdir", default=None, help="keep the recovery dir and logs here")
    p.add_argument("--out", default=None, metavar="PATH.json")
    p.add_argument("--lateness", type=int, default=LATENESS,
                   help="allowed lateness in seconds (default: 3 years, see the docstring)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    result = run(args.kills, args.scale, args.seed, args.bootstrap, args.prefix,
                 Path(args.workdir) if args.workdir else None, progress=not args.quiet,
                 lateness=args.lateness)
    print(summary(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({**asdict(result), "ok": result.ok}, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
