"""Input transforms as datasets and runs use them: items wrapped, whole inputs found again through a
Subset, options split between the transform and the loader, wrapped splits that survive pickling (data
loader workers). The transform used is the protein window, compared with slices taken here."""

from __future__ import annotations

import pickle

import pytest
from torch.utils.data import Subset

from zoo.catalog.input_transforms import (
    TransformedInputs,
    TransformOptions,
    given_input,
    input_transform,
    split_transform_options,
)
from zoo.errors import ConfigError, DataError

WINDOW = input_transform("residue_window", {"residues": "2-4"})


class Sequences(list):
    source = "sequences.csv (test)"
    classes = ["low", "high"]


def test_items_are_transformed_and_the_given_inputs_are_found_through_a_subset():
    items = Sequences([("MKTAYIA", 0), ("GSHMLED", 1), ("PEELKKL", 0)])
    wrapped = TransformedInputs(items, WINDOW)
    assert [wrapped[i] for i in range(3)] == [(s[1:4], y) for s, y in items]
    assert wrapped.source == items.source and wrapped.classes == ["low", "high"]  # read through
    subset = Subset(wrapped, [2, 0])
    assert [given_input(subset, i) for i in range(2)] == ["PEELKKL", "MKTAYIA"]
    assert given_input(items, 1) == "GSHMLED"  # a dataset without a transform: its own inputs
    copy = pickle.loads(pickle.dumps(wrapped))
    assert [copy[i] for i in range(3)] == [wrapped[i] for i in range(3)]


def test_an_input_that_does_not_fit_is_an_error_when_the_split_is_wrapped():
    items = Sequences([("MKTAYIA", 0), ("GS", 1)])
    with pytest.raises(
        DataError, match=r"sequences.csv \(test\) item 1: 2 residues, but inputs are cut to residues 2-4"
    ):
        TransformedInputs(items, WINDOW)
    with pytest.raises(DataError, match=r"item 0: input transform residue_window takes \(input, label\) items"):
        TransformedInputs(["MKTAYIA"], WINDOW)


def test_the_declared_options_choose_the_transform_and_the_others_go_to_the_loader():
    declared = TransformOptions("residue_window", ("residues",))
    assert split_transform_options(declared, {"split_name": "low_vs_high"}) == (None, {"split_name": "low_vs_high"})
    assert split_transform_options(declared, {"residues": None}) == (None, {})
    assert split_transform_options(None, {"residues": "1-5"}) == (None, {"residues": "1-5"})
    transform, left = split_transform_options(declared, {"residues": "2-4", "split_name": "sampled"})
    assert transform == WINDOW and left == {"split_name": "sampled"}
    with pytest.raises(ConfigError, match=r"data.options: input transform residue_window: residues='4-2'"):
        split_transform_options(declared, {"residues": "4-2"})
