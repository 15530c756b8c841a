"""``c360 bench``: every section in one invocation, one JSON result file and PNG plots.

Absolute rates on a shared machine are noisy, so each section compares engines measured
in the same invocation, mostly in events per CPU-second of the processing process.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    s1_python_limit,
    s2_peers,
    s3_streams,
    s4_latency,
    s5_memory,
    s6_fanout,
)
from benchmarks.harness.common import Scale, machine, versions
from benchmarks.harness.progress import Progress

SECTIONS: dict[int, tuple[str, Any]] = {
    1: ("python_limit", s1_python_limit),
    2: ("peers", s2_peers),
    3: ("streams", s3_streams),
    4: ("latency", s4_latency),
    5: ("memory", s5_memory),
    6: ("fanout", s6_fanout),
}


def run_bench(*, quick: bool, out: Path, sections: list[int] | None = None,
              peers: bool = True, flink: bool | None = None, plots: Path | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Run the chosen sections (all by default); write the JSON to ``out``; return it."""
    scale = Scale.of(quick)
    chosen = sections or sorted(SECTIONS)
    flink = (not quick) if flink is None else flink
    bar = Progress(sum(SECTIONS[i][1].steps(scale) for i in chosen), enabled=progress)
    result: dict[str, Any] = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick, "scale": scale.__dict__, "machine": machine(),
        "versions": versions(), "sections": {},
    }
    calls: dict[int, Callable[[], dict[str, Any]]] = {
        1: lambda: s1_python_limit.run(scale, bar),
        2: lambda: s2_peers.run(scale, bar, peers=peers, install=not quick),
        3: lambda: s3_streams.run(scale, bar, flink=flink),
        4: lambda: s4_latency.run(scale, bar),
        5: lambda: s5_memory.run(scale, bar),
        6: lambda: s6_fanout.run(scale, bar),
    }
    try:
        for i in chosen:
            name = SECTIONS[i][0]
            began = time.monotonic()
            try:
                section = calls[i]()
            except Exception as exc:  # one broken section must not lose the others
                section = {"error": f"{type(exc).__name__}: {exc}",
                           "traceback": traceback.format_exc()[-2000:]}
            section["seconds"] = round(time.monotonic() - began, 1)
            result["sections"][f"{i}_{name}"] = section
            _write(out, result)
    finally:
        bar.close()
    result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _write(out, result)
    if plots is not None:
        from benchmarks.harness.plots import write_plots

        result["plots"] = [str(p) for p in write_plots(result, plots)]
        _write(out, result)
    return result


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(path)
