"""The results table: one SQLite row per (case, setting, repeat, start), written as each task
ends.

Only the client writes (one connection, one commit per row), so a sweep killed at any moment
leaves every finished row on disk and no half row: SQLite commits are atomic. The primary key
makes a row exist exactly once; a retried task replaces its row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Self

__all__ = ["COLUMNS", "RESULTS_FILE", "ResultsDB", "open_results"]

RESULTS_FILE = "results.sqlite"

#: (column, SQL type) of the results table, in order.
COLUMNS = (
    ("case_name", "TEXT NOT NULL"),
    ("setting_id", "TEXT NOT NULL"),
    ("repeat", "INTEGER NOT NULL"),
    ("start", "INTEGER NOT NULL DEFAULT 0"),  # the frame tracking started from
    ("status", "TEXT NOT NULL"),  # ok | failed
    ("error", "TEXT"),
    ("setting", "TEXT"),  # JSON: the setting's values
    ("label", "TEXT"),  # its axis values, readable
    ("scanned_region", "TEXT"),
    ("dsc", "REAL"),
    ("hd95_mm", "REAL"),
    ("masd_mm", "REAL"),
    ("centre_distance_mm", "REAL"),
    ("relative_d98", "REAL"),
    ("n_frames_scored", "INTEGER"),
    ("n_frames", "INTEGER"),
    ("fallback_frames", "INTEGER"),  # frames not answered normally (runfolder.is_fallback)
    ("s_per_frame", "REAL"),  # mean tracker time per frame (frame 0 excluded)
    ("task_s", "REAL"),  # wall time of the task
    ("cpu_s", "REAL"),  # CPU time of the worker process during the task
    ("itk_threads", "INTEGER"),  # ITK's global default thread count inside the task
    ("attempts", "INTEGER"),  # times a process started this run (> 1: retried)
    ("worker", "TEXT"),
    ("run_dir", "TEXT"),
    ("finished_at", "REAL"),  # unix time the client recorded the row
)
_NAMES = tuple(name for name, _ in COLUMNS)
_KEY = ("case_name", "setting_id", "repeat", "start")


class ResultsDB:
    """The results table of one sweep (a thin wrapper over a sqlite3 connection).

    Parameters
    ----------
    path : Path
        The SQLite file; created with its tables when missing.
    read_only : bool
        Open an existing file only to read it (reports): nothing is created or migrated, and
        a table from before starts is read with its rows as start 0.
    """

    def __init__(self, path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        # The client is the only writer; a generous timeout covers a report reading meanwhile.
        if read_only:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self.connection = sqlite3.connect(uri, uri=True, timeout=30)
        else:
            self.connection = sqlite3.connect(self.path, timeout=30)
        self.connection.row_factory = sqlite3.Row
        if not read_only:
            with self.connection:
                self._create_results()
                self.connection.execute(
                    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)"
                )
        found = {r[1] for r in self.connection.execute("PRAGMA table_info(results)")}
        # What the queries read: a table from before starts, read as it is, has rows of start 0.
        self._table = "results" if "start" in found else "(SELECT *, 0 AS start FROM results)"

    def _create_results(self) -> None:
        """The results table; one written before starts existed gets them (all 0) in its key."""
        found = [r[1] for r in self.connection.execute("PRAGMA table_info(results)")]
        migrating = bool(found) and "start" not in found
        if migrating:  # one transaction: a crash leaves the old table
            self.connection.execute("BEGIN")
            self.connection.execute("ALTER TABLE results RENAME TO results_before_starts")
        columns = ", ".join(f'"{name}" {kind}' for name, kind in COLUMNS)
        self.connection.execute(
            f"CREATE TABLE IF NOT EXISTS results ({columns}, PRIMARY KEY ({', '.join(_KEY)}))"
        )
        if migrating:
            names = ", ".join(f'"{name}"' for name in found)
            self.connection.execute(
                f"INSERT INTO results ({names}) SELECT {names} FROM results_before_starts"
            )
            self.connection.execute("DROP TABLE results_before_starts")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    def record(self, row: dict) -> None:
        """Insert or replace one row and commit it (durable before the next task is counted)."""
        row = dict(row)
        row.setdefault("finished_at", time.time())
        if isinstance(row.get("setting"), dict):
            row["setting"] = json.dumps(row["setting"], sort_keys=True)
        values = [row.get(name) for name in _NAMES]
        marks = ", ".join("?" * len(_NAMES))
        names = ", ".join(f'"{name}"' for name in _NAMES)
        with self.connection:
            self.connection.execute(
                f"INSERT OR REPLACE INTO results ({names}) VALUES ({marks})", values
            )

    def rows(self, status: str | None = None) -> list[dict]:
        """All rows (optionally only one status), the setting parsed back into a dict."""
        query, args = f"SELECT * FROM {self._table}", ()
        if status:
            query, args = query + " WHERE status = ?", (status,)
        query += f" ORDER BY {', '.join(_KEY)}"
        rows = [dict(r) for r in self.connection.execute(query, args)]
        for row in rows:
            row["setting"] = json.loads(row["setting"]) if row["setting"] else {}
        return rows

    def keys(self, statuses=("ok", "failed")) -> set[tuple[str, str, int, int]]:
        """Primary keys (case, setting id, repeat, start) of the rows with one of ``statuses``."""
        marks = ", ".join("?" * len(statuses))
        query = f"SELECT {', '.join(_KEY)} FROM {self._table} WHERE status IN ({marks})"
        return {tuple(r) for r in self.connection.execute(query, tuple(statuses))}

    def count(self) -> int:
        return int(self.connection.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def set_meta(self, key: str, value) -> None:
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    def meta(self, key: str, default=None):
        found = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(found[0]) if found else default


def open_results(results_dir) -> ResultsDB:
    """Open the results table of an existing sweep folder to read it (for reports)."""
    path = Path(results_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{results_dir} holds no sweep results ({RESULTS_FILE} is missing); pass the "
            "folder given to `regtrack sweep SPEC --out RESULTS`."
        )
    return ResultsDB(path, read_only=True)
