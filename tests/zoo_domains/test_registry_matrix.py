"""Registry-driven checks over every domain: backbones, PEFT methods on them, datasets, input readers.

Everything registered is covered without a hand-kept list: a new backbone, dataset or
PEFT method is tested here by registering it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import zoo.peft as zp
from tests.peft.method_checks import small_options
from zoo.catalog.backbones import BACKBONES, create_backbone
from zoo.catalog.datasets import DATASETS, dataset_dir, local_copy_present
from zoo.errors import ConfigError
from zoo.hub.inputs import INPUT_READERS, read_inputs
from zoo.tasks.heads import TaskModel

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def tiny(name: str):
    return create_backbone(name, scale="tiny")


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_builds_tiny_and_runs(name):
    backbone = tiny(name).eval()
    batch = backbone.collate(backbone.example_inputs(2))
    with torch.no_grad():
        features = backbone(batch)
        pooled = backbone.pool(features, batch)
    assert features.ndim == 3 and features.shape[0] == 2 and features.shape[-1] == backbone.hidden_size
    assert pooled.shape == (2, backbone.hidden_size)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_structure_matches(name):
    spec = BACKBONES.get(name)
    model = TaskModel(tiny(name), "classification", 2)
    if spec.structure is not None:
        assert spec.structure.matches(model), f"{name}: structure {spec.structure.name} does not fit its own model"
        assert spec.structure.block_names(model)


@pytest.mark.parametrize("method", zp.list_methods())
@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_method_on_every_backbone(name, method):
    spec = BACKBONES.get(name)
    backbone = tiny(name)
    model = TaskModel(backbone, "classification", 2)
    batch = backbone.collate(backbone.example_inputs(2))
    excluded = zp.exclusion_for(method, spec.structure.name if spec.structure else None)
    if excluded is not None:
        # Declared as not fitting: it must still refuse, saying why (else it gets a recipe and leaves the table).
        with pytest.raises(ConfigError, match=excluded.error) as refused:
            zp.apply(model, method, structure=spec.structure, **small_options(method))
        assert method in str(refused.value)
        return
    zp.apply(model, method, structure=spec.structure, **small_options(method))
    model.train()
    loss = model.loss(model(batch), torch.tensor([0, 1]))
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def assert_items_fit_the_spec(spec, dataset, items) -> None:
    """Every item is an (input, target) pair; a classification target is one of the classes the spec
    declares (else the dataset's own class names), a regression target a finite number."""
    names = getattr(dataset, "classes", None) or getattr(dataset, "label_names", None)
    if spec.num_classes is not None and names is not None:
        assert len(names) == spec.num_classes, f"{spec.name}: {len(names)} class names, {spec.num_classes} declared"
    for item in items:
        assert isinstance(item, tuple) and len(item) == 2, (
            f"{spec.name}: item {type(item).__name__} is no (input, target)"
        )
        target = item[1]
        if spec.task == "classification":
            classes = spec.num_classes or len(names or ()) or float("inf")  # inf: the user's files set the count
            assert int(target) == target and 0 <= int(target) < classes, f"{spec.name}: label {target} of {classes}"
        elif spec.task == "regression":
            assert torch.isfinite(torch.as_tensor(target, dtype=torch.float64)).all(), f"{spec.name}: {target}"


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_reads_its_fixture(name, tmp_path):
    spec = DATASETS.get(name)
    folder = tmp_path / (spec.folder or "data")
    spec.make_fixture(folder)
    split = spec.splits[0]
    dataset = spec.load(folder, split)
    items = list(dataset)  # iteration ends with IndexError at len(dataset), as torch's Dataset contract wants
    assert len(items) == len(dataset) >= 2, f"{name}: the fixture's {split} split reads as {len(items)} item(s)"
    assert_items_fit_the_spec(spec, dataset, items)
    if spec.task == "classification":
        assert len({int(target) for _, target in items}) >= 2, f"{name}: a one-class fixture tests no classifier"


@pytest.mark.shared_data
@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_reads_the_real_shared_copy(name):
    spec = DATASETS.get(name)
    if spec.folder is None or not (SHARED_DATA / spec.folder).exists():
        pytest.skip(f"no real copy of {name} under {SHARED_DATA}")
    directory = dataset_dir(spec, SHARED_DATA)
    if spec.files and not local_copy_present(spec, directory):
        pytest.skip(f"the shared copy of {spec.folder} is in none of the layouts {name} reads")
    for split in spec.splits:
        try:
            dataset = spec.load(directory, split)
        except FileNotFoundError as error:
            pytest.skip(f"{name}: shared copy has no {split} split ({error})")
        assert_items_fit_the_spec(spec, dataset, [dataset[0], dataset[len(dataset) - 1]])


def test_every_domain_with_backbones_registers_an_input_reader():
    with_backbones = {BACKBONES.get(name).domain for name in BACKBONES.names()}
    assert with_backbones == set(INPUT_READERS.names()), "a domain's adapters need a reader for zoo predict"


def assert_same_input(read: Any, written: Any, where: str) -> None:
    """What a reader made of a file equals what was written to it: texts exactly, arrays (an image, a
    waveform, video frames) to float precision, pairs element by element."""
    if isinstance(written, (str, int)):
        assert read == written, where
    elif isinstance(written, (tuple, list)):
        assert isinstance(read, (tuple, list)) and len(read) == len(written), where
        for index, (part, expected) in enumerate(zip(read, written)):
            assert_same_input(part, expected, f"{where}[{index}]")
    else:
        read_array, expected = np.asarray(read, dtype=np.float64), np.asarray(written, dtype=np.float64)
        assert read_array.shape == expected.shape, f"{where}: shape {read_array.shape}, written {expected.shape}"
        np.testing.assert_allclose(read_array, expected, atol=1e-6, err_msg=where)


@pytest.mark.parametrize("domain", INPUT_READERS.names())
def test_input_reader_reads_its_example_as_written(domain, tmp_path):
    example = INPUT_READERS.get(domain).write_example(tmp_path)
    inputs, names = read_inputs(domain, example.arguments)
    assert len(inputs) == len(names) == len(example.inputs)
    for index, (read, written) in enumerate(zip(inputs, example.inputs)):
        assert_same_input(read, written, f"{domain} input {index} ({names[index]})")
