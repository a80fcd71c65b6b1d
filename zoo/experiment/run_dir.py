"""The run directory: what ``zoo train`` leaves behind, written so that nothing is ever half-written.

::

    runs/vision/medical-lora/
      config.yaml         the resolved configuration (recipe + defaults + overrides), written first
      run.json            status (running / complete / failed / interrupted), command, timings; once
                          complete, the whole run record (zoo.experiment.record.RunRecord)
      metrics.jsonl, tensorboard events, checkpoints    written by the trainer while it runs
      adapter/            the final adapter (zoo.peft.save_adapter: adapter_config.json + safetensors)
      eval_results.json   validation metrics at the best step and the test metrics
      predictions/test.npz  the test outputs row by row (zoo.experiment.predictions), for paired tests;
                          val.npz instead, at the best step, where there is no test split
      README.md           the model card: metrics, trainable parameters, the command that made it

Each file is written to a temporary name and renamed into place; ``run.json`` says
``complete`` only after every final file exists. A killed run keeps its checkpoints and
``status: running``; ``zoo train ... --resume`` carries it on.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from typing import Any

from zoo import __version__
from zoo.errors import ConfigError
from zoo.experiment.config import RunConfig
from zoo.experiment.record import RECORD_VERSION, RunRecord, dump_record, parse_record
from zoo.experiment.yaml_files import read_yaml
from zoo.files import atomic_write_text

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
EVAL_FILE = "eval_results.json"
CARD_FILE = "README.md"
ADAPTER_DIR = "adapter"
RUNS_ROOT = Path("runs")


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON ({error})") from None


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# -- choosing the folder -----------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / RUN_FILE).is_file()


PUBLISHED_ENTRY_FILE = "entry.json"
"""Beside a pulled adapter's files: the hub's index entry they were verified against (see zoo.hub.pull)."""


def is_published_adapter(path: Path) -> bool:
    """A folder of a hub entry (in a hub, or pulled into the cache): ``config.yaml`` and ``adapter/``, no run.json."""
    return (
        (path / CONFIG_FILE).is_file()
        and (path / ADAPTER_DIR / "adapter_config.json").is_file()
        and not (path / RUN_FILE).exists()
    )


def published_record(path: Path) -> RunRecord:
    """What a run.json would say of a published adapter, from its index entry when it has one."""
    from zoo.experiment.record import BackboneRecord, DataRecord, ParameterCounts, TaskRecord

    entry = read_json(path / PUBLISHED_ENTRY_FILE)
    task, backbone, method = entry.get("task") or {}, entry.get("backbone") or {}, entry.get("method") or {}
    trainable = method.get("trainable_parameters")
    return RunRecord(
        status="complete",
        published=f"{entry['name']}@{entry['version']}" if entry.get("name") else None,
        recipe=entry.get("recipe"),
        command=entry.get("command"),
        task=TaskRecord(
            kind=task.get("kind"),
            main_metric=task["main_metric"],
            num_outputs=task.get("num_outputs"),
            labels=task.get("labels"),
        )
        if task.get("main_metric")
        else None,
        backbone=BackboneRecord(
            name=backbone["name"], domain=entry.get("domain"), fingerprint=backbone.get("fingerprint")
        )
        if backbone.get("name")
        else None,
        data=DataRecord(name=entry["dataset"]["name"]) if (entry.get("dataset") or {}).get("name") else None,
        parameters=ParameterCounts(trainable=trainable) if trainable is not None else None,
    )


def read_record(path: Path) -> RunRecord:
    """``run.json`` of a run directory, typed (an empty record when there is none yet)."""
    return parse_record(read_json(path / RUN_FILE), path / RUN_FILE)


def write_record(path: Path, record: RunRecord) -> None:
    write_json(path / RUN_FILE, dump_record(record))


def recorded_num_outputs(path: Path) -> int | None:
    """The task head's size a run recorded (run.json), or a published adapter's entry (entry.json)."""
    if (path / RUN_FILE).is_file():
        return read_record(path).num_outputs
    return published_record(path).num_outputs


def status(path: Path) -> str:
    return read_json(path / RUN_FILE).get("status", "unknown")


def _numbered(base: Path) -> list[Path]:
    """``base``, ``base-2``, ``base-3``, ... that exist."""
    found = [base] if base.exists() else []
    found += sorted(
        (p for p in base.parent.glob(f"{base.name}-*") if p.name[len(base.name) + 1 :].isdigit()),
        key=lambda p: int(p.name[len(base.name) + 1 :]),
    )
    return found


def default_base(recipe_name: str, config: RunConfig) -> Path:
    return RUNS_ROOT / ("tiny" if config.tiny else "") / recipe_name


def choose_run_dir(out: Path | None, recipe_name: str, config: RunConfig, resume: bool) -> Path:
    """Where a run goes. ``--out DIR`` is used as given (an existing run there needs ``--resume``);
    without it: ``runs/<recipe>`` (``runs/tiny/<recipe>`` at scale=tiny), then ``-2``, ``-3``, ...
    for a new run, and the latest unfinished one of those for ``--resume``."""
    if out is not None:
        out = Path(out)
        if resume:
            if not is_run_dir(out):
                raise ConfigError(f"--resume: {out} holds no zoo run ({CONFIG_FILE} and {RUN_FILE}); nothing to resume")
            return out
        if out.exists() and any(out.iterdir()):
            what = f"a {status(out)} run" if is_run_dir(out) else "files"
            raise ConfigError(
                f"--out {out} already holds {what}; pass --resume to continue it, or choose an empty folder"
            )
        return out
    base = default_base(recipe_name, config)
    existing = [p for p in _numbered(base) if is_run_dir(p)]
    if resume:
        unfinished = [p for p in existing if status(p) != "complete"]
        if not unfinished:
            raise ConfigError(
                f"--resume: no unfinished run of {recipe_name} under {base.parent} "
                f"({len(existing)} complete); pass --out DIR to name the run to resume"
            )
        return max(unfinished, key=lambda p: (p / RUN_FILE).stat().st_mtime)
    if not base.exists():
        return base
    number = 2
    while (candidate := base.parent / f"{base.name}-{number}").exists():
        number += 1
    return candidate


def check_resume_config(run_dir: Path, config: RunConfig) -> None:
    """A resumed run must use the configuration it started with, or its result would mean nothing."""
    saved = read_yaml(run_dir / CONFIG_FILE)
    now_config = config.to_dict()
    differences = []
    for section in now_config:
        before, after = saved.get(section), now_config[section]
        if isinstance(after, dict) and isinstance(before, dict):
            for key in sorted(set(before) | set(after)):
                if before.get(key) != after.get(key):
                    differences.append(f"{section}.{key}: {before.get(key)!r} in the run, {after.get(key)!r} now")
        elif before != after:
            differences.append(f"{section}: {before!r} in the run, {after!r} now")
    if differences:
        raise ConfigError(
            f"--resume: the configuration differs from the one {run_dir} started with ({'; '.join(differences[:5])}). "
            f"Resume with the same recipe and overrides, or start a new run"
        )


# -- writing -----------------------------------------------------------------------------
def start(run_dir: Path, config: RunConfig, recipe: str, command: str, resume: bool) -> None:
    """Write the resolved config (new runs) and mark the run as running."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = read_json(run_dir / RUN_FILE) if resume else {}
    if not resume:
        atomic_write_text(run_dir / CONFIG_FILE, f"# resolved configuration of {recipe}\n" + config.to_yaml())
        record = {
            "record_version": RECORD_VERSION,
            "recipe": recipe,
            "command": command,
            "started": now(),
            "zoo_version": __version__,
        }
    record.update(status="running", pid=os.getpid(), host=socket.gethostname(), updated=now())
    if resume:
        record.setdefault("resumes", []).append({"command": command, "at": now()})
    record.pop("error", None)
    write_json(run_dir / RUN_FILE, record)


def mark(run_dir: Path, state: str, **fields: Any) -> None:
    record = read_json(run_dir / RUN_FILE)
    record.update(status=state, updated=now(), **fields)
    write_json(run_dir / RUN_FILE, record)


def read_config(run_dir: Path) -> RunConfig:
    from zoo.experiment.config import validate

    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a zoo run directory: it has no {CONFIG_FILE}")
    return validate(read_yaml(run_dir / CONFIG_FILE), f" in {run_dir / CONFIG_FILE}")


def update_eval_results(run_dir: Path, split: str, metrics: dict[str, float], **fields: Any) -> dict[str, Any]:
    results = read_json(run_dir / EVAL_FILE)
    results[split] = {"metrics": metrics, **fields}
    write_json(run_dir / EVAL_FILE, results)
    return results


def resume_command(command: str, run_dir: Path) -> str:
    """The command that continues an unfinished run."""
    import shlex

    words = [w for w in shlex.split(command) if w != "--resume"]
    if "--out" not in words and not any(w.startswith("--out=") for w in words):
        words += ["--out", str(run_dir)]
    return shlex.join(words + ["--resume"])
