"""Entity memory over a long accelerated simulation: does it stay flat after warm-up?

Runs the simulated retailer (``c360.dev.simulator.generate``) through the same shards the
dataflow uses -- folds, first logic, windows of relevance, rules, segments and the
sweep -- in event-time-accelerated mode (``--tick`` of event time per event), and
samples the size of the entity state as it goes. Kafka and bytewax are left out on
purpose: this measures what the entities hold, not the broker's or the runtime's buffers.

    .venv/bin/python benchmarks/memory.py --breakdown     # 20M events, 100k customers
    .venv/bin/python benchmarks/memory.py --events 2000000 --customers 10000 --tick 75

Warm-up is each customer's own: a customer's state grows as it meets each kind of event
for the first time (first order, first payment, a wishlist, months of spend) and as its
windows fill, until every bound of ``c360.entity.windows`` holds. The default run gives each of
100,000 customers 200 events over 4.75 years of event time (7.5 s per event), twice the
longest window (24 months of roll-ups). At 50 events per customer (5M events) most
customers are still warming up at the midpoint; docs/analytics.md has both runs.

Reports, per sample: events, event time, customers, pickled state size (bytes per
customer) and process RSS; at the end the growth of state size over the second half
(with ``--breakdown``, also per part of the state).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import pickle
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
from pympler import asizeof

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from c360.dev.simulator import generate  # noqa: E402
from c360.entity.derive import EntityHooks  # noqa: E402
from c360.entity.logic import first_logic  # noqa: E402
from c360.entity.rules import Decision  # noqa: E402
from c360.entity.shard import Routed, Shard, shard_of  # noqa: E402
from c360.run.pipeline import tune_gc  # noqa: E402

SHARDS = 16
BATCH = 2_000


def state_bytes(shards: dict[str, Shard]) -> tuple[int, int, int]:
    """Pickled size of all customer entity states, their size in memory (Python objects,
    each counted once however many entities share it) and how many customers there are."""
    total = customers = 0
    live: list = []
    for shard in shards.values():
        states = {k: v for k, v in shard.entities.items() if v.windows is not None}
        customers += len(states)
        total += len(pickle.dumps(states, protocol=pickle.HIGHEST_PROTOCOL))
        live.extend(states.values())
    return total, asizeof.asizeof(live), customers


def breakdown(shards: dict[str, Shard]) -> Counter[str]:
    """Pickled bytes per customer of each part of the state: bookkeeping and each field."""
    parts: Counter[str] = Counter()
    customers = 0
    for shard in shards.values():
        for state in shard.entities.values():
            if state.windows is None:
                continue
            customers += 1
            for name in ("windows", "seen", "orders", "cart_marks", "fired"):
                parts[name] += len(pickle.dumps(getattr(state, name), pickle.HIGHEST_PROTOCOL))
            for name, value in state.fields.items():
                parts[f"fields.{name}"] += len(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    return Counter({k: v / max(customers, 1) for k, v in parts.items()})


def print_growth(at_half: Counter[str], at_end: Counter[str]) -> None:
    print("\nper customer, pickled bytes (each part apart):\n"
          f"{'part':>28} {'at half':>9} {'at end':>9} {'growth':>8}")
    for name in sorted(at_half.keys() | at_end.keys(),
                       key=lambda k: at_half.get(k, 0) - at_end.get(k, 0))[:15]:
        print(f"{name:>28} {at_half.get(name, 0):>9.1f} {at_end.get(name, 0):>9.1f} "
              f"{at_end.get(name, 0) - at_half.get(name, 0):>+8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--tick", type=float, default=7.5, help="seconds of event time per event")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--breakdown", action="store_true",
                    help="also show which parts of the state grew over the second half")
    args = ap.parse_args()

    tune_gc()
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    # As in the dataflow (whose decoder checks the lateness): the simulator's late events
    # are at most 15 minutes late and its duplicates come within 20 events.
    hooks = EntityHooks(allowed_lateness=timedelta(hours=1))
    shards = {f"{k}{i}": Shard(hooks) for k in "cp" for i in range(SHARDS)}
    every = args.events // args.samples
    proc = psutil.Process()
    rows = []
    parts: list[Counter[str]] = []
    decisions = 0
    by_shard: dict[str, list[Routed]] = {}
    began = time.process_time()
    measuring = 0.0  # CPU spent sizing the state, left out of the rate
    source = itertools.islice(generate(args.customers, args.seed, start,
                                       tick=timedelta(seconds=args.tick)), args.events)
    print(f"{'events':>10} {'event day':>10} {'customers':>10} {'state MB':>9} "
          f"{'B/customer':>10} {'live MB':>8} {'RSS MB':>8} {'CPU s':>7}", flush=True)
    for n, (stream, key, event) in enumerate(source, 1):
        kind = "product" if stream in ("products", "inventory") else "customer"
        by_shard.setdefault(shard_of(kind, key, SHARDS), []).append(
            Routed(stream, kind, key, event, (stream, 0, n)))  # a topic per stream
        if n % BATCH == 0 or n == args.events:
            for sk, batch in by_shard.items():
                made: list[Decision] = []
                shards[sk].apply(batch, first_logic, made)
                decisions += len(made)
            by_shard = {}
        if n % every == 0:
            gc.collect()
            cpu = time.process_time() - began - measuring  # the folding alone
            measured = time.process_time()
            size, live, customers = state_bytes(shards)
            day = (event.event_time - start).days
            row = (n, day, customers, size, size / max(customers, 1),
                   proc.memory_info().rss, cpu, live)
            rows.append(row)
            if args.breakdown and n in (every * (args.samples // 2), every * args.samples):
                parts.append(breakdown(shards))
            measuring += time.process_time() - measured
            print(f"{n:>10,} {day:>10} {customers:>10,} {size / 1e6:>9.1f} "
                  f"{size / max(customers, 1):>10,.0f} {live / 1e6:>8.1f} {row[5] / 1e6:>8.0f} "
                  f"{row[6]:>7.0f}", flush=True)
    half = [r for r in rows if r[0] >= args.events // 2]
    first, last = half[0], half[-1]
    growth = (last[3] - first[3]) / first[3] * 100
    per_customer = (last[4] - first[4]) / first[4] * 100
    live_growth = (last[7] - first[7]) / first[7] * 100
    rss_growth = (last[5] - first[5]) / first[5] * 100
    print(f"\nsecond half ({first[0]:,} -> {last[0]:,} events): entity state "
          f"{first[3] / 1e6:.1f} -> {last[3] / 1e6:.1f} MB ({growth:+.1f}%), "
          f"per customer {first[4]:,.0f} -> {last[4]:,.0f} B ({per_customer:+.1f}%); "
          f"in memory {first[7] / 1e6:.1f} -> {last[7] / 1e6:.1f} MB ({live_growth:+.1f}%); "
          f"process RSS {first[5] / 1e6:,.0f} -> {last[5] / 1e6:,.0f} MB ({rss_growth:+.1f}%); "
          f"{decisions:,} decisions; {args.events / rows[-1][6]:,.0f} events per CPU-second")
    if len(parts) == 2:
        print_growth(*parts)


if __name__ == "__main__":
    main()
