"""Input transforms: what is done to every input before the model sees it, recorded with the run.

A dataset may declare that some of its options choose a registered transform (``flip_gb1``'s
``residues=1-56`` keeps residues 1-56 of each sequence: :class:`TransformOptions`). Such an option is
then part of the model, not only of the data: the loader reads whole inputs, zoo applies the transform
to every item of every split (:class:`TransformedInputs`), the run record, the model card and a hub
entry name it with its parameters, and ``zoo predict``, ``zoo eval`` and ``zoo.hub.load`` apply it to
every input. A model trained on windows is never fed whole sequences.

A transform is a registered name and parameters, never code. A pulled adapter names one; the
transform's ``check`` validates its parameters as a recipe's options are validated (an unknown
parameter or a bad value is refused), so a hub can choose among registered transforms only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any, cast

from torch.utils.data import Dataset, Subset

from zoo.catalog.registry import Registry
from zoo.errors import ConfigError, DataError, UnknownNameError


@dataclass(frozen=True)
class InputTransformSpec:
    """A registered transform: how to check its parameters, apply it, and say what it does."""

    name: str
    domain: str
    check: Callable[[Mapping[str, Any]], dict[str, Any]]
    """The parameters, checked and normalised (``"01-56"`` becomes ``"1-56"``); a ValueError naming the
    parameter, the bad value and what is allowed."""
    apply: Callable[[Any, Mapping[str, Any], str], Any]
    """``apply(input, parameters, where)``: the input as the model sees it; a DataError naming ``where``
    (the file and row, or the input as given) when the input does not fit."""
    describe: Callable[[Mapping[str, Any]], str]
    """What it does, in words, for a model card: ``inputs are cut to residues 1-56 before the model sees them``."""


INPUT_TRANSFORMS: Registry[InputTransformSpec] = Registry("input transform")


def register_input_transform(spec: InputTransformSpec) -> InputTransformSpec:
    return INPUT_TRANSFORMS.add(spec.name, spec)


@dataclass(frozen=True)
class InputTransform:
    """A registered transform with checked parameters (make one with :func:`input_transform`). Only its name
    and parameters are held, so it travels to data-loader workers and compares by value."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)

    def __call__(self, item: Any, where: str = "an input") -> Any:
        return INPUT_TRANSFORMS.get(self.name).apply(item, self.parameters, where)

    @property
    def description(self) -> str:
        return INPUT_TRANSFORMS.get(self.name).describe(self.parameters)

    def label(self) -> str:
        """``residue_window (residues=1-56)``."""
        return f"{self.name} ({', '.join(f'{k}={v}' for k, v in self.parameters.items())})"

    def as_record(self) -> dict[str, Any]:
        """What a run record and a hub entry hold: the name and the parameters."""
        return {"name": self.name, "parameters": dict(self.parameters)}


def input_transform(name: Any, parameters: Any) -> InputTransform:
    """The registered transform ``name`` with ``parameters`` checked by it; a ConfigError names what is wrong
    (an unknown name lists the registered ones)."""
    if not isinstance(name, str):
        raise ConfigError(f"an input transform is named by a string, not {name!r}")
    try:
        spec = INPUT_TRANSFORMS.get(name)
    except UnknownNameError as error:
        raise ConfigError(str(error)) from None
    if not isinstance(parameters, Mapping) or not all(isinstance(key, str) for key in parameters):
        raise ConfigError(
            f"input transform {name}: parameters must be a mapping of names to values, not {parameters!r}"
        )
    try:
        checked = spec.check(parameters)
    except ValueError as error:  # DataError and ConfigError are ValueErrors too
        raise ConfigError(f"input transform {name}: {error}") from None
    return InputTransform(name, checked)


@dataclass(frozen=True)
class TransformOptions:
    """A dataset's declaration: these data options are the parameters of that registered transform, which
    applies when one of them is set (``TransformOptions("residue_window", ("residues",))``)."""

    transform: str
    options: tuple[str, ...]


def split_transform_options(
    declared: TransformOptions | None, options: Mapping[str, Any], where: str = "data.options"
) -> tuple[InputTransform | None, dict[str, Any]]:
    """(the input transform ``options`` ask for, if any; the options left for the loader)."""
    options = dict(options)
    if declared is None:
        return None, options
    parameters = {key: options[key] for key in declared.options if options.get(key) is not None}
    left = {key: value for key, value in options.items() if key not in declared.options}
    if not parameters:
        return None, left
    try:
        return input_transform(declared.transform, parameters), left
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


class TransformedInputs(Dataset):
    """The items ``(input, *rest)`` of ``dataset`` as ``(transform(input), *rest)``.

    Every input is transformed once when the split is wrapped, so an input that does not fit (a sequence
    shorter than the window) is an error naming it before training starts; the items are read once for
    that. Attributes the wrapped dataset has (``source``, ``classes``) are read through."""

    def __init__(self, dataset: Dataset, transform: InputTransform, source: str | None = None) -> None:
        self.dataset, self.input_transform = dataset, transform
        self.where = str(source or getattr(dataset, "source", None) or "the dataset")
        for index in range(len(self)):
            self.__getitem__(index)  # every input checked now, not half-way through training

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))  # map-style datasets have a length; torch's type does not declare it

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or not item:
            raise DataError(
                f"{self.where} item {index}: input transform {self.input_transform.name} takes (input, label) items, "
                f"not {type(item).__name__}"
            )
        return (self.input_transform(item[0], f"{self.where} item {index}"), *item[1:])

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("dataset")
        if inner is None or name.startswith("__"):  # while unpickling in a worker, before __dict__ is set
            raise AttributeError(name)
        return getattr(inner, name)

    def __repr__(self) -> str:
        return f"TransformedInputs({self.dataset!r}, {self.input_transform.label()})"


def with_input_transform(dataset: Dataset, transform: InputTransform | None) -> Dataset:
    return dataset if transform is None else TransformedInputs(dataset, transform)


def given_input(dataset: Any, index: int) -> Any:
    """Item ``index``'s input as a user gives it to the model: before any input transform (through a
    Subset of ``data.max_*_examples``)."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    if isinstance(dataset, TransformedInputs):
        return dataset.dataset[index][0]
    return dataset[index][0]
