"""Sparse fine-tuning: train a fixed subset of weight entries (the mask-based baseline of
parameter-efficient fine-tuning; cf. Sung et al. 2021, "Training Neural Networks with Fixed
Sparse Masks", arXiv:2111.09839, and magnitude/random masks as in the lottery-ticket
literature, Frankle & Carbin 2019, arXiv:1803.03635).

    W' = W + scatter(indices, delta),    delta = 0 at init

For each targeted weight a fixed set of ``k = max(1, round(density * numel))`` entries is
chosen once, at apply time, and only their deltas train:

- ``selection="magnitude"``: the k entries of largest ``|W|``;
- ``selection="gradient"``: the k entries of largest ``|dL/dW|``, summed over the batches of
  ``calibration``, a callable ``calibration(model)`` returning a loss or an iterable of
  losses (one per batch); it is used once and not saved;
- ``selection="random"``: k entries drawn uniformly with ``seed``.

``density`` is the fraction of entries trained. Comparison tables of the field report masks
"40% pruned" and "80% pruned", i.e. ``density=0.6`` and ``density=0.2``.

Trainable: ``sparse_delta.values`` (one 1-D tensor per weight); the flat ``indices`` are a
buffer saved with the adapter, so a loaded adapter needs no calibration. No dense trainable
copy exists: the forward adds the deltas into a copy of W by ``index_add``. Targets default
to every Linear inside the blocks (its registered default target, the role ``"block"``).
"""

from __future__ import annotations

from typing import Any, Callable, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from zoo.peft.config import ConfigError, MethodConfig, option, require_choice
from zoo.peft.engine import InjectionContext
from zoo.peft.layers import WrappedLayer
from zoo.peft.mixed import mixed_forward
from zoo.peft.registry import register_method
from zoo.peft.targeting import base_of, innermost_path, match_modules, no_default_targets
from zoo.strict_model import Number

SELECTIONS = ("magnitude", "gradient", "random")


class SparseConfig(MethodConfig):
    density: Number = option(
        0.2,
        help="Fraction of each weight's entries trained, in (0, 1]; 0.6 and 0.2 are the usual '40%/80% pruned' settings.",
    )
    selection: str = option(
        "magnitude",
        help="How entries are chosen: 'magnitude' (largest |W|), 'gradient' (largest |grad| on calibration) or 'random'.",
    )
    seed: int = option(0, help="Seed of selection='random'.")
    calibration: Callable[[nn.Module], Any] | None = option(
        None,
        help="For selection='gradient': calibration(model) -> loss or iterable of losses. Used once, not saved.",
        repr=False,
        exclude=True,  # a function: not saved with the adapter
    )

    def check(self) -> None:
        super().check()
        if not 0 < self.density <= 1:
            raise ConfigError(
                f"sparse: density={self.density!r} is not allowed; density must be in (0, 1] (fraction of entries trained)"
            )
        require_choice(self, "selection", SELECTIONS)


def entries_for(numel: int, density: float) -> int:
    """How many entries of a weight with ``numel`` entries are trained."""
    return max(1, int(density * numel + 0.5))


class SparseDelta(nn.Module):
    indices: torch.Tensor  # a buffer

    def __init__(self, indices: torch.Tensor, like: torch.Tensor) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.zeros(indices.numel(), dtype=like.dtype, device=like.device))
        self.register_buffer("indices", indices.to(like.device))


