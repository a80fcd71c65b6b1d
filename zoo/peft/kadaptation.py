"""KAdaptation: Kronecker adaptation (He et al. 2023, "Parameter-efficient Model Adaptation
for Vision Transformers", arXiv:2203.16329).

The update of each targeted weight is a sum of Kronecker products,

    h = W x + (alpha / r) * sum_{i=1..n} (A_i kron u_i v_i^T) x,
    A_i in R^{n x n},  u_i in R^{(out/n) x r},  v_i in R^{(in/n) x r}

where the "slow weights" A_1..A_n are shared by every targeted layer of an adapter and the
"fast weights" u_i, v_i belong to each layer. v starts at zero, so the adapted model starts
equal to the base. Trainable: the shared A (one ``(n, n, n)`` tensor per adapter, kept and
saved once, in a ``zoo_kadaptation`` module inside the adapter's first layer; the other
layers hold a reference), and u, v of each layer.

The update is applied without forming it: with x reshaped to ``(n, in/n)``, term i is
``A_i X v_i u_i^T``, a few products of size ``n x in x r``. Targets: ``nn.Linear`` (in and
out features divisible by n), slices of a fused q/k/v Linear (``"qkv[q,v]"``), each slice
with its own u, v, and slices of ``nn.MultiheadAttention.in_proj_weight`` (open_clip's
``"attn[q,v]"``; all three without a selector), where the dense update is added to that
weight and the module called with the sum, as LoRA does there. ``u`` and ``v`` are stored
as ``(slices, n, out/n or in/n, r)``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn
from torch.func import functional_call

from zoo.peft.config import ConfigError, MethodConfig, option, require_int_positive, require_positive
from zoo.peft.engine import InjectionContext
from zoo.peft.layers import AdapterModule, DeltaWeightLayer
from zoo.peft.mixed import mixed_forward, mixed_multihead_forward
from zoo.peft.registry import register_method
from zoo.peft.targeting import FUSED_SLICE_NAMES, base_of, innermost_path, slice_bounds
from zoo.strict_model import Number

SHARED_NAME = "zoo_kadaptation"


class KAdaptationConfig(MethodConfig):
    n: int = option(
        4, help="Size of the shared n x n factors A_i and number of Kronecker terms; must divide in and out features."
    )
    r: int = option(1, help="Rank of each fast-weight product u_i v_i^T.")
    alpha: Number = option(1.0, help="Scale numerator: the update is multiplied by alpha / r.")

    def check(self) -> None:
        super().check()
        require_int_positive(self, "n")
        require_int_positive(self, "r")
        require_positive(self, "alpha")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class SharedKroneckerFactors(AdapterModule):
    """The slow weights A_1..A_n of each adapter, shared by all its layers."""

    adapter_groups = ("kadaptation_A",)
    mixes_rows = True  # the layers use these factors; this module computes nothing

    def __init__(self) -> None:
        super().__init__()
        self.kadaptation_A = nn.ParameterDict()

    def add_adapter(self, name: str, n: int, like: torch.Tensor) -> None:
        factors = torch.empty(n, n, n)
        for factor in factors:
            nn.init.xavier_uniform_(factor)
        self.kadaptation_A[name] = nn.Parameter(factors.to(like.device, like.dtype))

    def merge(self, name: str) -> None:
        self.merged_adapter = name  # the layers fold A into their weights; nothing to change here

    def unwrap(self) -> None:
        return None


class KAdaptationLayer(DeltaWeightLayer):
    adapter_groups = ("kadaptation_u", "kadaptation_v")
    adapter_settings = ("scaling", "slices", "shared")
    mixes_rows = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.kadaptation_u = nn.ParameterDict()
        self.kadaptation_v = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self.slices: dict[str, dict[str, tuple[int, int]]] = {}
        # References, not children: each adapter's A is registered (and saved) once, in its first layer.
        self.shared: dict[str, SharedKroneckerFactors] = {}

    def projection_weight(self) -> torch.Tensor:
        return getattr(base_of(self.base_layer), self.weight_name)

    def add_adapter(
        self, name: str, config: KAdaptationConfig, slices, shared: SharedKroneckerFactors, where: str
    ) -> None:
        weight = self.projection_weight()
        out_features, in_features = weight.shape
        bounds = slice_bounds(out_features, slices)
        rows = out_features // 3 if bounds else out_features  # q, k and v slices have equal size
        n = config.n
        for label, size in (
            ("in_features", in_features),
            ("out_features per slice" if bounds else "out_features", rows),
        ):
            if size % n:
                divisors = [d for d in range(1, min(in_features, rows) + 1) if in_features % d == 0 and rows % d == 0]
                raise ConfigError(
                    f"kadaptation: n={n} does not divide {label}={size} of {where!r}; n must divide both "
                    f"in_features and out_features, e.g. one of {divisors[-6:]}"
                )
        count = max(len(bounds), 1)
        # u uniform in +-1/sqrt(out/n) (as LoRA initialises A), v zero so that the update starts at 0.
        u = torch.empty(count, n, rows // n, config.r)
        nn.init.uniform_(u, -1 / math.sqrt(rows // n), 1 / math.sqrt(rows // n))
        v = torch.zeros(count, n, in_features // n, config.r)
        self.kadaptation_u[name] = nn.Parameter(u.to(weight.device, weight.dtype))
        self.kadaptation_v[name] = nn.Parameter(v.to(weight.device, weight.dtype))
        self.scaling[name] = config.scaling
        self.slices[name] = bounds
        self.shared[name] = shared

    def update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The update for every slice, ``(..., slices, rows)``, computed without forming dW."""
        factors = self.shared[name].kadaptation_A[name]
        u, v = self.kadaptation_u[name], self.kadaptation_v[name]
        n = factors.shape[0]
        blocks = x.reshape(-1, n, x.shape[-1] // n)  # (N, b, in/n)
        projected = torch.einsum("Nbl,silr->Nsibr", blocks, v)
        mixed = torch.einsum("iab,Nsibr->Nsair", factors, projected)
        out = torch.einsum("Nsair,sipr->Nsap", mixed, u) * self.scaling[name]
        return out.reshape(*x.shape[:-1], u.shape[0], n * u.shape[2])

    def delta_weight(self, name: str) -> torch.Tensor:
        factors = self.shared[name].kadaptation_A[name]
        u, v = self.kadaptation_u[name], self.kadaptation_v[name]
        n = factors.shape[0]
        # dW[a*p + k, b*q + l] = sum_i A_i[a, b] (u_i v_i^T)[k, l]
        dense = torch.einsum("iab,sikr,silr->sakbl", factors, u, v)
        dense = dense.reshape(u.shape[0], n * u.shape[2], n * v.shape[2]) * self.scaling[name]
        if not self.slices[name]:
            return dense[0]
        delta = torch.zeros_like(self.projection_weight())
        for index, (start, end) in enumerate(self.slices[name].values()):
            delta[start:end] = dense[index]
        return delta

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.row_groups is not None:
            return mixed_forward(self, x, args, kwargs)
        out = self.base_layer(x, *args, **kwargs)
        name = self.active
        return out if name is None else self.adapted_rows(name, x, out)

    def adapted_rows(self, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Adapter ``name``'s output for inputs ``x`` whose base output is ``out``: ``out`` plus the update."""
        update = self.update(name, x)
        if not self.slices[name]:
            return out + update[..., 0, :]
        for index, (start, end) in enumerate(self.slices[name].values()):
            out[..., start:end] = out[..., start:end] + update[..., index, :]
        return out


class KAdaptationMultiheadAttention(KAdaptationLayer):
    """KAdaptation on slices of ``nn.MultiheadAttention.in_proj_weight``: the module multiplies by
    that weight inside ``F.multi_head_attention_forward``, so it is called with ``W + dW``."""

    weight_name = "in_proj_weight"

    def __init__(self, base_layer: nn.Module) -> None:
        if not base_of(base_layer)._qkv_same_embed_dim:  # then q, k and v have separate weights, no in_proj_weight
            raise ConfigError(
                "kadaptation on nn.MultiheadAttention needs q, k and v of the same size (kdim == vdim == embed_dim)"
            )
        super().__init__(base_layer)

    def add_adapter(
        self, name: str, config: KAdaptationConfig, slices, shared: SharedKroneckerFactors, where: str
    ) -> None:
        super().add_adapter(name, config, slices or FUSED_SLICE_NAMES, shared, where)

    def forward(self, *args, **kwargs):
        if self.row_groups is not None:
            return mixed_multihead_forward(self, args, kwargs)
        name = self.active
        if name is None:
            return self.base_layer(*args, **kwargs)
        return functional_call(self.base_layer, self.adapted_tensors(name), args, kwargs)

    def adapted_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """What the module is called with under adapter ``name``: ``in_proj_weight + dW``."""
        weight = self.projection_weight() + self.delta_weight(name)
        return {innermost_path(self.base_layer, self.weight_name): weight}


def _layer_class(module: nn.Module) -> type[KAdaptationLayer]:
    return KAdaptationMultiheadAttention if isinstance(base_of(module), nn.MultiheadAttention) else KAdaptationLayer


@register_method(
    "kadaptation",
    KAdaptationConfig,
    mergeable=True,
    starts_at_identity=True,
    default_targets=("query", "value"),
)
def inject_kadaptation(context: InjectionContext, config: KAdaptationConfig) -> None:
    targets = context.targets(config, allowed=(nn.Linear, nn.MultiheadAttention))
    # The shared factors live in the first layer rather than on the model root, where a root
    # that calls its children in turn (nn.Sequential) would call them too.
    first_class = _layer_class(targets[0].module)
    first = context.wrap(targets[0].name, first_class, first_class)
    shared = cast("SharedKroneckerFactors | None", first._modules.get(SHARED_NAME))
    if shared is None:
        shared = SharedKroneckerFactors()
        first.add_module(SHARED_NAME, shared)
    shared.add_adapter(context.adapter_name, config.n, like=first.projection_weight())
    for target in targets:
        layer_class = _layer_class(target.module)
        layer = context.wrap(target.name, layer_class, layer_class)
        layer.add_adapter(context.adapter_name, config, target.slices, shared, target.name)
