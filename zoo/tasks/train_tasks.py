"""Task builders: from a backbone to the model and the :class:`~zoo.train.TrainTask` that trains it.

A task kind (``classification``, ``regression``, ``per_residue``; domains add ``retrieval``
and ``generation``) is a function registered with :func:`register_task_builder`. The core
registers the kinds that :class:`zoo.tasks.heads.TaskModel` covers; a domain with its own model
registers its kind from its ``tasks.py``, so the core never imports a domain.

:class:`ModelTask` is the TrainTask of any model with ``forward(batch) -> outputs``,
``loss(outputs, labels)`` and a :class:`~zoo.tasks.heads.TaskSpec` ``task`` whose ``evaluate``
scores the outputs of a whole split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.catalog.registry import Registry
from zoo.errors import ConfigError
from zoo.tasks.heads import IGNORE_INDEX, TASKS, TaskModel, TaskSpec
from zoo.tasks.metrics import greater_is_better
from zoo.train.loop import move_to_device
from zoo.train.task import TrainTask, dataset_size


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / FSDP wrapper."""
    return getattr(model, "module", model)


def model_device(model: nn.Module) -> torch.device:
    parameter = next(iter(model.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@dataclass
class ModelTask:
    """Batches ``(input, label)`` items with ``collate_inputs``; scores outputs with ``spec.evaluate``."""

    collate_inputs: Callable[[list[Any]], Any]
    spec: TaskSpec
    main_metric: str = ""
    label_dtype: torch.dtype = torch.long
    input_lengths: Callable[[list[Any]], list[int]] | None = None
    """Length of each input (e.g. a text backbone's token counts): for grouping batches by length."""
    greater_is_better: bool = field(init=False)

    def __post_init__(self) -> None:
        self.main_metric = self.main_metric or self.spec.main_metric
        self.greater_is_better = greater_is_better(self.main_metric)

    def collate(self, examples: Sequence[Any]) -> tuple[Any, torch.Tensor]:
        inputs = [example[0] for example in examples]
        labels = [example[1] for example in examples]
        batch = self.collate_inputs(inputs)
        if self.spec.per_token:
            return batch, _pad_labels(labels)
        return batch, torch.stack([torch.as_tensor(label) for label in labels]).to(self.label_dtype)

    def loss(self, model: nn.Module, batch: Any, labels: torch.Tensor) -> torch.Tensor:
        outputs = model(batch)  # called, not unwrapped: DDP synchronises gradients in its forward
        if self.spec.per_token:
            labels = _fit_labels(labels, outputs.shape[1])
        return unwrap(model).loss(outputs, labels)  # type: ignore[operator]  # TaskModel.loss

    def example_lengths(self, dataset: Dataset) -> list[int] | None:
        """Each example's input length, or None when the backbone does not measure its inputs."""
        if self.input_lengths is None:
            return None
        return self.input_lengths([dataset[i][0] for i in range(dataset_size(dataset))])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = model_device(model)
        outputs, targets = [], []
        size = dataset_size(dataset)
        # Longest first, so each batch pads little; the outputs go back to dataset order below.
        lengths = None if self.spec.per_token else self.example_lengths(dataset)
        order = sorted(range(size), key=lambda i: -lengths[i]) if lengths is not None else list(range(size))
        try:
            for start in range(0, size, batch_size):
                batch, labels = self.collate([dataset[i] for i in order[start : start + batch_size]])
                output = model(move_to_device(batch, device)).float().cpu()
                if self.spec.per_token:  # keep the labelled positions only: lengths differ between batches
                    labels = _fit_labels(labels, output.shape[1])
                    keep = labels != IGNORE_INDEX
                    output, labels = output[keep], labels[keep]
                outputs.append(output)
                targets.append(labels)
        finally:
            model.train(was_training)
        if not outputs:
            raise ValueError("cannot evaluate on an empty dataset")
        output, target = torch.cat(outputs), torch.cat(targets)
        if lengths is not None:
            restore = torch.empty(size, dtype=torch.long)
            restore[torch.tensor(order)] = torch.arange(size)
            output, target = output[restore], target[restore]
        results = self.spec.evaluate(output, target)
        if self.main_metric not in results:
            raise ConfigError(
                f"task.main_metric={self.main_metric!r} is not among the metrics this task reports: "
                f"{', '.join(results)}"
            )
        return results


def _pad_labels(labels: list[Any]) -> torch.Tensor:
    tensors = [torch.as_tensor(label, dtype=torch.long).reshape(-1) for label in labels]
    return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=IGNORE_INDEX)


def _fit_labels(labels: torch.Tensor, length: int) -> torch.Tensor:
    """Per-token labels padded (with the ignore index) or cut to the model's token count."""
    if labels.shape[1] >= length:
        return labels[:, :length]
    return torch.nn.functional.pad(labels, (0, length - labels.shape[1]), value=IGNORE_INDEX)


# -- registry --------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskRequest:
    """What a task builder gets besides the backbone."""

    num_outputs: int | None
    main_metric: str | None
    options: dict[str, Any]


@dataclass(frozen=True)
class TaskBuilder:
    kind: str
    build: Callable[[nn.Module, TaskRequest], tuple[nn.Module, TrainTask]]
    description: str = ""
    needs_num_outputs: bool = False
    backbone_options: dict[str, Any] = field(default_factory=dict)
    """Backbone builder options the task needs (e.g. the decoder for generation); the recipe's
    ``backbone.options`` win over them."""


TASK_BUILDERS: Registry[TaskBuilder] = Registry("task kind")


def register_task_builder(
    kind: str, description: str = "", needs_num_outputs: bool = False, backbone_options: dict[str, Any] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``build(backbone, request) -> (model, train_task)`` for a task kind."""

    def decorator(build: Callable[..., Any]) -> Callable[..., Any]:
        TASK_BUILDERS.add(kind, TaskBuilder(kind, build, description, needs_num_outputs, dict(backbone_options or {})))
        return build

    return decorator


def _check_options(kind: str, options: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(f"task.options.{a}" for a in allowed) or "none"
        raise ConfigError(f"task {kind}: unknown task.options {', '.join(unknown)}; valid: {valid}")


def _task_model_builder(
    kind: str, label_dtype: torch.dtype
) -> Callable[[nn.Module, TaskRequest], tuple[nn.Module, ModelTask]]:
    def build(backbone: nn.Module, request: TaskRequest) -> tuple[nn.Module, ModelTask]:
        _check_options(kind, request.options, ("head_init",))
        model = TaskModel(backbone, kind, request.num_outputs or 1, request.options.get("head_init", "default"))
        collate = backbone.collate  # a zoo.catalog.backbones.Backbone's; nn.Module types it as Tensor | Module
        lengths = getattr(backbone, "input_lengths", None)  # text backbones measure their inputs
        return model, ModelTask(collate, TASKS[kind], request.main_metric or "", label_dtype, lengths)  # type: ignore[arg-type]

    return build


for _kind, _dtype, _text in (
    ("classification", torch.long, "a linear head on the pooled features; cross-entropy; accuracy, macro F1, AUROC"),
    ("regression", torch.float32, "a linear head with one output; mean squared error; Spearman rho"),
    ("per_residue", torch.long, "a linear head on every token; cross-entropy over labelled tokens; Q3 accuracy"),
):
    register_task_builder(_kind, _text, needs_num_outputs=_kind != "regression")(_task_model_builder(_kind, _dtype))
