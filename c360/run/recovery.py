"""Crash recovery of the dataflow: bytewax recovery partitions in a local directory.

With a recovery directory the dataflow snapshots, at the end of every epoch (the
snapshot interval), each source partition's next offsets and each shard's state (in the
versioned format of :mod:`c360.entity.codec`), into SQLite recovery partitions there.
After a crash (``kill -9`` included) a restart with the same directory resumes from the
last complete snapshot: the sources re-read from the snapshotted offsets, and the shards
re-fold what was read since. That replay is at-least-once; each entity's version (one per
applied event) stays exact because the shard state and the offsets are snapshotted
together, and the resumed shards first publish each entity's whole state (a reset, see
:mod:`c360.store.replica`) so stores rebuild and replicas stay right. ``docs/reliability.md``
states the guarantees.

Three things make a directory unusable, and all are caught here:

- **A set-up cut short** (``kill -9`` while the first start creates the partitions): a
  partition file without its ``parts`` row made every later start fail with bytewax's
  ``NoPartitionsError``. The partitions are now built in a temporary directory next to
  the target and renamed into place, with a marker file (:data:`MARKER`) written last: a
  directory without the marker is made again (or, if its partitions are complete, as an
  earlier c360 or ``python -m bytewax.recovery`` left them, adopted).
- **Offsets of topics that no longer exist.** The snapshots hold offsets into particular
  topics; a memory-only broker that restarted, or topics deleted and re-created, have the
  same names but other records, and a resume would read from stale offsets (skipping or
  mixing events) and end normally. The marker records each input topic's id (a
  re-created topic gets a new one; a durable broker keeps them) and a start against other
  ids stops with :class:`RecoveryMismatch`, which says to start afresh.
- **Snapshots of another state format** (written by a c360 of another version of
  :mod:`c360.entity.codec`'s layout, or pickled by a c360 from before it): a start reads
  every snapshot's header first and stops with a one-line ``StateFormatError`` that says
  to start afresh, rather than failing inside a worker.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bytewax.recovery import RecoveryConfig, init_db_dir

from c360.entity import codec
from c360.errors import BrokerError, ConfigError, DataError, RecoveryMismatch
from c360.store.entity_log import ENTITY_LOG_DIR

PARTITION_GLOB = "part-*.sqlite3"
MARKER = "c360-recovery.json"  # written last: the directory is set up once it exists
_FORMAT = 1
# For tests only: a file to create once the partitions exist but the set-up is not yet
# complete, then wait there to be killed (the test's kill -9 lands mid-set-up every time).
PAUSE_ENV = "C360_TEST_PAUSE_RECOVERY_SETUP"


def prepare(directory: str | Path, partitions: int = 1, *,
            topic_ids: Mapping[str, str] | None = None) -> Path:
    """Make ``directory`` a complete recovery directory of ``partitions`` partitions, unless
    it already is one (then it is kept as is: that is what a restart resumes from).

    ``topic_ids`` (topic name -> Kafka topic id, :func:`topic_ids`): the input topics
    now; the directory records them the first time and refuses others later."""
    path = Path(directory)
    if partitions < 1:
        raise ConfigError(f"recovery partitions must be at least 1, not {partitions}")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"recovery directory {path} is a file, not a directory")
    if not (path / MARKER).exists():
        _set_up(path, partitions)
    check_snapshots(path)
    if topic_ids:
        _check_topics(path, topic_ids)
    return path


def recovery_config(directory: str | Path, partitions: int = 1, *,
                    kafka: Mapping[str, str] | None = None,
                    topics: Iterable[str] = ()) -> RecoveryConfig:
    """bytewax's recovery configuration for ``directory``, prepared first; with ``kafka``
    (librdkafka settings) and ``topics``, checked against those topics' ids."""
    topics = list(topics)
    ids = topic_ids(kafka, topics) if kafka is not None and topics else None
    return RecoveryConfig(prepare(directory, partitions, topic_ids=ids))


def topic_ids(kafka: Mapping[str, str], topics: list[str], timeout: float = 10.0
              ) -> dict[str, str]:
    """Each topic's Kafka topic id (``BrokerError`` if the broker does not answer)."""
    from confluent_kafka import KafkaException, TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(dict(kafka))
    futures = admin.describe_topics(TopicCollection(topics), request_timeout=timeout)
    try:
        return {t: str(f.result(timeout=timeout + 5).topic_id) for t, f in futures.items()}
    except (KafkaException, TimeoutError) as exc:
        raise BrokerError(f"cannot describe the input topics at "
                          f"{kafka.get('bootstrap.servers')}: {exc}") from exc


def _read_marker(path: Path) -> dict:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"recovery directory {path}: unreadable {MARKER} ({exc}); delete the "
                          "directory to start afresh") from None
    return marker if isinstance(marker, dict) else {}


def _write_marker(path: Path, marker: dict) -> None:
    tmp = path / f".{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(marker, indent=1, sort_keys=True))
    os.replace(tmp, path / MARKER)  # atomic: the marker is whole or absent


