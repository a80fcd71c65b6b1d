"""The cells of a table at a scale: one resolved run configuration each, with its folder and hash.

A cell's folder is ``<out>/<table>/<scale>/<domain>/<method>[/n<size>]/seed<seed>``; it is a normal
run directory (``zoo info`` reads it) plus ``result.json``, the cell's row of the results store.
The hash of the resolved configuration decides whether a finished cell still counts: a cell is
done when its folder holds a complete run (or an n/a verdict) made from the same configuration.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError
from zoo.results.spec import TableSpec, expand

RESULT_FILE = "result.json"


@dataclass
class Cell:
    table: str
    scale: str
    domain: str
    method_label: str
    method: str
    seed: int
    train_size: int | None
    recipe: str
    overrides: list[str]
    dir: str
    metric: str
    config_hash: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        size = f"/n{self.train_size}" if self.train_size is not None else ""
        return f"{self.domain}/{self.method_label}{size}/seed{self.seed}"

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_config(self):
        from zoo.experiment.config import validate

        return validate(self.config, f" (cell {self.id})")


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def config_hash(config_dict: dict[str, Any]) -> str:
    """sha256 of the resolved configuration (canonical JSON), first 16 hex digits.

    Null settings are left out: a resolved configuration names every field, and a null one means "off",
    so a field added later with a null default (``train.privacy``) leaves the hash of the runs made
    before it unchanged, and their records still count as done."""
    text = json.dumps(_without_nulls(config_dict), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _recipe_for(pattern: str, method: str, fallback: str) -> tuple[str, list[str]]:
    """The recipe of ``method`` in a domain; where there is none, the fallback method's with method.name changed."""
    from zoo.experiment.recipes import list_recipes

    recipe = pattern.format(method=method)
    if recipe in list_recipes():
        return recipe, []
    base = pattern.format(method=fallback)
    if base not in list_recipes():
        from zoo.experiment.recipes import find_recipe

        find_recipe(recipe)  # unknown recipe: the error lists close matches
    return base, [f"method.name={method}"]


def plan(spec: TableSpec, scale: str, out: Path) -> list[Cell]:
    """Every cell of ``spec`` at ``scale``, its configuration resolved (bad overrides fail here, before any run)."""
    from zoo.experiment.config import load_config

    entry = spec.scale(scale)
    seeds = entry.seeds if entry.seeds is not None else spec.seeds
    sizes = entry.train_sizes if entry.train_sizes is not None else spec.train_sizes
    cells = []
    for domain, domain_entry in spec.domains.items():
        domain_seeds = entry.domain_seeds.get(domain, seeds)
        for method in spec.method_entries():
            if entry.methods is not None and method.label not in entry.methods:
                continue
            recipe, switch = _recipe_for(domain_entry.recipe, method.method, domain_entry.fallback)
            for size in sizes:
                for seed in domain_seeds:
                    overrides = [
                        *switch,
                        *spec.overrides,
                        *domain_entry.overrides,
                        *entry.overrides,
                        *entry.domains.get(domain, []),
                        *method.overrides,
                        f"train.seed={seed}",
                    ]
                    if size is not None:
                        overrides.append(f"data.max_train_examples={size}")
                    overrides = [expand(item) for item in overrides]
                    cell = Cell(
                        spec.name,
                        scale,
                        domain,
                        method.label,
                        method.method,
                        seed,
                        size,
                        recipe,
                        overrides,
                        "",
                        domain_entry.metric,
                    )
                    cell.dir = str(out / spec.name / scale / cell.id)
                    try:
                        config = load_config(recipe, overrides).to_dict()
                    except ConfigError as error:
                        raise ConfigError(
                            f"table {spec.name}, cell {cell.id} ({recipe} {' '.join(overrides)}): {error}"
                        ) from None
                    cell.config, cell.config_hash = config, config_hash(config)
                    cells.append(cell)
    return cells


def shard(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Shard ``index`` (1-based) of ``count``: every count-th cell in table order, so shards are balanced and
    together hold each cell exactly once."""
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard {index}/{count}: write I/N with 1 <= I <= N, e.g. --shard 2/4")
    return cells[index - 1 :: count]


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 1, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: write I/N, e.g. --shard 2/4 for the second of four machines") from None
    shard([], index, count)  # range check
    return index, count


def read_result(cell_dir: Path) -> dict[str, Any] | None:
    path = cell_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def state(cell: Cell) -> str:
    """``done`` (complete, same configuration), ``n/a`` (the method does not apply, same configuration),
    ``resume`` (an unfinished run of the same configuration), ``stale`` (made from another configuration),
    ``failed`` (to be run again) or ``todo``."""
    from zoo.experiment import run_dir as runs

    path = cell.path
    result = read_result(path)
    if runs.is_run_dir(path):
        from zoo.experiment.yaml_files import read_yaml

        same = config_hash(read_yaml(path / runs.CONFIG_FILE)) == cell.config_hash
        if not same:
            return "stale"
        status = runs.status(path)
        if status == "complete":
            return "done"
        return "failed" if status == "failed" else "resume"
    if result is not None and result.get("config_hash") == cell.config_hash and result.get("status") == "n/a":
        return "n/a"
    if result is not None and result.get("status") == "failed":
        return "failed"
    return "todo"
