"""The declared fold against hand-written code: events per CPU-second, in one run.

Two comparisons, each leg run alternately ``--repeats`` times in this process, the best
run of each counting (the machines are shared; a ratio of two legs of one run is what
holds, never an absolute figure):

1. **Retail**: simulated retail events (``c360.dev.simulator``) through the shards with
   the full hooks (windows, rules, segments, first logic), folding with the hand-written
   folds as they were (``c360.entity.state.FOLDS``) and with the folds compiled from the
   declared retail model (``compile_folds(RETAIL)``), as ``Pipeline()`` does.
2. **Generic folds**: one new stream (app sessions) and six fields of different folds
   (sum, count by key, windowed count, decayed score, last N, derived), folded by the
   compiled declaration and by a hand-written fold computing the same fields the same
   way (exact integer sums, calendar-day windows, event-time decay).

    .venv/bin/python benchmarks/declared_fold.py                # 200k events each
    .venv/bin/python benchmarks/declared_fold.py --events 50000 --repeats 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from c360.dev.simulator import generate  # noqa: E402
from c360.entity.derive import EntityHooks  # noqa: E402
from c360.entity.fold import compile_folds  # noqa: E402
from c360.entity.logic import first_logic  # noqa: E402
from c360.entity.shard import Routed, Shard, shard_of  # noqa: E402
from c360.entity.state import FOLDS, EntityState  # noqa: E402
from c360.model import declare as d  # noqa: E402
from c360.model.events import Catalogue  # noqa: E402
from c360.models.retail import RETAIL  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
BATCH = 2_000
SHARDS = 16

SESSIONS = d.stream("app_sessions", {"session_id": str, "device": str, "duration_s": float},
                    key="user_id", time="ts")
APP = d.EntityModel("app", (SESSIONS,), (
    d.Field("app_time_s", "float", d.Sum("app_sessions", "duration_s"), "Time in the app"),
    d.Field("sessions_by_device", "map", d.Count("app_sessions", by="device"),
            "Sessions per device"),
    d.Field("sessions_7d", "int", d.Windowed("app_sessions", days=7), "Sessions, 7 days"),
    d.Field("engagement", "float", d.Decayed("app_sessions", half_life=timedelta(days=3)),
            "Sessions decayed, half-life 3 days"),
    d.Field("last_sessions", "list", d.LastN("app_sessions", 5, "session_id"),
            "The 5 latest sessions"),
    d.Field("minutes_in_app", "float",
            d.Derived(("app_time_s",), lambda app_time_s: round(app_time_s / 60, 2)),
            "Time in the app, in minutes"),
))


def cpu() -> float:
    return time.process_time()


def best(runs: list[float]) -> float:
    return min(runs)


# -- 1. retail ----------------------------------------------------------------------------------

def retail_batches(events: int, customers: int) -> list[dict[str, list[Routed]]]:
    cat = Catalogue()
    batches: list[dict[str, list[Routed]]] = []
    batch: dict[str, list[Routed]] = {}
    for n, (name, _key, event) in enumerate(itertools.islice(
            generate(customers, 11, START), events)):
        stream = cat.by_name[name]
        entity_id = getattr(event, stream.key_field)
        key = shard_of(stream.entity_kind, entity_id, SHARDS)
        batch.setdefault(key, []).append(Routed(name, stream.entity_kind, entity_id, event,
                                                ("", 0, n)))
        if not (n + 1) % BATCH:
            batches.append(batch)
            batch = {}
    if batch:
        batches.append(batch)
    return batches


def fold_retail(batches: list[dict[str, list[Routed]]], folds: Any) -> tuple[float, int]:
    hooks = EntityHooks(allowed_lateness=timedelta(hours=1), folds=folds)
    shards: dict[str, Shard] = {}
    deltas = 0
    t0 = cpu()
    for batch in batches:
        for key, items in batch.items():
            shard = shards.get(key)
            if shard is None:
                shard = shards[key] = Shard(hooks, timedelta(hours=1))
            out, _ = shard.apply(items, first_logic)
            deltas += len(out)
    return cpu() - t0, deltas


# -- 2. generic folds -------------------------------------------------------------------------

def session_events(events: int, customers: int) -> list[Any]:
    schema = SESSIONS.schema
    out = []
    for n in range(events):
        c = (n * 7919) % customers
        out.append(schema(event_id=f"s{n}", event_time=START + timedelta(seconds=n * 37),
                          customer_id=f"u{c}", session_id=f"sess-{n}",
                          device=("ios", "android", "web")[n % 3], duration_s=30.0 + n % 600))
    return out


def hand_sessions(s: EntityState, e: Any) -> dict[str, Any]:
    """The six fields by hand, computed as the declared folds compute them."""
    aux = s.aux
    if aux is None:
        aux = s.aux = {"t": 0, "days": {}, "dec": None, "marks": [], "now": 0.0}
    f = s.fields
    ch: dict[str, Any] = {}
    aux["t"] += round(e.duration_s * 1_000_000)
    ch["app_time_s"] = aux["t"] / 1_000_000
    per = dict(f.get("sessions_by_device") or {})
    per[e.device] = per.get(e.device, 0) + 1
    ch["sessions_by_device"] = dict(sorted(per.items()))
    ts = e.event_time.timestamp()
    days = aux["days"]
    day = int(ts // 86_400)
    days[day] = days.get(day, 0) + 1
    aux["now"] = now = max(aux["now"], ts)
    today = int(now // 86_400)
    for k in [k for k in days if k <= today - 7]:
        del days[k]
    n7 = sum(days.values())
    if f.get("sessions_7d") != n7:
        ch["sessions_7d"] = n7
    hl = 3 * 86_400.0
    span = 256 * hl
    anchor = (now // span) * span
    dec = aux["dec"]
    if dec is None:
        dec = aux["dec"] = [anchor, 0.0]
    dec[1] += 2.0 ** ((ts - dec[0]) / hl)
    score = round(dec[1] * 2.0 ** ((dec[0] - now) / hl), 6)
    if f.get("engagement") != score:
        ch["engagement"] = score
    marks, items = aux["marks"], f.get("last_sessions") or []
    mark = [ts, e.event_id]
    i = 0
    while i < len(marks) and marks[i] >= mark:
        i += 1
    if i < 5:
        aux["marks"] = [*marks[:i], mark, *marks[i:]][:5]
        ch["last_sessions"] = [*items[:i], e.session_id, *items[i:]][:5]
    minutes = round(ch["app_time_s"] / 60, 2)
    if f.get("minutes_in_app") != minutes:
        ch["minutes_in_app"] = minutes
    return ch


def fold_sessions(events: Iterable[Any], fold: Callable[[EntityState, Any], Any]
                  ) -> tuple[float, dict[str, dict[str, Any]]]:
    states: dict[str, EntityState] = {}
    t0 = cpu()
    for e in events:
        s = states.get(e.customer_id)
        if s is None:
            s = states[e.customer_id] = EntityState()
        ch = fold(s, e)
        if ch:
            s.fields.update(ch)
    return cpu() - t0, {k: s.fields for k, s in states.items()}


def retail_ab(events: int, customers: int, repeats: int) -> dict[str, Any]:
    """Comparison 1: the hand-written retail folds against the declared retail model's."""
    declared = compile_folds(RETAIL)
    same = sorted(k for k in FOLDS if declared.get(k) is FOLDS[k])
    batches = retail_batches(events, customers)
    hand_runs, declared_runs = [], []
    n_hand = n_declared = 0
    for _ in range(repeats):
        t, n_hand = fold_retail(batches, FOLDS)
        hand_runs.append(t)
        t, n_declared = fold_retail(batches, declared)
        declared_runs.append(t)
    if n_hand != n_declared:
        raise AssertionError(f"the folds disagree: {n_hand} deltas by hand, {n_declared} declared")
    return {"events": events, "deltas": n_hand,
            "hand_events_per_cpu_s": round(events / best(hand_runs)),
            "declared_events_per_cpu_s": round(events / best(declared_runs)),
            "ratio": round(best(hand_runs) / best(declared_runs), 3),
            "streams_folded_by_their_hand_written_function": len(same)}


def generic_ab(events: int, customers: int, repeats: int) -> dict[str, Any]:
    """Comparison 2: six declared fields of a new stream against the same by hand."""
    folds = compile_folds(APP)
    data = session_events(events, customers)
    g_hand, g_declared = [], []
    by_hand: dict[str, dict[str, Any]] = {}
    by_model: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        t, by_hand = fold_sessions(data, hand_sessions)
        g_hand.append(t)
        t, by_model = fold_sessions(data, folds["app_sessions"])
        g_declared.append(t)
    if by_hand != by_model:
        raise AssertionError("the hand-written fold and the declared one disagree")
    return {"events": events, "fields": len(APP.fields),
            "hand_events_per_cpu_s": round(events / best(g_hand)),
            "declared_events_per_cpu_s": round(events / best(g_declared)),
            "ratio": round(best(g_hand) / best(g_declared), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--customers", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    result = {"retail": retail_ab(args.events, args.customers, args.repeats),
              "generic": generic_ab(args.events, args.customers, args.repeats),
              "repeats": args.repeats}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
