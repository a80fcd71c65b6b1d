"""Run configuration: a recipe YAML plus ``key=value`` overrides, typed and validated.

A run has five sections, read top to bottom like the recipe that states them::

    backbone: {name, pretrained, options}            -> zoo.catalog.backbones.create_backbone
    data:     {name, root, options, splits, limits}  -> zoo.catalog.datasets.load_dataset
    task:     {kind, num_outputs, main_metric, ...}  -> a task builder (zoo.tasks.train_tasks)
    method:   {name, <options of that method>}      -> zoo.peft.apply
    train:    {<fields of zoo.train.TrainSettings>}  -> zoo.train.Trainer

plus ``description`` and ``scale`` (``default``: the pretrained backbone and the real data;
``tiny``: a small random-weight backbone, the dataset's synthetic fixture and the recipe's
``tiny:`` overrides, for a smoke run on a CPU). Recipe files may start with ``defaults:``,
a list of base files merged under them (see :mod:`zoo.experiment.recipes`).

Every value is type-checked (pydantic, strict: ``1`` is not a bool, ``"8"`` is not an int),
numbers must be finite anywhere in the config (``.nan`` and ``.inf`` would only fail inside the
run), and every error names the key, the bad value and what is allowed; an unknown key lists the
valid ones, closest first.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from zoo.errors import ConfigError
from zoo.experiment.yaml_files import dump_yaml, merge, parse_value

SCALES = ("default", "tiny")
SECTIONS = ("backbone", "data", "task", "method", "train")
FREE_FORM = ("options",)
"""Keys holding a dict passed through to a builder; their contents are checked by that builder."""
FILE_ONLY_KEYS = ("defaults", "tiny", "search")
"""Keys a recipe file may have that are consumed while reading it (not part of the resolved config)."""


# -- sections --------------------------------------------------------------------------
class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)


class BackboneConfig(Section):
    name: str = Field(description="A backbone from `zoo ls backbones`.")
    pretrained: bool | str = Field(
        True,
        description="true: the pretrained weights by their ecosystem name (downloaded or from the local cache); "
        "a path: a local checkpoint; false: random weights. Not used at scale=tiny.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to the backbone builder.")


class DataConfig(Section):
    name: str = Field(description="A dataset from `zoo ls datasets`.")
    root: str | None = Field(None, description="Data root; default $ZOO_DATA_DIR, else ~/.cache/zoo/data.")
    download: bool = Field(True, description="Download missing files from their canonical URL (checksum verified).")
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to the dataset loader.")
    train_split: str = Field("train", description="Split to train on.")
    val_split: str | None = Field("val", description="Split for model selection and early stopping; null: none.")
    test_split: str | None = Field("test", description="Split evaluated once at the end; null: none.")
    max_train_examples: int | None = Field(None, description="Train on a seeded random subset of this size.")
    max_eval_examples: int | None = Field(None, description="Evaluate on a seeded random subset of this size.")


class TaskConfig(Section):
    kind: str | None = Field(
        None, description="classification, regression, per_residue, retrieval, generation; null: the dataset's task."
    )
    num_outputs: int | None = Field(
        None, description="Head outputs; null: the dataset's class count (1 for regression)."
    )
    main_metric: str | None = Field(None, description="Metric for model selection; null: the task's own.")
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to the task builder.")


class MethodChoice(BaseModel):
    """The PEFT method and its options (checked against that method's config class)."""

    model_config = ConfigDict(frozen=True)
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


@functools.cache
def train_section_model() -> type[BaseModel]:
    """A strict pydantic model with the fields of :class:`zoo.train.TrainSettings` (one source of truth)."""
    from zoo.train.settings import TrainSettings

    hints = typing.get_type_hints(TrainSettings)
    fields: dict[str, Any] = {}
    for item in dataclasses.fields(TrainSettings):
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()  # type: ignore[misc]
        fields[item.name] = (hints[item.name], Field(default, description=item.metadata.get("help", "")))
    return create_model("TrainConfig", __base__=Section, **fields)


class RunConfig(Section):
    description: str = ""
    scale: Literal["default", "tiny"] = "default"
    backbone: BackboneConfig
    data: DataConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    method: MethodChoice
    train: BaseModel

    @property
    def tiny(self) -> bool:
        return self.scale == "tiny"

    def train_settings(self):
        from zoo.train.settings import TrainSettings

        return TrainSettings(**self.train.model_dump())

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as a recipe would state it (method options flat under method)."""
        return {
            "description": self.description,
            "scale": self.scale,
            "backbone": self.backbone.model_dump(),
            "data": self.data.model_dump(),
            "task": self.task.model_dump(),
            "method": {"name": self.method.name, **self.method.options},
            "train": self.train.model_dump(),
        }

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


_SECTION_MODELS: dict[str, type[BaseModel]] = {"backbone": BackboneConfig, "data": DataConfig, "task": TaskConfig}


def _section_model(name: str) -> type[BaseModel]:
    return train_section_model() if name == "train" else _SECTION_MODELS[name]


# -- keys ------------------------------------------------------------------------------
def method_option_types(method: str) -> dict[str, Any]:
    """``{option: type}`` of a PEFT method's config class (raises ConfigError for an unknown method)."""
    from zoo.peft import get_method

    config_class = get_method(method).config_class
    hints = typing.get_type_hints(config_class)
    return {item.name: hints[item.name] for item in dataclasses.fields(config_class)}


def valid_keys(section: str, method: str | None = None) -> list[str]:
    if section == "method":
        return ["name"] + sorted(method_option_types(method)) if method else ["name"]
    return list(_section_model(section).model_fields)


def _unknown(key: str, valid: list[str], where: str, prefix: str, name: str | None = None) -> ConfigError:
    name = name or key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else ""
    listed = ", ".join(prefix + v for v in valid)
    return ConfigError(f"unknown key {key!r}{where}.{hint} Valid keys: {listed}")


def check_keys(
    data: dict[str, Any], where: str = "", allow_file_keys: bool = False, method_name: str | None = None
) -> None:
    """Every key of ``data`` must exist in the schema; the error lists the valid ones, closest first.
    ``method_name`` is the method in force when ``data`` does not name one (overrides of its options)."""
    top = ["description", "scale", *SECTIONS] + (list(FILE_ONLY_KEYS) if allow_file_keys else [])
    for key, value in data.items():
        if key not in top:
            raise _unknown(key, top, where, "")
        if key == "tiny" and allow_file_keys:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"tiny{where} must be a mapping of overrides for scale=tiny, e.g. {{train: {{max_steps: 4}}}}"
                )
            check_keys(value, f" (under tiny{where and ','}{where})", method_name=method_name)
            continue
        if key not in SECTIONS or value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{key}{where} must be a mapping of keys ({', '.join(valid_keys(key))}), got {value!r}")
        method = value.get("name", method_name) if key == "method" else None
        if key == "method" and method is not None:
            if not isinstance(method, str):
                raise ConfigError(f"method.name={method!r}{where} must be a string: a method from `zoo ls methods`")
            try:
                valid = valid_keys("method", method)
            except ConfigError as error:
                raise ConfigError(f"method.name{where}: {error}") from None
        else:
            valid = valid_keys(key, method)
        for sub in value:
            if key == "method" and method is None and sub != "name":
                continue  # the method is chosen elsewhere (a base file or the command line); checked once merged
            if sub not in valid:
                raise _unknown(f"{key}.{sub}", valid, where, f"{key}.")


