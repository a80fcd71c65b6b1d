"""ESM-2 protein language models (Lin et al. 2023, "Evolutionary-scale prediction of
atomic-level protein structure with a language model", Science 379:1123) from fair-esm.

Each registered backbone is the ESM-2 encoder (token embedding, transformer layers, final
layer norm) without the masked-LM and contact heads, which zoo's tasks do not use. It maps
a batch of sequences to per-token features ``(batch, tokens, hidden)`` of the last layer,
where token 0 is ``<cls>`` (BOS), tokens 1..L the residues, then ``<eos>`` and padding;
:meth:`EsmBackbone.pool` averages over the residues only.

Pretrained weights are fair-esm's own checkpoints (``dl.fbaipublicfiles.com``, MIT
licence, no published checksums), fetched into torch hub's cache (the folder fair-esm
uses) with a short timeout, and read with ``torch.load(weights_only=True)``: an ESM-2
checkpoint is ``{"model": state dict, "cfg": {"model": argparse.Namespace}}``, so
``argparse.Namespace`` (a plain attribute bag that runs no code) is the one class that is
allowlisted. fair-esm's own loaders call ``torch.load`` without ``weights_only``, which
would unpickle arbitrary objects; only its model builder is reused.
"""

from __future__ import annotations

import argparse
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.catalog.backbones import PretrainedUnavailable, PretrainedWeights, register_backbone
from zoo.catalog.datasets import DataError
from zoo.peft.exclusions import register_exclusion
from zoo.peft.structure import Structure, register_structure

FAIR_ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
FAIR_ESM_REGRESSION_URL = "https://dl.fbaipublicfiles.com/fair-esm/regression/{name}-contact-regression.pt"
"""Contact-prediction weights, published next to each model; not needed for features."""
DOWNLOAD_TIMEOUT_S = 10.0
LICENCE = "MIT (fair-esm)"
LOCAL_FORMAT = (
    "a fair-esm ESM-2 checkpoint file <name>.pt (as downloaded from dl.fbaipublicfiles.com), or a folder holding it"
)

# One-letter residue codes of fair-esm's ESM-1b/ESM-2 alphabet (esm.constants.proteinseq_toks
# without the gap tokens '.' and '-'): the 20 standard amino acids plus X (unknown),
# B (D/N), U (selenocysteine), Z (E/Q) and O (pyrrolysine). Anything else would be encoded
# silently as <unk>, so it is rejected instead.
PROTEIN_LETTERS = "LAGVSERTIDPKQNFYMHWCXBUZO"
_ALLOWED = frozenset(PROTEIN_LETTERS)

ESM2_STRUCTURE = register_structure(
    Structure(
        name="fair-esm2",
        blocks=r"(.*\.)?layers\.\d+",
        attention="self_attn",
        attention_kind="separate",
        query="self_attn.q_proj",
        key="self_attn.k_proj",
        value="self_attn.v_proj",
        attention_out="self_attn.out_proj",
        ffn_in="fc1",
        ffn_out="fc2",
        heads=("head",),
        cls_tokens=1,
    )
)
register_exclusion(
    "clip_adapter",
    ESM2_STRUCTURE.name,
    reason="ESM-2 backbones average the residue features in `pool()`, so no module returns the pooled embedding "
    "that a feature adapter refines",
    error=r"declares no pooled embedding",
)
register_exclusion(
    "unipelt",
    ESM2_STRUCTURE.name,
    reason="fair-esm's attention spreads one prefix table over the whole batch (and runs sequence-first inside "
    "blocks that take batch-first input), while unipelt's gates scale each example's prefix, LoRA update and "
    "adapter output by a value of its own",
    error=r"takes one prefix table for the whole batch",
)


