"""Tiny backbones with random weights, shared by the tests."""

from __future__ import annotations

import warnings

import pytest
import torch


def tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).eval()


def tiny_vit(num_classes: int = 3, seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=num_classes,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=4,
    ).eval()


@pytest.fixture(autouse=True)
def _pytest_formats_the_warnings():
    """The `zoo` command line sets a one-line warnings.formatwarning for its users, and the tests call
    it in this process: put pytest's back, so the warnings summary keeps each warning's file and line."""
    original = warnings.formatwarning
    yield
    warnings.formatwarning = original


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture
def vit():
    return tiny_vit()


@pytest.fixture
def token_batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 100, (4, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # one padded row so masks are exercised
    labels = torch.tensor([0, 1, 2, 1])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture
def image_batch():
    generator = torch.Generator().manual_seed(2)
    return torch.randn(4, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 1])