class SparseLayer(WrappedLayer):
    adapter_groups = ("sparse_delta",)
    adapter_settings = ("needs_indices",)
    mixes_rows = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.sparse_delta = nn.ModuleDict()
        self.needs_indices: set[str] = set()

    def add_adapter(self, name: str, indices: torch.Tensor | None, count: int) -> None:
        weight = self._linear().weight
        if indices is None:  # gradient selection without calibration: the indices must come from a file
            indices = torch.arange(count)
            self.needs_indices.add(name)
        self.sparse_delta[name] = SparseDelta(indices, weight)

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor], where: str) -> None:
        super().load_adapter_state(name, state, where)
        if "sparse_delta.indices" in state:
            self.needs_indices.discard(name)

    def _linear(self) -> nn.Linear:
        return cast(nn.Linear, base_of(self.base_layer))  # inject_sparse wraps only Linear layers

    def _delta(self, name: str) -> SparseDelta:
        return cast(SparseDelta, self.sparse_delta[name])

    def effective_weight(self, name: str) -> torch.Tensor:
        weight = self._linear().weight
        delta = self._delta(name)
        return weight.reshape(-1).index_add(0, delta.indices, delta.values).view_as(weight)

    def merge(self, name: str) -> None:
        with torch.no_grad():
            weight = self._keep_original("base_layer.weight")
            delta = self._delta(name)
            weight.view(-1).index_add_(0, delta.indices, delta.values.to(weight.dtype))
        self.merged_adapter = name

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.row_groups is not None:
            return mixed_forward(self, x, args, kwargs)
        name = self.active
        if name is None:
            return self.base_layer(x, *args, **kwargs)
        return self.with_weight(name, x, *args, **kwargs)

    def adapted_rows(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """One adapter's rows of a mixed batch: the layer called on them with that adapter's weight."""
        return self.with_weight(name, x)

    def with_weight(self, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The layer called with ``W + scatter(indices, delta)`` of adapter ``name``."""
        if name in self.needs_indices:
            raise ConfigError(
                f"sparse adapter {name!r} uses selection='gradient' but was applied without calibration: pass "
                f"calibration=callable(model) -> loss to zoo.peft.apply, or load the adapter (its indices) from a file"
            )
        weight = self.effective_weight(name)
        base = self.base_layer
        if type(base).forward is nn.Linear.forward and not args and not kwargs:
            return F.linear(x, weight, cast(nn.Linear, base).bias)
        return functional_call(base, {innermost_path(base, "weight"): weight}, (x, *args), kwargs)


def _targets(context: InjectionContext, config: SparseConfig) -> list[tuple[str, nn.Linear]]:
    """(name to wrap, innermost Linear) for each Linear selected, outermost wrapper first."""
    patterns = config.target_modules if config.target_modules is not None else context.default_targets()
    if patterns is None:
        raise no_default_targets(context.model, "sparse")
    found: dict[int, tuple[str, nn.Linear]] = {}
    for target in match_modules(context.model, patterns):
        if target.slices:
            raise ConfigError(
                f"sparse: slice selectors like {target.name!r}[...] are not supported; target the whole Linear"
            )
        inner = base_of(target.module)
        parent_name = target.name.rpartition(".")[0]
        parent = base_of(context.model.get_submodule(parent_name)) if parent_name else None
        if isinstance(inner, nn.Linear) and not isinstance(parent, nn.MultiheadAttention) and id(inner) not in found:
            found[id(inner)] = (target.name, inner)
    if not found:
        raise ConfigError(
            f"sparse: target_modules={patterns!r} selects no nn.Linear of {type(context.model).__name__} "
            f"(sparse fine-tuning adapts Linear weights; nn.MultiheadAttention projections are not supported)"
        )
    return list(found.values())


def _gradient_scores(model: nn.Module, weights: list[torch.Tensor], calibration: Callable) -> list[torch.Tensor]:
    """Sum over calibration batches of |dL/dW| for each weight; other parameters get no gradient."""
    flags = {id(p): (p, p.requires_grad) for p in model.parameters()}
    grads = {id(w): w.grad for w in weights}
    scores = [torch.zeros_like(w) for w in weights]
    try:
        for parameter, _ in flags.values():
            parameter.requires_grad_(False)
        for weight in weights:
            weight.requires_grad_(True)
            weight.grad = None
        with torch.enable_grad():
            losses = calibration(model)
            for loss in [losses] if isinstance(losses, torch.Tensor) else losses:
                loss.backward()
                for score, weight in zip(scores, weights):
                    if weight.grad is not None:
                        score += weight.grad.abs()
                        weight.grad = None
    finally:
        for parameter, flag in flags.values():
            parameter.requires_grad_(flag)
        for weight in weights:
            weight.grad = grads[id(weight)]
    return scores


@register_method(
    "sparse",
    SparseConfig,
    mergeable=True,
    starts_at_identity=True,
    default_targets=("block",),
)
def inject_sparse(context: InjectionContext, config: SparseConfig) -> None:
    targets = _targets(context, config)
    weights = [linear.weight for _, linear in targets]
    counts = [entries_for(w.numel(), config.density) for w in weights]
    scores: list[torch.Tensor] | None  # None: the indices come from a saved adapter
    if config.selection == "magnitude":
        scores = [w.detach().abs() for w in weights]
    elif config.selection == "gradient":
        scores = _gradient_scores(context.model, weights, config.calibration) if config.calibration else None
        config.calibration = None  # used once; do not keep the caller's data alive
    else:
        generator = torch.Generator().manual_seed(config.seed)
        scores = [torch.rand(w.shape, generator=generator) for w in weights]
    for index, (name, _) in enumerate(targets):
        indices = None
        if scores is not None:
            indices = torch.topk(scores[index].reshape(-1), counts[index]).indices.sort().values
        layer = context.wrap(name, SparseLayer, SparseLayer)
        layer.add_adapter(context.adapter_name, indices, counts[index])