# -- overrides -------------------------------------------------------------------------
def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["method.r=16", "train.lr=3e-4"]`` -> ``{"method": {"r": 16}, "train": {"lr": 0.0003}}``."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override {pair!r} must look like KEY=VALUE, e.g. train.lr=3e-4 or method.r=16 "
                f"(top-level keys: description, scale, {', '.join(SECTIONS)})"
            )
        parts = key.split(".")
        if any(not part for part in parts):
            raise ConfigError(f"override key {key!r} has an empty part; write section.key, e.g. train.lr")
        if parts[0] in FILE_ONLY_KEYS:
            raise ConfigError(f"{parts[0]!r} can only be set in a recipe file, not from the command line")
        if len(parts) > 1 and parts[0] not in SECTIONS:
            raise _unknown(key, ["description", "scale", *SECTIONS], " (command line)", "", parts[0])
        if len(parts) > 3 or (len(parts) == 3 and parts[1] not in FREE_FORM):
            raise ConfigError(
                f"override key {key!r} is too deep: write section.key (e.g. method.r=16), or section.options.key "
                f"for builder options (e.g. backbone.options.img_size=384)"
            )
        target = nested
        for part in parts[:-1]:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} conflicts with an earlier override of {part!r}")
            target = node
        target[parts[-1]] = parse_value(text)
    return nested


