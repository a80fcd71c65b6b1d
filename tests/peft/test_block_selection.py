"""method.layers: block-based methods adapt only the selected blocks, save and reload that way,
and everything else is refused with the reason."""

import copy

import pytest
import torch

import zoo.peft as zp
from zoo.errors import ConfigError


@pytest.fixture
def bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)
    return BertForSequenceClassification(config).eval()


def _trained_blocks(model):
    blocks = set()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and ".layer." in name:
            blocks.add(int(name.split(".layer.")[1].split(".")[0]))
    return blocks


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "kadaptation", "adapter", "adaptformer", "loreft"])
@pytest.mark.parametrize("layers, expected", [([1, 3], {1, 3}), ("first:1", {0}), ("last:2", {2, 3})])
def test_only_the_selected_blocks_get_parameters(bert, method, layers, expected):
    zp.apply(bert, method, layers=layers)
    assert _trained_blocks(bert) == expected


@pytest.mark.parametrize("method", ["lora", "ia3", "adapter"])
def test_each_block_costs_the_same_so_the_count_scales(bert, method):
    every = zp.parameter_report(zp.apply(copy.deepcopy(bert), method, modules_to_save=[])).trainable
    one = zp.parameter_report(zp.apply(copy.deepcopy(bert), method, modules_to_save=[], layers=[2])).trainable
    assert one * 4 == every


def test_a_saved_selection_reloads_onto_the_same_blocks(bert, tmp_path):
    base = copy.deepcopy(bert)
    zp.apply(bert, "lora", layers="last:1")
    for name, parameter in bert.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)  # B starts at zero; make the adapter change the output
    zp.save_adapter(bert, tmp_path)
    loaded = zp.load_adapter(base, tmp_path)
    assert _trained_blocks(loaded) == {3}
    inputs = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs).logits, bert(inputs).logits)


@pytest.mark.parametrize("method", ["bitfit", "full", "sparse", "linear"])
def test_methods_that_do_not_work_block_by_block_refuse(bert, method):
    with pytest.raises(ConfigError, match="does not work block by block"):
        zp.apply(bert, method, layers=[0])


@pytest.mark.parametrize("method", ["prefix", "vpt"])
def test_methods_that_thread_through_every_block_refuse(bert, method):
    with pytest.raises(ConfigError, match="goes through every block"):
        zp.apply(bert, method, layers=[0])


@pytest.mark.parametrize(
    "layers, message",
    [
        ([4], "has 4 blocks"),
        ("last:5", "has 4"),
        ("auto:2", "measure before training"),
        ("middle:2", "'first:K'"),
        ([-1], "block indices"),
        ("first:0", "K >= 1"),
    ],
)
def test_bad_selections_name_the_problem(bert, layers, message):
    with pytest.raises(ConfigError, match=message):
        zp.apply(bert, "lora", layers=layers)
    assert not any("lora" in name for name, _ in bert.named_parameters())  # nothing left behind