def check_sequence(sequence: Any, where: str) -> str:
    """``sequence`` if it is a non-empty string of ESM residue letters, else DataError naming ``where``."""
    if not isinstance(sequence, str):
        raise DataError(
            f"{where}: a protein sequence must be a string of one-letter codes, got {type(sequence).__name__}"
        )
    if not sequence:
        raise DataError(f"{where}: empty protein sequence")
    bad = set(sequence) - _ALLOWED
    if bad:
        letter = min(bad, key=sequence.index)
        position = sequence.index(letter) + 1
        hint = " (use upper-case one-letter codes)" if letter.upper() in _ALLOWED else ""
        raise DataError(
            f"{where}: letter {letter!r} at residue {position} is not in the ESM alphabet{hint}; "
            f"allowed: {PROTEIN_LETTERS}"
        )
    return sequence


_batch_first_layer: type | None = None


def _batch_first_layer_class() -> type:
    """fair-esm's TransformerLayer taking and returning (batch, tokens, dim), with a BERT-style mask.

    fair-esm's layers work sequence-first (tokens, batch, dim) and take a padding mask
    (True = padding). PEFT methods that hook a block's input or output (prompts, position
    interventions) expect (batch, tokens, dim) first and an ``attention_mask`` where True
    means "attend", as HF encoders pass it; this subclass gives the block that interface
    while its parameters and names stay fair-esm's.
    """
    global _batch_first_layer
    if _batch_first_layer is None:
        from esm.modules import TransformerLayer

        class BatchFirstTransformerLayer(TransformerLayer):
            def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
                # attention_mask: (batch, 1, 1, tokens) bool, True = attend (4-D so that a
                # batch size equal to the token count cannot be mistaken for a query axis).
                padding = None if attention_mask is None else ~attention_mask.reshape(hidden_states.shape[0], -1)
                output, _ = super().forward(hidden_states.transpose(0, 1), self_attn_padding_mask=padding)
                return output.transpose(0, 1)

        BatchFirstTransformerLayer.__module__ = __name__
        BatchFirstTransformerLayer.__qualname__ = "BatchFirstTransformerLayer"
        _batch_first_layer = BatchFirstTransformerLayer
    return _batch_first_layer


