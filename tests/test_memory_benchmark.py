"""`benchmarks/memory.py` runs end to end at a small scale and reports state size (pickled and
in memory) over time, the second half's growth and, with --breakdown, which parts of the
state grew (harness only: whether memory is flat is the benchmark's result at full scale,
docs/analytics.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_memory_benchmark_reports_growth_and_its_parts() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--events", "20000",
         "--customers", "400", "--tick", "600", "--samples", "4", "--breakdown"],
        capture_output=True, text=True, timeout=300, check=True)
    out = done.stdout
    rows = [line for line in out.splitlines() if re.match(r"\s+[\d,]+\s+\d+\s+[\d,]+\s", line)]
    assert [int(r.split()[0].replace(",", "")) for r in rows] == [5_000, 10_000, 15_000, 20_000]
    growth = re.search(r"second half \(10,000 -> 20,000 events\).*per customer ([\d,]+) -> "
                       r"([\d,]+) B \(([+-][\d.]+)%\)", out)
    assert growth, out
    before, after, pct = (float(g.replace(",", "")) for g in growth.groups())
    assert abs((after - before) / before * 100 - pct) < 0.1
    # Besides the pickled state: the entities' size in memory and the process's RSS.
    assert re.search(r"in memory [\d.]+ -> [\d.]+ MB \([+-][\d.]+%\); "
                     r"process RSS [\d,]+ -> [\d,]+ MB", out), out
    parts = dict(re.findall(r"^\s+(\S+)\s+[\d.]+\s+[\d.]+\s+([+-][\d.]+)$", out, re.M))
    # The parts named are the real state: bookkeeping and the fields the windows maintain.
    assert {"windows", "fields.monthly_spend"} & parts.keys(), out
    assert len(parts) == 15
