"""PEFT methods that reach inside the attention of the domain backbones that are not HF/timm:
DoRA, (IA)^3 and KAdaptation on open_clip's nn.MultiheadAttention (default targets), and prefix
tuning on open_clip, torchaudio wav2vec2/HuBERT and fair-esm ESM-2. Each whole tiny model is
compared with a copy of the base whose in_proj tensors were set by hand, or whose attention
modules were replaced by a hand-written attention over [prefix; tokens]."""

from __future__ import annotations

import copy

import pytest
import torch

import zoo.peft as zp
from tests.peft.test_lora import randomise_trainable
from tests.peft.test_multihead_attention import METHODS, reference_tensors
from tests.peft.test_prefix_attention import multihead_weights, reference_attention, separate_weights
from zoo.catalog.backbones import BACKBONES, create_backbone
from zoo.tasks.heads import TaskModel

pytest.importorskip("open_clip")
SEQUENCES = ["MKTAYIAKQR", "GSHM", "PEELKKLLEELAKRHGW"]
P = 2


def tiny(name, task="classification", outputs=2, **options):
    torch.manual_seed(0)
    return TaskModel(create_backbone(name, scale="tiny", **options), task, outputs).eval()


def prefixes(model, layers, hidden):
    table = model.zoo_prefix.prompt_embeddings["default"].detach().view(P, layers * 2, hidden)
    return [(table[:, 2 * i], table[:, 2 * i + 1]) for i in range(layers)]


# -- open_clip -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dora", "ia3", "kadaptation"])
def test_clip_default_targets_match_hand_set_in_proj(method):
    from zoo_domains.video_text.backbones import OPEN_CLIP_VIT

    model = tiny("clip_vit_b32", text_tower=False)
    base = copy.deepcopy(model)
    options = {key: value for key, value in METHODS[method].items() if key != "target_modules"}
    zp.apply(model, method, structure=OPEN_CLIP_VIT, modules_to_save=[], **options)
    randomise_trainable(model, std=0.3)
    blocks = model.backbone.clip.visual.transformer.resblocks
    if method == "ia3":
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(1.0)
    factors = blocks[0].attn.zoo_kadaptation.kadaptation_A["default"] if method == "kadaptation" else None
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for block, adapted in zip(reference.backbone.clip.visual.transformer.resblocks, blocks):
            assert hasattr(adapted.attn, "base_layer")  # open-clip-vit's default targets reach every attention
            weight, bias = reference_tensors(
                method, adapted.attn, block.attn.in_proj_weight, block.attn.in_proj_bias, factors
            )
            block.attn.in_proj_weight.copy_(weight)
            block.attn.in_proj_bias.copy_(bias)
            if method == "ia3":  # and the input of the FFN's output projection
                block.mlp.c_proj.weight.mul_(adapted.mlp.c_proj.ia3_l["default"])
        batch = model.backbone.collate(model.backbone.example_inputs(2))
        torch.testing.assert_close(model(batch), reference(batch), atol=1e-5, rtol=1e-5)


def multihead_reference(attention, prefix):
    weights = [t.detach() for t in multihead_weights(attention)]

    def forward(query, key, value, need_weights=True, attn_mask=None, **unused):
        assert attn_mask is None and query is key is value  # open_clip's image tower: plain self-attention
        return reference_attention(query, *weights, attention.num_heads, *prefix)[0], None

    return forward


def test_clip_prefix_matches_dense_reference_and_leaves_captions_alone():
    from zoo_domains.video_text.backbones import OPEN_CLIP_VIT
    from zoo_domains.video_text.tasks import RetrievalModel

    torch.manual_seed(0)
    backbone = create_backbone("clip_vit_b32", scale="tiny")
    model = RetrievalModel(backbone).eval()
    # Frozen like the adapted model's base: open_clip's text tower differs in the last bit between
    # parameters that require grad and those that do not, even under no_grad.
    base = copy.deepcopy(model).requires_grad_(False)
    zp.apply(model, "prefix", structure=OPEN_CLIP_VIT, num_virtual_tokens=P, modules_to_save=[])
    reference = copy.deepcopy(base)
    blocks = reference.backbone.clip.visual.transformer.resblocks
    for block, prefix in zip(blocks, prefixes(model, len(blocks), 32)):
        block.attn.forward = multihead_reference(block.attn, prefix)
    batch = backbone.collate(backbone.example_inputs(2))
    with torch.no_grad():
        out, expected, unadapted = model(batch), reference(batch), base(batch)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(out[:, 1], unadapted[:, 1])  # the text tower has no prefixes
        with zp.disabled(model):
            assert torch.equal(model(batch), unadapted)


