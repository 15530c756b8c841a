"""A shard's entity log: the entities each recovery snapshot changed, in one SQLite file.

Recovery used to re-encode every entity of a shard at every snapshot the shard was touched
in (124 MB and 3.8 CPU-s per snapshot at 59,536 customers, docs/benchmarks.md "Scale"). With
the log, a snapshot (``c360.entity.codec`` format 3) is the shard's small bookkeeping and a
sequence number ``seq``; the entities it changed are rows of this file with that ``seq``,
written and committed before the snapshot's bytes go to bytewax. The state at ``seq`` S is
each entity's latest row with ``seq <= S``.

Rows of a later ``seq`` than the one resumed from were written by an epoch bytewax never
committed (a crash between this file's commit and bytewax's): :meth:`EntityLog.resume`
deletes them before reading. One file per shard key, under the recovery directory given to
the run (never recorded in a snapshot); a key lives on one worker at a time, so each file has
one writer. Rows hold bytes only: what they mean is the snapshot format's business.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

ENTITY_LOG_DIR = "entities"  # under the recovery directory
# Snapshots whose rows stay resumable after a compaction, besides the newest. bytewax resumes
# from the last epoch committed by every worker, which can trail the newest snapshot this
# process wrote: each worker commits its epoch's snapshots on its own, so the newest ones of
# the key may not be committed yet. A key's seq advances at most once an epoch, so keeping 3
# older seqs resumable tolerates a commit 3 epochs behind (bytewax's trails by one; -b 0).
KEEP = 3


def log_path(directory: str | Path, shard_key: str) -> Path:
    return Path(directory) / f"{shard_key}.sqlite3"


class EntityLog:
    """The entity rows of one shard key (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit off by hand: every write is one explicit transaction
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")  # a commit is one append to the WAL
        self._db.execute("PRAGMA synchronous=FULL")  # bytewax's commit must never outlive ours
        self._db.execute("CREATE TABLE IF NOT EXISTS rows (seq INTEGER NOT NULL, "
                         "entity_id TEXT NOT NULL, data BLOB, PRIMARY KEY (entity_id, seq))"
                         " WITHOUT ROWID")
        self.rows = 0  # rows in the file
        self._recent: collections.deque[tuple[int, int]] = collections.deque()  # (seq, rows)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def resume(self, seq: int) -> sqlite3.Cursor:
        """Forget rows after ``seq`` and those no resume at ``seq`` or later needs (committed
        when this returns); then each entity's state at ``seq`` as (id, bytes) rows,
        tombstoned ones left out. ``seq`` 0: empty the log."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM rows WHERE seq > ?", (seq,))
        # bytewax resumed from ``seq``: it never resumes from an older snapshot again (its
        # commit moved past it), so only each entity's latest row up to ``seq`` is kept.
        self._delete_superseded(seq)
        db.execute("COMMIT")
        self._recent.clear()
        self.rows = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        return db.execute("SELECT entity_id, data FROM rows WHERE data IS NOT NULL")

    def write(self, seq: int, rows: Iterable[tuple[str, bytes | None]], live: int) -> int:
        """Store a snapshot's changed entities (None: removed) under ``seq``, committed when
        this returns; compacts now and then (``live``: the shard's entities now). The number
        of rows written."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        cur = db.executemany("INSERT OR REPLACE INTO rows (seq, entity_id, data) "
                             "VALUES (?, ?, ?)", ((seq, eid, data) for eid, data in rows))
        n = cur.rowcount
        db.execute("COMMIT")
        self.rows += n
        self._recent.append((seq, n))
        while self._recent and self._recent[0][0] <= seq - KEEP:
            self._recent.popleft()
        # Compact when the rows beyond the live entities and the last KEEP snapshots' rows
        # (which must stay) are as many as the live ones: each row is then deleted at most
        # once and a compaction costs in proportion to the rows written since the last.
        recent = sum(r for _, r in self._recent)
        if self.rows - recent >= 2 * max(live, 1):
            self.compact(seq - KEEP)
        return n

    def compact(self, horizon: int) -> None:
        """Delete every row superseded by a newer row of its entity at or below ``horizon``:
        a resume at any seq from ``horizon`` on still finds each entity's state (its latest
        row at or below the resumed seq is kept)."""
        if horizon <= 0:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        self._delete_superseded(horizon)
        db.execute("COMMIT")
        self.rows = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]

    def _delete_superseded(self, horizon: int) -> None:
        self._db.execute(
            "DELETE FROM rows WHERE seq < ? AND EXISTS (SELECT 1 FROM rows AS newer WHERE "
            "newer.entity_id = rows.entity_id AND newer.seq > rows.seq AND newer.seq <= ?)",
            (horizon, horizon))
