"""Where the pipeline's time goes: py-spy over the section-1 c360 worker.

    python -m benchmarks.harness.profile [--events 300000] [--customers 100000] [--rate 200]
                                 [--top 25] [--out profile.json]

Produces the section-1 dataset on a fresh embedded broker, runs the c360 worker (the full
dataflow until the last sentinel) under ``py-spy record`` (collapsed stacks, idle samples
left out), and prints a markdown table of the functions with the most samples: inclusive
(the function is anywhere on the stack) and self (it is the innermost frame), over the
dataflow's threads (the main thread's imports, setup and waiting are left out). Only
Python frames are sampled: native time (bytewax's runtime, librdkafka) shows as the
Python frame that called into it, e.g. the thread's ``cluster_main`` call.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness.common import broker
from benchmarks.harness.data import produce
from benchmarks.harness.s1_python_limit import worker_args

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    """The py-spy executable next to this interpreter (the ``bench`` extra), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    return found


REPO = str(Path(__file__).resolve().parents[2]) + "/"


def _where(frame: str) -> str:
    """``func (path:line)`` -> ``func (short/path.py)``: one row per function, not per line."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    path = m["file"]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith(REPO):
        path = path[len(REPO):]
    return f"{m['func']} ({path})"


def summarize(collapsed: str, top: int) -> dict[str, Any]:
    """Inclusive and self sample shares per function from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_where(f) for f in stack.split(";")]
        if frames[0].startswith("_run_module_as_main"):
            continue  # the main thread: imports, setup, waiting, sizing the result
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    share = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {"samples": total,
            "inclusive": [(f, share(c)) for f, c in inclusive.most_common(top)],
            "self": [(f, share(c)) for f, c in own.most_common(top)]}


def markdown(summary: dict[str, Any]) -> str:
    rows = ["| inclusive % | function |", "|---:|---|"]
    rows += [f"| {p} | `{f}` |" for f, p in summary["inclusive"]]
    rows += ["", "| self % | function |", "|---:|---|"]
    rows += [f"| {p} | `{f}` |" for f, p in summary["self"]]
    return "\n".join(rows) + f"\n\n{summary['samples']:,} samples.\n"


def profile(events: int, customers: int, rate: int, top: int) -> dict[str, Any]:
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="c360-profile-") as tmp:
        ds = produce(bootstrap, "bp.", events=events, customers=customers)
        out = Path(tmp) / "stacks.txt"
        argv = [py_spy(), "record", "--format", "raw", "--rate", str(rate), "--output",
                str(out), "--", sys.executable, "-m", "benchmarks.harness.worker", "c360",
                json.dumps(worker_args(ds))]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"py-spy failed ({proc.returncode}): {proc.stderr[-1000:]}")
        run = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
        summary = summarize(out.read_text(), top)
    return {"events": events, "customers": customers, "rate_hz": rate,
            "worker": {k: run[k] for k in ("events", "cpu_s", "wall_s")}, **summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=200, help="samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None, help="also write the result as JSON there")
    a = ap.parse_args()
    result = profile(a.events, a.customers, a.rate, a.top)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    w = result["worker"]
    print(f"{w['events']:,} events, {w['cpu_s']:.2f} CPU-s (under py-spy) — "
          f"{result['samples']:,} samples at {a.rate} Hz\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
