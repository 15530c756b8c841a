"""The same Olist replay run twice gives byte-identical exports (versions included) and
the same decisions on the decisions topic (issue 13: "five runs ... byte-identical";
``benchmarks/event_time_oracle.py --runs 5`` does five and reports them).

Both runs use the CLI with the default settings and 2 workers: every worker polls its own
partitions, so the batches and the interleaving of the 17 topics differ between runs,
which is exactly what the values must not depend on."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from benchmarks.event_time_oracle import next_offsets, read_topic  # one reader for both
from c360.config import REPO_ROOT, Settings
from c360.dev.broker import EmbeddedBroker
from c360.dev.olist import replay
from c360.model.events import Catalogue


@pytest.fixture(scope="module")
def replayed(broker: EmbeddedBroker) -> Settings:
    s = Settings(bootstrap=broker.bootstrap, topic_prefix=f"det{uuid.uuid4().hex[:6]}.",
                 partitions=2)
    replay(s, progress=False)
    return s


def _run(settings: Settings, out: Path) -> tuple[bytes, dict[str, list[bytes]]]:
    """One bounded CLI run: the export's bytes and each customer's decisions, in order."""
    decisions = Catalogue(settings.topic_prefix).decisions_topic
    before = next_offsets(read_topic(settings, decisions))
    env = {**os.environ, "C360_TOPIC_PREFIX": settings.topic_prefix}
    for name in ("C360_KAFKA_BOOTSTRAP", "C360_ALLOWED_LATENESS_S"):
        env.pop(name, None)
    run = subprocess.run(
        [sys.executable, "-m", "c360", "run", "--until-idle", "3", "--workers", "2",
         "--export", str(out), "--bootstrap", settings.bootstrap],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    per_customer: dict[str, list[bytes]] = defaultdict(list)
    for p, offset, key, value in read_topic(settings, decisions):
        if offset >= before.get(p, 0):  # this run's
            per_customer[key.decode()].append(value)
    return out.read_bytes(), dict(per_customer)


def test_two_runs_give_byte_identical_exports_and_decisions(replayed: Settings,
                                                           tmp_path: Path) -> None:
    first, decided_first = _run(replayed, tmp_path / "first.jsonl")
    second, decided_second = _run(replayed, tmp_path / "second.jsonl")
    assert first.count(b"\n") == 26_924
    assert b'"version":' in first and b'"decisions":' in first  # both are compared
    assert decided_first, "no decision at all: nothing was compared"
    if first != second:
        a, b = first.splitlines(), second.splitlines()
        differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        pytest.fail(f"{len(differ)} of {len(a)} exported customers differ; first:\n"
                    f"{a[differ[0]][:1500]!r}\n{b[differ[0]][:1500]!r}")
    differ = sorted(c for c in decided_first.keys() | decided_second.keys()
                    if decided_first.get(c) != decided_second.get(c))
    assert not differ, (f"decisions differ for {len(differ)} of {len(decided_first)} "
                        f"customers, e.g. {differ[0]}: {decided_first.get(differ[0])} vs "
                        f"{decided_second.get(differ[0])}")
