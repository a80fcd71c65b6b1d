"""A few held-out inputs and the model's raw outputs on them, taken when a run ends.

``zoo push`` turns them into the index entry's reference predictions (:mod:`zoo.hub.reference`), which
a pulled copy must reproduce: the outputs are taken here, on the CPU in float32 as a user's
``zoo.hub.load`` computes them, from the model the run saved, so that publishing never builds it again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from zoo.experiment.record import ReferenceOutputs

if TYPE_CHECKING:
    from zoo.catalog.backbones import Backbone

REFERENCE_COUNT = 8


def held_out_inputs(datasets: dict[str, Any], count: int = REFERENCE_COUNT) -> tuple[str | None, list[Any], str]:
    """(the role read: test, else val; up to ``count`` raw inputs spread over it; a note on what was left out).

    Only inputs that are JSON strings are kept (texts, protein sequences): an image array or an audio
    tensor is not what ``zoo predict`` reads from a command line, so it is not stored. The inputs are as a
    user gives them, before the dataset's input transform (whole sequences, not their window), since a
    pulled copy is checked by predicting on them as given."""
    from zoo.catalog.input_transforms import given_input

    role = next((r for r in ("test", "val") if r in datasets), None)
    if role is None:
        return None, [], "no held-out split (test or val) to take reference inputs from"
    dataset = datasets[role]
    size = len(dataset)
    if size == 0:
        return role, [], f"the {role} split is empty"
    wanted = min(count, size)
    indices = sorted({round(i * (size - 1) / max(wanted - 1, 1)) for i in range(wanted)})
    inputs = [given_input(dataset, i) for i in indices]
    kept = [item for item in inputs if isinstance(item, str)]
    if len(kept) < len(inputs):
        kind = type(next(item for item in inputs if not isinstance(item, str))).__name__
        return role, kept, f"{len(inputs) - len(kept)} {role} inputs are {kind} values, not text; not stored"
    return role, kept, ""


def model_outputs(
    model: nn.Module, collate: Callable[[list[Any]], Any], inputs: Sequence[Any], batch_size: int = 32
) -> torch.Tensor:
    """The model's raw outputs (logits) on ``inputs``, batch by batch, as float32 on the CPU."""
    from zoo.tasks.train_tasks import model_device
    from zoo.train.loop import move_to_device

    device = model_device(model)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = collate(list(inputs[start : start + batch_size]))
            chunks.append(model(move_to_device(batch, device)).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0)


def reference_outputs(
    model: nn.Module, datasets: dict[str, Any], input_transform: Callable[[Any, str], Any] | None = None
) -> ReferenceOutputs:
    """The outputs of ``model`` (with its adapter, as saved) on a few held-out inputs of ``datasets``, each
    through ``input_transform`` first (the run's, as a prediction applies it).

    A model on an accelerator is copied to the CPU first: the reference is what a user's CPU computes,
    and the last bits of a GPU's float32 (TF32 convolutions) would differ by more than the check allows."""
    role, inputs, note = held_out_inputs(datasets)
    if not inputs:
        return ReferenceOutputs(role=role, note=note or "no held-out inputs were read")
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    copied = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = copied.training
    copied.eval()
    try:
        backbone = cast("Backbone", copied.backbone)  # nn.Module types its attributes as Tensor | Module
        seen = (
            [input_transform(item, f"reference input {n}") for n, item in enumerate(inputs)]
            if input_transform
            else inputs
        )
        outputs = model_outputs(copied, backbone.collate, seen, batch_size=len(inputs))
    finally:
        copied.train(was_training)
    return ReferenceOutputs(role=role, inputs=inputs, outputs=outputs.tolist(), note=note)
