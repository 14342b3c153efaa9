"""The votes: one SQLite row per answer (assessor, task, question, answer, shown order, time).

Every submitted task is written in one transaction and committed (WAL, synchronous=FULL) before the server
answers, so a server killed between two answers loses nothing; the primary key (assessor, task, question) keeps
an answer submitted twice once (the first)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    assessor    TEXT    NOT NULL,
    task        TEXT    NOT NULL,
    question    INTEGER NOT NULL,
    answer      TEXT    NOT NULL,   -- '1' (image 1), '2' (image 2) or 'none' (Can't decide), as shown
    shown_order TEXT    NOT NULL,   -- 'AB': image 1 was side A; 'BA': image 1 was side B
    answered_at REAL    NOT NULL,   -- Unix time
    PRIMARY KEY (assessor, task, question)
)
"""


class Votes:
    def __init__(self, path: str | Path):
        self.path = str(path)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def record(self, assessor: str, task: str, answers: dict[int, str], shown_order: str) -> bool:
        """Store one task's answers; False when they were stored before (nothing changes)."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            now = time.time()
            cur = db.executemany(
                "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                [(assessor, task, int(q), str(a), shown_order, now) for q, a in sorted(answers.items())])
            db.execute("COMMIT")
            return cur.rowcount > 0
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def answered(self, assessor: str) -> set[str]:
        """Tasks this assessor has answered (all three questions)."""
        db = self._connect()
        try:
            rows = db.execute("SELECT task FROM answers WHERE assessor = ? GROUP BY task HAVING COUNT(*) >= 3",
                              (assessor,)).fetchall()
        finally:
            db.close()
        return {r[0] for r in rows}

    def rows(self) -> list[tuple]:
        db = self._connect()
        try:
            return db.execute("SELECT assessor, task, question, answer, shown_order, answered_at FROM answers "
                              "ORDER BY answered_at, assessor, task, question").fetchall()
        finally:
            db.close()
