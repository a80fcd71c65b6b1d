"""What a hub gives, typed: ``index.json``, its entries, and each entry's reference predictions.

Everything here comes from a server zoo does not control, so it is parsed before any of it is
used: a missing or mistyped field is refused with a message that names the hub, the entry and the
field, instead of a ``KeyError`` deep in ``zoo predict``. Keys zoo does not know are ignored (a
newer zoo may add some); every key zoo reads is declared here, with its type. An entry's files
are POSIX paths inside its own folder, safetensors or metadata only, each with its size and sha256.

The ``config.yaml`` of a pulled entry is read by :func:`zoo.hub.pulled_config.read_pulled_config`:
zoo's own strict run-config model, plus what a hub may not set there (backbone options outside
the backbone's allow-list, paths).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Mapping

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from zoo.errors import HubError

SCHEMA_VERSION = 1
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]*/[a-z0-9][a-z0-9_.]*-[a-z0-9][a-z0-9_]*$")
"""``<domain>/<task>-<method>``, lowercase: ``text/agnews-lora``."""
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
FINGERPRINT_PATTERN = r"^sha256:[0-9a-f]{64}$"
ADAPTER_FILES = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors")
ALLOWED_SUFFIXES = (".json", ".safetensors", ".yaml", ".md")
"""What an entry may list: no pickles (``.bin``, ``.pt``, ``.pkl``), no code."""
MAX_FILE_BYTES = 8 << 30
MAX_REFERENCE_PREDICTIONS = 32
MAX_TRANSFORM_PARAMETERS = 16


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise HubError(f"adapter name {name!r} is not <domain>/<task>-<method> in lowercase (e.g. text/agnews-lora)")
    return name


def check_version(version: Any) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise HubError(f"version {version!r} must be 1-64 letters, digits, '.', '_' or '-' (e.g. 1 or 2024.06)")
    return version


def safe_relative_path(path: Any, where: str) -> str:
    """A POSIX relative path that stays inside its folder; anything else is refused."""
    where = f"{where}: " if where else ""
    if not isinstance(path, str) or not path:
        raise HubError(f"{where}file path {path!r} must be a non-empty string")
    pure = PurePosixPath(path)
    if "\\" in path or "\x00" in path or pure.is_absolute() or re.match(r"^[A-Za-z]:", path):
        raise HubError(f"{where}file path {path!r} is absolute; an entry may only name files inside its own folder")
    if any(part in ("..", ".", "") for part in path.split("/")):
        raise HubError(f"{where}file path {path!r} contains '..', '.' or an empty part; refused")
    return pure.as_posix()


def _as_value_error(check, *args):
    """Run one of the checks above inside a pydantic validator (which reports ValueError)."""
    try:
        return check(*args)
    except HubError as error:
        raise ValueError(str(error)) from None


class HubModel(BaseModel):
    """Strict types (``"8"`` is not an int), unknown keys ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


Text = Annotated[str, StringConstraints(min_length=1)]


class FileRecord(HubModel):
    path: str
    size: int = Field(ge=0, le=MAX_FILE_BYTES)
    sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN.pattern)]

    @field_validator("path")
    @classmethod
    def _safe(cls, path: str) -> str:
        path = _as_value_error(safe_relative_path, path, "")
        if not path.endswith(ALLOWED_SUFFIXES):
            raise ValueError(
                f"file {path!r} is not allowed; a hub serves only {', '.join(ALLOWED_SUFFIXES)} files "
                f"(weights as safetensors, never pickles)"
            )
        return path


class TaskInfo(HubModel):
    kind: Text
    num_outputs: int | None = Field(None, ge=1)
    labels: list[str] | None = None
    main_metric: str | None = None


