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
MAX_ARRAY_ELEMENTS = 4096
"""The largest array input stored as a reference (a 28x28 image is 784 values; a 64x64 RGB one, 12,288, is not)."""


def json_input(item: Any) -> Any | None:
    """An input as an index entry stores it: a text as itself; a small numeric array (a MedMNIST image) as
    ``{"array": nested list, "dtype", "shape"}``; None for anything else (audio, a large image, a tensor)."""
    import numpy as np

    if isinstance(item, str):
        return item
    if isinstance(item, np.ndarray) and item.size <= MAX_ARRAY_ELEMENTS and item.dtype.kind in "biuf":
        return {"array": item.tolist(), "dtype": str(item.dtype), "shape": list(item.shape)}
    return None


def from_json_input(item: Any) -> Any:
    """The input :func:`json_input` stored, as the model was given it: an array dict becomes the array
    again (its dtype and shape checked, so a tampered entry is an error rather than another input)."""
    import numpy as np

    if not (isinstance(item, dict) and "array" in item):
        return item
    try:
        array = np.asarray(item["array"], dtype=np.dtype(item["dtype"]))
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"a reference array input cannot be read ({type(error).__name__}: {error})") from None
    if list(array.shape) != list(item.get("shape", [])) or array.size > MAX_ARRAY_ELEMENTS:
        raise ValueError(f"a reference array input has shape {list(array.shape)}, its entry says {item.get('shape')}")
    return array


def held_out_inputs(datasets: dict[str, Any], count: int = REFERENCE_COUNT) -> tuple[str | None, list[Any], str]:
    """(the role read: test, else val; up to ``count`` raw inputs spread over it; a note on what was left out).

    Only inputs that :func:`json_input` can store are kept (texts, protein sequences, small images as
    arrays); an audio tensor or a large image is left out, and the note says so. The inputs are as a
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
    kept = [item for item in inputs if json_input(item) is not None]
    if len(kept) < len(inputs):
        kind = type(next(item for item in inputs if json_input(item) is None)).__name__
        return (
            role,
            kept,
            (
                f"{len(inputs) - len(kept)} {role} inputs are {kind} values, neither text nor an array of at most "
                f"{MAX_ARRAY_ELEMENTS} numbers; not stored"
            ),
        )
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
    return ReferenceOutputs(role=role, inputs=[json_input(i) for i in inputs], outputs=outputs.tolist(), note=note)
