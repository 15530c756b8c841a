"""Section 2 — peers: Quix Streams and Pathway on the same events, machine and run.

Each peer runs in its own virtual environment (pinned, created once under the bench
cache) and keeps per-key aggregates (events and money per customer or product) over the
same pre-produced topics. c360 runs twice: its full dataflow (strictly more work per
event than the peers) and, like for like, the same dataflow with the business logic off
(every stream still folded into the entity, deltas into the store). A peer that cannot be
installed or run is recorded with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.harness.common import ChildFailed, Scale, best_of, broker, run_child, worker
from benchmarks.harness.data import produce
from benchmarks.harness.progress import Progress
from benchmarks.harness.s1_python_limit import worker_args
from benchmarks.harness.venvs import PEERS, ensure_venv, installed_version, venv_for

TARGET = 1.5  # c360 >= 1.5x the best peer's events per CPU-second
SCRIPTS = {"quixstreams": "quix_aggregate.py", "pathway": "pathway_aggregate.py"}
HERE = Path(__file__).resolve().parent


def steps(scale: Scale) -> int:
    return 1 + (3 + len(SCRIPTS)) * scale.repeats


def run(scale: Scale, progress: Progress, *, peers: bool = True,
        install: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"target": TARGET, "peers": {},
                           "unit": "events per CPU-second of the processing process",
                           "work": {"c360": "full dataflow (validate, fold, business logic, "
                                            "deltas into the store)",
                                    "c360_logic_off": "the same dataflow without rules, "
                                                      "windows, segments, global analytics: "
                                                      "validate, fold, deltas into the store",
                                    "peers": "per-key event count and money sum",
                                    "bare_loop": "decode + one dict update per event"}}
    ready: dict[str, Any] = {}
    for name in SCRIPTS:
        version = PEERS[name][0]
        if not peers:
            out["peers"][name] = {"version": version, "skipped": "peers disabled (--no-peers)"}
            continue
        venv = venv_for(name)
        if not venv.ready and not install:
            out["peers"][name] = {"version": version, "skipped": f"no venv at {venv.path}; "
                                  "a full run (or --sections 2) creates it"}
            continue
        progress.note(f"s2 venv {name}")
        venv, reason = ensure_venv(name)
        if reason:
            out["peers"][name] = {"version": version, "skipped": reason}
            continue
        ready[name] = venv
        out["peers"][name] = {"version": installed_version(venv, name) or version}
    with broker() as bootstrap:
        ds = produce(bootstrap, "b2.", events=scale.events, customers=scale.customers)
        progress.step("s2 produced")
        out["dataset"] = ds.as_json()
        args = worker_args(ds)
        runs: dict[str, list[dict[str, Any]]] = {"c360": [], "c360_logic_off": [],
                                                 "bare_loop": []}
        for i in range(scale.repeats):
            runs["c360"].append(worker("c360", args))
            progress.step(f"s2 c360 {i + 1}")
            runs["c360_logic_off"].append(worker("c360", {**args, "logic_off": True}))
            progress.step(f"s2 c360 logic off {i + 1}")
            runs["bare_loop"].append(worker("bare", args))
            progress.step(f"s2 bare {i + 1}")
            for name, venv in ready.items():
                try:
                    r = run_child([str(venv.python), str(HERE / "peers" / SCRIPTS[name]),
                                   json.dumps(args)], timeout=900)
                    runs.setdefault(name, []).append(r)
                except (ChildFailed, OSError) as exc:
                    out["peers"][name]["error"] = str(exc)[-500:]
                except Exception as exc:  # a timeout: recorded, the bench goes on
                    out["peers"][name]["error"] = f"{type(exc).__name__}: {exc}"[:500]
                progress.step(f"s2 {name} {i + 1}")
    out["c360"] = best_of(runs.pop("c360"))
    out["c360_logic_off"] = best_of(runs.pop("c360_logic_off"))
    out["bare_loop"] = best_of(runs.pop("bare_loop"))
    for name, rs in runs.items():
        out["peers"][name].update(best_of(rs))
    measured = {n: p["events_per_cpu_s"] for n, p in out["peers"].items()
                if "events_per_cpu_s" in p}
    c = out["c360"]["events_per_cpu_s"]
    off = out["c360_logic_off"]["events_per_cpu_s"]
    if measured:
        best = max(measured, key=measured.__getitem__)
        out["best_peer"] = best
        out["ratio_to_best_peer"] = round(c / measured[best], 3)
        out["logic_off_ratio_to_best_peer"] = round(off / measured[best], 3)
        out["met"] = c / measured[best] >= TARGET
        out["met_logic_off"] = off / measured[best] >= TARGET
    else:
        out["ratio_to_best_peer"] = out["logic_off_ratio_to_best_peer"] = None
        out["met"] = out["met_logic_off"] = None
        out["reason"] = "no peer could be measured in this run"
    out["ratios_to_bare_loop"] = {
        n: round(v / out["bare_loop"]["events_per_cpu_s"], 3)
        for n, v in {"c360": c, "c360_logic_off": off, **measured}.items()}
    return out
