"""Shared by the notebook builders: write a notebook, execute it in place with the project's
Jupyter, then keep only the outputs nbval checks (cells marked ``# NBVAL_CHECK_OUTPUT``), as
text/plain, so that the committed notebook is small and its checks are plain text."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

ROOT = Path(__file__).resolve().parents[2]
CHECK = "# NBVAL_CHECK_OUTPUT\n"
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def code(source: str, check: bool = False) -> nbformat.NotebookNode:
    """A code cell; ``check=True`` makes nbval compare its output with the stored one."""
    return new_code_cell((CHECK if check else "") + source)


def finish(nb: nbformat.NotebookNode, name: str) -> None:
    """Write ``notebooks/<name>.ipynb``, execute it, strip all but the checked outputs."""
    nb.metadata["kernelspec"] = KERNEL
    path = ROOT / "notebooks" / f"{name}.ipynb"
    nbformat.write(nb, path)
    began = time.monotonic()
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "jupyter"), "nbconvert", "--to",
                          "notebook", "--execute", "--inplace",
                          "--ExecutePreprocessor.timeout=300", str(path)],
                         capture_output=True, text=True, cwd=path.parent)
    if run.returncode:
        sys.exit(f"{name} failed:\n{run.stderr[-4000:]}")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if not cell.source.startswith(CHECK):
            cell.outputs = []
            cell.execution_count = None
        for out in cell.outputs:
            if "data" in out:
                out["data"] = {k: v for k, v in out["data"].items() if k == "text/plain"}
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    print(f"{name}: executed in {time.monotonic() - began:.0f}s; checked outputs:")
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            print("  ", out.get("data", {}).get("text/plain") or out.get("text"))
