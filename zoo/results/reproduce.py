"""``reproduce(table, scale)``: run every cell of a result table that is not done yet, and store its row.

Each cell is a normal run made through :func:`zoo.experiment.run`. A cell already complete with the
same resolved configuration is skipped, so an interrupted or extended table resumes; an unfinished
run of the same configuration is resumed from its checkpoint. A failing cell is recorded with its
error and the others go on; a method that does not apply to a domain's backbone (a ``ConfigError``
while the method is applied) is recorded as ``n/a`` with the reason. Ctrl-C marks the running cell
``interrupted`` (the rerun resumes it) and stops.

Executors: ``local`` runs cells in this process (``jobs=1``) or in ``jobs`` worker processes;
``slurm`` submits them as one submitit job array. ``shard=(i, n)`` takes every n-th cell, so n
machines sharing only the output folder split a table between them.
"""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from zoo.errors import ConfigError, ResultsStoreError
from zoo.results import cells as cell_plan
from zoo.results.cells import RESULT_FILE, Cell
from zoo.results.spec import load_table

SUPERSEDED = ".superseded"


@dataclass
class Summary:
    table: str
    scale: str
    out: Path
    cells: list[Cell]
    states: dict[str, str]
    """Cell id -> state before this call (done, n/a, resume, stale, failed, todo)."""
    outcomes: dict[str, str] = field(default_factory=dict)
    """Cell id -> what happened in this call (complete, failed, n/a, skipped, submitted, interrupted)."""
    seconds: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for value in self.outcomes.values() if value == outcome)


def _write_result(cell_dir: Path, row: dict[str, Any]) -> None:
    from zoo.experiment.run_dir import write_json

    write_json(cell_dir / RESULT_FILE, row)


def _store(out: Path, row: dict[str, Any], say: Callable[[str], None]) -> None:
    from zoo.results.store import ResultsStore

    try:
        with ResultsStore(out) as store:
            store.add(row)
    except (ResultsStoreError, OSError) as error:  # the row is safe in result.json; the index can be remade
        say(
            f"warning: row of {row.get('cell')} not added to the store ({error}); it is in {row['run_dir']}/{RESULT_FILE}"
        )


