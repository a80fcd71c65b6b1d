"""Self-supervised speech encoders from torchaudio: wav2vec 2.0 base and HuBERT base.

wav2vec 2.0 (Baevski et al. 2020, arXiv:2006.11477) and HuBERT (Hsu et al. 2021,
arXiv:2106.07447) share one architecture in torchaudio (``torchaudio.models.Wav2Vec2Model``):
a convolutional feature encoder turns 16 kHz audio into 50 frames per second, a
transformer encodes the frames. The backbone returns the transformer's output
``(batch, frames, hidden)``; pooling averages the frames that cover real audio.

Pretrained weights are the fairseq checkpoints as torchaudio redistributes them (MIT
licence), fetched the way ``bundle.get_model()`` fetches them: into torch.hub's cache
(``torch.hub.get_dir()/checkpoints``), where a file torchaudio downloaded before is reused.
A local checkpoint is that same state dict file (``.pth``).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.catalog.backbones import PretrainedUnavailable, PretrainedWeights, register_backbone
from zoo.catalog.datasets import DataError
from zoo.peft.exclusions import register_exclusion
from zoo.peft.structure import Structure, register_structure

SAMPLE_RATE = 16_000
WEIGHTS_ROOT = "https://download.pytorch.org/torchaudio/models/"
# Short: an unreachable host must fail in seconds, not hang (torch.hub's urlopen has no timeout).
DOWNLOAD_TIMEOUT_S = 15.0
LICENCE = "MIT (fairseq weights, redistributed by torchaudio under the same licence)"
LOCAL_FORMAT = "the torchaudio state dict file (.pth) of the bundle, as bundle.get_model() downloads it"

TORCHAUDIO_WAV2VEC2 = register_structure(
    Structure(
        name="torchaudio-wav2vec2",
        blocks=r"(.*\.)?encoder\.transformer\.layers\.\d+",
        attention="attention",
        attention_kind="separate",
        query="attention.q_proj",
        key="attention.k_proj",
        value="attention.v_proj",
        attention_out="attention.out_proj",
        ffn_in="feed_forward.intermediate_dense",
        ffn_out="feed_forward.output_dense",
        heads=("head",),
        cls_tokens=0,  # frames only, no [CLS]: prompts go in front of the first frame
    )
)
register_exclusion(
    "clip_adapter",
    TORCHAUDIO_WAV2VEC2.name,
    reason="the speech backbones average the frame features of real audio in `pool()`, so no module returns the "
    "pooled embedding that a feature adapter refines",
    error=r"declares no pooled embedding",
)

# A small model of the same architecture for tests: 3 conv layers (stride 20, receptive
# field 80 samples), 2 transformer layers of width 32.
TINY_PARAMS: dict[str, Any] = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [(16, 10, 5), (16, 3, 2), (16, 2, 2)],
    "extractor_conv_bias": False,
    "encoder_embed_dim": 32,
    "encoder_projection_dropout": 0.0,
    "encoder_pos_conv_kernel": 8,
    "encoder_pos_conv_groups": 4,
    "encoder_num_layers": 2,
    "encoder_num_heads": 4,
    "encoder_attention_dropout": 0.0,
    "encoder_ff_interm_features": 64,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.0,
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.0,
    "aux_num_out": None,
}


class SpeechEncoder(nn.Module):
    """A torchaudio ``Wav2Vec2Model`` (as ``self.model``) behind zoo's backbone interface.

    Raw inputs are ``(waveform, sample_rate)`` pairs, the waveform a tensor or array of
    shape ``(time,)`` or ``(channels, time)``.
    """

    def __init__(self, model: nn.Module, normalize_waveform: bool = False) -> None:
        super().__init__()
        self.model = model
        self.normalize_waveform = normalize_waveform
        self.hidden_size = model.encoder.feature_projection.projection.out_features
        self.conv_shapes = [(layer.kernel_size, layer.stride) for layer in model.feature_extractor.conv_layers]
        self.min_samples = self._min_samples()

    # -- lengths -----------------------------------------------------------------------
    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames the feature encoder makes from ``lengths`` samples (torchaudio's formula)."""
        for kernel, stride in self.conv_shapes:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def _min_samples(self) -> int:
        """Fewest samples that give one frame: the feature encoder's receptive field."""
        samples = 1
        for kernel, stride in reversed(self.conv_shapes):
            samples = (samples - 1) * stride + kernel
        return samples

    # -- backbone interface -----------------------------------------------------------------
    def collate(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        """Mono 16 kHz waveforms padded with zeros: ``waveforms`` (B, T), ``lengths`` (B,) in samples and
        ``attention_mask`` (B, T), true on real samples. The model gets ``lengths``: the frames they cover
        are attended and pooled; padded frames are zeroed and masked out (torchaudio's handling)."""
        import torchaudio.functional as AF

        waveforms = []
        for index, example in enumerate(examples):
            if not (isinstance(example, (tuple, list)) and len(example) == 2):
                raise DataError(
                    f"speech example {index}: expected a (waveform, sample_rate) pair, got {type(example).__name__}"
                )
            waveform, sample_rate = example
            waveform = torch.as_tensor(waveform, dtype=torch.float32)
            if waveform.dim() == 2:  # (channels, time): average the channels
                waveform = waveform.mean(0)
            if waveform.dim() != 1:
                raise DataError(
                    f"speech example {index}: waveform has shape {tuple(waveform.shape)}; allowed (time,) or (channels, time)"
                )
            if waveform.numel() == 0:
                raise DataError(f"speech example {index}: the waveform is empty (0 samples)")
            if (
                not isinstance(sample_rate, numbers.Real)
                or isinstance(sample_rate, bool)
                or sample_rate <= 0
                or sample_rate != int(sample_rate)
            ):
                raise DataError(
                    f"speech example {index}: sample_rate={sample_rate!r}; expected a positive whole number of Hz"
                )
            if int(sample_rate) != SAMPLE_RATE:
                waveform = AF.resample(waveform, int(sample_rate), SAMPLE_RATE)
            if self.normalize_waveform:  # per-utterance zero mean, unit variance (large wav2vec2 models)
                waveform = nn.functional.layer_norm(waveform, waveform.shape)
            waveforms.append(waveform)
        # The base models' feature encoder normalises each channel over the whole padded clip (group
        # norm, as in fairseq), so padding shifts a clip's features slightly; the transformer and the
        # pooling ignore padded frames. Clips shorter than the receptive field are padded with silence
        # that counts as audio, so every clip has at least one frame to pool.
        lengths = torch.tensor([max(len(w), self.min_samples) for w in waveforms])
        batch = torch.zeros(len(waveforms), int(lengths.max()))
        for row, waveform in enumerate(waveforms):
            batch[row, : len(waveform)] = waveform
        attention_mask = torch.arange(batch.shape[1])[None, :] < lengths[:, None]
        return {"waveforms": batch, "lengths": lengths, "attention_mask": attention_mask}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # With lengths, torchaudio zeroes the padded frames and masks them out of attention.
        features, _ = self.model(batch["waveforms"], batch["lengths"])
        return features

    def pool(self, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over the frames of real audio."""
        mask = self.frame_lengths(batch["lengths"].to(features.device))
        mask = torch.arange(features.shape[1], device=features.device)[None, :] < mask[:, None]
        mask = mask.unsqueeze(-1).to(features.dtype)
        return (features * mask).sum(1) / mask.sum(1).clamp(min=1)

    def example_inputs(self, count: int) -> list[Any]:
        """Noisy tones of different lengths at 8 kHz (resampled by collate), one of them stereo."""
        generator = torch.Generator().manual_seed(0)
        inputs = []
        for index in range(count):
            samples = 1600 + 400 * index
            time = torch.arange(samples) / 8000
            tone = 0.5 * torch.sin(2 * torch.pi * (200 + 50 * index) * time)
            waveform = tone + 0.05 * torch.randn(samples, generator=generator)
            inputs.append((waveform.repeat(2, 1) if index % 2 else waveform, 8000))
        return inputs


def _bundle(name: str):
    import torchaudio.pipelines

    return getattr(torchaudio.pipelines, name)


def _pretrained_state_dict(bundle_name: str, checkpoint: bool | Path) -> dict[str, torch.Tensor]:
    """The bundle's state dict from a local file, torch.hub's cache, or download.pytorch.org."""
    if isinstance(checkpoint, Path):
        file = checkpoint
        if file.is_dir():
            candidates = sorted(file.glob("*.pth")) + sorted(file.glob("*.pt"))
            if len(candidates) != 1:
                raise PretrainedUnavailable(
                    f"{bundle_name}: folder {file} must hold exactly one .pth/.pt state dict, found {len(candidates)}; "
                    f"pass the file itself"
                )
            file = candidates[0]
        return _load_state_dict(file)
    path = _bundle(bundle_name)._path
    url = path if path.startswith("https") else WEIGHTS_ROOT + path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.exists():
        from zoo.catalog.download import download

        # No published sha256 for these files (torch.hub's check_hash needs a hash in the file
        # name, which they lack), so the download is not verified against one.
        download(url, cached, None, f"torchaudio:{bundle_name}", timeout=DOWNLOAD_TIMEOUT_S)
    return _load_state_dict(cached)


def _load_state_dict(file: Path) -> dict[str, torch.Tensor]:
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise PretrainedUnavailable(f"{file} is not a state dict of tensors; expected {LOCAL_FORMAT}")
    return state


def _build(bundle_name: str, pretrained: bool | Path, tiny: bool, layer_drop: float = 0.0) -> SpeechEncoder:
    from torchaudio.models import wav2vec2_model

    if tiny:
        return SpeechEncoder(wav2vec2_model(**TINY_PARAMS))
    bundle = _bundle(bundle_name)
    # LayerDrop is off by default: methods that hook blocks (prompts, adapters) expect every block
    # to run, and PEFT training is already regularised by its small trainable set.
    params = {**bundle._params, "encoder_layer_drop": layer_drop}
    model = wav2vec2_model(**params)
    if pretrained:
        # Loading maps the legacy weight_norm keys (weight_g / weight_v) of the published files
        # onto torch's parametrized weight norm, as bundle.get_model() does.
        model.load_state_dict(_pretrained_state_dict(bundle_name, pretrained))
    return SpeechEncoder(model, normalize_waveform=bundle._normalize_waveform)


@register_backbone(
    "wav2vec2_base",
    domain="speech",
    weights=PretrainedWeights(
        source="torchaudio:WAV2VEC2_BASE",
        licence=LICENCE,
        local_format=LOCAL_FORMAT + " (wav2vec2_fairseq_base_ls960.pth)",
        url=WEIGHTS_ROOT + "wav2vec2_fairseq_base_ls960.pth",
    ),
    structure=TORCHAUDIO_WAV2VEC2,
    hub_options=("layer_drop",),
)
def wav2vec2_base(pretrained: bool | Path = False, tiny: bool = False, **options: Any) -> SpeechEncoder:
    """wav2vec 2.0 base (95M), self-supervised on LibriSpeech 960 h, not fine-tuned; 768-d frames at 50 Hz."""
    return _build("WAV2VEC2_BASE", pretrained, tiny, **options)


@register_backbone(
    "hubert_base",
    domain="speech",
    weights=PretrainedWeights(
        source="torchaudio:HUBERT_BASE",
        licence=LICENCE,
        local_format=LOCAL_FORMAT + " (hubert_fairseq_base_ls960.pth)",
        url=WEIGHTS_ROOT + "hubert_fairseq_base_ls960.pth",
    ),
    structure=TORCHAUDIO_WAV2VEC2,
    hub_options=("layer_drop",),
)
def hubert_base(pretrained: bool | Path = False, tiny: bool = False, **options: Any) -> SpeechEncoder:
    """HuBERT base (95M), self-supervised on LibriSpeech 960 h, not fine-tuned; 768-d frames at 50 Hz."""
    return _build("HUBERT_BASE", pretrained, tiny, **options)
