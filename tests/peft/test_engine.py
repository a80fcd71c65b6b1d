"""Adapters on a model: naming, activation, disabling, deleting, reporting, files, bad input."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo.peft as zp
from tests.conftest import tiny_bert
from tests.peft.test_lora import randomise_trainable
from zoo.errors import ConfigError
from zoo.peft.engine import peft_state
from zoo.peft.io import AdapterFileError
from zoo.peft.layers import AdapterModule


def logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_two_named_adapters_switch_and_disable(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "lora", adapter_name="a", r=2, target_modules=["query"])
    randomise_trainable(bert, seed=1)
    zp.apply(bert, "lora", adapter_name="b", r=3, target_modules=["value"])
    randomise_trainable(bert, seed=2)
    assert zp.active_adapter(bert) == "b"
    out_b = logits(bert, token_batch)
    zp.set_active_adapter(bert, "a")
    out_a = logits(bert, token_batch)
    trainable = [n for n, p in bert.named_parameters() if p.requires_grad]
    assert trainable and all(".a." in n for n in trainable)
    assert not torch.allclose(out_a, out_b)
    with zp.disabled(bert):
        assert torch.equal(logits(bert, token_batch), logits(base, token_batch))
        assert not any(p.requires_grad for p in bert.parameters())
    assert torch.equal(logits(bert, token_batch), out_a)
    zp.delete_adapter(bert, "a")
    assert zp.list_adapters(bert) == {"b": "lora"}
    for module in bert.modules():  # no per-adapter entry of "a" is left behind
        if isinstance(module, AdapterModule):
            for attribute in module.adapter_groups + module.adapter_settings:
                assert "a" not in getattr(module, attribute)
    assert torch.equal(logits(bert, token_batch), out_b)
    zp.unload(bert)
    assert torch.equal(logits(bert, token_batch), logits(base, token_batch))
    assert set(dict(bert.named_parameters())) == set(dict(base.named_parameters()))


def test_parameter_report_counts(bert):
    backbone = sum(p.numel() for p in bert.parameters())
    zp.apply(bert, "lora", r=4, target_modules=["query", "value"])
    report = zp.parameter_report(bert)
    hidden, layers, classes = 32, 2, 3
    lora = layers * 2 * (4 * hidden + hidden * 4)
    head = hidden * classes + classes
    assert report.trainable == lora + head
    assert report.backbone == backbone
    assert report.total == backbone + lora + head  # the head copy is trained, the original kept
    assert report.trainable_fraction == pytest.approx((lora + head) / (backbone + lora + head))
    assert report.parameter_reduction_percent == pytest.approx(100 * (1 - (lora + head) / backbone))
    assert report.adapter_bytes > 4 * (lora + head)


def test_save_load_round_trip_is_exact(bert, token_batch, tmp_path):
    base = copy.deepcopy(bert)
    zp.apply(bert, "lora", r=4)
    randomise_trainable(bert)
    zp.save_adapter(bert, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert zp.adapter_size_bytes(bert) == sum(p.stat().st_size for p in (tmp_path / "adapter").iterdir())
    loaded = zp.load_adapter(base, tmp_path / "adapter")
    assert torch.equal(logits(loaded, token_batch), logits(bert, token_batch))
    # saving again over an existing directory replaces it whole
    zp.save_adapter(bert, tmp_path / "adapter")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_unknown_method_lists_known_ones(bert):
    with pytest.raises(ConfigError) as error:
        zp.apply(bert, "loar")
    assert "'lora'" in str(error.value) and "Known methods" in str(error.value)
    for name in zp.list_methods():
        assert name in str(error.value)


def test_target_pattern_matching_nothing_lists_candidates(bert):
    with pytest.raises(ConfigError) as error:
        zp.apply(bert, "lora", target_modules=["q_proj"])
    message = str(error.value)
    assert "matches no module" in message and "query" in message and "dense" in message
    assert not any(isinstance(m, AdapterModule) for m in bert.modules())


@pytest.mark.parametrize(
    "options, key",
    [
        ({"r": 0}, "r"),
        ({"r": -2}, "r"),
        ({"r": 2.5}, "r"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"r": "8"}, "r"),  # strict: no coercion from strings
        ({"use_rslora": 1}, "use_rslora"),  # nor from numbers to booleans
        ({"lora_dropout": float("nan")}, "lora_dropout"),
    ],
)
def test_bad_option_values_name_the_option(bert, options, key):
    with pytest.raises(ConfigError, match=rf"{key}=.*not allowed"):
        zp.apply(bert, "lora", **options)


def test_unknown_option_suggests_close_match(bert):
    with pytest.raises(ConfigError, match="did you mean 'lora_alpha'"):
        zp.apply(bert, "lora", lora_alhpa=4)


def test_a_config_object_is_taken_as_it_is(bert, monkeypatch):
    from zoo.peft.lora import LoraConfig

    config = LoraConfig(r=2, target_modules=("query",))
    checked = []
    monkeypatch.setattr(LoraConfig, "check", lambda self: checked.append(self))
    zp.apply(bert, "lora", config=config)
    assert checked == []  # not validated again
    record = peft_state(bert).adapters["default"]
    assert (record.config.r, record.config.target_modules) == (2, ["query"])
    # the adapter's copy got the head filled in, the caller's object did not
    assert record.config.modules_to_save and config.modules_to_save is None
    with pytest.raises(ConfigError, match="pass either config=<DoraConfig>"):
        zp.apply(bert, "dora", adapter_name="other", config=config)  # a LoraConfig is no DoraConfig


def test_same_adapter_name_twice(bert):
    zp.apply(bert, "lora", r=2)
    with pytest.raises(ConfigError, match="already exists"):
        zp.apply(bert, "lora", r=2)


def test_failed_apply_leaves_model_unchanged(bert):
    names = set(dict(bert.named_modules()))
    with pytest.raises(ConfigError):
        zp.apply(bert, "lora", target_modules=["query", "classifier"], modules_to_save=["no_such_head"])
    assert set(dict(bert.named_modules())) == names


def _saved(bert, tmp_path):
    zp.apply(bert, "lora", r=4)
    randomise_trainable(bert)
    return zp.save_adapter(bert, tmp_path / "adapter")


def test_corrupt_weights_file(tmp_path, bert):
    directory = _saved(bert, tmp_path)
    (directory / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AdapterFileError, match="adapter_model.safetensors.*corrupt"):
        zp.load_adapter(tiny_bert(), directory)


def test_corrupt_config_file(tmp_path, bert):
    directory = _saved(bert, tmp_path)
    (directory / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="adapter_config.json is not valid JSON"):
        zp.load_adapter(tiny_bert(), directory)


def test_missing_directory(tmp_path):
    with pytest.raises(AdapterFileError, match="not found"):
        zp.load_adapter(tiny_bert(), tmp_path / "nowhere")


def test_wrong_shape_names_the_tensor_and_leaves_model_unchanged(tmp_path, bert, token_batch):
    directory = _saved(bert, tmp_path)
    from transformers import BertConfig, BertForSequenceClassification

    other = BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=3,
        )
    )
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(
        AdapterFileError,
        match=r"tensor base_model\.model\.bert\.encoder\.layer\.0\.attention\.self\.query\.lora_A\.weight has shape",
    ):
        zp.load_adapter(other, directory)
    assert zp.list_adapters(other) == {}
    after = other.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_missing_tensor_is_named(tmp_path, bert):
    directory = _saved(bert, tmp_path)
    tensors = load_file(directory / "adapter_model.safetensors")
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, directory / "adapter_model.safetensors")
    with pytest.raises(AdapterFileError, match=f"missing tensor.*{dropped}"):
        zp.load_adapter(tiny_bert(), directory)


def test_unknown_method_in_file(tmp_path, bert):
    directory = _saved(bert, tmp_path)
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "MYSTERY"}))
    # the safetensors header still says lora, so strip it too
    tensors = load_file(directory / "adapter_model.safetensors")
    save_file(tensors, directory / "adapter_model.safetensors")
    with pytest.raises(AdapterFileError, match="cannot tell which method"):
        zp.load_adapter(tiny_bert(), directory)


def test_merge_refused_for_non_reparameterisation(bert):
    zp.apply(bert, "linear")
    with pytest.raises(ConfigError, match="cannot be folded"):
        zp.merge(bert)


def test_full_fine_tuning_cannot_be_disabled_or_combined(bert):
    zp.apply(bert, "full")
    assert all(p.requires_grad for p in bert.parameters())
    with pytest.raises(ConfigError, match="no base model"):
        zp.disable_adapters(bert)
    with pytest.raises(ConfigError, match="full fine-tuning"):
        zp.apply(bert, "lora", adapter_name="other")


def test_linear_probe_trains_only_the_head(bert, token_batch):
    base = copy.deepcopy(bert)
    zp.apply(bert, "linear")
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.modules_to_save.default.weight", "classifier.modules_to_save.default.bias"}
    assert torch.equal(logits(bert, token_batch), logits(base, token_batch))


def test_linear_probe_without_head_says_how_to_name_it():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="modules_to_save"):
        zp.apply(model, "linear")
