"""Vision domain: timm ViT backbones (preprocessing, local checkpoints, offline behaviour),
MedMNIST and image-folder datasets, and the MedMNIST metrics."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.catalog.backbones import PretrainedUnavailable, create_backbone
from zoo.catalog.datasets import DataError, load_dataset
from zoo.catalog.download import ChecksumWarning
from zoo.tasks.heads import TASKS, TaskModel
from zoo_domains.vision.data import load_medmnist, write_medmnist_fixture

SHARED_MEDMNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "medmnist"
# timm keyword arguments that make a full-size architecture small, for checkpoint round trips.
SMALL = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 4}


def reference_vit(seed: int = 0, **overrides):
    """A timm ViT-S architecture at SMALL size with a 5-class head, as a user's checkpoint would have."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch16_224", num_classes=5, **{**SMALL, **overrides}).eval()


# -- preprocessing ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, timm_name",
    [("vit_s16", "vit_small_patch16_224.augreg_in21k"), ("deit_s16", "deit_small_patch16_224.fb_in1k")],
)
def test_collate_normalises_every_image_form_with_the_pretrained_mean_and_std(name, timm_name):
    import timm

    config = timm.models.get_pretrained_cfg(timm_name)
    mean, std = np.array(config.mean), np.array(config.std)
    backbone = create_backbone(name, scale="tiny")
    rgb = np.array([0.1, 0.5, 0.9])
    images = [  # (image, its pixel values per channel in [0, 1])
        (np.full((28, 28), 51, np.uint8), np.full(3, 0.2)),  # MedMNIST greyscale, HW uint8
        (torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, 20, 24), rgb),  # CHW float
        (Image.new("RGB", (30, 30), (255, 0, 102)), np.array([1.0, 0.0, 0.4])),
        (Image.new("L", (28, 28), 204), np.full(3, 0.8)),
        (np.full((32, 32, 4), (0, 255, 51, 7), np.uint8), np.array([0.0, 1.0, 0.2])),  # RGBA: alpha dropped
        (np.full((28, 28), 16384, np.uint16), np.full(3, 16384 / 65535)),  # 16-bit greyscale
        (torch.full((1, 28, 28), 0.3), np.full(3, 0.3)),
    ]
    batch = backbone.collate([image for image, _ in images])["pixel_values"]
    assert batch.shape == (len(images), 3, 32, 32)
    for row, (_, values) in zip(batch, images):
        expected = torch.tensor((values - mean) / std, dtype=torch.float32).view(3, 1, 1).expand(3, 32, 32)
        torch.testing.assert_close(row, expected, atol=1e-5, rtol=0)


def test_collate_keeps_the_image_orientation():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    backbone = create_backbone("vit_b16", scale="tiny")
    generator = np.random.default_rng(0)
    image = generator.integers(0, 256, (20, 44, 3), dtype=np.uint8)  # H != W, HWC
    reference = TF.resize(
        torch.from_numpy(image).permute(2, 0, 1).float() / 255,
        [32, 32],
        interpolation=InterpolationMode.BICUBIC,
        antialias=True,
    ).clamp(0, 1)
    reference = (reference - 0.5) / 0.5
    torch.testing.assert_close(backbone.collate([image])["pixel_values"][0], reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(5, 8, 8), "5 channels"),
        (np.full((8, 8), 200.0, np.float32), "[0, 1]"),
        ("scan.png", "not an image"),
        (np.zeros((2, 3, 4, 5), np.uint8), "shape"),
    ],
)
def test_collate_rejects_what_is_not_an_image(bad, message):
    backbone = create_backbone("vit_s16", scale="tiny")
    with pytest.raises(DataError, match="image 1") as caught:
        backbone.collate([np.zeros((28, 28), np.uint8), bad])
    assert message in str(caught.value)