def __getattr__(name: str) -> Any:  # lets pickle and copy find the lazily created class
    if name == "BatchFirstTransformerLayer":
        return _batch_first_layer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class EsmBackbone(nn.Module):
    """The ESM-2 encoder of a fair-esm ``ESM2`` model; parameter names are fair-esm's."""

    def __init__(self, esm2: nn.Module, alphabet: Any) -> None:
        super().__init__()
        self.embed_tokens = esm2.embed_tokens
        self.layers = esm2.layers
        layer_class = _batch_first_layer_class()
        for layer in self.layers:
            layer.__class__ = layer_class  # same parameters and names, batch-first interface
        self.emb_layer_norm_after = esm2.emb_layer_norm_after
        self.embed_scale = esm2.embed_scale
        self.token_dropout = esm2.token_dropout
        self.hidden_size = esm2.embed_dim
        self.num_layers = esm2.num_layers
        self.alphabet = alphabet
        self.padding_idx, self.mask_idx = alphabet.padding_idx, alphabet.mask_idx
        self.special_indices = (alphabet.padding_idx, alphabet.cls_idx, alphabet.eos_idx)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last-layer features (batch, tokens, hidden), computed as ``ESM2.forward`` does."""
        tokens = batch["tokens"].to(self.embed_tokens.weight.device)
        padding = tokens.eq(self.padding_idx)
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.token_dropout:
            # ESM-2 was trained with masked tokens zeroed and the rest rescaled to the
            # training mask ratio; fair-esm applies the same at inference.
            masked = tokens == self.mask_idx
            x = x.masked_fill(masked.unsqueeze(-1), 0.0)
            mask_ratio_train = 0.15 * 0.8
            mask_ratio_observed = masked.sum(-1).to(x.dtype) / (~padding).sum(-1)
            x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[:, None, None]
        x = x * (1 - padding.unsqueeze(-1).type_as(x))
        attention_mask = (~padding)[:, None, None, :] if padding.any() else None
        for layer in self.layers:
            x = layer(x, attention_mask=attention_mask)
        return self.emb_layer_norm_after(x)

    def residue_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "residue_mask" in batch:
            return batch["residue_mask"]
        tokens = batch["tokens"]
        special = torch.zeros_like(tokens, dtype=torch.bool)
        for index in self.special_indices:
            special |= tokens == index
        return ~special

    def pool(self, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over the residues of each sequence (not <cls>, <eos> or padding)."""
        mask = self.residue_mask(batch).to(features.device).unsqueeze(-1).to(features.dtype)
        return (features * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def collate(self, examples: list[str]) -> dict[str, torch.Tensor]:
        """Tokens (batch, 2 + longest sequence) via fair-esm's batch converter, and the residue mask."""
        sequences = [check_sequence(s, f"sequence {i} of the batch") for i, s in enumerate(examples)]
        converter = self.alphabet.get_batch_converter()
        _, _, tokens = converter([(str(i), s) for i, s in enumerate(sequences)])
        residue_mask = torch.zeros_like(tokens, dtype=torch.bool)
        for row, sequence in enumerate(sequences):
            residue_mask[row, 1 : 1 + len(sequence)] = True  # token 0 is <cls>
        return {"tokens": tokens, "residue_mask": residue_mask}

    def example_inputs(self, count: int) -> list[str]:
        generator = random.Random(count)
        standard = PROTEIN_LETTERS[:20]
        return ["".join(generator.choice(standard) for _ in range(6 + 3 * i % 11)) for i in range(count)]


# -- building and loading ------------------------------------------------------------


@dataclass(frozen=True)
class Esm2Variant:
    fair_esm_name: str
    num_layers: int
    embed_dim: int
    attention_heads: int
    parameters: str


VARIANTS = {
    "esm2_t6_8m": Esm2Variant("esm2_t6_8M_UR50D", 6, 320, 20, "8M"),
    "esm2_t12_35m": Esm2Variant("esm2_t12_35M_UR50D", 12, 480, 20, "35M"),
    "esm2_t30_150m": Esm2Variant("esm2_t30_150M_UR50D", 30, 640, 20, "150M"),
    "esm2_t33_650m": Esm2Variant("esm2_t33_650M_UR50D", 33, 1280, 20, "650M"),
}
TINY = Esm2Variant("esm2_tiny", 2, 32, 4, "tiny")


def _random_esm2(variant: Esm2Variant) -> nn.Module:
    import esm

    alphabet = esm.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(
        num_layers=variant.num_layers,
        embed_dim=variant.embed_dim,
        attention_heads=variant.attention_heads,
        alphabet=alphabet,
        token_dropout=True,
    )
    return EsmBackbone(model, alphabet)


def read_checkpoint(path: Path) -> dict:
    """A fair-esm checkpoint, unpickled with ``weights_only=True`` (argparse.Namespace allowed)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedUnavailable(
            f"{path} could not be read as a fair-esm checkpoint with torch.load(weights_only=True) "
            f"({type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}). zoo reads ESM-2 files whose "
            f"config is an argparse.Namespace or a dict, as fair-esm publishes them; re-save other files as "
            f"{{'model': state_dict, 'cfg': {{'model': dict(encoder_layers=..., encoder_embed_dim=..., "
            f"encoder_attention_heads=..., token_dropout=True)}}}}"
        ) from None
    if not isinstance(data, dict) or "model" not in data or "cfg" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise PretrainedUnavailable(
            f"{path} is not an ESM-2 checkpoint in fair-esm's format: expected a dict with 'model' (state dict) "
            f"and 'cfg' ({{'model': config}}), found {keys}"
        )
    config = data["cfg"].get("model") if isinstance(data["cfg"], dict) else None
    if isinstance(config, dict):  # a plain-dict config (e.g. converted from omegaconf) works the same
        data["cfg"] = {**data["cfg"], "model": argparse.Namespace(**config)}
    elif not isinstance(config, argparse.Namespace):
        raise PretrainedUnavailable(
            f"{path}: cfg['model'] must be an argparse.Namespace or a dict, got {type(config).__name__}"
        )
    return data


def esm2_from_checkpoint(path: Path, variant: Esm2Variant) -> EsmBackbone:
    """Build through fair-esm's ``load_model_and_alphabet_core`` from a safely read checkpoint."""
    import esm.pretrained

    data = read_checkpoint(path)
    with warnings.catch_warnings():
        # Contact-regression weights are a separate file that only contact prediction needs.
        warnings.filterwarnings("ignore", message="Regression weights not found")
        model, alphabet = esm.pretrained.load_model_and_alphabet_core(variant.fair_esm_name, data, None)
    if (model.num_layers, model.embed_dim) != (variant.num_layers, variant.embed_dim):
        warnings.warn(
            f"{path} holds an ESM-2 with {model.num_layers} layers of width {model.embed_dim}, not "
            f"{variant.fair_esm_name} ({variant.num_layers} layers of width {variant.embed_dim}); using the checkpoint's",
            stacklevel=3,
        )
    return EsmBackbone(model.eval(), alphabet)


def fetch_checkpoint(variant: Esm2Variant) -> Path:
    """fair-esm's checkpoint in torch hub's cache (``$TORCH_HOME/hub/checkpoints``), downloaded if missing."""
    from zoo.catalog.download import DownloadError, download

    path = Path(torch.hub.get_dir()) / "checkpoints" / f"{variant.fair_esm_name}.pt"
    if path.exists():
        return path
    url = FAIR_ESM_URL.format(name=variant.fair_esm_name)
    try:
        # fair-esm publishes no checksums, so none is verified.
        return download(url, path, None, f"ESM-2 weights {variant.fair_esm_name}", timeout=DOWNLOAD_TIMEOUT_S)
    except DownloadError as error:
        raise PretrainedUnavailable(
            f"{str(error).split('. Without network')[0]}. "
            f"Without network access, fetch that file elsewhere and either put it at {path} or pass "
            f"pretrained=/path/to/{variant.fair_esm_name}.pt ({LOCAL_FORMAT}; licence {LICENCE}), "
            f"or use scale=tiny for a smoke run with random weights"
        ) from None


def _build(key: str, pretrained: bool | Path, tiny: bool, **options: Any) -> EsmBackbone:
    if options:
        raise ValueError(f"backbone {key}: unknown option(s) {', '.join(sorted(options))}; ESM-2 backbones take none")
    variant = VARIANTS[key]
    if tiny:
        return _random_esm2(TINY)
    if pretrained is False:
        return _random_esm2(variant)
    if pretrained is True:
        path = fetch_checkpoint(variant)
    else:
        path = Path(pretrained)
        if path.is_dir():
            candidates = [path / f"{variant.fair_esm_name}.pt", *sorted(path.glob("*.pt"))]
            found = [c for c in candidates if c.is_file() and not c.name.endswith("-contact-regression.pt")]
            if not found:
                raise PretrainedUnavailable(f"backbone {key}: folder {path} holds no .pt file; expected {LOCAL_FORMAT}")
            path = found[0]
    return esm2_from_checkpoint(path, variant)


def _register(key: str, variant: Esm2Variant) -> None:
    weights = PretrainedWeights(
        source=f"esm:{variant.fair_esm_name}",
        licence=LICENCE,
        local_format=LOCAL_FORMAT,
        sha256=None,  # fair-esm publishes none
        url=FAIR_ESM_URL.format(name=variant.fair_esm_name),
    )
    description = f"ESM-2 {variant.parameters} ({variant.num_layers} layers, width {variant.embed_dim}), fair-esm"

    @register_backbone(  # ESM-2 takes no builder options, so a hub entry may set none
        key, domain="protein", weights=weights, structure=ESM2_STRUCTURE, description=description, hub_options=()
    )
    def build(pretrained: bool | Path = False, tiny: bool = False, **options: Any) -> EsmBackbone:
        return _build(key, pretrained, tiny, **options)


for _key, _variant in VARIANTS.items():
    _register(_key, _variant)
