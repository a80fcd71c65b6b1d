"""CLIP-Adapter on the pooled embeddings that a backbone's structure declares; refused elsewhere.

CLIP-Adapter (Gao et al. 2021, "CLIP-Adapter: Better Vision-Language Models with Feature
Adapters", arXiv:2110.04544) keeps the encoder frozen and refines the embedding f it outputs
with a bottleneck MLP, blended back into f with a residual ratio alpha:

    A(f) = ReLU(W_up ReLU(W_down f)),   W_down: d -> d // reduction,  W_up: d // reduction -> d
    f'   = alpha * A(f) + (1 - alpha) * f

Linears without bias and PyTorch's default initialisation, as in the authors' code, so the
adapted model does not start at the base one. Trainable: W_down and W_up of each adapted
embedding (plus ``modules_to_save``: the task head, CLIP's temperature in retrieval).

Where: :attr:`zoo.peft.structure.Structure.embeddings` names, per tower ("image", "text"), the
module whose output is the tower's pooled embedding. ``towers`` picks image, text or both;
by default the image tower where the structure has one (the paper's main setting), else its
text tower. ``alpha`` is the paper's 0.2 (its value for ImageNet and the generic datasets);
the paper gives no ratio for a text-side adapter, so ``text_alpha`` defaults to ``alpha``.
A structure with no embeddings (its backbones pool in code, e.g. zoo's text, protein and
speech backbones, which average token features in ``pool()``) is refused with that reason.

Video (open_clip's CLIP over frames): the image-side adapter follows CLIP's image tower, so
it refines each frame's embedding, and the domain's mean over frames pools the adapted
frames. A frame is the image the method was made for; the pooling stays the domain's own,
and padding frames, never encoded, never pass through the adapter. The text side follows
the caption embedding after CLIP's text projection.

Mixed batches: each row is blended with its own adapter's MLP; other rows keep f. The image
tower of a video backbone sees one row per frame, so a mixed batch of clips with several
frames is refused there (by :mod:`zoo.peft.mixed`'s row check). Merging is refused: A is
nonlinear, so nothing folds into a weight.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from zoo.peft.config import ConfigError, MethodConfig, option, require_choice, require_int_positive
from zoo.peft.engine import InjectionContext
from zoo.peft.layers import AdapterModule
from zoo.peft.registry import register_method
from zoo.peft.structure import TOWERS, Structure, get_structure, list_structures
from zoo.peft.targeting import base_of, match_modules
from zoo.strict_model import Number

CHILD_NAME = "zoo_clip_adapter"
TOWER_CHOICES = ("image", "text", "both")
OWN_WIDTH = ("output_dim", "out_features")
"""Attributes giving a module's own output width (open_clip's image tower, a Linear)."""
ENCLOSING_WIDTH = ("num_features", "hidden_size", "embed_dim")
"""Attributes giving a model's feature width, read for a parameter-free marker module (an Identity)."""


class ClipAdapterConfig(MethodConfig):
    towers: str | None = option(
        None,
        help="Embeddings to adapt: 'image', 'text' or 'both' (those the structure declares). None: the image "
        "embedding where there is one (the paper's setting), else the text one.",
    )
    reduction: int = option(4, help="Bottleneck width = embedding width // reduction (the paper's 4).")
    alpha: Number = option(
        0.2, help="Residual ratio: f' = alpha * A(f) + (1 - alpha) * f, in [0, 1] (the paper's 0.2 for images)."
    )
    text_alpha: Number | None = option(
        None, help="Ratio of the text-side adapter; None: alpha (the paper gives no text-side value)."
    )

    def check(self) -> None:
        super().check()
        if self.towers is not None:
            require_choice(self, "towers", TOWER_CHOICES)
        require_int_positive(self, "reduction")
        for name in ("alpha", "text_alpha"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"clip_adapter: {name}={value!r} is not allowed; {name} must be in [0, 1]")
        if self.target_modules is not None:
            raise ConfigError(
                f"clip_adapter: target_modules={self.target_modules!r} is not used; the structure's embeddings "
                f"decide where adapters go: choose them with towers='image', 'text' or 'both'"
            )

    def ratio(self, tower: str) -> float:
        return float(self.text_alpha if tower == "text" and self.text_alpha is not None else self.alpha)


def _declaring_structures() -> str:
    names = [name for name in list_structures() if get_structure(name).embeddings]
    return ", ".join(f"{name} ({', '.join(get_structure(name).embeddings)})" for name in names)


def chosen_towers(config: ClipAdapterConfig, structure: Structure) -> tuple[str, ...]:
    """The towers ``config.towers`` names, each one the structure declares an embedding for."""
    declared = structure.embeddings
    if not declared:
        raise ConfigError(
            f"clip_adapter: structure {structure.name!r} declares no pooled embedding (Structure.embeddings): its "
            f"backbones pool their features in code, so no module returns an embedding for a feature adapter to "
            f"follow. Structures that declare one: {_declaring_structures()}"
        )
    if config.towers is None:
        return ("image",) if "image" in declared else ("text",)
    wanted = TOWERS if config.towers == "both" else (config.towers,)
    missing = [tower for tower in wanted if tower not in declared]
    if missing:
        raise ConfigError(
            f"clip_adapter: towers={config.towers!r} is not allowed on structure {structure.name!r}, which declares "
            f"no {' or '.join(missing)} embedding; it declares {', '.join(declared)}: choose towers="
            f"{next(iter(declared))!r}"
        )
    return wanted