def test_forward_gives_the_token_sequence_and_pool_the_class_token():
    backbone = create_backbone("vit_s16", scale="tiny").eval()
    batch = backbone.collate(backbone.example_inputs(2))
    with torch.no_grad():
        features = backbone(batch)
        pooled = backbone.pool(features, batch)
    assert features.shape == (2, 1 + (32 // 8) ** 2, 32)
    torch.testing.assert_close(pooled, features[:, 0])


# -- pretrained weights -------------------------------------------------------------------
def _save(model, path: Path, kind: str) -> Path:
    import safetensors.torch
    import timm

    state = model.state_dict()
    if kind == "safetensors":
        safetensors.torch.save_file(state, path / "weights.safetensors")
        return path / "weights.safetensors"
    if kind == "pth":
        torch.save(state, path / "weights.pth")
        return path / "weights.pth"
    if kind == "training_checkpoint":  # what timm's train script writes
        torch.save({"epoch": 3, "arch": "vit_small_patch16_224", "state_dict": state}, path / "checkpoint.pth.tar")
        return path / "checkpoint.pth.tar"
    timm.models.save_for_hf(model, path / "folder", safe_serialization=kind == "folder_safetensors")
    return path / "folder"


@pytest.mark.parametrize("kind", ["safetensors", "pth", "training_checkpoint", "folder_safetensors", "folder_bin"])
def test_local_checkpoint_loads_through_timm_and_matches_the_model_that_wrote_it(kind, tmp_path):
    reference = reference_vit()
    checkpoint = _save(reference, tmp_path, kind)
    backbone = create_backbone("vit_s16", pretrained=checkpoint, **SMALL).eval()
    batch = backbone.collate(backbone.example_inputs(3))
    with torch.no_grad():
        expected = reference.forward_features(batch["pixel_values"])
        features = backbone(batch)
        torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(backbone.pool(features, batch), reference.forward_head(expected, pre_logits=True))


def test_checkpoint_of_another_shape_is_refused_not_partly_loaded(tmp_path):
    checkpoint = _save(reference_vit(depth=3), tmp_path, "safetensors")
    with pytest.raises(PretrainedUnavailable, match="weights.safetensors") as caught:
        create_backbone("vit_s16", pretrained=checkpoint, **SMALL)
    assert "blocks.2." in str(caught.value) and "unexpected" in str(caught.value)


class NotATensor:
    pass


@pytest.mark.parametrize("content", ["garbage", "empty_folder", "pickled_object"])
def test_unreadable_checkpoint_is_refused(content, tmp_path):
    if content == "garbage":
        checkpoint = tmp_path / "broken.safetensors"
        checkpoint.write_bytes(b"not a checkpoint at all")
    elif content == "empty_folder":
        checkpoint = tmp_path / "empty"
        checkpoint.mkdir()
    else:  # weights_only=True must refuse arbitrary pickled objects
        checkpoint = tmp_path / "objects.pth"
        torch.save({"model": NotATensor()}, checkpoint)
    with pytest.raises(PretrainedUnavailable, match=checkpoint.name):
        create_backbone("vit_s16", pretrained=checkpoint, **SMALL)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _forbid_hub_downloads(monkeypatch):
    import timm.models._hub

    def no_download(*args, **kwargs):
        raise AssertionError("the Hub was contacted although it is unavailable")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_download)


def test_pretrained_fails_at_once_when_hub_offline_is_set(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _forbid_hub_downloads(monkeypatch)
    with pytest.raises(PretrainedUnavailable) as caught:
        create_backbone("vit_b16", pretrained=True)
    message = str(caught.value)
    assert "timm/vit_base_patch16_224.augreg_in21k" in message and "HF_HUB_OFFLINE" in message
    assert "pretrained=" in message and "AssertionError" not in message


def test_pretrained_fails_at_once_when_the_hub_is_unreachable(empty_hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    _forbid_hub_downloads(monkeypatch)
    with pytest.raises(PretrainedUnavailable, match="unreachable") as caught:
        create_backbone("deit_s16", pretrained=True)
    assert "AssertionError" not in str(caught.value)


def test_pretrained_uses_the_hub_cache_when_offline(empty_hub_cache, monkeypatch):
    import safetensors.torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _forbid_hub_downloads(monkeypatch)
    reference = reference_vit(seed=3)
    repo = empty_hub_cache / "models--timm--vit_small_patch16_224.augreg_in21k"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    safetensors.torch.save_file(reference.state_dict(), repo / "snapshots" / "abc123" / "model.safetensors")
    backbone = create_backbone("vit_s16", pretrained=True, **SMALL).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone({"pixel_values": pixels}), reference.forward_features(pixels))


# -- MedMNIST ------------------------------------------------------------------------------
def _write_npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def _medmnist_arrays(count: int = 6, rgb: bool = False, labels=None) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(1)
    shape = (count, 28, 28, 3) if rgb else (count, 28, 28)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = generator.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).reshape(-1, 1).astype(np.uint8) if labels is None else labels
    return arrays


@pytest.mark.parametrize("name, rgb", [("breastmnist", False), ("dermamnist", True)])
def test_medmnist_reads_the_official_layout_and_feeds_a_model(name, rgb, tmp_path):
    arrays = _medmnist_arrays(rgb=rgb)
    _write_npz(tmp_path / "medmnist" / f"{name}.npz", **arrays)
    with pytest.warns(ChecksumWarning, match=name):  # not the official file, used as given
        dataset = load_dataset(name, "val", root=tmp_path, allow_download=False)
    assert len(dataset) == 6
    image, label = dataset[4]
    np.testing.assert_array_equal(image, arrays["val_images"][4])
    assert label == int(arrays["val_labels"][4, 0]) and isinstance(label, int)

    backbone = create_backbone("vit_s16", scale="tiny")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=3,
        collate_fn=lambda items: (backbone.collate([i for i, _ in items]), torch.tensor([y for _, y in items])),
    )
    inputs, labels = next(iter(loader))
    model = TaskModel(backbone, "classification", 7 if rgb else 2)
    assert model(inputs).shape == (3, 7 if rgb else 2) and labels.tolist() == [0, 1, 0]


