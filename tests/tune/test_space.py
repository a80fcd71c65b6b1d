"""The search-space grammar of zoo tune: what parses, and what is refused with the grammar printed."""

import pytest

from zoo.errors import ConfigError
from zoo.tune.space import GRAMMAR, SearchParameter, parse_search


def test_the_three_kinds_parse_from_the_command_line_and_from_a_recipe():
    command_line = parse_search(
        [
            "method.r=int:2..64:log",
            "train.lr=float:1e-5..1e-2:log",
            "method.target_modules=choice:[query,value]|[query,key,value]",
        ]
    )
    assert command_line == parse_search(
        {
            "method.r": "int:2..64:log",
            "train.lr": "float:1e-5..1e-2:log",
            "method.target_modules": "choice:[query,value]|[query,key,value]",
        }
    )
    rank, lr, targets = command_line
    assert rank == SearchParameter("method.r", "int", 2, 64, True)
    assert lr == SearchParameter("train.lr", "float", 1e-5, 1e-2, True)
    assert targets.choices == (["query", "value"], ["query", "key", "value"])
    assert parse_search(["method.lora_dropout=float:0..0.3"])[0].log is False


class FixedTrial:
    """Stands in for an Optuna trial: proposes the given value for each key."""

    def __init__(self, values):
        self.values = values

    def suggest_int(self, key, low, high, log):
        return self.values[key]

    suggest_float = suggest_int

    def suggest_categorical(self, key, choices):
        assert self.values[key] in choices
        return self.values[key]


def test_a_choice_of_lists_comes_back_as_the_list():
    (targets,) = parse_search(["method.target_modules=choice:[query,value]|[query,key,value]"])
    assert targets.suggest(FixedTrial({"method.target_modules": "[query,key,value]"})) == ["query", "key", "value"]


@pytest.mark.parametrize(
    "spec, why",
    [
        ("method.r", "no '='"),
        ("r=int:2..64", "dotted config key"),
        ("method.r=int", "kind"),
        ("method.r=integer:2..64", "unknown kind"),
        ("method.r=int:64..2", "LOW < HIGH"),
        ("method.r=int:2..6.5", "whole numbers"),
        ("train.lr=float:0..1:log", "LOW > 0"),
        ("train.lr=float:1e-5..1e-2:ln", "log or nothing"),
        ("train.lr=float:a..b", "two numbers"),
        ("method.target_modules=choice:[query]", "two or more"),
    ],
)
def test_a_bad_spec_names_the_problem_and_prints_the_grammar(spec, why):
    with pytest.raises(ConfigError) as caught:
        parse_search([spec])
    assert why in str(caught.value) and GRAMMAR in str(caught.value)


def test_a_key_given_twice_is_refused():
    with pytest.raises(ConfigError, match="twice"):
        parse_search(["method.r=int:2..8", "method.r=int:4..16"])
