"""The scale benchmark (benchmarks/scale.py) run tiny on the session's embedded broker: every
figure is in its JSON, with its type and sign, and the run did what it says (every record
read, replicas equal to the primary, the restart back to the state at its kill).

No figure is compared with a time or a rate: a loaded machine only makes it slower."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from c360.config import REPO_ROOT
from c360.dev.broker import EmbeddedBroker


def test_a_tiny_scale_run_reports_every_figure_measured(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "scale.py"), "--customers", "300",
         "--events-per-customer", "5", "--snapshot-interval", "1",
         "--bootstrap", broker.bootstrap, "--workdir", str(tmp_path / "w"), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "N=300: leg on" in proc.stderr  # progress went to stderr
    assert proc.stdout.startswith("| customers |")  # the table to stdout
    r = json.loads(out.read_text())
    assert r["commit"] and r["machine_before"]["cpus"] >= 1
    (row,) = r["rows"]
    assert row["events"] == 1500 and row["records"] > row["events"]  # and the sentinels

    for leg in (row["off"], row["on"]):
        assert leg["records_read"] == row["records"]
        assert 0 < leg["customers"] <= 300 and leg["products"] > 0
        assert 0 < leg["events_applied"] <= row["records"]
        assert leg["rss_before_bytes"] > 0 and leg["rss_after_bytes"] > 0
        assert isinstance(leg["rss_growth_per_customer_bytes"], float)
        assert leg["wall_seconds"] > 0 and leg["cpu_seconds"] > 0
        assert leg["events_per_wall_second"] > 0 and leg["events_per_cpu_second"] > 0
    assert row["off"]["pickled_bytes_per_customer"] > 0
    assert row["recovery_ratio"]["events_per_cpu_second"] > 0
    assert row["recovery_ratio"]["events_per_wall_second"] > 0

    snaps = row["snapshots"]
    assert snaps["interval_seconds"] == 1 and snaps["snapshots"] >= 1
    assert snaps["snapshot_bytes_max"] >= snaps["snapshot_bytes_mean"] > 0
    assert snaps["latest_state_bytes"] > 0 and snaps["latest_state_bytes_per_customer"] > 0
    assert snaps["recovery_files_growth_bytes"] > 0
    assert isinstance(snaps["extra_cpu_seconds_per_snapshot"], float)

    zero, ckpt, from_ckpt = row["replica_offset0"], row["checkpoint"], row["replica_checkpoint"]
    assert zero["equal"] and not zero["from_checkpoint"] and zero["checkpoint_records_read"] == 0
    assert zero["change_records_read"] >= row["on"]["entities"]
    assert ckpt["entities"] >= row["on"]["entities"] and ckpt["bytes"] > 0
    assert from_ckpt["equal"] and from_ckpt["from_checkpoint"]
    assert from_ckpt["checkpoint_records_read"] == ckpt["entities"] + 1  # and its trailer
    assert from_ckpt["change_records_read"] < zero["change_records_read"]

    restart = row["restart"]
    assert restart["caught_up"]
    assert restart["current_state_seconds"] >= restart["first_change_seconds"] > 0
    assert restart["process_start_to_dataflow_start_seconds"] > 0
