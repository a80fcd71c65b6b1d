"""AntiBERTy (Ruffolo, Gray and Sulam 2021, "Deciphering antibody affinity maturation with language
models and weakly supervised learning", arXiv:2112.07782): an 8-layer, 512-wide BERT trained on
558M natural antibody sequences.

The backbone is the BERT encoder (transformers ``BertModel``) without the masked-LM, species,
chain and graft heads and without the pooler, which zoo's tasks do not use. Its weights are the
ones the ``antiberty`` 0.1.3 package on PyPI carries (``antiberty/trained_models/``, MIT licence;
1.0.0 and later download them at run time instead), so ``pretrained=True`` works offline once
``pip install "zoo-peft[pretrained]"`` has installed it. The checkpoint is a pickle, read with
``torch.load(weights_only=True)`` and loaded into a ``BertModel`` built from its ``config.json``;
the package's own loader (``from_pretrained``) is not used.

Sequences are tokenised as the package's ``AntiBERTyRunner`` does: residues joined with spaces,
read by ``BertTokenizer(vocab.txt, do_lower_case=False)``, so a sequence of L residues is
``[CLS] r_1 ... r_L [SEP]``, the layout of ESM-2's ``<cls> ... <eos>``: per-residue labels padded
``(1, 1)`` line up the same way, and :meth:`AntibertyBackbone.pool` averages over the residues
only. The vocabulary has the 20 standard amino acids; ``X`` (unknown) is read as ``[UNK]``, and
the other letters of ESM's alphabet (B, U, Z, O), which AntiBERTy never saw, are refused.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.catalog.backbones import PretrainedUnavailable, PretrainedWeights, register_backbone
from zoo.catalog.datasets import DataError
from zoo.peft.structure import BERT_STYLE
from zoo_domains.protein.backbones import check_sequence

PACKAGE = "antiberty==0.1.3"
INSTALL = 'pip install "zoo-peft[pretrained]" (or pip install antiberty==0.1.3)'
MODEL_FOLDER = "AntiBERTy_md_smooth"
LOCAL_FORMAT = (
    f"the trained_models folder of the antiberty 0.1.3 package: vocab.txt and {MODEL_FOLDER}/ "
    "(config.json and pytorch_model.bin or model.safetensors)"
)
CHECKPOINT_SHA256 = "f1ae33eac8cc8784a7d4be5a600141d2fa7bc7d8d5b3f5324d64a6a63bd0f137"
"""sha256 of ``AntiBERTy_md_smooth/pytorch_model.bin`` in the antiberty 0.1.3 wheel."""

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
VOCABULARY = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *RESIDUES)
"""``antiberty/trained_models/vocab.txt``, in order (token id = position)."""
UNKNOWN_RESIDUE = "X"
MAX_TOKENS = 512
"""AntiBERTy's position embeddings: [CLS], at most 510 residues, [SEP]."""

# AntiBERTy_md_smooth/config.json (the BERT architecture; its "architectures" names the package's heads).
ARCHITECTURE = dict(
    vocab_size=len(VOCABULARY),
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    intermediate_size=2048,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=MAX_TOKENS,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    pad_token_id=0,
)
TINY_ARCHITECTURE = {
    **ARCHITECTURE,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}


def antiberty_tokenizer(vocab_file: Path | None = None) -> Any:
    """``BertTokenizer(vocab_file, do_lower_case=False)``, as ``AntiBERTyRunner``; None: AntiBERTy's vocabulary."""
    from transformers import BertTokenizer

    # the vocabulary file goes by position: transformers 5 ignores the vocab_file keyword and builds an empty
    # vocabulary (every residue [UNK]); transformers 4 takes either
    if vocab_file is not None:
        return BertTokenizer(str(vocab_file), do_lower_case=False)
    with tempfile.TemporaryDirectory() as folder:  # the slow tokenizer reads its vocabulary from a file
        path = Path(folder) / "vocab.txt"
        path.write_text("\n".join(VOCABULARY) + "\n")
        return BertTokenizer(str(path), do_lower_case=False)


def check_antibody_sequence(sequence: Any, where: str) -> str:
    """``sequence`` if AntiBERTy can read it (its 20 residues, X as unknown, at most 510), else DataError."""
    check_sequence(sequence, where)
    allowed = RESIDUES + UNKNOWN_RESIDUE
    bad = set(sequence) - set(allowed)
    if bad:
        letter = min(bad, key=sequence.index)
        raise DataError(
            f"{where}: letter {letter!r} at residue {sequence.index(letter) + 1} is not in AntiBERTy's vocabulary "
            f"(the 20 standard amino acids, X for unknown); allowed: {allowed}. Use an ESM-2 backbone for it"
        )
    if len(sequence) > MAX_TOKENS - 2:
        raise DataError(
            f"{where}: {len(sequence)} residues; AntiBERTy reads at most {MAX_TOKENS - 2} (its {MAX_TOKENS} "
            f"positions include [CLS] and [SEP]). Split the sequence (e.g. heavy and light chains apart)"
        )
    return sequence