def run_cell(cell: dict[str, Any], out: str, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one cell (unless done) and return its row; written to ``result.json`` and to the store.

    A plain function of plain data, so that worker processes and submitit jobs can run it."""
    from zoo.experiment import run_dir as runs
    from zoo.experiment.runner import RunInterrupted, run
    from zoo.results.rows import cell_row, row_from_run

    say = say or (lambda _message: None)
    coordinates = Cell(**cell)
    path, out_path = coordinates.path, Path(out)
    state = cell_plan.state(coordinates)
    if state in ("done", "n/a"):
        existing = cell_plan.read_result(path)
        if (
            existing is None
            or existing.get("config_hash") != coordinates.config_hash
            or existing.get("status") != "complete"
        ):
            if state == "done":
                existing = row_from_run(path, cell, source="reproduce")
                _write_result(path, existing)
                _store(out_path, existing, say)
        return {**(existing or {}), "outcome": "skipped"}
    if state == "stale":  # made from another configuration: kept aside, not overwritten
        aside = (
            out_path
            / SUPERSEDED
            / f"{coordinates.table}-{coordinates.scale}-{coordinates.id.replace('/', '-')}-{int(time.time())}"
        )
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), aside)
        say(f"{coordinates.id}: configuration changed; the old run moved to {aside}")
    if not runs.is_run_dir(path):
        (path / RESULT_FILE).unlink(missing_ok=True)
    resume = runs.is_run_dir(path)
    command = (
        f"zoo reproduce {coordinates.table} --scale {coordinates.scale} --out {out}  "
        f"# cell {coordinates.id}: {coordinates.recipe} {' '.join(coordinates.overrides)}"
    )
    try:
        run(coordinates.run_config(), out=path, resume=resume, command=command, name=coordinates.recipe, log=None)
        row = row_from_run(path, cell, source="reproduce")
    except RunInterrupted:
        if runs.is_run_dir(path):
            row = row_from_run(path, cell, source="reproduce")
            _write_result(path, row)
            _store(out_path, row, say)
        raise
    except ConfigError as error:
        if runs.is_run_dir(path):  # the run had started: a failure, not a method that does not apply
            row = row_from_run(path, cell, source="reproduce")
        else:
            row = cell_row(cell, "n/a", str(error))
    except Exception as error:  # recorded; the table goes on
        if runs.is_run_dir(path):
            row = row_from_run(path, cell, source="reproduce")
            row["status"] = "failed"
        else:
            row = cell_row(cell, "failed", "")
        row["error"] = f"{type(error).__name__}: {error}"
        row["traceback"] = traceback.format_exc(limit=-8)
    path.mkdir(parents=True, exist_ok=True)
    _write_result(path, row)
    _store(out_path, row, say)
    return {**row, "outcome": row["status"]}


def plan_table(
    table: str, scale: str, out: str | Path, shard: str | None = None
) -> tuple[list[Cell], dict[str, str], str]:
    spec = load_table(table)
    cells = cell_plan.plan(spec, scale, Path(out))
    index, count = cell_plan.parse_shard(shard)
    cells = cell_plan.shard(cells, index, count)
    return cells, {cell.id: cell_plan.state(cell) for cell in cells}, spec.name


def _describe(row: dict[str, Any]) -> str:
    outcome = row.get("outcome")
    if outcome == "complete":
        value = row.get("metric_value")
        shown = f"{row.get('metric')} {value:.4f}" if isinstance(value, float) else "no metric"
        return f"complete, {shown} ({row.get('metric_split')}), {row.get('train_seconds') or 0:.1f}s"
    if outcome in ("failed", "n/a"):
        return f"{outcome}: {str(row.get('error') or '').splitlines()[0][:160] if row.get('error') else ''}"
    return str(outcome)


def reproduce(
    table: str,
    scale: str = "tiny",
    out: str | Path = "results",
    jobs: int = 1,
    executor: str = "local",
    shard: str | None = None,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
    slurm: dict[str, Any] | None = None,
    wait: bool = True,
) -> Summary:
    """Run the cells of ``table`` at ``scale`` that are not done; see the module docstring."""
    started = time.perf_counter()
    out = Path(out)
    cells, states, name = plan_table(table, scale, out, shard)
    summary = Summary(name, scale, out, cells, states)
    if dry_run:
        return summary
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs} must be >= 1")
    pending = [cell for cell in cells if states[cell.id] not in ("done", "n/a")]
    for cell in cells:
        if states[cell.id] in ("done", "n/a"):
            summary.outcomes[cell.id] = "skipped"
    if executor == "slurm":
        from zoo.results.cluster import submit

        submit(pending, out, summary, say, slurm or {}, wait, run_cell)
    elif executor == "local":
        _run_local(pending, out, jobs, summary, say)
    else:
        raise ConfigError(f"--executor {executor!r}: choose local or slurm")
    summary.seconds = time.perf_counter() - started
    return summary


def _progress(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cell", dynamic_ncols=True, desc="cells")


def _run_local(pending: list[Cell], out: Path, jobs: int, summary: Summary, say: Callable[[str], None]) -> None:
    from zoo.experiment.runner import RunInterrupted

    bar = _progress(len(pending))
    report = lambda message: bar.write(message)  # noqa: E731  (messages above the bar, not through it)
    try:
        if jobs == 1:
            for cell in pending:
                bar.set_postfix_str(cell.id, refresh=True)
                try:
                    row = run_cell(cell.to_dict(), str(out), report)
                except RunInterrupted:
                    summary.outcomes[cell.id] = "interrupted"
                    report(f"{cell.id}: interrupted (rerun the same command to resume it)")
                    raise
                summary.outcomes[cell.id] = row["outcome"]
                report(f"{cell.id}: {_describe(row)}")
                bar.update(1)
            return
        _run_pool(pending, out, jobs, summary, report, bar)
    finally:
        bar.close()


def _run_pool(pending, out, jobs, summary, report, bar) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from zoo.experiment.runner import RunInterrupted

    # spawn: a fresh interpreter per worker (no forked torch threads); Ctrl-C reaches the workers too
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, cell.to_dict(), str(out)): cell for cell in pending}
        try:
            for future in as_completed(futures):
                cell = futures[future]
                try:
                    row = future.result()
                except (RunInterrupted, KeyboardInterrupt):
                    summary.outcomes[cell.id] = "interrupted"
                    continue
                except Exception as error:  # a worker that died (killed for memory, say)
                    row = {"outcome": "failed", "error": f"{type(error).__name__}: {error}"}
                summary.outcomes[cell.id] = row["outcome"]
                report(f"{cell.id}: {_describe(row)}")
                bar.update(1)
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
