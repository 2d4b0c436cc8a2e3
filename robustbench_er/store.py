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
* ``flags``: sanity-check flags per cell.

Every write is one transaction and idempotent (``INSERT OR REPLACE`` keyed by the cell id and
sample id), so a killed run loses at most the step in flight, a rerun resumes, and two
processes may write the same store (SQLite serialises the writers; ``busy_timeout`` waits).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
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
CREATE TABLE IF NOT EXISTS flags (
    cell_id TEXT, flag TEXT, detail TEXT, PRIMARY KEY (cell_id, flag));
"""


class Store:
    """A thin, transactional wrapper over the SQLite file ``<folder>/store.sqlite``."""

    FILENAME = "store.sqlite"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / self.FILENAME
        self.conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA busy_timeout=60000")
        self.conn.executescript(SCHEMA)
        # stores written before the per-sample search kept only broken_at
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(outcomes)")}
        for col, decl in (("broken_by", "TEXT"), ("survived_eps", "REAL"), ("tries", "INTEGER DEFAULT 0")):
            if col not in have:
                self.conn.execute(f"ALTER TABLE outcomes ADD COLUMN {col} {decl}")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

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
                    survived: dict[int, float | None] | None = None, tried: Iterable[int] = ()) -> None:
        """Write one step (an epsilon of an ascending sweep, a round of a grid search) atomically.

        ``broken`` maps sample ids to the epsilon of a verified example; a sample's ``broken_at``
        only ever goes down (replaying a step never raises an earlier verdict). ``survived`` maps
        sample ids to the epsilon the attack failed at (None clears it); ``tried`` lists samples
        given a second attempt in this step.
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
