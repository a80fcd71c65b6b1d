"""TrainSettings: every bad value is an error naming the key, the value and what is allowed."""

import pytest

from zoo.errors import ConfigError
from zoo.train import TrainSettings


def test_defaults_are_the_documented_ones():
    settings = TrainSettings()
    assert (settings.lr, settings.epochs, settings.batch_size, settings.precision, settings.strategy) == (
        1e-3,
        3,
        32,
        "fp32",
        "ddp",
    )
    assert settings.max_steps is None and settings.eval_every is None and settings.early_stopping_patience is None


@pytest.mark.parametrize(
    "options, words",
    [
        ({"lr": "fast"}, ["train.lr", "'fast'", "a number"]),
        ({"lr": 0}, ["train.lr", "> 0"]),
        ({"epochs": 2.5}, ["train.epochs", "2.5", "whole number"]),
        ({"epochs": True}, ["train.epochs", "True", "whole number"]),
        ({"max_steps": -3}, ["train.max_steps", "-3", "> 0", "null"]),
        ({"precision": "fp16"}, ["train.precision", "'fp16'", "fp32, bf16"]),
        ({"strategy": "deepspeed"}, ["train.strategy", "ddp, fsdp"]),
        ({"device": "tpu"}, ["train.device", "auto, cpu, cuda"]),
        ({"warmup_ratio": 1.0}, ["train.warmup_ratio", "[0, 1)"]),
        ({"gradient_checkpointing": "yes"}, ["train.gradient_checkpointing", "true or false"]),
        ({"batch_size": None}, ["train.batch_size", "None"]),
    ],
)
def test_bad_values_name_key_value_and_allowed(options, words):
    with pytest.raises(ConfigError) as error:
        TrainSettings(**options)
    for word in words:
        assert word in str(error.value)


def test_optional_fields_accept_null_and_ints_pass_as_floats():
    settings = TrainSettings(max_steps=None, max_grad_norm=None, lr=1, early_stopping_patience=2)
    assert settings.to_dict()["lr"] == 1
