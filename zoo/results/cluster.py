"""``--executor slurm``: the pending cells of a table as one Slurm job array, through submitit.

Each array task runs :func:`zoo.results.reproduce.run_cell` on one cell and writes its run directory,
``result.json`` and store row into the shared output folder; submitit's logs and pickles go to
``<out>/.submitit``. ``slurm`` options are submitit's ``update_parameters`` keywords (``slurm_partition``,
``timeout_min``, ``gpus_per_node``, ``cpus_per_task``, ``slurm_array_parallelism``, ...). The
``cluster`` option picks submitit's executor: ``slurm`` (default), or ``local`` / ``debug`` to try a
table's array on one machine (``debug`` runs the tasks in this process, which the tests use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from zoo.errors import ConfigError

DEFAULTS = {"timeout_min": 240, "cpus_per_task": 8, "gpus_per_node": 1, "slurm_array_parallelism": 32}


def submit(
    pending: list,
    out: Path,
    summary,
    say: Callable[[str], None],
    options: dict[str, Any],
    wait: bool,
    run_cell: Callable[..., dict[str, Any]],
) -> None:
    """``run_cell(cell_dict, out)`` is what each array task runs (zoo.results.reproduce.run_cell)."""
    import submitit

    options = dict(options)
    cluster = options.pop("cluster", "slurm")
    if not pending:
        return
    executor = submitit.AutoExecutor(folder=str(out / ".submitit" / "%j"), cluster=cluster)
    # options of other clusters (slurm_partition under cluster=debug) are ignored by submitit
    parameters = {**(DEFAULTS if cluster == "slurm" else {}), **options}
    try:
        executor.update_parameters(name=f"zoo-{summary.table}", **parameters)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--slurm options: {error}") from None
    jobs = executor.map_array(run_cell, [cell.to_dict() for cell in pending], [str(out)] * len(pending))
    say(
        f"submitted {len(jobs)} cells of {summary.table} as job array {jobs[0].job_id.split('_')[0]} "
        f"(logs in {out / '.submitit'})"
    )
    for cell in pending[: len(jobs)]:
        summary.outcomes[cell.id] = "submitted"
    if not wait:
        say(f"when it is done: zoo results table {summary.table} --scale {summary.scale} --out {out}")
        return
    for cell, job in zip(pending, jobs):
        try:
            row = job.result()
            summary.outcomes[cell.id] = row["outcome"]
        except Exception as error:  # the task died outside run_cell (time limit, node failure)
            summary.outcomes[cell.id] = "failed"
            say(
                f"{cell.id}: job {job.job_id} failed: {str(error).strip().splitlines()[-1] if str(error).strip() else error}"
            )
