"""Section 6 — fan-out: 1,000 sync clients and 50 dashboard sessions at 10k events/s.

Not measured yet: the WebSocket sync server (``c360.sync``) landed during this work and
the fan-out harness (many clients, server CPU, dropped or coalesced frames) is still to
be written. The section is present with that reason so that the JSON keeps its shape.
"""

from __future__ import annotations

from typing import Any

from c360.bench.common import Scale
from c360.bench.progress import Progress

TARGET = {"clients": 1000, "dashboard_sessions": 50, "events_per_s": 10_000}


def steps(scale: Scale) -> int:
    return 1


def run(scale: Scale, progress: Progress) -> dict[str, Any]:
    try:
        import c360.sync  # noqa: F401

        reason = ("fan-out harness not written yet (the sync server exists; see "
                  "docs/benchmarks.md for the plan)")
    except ImportError:
        reason = "the sync server (c360.sync) is not available in this checkout"
    progress.step("s6")
    return {"scenario": TARGET, "skipped": reason, "met": None}