class BackboneInfo(HubModel):
    name: Text
    fingerprint: Annotated[str, StringConstraints(pattern=FINGERPRINT_PATTERN)]
    """sha256 of the base weights the adapter was trained on (see :mod:`zoo.experiment.fingerprint`)."""
    source: str | None = None
    licence: str | None = None
    revision: str | None = None
    scale: Literal["default", "tiny"] | None = None
    local_copy: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class MethodInfo(HubModel):
    name: Text
    config: dict[str, Any] = Field(default_factory=dict)
    trainable_parameters: int | None = None


class SplitRecord(HubModel):
    split: str | None = None
    file: str | None = None
    rows: int | None = None
    rows_used: int | None = None
    selection: str | None = None
    sha256: str | None = None


class DatasetInfo(HubModel):
    name: Text
    licence: str | None = None
    splits: dict[str, SplitRecord] = Field(default_factory=dict)


class InputTransformInfo(HubModel):
    """What every input goes through before the model sees it: a transform registered with zoo, by name,
    with its parameters (never code). :func:`zoo.hub.pulled_config.entry_input_transform` checks the
    parameters as the transform allows them."""

    name: Text
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=MAX_TRANSFORM_PARAMETERS)


class MetricInterval(HubModel):
    """The main metric's interval on the split's rows (:func:`zoo.results.stats.row_interval`)."""

    metric: Text
    low: float
    high: float
    method: Text


class Comparison(HubModel):
    """The adapter's test metric against full fine-tuning on the same data (:mod:`zoo.hub.push_metrics`)."""

    method: Text
    seed: int | None = None
    metric: Text
    value: float | None = None
    difference: float
    low: float
    high: float
    p_value: float
    rows: int
    test: Text
    verdict: Literal["not separated", "better", "worse"]


class MetricRecord(HubModel):
    split: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    note: str | None = None
    examples: int | None = None
    interval: MetricInterval | None = None


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ClassOutput(_Output):
    label: str | int
    index: int
    scores: dict[str, float]


class ValueOutput(_Output):
    value: float


class TokenLabelsOutput(_Output):
    labels: list[str | int]


def _output_kind(value: Any) -> str:
    """Which output shape ``value`` (a dict being parsed, or a model being dumped) has."""
    keys = value if isinstance(value, dict) else type(value).model_fields if isinstance(value, BaseModel) else {}
    return "value" if "value" in keys else "labels" if "labels" in keys else "class"


PredictionOutput = Annotated[
    Annotated[ClassOutput, Tag("class")]
    | Annotated[ValueOutput, Tag("value")]
    | Annotated[TokenLabelsOutput, Tag("labels")],
    Discriminator(_output_kind),
]
"""``{"label", "index", "scores"}`` (classification), ``{"value"}`` (regression) or ``{"labels"}`` (per token)."""


