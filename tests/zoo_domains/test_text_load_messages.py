"""Loading a sentence-transformers checkpoint (all-MiniLM-L6-v2's layout) says nothing when all is as
expected, and still says when a checkpoint holds weights the model does not use."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from zoo.catalog.backbones import create_backbone


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_records():
    """What transformers' loading code logs (its warnings go through the `transformers.modeling_utils` logger)."""
    target = logging.getLogger("transformers.modeling_utils")
    handler, level = Records(), target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    yield handler.messages
    target.removeHandler(handler)
    target.setLevel(level)


def sentence_transformers_checkpoint(folder):
    """A tiny BertModel saved with its pooler, as sentence-transformers checkpoints are (architectures: BertModel)."""
    from transformers import BertModel

    tiny = create_backbone("minilm_l6", scale="tiny")
    torch.manual_seed(0)
    model = BertModel(tiny.model.config, add_pooling_layer=True)
    model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    assert "pooler.dense.weight" in load_file(folder / "model.safetensors")
    return model


def test_the_left_out_pooler_is_not_reported(tmp_path, transformers_records):
    saved = sentence_transformers_checkpoint(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of ours either
        loaded = create_backbone("minilm_l6", pretrained=tmp_path)
    assert not [m for m in transformers_records if "were not used" in m], transformers_records
    torch.testing.assert_close(loaded.model.embeddings.word_embeddings.weight, saved.embeddings.word_embeddings.weight)
    # only during the load: afterwards transformers' logger keeps every record
    assert not logging.getLogger("transformers.modeling_utils").filters


def test_other_unused_weights_are_still_reported(tmp_path, transformers_records):
    sentence_transformers_checkpoint(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["encoder.surprise.weight"] = torch.zeros(2, 2)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"1 weights of checkpoint .* are not used by BertModel \(encoder.surprise"):
        create_backbone("minilm_l6", pretrained=tmp_path)
