"""Crash recovery of the dataflow: bytewax recovery partitions in a local directory.

With a recovery directory the dataflow snapshots, at the end of every epoch (the
snapshot interval), each source partition's next offsets and each shard's pickled state,
into SQLite recovery partitions there. After a crash (``kill -9`` included) a restart
with the same directory resumes from the last complete snapshot: the sources re-read
from the snapshotted offsets, and the shards re-fold what was read since. That replay
is at-least-once; each entity's version (one per applied event) stays exact because the
shard state and the offsets are snapshotted together, and the resumed shards first
publish each entity's whole state (a reset, see :mod:`c360.replica`) so stores rebuild
and replicas stay right. ``docs/reliability.md`` states the guarantees.
"""

from __future__ import annotations

from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir

from c360.errors import ConfigError

PARTITION_GLOB = "part-*.sqlite3"


def prepare(directory: str | Path, partitions: int = 1) -> Path:
    """Create ``directory`` with ``partitions`` empty recovery partitions, unless it
    already holds some (then it is kept as is: that is what a restart resumes from)."""
    path = Path(directory)
    if partitions < 1:
        raise ConfigError(f"recovery partitions must be at least 1, not {partitions}")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"recovery directory {path} is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)
    if not any(path.glob(PARTITION_GLOB)):
        init_db_dir(path, partitions)
    return path


def recovery_config(directory: str | Path, partitions: int = 1) -> RecoveryConfig:
    """bytewax's recovery configuration for ``directory``, prepared first."""
    return RecoveryConfig(prepare(directory, partitions))