def compose(recipe: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The recipe (its ``defaults`` already merged) with, for scale=tiny, its ``tiny:`` section, then the
    command-line overrides on top, so that an explicit override always wins."""
    recipe = dict(recipe)
    tiny = recipe.pop("tiny", None) or {}
    recipe.pop("defaults", None)
    recipe.pop("search", None)  # the search space of `zoo tune`, not part of a run
    scale = overrides.get("scale", recipe.get("scale", "default"))
    if scale == "tiny":
        recipe = merge(recipe, tiny)
    return merge(recipe, overrides)


# -- validation ------------------------------------------------------------------------
def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    text = text or str(annotation).replace("typing.", "")
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(text, text)


def _validation_error(error: ValidationError, prefix: str, model: type[BaseModel]) -> ConfigError:
    messages = []
    for item in error.errors():
        location = [str(part) for part in item["loc"] if not isinstance(part, int)]
        # unions report one error per member ("bool", "str"): keep the field, not the member
        field = location[0] if location else ""
        key = ".".join([prefix, field] if prefix else [field]) if field else prefix
        annotation = model.model_fields[field].annotation if field in model.model_fields else None
        if item["type"] == "missing":
            messages.append(f"{key} is required ({model.model_fields[field].description or _type_name(annotation)})")
        else:
            allowed = f"; expected {_type_name(annotation)}" if annotation is not None else ""
            messages.append(f"{key}={item.get('input')!r} is not allowed: {item['msg']}{allowed}")
    unique = list(dict.fromkeys(messages))
    return ConfigError("; ".join(unique[:3]))


def _validate_section(name: str, value: Any) -> BaseModel:
    model = _section_model(name)
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError as error:
        raise _validation_error(error, name, model) from None


def _validate_method(value: Any) -> MethodChoice:
    from pydantic import TypeAdapter

    from zoo.peft import get_method

    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError("method.name is required: a PEFT method from `zoo ls methods`, e.g. method.name=lora")
    options = {k: v for k, v in value.items() if k != "name"}
    name = value["name"]
    types = method_option_types(name)  # unknown method: ConfigError with close matches
    for key, option in options.items():
        try:
            TypeAdapter(
                types[key], config=ConfigDict(strict=True, arbitrary_types_allowed=True, allow_inf_nan=False)
            ).validate_python(option)
        except ValidationError as error:
            raise ConfigError(
                f"method.{key}={option!r} is not allowed for {name}: {error.errors()[0]['msg']}; "
                f"expected {_type_name(types[key])}"
            ) from None
    try:
        get_method(name).config_class.from_options(dict(options))
    except ConfigError as error:
        raise ConfigError(f"method: {error}") from None
    return MethodChoice(name=name, options=options)


def _non_finite(value: Any, key: str) -> tuple[str, float] | None:
    """The first ``(key, number)`` under ``value`` that is nan or infinite, options and lists included."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    if isinstance(value, dict):
        items = ((f"{key}.{name}" if key else str(name), item) for name, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{key}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    return next((found for found in (_non_finite(item, name) for name, item in items) if found), None)


def check_finite(data: dict[str, Any]) -> None:
    """Refuse nan and inf anywhere in a config: no setting means anything with them, and they would only
    surface inside the run (an optimizer error, a nan loss) after its directory was made."""
    found = _non_finite(data, "")
    if found is None:
        return
    key, value = found
    section, _, field = key.partition(".")
    help_text = ""
    if section in ("backbone", "data", "task", "train") and field in _section_model(section).model_fields:
        help_text = (_section_model(section).model_fields[field].description or "").rstrip(".")
    raise ConfigError(
        f"{key}={value!r} is not allowed: numbers in a config must be finite (nan and inf are refused); "
        f"give a finite number" + (f" ({key}: {help_text})" if help_text else "")
    )


def validate(data: dict[str, Any], where: str = "") -> RunConfig:
    """A composed configuration dict -> RunConfig, or ConfigError naming the first bad key."""
    check_keys(data, where)
    check_finite(data)
    for section in ("backbone", "data", "method"):
        if data.get(section) is None:
            raise ConfigError(
                f"section {section!r} is missing{where}; a recipe states backbone, data, method and train"
            )
    scale = data.get("scale", "default")
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed; choose one of {', '.join(SCALES)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"description={description!r} must be a string")
    sections = {name: _validate_section(name, data.get(name)) for name in ("backbone", "data", "task", "train")}
    method = _validate_method(data["method"])
    config = RunConfig.model_construct(description=description, scale=scale, method=method, **sections)
    _check_values(config)
    config.train_settings()  # TrainSettings' own checks (ranges, choices), which name train.<field>
    return config


def _check_values(config: RunConfig) -> None:
    for key in ("max_train_examples", "max_eval_examples"):
        value = getattr(config.data, key)
        if value is not None and value <= 0:
            raise ConfigError(f"data.{key}={value} must be > 0, or null for the whole split")
    if config.task.num_outputs is not None and config.task.num_outputs <= 0:
        raise ConfigError(f"task.num_outputs={config.task.num_outputs} must be > 0, or null for the dataset's count")
    if config.tiny and isinstance(config.backbone.pretrained, str):
        raise ConfigError(
            f"backbone.pretrained={config.backbone.pretrained!r} with scale=tiny: a tiny run builds a small "
            f"random-weight backbone and cannot load a checkpoint; drop scale=tiny to use the checkpoint"
        )
    # Paths are stored absolute, so a run directory's config means the same from any folder.
    if isinstance(config.backbone.pretrained, str):
        config.backbone.pretrained = str(Path(config.backbone.pretrained).expanduser().resolve())
    if config.data.root is not None:
        config.data.root = str(Path(config.data.root).expanduser().resolve())


def load_config(recipe: str | Path, overrides: list[str] | dict[str, Any] = ()) -> RunConfig:
    """Read a recipe (by name, e.g. ``vision/medical-lora``, or a YAML path) and apply overrides."""
    from zoo.experiment.recipes import find_recipe, read_recipe

    path = find_recipe(recipe)
    data = read_recipe(path)
    parsed = parse_overrides(list(overrides)) if not isinstance(overrides, dict) else overrides
    method_name = (parsed.get("method") or {}).get("name") or (data.get("method") or {}).get("name")
    check_keys(data, f" in {path}", allow_file_keys=True)
    check_keys(parsed, " (command line)", method_name=method_name)
    return validate(compose(data, parsed), f" in {path}")