def test_medmnist_missing_file_without_download_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"pneumoniamnist\.npz"):
        load_dataset("pneumoniamnist", root=tmp_path, allow_download=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_npz_names_the_file(damage, tmp_path):
    path = tmp_path / "medmnist" / "bloodmnist.npz"
    if damage == "garbage":
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\x00\x01 definitely not numpy")
    else:
        data = _write_npz(path, **_medmnist_arrays(count=40, rgb=True)).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="bloodmnist.npz"):
        with pytest.warns(ChecksumWarning):
            load_dataset("bloodmnist", "test", root=tmp_path, allow_download=False)


def test_npz_with_corrupt_member_names_the_file(tmp_path):
    path = _write_npz(tmp_path / "organamnist.npz", **_medmnist_arrays())
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for member, content in members.items():
            archive.writestr(
                member, content[:64] + b"\xff" * (len(content) - 64) if "train_images" in member else content
            )
    with pytest.raises(DataError, match="organamnist.npz"):
        load_medmnist(tmp_path, "train", filename="organamnist.npz", num_classes=11)


def test_missing_keys_are_named(tmp_path):
    arrays = _medmnist_arrays()
    del arrays["test_labels"]
    _write_npz(tmp_path / "octmnist.npz", **arrays)
    assert len(load_medmnist(tmp_path, "train", filename="octmnist.npz", num_classes=4)) == 6
    with pytest.raises(DataError, match=r"octmnist\.npz lacks test_labels"):
        load_medmnist(tmp_path, "test", filename="octmnist.npz", num_classes=4)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([[0], [1], [2], [1], [0], [1]]), "out of range"),
        (np.array([[0], [1], [-1], [1], [0], [1]]), "out of range"),
        (np.array([[0], [1], [0]]), "6 images but 3 labels"),
        (np.zeros((6, 2), np.uint8), "(N, 1)"),
        (np.full((6, 1), 0.5), "integers"),
    ],
)
def test_bad_labels_are_refused(labels, message, tmp_path):
    _write_npz(tmp_path / "pneumoniamnist.npz", **_medmnist_arrays(labels=labels))
    with pytest.raises(DataError, match="pneumoniamnist.npz") as caught:
        load_medmnist(tmp_path, "train", filename="pneumoniamnist.npz", num_classes=2)
    assert message in str(caught.value)


def test_multi_label_layout(tmp_path):
    write_medmnist_fixture(tmp_path, filename="chestmnist.npz", num_classes=14, channels=1, multi_label=True)
    dataset = load_medmnist(tmp_path, "train", filename="chestmnist.npz", num_classes=14, multi_label=True)
    _, label = dataset[0]
    assert label.shape == (14,) and label.dtype == torch.float32 and set(label.tolist()) <= {0.0, 1.0}
    arrays = dict(np.load(tmp_path / "chestmnist.npz"))
    arrays["train_labels"][2, 5] = 3
    _write_npz(tmp_path / "chestmnist.npz", **arrays)
    with pytest.raises(DataError, match="allowed 0 or 1"):
        load_medmnist(tmp_path, "train", filename="chestmnist.npz", num_classes=14, multi_label=True)


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_MEDMNIST / "pneumoniamnist_subset.npz").exists(), reason="no shared MedMNIST subset")
def test_shared_pneumoniamnist_subset_loads_with_a_checksum_warning():
    sizes = {}
    for split in ("train", "val", "test"):
        with pytest.warns(ChecksumWarning, match="not the canonical 28209eda62fe"):
            dataset = load_dataset("pneumoniamnist_subset", split, root=SHARED_MEDMNIST.parent, allow_download=False)
        sizes[split] = len(dataset)
        assert {int(y) for y in dataset.labels} == {0, 1}
    assert sizes == {"train": 2428, "val": 270, "test": 468}


