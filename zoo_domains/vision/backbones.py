"""Vision transformers from timm: ViT-B/16 and ViT-S/16 (ImageNet-21k, AugReg), ViT-Ti/16
(ImageNet-21k, fine-tuned on ImageNet-1k) and DeiT-S.

Sources: Dosovitskiy et al. 2021 (ViT, arXiv:2010.11929), Steiner et al. 2022 ("How to train
your ViT", the AugReg weights, arXiv:2106.10270), Touvron et al. 2021 (DeiT, arXiv:2012.12877).

Weights come from the Hugging Face Hub through ``timm.create_model(pretrained=True)``. Without
network access (``HF_HUB_OFFLINE`` set, or the Hub endpoint unreachable) nothing is retried:
a copy in the local Hugging Face cache is used if there is one, otherwise
:class:`PretrainedUnavailable` says how to pass a local checkpoint. A local checkpoint is a
state dict file (``.safetensors``, or ``.pth`` / ``.bin`` read with ``weights_only=True``) or a
folder as ``timm.models.save_for_hf`` writes it (``model.safetensors`` or ``pytorch_model.bin``
+ ``config.json``). It is read with timm's own ``load_state_dict`` (which prefers the EMA
weights of a training checkpoint, as timm does) and ViT checkpoint converter (which also
resamples position embeddings to another image size), and must fit the model exactly apart
from the classifier: missing or unexpected tensors are an error, never a silent partial load.

``img_size`` (an option of every backbone here; e.g. ``backbone.options.img_size=112``) builds the
model for another input size, a multiple of the patch size (16): the pretrained position
embeddings are resampled to the new patch grid by timm's checkpoint converter (bicubic, as
``timm.layers.resample_abs_pos_embed``), and the collate resizes every image to that size. Small
images such as MedMNIST's 28x28 need far fewer tokens than 224x224 (49 at 112, 196 at 224).

A local checkpoint of a backbone whose known file is recorded (``KNOWN_FILES``) is checked by
sha256; a file with another digest still loads when its tensors fit, with a ``ChecksumWarning``.

The backbone returns timm's token sequence ``forward_features`` (B, 1 + patches, hidden)
and pools with timm's own head pooling (the class token for these models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.catalog.backbones import PretrainedUnavailable, PretrainedWeights, register_backbone
from zoo.catalog.download import check_local_copy, hf_hub_unavailable
from zoo.peft.structure import VIT_STYLE
from zoo_domains.vision.images import prepare_images

DOMAIN = "vision"
LOCAL_FORMAT = (
    "a timm state dict file (.safetensors, or .pth/.bin) or a folder holding model.safetensors or "
    "pytorch_model.bin as timm.models.save_for_hf writes it"
)
# Tiny random-weight configuration for smoke tests: 32x32 images, 4x4 patches of 8 pixels.
TINY_OPTIONS = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 4}
# Files timm writes into a model folder, in the order timm itself prefers them.
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
# sha256 of a known local copy of a backbone's weights file, checked when such a file is passed. vit_ti16's
# is an ImageNet-trained ViT-Tiny/16 state dict with timm's key names (checked to classify ImageNet images),
# saved by another exporter than the Hub's file (whose digest is not recorded here): the Hub's own file loads
# as well, with a ChecksumWarning naming both digests.
KNOWN_FILES = {"vit_ti16": "ef513107ea1a9b5895f85c68b2f335a1b9d38c30edb1eb0cbe10cdef2ebc953e"}
# Classifier tensors of the pretraining task; the zoo puts its own task head on top.
CLASSIFIER_PREFIXES = ("head.", "head_dist.")
# The timm.create_model options a hub entry may set: input size, pooling, regularisation. Never
# checkpoint_path, pretrained_cfg(_overlay), cache_dir or the like: timm would read the file they name.
HUB_OPTIONS = (
    "img_size",
    "global_pool",
    "dynamic_img_size",
    "drop_rate",
    "pos_drop_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
)


class TimmVisionBackbone(nn.Module):
    """A timm ViT without its classifier, with the preprocessing of its pretrained weights."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        import timm.data

        self.model = model
        self.hidden_size = int(model.num_features)
        config = timm.data.resolve_data_config({}, model=model)
        # timm's config keeps the pretrained input size; the model may have been built for another
        self.input_size = tuple(int(s) for s in model.patch_embed.img_size)
        self.mean = tuple(float(m) for m in config["mean"])
        self.std = tuple(float(s) for s in config["std"])
        self.interpolation = str(config.get("interpolation", "bicubic"))

    @property
    def data_config(self) -> dict[str, Any]:
        return {
            "input_size": (3, *self.input_size),
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = batch["pixel_values"]
        weight = self.model.patch_embed.proj.weight
        return self.model.forward_features(pixels.to(device=weight.device, dtype=weight.dtype))

    def pool(self, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=True)

    def collate(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        pixels = prepare_images(examples, self.input_size, self.mean, self.std, self.interpolation)
        return {"pixel_values": pixels}

    def example_inputs(self, count: int) -> list[Any]:
        """MedMNIST-like inputs: 28x28 uint8 greyscale arrays and RGB float tensors, alternating."""
        generator = torch.Generator().manual_seed(count)
        examples: list[Any] = []
        for index in range(count):
            if index % 2 == 0:
                examples.append(torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=generator).numpy())
            else:
                examples.append(torch.rand(3, 28, 28, generator=generator))
        return examples


# -- loading ---------------------------------------------------------------------------
def check_image_size(model: nn.Module, requested: Any) -> None:
    """Refuse an ``img_size`` that the patches do not tile: timm would drop the pixels left over."""
    patch = tuple(int(p) for p in model.patch_embed.patch_size)
    size = tuple(int(s) for s in model.patch_embed.img_size)
    if any(s <= 0 or s % p for s, p in zip(size, patch)):
        raise ValueError(
            f"img_size={requested} does not divide into {patch[0]}x{patch[1]} patches; use a multiple of "
            f"{patch[0]} (e.g. {max(patch[0], size[0] // patch[0] * patch[0])} or {(size[0] // patch[0] + 1) * patch[0]})"
        )


def checkpoint_file(path: Path) -> Path:
    """The weights file of a local checkpoint: the file itself, or the one timm wrote into a folder."""
    if path.is_file():
        return path
    for name in FOLDER_FILES:
        if (path / name).is_file():
            return path / name
    present = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise FileNotFoundError(f"folder {path} holds no {' / '.join(FOLDER_FILES)} (it holds {present})")


def load_local_checkpoint(model: nn.Module, path: Path, known_sha256: str | None = None, what: str = "") -> None:
    """Load a timm ViT state dict into ``model``; every tensor but the classifier must match.
    ``known_sha256``: the digest of a known good copy; a file with another one warns and still loads."""
    from timm.models import load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    file = checkpoint_file(path)
    if known_sha256 is not None:
        check_local_copy(file, known_sha256, what or "checkpoint")
    try:
        state = load_state_dict(str(file), weights_only=True)
    except Exception as error:
        raise ValueError(f"could not read {file} as a state dict ({type(error).__name__}: {error})") from error
    state = checkpoint_filter_fn(state, model)  # converts other ViT layouts, resamples position embeddings
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit {type(model).__name__} "
            f"(depth {len(model.blocks)}, width {model.num_features}): "
            f"missing {sorted(missing)[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {sorted(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


def cached_hub_file(hub_id: str) -> Path | None:
    """The weights of ``hub_id`` in the local Hugging Face cache, if downloaded before."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, name)
        if isinstance(found, str):
            return Path(found)
    return None


def build_timm_vit(
    name: str,
    timm_name: str,
    weights: PretrainedWeights,
    pretrained: bool | Path,
    tiny: bool,
    known_sha256: str | None = None,
    **timm_options: Any,
) -> TimmVisionBackbone:
    """``timm_options`` go to ``timm.create_model`` (e.g. ``img_size``, ``drop_path_rate``)."""
    import timm

    architecture = timm_name.split(".")[0]
    if tiny:
        model = timm.create_model(architecture, pretrained=False, num_classes=0, **{**TINY_OPTIONS, **timm_options})
    elif pretrained is False:
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_options)
    elif isinstance(pretrained, Path):
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_options)
        check_image_size(model, timm_options.get("img_size"))  # before reading the file
        load_local_checkpoint(model, pretrained, known_sha256, f"backbone {name}")
    else:
        hub_id = timm.models.get_pretrained_cfg(timm_name).hf_hub_id
        reason = hf_hub_unavailable()
        if reason is None:
            model = timm.create_model(timm_name, pretrained=True, num_classes=0, **timm_options)
        else:
            cached = cached_hub_file(hub_id)
            if cached is None:
                raise PretrainedUnavailable(
                    f"backbone {name}: pretrained weights {weights.source} come from the Hugging Face Hub "
                    f"({hub_id}), which cannot be used now ({reason}), and they are not in the local cache. "
                    f"Download {weights.url} elsewhere and pass pretrained=/path/to/model.safetensors "
                    f"({LOCAL_FORMAT}; licence {weights.licence}; zoo predict: --backbone-weights PATH), or put "
                    f"it in $ZOO_MODELS_DIR/{weights.models_dir_name}/model.safetensors, or use scale=tiny for a "
                    f"smoke run"
                )
            model = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_options)
            load_local_checkpoint(model, cached)
    check_image_size(model, timm_options.get("img_size"))
    return TimmVisionBackbone(model)


def _register(name: str, timm_name: str, licence: str, description: str, known_sha256: str | None = None) -> None:
    weights = PretrainedWeights(
        source=f"timm:{timm_name}",
        licence=licence,
        local_format=LOCAL_FORMAT,
        url=f"https://huggingface.co/timm/{timm_name}/resolve/main/model.safetensors",
        models_dir_name=timm_name.split(".")[0],  # $ZOO_MODELS_DIR/vit_tiny_patch16_224/model.safetensors
    )

    def build(pretrained: bool | Path, tiny: bool, **options: Any) -> TimmVisionBackbone:
        return build_timm_vit(name, timm_name, weights, pretrained, tiny, known_sha256, **options)

    register_backbone(
        name, domain=DOMAIN, weights=weights, structure=VIT_STYLE, description=description, hub_options=HUB_OPTIONS
    )(build)


_register(
    "vit_b16",
    "vit_base_patch16_224.augreg_in21k",
    "apache-2.0",
    "ViT-B/16, 86M parameters, ImageNet-21k (AugReg), 224x224, mean/std 0.5",
)
_register(
    "vit_s16",
    "vit_small_patch16_224.augreg_in21k",
    "apache-2.0",
    "ViT-S/16, 22M parameters, ImageNet-21k (AugReg), 224x224, mean/std 0.5",
)
_register(
    "vit_ti16",
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "apache-2.0",
    # by name, timm's default tag (AugReg, ImageNet-21k then 1k); the text also fits a local copy of unknown release
    "ViT-Ti/16 (timm architecture), 5.7M parameters, ImageNet-trained at 224x224, mean/std 0.5",
    known_sha256=KNOWN_FILES["vit_ti16"],
)
_register(
    "deit_s16",
    "deit_small_patch16_224.fb_in1k",
    "apache-2.0",
    "DeiT-S/16, 22M parameters, ImageNet-1k (Touvron et al. 2021), 224x224, ImageNet mean/std",
)
