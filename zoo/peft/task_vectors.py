"""Combining task vectors, one layer at a time: the rules behind :mod:`zoo.peft.arithmetic` (``zoo merge``).

A task vector is what an adapter adds to one base tensor (its ``ΔW``). Each rule takes the inputs'
updates of one layer (same shape; zero where an input does not adapt the layer) and their weights:

- ``linear``: ``Σ w_i ΔW_i``.
- ``ties`` (Yadav et al. 2023, "TIES-Merging", arXiv:2306.01708): each ``ΔW_i`` is trimmed to its
  ``round(density · n)`` entries of largest magnitude (at least one), the weighted trimmed updates
  elect a sign per entry (that of their sum; ``+`` where it is 0), and each entry is the mean of the
  weighted entries that carry the elected sign (the disjoint mean; 0 where none does).
- ``dare_linear`` (Yu et al. 2023, "Language Models are Super Mario", arXiv:2311.03099): each entry
  of ``ΔW_i`` is kept with probability ``density`` and the kept ones are divided by ``density``;
  then ``linear``. ``dare_ties``: the same drop, then TIES' sign election and disjoint mean.
- ``svd``: ``linear``; the difference is the rank the merged update is cut to afterwards.

Trimming works layer by layer, as HF PEFT's and mergekit's merges do, not over the whole model at once.
Drop masks are ``torch.rand(shape, generator=g, dtype=float64) < density`` from one generator seeded
once per merge, drawn layer by layer in the caller's order and, within a layer, input by input.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch

from zoo.errors import ConfigError

COMBINATIONS = ("linear", "ties", "dare_linear", "dare_ties", "svd")
USES_DENSITY = ("ties", "dare_linear", "dare_ties")


def check_combination(combination: str, weights: Sequence[float], inputs: int, density: float | None) -> None:
    """Refuse an unknown rule, a weight count that is not one per input, and a density the rule cannot use."""
    if combination not in COMBINATIONS:
        close = difflib.get_close_matches(str(combination), COMBINATIONS, n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown merge method {combination!r}.{hint} Known: {', '.join(COMBINATIONS)}")
    if len(weights) != inputs:
        raise ConfigError(
            f"{len(weights)} weight(s) for {inputs} adapter(s): give one weight per adapter, in the same order"
        )
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"weights must be finite numbers, got {list(weights)}")
    if combination in USES_DENSITY:
        if density is None:
            raise ConfigError(
                f"{combination} needs a density in (0, 1]: the fraction of each update's entries kept "
                f"(e.g. 0.2, the top 20% of Yadav et al.)"
            )
        if not (0.0 < density <= 1.0) or not math.isfinite(density):
            raise ConfigError(f"density={density} is outside (0, 1]; it is the fraction of each update's entries kept")
    elif density is not None:
        raise ConfigError(f"density applies to {', '.join(USES_DENSITY)}; {combination} keeps every entry")


def trim_to_density(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with all but its ``round(density · n)`` (at least 1) largest-magnitude entries set to 0."""
    keep = max(1, round(density * delta.numel()))
    if keep >= delta.numel():
        return delta
    flat = delta.flatten()
    kept = torch.zeros_like(flat)
    largest = flat.abs().topk(keep).indices
    kept[largest] = flat[largest]
    return kept.view_as(delta)


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: each entry kept with probability ``density`` and divided by it, the rest set to 0."""
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float64) < density
    return torch.where(keep, delta / density, torch.zeros_like(delta))


def disjoint_mean(weighted: torch.Tensor) -> torch.Tensor:
    """TIES' merge of stacked weighted updates: per entry, the mean of those whose sign is the sign of the sum."""
    elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(weighted.dtype)
    agrees = torch.sign(weighted) == elected
    total = (weighted * agrees).sum(0)
    return total / agrees.sum(0).clamp(min=1)


def combine(
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    combination: str,
    density: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One layer's merged update by ``combination`` (see the module docstring)."""
    if combination in ("linear", "svd"):
        return sum((w * d for w, d in zip(weights, deltas)), torch.zeros_like(deltas[0]))
    if density is None:
        raise ConfigError(f"{combination} needs a density in (0, 1]")
    if combination == "ties":
        return disjoint_mean(torch.stack([w * trim_to_density(d, density) for w, d in zip(weights, deltas)]))
    if generator is None:
        raise ValueError(f"{combination} draws random masks: pass a seeded torch.Generator")
    dropped = [w * drop_and_rescale(d, density, generator) for w, d in zip(weights, deltas)]
    if combination == "dare_linear":
        return torch.stack(dropped).sum(0)
    if combination == "dare_ties":
        return disjoint_mean(torch.stack(dropped))
    raise ConfigError(f"unknown merge method {combination!r}; known: {', '.join(COMBINATIONS)}")


def low_rank_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(B, A, dropped)`` with ``B A`` the best rank-``rank`` approximation of ``matrix`` (truncated SVD,
    ``B = U √S``, ``A = √S Vᵀ``), zero-padded to ``rank`` columns/rows; ``dropped`` is the squared
    Frobenius norm of what the truncation leaves out (the sum of the dropped squared singular values)."""
    rows, columns = matrix.shape
    b = matrix.new_zeros(rows, rank)
    a = matrix.new_zeros(rank, columns)
    if not bool(matrix.any()):
        return b, a, 0.0
    u, singular, vh = torch.linalg.svd(matrix, full_matrices=False)
    kept = min(rank, singular.numel())
    root = singular[:kept].sqrt()
    b[:, :kept] = u[:, :kept] * root
    a[:kept] = root[:, None] * vh[:kept]
    return b, a, float((singular[kept:] ** 2).sum())
