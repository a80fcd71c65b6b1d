"""Run configuration: YAML with defaults, key=value overrides, type checks and the error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.errors import ConfigError
from zoo.experiment.config import (
    compose,
    load_config,
    parse_overrides,
    parse_value,
    validate,
)
from zoo.experiment.recipes import find_recipe, list_recipes, read_recipe
from zoo.train.settings import TrainSettings

BASE = """\
backbone: {name: vit_b16, pretrained: true}
data: {name: pneumoniamnist}
task: {kind: classification}
train: {lr: 1.0e-3, epochs: 2, batch_size: 8}
tiny:
  train: {max_steps: 3, batch_size: 2}
"""
RECIPE = """\
defaults: [_base]
description: a test recipe
method: {name: lora, r: 4}
train: {lr: 3e-4}
"""


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    """A recipes folder of its own: one domain with a base, two recipes and a tables/ folder."""
    root = tmp_path / "recipes"
    (root / "vision").mkdir(parents=True)
    (root / "tables").mkdir()
    (root / "vision" / "_base.yaml").write_text(BASE)
    (root / "vision" / "medical-lora.yaml").write_text(RECIPE)
    (root / "vision" / "medical-bitfit.yaml").write_text("defaults: [_base]\nmethod: {name: bitfit}\n")
    (root / "tables" / "summary.yaml").write_text("rows: []\n")
    monkeypatch.setenv("ZOO_RECIPES_DIR", str(root))
    return root


def test_values_are_read_as_yaml_with_exponent_floats():
    assert parse_value("3e-4") == pytest.approx(3e-4) and isinstance(parse_value("3e-4"), float)
    assert parse_value("16") == 16 and parse_value("true") is True and parse_value("null") is None
    assert parse_value("[q, v]") == ["q", "v"]
    assert parse_value("/data/x.safetensors") == "/data/x.safetensors"


def test_overrides_nest_by_dots():
    nested = parse_overrides(["method.r=16", "train.lr=3e-4", "backbone.options.img_size=384", "scale=tiny"])
    assert nested == {
        "method": {"r": 16},
        "train": {"lr": 3e-4},
        "backbone": {"options": {"img_size": 384}},
        "scale": "tiny",
    }


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("train.lr", "must look like KEY=VALUE"),
        ("defaults=[x]", "only be set in a recipe file"),
        ("train.lr.x=1", "too deep"),
        ("trian.lr=1", "Did you mean 'train'"),
    ],
)
def test_malformed_overrides_are_named(pair, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_overrides([pair])


def test_scanning_finds_recipes_not_bases_or_tables(recipes):
    assert list_recipes() == ["vision/medical-bitfit", "vision/medical-lora"]
    (recipes / "vision" / "medical-dora.yaml").write_text("defaults: [_base]\nmethod: {name: dora}\n")
    assert "vision/medical-dora" in list_recipes()  # no list to keep up to date


def test_defaults_merge_under_the_recipe(recipes):
    data = read_recipe(find_recipe("vision/medical-lora"))
    assert data["backbone"] == {"name": "vit_b16", "pretrained": True}  # from the base
    assert data["train"] == {"lr": 3e-4, "epochs": 2, "batch_size": 8}  # recipe value wins, others kept
    assert "defaults" not in data


def test_a_copied_recipe_finds_its_base_under_the_recipes_folder(recipes, tmp_path):
    copy = tmp_path / "elsewhere" / "mine.yaml"
    copy.parent.mkdir()
    copy.write_text(RECIPE.replace("[_base]", "[vision/_base]"))
    assert load_config(copy).backbone.name == "vit_b16"


def test_defaults_cycle_is_an_error(recipes):
    (recipes / "vision" / "_a.yaml").write_text("defaults: [_b]\n")
    (recipes / "vision" / "_b.yaml").write_text("defaults: [_a]\n")
    (recipes / "vision" / "loop.yaml").write_text("defaults: [_a]\n")
    with pytest.raises(ConfigError, match="cycle"):
        read_recipe(recipes / "vision" / "loop.yaml")


def test_tiny_section_applies_only_at_tiny_scale_and_overrides_still_win(recipes):
    assert load_config("vision/medical-lora").train.max_steps is None
    tiny = load_config("vision/medical-lora", ["scale=tiny"])
    assert (tiny.train.max_steps, tiny.train.batch_size, tiny.train.lr) == (3, 2, 3e-4)
    assert load_config("vision/medical-lora", ["scale=tiny", "train.max_steps=7"]).train.max_steps == 7
    assert compose({"tiny": {"train": {"lr": 1}}, "train": {"lr": 2}}, {})["train"]["lr"] == 2


def test_overrides_reach_every_section(recipes, tmp_path):
    config = load_config(
        "vision/medical-lora",
        [
            "method.r=16",
            "method.lora_alpha=32",
            "train.lr=1e-2",
            f"data.root={tmp_path}",
            "backbone.options.img_size=64",
            "task.num_outputs=3",
            "data.max_train_examples=10",
            "description=mine",
        ],
    )
    assert config.method.options == {"r": 16, "lora_alpha": 32}
    assert config.train.lr == 1e-2 and config.data.root == str(tmp_path.resolve())
    assert config.backbone.options == {"img_size": 64} and config.task.num_outputs == 3
    assert config.data.max_train_examples == 10 and config.description == "mine"
    assert isinstance(config.train_settings(), TrainSettings)


def test_unknown_recipe_suggests_close_matches(recipes):
    with pytest.raises(ConfigError) as error:
        load_config("vision/medical-lorra")
    assert "'vision/medical-lora'" in str(error.value) and "zoo ls recipes" in str(error.value)


@pytest.mark.parametrize(
    ("override", "suggestion", "listed"),
    [
        ("train.lrr=1", "'train.lr'", "train.weight_decay"),
        ("method.rank=4", None, "method.lora_alpha"),
        ("method.lora_alpa=4", "'method.lora_alpha'", "method.use_rslora"),
        ("data.nmae=x", "'data.name'", "data.root"),
        ("sclae=tiny", "'scale'", "backbone"),
    ],
)
def test_unknown_key_names_it_and_lists_valid_keys(recipes, override, suggestion, listed):
    with pytest.raises(ConfigError) as error:
        load_config("vision/medical-lora", [override])
    message = str(error.value)
    assert f"unknown key {override.split('=')[0]!r}" in message
    assert listed in message
    if suggestion:
        assert f"Did you mean {suggestion}" in message


def test_method_keys_follow_the_method_chosen_on_the_command_line(recipes):
    config = load_config("vision/medical-bitfit", ["method.name=vpt", "method.num_prompts=4"])
    assert config.method.name == "vpt" and config.method.options == {"num_prompts": 4}
    with pytest.raises(ConfigError, match="unknown key 'method.r'"):
        load_config("vision/medical-bitfit", ["method.r=4"])  # bitfit has no rank


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr=fast", "train.lr='fast' is not allowed: Input should be a valid number; expected a number"),
        ("train.epochs=true", "train.epochs=True is not allowed"),
        ("train.epochs=1.5", "train.epochs=1.5 is not allowed"),
        ("method.r=1.5", "method.r=1.5 is not allowed for lora"),
        ("method.r=abc", "expected a whole number"),
        ("backbone.pretrained=3", "backbone.pretrained=3 is not allowed"),
        ("data.download=maybe", "data.download='maybe' is not allowed"),
        ("scale=huge", "scale='huge' is not allowed; choose one of default, tiny"),
        ("train.batch_size=0", "train.batch_size=0 must be > 0"),
        ("train.precision=fp8", "train.precision='fp8' is not allowed; choose one of fp32, bf16"),
        ("method.lora_dropout=1.5", "lora_dropout=1.5 is not allowed"),
        ("method.name=lorra", "Did you mean 'lora'"),
        ("data.max_train_examples=0", "data.max_train_examples=0 must be > 0"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(recipes, override, expected):
    with pytest.raises(ConfigError) as error:
        load_config("vision/medical-lora", [override])
    assert expected in str(error.value)


def test_a_local_checkpoint_cannot_go_with_tiny_scale(recipes):
    with pytest.raises(ConfigError, match="scale=tiny"):
        load_config("vision/medical-lora", ["scale=tiny", "backbone.pretrained=/some/checkpoint.safetensors"])


def test_missing_section_is_named(recipes):
    (recipes / "vision" / "broken.yaml").write_text("defaults: [_base]\n")
    with pytest.raises(ConfigError, match="section 'method' is missing"):
        load_config("vision/broken")


def test_invalid_yaml_names_the_file(recipes):
    (recipes / "vision" / "bad.yaml").write_text("method: {name: lora\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config("vision/bad")


def test_resolved_config_round_trips(recipes):
    config = load_config("vision/medical-lora", ["scale=tiny", "method.r=2"])
    again = validate(config.to_dict())
    assert again.to_dict() == config.to_dict()


def test_train_section_has_every_trainer_setting(recipes):
    names = set(TrainSettings.model_fields)
    assert set(load_config("vision/medical-lora").train.model_dump()) == names


def test_relative_paths_are_stored_absolute(recipes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config("vision/medical-lora", ["data.root=data", "backbone.pretrained=weights/vit.safetensors"])
    assert Path(config.data.root) == tmp_path.resolve() / "data"
    assert Path(config.backbone.pretrained) == tmp_path.resolve() / "weights" / "vit.safetensors"


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=.nan",
        "train.lr=.inf",
        "train.lr=-.inf",
        "train.weight_decay=.nan",
        "train.max_grad_norm=.nan",
        "train.warmup_ratio=.nan",
        "method.lora_alpha=.nan",
        "method.lora_dropout=.inf",
        "backbone.options.drop_rate=.nan",
    ],
)
def test_non_finite_numbers_are_refused_naming_the_key(recipes, override):
    key, _, text = override.partition("=")
    value = {".nan": "nan", ".inf": "inf", "-.inf": "-inf"}[text]
    with pytest.raises(ConfigError) as error:
        load_config("vision/medical-lora", [override])
    assert f"{key}={value} is not allowed" in str(error.value)
    assert "must be finite" in str(error.value)


def test_non_finite_number_in_a_recipe_file_is_refused(recipes):
    (recipes / "vision" / "nan.yaml").write_text("defaults: [_base]\nmethod: {name: lora}\ntrain: {lr: .nan}\n")
    with pytest.raises(ConfigError, match=r"train\.lr=nan is not allowed"):
        load_config("vision/nan")


@pytest.mark.parametrize("field", ["lr", "weight_decay", "max_grad_norm", "warmup_ratio"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_train_settings_refuse_non_finite_numbers(field, value):
    with pytest.raises(ConfigError, match=rf"train\.{field}={value!r} is not allowed: it must be a finite number"):
        TrainSettings(**{field: value})


def test_zoo_train_refuses_nan_before_making_a_run_directory(tmp_path, monkeypatch, capsys):
    from zoo.cli.main import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "text/sst2-lora", "scale=tiny", "train.lr=.nan", "--out", "tmp"])
    err = capsys.readouterr().err
    assert code != 0
    assert "train.lr=nan is not allowed" in err and "finite" in err
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing else either


def test_interpolation_reads_other_keys_once_everything_is_merged(recipes):
    (recipes / "vision" / "linked.yaml").write_text(
        "defaults: [_base]\n"
        "method: {name: lora, r: 4, lora_alpha: '${method.r}'}\n"
        "train: {eval_batch_size: '${train.batch_size}'}\n"
    )
    config = load_config("vision/linked")
    assert (config.method.lora_alpha, config.train.eval_batch_size) == (4, 8)
    # the tiny section and the overrides come first, so the interpolation reads their values
    tiny = load_config("vision/linked", ["scale=tiny", "method.r=16"])
    assert (tiny.method.lora_alpha, tiny.train.eval_batch_size) == (16, 2)
    assert tiny.to_dict()["method"] == {"name": "lora", "r": 16, "lora_alpha": 16}  # saved resolved
    overridden = load_config("vision/medical-lora", ["train.eval_batch_size=${train.batch_size}"])
    assert overridden.train.eval_batch_size == 8


def test_interpolation_of_a_missing_key_names_it(recipes):
    (recipes / "vision" / "dangling.yaml").write_text("defaults: [_base]\nmethod: {name: lora, r: '${train.rank}'}\n")
    with pytest.raises(ConfigError, match=r"method\.r in .*dangling\.yaml: Interpolation key 'train\.rank' not found"):
        load_config("vision/dangling")


@pytest.mark.parametrize("value", ["${oc.env:ZOO_SECRET_FOR_TEST}", "prefix ${ oc.decode:'1'}"])
def test_a_resolver_call_is_refused_before_it_reads_anything(recipes, monkeypatch, value):
    """A recipe names other keys only: ${oc.env:...} would copy this machine's environment into the run's
    config, its model card and a pushed adapter."""
    monkeypatch.setenv("ZOO_SECRET_FOR_TEST", "hunter2")
    (recipes / "vision" / "leaky.yaml").write_text(f"defaults: [_base]\ndescription: {value!r}\n")
    with pytest.raises(ConfigError, match=r"description in .*leaky\.yaml: .* calls an interpolation resolver") as error:
        load_config("vision/leaky")
    assert "hunter2" not in str(error.value)
    with pytest.raises(ConfigError, match="calls an interpolation resolver"):
        load_config("vision/medical-lora", ["description=${oc.env:ZOO_SECRET_FOR_TEST}"])


def test_an_interpolated_value_is_type_checked_like_any_other(recipes):
    (recipes / "vision" / "mistyped.yaml").write_text(
        "defaults: [_base]\nmethod: {name: lora, use_rslora: '${method.r}'}\n"
    )
    with pytest.raises(ConfigError, match="method.use_rslora=8 is not allowed for lora"):
        load_config("vision/mistyped", ["method.r=8"])


def test_the_method_section_is_its_methods_config(recipes):
    from zoo.peft.lora import LoraConfig
    from zoo.peft.registry import method_config

    config = load_config("vision/medical-lora", ["method.lora_alpha=16"])
    assert type(config.method) is LoraConfig
    assert (config.method.r, config.method.lora_alpha, config.method.lora_dropout) == (4, 16, 0.0)
    assert method_config(config.method) is config.method  # a config object passes as it is


def test_the_method_config_is_built_once_from_recipe_to_adapter(recipes, monkeypatch):
    """Loading the recipe builds the LoraConfig; building the model hands that object to zoo.peft.apply."""
    from zoo.experiment.build import build_model, resolve
    from zoo.peft.engine import peft_state
    from zoo.peft.lora import LoraConfig

    built = []
    check = LoraConfig.check
    monkeypatch.setattr(LoraConfig, "check", lambda self: (built.append(self.r), check(self))[1])
    config = load_config("vision/medical-lora", ["scale=tiny", "method.r=2"])
    assert built == [2]
    model, _ = build_model(config, resolve(config), outputs=2)
    assert built == [2]  # not built again by apply
    record = peft_state(model).adapters["default"]
    assert isinstance(record.config, LoraConfig) and record.config.r == 2
    # the adapter keeps its own copy: the head it filled in is not written back into the run's config
    assert record.config.modules_to_save and config.method.modules_to_save is None
    assert "modules_to_save" not in config.to_dict()["method"]


def test_run_configs_read_the_recipe_once_and_keep_it_as_written(recipes, monkeypatch):
    from zoo.experiment import recipes as recipe_files
    from zoo.experiment.config import load_run_configs

    reads = []
    read = recipe_files.read_recipe
    monkeypatch.setattr(recipe_files, "read_recipe", lambda path, *seen: reads.append(path) or read(path, *seen))
    config, written = load_run_configs("vision/medical-lora", ["scale=tiny", "method.r=16"])
    assert [Path(path).name for path in reads] == ["medical-lora.yaml", "_base.yaml"]  # each file once
    assert (config.method.r, written.method.r) == (16, 4) and written.scale == "tiny" == config.scale
    assert written.train.max_steps == 3  # the recipe's tiny section, at the run's scale
    config, written = load_run_configs("vision/medical-lora", ["scale=tiny"])
    assert written is config  # nothing else overridden: one config