def embedding_width(model: nn.Module, name: str, module: nn.Module) -> int:
    """The width of the embedding that ``module`` returns: its own (``output_dim``, ``out_features``, a
    LayerNorm's shape), else that of its last Linear (HF's pooler), else, for a parameter-free marker such
    as an Identity, the feature width of the nearest model around it."""
    base = base_of(module)
    for attribute in OWN_WIDTH:
        value = getattr(base, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    if isinstance(base, nn.LayerNorm):
        return int(base.normalized_shape[-1])
    linears = [m for m in base.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].out_features
    parts = name.split(".")
    for end in range(len(parts) - 1, -1, -1):
        enclosing = model.get_submodule(".".join(parts[:end]))
        for attribute in ENCLOSING_WIDTH:
            value = getattr(enclosing, attribute, None)
            if isinstance(value, int) and value > 0:
                return value
    raise ConfigError(
        f"clip_adapter: cannot tell the width of the embedding {name} returns ({type(base).__name__}, no "
        f"{', '.join(OWN_WIDTH)} and no enclosing {', '.join(ENCLOSING_WIDTH)})"
    )


class ClipAdapterLayer(AdapterModule):
    """Each adapter's MLP for one embedding module, attached to it; a forward hook blends its output."""

    adapter_groups = ("adapter_down", "adapter_up")
    adapter_settings = ("ratio",)
    mixes_rows = True

    def __init__(self, embedding_module: nn.Module, where: str, width: int) -> None:
        super().__init__()
        self.adapter_down = nn.ModuleDict()
        self.adapter_up = nn.ModuleDict()
        self.ratio: dict[str, float] = {}
        self.where, self.width = where, width
        self._handles = [embedding_module.register_forward_hook(self._blend_output)]

    def add_adapter(self, name: str, reduction: int, ratio: float, reference: torch.Tensor) -> None:
        bottleneck = self.width // reduction
        if bottleneck < 1:
            raise ConfigError(
                f"clip_adapter: reduction={reduction} is not allowed; the embedding of {self.where} is {self.width} "
                f"wide, so the bottleneck width // reduction would be 0: use reduction <= {self.width}"
            )
        down, up = nn.Linear(self.width, bottleneck, bias=False), nn.Linear(bottleneck, self.width, bias=False)
        self.adapter_down[name] = down.to(reference.device, reference.dtype)
        self.adapter_up[name] = up.to(reference.device, reference.dtype)
        self.ratio[name] = ratio

    def blend(self, name: str, embedding: torch.Tensor) -> torch.Tensor:
        """alpha * A(f) + (1 - alpha) * f for adapter ``name``, f the embedding rows."""
        adapted = F.relu(self.adapter_up[name](F.relu(self.adapter_down[name](embedding))))
        alpha = self.ratio[name]
        return (alpha * adapted + (1 - alpha) * embedding).to(embedding.dtype)

    def _blend_output(self, module: nn.Module, args: tuple, output):
        name, groups = self.active, self.row_groups
        if name is None and groups is None:
            return None
        embedding = output[0] if isinstance(output, tuple) else output
        if embedding.shape[-1] != self.width:
            raise RuntimeError(
                f"clip_adapter: {self.where} returned features of width {embedding.shape[-1]}, but its adapter was "
                f"made for width {self.width}; the structure's embeddings must name a module returning (rows, width)"
            )
        if groups is not None:  # a mixed batch: each adapter blends its own rows
            axis = groups.axis(self)
            blended = groups.replace(
                embedding,
                self.adapter_names(),
                lambda row_name, index: self.blend(row_name, embedding.index_select(axis, index)),
                self,
                axis,
            )
        else:
            blended = self.blend(cast(str, name), embedding)
        return (blended, *output[1:]) if isinstance(output, tuple) else blended

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def unwrap(self) -> nn.Module | None:
        return None


@register_method("clip_adapter", ClipAdapterConfig, needs_structure=True)
def inject_clip_adapter(context: InjectionContext, config: ClipAdapterConfig) -> None:
    structure = context.require_structure()
    towers = chosen_towers(config, structure)
    # the adapter records the towers it adapted, so that it reloads onto the same ones
    config.towers = "both" if len(towers) == len(TOWERS) else towers[0]
    reference = next(p for p in context.model.parameters() if p.is_floating_point())
    model_name = type(context.model).__name__
    for tower in towers:
        pattern = structure.embeddings[tower]
        targets = match_modules(context.model, pattern)
        if not targets:
            raise ConfigError(
                f"clip_adapter: no module of {model_name} returns the {tower} embedding of structure "
                f"{structure.name!r} (a module named like `{pattern}`): this model computes that embedding in code, "
                f"so there is no module output for a feature adapter to follow"
            )
        for target in targets:
            layer = getattr(target.module, CHILD_NAME, None)
            if layer is None:
                width = embedding_width(context.model, target.name, target.module)
                layer = ClipAdapterLayer(target.module, target.name, width)
                setattr(target.module, CHILD_NAME, layer)
            layer.add_adapter(context.adapter_name, config.reduction, config.ratio(tower), reference)
