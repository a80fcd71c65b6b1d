"""The warning filters of pyproject.toml: a deprecation attributed to zoo's code fails the test run, one
attributed to another package is only reported."""

from __future__ import annotations

import warnings

import pytest


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
@pytest.mark.parametrize(
    "module", ["zoo", "zoo.experiment.build", "zoo_domains.video_text.clips", "tests.cli.test_train"]
)
def test_a_deprecation_from_zoo_is_an_error(module, category):
    with pytest.raises(category, match="old call"):
        warnings.warn_explicit("old call", category, "caller.py", 1, module=module)


@pytest.mark.parametrize("module", ["transformers.modeling_utils", "zoological", "zoo_peft_plugin", "torchvision.io"])
def test_a_deprecation_from_elsewhere_is_reported_not_raised(module):
    with warnings.catch_warnings(record=True) as caught:  # keeps the filters (pytest.warns would reset them)
        warnings.warn_explicit("old call", DeprecationWarning, "caller.py", 1, module=module)
    assert [(w.category, str(w.message)) for w in caught] == [(DeprecationWarning, "old call")]
