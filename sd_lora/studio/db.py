"""The studio's state: one SQLite file under its home (runs, their configs, queue order, status, times)."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Run", "Store", "ACTIVE", "RESUMABLE"]

ACTIVE = ("running", "stopping")
RESUMABLE = ("stopped", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    config TEXT NOT NULL,          -- the TOML as the user wrote it (root-relative paths)
    status TEXT NOT NULL,          -- queued, running, stopping, stopped, done, failed, cancelled, interrupted
    position REAL NOT NULL,        -- queue order among queued runs
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    pid INTEGER,
    returncode INTEGER,
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS options (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Run:
    id: int
    name: str
    config: str
    status: str
    position: float
    created: float
    started: float | None
    finished: float | None
    pid: int | None
    returncode: int | None
    message: str


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()  # one connection shared by the server and the queue thread
        with self._lock:
            self._db.executescript(_SCHEMA)

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def add_run(self, name: str, config: str) -> int:
        with self._lock:
            last = self._db.execute("SELECT COALESCE(MAX(position), 0) FROM runs").fetchone()[0]
            cur = self._db.execute("INSERT INTO runs (name, config, status, position, created) VALUES (?, ?, 'queued', ?, ?)",
                                   (name, config, last + 1, time.time()))
            return int(cur.lastrowid)

    def get(self, run_id: int) -> Run | None:
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return Run(*rows[0]) if rows else None

    def runs(self) -> list[Run]:
        return [Run(*r) for r in self._query("SELECT * FROM runs ORDER BY (status = 'queued') DESC, position, id DESC")]

    def queued(self) -> list[Run]:
        return [Run(*r) for r in self._query("SELECT * FROM runs WHERE status = 'queued' ORDER BY position, id")]

    def with_status(self, *statuses: str) -> list[Run]:
        marks = ",".join("?" * len(statuses))
        return [Run(*r) for r in self._query(f"SELECT * FROM runs WHERE status IN ({marks}) ORDER BY id", statuses)]

    def update(self, run_id: int, **values) -> None:
        allowed = {"status", "position", "started", "finished", "pid", "returncode", "message", "name", "config"}
        assert set(values) <= allowed, values
        sets = ", ".join(f"{k} = ?" for k in values)
        self._query(f"UPDATE runs SET {sets} WHERE id = ?", (*values.values(), run_id))

    def front_position(self) -> float:
        return self._query("SELECT COALESCE(MIN(position), 1) FROM runs")[0][0] - 1

    def end_position(self) -> float:
        return self._query("SELECT COALESCE(MAX(position), 0) FROM runs")[0][0] + 1

    def move(self, run_id: int, delta: int) -> None:
        """Swap a queued run with its neighbour in the queue (delta -1: earlier, +1: later)."""
        queue = self.queued()
        ids = [r.id for r in queue]
        if run_id not in ids:
            return
        i = ids.index(run_id)
        j = i + delta
        if 0 <= j < len(queue):
            with self._lock:
                self._db.execute("UPDATE runs SET position = ? WHERE id = ?", (queue[j].position, queue[i].id))
                self._db.execute("UPDATE runs SET position = ? WHERE id = ?", (queue[i].position, queue[j].id))

    def option(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM options WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_option(self, key: str, value: str) -> None:
        self._query("INSERT INTO options (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()
