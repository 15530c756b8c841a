"""Olist replayed through the real broker and the dataflow, checked against pandas.

Issue 13's acceptance as a script: replays the Olist files into a fresh embedded broker,
runs the dataflow to the end of its input with the default settings (1 h lateness, sweep
on) ``--runs`` times (workers from ``--workers``, in turn), and reports

* per run: every per-customer column of the export against ``c360.dev.olist.batch_customers``
  (as of the end of the data; how many customers differ per column) and every global
  per-minute and five-minute window against ``c360.dev.olist.batch_windows`` (expected,
  closed, missing, extra, closed twice, differing);
* across runs: whether the exports (versions included) and the decisions topic's
  records (per customer, in order) are byte-identical.

    .venv/bin/python benchmarks/event_time_oracle.py                  # 1 and 2 workers
    .venv/bin/python benchmarks/event_time_oracle.py --runs 5         # determinism, 5 runs

Exit status 0 when everything matches, 1 otherwise. The pandas side uses no c360 fold.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from c360.config import Settings  # noqa: E402
from c360.dev.broker import EmbeddedBroker  # noqa: E402
from c360.dev.olist import (  # noqa: E402
    ORACLE_COLUMNS,
    batch_customers,
    batch_windows,
    compare_customers,
    compare_windows,
    end_of_data,
    replay,
)
from c360.model.delta import Delta  # noqa: E402
from c360.model.events import Catalogue  # noqa: E402
from c360.run.pipeline import Pipeline  # noqa: E402
from c360.store.memory import EntityStore  # noqa: E402


class RecordingStore(EntityStore):
    """The store, also keeping every delta of the global entities (one per closed window)."""

    def __init__(self) -> None:
        super().__init__()
        self.global_deltas: list[Delta] = []

    def apply(self, deltas: Any) -> None:
        deltas = list(deltas)
        self.global_deltas.extend(d for d in deltas
                                  if isinstance(d, Delta) and d.kind == "global")
        super().apply(deltas)


def read_topic(settings: Settings, topic: str, timeout: float = 120.0
               ) -> list[tuple[int, int, bytes, bytes]]:
    """(partition, offset, key, value) of every record of ``topic``, in partition order.

    Read to each partition's end as the fetch responses report it (partition-EOF events):
    the embedded broker's listed end offsets are wrong (c360/dev/broker.py), those are right.
    """
    c = Consumer({**settings.librdkafka(), "group.id": f"read-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    out: list[tuple[int, int, bytes, bytes]] = []
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        ended: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(ended) < len(parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: no end reported within {timeout:.0f}s")
            for m in c.consume(10_000, timeout=1):
                if m.error() is None:
                    out.append((m.partition(), m.offset(), m.key(), m.value()))
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(m.partition())
                else:
                    raise RuntimeError(f"{topic}: {m.error()}")
    finally:
        c.close()
    return sorted(out, key=lambda r: (r[0], r[1]))


def next_offsets(records: list[tuple[int, int, bytes, bytes]]) -> dict[int, int]:
    """Per partition, the offset after the last record read."""
    out: dict[int, int] = {}
    for p, offset, _, _ in records:
        out[p] = max(out.get(p, 0), offset + 1)
    return out


def one_run(settings: Settings, workers: int, idle: float, out: Path) -> dict[str, Any]:
    decisions_topic = Catalogue(settings.topic_prefix).decisions_topic
    before = next_offsets(read_topic(settings, decisions_topic))
    store = RecordingStore()
    pipeline = Pipeline(settings, store, workers=workers, idle_timeout=idle)
    started = time.monotonic()
    pipeline.run()
    seconds = time.monotonic() - started
    store.export(out)
    decided: dict[str, list[bytes]] = defaultdict(list)
    for p, offset, key, value in read_topic(settings, decisions_topic):
        if offset >= before.get(p, 0):  # this run's
            decided[key.decode()].append(value)
    rows = {r["customer_id"]: r for r in map(msgspec.json.decode, out.read_bytes().splitlines())}
    return {"workers": workers, "seconds": seconds, "as_of": getattr(pipeline, "as_of", None),
            "export": out.read_bytes(), "rows": rows, "globals": store.global_deltas,
            "decisions": dict(decided)}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="bounded runs of the same replay")
    ap.add_argument("--workers", default="1,2",
                    help="worker counts, used in turn by the runs (default 1,2)")
    ap.add_argument("--idle", type=float, default=3.0, help="--until-idle seconds")
    ap.add_argument("--data", type=Path, default=None, help="Olist directory")
    ap.add_argument("--out", type=Path, default=Path("artifacts/event_time_oracle"),
                    help="where the exports go")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    if args.runs < 1 or not workers or min(workers) < 1:
        print("event_time_oracle: --runs and --workers must be positive", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or Settings.from_env().olist_dir

    started = time.monotonic()
    as_of = end_of_data(data)
    customers = batch_customers(as_of, data)
    windows = batch_windows(data)
    print(f"pandas oracle: {len(customers):,} customers as of {as_of.isoformat()}, "
          f"{sum(len(w) for w in windows.values()):,} windows, "
          f"{time.monotonic() - started:.1f}s", flush=True)

    ok = True
    runs: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        settings = Settings(bootstrap=broker.bootstrap, topic_prefix="oracle.", partitions=2)
        print(replay(settings, data_dir=data, progress=False), flush=True)
        for i in range(args.runs):
            w = workers[i % len(workers)]
            run = one_run(settings, w, args.idle, args.out / f"run{i + 1}-w{w}.jsonl")
            runs.append(run)
            diff = compare_customers(run["rows"], customers)
            bad = {c: len(ids) for c, ids in diff.items() if ids}
            print(f"\nrun {i + 1}: {w} worker(s), {run['seconds']:.1f}s, as of {run['as_of']}, "
                  f"export {_digest(run['export'])}, "
                  f"{sum(len(v) for v in run['decisions'].values()):,} decisions", flush=True)
            matching = [c for c in ORACLE_COLUMNS if not diff[c]]
            print(f"  customers: {len(matching)} of {len(ORACLE_COLUMNS)} columns equal pandas "
                  f"for all {len(customers):,}; "
                  f"{len(diff['(customers)'])} customers only on one side")
            for column, n in bad.items():
                print(f"  DIFFERS {column}: {n:,} customers (e.g. {diff[column][0]})")
            for entity, r in compare_windows(run["globals"], windows).items():
                wrong = r["missing"] or r["extra"] or r["twice"] or r["differing"]
                ok = ok and not wrong
                print(f"  {'DIFFERS' if wrong else 'equal  '} {entity}: {r}")
            ok = ok and not bad
    if len(runs) > 1:
        exports = {_digest(r["export"]) for r in runs}
        decisions = {_digest(msgspec.json.encode(
            {k: [v.decode() for v in vs] for k, vs in sorted(r["decisions"].items())}))
            for r in runs}
        same = len(exports) == 1 and len(decisions) == 1
        ok = ok and same
        print(f"\n{len(runs)} runs: {len(exports)} distinct export(s), {len(decisions)} distinct "
              f"decision set(s): {'byte-identical' if same else 'NOT identical'}")
        if len(exports) > 1:
            first = runs[0]["rows"]
            for r in runs[1:]:
                n = sum(1 for k, v in r["rows"].items() if first.get(k) != v)
                print(f"  run w{r['workers']}: {n:,} customers differ from run 1")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
