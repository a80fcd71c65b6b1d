"""What happens to trials that did not finish: killed ones are failed, failed ones retried once.

A process killed while it ran a trial (SIGKILL, a lost machine) leaves the trial RUNNING in the
journal for ever. Each trial records the machine and the process that runs it, so the next start
on that machine sees the process is gone, marks the trial failed and queues it again. A failed
trial's values are queued once more (``study.enqueue_trial``), with its run directory, which the
retry resumes from its newest checkpoint; a retry that fails too is not queued again.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from zoo.errors import DataError, DownloadError, PretrainedUnavailable

# Failures that do not depend on the searched values (data or weights missing, no network):
# every other trial would fail the same way, so the study stops at the first one.
ENVIRONMENT_ERRORS = (DataError, DownloadError, PretrainedUnavailable)
SAME_FAILURES_TO_STOP = 3
"""A study also stops when this many trials in a row fail with the same message."""

RETRY_OF = "retry_of"
RUN_DIR = "run_dir"
HOST = "host"
PID = "pid"


class TrialsFailing(RuntimeError):
    """Trials fail for a reason that no other values would change; the message says what to fix."""


def owner() -> dict[str, object]:
    """The user attributes that name the process running a trial."""
    return {HOST: socket.gethostname(), PID: os.getpid()}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _recorded_owner(trial: FrozenTrial) -> tuple[str | None, int | None]:
    host, pid = trial.user_attrs.get(HOST), trial.user_attrs.get(PID)
    if host is None and trial.user_attrs.get(RUN_DIR):  # a trial that recorded only its run's run.json
        from zoo.experiment import run_dir as runs

        record = runs.read_json(Path(trial.user_attrs[RUN_DIR]) / runs.RUN_FILE)
        host, pid = record.get("host"), record.get("pid")
    return host, pid


def abandoned(trial: FrozenTrial) -> bool:
    """A RUNNING trial whose process, on this machine, no longer exists.

    Trials run on another machine, or by no recorded process, are left alone: nothing here can
    tell whether they still run.
    """
    if trial.state != TrialState.RUNNING:
        return False
    host, pid = _recorded_owner(trial)
    if host != socket.gethostname() or not pid or pid == os.getpid():
        return False
    return not _process_alive(int(pid))


def fail_abandoned(study: optuna.Study, say: Callable[[str], None]) -> list[int]:
    """Mark the trials of killed processes failed; their numbers."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if abandoned(trial):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            _, pid = _recorded_owner(trial)
            say(f"  trial {trial.number}: its process {pid} is gone (killed?); marked failed")
            failed.append(trial.number)
        elif trial.state == TrialState.RUNNING:
            host, pid = _recorded_owner(trial)
            where = f"process {pid} on {host}" if host else "a process that recorded no id"
            say(f"  trial {trial.number} is running in {where}; left to it")
    return failed


def queue_retries(study: optuna.Study, keys: set[str], say: Callable[[str], None]) -> list[int]:
    """Queue each failed trial's values once more; the numbers of the failed trials queued."""
    trials = study.get_trials(deepcopy=False)
    retried = {trial.user_attrs[RETRY_OF] for trial in trials if RETRY_OF in trial.user_attrs}
    queued = []
    for trial in trials:
        if trial.state != TrialState.FAIL:
            continue
        first = trial.user_attrs.get(RETRY_OF, trial.number)
        if first in retried or set(trial.params) != keys:  # retried already, or it failed before its values
            continue
        attrs = {RETRY_OF: first}
        if trial.user_attrs.get(RUN_DIR):
            attrs[RUN_DIR] = trial.user_attrs[RUN_DIR]
        study.enqueue_trial(dict(trial.params), user_attrs=attrs)
        retried.add(first)
        queued.append(trial.number)
    if queued:
        say(
            f"  retrying failed trial{'s' if len(queued) > 1 else ''} {', '.join(map(str, queued))} with the same values"
        )
    return queued


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
