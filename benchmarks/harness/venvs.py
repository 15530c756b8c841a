"""Virtual environments for the peer engines, created once and reused across runs.

Each lives in ``~/.cache/c360-bench/venvs/<name>-<version>`` (``C360_BENCH_CACHE``
overrides the cache root) with pinned packages; a ``.ready`` file marks a finished
install, so an interrupted one is redone. A failed install is reported as a reason,
never raised: the bench records it and goes on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Pinned: the peers' results are only comparable run to run at fixed versions.
PEERS: dict[str, tuple[str, list[str]]] = {
    "quixstreams": ("3.28.1", ["quixstreams==3.28.1"]),
    "pathway": ("0.33.0", ["pathway==0.33.0"]),
    "flink": ("2.3.0", ["apache-flink==2.3.0"]),
}


def cache_root() -> Path:
    return Path(os.environ.get("C360_BENCH_CACHE", Path.home() / ".cache" / "c360-bench"))


@dataclass(frozen=True)
class Venv:
    name: str
    version: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def ready(self) -> bool:
        return (self.path / ".ready").exists()


def venv_for(name: str) -> Venv:
    version, _ = PEERS[name]
    return Venv(name, version, cache_root() / "venvs" / f"{name}-{version}")


def ensure_venv(name: str, timeout: float = 1800.0) -> tuple[Venv, str | None]:
    """The peer's venv, installed if needed; ``(venv, None)`` or ``(venv, reason it failed)``."""
    venv = venv_for(name)
    if venv.ready:
        return venv, None
    _, packages = PEERS[name]
    shutil.rmtree(venv.path, ignore_errors=True)
    venv.path.parent.mkdir(parents=True, exist_ok=True)
    log = venv.path.parent / f"{venv.path.name}.log"
    try:
        with log.open("w") as out:
            subprocess.run([sys.executable, "-m", "venv", str(venv.path)], check=True,
                           stdout=out, stderr=subprocess.STDOUT, timeout=120)
            subprocess.run([str(venv.python), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", "confluent-kafka>=2.3,<3",
                            *packages], check=True, stdout=out, stderr=subprocess.STDOUT,
                           timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        return venv, f"could not install {' '.join(packages)}: {exc}; " + " | ".join(tail)
    (venv.path / ".ready").write_text(" ".join(packages) + "\n")
    return venv, None


def installed_version(venv: Venv, module: str) -> str | None:
    """The version a venv reports for ``module`` (a distribution name), or None."""
    try:
        out = subprocess.run([str(venv.python), "-c",
                              f"import importlib.metadata as m; print(m.version({module!r}))"],
                             capture_output=True, text=True, timeout=60, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return None
    return out.stdout.strip() or None
