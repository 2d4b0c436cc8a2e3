"""The results store: one SQLite file per results folder (standard library, WAL mode).

Tables:

* ``runs``: one row per command (config, versions, start and end times);
* ``cells``: one row per cell (spec hash, spec JSON, dataset, defense, checkpoint, attack,
  norm, samples, status, seconds);
* ``steps``: the (cell, epsilon index) steps that finished, so a rerun skips them;
* ``outcomes``: per cell and sample: label, clean verdict, ``broken_at`` (smallest epsilon with
  a verified adversarial example, or the measured norm for minimization attacks; NULL = never),
  ``broken_by`` (the attack label that found it: in a cascade, a stage's outcomes include every
  earlier stage's), ``survived_eps`` (the largest epsilon at which the cell's own attack failed,
  the lower end of a per-sample grid search) and ``tries`` (second attempts made);
* ``warnings``: what the attack said about the evaluation while computing a step (AutoAttack's
  own checks, say), stored with the step so that a rerun, ``report`` or another executor reads
  the same messages and derives the same flags;
* ``flags``: sanity-check flags per cell, derived from the rows above (rewritten on every run);
* ``leases``: which process works on a cell now (owner, expiry); see :class:`LeaseTable`.

Every write is one transaction and idempotent (``INSERT OR REPLACE`` keyed by the cell id and
sample id), so a killed run loses at most the step in flight, a rerun resumes, and two
processes may write the same store (SQLite serialises the writers; ``busy_timeout`` waits).
Two processes never compute the same cell at once: each claims the cell's lease first (see
:class:`LeaseTable` and :class:`KeepAlive`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL, finished REAL, command TEXT, config TEXT, versions TEXT);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, spec TEXT NOT NULL, dataset TEXT, defense TEXT, checkpoint TEXT,
    attack TEXT, attack_label TEXT, kind TEXT, norm TEXT, grid TEXT, n INTEGER, eot INTEGER,
    status TEXT, seconds REAL, created REAL, finished REAL);
CREATE TABLE IF NOT EXISTS steps (
    cell_id TEXT, eps_index INTEGER, eps REAL, attacked INTEGER, broken INTEGER, seconds REAL,
    PRIMARY KEY (cell_id, eps_index));
CREATE TABLE IF NOT EXISTS outcomes (
    cell_id TEXT, sample_id INTEGER, label INTEGER, clean_correct INTEGER, broken_at REAL,
    broken_by TEXT, survived_eps REAL, tries INTEGER DEFAULT 0,
    PRIMARY KEY (cell_id, sample_id));
CREATE TABLE IF NOT EXISTS warnings (
    cell_id TEXT, eps_index INTEGER, seq INTEGER, message TEXT, PRIMARY KEY (cell_id, eps_index, seq));
CREATE TABLE IF NOT EXISTS flags (
    cell_id TEXT, flag TEXT, detail TEXT, PRIMARY KEY (cell_id, flag));
CREATE TABLE IF NOT EXISTS detection (
    key TEXT PRIMARY KEY, identity TEXT NOT NULL, row TEXT NOT NULL, scores TEXT NOT NULL, created REAL);
CREATE TABLE IF NOT EXISTS analyses (
    key TEXT PRIMARY KEY, identity TEXT NOT NULL, result TEXT NOT NULL, created REAL);
"""

LEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL, claimed REAL NOT NULL);
"""

#: seconds a lease lives without renewal; a crashed owner's work is taken over after this
LEASE_TTL = 120.0

log = logging.getLogger(__name__)


def connect(path: str | Path) -> sqlite3.Connection:
    """An autocommit SQLite connection in WAL mode that waits up to 60 s for other writers.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, when two processes open a fresh store at the
    same moment; so the switch is retried here for up to the same 60 s.
    """
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=60000")
    deadline = time.monotonic() + 60
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.02 + 0.05 * random.random())


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken at its start (``BEGIN IMMEDIATE``) so reads and writes in it are atomic."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def lease_owner() -> str:
    """A name for this process as a lease owner: host, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class LeaseLost(RuntimeError):
    """Our lease on a key expired and another owner took it; stop working on that key."""