class AntibertyBackbone(nn.Module):
    """A transformers ``BertModel`` and AntiBERTy's tokenizer behind zoo's Backbone protocol."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.hidden_size = int(model.config.hidden_size)
        # Tokens that are never a residue ([UNK] and [MASK] stand in for one).
        self.special_ids = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Last-layer features (batch, tokens, hidden); token 0 is [CLS]."""
        device = self.model.embeddings.word_embeddings.weight.device
        return self.model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).last_hidden_state

    def residue_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "residue_mask" in batch:
            return batch["residue_mask"]
        ids = batch["input_ids"]
        special = torch.isin(ids, torch.tensor(self.special_ids, device=ids.device))
        return ~special & batch["attention_mask"].bool()

    def pool(self, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over the residues of each sequence (not [CLS], [SEP] or padding)."""
        mask = self.residue_mask(batch).to(features.device).unsqueeze(-1).to(features.dtype)
        return (features * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def collate(self, examples: list[str]) -> dict[str, torch.Tensor]:
        """Token ids (batch, 2 + longest sequence) of the space-joined residues, attention and residue masks."""
        if isinstance(examples, str):
            raise TypeError("collate takes a list of sequences")
        sequences = [check_antibody_sequence(s, f"sequence {i} of the batch") for i, s in enumerate(examples)]
        encoded = self.tokenizer([" ".join(s) for s in sequences], padding=True, return_tensors="pt")
        residue_mask = torch.zeros_like(encoded["input_ids"], dtype=torch.bool)
        for row, sequence in enumerate(sequences):
            residue_mask[row, 1 : 1 + len(sequence)] = True  # token 0 is [CLS]
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "residue_mask": residue_mask,
        }

    def example_inputs(self, count: int) -> list[str]:
        generator = random.Random(count)
        return ["".join(generator.choice(RESIDUES) for _ in range(6 + 3 * i % 11)) for i in range(count)]


# -- building and loading ------------------------------------------------------------


def _random(architecture: dict[str, Any]) -> AntibertyBackbone:
    from transformers import BertConfig, BertModel

    return AntibertyBackbone(BertModel(BertConfig(**architecture), add_pooling_layer=False), antiberty_tokenizer())


def _files(path: Path) -> tuple[Path, Path]:
    """(the model folder, vocab.txt) of a trained_models folder, or of the model folder inside one."""
    model_folder = path / MODEL_FOLDER if (path / MODEL_FOLDER).is_dir() else path
    vocab = next((v for v in (path / "vocab.txt", model_folder.parent / "vocab.txt") if v.is_file()), None)
    if not (model_folder / "config.json").is_file() or vocab is None:
        raise PretrainedUnavailable(f"backbone antiberty: {path} is not {LOCAL_FORMAT}")
    return model_folder, vocab


def _encoder_state(model_folder: Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors (``bert.*`` less the pooler), read without unpickling any object."""
    safetensors, pickle = model_folder / "model.safetensors", model_folder / "pytorch_model.bin"
    try:
        if safetensors.is_file():
            from safetensors.torch import load_file

            state = load_file(safetensors)
        elif pickle.is_file():
            state = torch.load(pickle, map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"no pytorch_model.bin or model.safetensors in {model_folder}")
    except Exception as error:
        raise PretrainedUnavailable(
            f"backbone antiberty: could not read the weights in {model_folder} ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[-1][:300]}); expected {LOCAL_FORMAT}. {INSTALL} installs them"
        ) from None
    return {
        key.removeprefix("bert."): tensor
        for key, tensor in state.items()
        if key.startswith("bert.") and not key.startswith("bert.pooler.") and key != "bert.embeddings.position_ids"
    }


def load_antiberty(path: Path) -> AntibertyBackbone:
    """The encoder of the AntiBERTy checkpoint under ``path`` (see :data:`LOCAL_FORMAT`) and its tokenizer."""
    from transformers import BertConfig, BertModel

    model_folder, vocab = _files(path)
    config = BertConfig.from_json_file(str(model_folder / "config.json"))
    if config.model_type != "bert":
        raise PretrainedUnavailable(f"backbone antiberty: {model_folder} holds a {config.model_type!r} model, not BERT")
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(_encoder_state(model_folder), strict=False)
    if missing or unexpected:
        raise PretrainedUnavailable(
            f"backbone antiberty: {model_folder} does not fit the BertModel its config.json describes: "
            f"{len(missing)} weights missing (e.g. {', '.join(sorted(missing)[:3]) or 'none'}), {len(unexpected)} "
            f"not used (e.g. {', '.join(sorted(unexpected)[:3]) or 'none'}); refusing to initialise any at random"
        )
    tokenizer = antiberty_tokenizer(vocab)
    if tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) != list(VOCABULARY):
        raise PretrainedUnavailable(f"backbone antiberty: {vocab} is not AntiBERTy's vocabulary {' '.join(VOCABULARY)}")
    return AntibertyBackbone(model.eval(), tokenizer)


@register_backbone(
    "antiberty",
    domain="protein",
    weights=PretrainedWeights(
        source=f"pypi:{PACKAGE}",
        licence="MIT (antiberty)",
        local_format=LOCAL_FORMAT,
        sha256=CHECKPOINT_SHA256,
        url="https://pypi.org/project/antiberty/0.1.3/",
        package=("antiberty", "antiberty", "trained_models"),
    ),
    structure=BERT_STYLE,
    description="AntiBERTy antibody BERT (Ruffolo et al. 2021), 8 layers, width 512",
    hub_options=(),  # it takes no builder options
)
def build(pretrained: bool | Path = False, tiny: bool = False, **options: Any) -> AntibertyBackbone:
    if options:
        raise ValueError(f"backbone antiberty: unknown option(s) {', '.join(sorted(options))}; it takes none")
    if tiny:
        return _random(TINY_ARCHITECTURE)
    if pretrained is False:
        return _random(ARCHITECTURE)
    if pretrained is True:  # create_backbone passes the installed package's folder instead when there is one
        raise PretrainedUnavailable(
            f"backbone antiberty: its pretrained weights come from the antiberty 0.1.3 package, which is not "
            f"installed (or is a later version, which carries no weights). {INSTALL}; or pass "
            f"pretrained=/path/to/antiberty/trained_models ({LOCAL_FORMAT}; licence MIT), "
            f"or use scale=tiny for a smoke run with random weights"
        )
    return load_antiberty(Path(pretrained))
