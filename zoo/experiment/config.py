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

Merging (bases, the ``tiny:`` section, ``key=value`` overrides) and ``${section.key}``
interpolation are OmegaConf's; the merged mapping is then typed once, by pydantic: the
sections here, ``train`` by :class:`zoo.train.TrainSettings` and ``method`` by the config class
of the method it names (:func:`zoo.peft.registry.method_config`), so ``RunConfig.method`` is that
method's :class:`zoo.peft.MethodConfig`, handed to :func:`zoo.peft.apply` as it is. Those two
classes are reached lazily, at validation: importing this module stays free of torch.

Every value is type-checked (pydantic, strict: ``1`` is not a bool, ``"8"`` is not an int),
numbers must be finite anywhere in the config (``.nan`` and ``.inf`` would only fail inside the
run), and every error names the key, the bad value and what is allowed; an unknown key lists the
valid ones, closest first.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Sequence, cast

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, Field, PlainValidator

from zoo.errors import ConfigError
from zoo.experiment.yaml_files import dump_yaml, parse_value
from zoo.strict_model import StrictModel, unknown_key

SCALES = ("default", "tiny")
SECTIONS = ("backbone", "data", "task", "method", "train")
FREE_FORM = ("options",)
"""Keys holding a dict passed through to a builder; their contents are checked by that builder."""
TYPED_SUBSECTIONS = ("privacy",)
"""Keys holding a typed mapping of their own (``train.privacy``), set one key at a time: ``train.privacy.epsilon=8``."""
FILE_ONLY_KEYS = ("defaults", "tiny", "search")
"""Keys a recipe file may have that are consumed while reading it (not part of the resolved config)."""


# -- sections --------------------------------------------------------------------------
class Section(StrictModel):
    pass


class BackboneConfig(Section):
    error_prefix: ClassVar[str] = "backbone"
    name: str = Field(description="A backbone from `zoo ls backbones`.")
    pretrained: bool | str = Field(
        True,
        description="true: the pretrained weights by their ecosystem name (downloaded or from the local cache); "
        "a path: a local checkpoint; false: random weights. Not used at scale=tiny.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to the backbone builder.")


class DataConfig(Section):
    error_prefix: ClassVar[str] = "data"
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
    error_prefix: ClassVar[str] = "task"
    kind: str | None = Field(
        default=None,
        description="classification, regression, per_residue, retrieval, generation; null: the dataset's task.",
    )
    num_outputs: int | None = Field(
        default=None, description="Head outputs; null: the dataset's class count (1 for regression)."
    )
    main_metric: str | None = Field(default=None, description="Metric for model selection; null: the task's own.")
    options: dict[str, Any] = Field(default_factory=dict, description="Passed to the task builder.")


def _method_section(value: Any) -> Any:
    from zoo.peft.registry import method_config

    return method_config(value)


def _train_section(value: Any) -> Any:
    from zoo.train.settings import TrainSettings

    if isinstance(value, TrainSettings):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"train must be a mapping of trainer settings (train.lr, train.epochs, ...), got {value!r}")
    return TrainSettings(**value)


if TYPE_CHECKING:
    from zoo.peft.config import MethodConfig
    from zoo.train.settings import TrainSettings

    TypedMethod = MethodConfig
    TypedTrain = TrainSettings
else:
    # The classes behind these two sections import torch (the method files, zoo.train); each is
    # typed by its own class, found when a section is validated, never when this module is imported.
    TypedMethod = Annotated[Any, PlainValidator(_method_section)]
    TypedTrain = Annotated[Any, PlainValidator(_train_section)]


def _default_train() -> Any:
    return _train_section({})


class RunConfig(Section):
    description: str = ""
    scale: Literal["default", "tiny"] = "default"
    backbone: BackboneConfig
    data: DataConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    method: TypedMethod = Field(description="The PEFT method: the config class registered under its name.")
    train: TypedTrain = Field(default_factory=_default_train, description="zoo.train.TrainSettings.")

    @property
    def tiny(self) -> bool:
        return self.scale == "tiny"

    def train_settings(self) -> TrainSettings:
        return self.train

    def with_method_options(self, **changes: Any) -> RunConfig:
        """This configuration with some method options changed (their config built and checked anew)."""
        section = {"name": self.method.name, **self.method.options, **changes}
        return self.model_copy(update={"method": _method_section(section)})

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


def section_model(name: str) -> type[BaseModel]:
    """The model of a section other than ``method`` (whose model depends on the method named)."""
    if name == "train":
        from zoo.train.settings import TrainSettings

        return TrainSettings
    return _SECTION_MODELS[name]


# -- keys ------------------------------------------------------------------------------
def valid_keys(section: str, method: str | None = None) -> list[str]:
    if section == "method":
        if not method:
            return ["name"]
        from zoo.peft.registry import get_method

        return ["name"] + sorted(get_method(method).config_class.model_fields)
    return list(section_model(section).model_fields)


def check_keys(
    data: dict[str, Any], where: str = "", allow_file_keys: bool = False, method_name: str | None = None
) -> None:
    """Every key of ``data`` must exist in the schema; the error lists the valid ones, closest first.
    ``method_name`` is the method in force when ``data`` does not name one (overrides of its options)."""
    top = ["description", "scale", *SECTIONS] + (list(FILE_ONLY_KEYS) if allow_file_keys else [])
    for key, value in data.items():
        if key not in top:
            raise unknown_key(key, top, where)
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
                raise unknown_key(f"{key}.{sub}", valid, where, f"{key}.")


