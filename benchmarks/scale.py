"""Scale: memory, snapshots, recovery's cost, restart and replica start per customer count
(issue 17, item 4).

    .venv/bin/python benchmarks/scale.py --customers 100000,300000 --out scale.json

For each customer count N, on one broker (the embedded one, or ``--bootstrap``), with the
retail model and the simulator's mix of events (``benchmarks.harness.data.produce``: N x
``--events-per-customer`` events, 2 partitions per topic, each partition ended by a sentinel):

1. **off**: the dataflow in a child process (``Pipeline``, changes published to a topic of
   its own), no recovery, until it has read every record produced. Its RSS before the start
   and once caught up, divided by the customers folded; events per wall- and per CPU-second
   of that process; the pickled size of its store's entities.
2. **on**: the same with bytewax recovery (a fresh recovery directory, ``--snapshot-interval``
   10 s) and the usual changes topic. The same figures; the ratio on/off of its throughput
   (both measured in this invocation); the snapshots read from the recovery partitions'
   ``snaps`` table (sampled every second while it runs, each epoch's rows and bytes kept at
   their largest) and the partition files' growth; the extra CPU of the run per snapshot.
3. **replica from offset 0**: ``replica_from_kafka`` (no checkpoint yet) until it shows every
   entity of the primary at the primary's version; then ``ChangesReplica.checkpoint()`` (its
   time and bytes); then a second ``replica_from_kafka``, which starts from that checkpoint,
   until it equals the primary too. Records read by each.
4. **restart**: the "on" child is killed (SIGKILL) and started again with the same recovery
   directory; the seconds from the relaunch to its first change on the changes topic and to
   every entity at least at its version at the kill (``chaos.Watch`` on the first replica).

The relevance sweep is off in every run (as in chaos.py: it ages quiet customers at
batch-dependent moments, and an idle primary must stay put while replicas catch up).
Runs end by record count, never by idleness, and nothing is a threshold: the JSON holds
what was measured. Progress goes to stderr; the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.chaos import Watch  # noqa: E402
from benchmarks.harness import data  # noqa: E402
from c360.config import REPO_ROOT, Settings  # noqa: E402
from c360.dev.broker import EmbeddedBroker  # noqa: E402
from c360.model.events import Catalogue  # noqa: E402
from c360.store.replica import ChangesReplica, replica_from_kafka  # noqa: E402

PARTITIONS = 2
Say = Callable[[str], None]


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


# -- the child: one dataflow process -------------------------------------------------------

def child(spec: dict[str, Any]) -> None:
    """Run the dataflow until it has read ``total`` records; write what it measured.

    Modes: ``off`` and ``on`` stop (off) or wait to be killed (on) once caught up;
    ``resume`` runs until killed (the parent watches the changes topic)."""
    from c360.entity.derive import EntityHooks
    from c360.run.pipeline import Pipeline

    settings = Settings(bootstrap=spec["bootstrap"], topic_prefix=spec["prefix"],
                        partitions=PARTITIONS)
    hooks = EntityHooks(sweep_per_batch=0,
                        allowed_lateness=timedelta(seconds=settings.allowed_lateness_s))
    proc = psutil.Process()
    pipeline = Pipeline(settings, hooks=hooks, recovery_dir=spec.get("recovery_dir"),
                        snapshot_interval=spec["interval"], changes_topic=spec["changes_topic"])
    mode, total = spec["mode"], spec["total"]
    gc.collect()
    rss_before = proc.memory_info().rss
    # From the process's start to the dataflow's: interpreter, imports, topics checked.
    Path(spec["result_file"] + ".startup").write_text(
        f"{time.time() - proc.create_time():.3f}")
    cpu0, t0 = cpu_seconds(proc), time.monotonic()
    pipeline.start()
    if mode == "resume":
        while pipeline.alive():
            time.sleep(0.5)
        pipeline.stop(5)  # raises the dataflow's error, if any
        return
    shown = t0
    store = pipeline.store
    sentinels = spec["sentinels"]
    # Caught up: every record read and every partition's sentinel (the latest event time of
    # all, so the event-time merge emits it last) folded into the store. A snapshot can stall
    # the fold for many seconds after the last read: reading alone is not caught up.
    while (pipeline.source is None or pipeline.source.idle.messages < total
           or not all(s in store for s in sentinels)):
        if not pipeline.alive():
            pipeline.stop(5)
            raise RuntimeError("the dataflow stopped before reading every record")
        if time.monotonic() - shown > 10:
            shown = time.monotonic()
            read = pipeline.source.idle.messages if pipeline.source is not None else 0
            print(f"  [{mode}] {read:,} of {total:,} records read "
                  f"({shown - t0:.0f}s)", file=sys.stderr, flush=True)
        time.sleep(0.05)
    wall, cpu = time.monotonic() - t0, cpu_seconds(proc) - cpu0
    read = pipeline.source.idle.messages
    while time.time() - store.updated_at < 1.0:  # the rest of the sentinels' batches
        time.sleep(0.1)
    gc.collect()
    rss_after = proc.memory_info().rss
    versions = {e["id"]: e["version"] for e in store.entities(None) if e["kind"] != "global"}
    customers = sum(1 for e in store.ids("customer") if not e.startswith(data.SENTINEL_PREFIX))
    result: dict[str, Any] = {
        "records_read": read, "wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
        "rss_before_bytes": rss_before, "rss_after_bytes": rss_after,
        "customers": customers, "products": store.count("product"),
        "entities": len(versions), "events_applied": sum(store.stream_counts().values()),
    }
    if spec.get("pickle"):
        size = 0
        chunk: list[dict[str, Any]] = []
        for e in store.entities("customer"):
            chunk.append(e)
            if len(chunk) == 1000:
                size += len(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
                chunk = []
        size += len(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
        result["pickled_customer_bytes"] = size
    Path(spec["versions_file"]).write_text(json.dumps(versions))
    tmp = Path(spec["result_file"] + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(spec["result_file"])  # whole, or not there
    if mode == "on":  # caught up: keep the state (and snapshotting) until killed
        while pipeline.alive():
            time.sleep(0.5)
        pipeline.stop(5)
    else:
        pipeline.stop(600)


class Child:
    def __init__(self, spec: dict[str, Any], log: Path) -> None:
        self.spec = spec
        self.result_file = Path(spec["result_file"])
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with log.open("ab") as out:
            # Progress lines (stderr) pass through to ours; its stdout goes to the log.
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                env=env, cwd=REPO_ROOT, stdout=out, stderr=None)
        self.started = time.monotonic()

    def result(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.result_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.spec['mode']} dataflow exited "
                                   f"({self.proc.returncode}) before catching up")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the {self.spec['mode']} dataflow did not catch up "
                                   f"within {timeout:.0f}s")
            time.sleep(0.1)
        out: dict[str, Any] = json.loads(self.result_file.read_text())
        out["versions"] = json.loads(Path(self.spec["versions_file"]).read_text())
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


# -- snapshots: the recovery partitions ----------------------------------------------------

class SnapshotSampler:
    """Samples the recovery partitions once a second: each epoch's ``snaps`` rows and bytes
    (kept at their largest: bytewax deletes a snapshot once a later one supersedes it) and
    the files' total size. Read-only connections; SQLite lets a reader and the writer be."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # (file, epoch, step) -> rows, bytes
        self.epochs: dict[tuple[str, int, str], tuple[int, int]] = {}
        self.first_seen: dict[int, float] = {}  # epoch -> when first seen (monotonic)
        self.size_start = self.files_size()
        self.size_max = self.size_start
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="snap-sampler")

    def files_size(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("part-*.sqlite3*")
                   if p.is_file()) if self.directory.exists() else 0

    def sample(self) -> None:
        self.size_max = max(self.size_max, self.files_size())
        for part in sorted(self.directory.glob("part-*.sqlite3")):
            try:
                db = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=0.2)
                try:
                    rows = db.execute("SELECT snap_epoch, step_id, COUNT(*), "
                                      "SUM(LENGTH(ser_change)) FROM snaps "
                                      "GROUP BY snap_epoch, step_id").fetchall()
                finally:
                    db.close()
            except sqlite3.Error:
                self.errors += 1  # locked, or not set up yet: the next sample
                continue
            now = time.monotonic()
            for epoch, step, count, size in rows:
                key = (part.name, epoch, step)
                old = self.epochs.get(key, (0, 0))
                self.epochs[key] = (max(old[0], count), max(old[1], size or 0))
                self.first_seen.setdefault(epoch, now)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    def start(self) -> SnapshotSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def summary(self, customers: int) -> dict[str, Any]:
        per_epoch: dict[int, list[int]] = {}
        state_epochs: set[int] = set()
        for (_, epoch, step), (rows, size) in self.epochs.items():
            acc = per_epoch.setdefault(epoch, [0, 0])
            acc[0] += rows
            acc[1] += size
            if not step.endswith("kafka_in"):
                state_epochs.add(epoch)
        # An epoch in which no shard changed (idle, after catching up) writes only the
        # sources' offsets (a few hundred bytes): a snapshot is an epoch that wrote state.
        snaps = [v for e, v in sorted(per_epoch.items()) if e in state_epochs]
        sizes = [s for _, s in snaps]
        seen = sorted(self.first_seen.values())
        gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
        latest = self.latest_state_bytes()
        return {
            "snapshots": len(snaps),
            "offsets_only_epochs": len(per_epoch) - len(snaps),
            "snapshot_bytes_total": sum(sizes),
            "snapshot_bytes_mean": round(sum(sizes) / len(sizes)) if sizes else 0,
            "snapshot_bytes_max": max(sizes, default=0),
            "snapshot_rows_mean": round(sum(r for r, _ in snaps) / len(snaps)) if snaps else 0,
            "seconds_between_snapshots_median": round(sorted(gaps)[len(gaps) // 2], 2)
            if gaps else None,
            "recovery_files_growth_bytes": self.size_max - self.size_start,
            "recovery_files_growth_per_snapshot_bytes":
                round((self.size_max - self.size_start) / len(snaps)) if snaps else 0,
            "latest_state_bytes": latest,
            # Every shard's newest snapshot (customers, products, global windows) per customer.
            "latest_state_bytes_per_customer": round(latest / customers, 1) if customers else 0,
            "sampler_errors": self.errors,
        }

    def latest_state_bytes(self) -> int:
        """The bytes of every key's newest snapshot: the whole state as bytewax holds it."""
        total = 0
        for part in sorted(self.directory.glob("part-*.sqlite3")):
            with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
                total += db.execute(
                    "SELECT COALESCE(SUM(LENGTH(s.ser_change)), 0) FROM snaps s JOIN "
                    "(SELECT step_id, state_key, MAX(snap_epoch) AS e FROM snaps "
                    "GROUP BY step_id, state_key) m ON s.step_id = m.step_id AND "
                    "s.state_key = m.state_key AND s.snap_epoch = m.e").fetchone()[0]
        return int(total)


# -- replicas ------------------------------------------------------------------------------

def until_equal(replica: ChangesReplica, primary: dict[str, int], timeout: float) -> bool:
    """Wait until the replica shows every entity of the primary at its version, and no other
    (global windows aside)."""
    deadline = time.monotonic() + timeout
    read, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        shown = replica.versions()
        if (all(shown.get(k) == v for k, v in primary.items())
                and sum(1 for k in shown if not k.startswith("global:")) == len(primary)):
            return True
        if replica.error is not None:
            replica.stop()  # raises it
        if replica.records != read:
            read, since = replica.records, time.monotonic()
        elif time.monotonic() - since > 120:  # read nothing for 2 min and still not equal
            return False
        time.sleep(0.25)
    return False


def replica_leg(settings: Settings, primary: dict[str, int], timeout: float,
                proc: psutil.Process) -> tuple[ChangesReplica, dict[str, Any]]:
    cpu0, t0 = cpu_seconds(proc), time.monotonic()
    replica = replica_from_kafka(settings)
    equal = until_equal(replica, primary, timeout)
    seconds, cpu = time.monotonic() - t0, cpu_seconds(proc) - cpu0
    return replica, {
        "from_checkpoint": replica.started_from is not None,
        "equal": equal, "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),  # of this process: the replica's thread and the check
        "change_records_read": replica.records,
        "checkpoint_records_read": replica.checkpoint_records,
    }


# -- one customer count --------------------------------------------------------------------

def one(n: int, per_customer: int, bootstrap: str, work: Path, interval: float,
        timeout: float, say: Say) -> dict[str, Any]:
    prefix = f"scale{n}-{uuid.uuid4().hex[:6]}."
    settings = Settings(bootstrap=bootstrap, topic_prefix=prefix, partitions=PARTITIONS)
    cat = Catalogue(prefix)
    events = n * per_customer
    sent = [0]
    step = max(events // 10, 4096)

    def progress(k: int) -> None:
        before, sent[0] = sent[0], sent[0] + k
        if sent[0] // step != before // step:
            say(f"N={n:,}: produced {sent[0]:,} of {events:,} events")

    ds = data.produce(bootstrap, prefix, events=events, customers=n, partitions=PARTITIONS,
                      progress=progress)
    total = ds.events + ds.sentinels
    sentinels = [f"{data.SENTINEL_PREFIX}{t}.{p}" for t in ds.topics for p in range(PARTITIONS)]
    say(f"N={n:,}: {total:,} records produced in {ds.produce_seconds:.0f}s")
    row: dict[str, Any] = {"customers_configured": n, "events_per_customer": per_customer,
                           "events": ds.events, "records": total,
                           "produce_seconds": round(ds.produce_seconds, 2)}
    d = work / f"n{n}"
    d.mkdir(parents=True, exist_ok=True)
    log = d / "dataflow.log"

    def spec(mode: str, **extra: Any) -> dict[str, Any]:
        return {"mode": mode, "bootstrap": bootstrap, "prefix": prefix, "total": total,
                "sentinels": sentinels,
                "interval": interval, "result_file": str(d / f"{mode}.json"),
                "versions_file": str(d / f"{mode}.versions.json"), **extra}

    legs: dict[str, dict[str, Any]] = {}
    say(f"N={n:,}: leg off (no recovery)")
    off = Child(spec("off", changes_topic=prefix + "changes.off", pickle=True), log)
    legs["off"] = off.result(timeout)
    off.proc.wait(600)

    say(f"N={n:,}: leg on (recovery, {interval:g}s snapshots)")
    recovery = d / "recovery"
    sampler = SnapshotSampler(recovery).start()
    on = Child(spec("on", changes_topic=cat.changes_topic, recovery_dir=str(recovery)), log)
    legs["on"] = on.result(timeout)
    caught_up_at = time.monotonic()

    for name, leg in legs.items():
        c = max(leg["customers"], 1)
        leg["rss_growth_bytes"] = leg["rss_after_bytes"] - leg["rss_before_bytes"]
        leg["rss_growth_per_customer_bytes"] = round(leg["rss_growth_bytes"] / c, 1)
        leg["events_per_wall_second"] = round(leg["records_read"] / leg["wall_seconds"], 1)
        leg["events_per_cpu_second"] = round(leg["records_read"] / leg["cpu_seconds"], 1)
        if "pickled_customer_bytes" in leg:
            leg["pickled_bytes_per_customer"] = round(leg["pickled_customer_bytes"] / c, 1)
        say(f"N={n:,} {name}: {leg['customers']:,} customers, RSS +"
            f"{leg['rss_growth_per_customer_bytes']:,.0f} B/customer, "
            f"{leg['events_per_cpu_second']:,.0f} events/CPU-s")
    primary = legs["on"].pop("versions")
    legs["off"].pop("versions")
    row["off"], row["on"] = legs["off"], legs["on"]
    row["recovery_ratio"] = {
        "events_per_wall_second": round(legs["on"]["events_per_wall_second"]
                                        / legs["off"]["events_per_wall_second"], 3),
        "events_per_cpu_second": round(legs["on"]["events_per_cpu_second"]
                                       / legs["off"]["events_per_cpu_second"], 3),
    }

    me = psutil.Process()
    say(f"N={n:,}: replica from offset 0 ({len(primary):,} entities)")
    first, row["replica_offset0"] = replica_leg(settings, primary, timeout, me)
    say(f"N={n:,}: replica from 0 equal={row['replica_offset0']['equal']} in "
        f"{row['replica_offset0']['seconds']:.1f}s; checkpoint")
    t0 = time.monotonic()
    trailer = first.checkpoint()
    row["checkpoint"] = {"seconds": round(time.monotonic() - t0, 3),
                         "bytes": first.checkpoint_bytes, "entities": trailer.count,
                         "bytes_per_entity": round(first.checkpoint_bytes
                                                   / max(trailer.count, 1), 1)}
    second, row["replica_checkpoint"] = replica_leg(settings, primary, timeout, me)
    second.stop()
    del second
    say(f"N={n:,}: replica from checkpoint equal={row['replica_checkpoint']['equal']} in "
        f"{row['replica_checkpoint']['seconds']:.1f}s")

    # kill -9 the caught-up dataflow, then relaunch it on the same recovery directory.
    since = time.monotonic() - caught_up_at
    on.kill()
    sampler.stop()
    row["snapshots"] = {"interval_seconds": interval,
                        **sampler.summary(legs["on"]["customers"])}
    extra_cpu = legs["on"]["cpu_seconds"] - legs["off"]["cpu_seconds"]
    snaps = row["snapshots"]["snapshots"]
    # Recovery's extra CPU over the same records, per snapshot taken while catching up.
    row["snapshots"]["extra_cpu_seconds_per_snapshot"] = (
        round(extra_cpu / snaps, 3) if snaps else None)
    say(f"N={n:,}: killed (-9) {since:.0f}s after it caught up; relaunch")
    watch = Watch(first, first.latest_run()[0], primary)
    resumed = Child(spec("resume", changes_topic=cat.changes_topic,
                         recovery_dir=str(recovery)), log)
    deadline = time.monotonic() + timeout
    while not watch.poll() and time.monotonic() < deadline:
        if resumed.proc.poll() is not None:
            raise RuntimeError(f"the resumed dataflow exited ({resumed.proc.returncode})")
        time.sleep(0.1)
    resumed.kill()
    first.stop()
    startup = Path(resumed.spec["result_file"] + ".startup")
    row["restart"] = {"killed_seconds_after_caught_up": round(since, 2),
                      "process_start_to_dataflow_start_seconds":
                          float(startup.read_text()) if startup.exists() else None,
                      "first_change_seconds": _round(watch.restore),
                      "current_state_seconds": _round(watch.current),
                      "caught_up": watch.current is not None}
    say(f"N={n:,}: restart -> current state in {row['restart']['current_state_seconds']}s")
    return row


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# -- output --------------------------------------------------------------------------------

def table(rows: list[dict[str, Any]]) -> str:
    head = ("| customers | events | RSS B/customer (off / on) | pickled B/customer | "
            "snapshot state B/customer | snapshots | MB / snapshot | CPU s / snapshot | "
            "events/CPU-s off | on/off (CPU) | on/off (wall) | restart → current s | "
            "replica from 0: s, records | checkpoint MB, s | replica from checkpoint: s, "
            "records |")
    lines = [head, "|" + "---:|" * head.count(" | ") + "---:|"]
    for r in rows:
        off, on, s = r["off"], r["on"], r["snapshots"]
        r0, rc = r["replica_offset0"], r["replica_checkpoint"]
        lines.append(
            f"| {on['customers']:,} | {r['events']:,} | "
            f"{off['rss_growth_per_customer_bytes']:,.0f} / "
            f"{on['rss_growth_per_customer_bytes']:,.0f} | "
            f"{off.get('pickled_bytes_per_customer', 0):,.0f} | "
            f"{s['latest_state_bytes_per_customer']:,.0f} | {s['snapshots']} | "
            f"{s['snapshot_bytes_mean'] / 1e6:.1f} | "
            f"{s['extra_cpu_seconds_per_snapshot']} | "
            f"{off['events_per_cpu_second']:,.0f} | "
            f"{r['recovery_ratio']['events_per_cpu_second']} | "
            f"{r['recovery_ratio']['events_per_wall_second']} | "
            f"{r['restart']['current_state_seconds']} | "
            f"{r0['seconds']}, {r0['change_records_read'] + r0['checkpoint_records_read']:,} | "
            f"{r['checkpoint']['bytes'] / 1e6:.1f}, {r['checkpoint']['seconds']} | "
            f"{rc['seconds']}, {rc['change_records_read'] + rc['checkpoint_records_read']:,} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Four panels against the customer count: bytes per customer, snapshot cost, recovery's
    throughput ratio, seconds to current state (restart, replicas)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["on"]["customers"] for r in rows]
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
    ax[0].plot(n, [r["off"]["rss_growth_per_customer_bytes"] for r in rows], "o-",
               label="RSS growth, recovery off")
    ax[0].plot(n, [r["on"]["rss_growth_per_customer_bytes"] for r in rows], "o-",
               label="RSS growth, recovery on")
    ax[0].plot(n, [r["snapshots"]["latest_state_bytes_per_customer"] for r in rows], "o-",
               label="snapshot state (codec)")
    ax[0].plot(n, [r["off"]["pickled_bytes_per_customer"] for r in rows], "o-",
               label="store entity, pickled")
    ax[0].axhline(2048, color="grey", ls="--", label="target 2 KB")
    ax[0].set_title("bytes per customer")
    ax[1].plot(n, [r["snapshots"]["snapshot_bytes_mean"] / 1e6 for r in rows], "o-",
               label="MB per snapshot")
    ax[1].plot(n, [r["snapshots"]["extra_cpu_seconds_per_snapshot"] for r in rows], "o-",
               label="extra CPU s per snapshot")
    ax[1].set_title(f"snapshots ({rows[0]['snapshots']['interval_seconds']:g} s interval)")
    ax[2].plot(n, [r["recovery_ratio"]["events_per_cpu_second"] for r in rows], "o-",
               label="events per CPU-s")
    ax[2].plot(n, [r["recovery_ratio"]["events_per_wall_second"] for r in rows], "o-",
               label="events per wall-s")
    ax[2].set_ylim(0, 1.1)
    ax[2].set_title("throughput, recovery on / off")
    ax[3].plot(n, [r["restart"]["current_state_seconds"] for r in rows], "o-",
               label="restart after kill -9")
    ax[3].plot(n, [r["replica_offset0"]["seconds"] for r in rows], "o-",
               label="replica from offset 0")
    ax[3].plot(n, [r["replica_checkpoint"]["seconds"] for r in rows], "o-",
               label="replica from checkpoint")
    ax[3].set_title("seconds to current state")
    for a in ax:
        a.set_xlabel("customers")
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def machine() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {"cpus": psutil.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
            "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)]}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", default="100000,300000,1000000",
                   help="comma-separated customer counts (default: %(default)s)")
    p.add_argument("--events-per-customer", type=int, default=10)
    p.add_argument("--snapshot-interval", type=float, default=10.0)
    p.add_argument("--bootstrap", default=None, help="a running broker (default: embedded)")
    p.add_argument("--workdir", default=None, help="keep recovery dirs and logs here")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds any one wait may take before the run is abandoned")
    p.add_argument("--out", default=None, metavar="PATH.json")
    p.add_argument("--plot", default=None, metavar="PATH.png",
                   help="also plot the rows (with --from: of an earlier result)")
    p.add_argument("--from", dest="from_json", default=None, metavar="PATH.json",
                   help="measure nothing: print the table (and --plot) of these results")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return 0
    if args.from_json is not None:
        rows = [row for f in args.from_json.split(",")
                for row in json.loads(Path(f).read_text())["rows"]]
        rows.sort(key=lambda r: r["customers_configured"])
        print(table(rows), flush=True)
        if args.plot:
            plot(rows, Path(args.plot))
        return 0
    counts = [int(x.replace("_", "")) for x in args.customers.split(",") if x.strip()]
    began = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - began:7.1f}s] {msg}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "commit": commit(), "machine_before": machine(),
                              "snapshot_interval_seconds": args.snapshot_interval,
                              "events_per_customer": args.events_per_customer, "rows": []}
    broker = None if args.bootstrap else EmbeddedBroker().start()
    tmp = tempfile.TemporaryDirectory(prefix="c360-scale-") if args.workdir is None else None
    work = Path(tmp.name if tmp is not None else args.workdir)
    try:
        bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        for n in counts:
            result["rows"].append(one(n, args.events_per_customer, bootstrap, work,
                                      args.snapshot_interval, args.timeout, say))
            if args.out:  # each row as soon as it is measured
                Path(args.out).write_text(json.dumps(result, indent=2))
    finally:
        if broker is not None:
            broker.stop()
        if tmp is not None:
            tmp.cleanup()
    result["machine_after"] = machine()
    result["seconds"] = round(time.monotonic() - began, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(table(result["rows"]), flush=True)
    if args.plot:
        plot(result["rows"], Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
