"""ViT-Ti/16 (``vit_ti16``): the real ImageNet-trained file in ../shared/models against timm's own loader,
the input size option (position embeddings resampled, images resized to match), the known file's checksum,
and the offline error."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.catalog.backbones import PretrainedUnavailable, create_backbone
from zoo.catalog.download import ChecksumWarning, sha256_of

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CHECKPOINT = SHARED / "models" / "vit_tiny_patch16_224" / "model.safetensors"


def needs_checkpoint(test):
    test = pytest.mark.shared_data(test)
    return pytest.mark.skipif(not CHECKPOINT.is_file(), reason=f"no ViT-Tiny checkpoint at {CHECKPOINT}")(test)


def timm_reference(**options):
    """timm's own model from the same file, through its own pretrained loader."""
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(CHECKPOINT)}, **options
    ).eval()


def medmnist_like(count: int) -> list[np.ndarray]:
    generator = np.random.default_rng(count)
    return [generator.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(count)]


# -- the real file ------------------------------------------------------------------------
@needs_checkpoint
def test_at_224_the_features_equal_timms_own_model_from_the_same_file():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChecksumWarning)  # the known file: its sha256 matches, no warning
        backbone = create_backbone("vit_ti16", pretrained=CHECKPOINT).eval()
    reference = timm_reference(num_classes=1000)
    batch = backbone.collate(medmnist_like(3))
    assert batch["pixel_values"].shape == (3, 3, 224, 224)
    with torch.no_grad():
        expected = reference.forward_features(batch["pixel_values"])
        features = backbone(batch)
        torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            backbone.pool(features, batch), reference.forward_head(expected, pre_logits=True), atol=1e-5, rtol=0
        )


@needs_checkpoint
@pytest.mark.parametrize("size", [32, 112])
def test_at_a_lower_size_the_position_embeddings_are_the_resampled_originals(size):
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    original = load_file(CHECKPOINT)
    backbone = create_backbone("vit_ti16", pretrained=CHECKPOINT, img_size=size).eval()
    grid = size // 16
    expected = resample_abs_pos_embed(original["pos_embed"], new_size=[grid, grid], num_prefix_tokens=1)
    assert expected.shape == (1, 1 + grid * grid, 192)
    torch.testing.assert_close(backbone.model.pos_embed.data, expected, atol=1e-6, rtol=0)
    # everything else is the file's, as it is
    torch.testing.assert_close(backbone.model.blocks[5].attn.qkv.weight.data, original["blocks.5.attn.qkv.weight"])
    torch.testing.assert_close(backbone.model.cls_token.data, original["cls_token"])
    batch = backbone.collate(medmnist_like(4))
    assert batch["pixel_values"].shape == (4, 3, size, size)
    with torch.no_grad():
        features = backbone(batch)
    assert features.shape == (4, 1 + grid * grid, 192) and torch.isfinite(features).all()
    # timm's own loader, asked for the same size, gives the same model
    reference = timm_reference(num_classes=0, img_size=size)
    with torch.no_grad():
        torch.testing.assert_close(features, reference.forward_features(batch["pixel_values"]), atol=1e-5, rtol=0)


@needs_checkpoint
def test_the_recorded_digest_is_the_known_files():
    from zoo_domains.vision.backbones import KNOWN_FILES

    assert sha256_of(CHECKPOINT) == KNOWN_FILES["vit_ti16"]