class LeaseTable:
    """Leases on string keys (a cell id, a training job) in the ``leases`` table of one SQLite file.

    A lease says "owner O works on key K until time T". :meth:`claim` succeeds when the key has
    no lease, its lease has expired, or the lease is already ours; the check and the write are
    one ``BEGIN IMMEDIATE`` transaction, so of two processes claiming at once exactly one wins.
    The owner renews while it works (:class:`KeepAlive`) and releases when done; a crashed
    owner stops renewing, and once ``expires`` has passed any process may take the key over.
    Times are wall-clock seconds (``time.time()``), so processes on several hosts sharing one
    store need clocks that agree to well within the time to live.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(LEASE_SCHEMA)

    def claim(self, key: str, owner: str, ttl: float = LEASE_TTL) -> bool:
        """Take (or keep) the lease on ``key`` for ``ttl`` seconds; False if another live owner holds it."""
        with _immediate(self.conn) as c:
            now = time.time()
            row = c.execute("SELECT owner, expires FROM leases WHERE key=?", (key,)).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return False
            if row is not None and row[0] != owner:
                log.info("taking over the expired lease on %s from %s", key, row[0])
            c.execute("INSERT OR REPLACE INTO leases (key, owner, expires, claimed) VALUES (?,?,?,?)",
                      (key, owner, now + ttl, now))
            return True

    def renew(self, key: str, owner: str, ttl: float = LEASE_TTL) -> bool:
        """Push our lease's expiry to now + ``ttl``; False if the lease is no longer ours."""
        with _immediate(self.conn) as c:
            cur = c.execute("UPDATE leases SET expires=? WHERE key=? AND owner=?", (time.time() + ttl, key, owner))
            return cur.rowcount == 1

    def release(self, key: str, owner: str) -> None:
        """Give the lease up (a no-op if it is not ours)."""
        with _immediate(self.conn) as c:
            c.execute("DELETE FROM leases WHERE key=? AND owner=?", (key, owner))

    def holder(self, key: str) -> dict[str, Any] | None:
        """The lease on ``key`` (owner, expires, claimed), expired or not; None if there is none."""
        row = self.conn.execute("SELECT owner, expires, claimed FROM leases WHERE key=?", (key,)).fetchone()
        return None if row is None else {"owner": row[0], "expires": row[1], "claimed": row[2]}


class KeepAlive:
    """Renews a claimed lease while the owner works, and releases it at the end.

    Used as ``with KeepAlive(db_path, key, owner, ttl) as alive: ... alive.check() ...``. A
    background thread with its own connection renews every ``ttl / 4`` seconds, so a step
    longer than the time to live (an AutoAttack round on many points, a training run) keeps
    its lease; the worker also calls :meth:`check` between steps, which renews at once and
    raises :class:`LeaseLost` if the lease was taken over (only possible if this process
    stalled for longer than ``ttl``). A crashed process renews nothing, so its lease expires.
    """

    def __init__(self, db_path: str | Path, key: str, owner: str, ttl: float = LEASE_TTL) -> None:
        self.db_path = Path(db_path)
        self.key = key
        self.owner = owner
        self.ttl = float(ttl)
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> KeepAlive:
        self._conn = connect(self.db_path)
        self._table = LeaseTable(self._conn)
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.key}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        conn = connect(self.db_path)
        try:
            table = LeaseTable(conn)
            while not self._stop.wait(self.ttl / 4):
                try:
                    if not table.renew(self.key, self.owner, self.ttl):
                        self._lost.set()
                        return
                except sqlite3.Error as exc:  # a busy or briefly unreadable file: try again next beat
                    log.warning("could not renew the lease on %s: %s", self.key, exc)
        finally:
            conn.close()

    def check(self) -> None:
        """Renew now; raise :class:`LeaseLost` if another owner holds the lease."""
        if self._lost.is_set() or not self._table.renew(self.key, self.owner, self.ttl):
            self._lost.set()
            raise LeaseLost(f"the lease on {self.key} was taken over by another process")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._conn is not None:
            try:
                self._table.release(self.key, self.owner)
            finally:
                self._conn.close()


