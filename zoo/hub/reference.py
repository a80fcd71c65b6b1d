"""Reference predictions: a few held-out inputs and what the adapter answered when it was pushed.

The runner records the model's raw outputs on a few held-out inputs when a run ends
(:mod:`zoo.experiment.reference`); ``zoo push`` stores them in the index entry as
``"reference_predictions": [{"input": ..., "output": ...}, ...]``, each ``output`` as
:meth:`zoo.hub.predict.Predictor.predict` returns it. A pulled copy
that answers the same (:func:`check_reference_predictions`) is the adapter that was published, on
the base weights it was trained on, built the way it was built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from zoo.errors import HubError
from zoo.experiment.reference import REFERENCE_COUNT, from_json_input  # noqa: F401  (how many a run records)

SCORE_TOLERANCE = 1e-4
"""Scores and values may differ by this much (absolute, and relative for large values): another BLAS,
thread count or CPU changes the last bits of a float32 forward pass."""


def as_json(inputs: Sequence[Any], outputs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{"input", "output"}]``, as JSON would give them back (a class index as a score key becomes a string)."""
    return json.loads(json.dumps([{"input": i, "output": o} for i, o in zip(inputs, outputs, strict=True)]))


def _close(expected: Any, actual: Any, tolerance: float) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(float(expected), float(actual), rel_tol=tolerance, abs_tol=tolerance)
    return expected == actual


def compare_predictions(
    expected: Sequence[dict[str, Any]], actual: Sequence[dict[str, Any]], tolerance: float = SCORE_TOLERANCE
) -> list[str]:
    """What differs between reference outputs and new ones (labels exactly, numbers within ``tolerance``)."""
    if len(expected) != len(actual):
        return [f"{len(expected)} reference outputs, {len(actual)} outputs"]
    problems = []
    for number, (want, got) in enumerate(zip(expected, actual)):
        got = json.loads(json.dumps(got))  # score keys as JSON has them (a class index becomes a string)
        if set(want) != set(got):
            problems.append(f"input {number}: fields {sorted(got)}, expected {sorted(want)}")
            continue
        for field in sorted(want):
            if field == "scores":
                if set(want[field]) != set(got[field]):
                    problems.append(f"input {number}: classes {sorted(got[field])}, expected {sorted(want[field])}")
                    continue
                bad = [c for c in want[field] if not _close(want[field][c], got[field][c], tolerance)]
                problems += [
                    f"input {number}: score of {c} {got[field][c]!r}, expected {want[field][c]!r}" for c in bad
                ]
            elif not _close(want[field], got[field], tolerance):
                problems.append(f"input {number}: {field} {got[field]!r}, expected {want[field]!r}")
    return problems


def check_reference_predictions(predictor: Any, entry: dict[str, Any], tolerance: float = SCORE_TOLERANCE) -> int:
    """Predict the entry's reference inputs with ``predictor`` and compare; returns how many were checked.
    A difference, or an entry with none to check, is a :class:`HubError` that says which."""
    label = f"{entry.get('name')}@{entry.get('version')}"
    references = entry.get("reference_predictions") or []
    if not references:
        raise HubError(f"{label}: the index entry records no reference predictions to check against")
    try:
        inputs = [from_json_input(item["input"]) for item in references]
    except ValueError as error:
        raise HubError(f"{label}: {error}") from None
    actual = predictor.predict(inputs, batch_size=len(references))
    problems = compare_predictions([item["output"] for item in references], actual, tolerance)
    if problems:
        raise HubError(
            f"{label} does not predict what it predicted when it was pushed ({len(problems)} differences: "
            f"{'; '.join(problems[:4])})"
        )
    return len(references)
