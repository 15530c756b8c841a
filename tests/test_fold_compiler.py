"""The declared folds' compiler (c360.entity.fold): the generated source reads as the
declaration, keyed folds skip events without a key (as pandas' groupby does), and a model
module that fails to import is one line."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pandas as pd

from c360.config import REPO_ROOT
from c360.entity.fold import compile_folds, source_of
from c360.entity.state import EntityState
from c360.model import declare as d

T = datetime(2026, 3, 1, tzinfo=timezone.utc)
CLICKS = d.stream("clicks", {"page": (str | None, None), "ms": float})
MODEL = d.EntityModel("clicks", (CLICKS,), (
    d.Field("clicks_by_page", "map", d.Count("clicks", by="page"), "Clicks per page"),
    d.Field("ms_by_page_2d", "map", d.Windowed("clicks", days=2, value="ms", by="page"),
            "Time per page, 2 days"),
    d.Field("heat_by_page", "map", d.Decayed("clicks", half_life=timedelta(days=1), by="page"),
            "Clicks per page, decayed"),
))


def test_the_generated_fold_reads_as_the_declaration() -> None:
    src = source_of(MODEL, "clicks")
    assert "# clicks_by_page: count by page" in src
    assert "# ms_by_page_2d: sum of ms over 2 days by page" in src
    assert "def fold(state, e):" in src and "return ch or None" in src


def test_events_without_a_key_count_in_no_key_as_pandas_groupby_drops_them() -> None:
    pages = ["home", None, "cart", "home", None, "cart", "home"]
    events = [CLICKS.schema(event_id=f"c{i}", event_time=T + timedelta(hours=i),
                            customer_id="u1", page=p, ms=100.0 + i)
              for i, p in enumerate(pages)]
    fold = compile_folds(MODEL)["clicks"]
    state = EntityState()
    for e in events:
        state.fields.update(fold(state, e) or {})
    df = pd.DataFrame({"page": pages, "ms": [e.ms for e in events]})
    assert state.fields["clicks_by_page"] == df.groupby("page").size().to_dict()
    assert state.fields["ms_by_page_2d"] == df.groupby("page")["ms"].sum().to_dict()
    assert sorted(state.fields["heat_by_page"]) == ["cart", "home"]


def test_a_model_module_that_fails_to_import_is_one_line_exit_2(tmp_path) -> None:
    (tmp_path / "broken_model.py").write_text("raise ValueError('no such column: qty')\n")
    proc = subprocess.run([sys.executable, "-m", "c360", "run", "--model", "broken_model:MODEL"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{tmp_path}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "importing broken_model raised ValueError: no such column: qty" in lines[0]
