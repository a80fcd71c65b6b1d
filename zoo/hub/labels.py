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