class Store:
    """A thin, transactional wrapper over the SQLite file ``<folder>/store.sqlite``."""

    FILENAME = "store.sqlite"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / self.FILENAME
        self.conn = connect(self.path)
        self.conn.executescript(SCHEMA)
        # stores written before the per-sample search kept only broken_at
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(outcomes)")}
        for col, decl in (("broken_by", "TEXT"), ("survived_eps", "REAL"), ("tries", "INTEGER DEFAULT 0")):
            if col not in have:
                self.conn.execute(f"ALTER TABLE outcomes ADD COLUMN {col} {decl}")
        #: leases on cell ids: which process computes which cell now
        self.leases = LeaseTable(self.conn)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with _immediate(self.conn) as c:
            yield c

    # ---- detection rows and analysis results (one JSON document per key) ----
    def detection_row(self, key: str) -> tuple[dict[str, Any], tuple[list[float], list[float]]] | None:
        """A finished detection row and its (positive, negative) scores, or None."""
        r = self.conn.execute("SELECT row, scores FROM detection WHERE key=?", (key,)).fetchone()
        if r is None:
            return None
        pos, neg = json.loads(r[1])
        return json.loads(r[0]), (pos, neg)

    def put_detection_row(self, key: str, identity: dict[str, Any], row: dict[str, Any],
                          scores: tuple[Any, Any]) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO detection (key, identity, row, scores, created) VALUES (?,?,?,?,?)",
                      (key, json.dumps(identity, default=str, sort_keys=True), json.dumps(row, default=float),
                       json.dumps([[float(v) for v in scores[0]], [float(v) for v in scores[1]]]), time.time()))

    def analysis_result(self, key: str) -> dict[str, Any] | None:
        r = self.conn.execute("SELECT result FROM analyses WHERE key=?", (key,)).fetchone()
        return None if r is None else json.loads(r[0])

    def analyses_frame(self) -> pd.DataFrame:
        """Every stored analysis result's summary numbers, long form: analysis (its label),
        dataset, defense, quantity, value."""
        rows = []
        for ident, res in self.conn.execute("SELECT identity, result FROM analyses ORDER BY created"):
            i, r = json.loads(ident), json.loads(res)
            for k, v in r["summary"].items():
                rows.append({"analysis": i.get("label", i.get("analysis")), "dataset": i.get("dataset", ""),
                             "defense": i.get("defense", ""), "quantity": k, "value": v})
        return pd.DataFrame(rows, columns=["analysis", "dataset", "defense", "quantity", "value"])

    def put_analysis_result(self, key: str, identity: dict[str, Any], result: dict[str, Any]) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO analyses (key, identity, result, created) VALUES (?,?,?,?)",
                      (key, json.dumps(identity, default=str, sort_keys=True), json.dumps(result, default=float),
                       time.time()))

    # ---- runs ----
    def start_run(self, command: str, config: dict[str, Any], versions: dict[str, str]) -> int:
        with self.transaction() as c:
            cur = c.execute("INSERT INTO runs (started, command, config, versions) VALUES (?,?,?,?)",
                            (time.time(), command, json.dumps(config, default=str), json.dumps(versions)))
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET finished=? WHERE run_id=?", (time.time(), run_id))

    # ---- cells ----
    def cell(self, cell_id: str) -> dict[str, Any] | None:
        cur = self.conn.execute("SELECT * FROM cells WHERE cell_id=?", (cell_id,))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row))

    def ensure_cell(self, cell_id: str, spec: dict[str, Any], row: dict[str, Any]) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO cells (cell_id, spec, dataset, defense, checkpoint, attack, attack_label,"
                " kind, norm, grid, n, eot, status, seconds, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (cell_id, json.dumps(spec, sort_keys=True, default=str), row["dataset"], row["defense"],
                 row["checkpoint"], row["attack"], row["attack_label"], row["kind"], row["norm"],
                 json.dumps(row["grid"]), row["n"], row["eot"], "new", 0.0, time.time()))

    def set_clean(self, cell_id: str, sample_ids: Iterable[int], labels: Iterable[int],
                  correct: Iterable[bool], broken_at: Iterable[float | None] | None = None,
                  broken_by: Iterable[str | None] | None = None) -> None:
        """Write the cell's first outcomes: clean verdicts, and for a cascade stage the breaks its
        upstream stages found (``broken_at``/``broken_by``; None = none yet)."""
        ids = [int(s) for s in sample_ids]
        ba = list(broken_at) if broken_at is not None else [None] * len(ids)
        bb = list(broken_by) if broken_by is not None else [None] * len(ids)
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO outcomes (cell_id, sample_id, label, clean_correct, broken_at, broken_by,"
                " survived_eps, tries) VALUES (?,?,?,?,?,?,NULL,0)",
                [(cell_id, s, int(lab), int(ok), None if v is None or v != v else float(v), by)
                 for s, lab, ok, v, by in zip(ids, labels, correct, ba, bb)])
            c.execute("UPDATE cells SET status='running' WHERE cell_id=?", (cell_id,))

    def has_clean(self, cell_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM outcomes WHERE cell_id=? LIMIT 1", (cell_id,)).fetchone() is not None

    def outcomes(self, cell_id: str) -> pd.DataFrame:
        return pd.read_sql_query(
            "SELECT sample_id, label, clean_correct, broken_at, broken_by, survived_eps, tries FROM outcomes"
            " WHERE cell_id=? ORDER BY sample_id",
            self.conn, params=(cell_id,))

    def steps(self, cell_id: str) -> pd.DataFrame:
        """The cell's finished steps: eps index, eps, points attacked, points newly broken."""
        return pd.read_sql_query(
            "SELECT eps_index, eps, attacked, broken FROM steps WHERE cell_id=? ORDER BY eps_index",
            self.conn, params=(cell_id,))

    def done_steps(self, cell_id: str) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT eps_index FROM steps WHERE cell_id=?", (cell_id,))}

    def record_step(self, cell_id: str, eps_index: int, eps: float, broken: dict[int, float],
                    attacked: int, seconds: float, *, label: str | None = None,
                    survived: dict[int, float | None] | None = None, tried: Iterable[int] = (),
                    warnings: Iterable[str] = ()) -> None:
        """Write one step (an epsilon of an ascending sweep, a round of a grid search) atomically.

        ``broken`` maps sample ids to the epsilon of a verified example; a sample's ``broken_at``
        only ever goes down (replaying a step never raises an earlier verdict). ``survived`` maps
        sample ids to the epsilon the attack failed at (None clears it); ``tried`` lists samples
        given a second attempt in this step; ``warnings`` are the attack's messages about it.
        """
        with self.transaction() as c:
            c.executemany("UPDATE outcomes SET broken_at=?, broken_by=? WHERE cell_id=? AND sample_id=?"
                          " AND (broken_at IS NULL OR broken_at > ?)",
                          [(float(v), label, cell_id, int(s), float(v)) for s, v in broken.items()])
            c.executemany("UPDATE outcomes SET survived_eps=? WHERE cell_id=? AND sample_id=?",
                          [(None if v is None else float(v), cell_id, int(s)) for s, v in (survived or {}).items()])
            c.executemany("UPDATE outcomes SET tries=tries+1 WHERE cell_id=? AND sample_id=?",
                          [(cell_id, int(s)) for s in tried])
            c.execute("INSERT OR REPLACE INTO steps (cell_id, eps_index, eps, attacked, broken, seconds)"
                      " VALUES (?,?,?,?,?,?)", (cell_id, eps_index, eps, attacked, len(broken), seconds))
            c.execute("UPDATE cells SET seconds=seconds+? WHERE cell_id=?", (seconds, cell_id))
            c.execute("DELETE FROM warnings WHERE cell_id=? AND eps_index=?", (cell_id, eps_index))
            c.executemany("INSERT INTO warnings (cell_id, eps_index, seq, message) VALUES (?,?,?,?)",
                          [(cell_id, eps_index, i, str(m)) for i, m in enumerate(warnings)])

    def warnings(self, cell_id: str) -> list[str]:
        """The attack's messages over a cell's steps, in step order, each once."""
        rows = self.conn.execute("SELECT message FROM warnings WHERE cell_id=? ORDER BY eps_index, seq", (cell_id,))
        return list(dict.fromkeys(r[0] for r in rows))

    def finish_cell(self, cell_id: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE cells SET status='done', finished=? WHERE cell_id=?", (time.time(), cell_id))

    def set_flags(self, cell_id: str, flags: dict[str, str]) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM flags WHERE cell_id=?", (cell_id,))
            c.executemany("INSERT INTO flags (cell_id, flag, detail) VALUES (?,?,?)",
                          [(cell_id, k, v) for k, v in flags.items()])

    # ---- reading for reports ----
    def cells_frame(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM cells ORDER BY created", self.conn)

    def outcomes_frame(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM outcomes", self.conn)

    def flags_frame(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM flags", self.conn)

    def runs_frame(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM runs", self.conn)
