"""The results store: ``results.sqlite`` in the output folder, one row per run directory.

The run directories are the source of truth: each table cell writes its row as ``result.json``
into its own folder, and ``zoo results rebuild DIR`` remakes the store from them. The store is
an index for rendering, so several processes of one machine may write it at once: SQLite in WAL
mode with a busy timeout, and a file lock around each write (a cluster whose machines share only
the output folder may have no working SQLite locking over the network file system; there each
row still lands in its ``result.json``, and ``rebuild`` gathers them).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from filelock import FileLock

from zoo.errors import ResultsStoreError

STORE_NAME = "results.sqlite"
TIMEOUT_SECONDS = 60.0
COLUMNS = (
    "table_name",
    "scale",
    "cell",
    "domain",
    "method_label",
    "method",
    "seed",
    "train_size",
    "status",
    "config_hash",
    "metric_value",
    "recorded",
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY,
    table_name TEXT, scale TEXT, cell TEXT, domain TEXT, method_label TEXT, method TEXT,
    seed INTEGER, train_size INTEGER, status TEXT, config_hash TEXT, metric_value REAL, recorded REAL,
    row_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_table ON runs (table_name, scale);
"""


def store_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    return folder if folder.suffix == ".sqlite" else folder / STORE_NAME


class ResultsStore:
    """``ResultsStore(folder)``: open (creating if absent) ``folder/results.sqlite``."""

    def __init__(self, folder: str | os.PathLike, create: bool = True) -> None:
        self.path = store_path(folder)
        self.root = self.path.parent
        if not self.path.exists() and not create:
            raise ResultsStoreError(
                f"no results store at {self.path}; make one with `zoo reproduce` or `zoo results rebuild {self.root}`"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.path) + ".lock", timeout=TIMEOUT_SECONDS)
        with self.lock:
            self.connection = self._connect()

    def _corrupt(self, error: Exception) -> ResultsStoreError:
        corrupt = ResultsStoreError(
            f"the results store {self.path} cannot be read ({error}). The run directories are the source of truth: "
            f"remake the store with `zoo results rebuild {self.root}`"
        )
        corrupt.reason = str(error)  # what rebuild reports of a store it replaces
        return corrupt

    def _connect(self) -> sqlite3.Connection:
        # SQLite takes an empty file for an empty database, but every store this class made has its header
        # written before the lock is released: an empty one was truncated, and its rows are gone.
        if self.path.exists() and self.path.stat().st_size == 0:
            raise self._corrupt(ValueError("the file is empty"))
        created = not self.path.exists()
        if created:
            # SQLite would make it 0644 at most (its -wal and -shm files follow): made here it has the umask's
            # mode, so a group that shares the folder under umask 002 can write the store too.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            connection = sqlite3.connect(self.path, timeout=TIMEOUT_SECONDS, isolation_level=None)
            connection.execute(f"PRAGMA busy_timeout = {int(TIMEOUT_SECONDS * 1000)}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.executescript(SCHEMA)
            connection.execute("SELECT count(*) FROM runs").fetchone()
        except BaseException as error:
            if created and self.path.exists() and self.path.stat().st_size == 0:
                self.path.unlink()  # not left behind to pass for a truncated store
            if isinstance(error, sqlite3.DatabaseError):
                raise self._corrupt(error) from None
            raise
        return connection

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def key(self, row: dict[str, Any]) -> str:
        """The run directory relative to the store's folder when inside it, so a moved folder keeps its keys."""
        path = Path(row["run_dir"]).resolve()
        try:
            return path.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def add(self, row: dict[str, Any]) -> None:
        self.add_many([row])

    def add_many(self, rows: Iterable[dict[str, Any]]) -> int:
        values = []
        for row in rows:
            row = {**row, "recorded": row.get("recorded") or time.time()}
            values.append(
                (self.key(row), row.get("table"), *(row.get(c) for c in COLUMNS[1:]), json.dumps(row, default=str))
            )
        try:
            with self.lock:
                self.connection.execute("BEGIN IMMEDIATE")
                self.connection.executemany(
                    f"INSERT OR REPLACE INTO runs (run_key, {', '.join(COLUMNS)}, row_json) "
                    f"VALUES ({', '.join('?' * (len(COLUMNS) + 2))})",
                    values,
                )
                self.connection.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
            raise self._corrupt(error) from None
        return len(values)

    def rows(self, table: str | None = None, scale: str | None = None) -> list[dict[str, Any]]:
        query, arguments = "SELECT row_json FROM runs", []
        conditions = []
        if table is not None:
            conditions.append("table_name = ?")
            arguments.append(table)
        if scale is not None:
            conditions.append("scale = ?")
            arguments.append(scale)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        try:
            found = self.connection.execute(query + " ORDER BY run_key", arguments).fetchall()
        except sqlite3.DatabaseError as error:
            raise self._corrupt(error) from None
        return [json.loads(text) for (text,) in found]

    def entries(self) -> list[tuple[str, dict[str, Any]]]:
        """``(key, row)`` of every row; the key says where the run was (see :meth:`key`)."""
        try:
            found = self.connection.execute("SELECT run_key, row_json FROM runs ORDER BY run_key").fetchall()
        except sqlite3.DatabaseError as error:
            raise self._corrupt(error) from None
        return [(key, json.loads(text)) for key, text in found]


LATER_FIELDS = frozenset({"val_curve", "train_rows"})
"""Row fields derived from a run directory that older ``result.json`` files lack."""


def _result_row(directory: Path) -> dict[str, Any] | None:
    """A folder's ``result.json`` row, brought up to date when its run has changed status since; None without one."""
    from zoo.experiment import run_dir as runs
    from zoo.results.cells import read_result
    from zoo.results.rows import row_from_run

    row = read_result(directory)
    if row is None:
        return None
    row["run_dir"] = str(directory.resolve())  # the folder may have moved since
    if runs.is_run_dir(directory) and row.get("status") != runs.status(directory):
        row = {
            **row_from_run(directory, source="rebuild"),
            **{k: row[k] for k in ("table", "scale", "cell", "domain", "method_label", "metric") if k in row},
        }
    elif runs.is_run_dir(directory) and not LATER_FIELDS <= row.keys():
        # a result.json written before these fields existed: read them from the run, keep the rest as recorded
        current = row_from_run(directory, source="rebuild")
        row.update({k: current[k] for k in LATER_FIELDS - row.keys()})
    return row


def find_rows(folder: Path) -> Iterable[dict[str, Any]]:
    """Every row under ``folder``: a cell's ``result.json`` where there is one, else one made from the run
    directory (a run added with ``zoo results add`` keeps a ``result.json`` too)."""
    from zoo.experiment import run_dir as runs
    from zoo.results.cells import RESULT_FILE
    from zoo.results.rows import row_from_run

    seen: set[Path] = set()
    for path in sorted(folder.rglob(RESULT_FILE)):
        row = _result_row(path.parent)
        if row is not None:
            seen.add(path.parent.resolve())
            yield row
    for path in sorted(folder.rglob(runs.RUN_FILE)):
        directory = path.parent
        if directory.resolve() not in seen and runs.is_run_dir(directory) and ".superseded" not in directory.parts:
            yield row_from_run(directory, source="rebuild")


@dataclass(frozen=True)
class Rebuilt:
    """What :func:`rebuild` made, and what of the previous store it kept or dropped."""

    path: Path
    count: int
    """Rows in the new store."""
    kept: list[str] = field(default_factory=list)
    """Runs outside the folder that the previous store had (``zoo results add``), read again from their folders."""
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """``(run directory, why)`` for each run of the previous store that the new one does not have."""
    previous_unreadable: str | None = None
    """Why the previous store could not be read: then the runs it had from outside the folder are not known."""


def _why_dropped(directory: Path) -> str:
    from zoo.experiment import run_dir as runs

    if ".superseded" in directory.parts:
        return "it was superseded by a newer run of its cell"
    if not directory.exists():
        return "its folder no longer exists"
    if not runs.is_run_dir(directory):
        return "its folder has no readable result.json and is not a run directory (no config.yaml and run.json)"
    return "its folder could not be read as a run"


def _previous_entries(folder: Path) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    if not store_path(folder).exists():
        return [], None
    try:
        with ResultsStore(folder, create=False) as store:
            return store.entries(), None
    except ResultsStoreError as error:
        return [], getattr(error, "reason", str(error))


def rebuild(folder: str | os.PathLike) -> Rebuilt:
    """Remake ``folder/results.sqlite`` from the run directories under ``folder``, keeping the runs that the
    previous store had from outside ``folder`` (``zoo results add``) while their folders are there; every
    run of the previous store that is not kept is named, with the reason. The previous store is kept aside."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of runs")
    path = store_path(folder)
    previous, unreadable = _previous_entries(folder)
    with FileLock(str(path) + ".lock", timeout=TIMEOUT_SECONDS):
        if path.exists():
            aside = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            path.replace(aside)
            for suffix in ("-wal", "-shm"):
                extra = path.with_name(path.name + suffix)
                if extra.exists():
                    extra.replace(aside.with_name(aside.name + suffix))
    rows = [row for row in find_rows(folder) if ".superseded" not in Path(row["run_dir"]).parts]
    kept, dropped = [], []
    with ResultsStore(folder) as store:
        found = {store.key(row) for row in rows}
        for key, _ in previous:
            directory = Path(key) if Path(key).is_absolute() else store.root / key
            if key in found or store.key({"run_dir": directory}) in found:
                continue
            row = None
            if Path(key).is_absolute() and ".superseded" not in directory.parts:
                row = _result_row(directory) or _run_row(directory)
            if row is None:
                dropped.append((str(directory), _why_dropped(directory)))
                continue
            rows.append(row)
            found.add(store.key(row))
            kept.append(str(directory))
        count = store.add_many(rows)
    return Rebuilt(path, count, kept, dropped, unreadable)


def _run_row(directory: Path) -> dict[str, Any] | None:
    from zoo.experiment import run_dir as runs
    from zoo.results.rows import row_from_run

    return row_from_run(directory, source="rebuild") if runs.is_run_dir(directory) else None


def add_runs(folder: str | os.PathLike, run_dirs: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Add run directories (any status, zoo train's and zoo tune's too) to the store in ``folder``;
    each row is also written into its run directory, which stays the source of truth."""
    from zoo.experiment import run_dir as runs
    from zoo.results.cells import RESULT_FILE, read_result
    from zoo.results.rows import row_from_run

    rows = []
    for run_dir in map(Path, run_dirs):
        if not runs.is_run_dir(run_dir):
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml and run.json)")
        row = read_result(run_dir) or row_from_run(run_dir)
        runs.write_json(run_dir / RESULT_FILE, row)
        rows.append(row)
    with ResultsStore(folder) as store:
        store.add_many(rows)
    return rows