@needs_checkpoint
@pytest.mark.skipif(not (SHARED / "data" / "medmnist").is_dir(), reason="no shared PneumoniaMNIST subset")
def test_the_vision_recipes_train_on_the_file_at_112_pixels(tmp_path):
    """The recipes' backbone as written, from the real file: trained on the same weights as timm's own
    model at 112x112 (the run's base-weights fingerprint), images resized to 112."""
    import json

    import zoo
    from zoo.experiment.fingerprint import state_fingerprint

    overrides = [
        f"backbone.pretrained={CHECKPOINT}",
        f"data.root={SHARED / 'data'}",
        "data.name=pneumoniamnist_subset",
        "data.max_train_examples=16",
        "data.max_eval_examples=16",
        "train.max_steps=2",
        "train.batch_size=8",
        "train.precision=fp32",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChecksumWarning)  # the data subset is not the canonical file
        run = zoo.run("vision/medical-linear", overrides, out=tmp_path / "run", log=None)
    record = json.loads((run.dir / "run.json").read_text())
    assert record["status"] == "complete" and record["config"]["backbone"]["options"] == {"img_size": 112}
    reference = timm_reference(num_classes=0, img_size=112)
    expected = state_fingerprint({f"model.{key}": tensor for key, tensor in reference.state_dict().items()})
    assert record["backbone"]["fingerprint"] == expected


# -- without the real file ------------------------------------------------------------------
def test_a_checkpoint_with_another_digest_loads_with_a_checksum_warning(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    other = timm.create_model("vit_tiny_patch16_224", num_classes=1000).eval()
    save_file(other.state_dict(), tmp_path / "model.safetensors")
    with pytest.warns(ChecksumWarning, match=r"backbone vit_ti16: .*model\.safetensors has sha256 .*ef513107ea1a"):
        backbone = create_backbone("vit_ti16", pretrained=tmp_path).eval()  # a folder holding model.safetensors
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone({"pixel_values": pixels}), other.forward_features(pixels))


def test_an_input_size_the_patches_do_not_tile_is_refused():
    with pytest.raises(ValueError, match=r"img_size=100 does not divide into 16x16 patches.*96 or 112"):
        create_backbone("vit_ti16", img_size=100)


@pytest.mark.parametrize("size", [64, 112])
def test_collate_resizes_to_the_chosen_size_with_this_models_mean_and_std(size):
    import timm

    config = timm.models.get_pretrained_cfg("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    backbone = create_backbone("vit_ti16", img_size=size)  # random weights: only the preprocessing is looked at
    assert backbone.data_config["input_size"] == (3, size, size)
    grey = np.full((28, 28), 51, np.uint8)
    pixels = backbone.collate([grey])["pixel_values"]
    expected = (0.2 - np.array(config.mean)) / np.array(config.std)  # 51 / 255 = 0.2
    torch.testing.assert_close(
        pixels[0], torch.tensor(expected, dtype=torch.float32).view(3, 1, 1).expand(3, size, size), atol=1e-6, rtol=0
    )


def test_pretrained_true_offline_reads_the_copy_under_zoo_models_dir(tmp_path, monkeypatch):
    """``$ZOO_MODELS_DIR/vit_tiny_patch16_224/`` is where ``pretrained=true`` (training, and zoo predict on a
    pulled adapter) finds the weights offline, before the Hugging Face cache."""
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from zoo.catalog.backbones import BACKBONES, models_dir_weights

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ZOO_MODELS_DIR", str(tmp_path / "models"))
    assert models_dir_weights(BACKBONES.get("vit_ti16")) is None  # no folder yet
    torch.manual_seed(1)
    other = timm.create_model("vit_tiny_patch16_224", num_classes=1000).eval()
    (tmp_path / "models" / "vit_tiny_patch16_224").mkdir(parents=True)
    save_file(other.state_dict(), tmp_path / "models" / "vit_tiny_patch16_224" / "model.safetensors")
    with pytest.warns(ChecksumWarning):  # not the known file: loads, and says so
        backbone = create_backbone("vit_ti16", pretrained=True).eval()
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone({"pixel_values": pixels}), other.forward_features(pixels))


def test_pretrained_offline_without_a_file_says_how_to_pass_one(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ZOO_MODELS_DIR", raising=False)
    with pytest.raises(PretrainedUnavailable) as caught:
        create_backbone("vit_ti16", pretrained=True)
    message = str(caught.value)
    assert "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in message
    assert "pretrained=/path/to/model.safetensors" in message and "scale=tiny" in message
    assert "--backbone-weights PATH" in message and "$ZOO_MODELS_DIR/vit_tiny_patch16_224/model.safetensors" in message
