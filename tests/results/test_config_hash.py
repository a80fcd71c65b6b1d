"""The configuration hash that decides whether a table cell's run is done."""

import hashlib
import json

from zoo.results.cells import config_hash


def _reference(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def test_a_field_added_with_a_null_default_keeps_the_hash_of_older_runs():
    before = {"train": {"lr": 1e-3, "seed": 0, "early_stopping_patience": None}, "method": {"name": "lora", "r": 8}}
    after = {**before, "train": {**before["train"], "privacy": None}}
    assert config_hash(after) == config_hash(before)
    # the hash is the canonical JSON of the configuration with its null settings left out
    assert config_hash(before) == _reference({"train": {"lr": 1e-3, "seed": 0}, "method": {"name": "lora", "r": 8}})


def test_any_set_value_changes_the_hash():
    base = {"train": {"lr": 1e-3, "privacy": None}, "data": {"options": {"residues": "1-56"}}}
    assert config_hash({**base, "train": {"lr": 1e-3, "privacy": {"epsilon": 8.0}}}) != config_hash(base)
    assert config_hash({**base, "data": {"options": {"residues": "1-40"}}}) != config_hash(base)
    assert config_hash({**base, "train": {"lr": 2e-3, "privacy": None}}) != config_hash(base)
    # null inside a list is a value of the list, not an unset field
    assert config_hash({"x": [1, None]}) != config_hash({"x": [1]})
