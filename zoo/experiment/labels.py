"""A dataset's class names, as an index entry records them and predictions print them."""

from __future__ import annotations

from typing import Any


def label_names(dataset: Any) -> list[str] | None:
    """``label_names`` or ``classes`` of ``dataset`` (through a Subset of data.max_*_examples), as strings;
    None when it has none (a class count alone is not names)."""
    inner = getattr(dataset, "dataset", dataset)
    for attribute in ("label_names", "classes"):
        names = getattr(inner, attribute, None)
        if names is not None and not isinstance(names, int):
            return [str(n) for n in names]
    return None


def registered_class_names(config) -> list[str] | None:
    """The class (or per-token state) names the dataset registry records for the dataset a model was
    trained on: names for an entry or run that does not carry its own."""
    from zoo.catalog.datasets import DATASETS

    if config is None or config.data.name not in DATASETS:
        return None
    extras = DATASETS.get(config.data.name).extras
    names = extras.get("classes") or extras.get("states")
    return [str(name) for name in names] if names else None