# -- image folders --------------------------------------------------------------------------
def test_image_folder_fixture_layout_and_class_indices(tmp_path):
    from zoo_domains.vision.data import write_image_folder_fixture

    write_image_folder_fixture(tmp_path)
    train = load_dataset("image_folder", "train", root=tmp_path)
    test = load_dataset("image_folder", "test", root=tmp_path)
    assert train.classes == test.classes == ["benign", "malignant"]
    assert len(train) == 6 and sorted(label for _, label in train.samples) == [0, 0, 0, 1, 1, 1]
    backbone = create_backbone("deit_s16", scale="tiny")
    images = [train[i][0] for i in range(len(train))]
    assert {image.mode for image in images} == {"L", "RGB"}
    assert backbone.collate(images)["pixel_values"].shape == (6, 3, 32, 32)


def test_image_folder_reads_16_bit_greyscale(tmp_path):
    folder = tmp_path / "train" / "ct"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 49151, np.uint16)).save(folder / "slice.png")
    image, label = load_dataset("image_folder", "train", root=tmp_path)[0]
    pixels = create_backbone("vit_s16", scale="tiny").collate([image])["pixel_values"]
    torch.testing.assert_close(pixels, torch.full_like(pixels, (49151 / 65535 - 0.5) / 0.5), atol=1e-5, rtol=0)


def test_flat_folder_is_the_train_split(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "x.jpg")
    assert len(load_dataset("image_folder", "train", root=tmp_path)) == 2
    with pytest.raises(DataError, match="no val/ folder"):
        load_dataset("image_folder", "val", root=tmp_path)


def test_unreadable_image_names_the_file(tmp_path):
    folder = tmp_path / "train" / "normal"
    folder.mkdir(parents=True)
    Image.new("L", (8, 8)).save(folder / "good.png")
    (folder / "scan_017.png").write_bytes(b"\x89PNG but broken")
    dataset = load_dataset("image_folder", "train", root=tmp_path)
    dataset[0]
    with pytest.raises(DataError, match="scan_017.png"):
        dataset[1]


def test_image_folder_bad_layouts(tmp_path):
    with pytest.raises(DataError, match="no class folders"):
        load_dataset("image_folder", "train", root=tmp_path)
    (tmp_path / "train" / "tumour").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset("image_folder", "train", root=tmp_path)
    Image.new("L", (8, 8)).save(tmp_path / "train" / "tumour" / "x.png")
    with pytest.raises(DataError, match="'tumour' is not one of"):
        load_dataset("image_folder", "train", root=tmp_path, classes=["normal", "pneumonia"])
    with pytest.raises(DataError, match="pass root="):
        load_dataset("image_folder", "train")


# -- metrics --------------------------------------------------------------------------------
def _pairwise_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """AUC as the probability that a positive outscores a negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    return float(
        ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    )


@pytest.mark.parametrize("classes", [2, 5])
def test_classification_metrics_are_medmnists_auc_and_acc(classes):
    """MedMNIST's Evaluator: binary AUC on the last column, multi-class the mean one-vs-rest
    AUC; ACC thresholds the last column at 0.5 (binary) or takes the argmax."""
    generator = torch.Generator().manual_seed(classes)
    labels = torch.arange(40) % classes
    logits = torch.randn(40, classes, generator=generator) + 1.5 * torch.nn.functional.one_hot(labels, classes)
    results = TASKS["classification"].evaluate(logits, labels)
    scores, truth = logits.softmax(-1).numpy(), labels.numpy()
    if classes == 2:
        auc = _pairwise_auc(truth == 1, scores[:, -1])
        acc = float(((scores[:, -1] > 0.5) == truth).mean())
    else:
        auc = float(np.mean([_pairwise_auc(truth == c, scores[:, c]) for c in range(classes)]))
        acc = float((scores.argmax(1) == truth).mean())
    assert results["auroc"] == pytest.approx(auc, abs=1e-9)
    assert results["accuracy"] == pytest.approx(acc, abs=1e-9)