def _check_topics(path: Path, ids: Mapping[str, str]) -> None:
    marker = _read_marker(path)
    recorded: dict[str, str] = marker.get("topics") or {}
    changed = sorted(t for t, i in ids.items() if t in recorded and recorded[t] != i)
    if changed:
        more = f" and {len(changed) - 2} more" if len(changed) > 2 else ""
        raise RecoveryMismatch(
            f"the recovery directory {path} holds offsets into earlier topics of the same "
            f"names: {', '.join(changed[:2])}{more} were re-created since (new topic id; a "
            "memory-only broker that restarted does this), so resuming would skip or mix "
            f"events. To start afresh, delete the directory (rm -r {path}) or use a new "
            "--recovery-dir, and send the events again")
    new = {t: i for t, i in ids.items() if t not in recorded}
    if new:
        marker["topics"] = {**recorded, **new}
        _write_marker(path, marker)


class _BytesOnly(pickle.Unpickler):
    """bytewax pickles each snapshot; ours are bytes, which need no class to read."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError("not a c360 snapshot")


def check_snapshots(path: Path) -> None:
    """:class:`StateFormatError` unless every fold and global-windows snapshot in the
    recovery directory is of the state format this c360 reads (headers only)."""
    for f in sorted(path.glob(PARTITION_GLOB)):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{f}?mode=ro", uri=True)) as db:
                rows = db.execute("SELECT step_id, state_key, ser_change FROM snaps "
                                  "WHERE ser_change IS NOT NULL")
                for step, key, blob in rows:
                    try:
                        snap = _BytesOnly(io.BytesIO(blob)).load()
                    except (pickle.UnpicklingError, EOFError, ValueError):
                        continue  # another step's state (a source's offsets are a dict)
                    if isinstance(snap, bytes):
                        try:
                            codec.check(snap)
                        except DataError as exc:
                            raise type(exc)(f"recovery directory {path}, step {step} key "
                                            f"{key}: {exc}") from None
        except sqlite3.Error:
            continue  # no snapshot table yet (a set-up cut short is made again above)


def _partition_state(files: list[Path]) -> tuple[bool, bool]:
    """(every file has its partition row, some file holds snapshots or commits)."""
    complete, data = True, False
    for f in files:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{f}?mode=rw", uri=True)) as db:
                rows = db.execute("SELECT part_index, part_count FROM parts").fetchall()
                if len(rows) != 1 or not 0 <= rows[0][0] < rows[0][1]:
                    complete = False
                held = db.execute("SELECT (SELECT COUNT(*) FROM commits) "
                                  "+ (SELECT COUNT(*) FROM snaps)").fetchone()[0]
                data = data or held > 0
        except sqlite3.Error:
            complete = False  # an empty file, or its tables not made yet
    return complete, data


def _set_up(path: Path, partitions: int) -> None:
    files = sorted(path.glob(PARTITION_GLOB)) if path.is_dir() else []
    if files:
        complete, data = _partition_state(files)
        if complete:
            # Made before the marker existed (an earlier c360, python -m bytewax.recovery).
            _write_marker(path, {"format": _FORMAT, "partitions": len(files)})
            return
        if data:
            raise ConfigError(f"recovery directory {path} is damaged (a partition file has no "
                              "partition row but others hold snapshots); delete it to start "
                              "afresh")
        # What a set-up cut short leaves (no snapshot ever written): make it again.
        for f in files:
            for leftover in (f, *(f.with_name(f.name + s) for s in ("-journal", "-wal", "-shm"))):
                leftover.unlink(missing_ok=True)
    # Entity logs of an earlier directory's snapshots (incremental snapshots,
    # c360.store.entity_log) belong to the partitions made again: never resumed.
    shutil.rmtree(path / ENTITY_LOG_DIR, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_setups(path)
    tmp = path.parent / f".{path.name}.setup-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        init_db_dir(tmp, partitions)
        _pause_for_test()
        _write_marker(tmp, {"format": _FORMAT, "partitions": partitions})
        try:
            tmp.rename(path)  # atomic; also replaces an empty directory
        except OSError:
            _move_into(tmp, path)  # the directory holds other files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into(tmp: Path, path: Path) -> None:
    """Move the set-up's files into an existing directory, the marker last."""
    if (path / MARKER).exists():
        return  # another process finished setting it up first: use theirs
    for f in sorted(tmp.glob(PARTITION_GLOB)):
        os.replace(f, path / f.name)
    os.replace(tmp / MARKER, path / MARKER)


def _remove_dead_setups(path: Path) -> None:
    """Temporary directories of set-ups whose process is gone (killed during set-up)."""
    for old in path.parent.glob(f".{path.name}.setup-*"):
        try:
            pid = int(old.name.rsplit("-", 2)[1])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def _pause_for_test() -> None:
    flag = os.environ.get(PAUSE_ENV)
    if flag:
        Path(flag).write_text(str(os.getpid()))
        while True:  # until killed
            time.sleep(1)
