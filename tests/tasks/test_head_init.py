"""task.options.head_init: a zero head starts every output at 0; an unknown value is refused by name."""

import pytest
import torch

from zoo.catalog.backbones import create_backbone
from zoo.errors import ConfigError
from zoo.tasks.heads import TaskModel


def test_a_zero_head_outputs_zero_and_the_default_does_not():
    torch.manual_seed(0)
    backbone = create_backbone("bert_base", scale="tiny")
    batch = backbone.collate(backbone.example_inputs(4))
    zero = TaskModel(backbone, "classification", 3, head_init="zeros").eval()
    with torch.no_grad():
        assert torch.equal(zero(batch), torch.zeros(4, 3))
        assert TaskModel(backbone, "classification", 3).eval()(batch).abs().max() > 0


def test_an_unknown_head_init_is_refused_naming_the_choices():
    backbone = create_backbone("bert_base", scale="tiny")
    with pytest.raises(ConfigError, match="head_init='zero': choose one of default, zeros"):
        TaskModel(backbone, "classification", 3, head_init="zero")