# -- overrides and merging ---------------------------------------------------------------
def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["method.r=16", "train.lr=3e-4"]`` -> ``{"method": {"r": 16}, "train": {"lr": 0.0003}}``.
    Values read as YAML (:func:`zoo.experiment.yaml_files.parse_value`); ``${...}`` is kept for
    :func:`compose` to resolve against the whole configuration."""
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
            raise unknown_key(key, ["description", "scale", *SECTIONS], " (command line)", "", parts[0])
        if len(parts) > 3 or (len(parts) == 3 and parts[1] not in FREE_FORM + TYPED_SUBSECTIONS):
            raise ConfigError(
                f"override key {key!r} is too deep: write section.key (e.g. method.r=16), section.options.key "
                f"for builder options (e.g. backbone.options.img_size=384), or train.privacy.key"
            )
        nested = with_dotted_keys(nested, {key: parse_value(text)})
    return nested


def with_dotted_keys(overrides: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` (nested) with each dotted key of ``values`` set on top: ``{"method.r": 8}``."""
    merged = OmegaConf.create(overrides)
    for key, value in values.items():
        try:
            OmegaConf.update(merged, key, value, merge=True)
        except OmegaConfBaseException as error:
            raise ConfigError(f"override {key}={value!r}: {_first_line(error)}") from None
    # a DictConfig (created from a mapping) always becomes a dict
    return cast(dict[str, Any], OmegaConf.to_container(merged))


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _as_omegaconf(data: dict[str, Any], what: str) -> Any:
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise ConfigError(f"{what}{f', key {key}' if key else ''}: {_first_line(error)}") from None


def compose(recipe: dict[str, Any], overrides: dict[str, Any], where: str = "") -> dict[str, Any]:
    """The recipe (its ``defaults`` already merged) with, for scale=tiny, its ``tiny:`` section, then the
    command-line overrides on top, so that an explicit override always wins; then ``${...}`` resolved
    against that whole configuration."""
    recipe = dict(recipe)
    tiny = recipe.pop("tiny", None) or {}
    recipe.pop("defaults", None)
    recipe.pop("search", None)  # the search space of `zoo tune`, not part of a run
    scale = overrides.get("scale", recipe.get("scale", "default"))
    layers = [_as_omegaconf(recipe, f"the recipe{where}")]
    if scale == "tiny":
        layers.append(_as_omegaconf(tiny, f"tiny{where}"))
    layers.append(_as_omegaconf(overrides, "the command line"))
    merged = OmegaConf.merge(*layers)
    _refuse_resolvers(OmegaConf.to_container(merged, resolve=False), where)
    try:
        return cast(dict[str, Any], OmegaConf.to_container(merged, resolve=True))  # merged is a DictConfig
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ConfigError(
            f"{key}{where}: {_first_line(error)}; an interpolation names another key of the configuration, "
            f"e.g. ${{train.lr}}"
        ) from None


RESOLVER_CALL = re.compile(r"\$\{\s*[\w.]+\s*:")
"""``${name:...}``: an OmegaConf resolver call (``oc.env``, ``oc.decode``...), as opposed to ``${key}``."""


def _refuse_resolvers(value: Any, where: str, key: str = "") -> None:
    """Interpolation names other keys only. A resolver would read this machine (``${oc.env:HF_TOKEN}``)
    into values that the run directory, the model card and a pushed adapter then publish."""
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_resolvers(item, where, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_resolvers(item, where, f"{key}[{index}]")
    elif isinstance(value, str) and RESOLVER_CALL.search(value):
        raise ConfigError(
            f"{key}{where}: {value!r} calls an interpolation resolver; a recipe may only name another key of "
            f"the configuration (e.g. ${{train.lr}}): values such as environment variables would be published "
            f"with the run's config and its adapter"
        )


# -- validation ------------------------------------------------------------------------
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
    if section in ("backbone", "data", "task", "train") and field in section_model(section).model_fields:
        help_text = (section_model(section).model_fields[field].description or "").rstrip(".")
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
    config = RunConfig(**{key: value for key, value in data.items() if value is not None})
    _check_values(config)
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


def _read(recipe: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    from zoo.experiment.recipes import find_recipe, read_recipe

    path = find_recipe(recipe)
    data = read_recipe(path)
    check_keys(data, f" in {path}", allow_file_keys=True)
    return path, data


def _validated(path: Path, data: dict[str, Any], overrides: Sequence[str] | dict[str, Any]) -> RunConfig:
    parsed = parse_overrides(list(overrides)) if not isinstance(overrides, dict) else overrides
    method_name = (parsed.get("method") or {}).get("name") or (data.get("method") or {}).get("name")
    check_keys(parsed, " (command line)", method_name=method_name)
    return validate(compose(data, parsed, f" in {path}"), f" in {path}")


def load_config(recipe: str | os.PathLike, overrides: Sequence[str] | dict[str, Any] = ()) -> RunConfig:
    """Read a recipe (by name, e.g. ``vision/medical-lora``, or a YAML path) and apply overrides."""
    return _validated(*_read(recipe), overrides)


def load_run_configs(
    recipe: str | os.PathLike, overrides: Sequence[str] | dict[str, Any] = ()
) -> tuple[RunConfig, RunConfig]:
    """The run's configuration and the recipe's own at the same scale (what the recipe says without the
    other overrides, to tell whether its description still fits), from one reading of the recipe."""
    path, data = _read(recipe)
    parsed = parse_overrides(list(overrides)) if not isinstance(overrides, dict) else overrides
    config = _validated(path, data, parsed)
    if not set(parsed) - {"scale"}:
        return config, config  # nothing but the scale changed: the recipe as written is the run's config
    return config, _validated(path, data, {"scale": config.scale} if config.scale != "default" else {})
