"""CLIP backbones over videos: open_clip's ViT-B/32 with frames encoded one by one.

A video is a stack of frames (F, C, H, W) in [0, 1]. Each frame goes through CLIP's image
tower; the per-frame embeddings are the token axis of the features ``(B, F, D)`` and
``pool`` averages them over time (the "mean pooling" baseline of CLIP4Clip, Luo et al.
2021, arXiv:2104.08860). Captions go through CLIP's text tower (``encode_text``).

Pretrained weights come from open_clip's tables (Ilharco et al., open_clip; Radford et
al. 2021 for the OpenAI weights; Cherti et al. 2023 for LAION-2B), fetched from the
Hugging Face hub. A local checkpoint is a state dict file in open_clip's format
(``.safetensors``, or ``.bin``/``.pt`` read with ``torch.load(weights_only=True)``), or a
folder laid out like the hub repositories (``open_clip_config.json`` next to
``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``); a config file next to
a checkpoint file is used too, so CLIPs of other sizes load the same way.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.catalog.backbones import PretrainedWeights, register_backbone
from zoo.catalog.download import hf_hub_unavailable
from zoo.peft.exclusions import register_exclusion
from zoo.peft.structure import Structure, register_structure

# OpenAI's normalisation, which open_clip uses for both tags below.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_FILE = "open_clip_config.json"
LOCAL_FORMAT = (
    "an open_clip checkpoint: a state-dict file (.safetensors, or .bin/.pt holding tensors only) of open_clip's "
    f"ViT-B-32, or a folder like the hub repository ({CONFIG_FILE} with open_clip_model.safetensors or "
    "open_clip_pytorch_model.bin)"
)

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
"""49408 is the size of the BPE vocabulary of open_clip's tokenizer: a smaller table could not
embed its end-of-text id (49407), which the text tower pools at."""

OPEN_CLIP_VIT = register_structure(
    Structure(
        name="open-clip-vit",
        # Only the image tower's blocks: visual prompts and adapters belong to the video side, and
        # VPT strips its prompts after the last block it is given (the text tower comes after it).
        blocks=r"(.*\.)?visual\.transformer\.resblocks\.\d+",
        attention="attn",
        attention_kind="mha",
        qkv="attn",
        # nn.MultiheadAttention reads out_proj.weight without calling out_proj, so a wrapper or hook
        # on it would never run. ls_1 (LayerScale, nn.Identity at these settings) is called on the
        # attention output right before the residual add: the same tensor, as a module call.
        attention_out="ls_1",
        ffn_in="mlp.c_fc",
        ffn_out="mlp.c_proj",
        heads=("head", "temperature"),
        cls_tokens=1,
        # Per-frame image embeddings (the tower's output, before the mean over frames), and the caption
        # embedding after CLIP's text projection (see ClipVideoBackbone.text_embedding).
        embeddings={"image": r"(.*\.)?visual", "text": r"(.*\.)?text_embedding"},
    )
)
register_exclusion(
    "adapter",
    OPEN_CLIP_VIT.name,
    reason="open_clip's attention output is read inside `nn.MultiheadAttention` (its `out_proj` is never called) "
    "and the module called on it, `ls_1`, is an `nn.Identity`: a serial bottleneck adapter needs an `nn.Linear` "
    "projection to follow",
    error=r"ls_1 is a Identity",
)
register_exclusion(
    "unipelt",
    OPEN_CLIP_VIT.name,
    reason="open_clip's q and v projections are slices of `nn.MultiheadAttention`'s `in_proj_weight`, so LoRA adds "
    "one update to that weight for the whole batch, which unipelt's per-example LoRA gate cannot scale",
    error=r"whose q and v projections are read from its in_proj_weight",
)


@functools.lru_cache(maxsize=4)
def clip_tokenizer(context_length: int):
    """open_clip's BPE tokenizer (its vocabulary ships inside the package, so it works offline)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


