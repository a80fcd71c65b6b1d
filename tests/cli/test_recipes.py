"""Every recipe: it validates, it names the real backbone and data at default scale, it builds at
scale=tiny and takes a training step; the recipes cover every method that applies to each registered
domain. One recipe a domain (END_TO_END) is also trained through the CLI in test_train.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import zoo.peft as zp
from tests.zoo_domains.registered import domain_names, main_recipe, main_task
from zoo.catalog.backbones import BACKBONES
from zoo.catalog.datasets import DATASETS
from zoo.errors import ConfigError
from zoo.experiment.build import build_run, check_method_applies, resolve
from zoo.experiment.config import load_config
from zoo.experiment.recipes import list_recipes, recipe_summary, recipes_root

RECIPES = list_recipes()
DOMAINS = {domain: main_task(domain) for domain in domain_names()}
"""Each registered domain and the task whose recipes cover every method that applies."""
END_TO_END_METHODS = ("ia3", "adapter", "dora", "vpt", "lora")
"""Taken in turn by the domains (in name order), so the CLI trainings cover several methods."""


def end_to_end_recipe(index: int, domain: str) -> str:
    turn = [END_TO_END_METHODS[(index + k) % len(END_TO_END_METHODS)] for k in range(len(END_TO_END_METHODS))]
    return next(main_recipe(domain, m) for m in turn if main_recipe(domain, m) in RECIPES)


END_TO_END = tuple(end_to_end_recipe(index, domain) for index, domain in enumerate(DOMAINS))
"""One recipe of each domain, also trained through the CLI in test_train.py."""
VISION_REQUIRED = ("lora", "dora", "adaptformer", "kadaptation", "vpt", "bitfit", "adapter", "full", "linear")


def readme_exclusions() -> list[tuple[str, str, str]]:
    """(method, structure, reason) rows of the table 'Methods left out, and why' in zoo/recipes/README.md."""
    text = (recipes_root() / "README.md").read_text()
    section = text.split("## Methods left out, and why", 1)[1]
    rows = re.findall(r"^\| (\w+) \| ([\w-]+) \| (.+) \|$", section, flags=re.MULTILINE)
    return [row for row in rows if row[0] != "method"]


def declared_exclusions() -> list:
    BACKBONES.names()  # the domain packages declare exclusions when they load, on first use of a registry
    return zp.list_exclusions()


def domain_structure(domain: str) -> str | None:
    """The structure of the backbone the domain's recipes use."""
    structure = BACKBONES.get(load_config(f"{domain}/{DOMAINS[domain]}-bitfit").backbone.name).structure
    return structure.name if structure is not None else None


def exclusions() -> list[tuple[str, str]]:
    """(domain, method) pairs that the declared exclusions leave without a recipe."""
    return [
        (domain, row.method)
        for domain in DOMAINS
        for row in declared_exclusions()
        if row.structure == domain_structure(domain)
    ]


def test_readme_lists_exactly_the_declared_exclusions():
    declared = [(row.method, row.structure, row.reason) for row in declared_exclusions()]
    assert sorted(readme_exclusions()) == sorted(declared)


def test_recipe_list_comes_from_the_folder():
    files = {
        p.relative_to(recipes_root()).with_suffix("").as_posix()
        for p in recipes_root().glob("*/*.yaml")
        if not p.name.startswith("_") and p.parent.name != "tables"
    }
    assert set(RECIPES) == files and len(RECIPES) >= 50


def test_required_vision_recipes_and_one_domain_each():
    for method in VISION_REQUIRED:
        assert f"vision/medical-{method}" in RECIPES
    assert sorted(recipe.split("/")[0] for recipe in END_TO_END) == domain_names()
    assert len({recipe_summary(recipe)["method"] for recipe in END_TO_END}) == min(
        len(DOMAINS), len(END_TO_END_METHODS)
    )


def test_every_registered_domain_and_only_those_have_recipes():
    with_recipes = {recipe.split("/")[0] for recipe in RECIPES}
    assert with_recipes == set(domain_names())
    for domain in domain_names():
        backbones = {recipe_summary(r)["backbone"] for r in RECIPES if r.startswith(f"{domain}/")}
        assert {BACKBONES.get(name).domain for name in backbones} == {domain}


def test_recipes_cover_every_method_that_applies():
    excluded = exclusions()
    assert excluded, "no declared exclusion concerns a recipe backbone"
    for domain, task in DOMAINS.items():
        # the domain's main task has a recipe for every method that applies; further tasks may have fewer
        methods = {recipe_summary(r)["method"] for r in RECIPES if r.startswith(f"{domain}/{task}-")}
        expected = set(zp.list_methods()) - {m for d, m in excluded if d == domain}
        assert methods == expected, f"{domain}: recipes for {sorted(methods)}, expected {sorted(expected)}"
        for recipe in (r for r in RECIPES if r.startswith(f"{domain}/")):
            assert recipe.endswith(f"-{recipe_summary(recipe)['method']}"), f"{recipe} is not <task>-<method>"


@pytest.mark.parametrize(("domain", "method"), exclusions())
def test_excluded_methods_really_do_not_apply(domain, method):
    config = load_config(f"{domain}/{DOMAINS[domain]}-bitfit", ["scale=tiny", f"method.name={method}"])
    with pytest.raises(ConfigError, match=method):
        check_method_applies(config)


@pytest.mark.parametrize("recipe", END_TO_END)
def test_zoo_validate_checks_a_recipe_without_loading_weights(zoo, recipe):
    code, out, err = zoo("validate", recipe)
    assert code == 0, err
    assert f"{recipe}: valid" in out and "on the tiny variant: trainable" in out


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_validates_builds_tiny_and_takes_a_training_step(recipe):
    """What `zoo validate` checks (config, names, method options, the method on the tiny backbone),
    plus the data at tiny scale and one training step."""
    config = load_config(recipe)
    assert config.scale == "default" and config.backbone.pretrained is True, "default scale: pretrained weights"
    spec = DATASETS.get(config.data.name)
    assert spec.folder is not None and (spec.files or "canonical" in spec.extras), "default scale: a real dataset"
    assert config.description
    resolve(config)

    config = load_config(recipe, ["scale=tiny"])
    assert config.train.max_steps is not None and config.train.max_steps <= 10, "scale=tiny must stay a few steps"
    built = build_run(config)
    train = built.datasets["train"]
    batch, labels = built.task.collate([train[i] for i in range(min(len(train), config.train.batch_size))])
    built.model.train()
    loss = built.task.loss(built.model, batch, labels)
    loss.backward()
    assert torch.isfinite(loss)
    trainable = [p for p in built.model.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert not Path(built.data_dir).is_relative_to(Path.home() / ".cache" / "zoo")  # the test cache, not the user's
