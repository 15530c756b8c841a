"""The README's quick start and "Second steps" run as written: the code blocks are read from
README.md itself, so the documentation cannot drift from what works.

The Olist steps run on a small slice of the data (C360_OLIST_DIR points at it; the README
names that variable) so that the test takes seconds; the full replay through the CLI is
tests/test_olist.py's acceptance test.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from c360.config import REPO_ROOT
from tests.test_olist import OLIST, _subset

README = REPO_ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent


def blocks(heading: str, lang: str) -> list[str]:
    """The ``lang`` code blocks of the README section whose heading starts with ``heading``."""
    text = README.read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    section = next((s for s in sections if s.startswith(heading)), None)
    assert section is not None, f"README has no section {heading!r}"
    return re.findall(rf"^```{lang}\n(.*?)^```", section, flags=re.M | re.S)


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("C360_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # `c360`, `python`
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _port_closed(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), 1).close()
    except OSError:
        return True
    return False


@pytest.fixture(scope="module")
def olist_slice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A 40-order Olist directory and its number of customers (Olist's unique ids)."""
    small = _subset(tmp_path_factory.mktemp("olist") / "olist", orders=40)
    orders = pd.read_csv(small / "olist_orders_dataset.csv.gz", dtype=str)
    people = pd.read_csv(OLIST / "olist_customers_dataset.csv.gz", dtype=str)
    picked = people[people["customer_id"].isin(orders["customer_id"])]
    return small, picked["customer_unique_id"].nunique()


def test_the_python_quick_start_runs_and_stops_its_broker(tmp_path: Path) -> None:
    [code] = [b for b in blocks("Commands", "python") if "embedded_broker" in b]
    check = (
        "\nimport os, pandas as pd\n"
        "exported = pd.read_parquet('customers.parquet')\n"
        "assert len(exported) == store.count() == 100, (len(exported), store.count())\n"
        "assert store.get('cust-00042') is not None\n"
        "assert 'C360_KAFKA_BOOTSTRAP' not in os.environ  # restored after the block\n"
        "print('BROKER', settings.bootstrap)\n")
    done = subprocess.run([sys.executable, "-c", code + check], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    bootstrap = done.stdout.rsplit("BROKER ", 1)[1].strip()
    assert _port_closed(bootstrap), "the block stopped its broker"


def test_second_steps_in_the_shell(tmp_path: Path, olist_slice: tuple[Path, int]) -> None:
    data, customers = olist_slice
    [script] = blocks("Second steps", "bash")
    first, *rest = [line for line in script.splitlines() if line.strip()]
    assert first.split("#")[0].strip() == "c360 broker"
    env = {**_env(tmp_path), "C360_OLIST_DIR": str(data)}
    broker = subprocess.Popen(["c360", "broker"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert broker.stdout is not None
        printed = ""
        while "export C360_KAFKA_BOOTSTRAP=" not in printed:
            line = broker.stdout.readline()
            assert line, "c360 broker exited: " + (broker.stderr.read() if broker.stderr else "")
            printed += line
        export = re.search(r"export C360_KAFKA_BOOTSTRAP=\S+", printed).group(0)  # type: ignore[union-attr]
        # The README's second line is that printed line, with PORT standing for the port.
        assert re.fullmatch(r"export C360_KAFKA_BOOTSTRAP=127\.0\.0\.1:PORT",
                            rest[0].split("#")[0].strip())
        body = "\n".join(["set -euo pipefail", export, *rest[1:]])
        done = subprocess.run(["bash", "-c", body], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        broker.terminate()
        broker.wait(30)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{customers} customers" in done.stdout, done.stdout
    assert "order_count" in done.stdout and "total_spent" in done.stdout  # pandas' describe
    assert len(pd.read_parquet(tmp_path / "customers.parquet")) == customers
    # The run's progress went to stderr; its last line sums the run up.
    assert re.search(r"c360 run: [\d,]+ events read in", done.stderr), done.stderr[-2000:]


def test_second_steps_in_python(tmp_path: Path, olist_slice: tuple[Path, int]) -> None:
    data, customers = olist_slice
    [code] = blocks("Second steps", "python")
    env = {**_env(tmp_path), "C360_OLIST_DIR": str(data)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "total_spent" in done.stdout and "customer_id" in done.stdout, done.stdout
    exported = pd.read_parquet(tmp_path / "customers.parquet")
    assert len(exported) == customers
    assert exported["order_count"].sum() == 40  # every order of the slice, once