class ClipVideoBackbone(nn.Module):
    """Per-frame CLIP image embeddings ``(B, F, D)``, mean-pooled over frames; CLIP text embeddings."""

    def __init__(self, clip: nn.Module, image_size: int, context_length: int, mean=CLIP_MEAN, std=CLIP_STD) -> None:
        super().__init__()
        self.clip = clip
        self.hidden_size = int(clip.visual.output_dim)
        self.image_size = image_size
        self.context_length = context_length
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # open_clip projects the text tower's pooled token with a bare matrix product, so no module returns
        # the caption embedding; this one does, for feature adapters (clip_adapter) to follow.
        self.text_embedding = nn.Identity()

    @property
    def has_text_tower(self) -> bool:
        return getattr(self.clip, "transformer", None) is not None

    def drop_text_tower(self) -> None:
        """Delete the text tower (for video-only tasks: less memory, no idle adapter weights)."""
        for name in ("transformer", "token_embedding", "ln_final"):
            setattr(self.clip, name, None)
        for name in ("positional_embedding", "text_projection"):
            self.clip.register_parameter(name, None)
        self.register_module("text_embedding", None)  # the embedding's marker goes with its tower

    # -- Backbone protocol ------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels, mask = batch["pixel_values"], batch["frame_mask"]
        dtype = self.clip.visual.conv1.weight.dtype
        # Only real frames go through the image tower; padding frames stay zero (and are masked in pool).
        embedded = self.clip.encode_image(pixels[mask].to(dtype))
        features = embedded.new_zeros(*mask.shape, embedded.shape[-1])
        features[mask] = embedded
        return features

    def pool(self, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["frame_mask"].unsqueeze(-1).to(features.dtype)
        return (features * mask).sum(1) / mask.sum(1).clamp(min=1)

    def encode_text(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.has_text_tower:
            raise RuntimeError(
                "this backbone was built with text_tower=False; rebuild it with the text tower to encode captions"
            )
        if "input_ids" not in batch:
            raise ValueError("the batch has no captions (input_ids); collate (frames, caption) pairs to encode text")
        return self.text_embedding(self.clip.encode_text(batch["input_ids"]))

    def collate(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        """Batch (frames, caption) pairs or bare frame stacks; frames (F, C, H, W) in [0, 1].

        Frames are resized (shorter side, bicubic) and centre-cropped to the model's image
        size and normalised as CLIP was trained; clips of different lengths are padded and
        ``frame_mask`` marks the real frames.
        """
        if not examples:
            raise ValueError("collate got no examples")
        paired = [isinstance(e, (tuple, list)) for e in examples]
        if any(paired) and not all(paired):
            raise ValueError("collate got a mix of (frames, caption) pairs and bare frames; pass one kind")
        if all(paired):
            if any(len(e) != 2 for e in examples):
                raise ValueError("each paired example must be (frames, caption)")
            clips, captions = [e[0] for e in examples], [e[1] for e in examples]
        else:
            clips, captions = list(examples), None
        processed = [self._preprocess(clip, index) for index, clip in enumerate(clips)]
        longest = max(p.shape[0] for p in processed)
        pixels = processed[0].new_zeros(len(processed), longest, *processed[0].shape[1:])
        mask = torch.zeros(len(processed), longest, dtype=torch.bool)
        for index, clip in enumerate(processed):
            pixels[index, : clip.shape[0]] = clip
            mask[index, : clip.shape[0]] = True
        batch = {"pixel_values": pixels, "frame_mask": mask}
        if captions is not None:
            bad = [c for c in captions if not isinstance(c, str)]
            if bad:
                raise ValueError(f"captions must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
            batch["input_ids"] = clip_tokenizer(self.context_length)(captions)
        return batch

    def _preprocess(self, frames: torch.Tensor, index: int) -> torch.Tensor:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        if not torch.is_tensor(frames) or frames.dim() != 4 or frames.shape[1] not in (1, 3) or frames.shape[0] == 0:
            shape = tuple(frames.shape) if torch.is_tensor(frames) else type(frames).__name__
            raise ValueError(
                f"example {index}: frames must be a tensor (F, C, H, W) with F >= 1 and C = 1 or 3, got {shape}"
            )
        if frames.dtype == torch.uint8:
            frames = frames.float() / 255.0
        frames = frames.float()
        if frames.numel() and (frames.min() < 0 or frames.max() > 1):
            raise ValueError(f"example {index}: frame values must lie in [0, 1] (float) or be uint8")
        frames = frames.expand(-1, 3, -1, -1) if frames.shape[1] == 1 else frames
        frames = TF.resize(frames, self.image_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        frames = TF.center_crop(frames, [self.image_size, self.image_size]).clamp(0, 1)
        return (frames - self.mean.cpu()) / self.std.cpu()

    def example_inputs(self, count: int) -> list[Any]:
        generator = torch.Generator().manual_seed(0)
        words = [
            "a dog runs on the beach",
            "a man is cooking pasta",
            "people dance at a party",
            "a car drives at night",
        ]
        return [(torch.rand(2 + i % 2, 3, 40, 48, generator=generator), words[i % len(words)]) for i in range(count)]


# -- building and loading -------------------------------------------------------------------
def _clip_from_config(model_config: dict[str, Any], quick_gelu: bool) -> nn.Module:
    from open_clip import CLIP

    config = dict(model_config)
    unsupported = [k for k in ("custom_text", "multimodal_cfg") if config.get(k)]
    unsupported += [
        k
        for k in ("timm_model_name", "hf_model_name")
        if config.get("vision_cfg", {}).get(k) or config.get("text_cfg", {}).get(k)
    ]
    if unsupported:
        raise ValueError(
            f"the config uses {', '.join(unsupported)}; this backbone takes open_clip's built-in ViT CLIP "
            f"(nn.MultiheadAttention blocks), not CustomTextCLIP/CoCa/timm/HF towers"
        )
    config["quick_gelu"] = bool(config.get("quick_gelu", quick_gelu))
    return CLIP(**config)


def _read_local_config(path: Path) -> dict[str, Any] | None:
    folder = path if path.is_dir() else path.parent
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        return None
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    if "model_cfg" not in config:
        raise ValueError(f"{config_path} has no 'model_cfg' (open_clip's config layout)")
    return config


def _local_checkpoint_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in HUB_FILES + ("open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"folder {path} holds none of {', '.join(HUB_FILES)}")


def hub_checkpoint(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint file of an open_clip hub repository: from the local cache, else downloaded.

    Without network this fails within seconds: huggingface_hub would otherwise retry for
    half a minute per file before giving up.
    """
    from huggingface_hub import hf_hub_download

    for filename in HUB_FILES:
        try:
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=True))
        except Exception:
            continue
    reason = hf_hub_unavailable()
    if reason:
        raise ConnectionError(f"{repo_id} is not in the local Hugging Face cache and {reason}")
    errors = []
    for filename in HUB_FILES:  # safetensors first, as open_clip prefers it
        try:
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
        except Exception as error:  # a missing file: try the next format
            errors.append(f"{filename}: {type(error).__name__}")
    raise FileNotFoundError(f"{repo_id} has no loadable checkpoint ({'; '.join(errors)})")


def _load_weights(clip: nn.Module, checkpoint: Path, architecture: str) -> None:
    import open_clip

    try:
        # open_clip converts older layouts, then loads strictly; torch.load runs with weights_only=True.
        open_clip.load_checkpoint(clip, str(checkpoint), strict=True, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{checkpoint} holds more than tensors, which torch.load(weights_only=True) refuses "
            f"({str(error).splitlines()[-1][:120]}); save the state dict alone, or as .safetensors"
        ) from None
    except (RuntimeError, AssertionError, KeyError) as error:
        raise ValueError(
            f"{checkpoint} does not fit {architecture} ({type(error).__name__}: {str(error)[:120]}); a CLIP of another "
            f"size loads with its {CONFIG_FILE} beside the checkpoint"
        ) from None


def build_clip_video(
    model_name: str,
    hub_repo: str,
    quick_gelu: bool,
    pretrained: bool | Path,
    tiny: bool,
    text_tower: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> ClipVideoBackbone:
    import open_clip

    preprocess: dict[str, Any] = {}
    local = None
    architecture = model_name
    if tiny:
        model_config = TINY_CONFIG
    elif isinstance(pretrained, Path):
        local = _read_local_config(pretrained)
        model_config = local["model_cfg"] if local else open_clip.get_model_config(model_name)
        preprocess = (local or {}).get("preprocess_cfg", {})
        architecture = f"the model_cfg of {CONFIG_FILE}" if local else model_name
    else:
        model_config = open_clip.get_model_config(model_name)
    # Find the weights before building the (large) model, so that a missing file fails at once.
    checkpoint = None
    if isinstance(pretrained, Path):
        checkpoint = _local_checkpoint_file(pretrained)
    elif pretrained:
        checkpoint = hub_checkpoint(hub_repo, cache_dir)
    clip = _clip_from_config(model_config, quick_gelu)
    if checkpoint is not None:
        _load_weights(clip, checkpoint, architecture)
    vision, text = model_config["vision_cfg"], model_config["text_cfg"]
    image_size = vision["image_size"] if isinstance(vision["image_size"], int) else vision["image_size"][0]
    backbone = ClipVideoBackbone(
        clip,
        image_size=image_size,
        context_length=text.get("context_length", 77),
        mean=tuple(preprocess.get("mean", CLIP_MEAN)),
        std=tuple(preprocess.get("std", CLIP_STD)),
    )
    if not text_tower:
        backbone.drop_text_tower()
    return backbone


@register_backbone(
    "clip_vit_b32",
    domain="video_text",
    weights=PretrainedWeights(
        source="open_clip:ViT-B-32/laion2b_s34b_b79k",
        licence="MIT",
        local_format=LOCAL_FORMAT,
        url="https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        # No checksum is published for the hub files; huggingface_hub verifies the download by its etag.
        sha256=None,
    ),
    structure=OPEN_CLIP_VIT,
    hub_options=("text_tower",),  # never cache_dir
    description="CLIP ViT-B/32 (LAION-2B) over video frames, mean-pooled over time; text tower for retrieval",
)
def clip_vit_b32(pretrained: bool | Path = False, tiny: bool = False, **options: Any) -> ClipVideoBackbone:
    return build_clip_video("ViT-B-32", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", False, pretrained, tiny, **options)


@register_backbone(
    "clip_vit_b32.openai",
    domain="video_text",
    weights=PretrainedWeights(
        source="open_clip:ViT-B-32/openai",
        licence="MIT",
        local_format=LOCAL_FORMAT
        + " (QuickGELU; OpenAI's TorchScript ViT-B-32.pt is not read: it is not a plain state dict)",
        url="https://huggingface.co/timm/vit_base_patch32_clip_224.openai",
        sha256=None,
    ),
    structure=OPEN_CLIP_VIT,
    hub_options=("text_tower",),  # never cache_dir
    description="CLIP ViT-B/32 (OpenAI weights, QuickGELU) over video frames, mean-pooled over time",
)
def clip_vit_b32_openai(pretrained: bool | Path = False, tiny: bool = False, **options: Any) -> ClipVideoBackbone:
    return build_clip_video("ViT-B-32", "timm/vit_base_patch32_clip_224.openai", True, pretrained, tiny, **options)