# -- torchaudio wav2vec2 / HuBERT ---------------------------------------------------------------
def torchaudio_reference(attention, prefix, seen):
    weights = [t.detach() for t in separate_weights(attention)]

    def forward(x, attention_mask=None, position_bias=None, key_padding_mask=None):
        seen.append(attention_mask is not None)
        return reference_attention(x, *weights, attention.num_heads, *prefix, bias=attention_mask)[0], None

    return forward


@pytest.mark.parametrize("name", ["wav2vec2_base", "hubert_base"])
def test_speech_prefix_matches_dense_reference(name):
    pytest.importorskip("torchaudio")
    model = tiny(name)
    base = copy.deepcopy(model)
    zp.apply(model, "prefix", num_virtual_tokens=P, modules_to_save=[])  # structure detected: torchaudio-wav2vec2
    reference = copy.deepcopy(base)
    layers = reference.backbone.model.encoder.transformer.layers
    seen: list[bool] = []
    for layer, prefix in zip(layers, prefixes(model, len(layers), 32)):
        layer.attention.forward = torchaudio_reference(layer.attention, prefix, seen)
    batch = model.backbone.collate(model.backbone.example_inputs(3))  # clips of different lengths
    with torch.no_grad():
        torch.testing.assert_close(model(batch), reference(batch), atol=1e-5, rtol=1e-5)
        assert seen and all(seen)  # padded frames were masked through the prefix-extended mask
        with zp.disabled(model):
            assert torch.equal(model(batch), base(batch))
    model.train()
    model.loss(model(batch), torch.tensor([0, 1, 0])).backward()
    assert model.zoo_prefix.prompt_embeddings["default"].grad.abs().sum() > 0


# -- fair-esm ESM-2 (rotary) ---------------------------------------------------------------------
def esm_reference(attention, prefix):
    weights = [t.detach() for t in separate_weights(attention)]

    def forward(
        query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, need_head_weights=False, **unused
    ):
        assert attn_mask is None and not need_head_weights
        out, averaged = reference_attention(
            query.transpose(0, 1),
            *weights,
            attention.num_heads,
            *prefix,
            key_padding=key_padding_mask,
            rotary=True,
        )
        return out.transpose(0, 1), averaged

    return forward


def test_esm_prefix_matches_dense_reference_and_respects_padding():
    pytest.importorskip("esm")
    model = tiny("esm2_t6_8m")
    base = copy.deepcopy(model)
    zp.apply(model, "prefix", structure=BACKBONES.get("esm2_t6_8m").structure, num_virtual_tokens=P, modules_to_save=[])
    reference = copy.deepcopy(base)
    layers = reference.backbone.layers
    for layer, prefix in zip(layers, prefixes(model, len(layers), 32)):
        layer.self_attn.forward = esm_reference(layer.self_attn, prefix)
    backbone = model.backbone
    batch = backbone.collate(SEQUENCES)
    with torch.no_grad():
        features = backbone(batch)
        torch.testing.assert_close(features, reference.backbone(batch), atol=1e-5, rtol=1e-5)
        alone = backbone(backbone.collate(SEQUENCES[1:2]))  # a padded sequence gets what it gets alone
        torch.testing.assert_close(features[1, : len(SEQUENCES[1]) + 2], alone[0], atol=1e-5, rtol=1e-5)
        with zp.disabled(model):
            assert torch.equal(backbone(batch), base.backbone(batch))