class ReferencePrediction(HubModel):
    """One input and what ``Predictor.predict`` answered for it when the adapter was pushed."""

    input: Any
    output: PredictionOutput

    @field_validator("input")
    @classmethod
    def _json_value(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("a reference input is a string or a JSON value, not null")
        return value


class HubEntry(HubModel):
    """One published version of an adapter."""

    name: str
    version: str
    path: str
    files: list[FileRecord] = Field(min_length=1)
    domain: Text
    task: TaskInfo
    backbone: BackboneInfo
    method: MethodInfo
    dataset: DatasetInfo
    input_transform: InputTransformInfo | None = None
    """None: the model sees inputs as they are given."""
    metrics: dict[str, MetricRecord] = Field(default_factory=dict)
    licence: str | None = None
    published: str | None = None
    zoo_version: str | None = None
    recipe: str | None = None
    command: str | None = None
    reference_predictions: list[ReferencePrediction] | None = Field(None, max_length=MAX_REFERENCE_PREDICTIONS)
    compared_with: Comparison | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _as_value_error(check_name, name)

    @field_validator("version")
    @classmethod
    def _version(cls, version: str) -> str:
        return _as_value_error(check_version, version)

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        return _as_value_error(safe_relative_path, path, "")

    @model_validator(mode="after")
    def _files(self) -> HubEntry:
        seen = set()
        for item in self.files:
            if item.path in seen:
                raise ValueError(f"file {item.path!r} is listed twice")
            seen.add(item.path)
        missing = [f for f in ADAPTER_FILES if f not in seen]
        if missing:
            raise ValueError(f"the entry does not list {', '.join(missing)}; an adapter needs both")
        return self

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class AdapterRecord(HubModel):
    latest: str | None = None
    versions: dict[str, HubEntry] = Field(min_length=1)


class HubIndex(HubModel):
    schema_version: int = Field(ge=1)
    adapters: dict[str, AdapterRecord]


# -- parsing, with errors that name the hub, the entry and the field --------------------
def _describe(location: tuple[Any, ...], item: Mapping[str, Any]) -> str:
    field = ".".join(str(part) for part in location) or "the entry"
    if item["type"] == "missing":
        return f"field {field!r} is missing"
    message = str(item["msg"]).removeprefix("Value error, ")
    if item["type"] in ("value_error", "assertion_error"):
        return f"{field}: {message}" if location else message
    shown = repr(item.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"field {field!r}: {message} (got {shown})"


def _hub_error(error: ValidationError, where: str, in_index: bool) -> HubError:
    """One message per entry (``where: index entry NAME@VERSION: problem; problem``), at most three problems each."""
    problems: dict[str, list[str]] = {}
    for item in error.errors():
        location, place = tuple(item["loc"]), where
        if in_index and len(location) >= 4 and location[0] == "adapters" and location[2] == "versions":
            place, location = f"{where}: index entry {location[1]}@{location[3]}", location[4:]
        elif in_index and len(location) >= 2 and location[0] == "adapters":
            place, location = f"{where}: adapter {location[1]!r}", location[2:]
        found = problems.setdefault(place, [])
        if (message := _describe(location, item)) not in found:
            found.append(message)
    parts = []
    for place, found in problems.items():
        more = f" (and {len(found) - 3} more problems)" if len(found) > 3 else ""
        parts.append(f"{place}: {'; '.join(found[:3])}{more}")
    return HubError(" | ".join(parts[:3]) + (f" | and {len(parts) - 3} more entries" if len(parts) > 3 else ""))


def parse_entry(raw: Any, where: str) -> HubEntry:
    """One index entry, checked; ``where`` names the hub and the entry in errors."""
    if not isinstance(raw, dict):
        raise HubError(f"{where} is not a JSON object")
    try:
        return HubEntry.model_validate(raw)
    except ValidationError as error:
        raise _hub_error(error, where, in_index=False) from None


def parse_index_document(raw: Any, source: str) -> HubIndex:
    """A whole ``index.json`` (already JSON-decoded), checked, with every key agreeing with its entry."""
    if not isinstance(raw, dict) or not isinstance(raw.get("adapters"), dict):
        raise HubError(f"{source} is not a zoo hub index (an object with 'schema_version' and 'adapters')")
    version = raw.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise HubError(f"{source}: schema_version {version!r} is not a positive integer")
    if version > SCHEMA_VERSION:
        raise HubError(f"{source} uses index schema {version}; this zoo reads up to {SCHEMA_VERSION}: upgrade zoo")
    try:
        index = HubIndex.model_validate(raw)
    except ValidationError as error:
        raise _hub_error(error, source, in_index=True) from None
    for name, record in index.adapters.items():
        for key, entry in record.versions.items():
            place = f"{source}: index entry {name}@{key}"
            if entry.name != name:
                raise HubError(f"{place}: listed under {name!r} but names itself {entry.name!r}; refused")
            if entry.version != key:
                raise HubError(
                    f'{place}: listed as version {key!r} but says "version": {entry.version!r}; the two must agree '
                    f"(a pull of one would overwrite the other's cached copy). Refused: ask the hub's publisher to fix it"
                )
        if record.latest is not None and record.latest not in record.versions:
            raise HubError(
                f"{source}: adapter {name}: 'latest' is {record.latest!r}, which is not among its versions "
                f"({', '.join(record.versions)})"
            )
    return index
