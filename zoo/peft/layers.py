"""Building blocks shared by the method files.

Every module that holds adapter tensors derives from :class:`AdapterModule`. Its
per-adapter tensors live in ``nn.ModuleDict``/``nn.ParameterDict`` attributes keyed by
adapter name and listed in ``adapter_groups``; that convention gives saving, loading,
deleting and freezing for free and yields HF PEFT's tensor names (``lora_A.weight``,
``ia3_l``) once the adapter name is dropped.

:class:`WrappedLayer` replaces a layer and keeps the original as ``base_layer``, as HF
PEFT does, so that a module's logical path is its name with ``.base_layer`` removed.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

if TYPE_CHECKING:
    from zoo.peft.mixed import RowGroups


def check_shapes(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str) -> None:
    """Every tensor in ``state`` must exist in ``own`` with the same shape."""
    for key, tensor in state.items():
        if key not in own:
            raise KeyError(f"{where}.{key}")
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"tensor {where}.{key} has shape {tuple(tensor.shape)} in the adapter file but "
                f"{tuple(own[key].shape)} in the model: the adapter was made for a backbone of another size"
            )


class AdapterModule(nn.Module):
    """A module holding one or more named adapters, at most one of them active."""

    adapter_groups: tuple[str, ...] = ()
    """Attributes holding each adapter's saved tensors (``nn.ModuleDict``/``nn.ParameterDict``)."""
    adapter_settings: tuple[str, ...] = ()
    """Other attributes keyed by adapter name and not saved (dicts, sets, parameter-free
    ``nn.ModuleDict``s): deleting an adapter removes its entry from these too."""
    mixes_rows = False
    """The forward computes each row of a mixed batch with that row's adapter (see zoo.peft.mixed)."""
    row_groups: RowGroups | None = None
    """Set while a mixed batch runs: which adapter each row uses."""

    def __init__(self) -> None:
        super().__init__()
        self.active_adapter: str | None = None
        self.merged_adapter: str | None = None
        self._unmerged_copies: dict[str, torch.Tensor] = {}

    # -- adapters ----------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        names: dict[str, None] = {}
        for group in self.adapter_groups:
            for name in getattr(self, group).keys():
                names[name] = None
        return list(names)

    def has_adapter(self, name: str) -> bool:
        return name in self.adapter_names()

    def set_active(self, name: str | None) -> None:
        self.active_adapter = name if name is not None and self.has_adapter(name) else None

    @property
    def active(self) -> str | None:
        """The active adapter if this module has it and it is not merged, else None; None in a mixed
        batch, where no adapter computes every row."""
        return self.active_adapter if self.merged_adapter is None and self.row_groups is None else None

    def mixed_refusal(self, names: set[str | None]) -> str | None:
        """Why this module cannot compute a batch whose rows use the adapters ``names`` (None: it can)."""
        return None if self.mixes_rows else f"{type(self).__name__} has no per-row path"

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        for group in self.adapter_groups:
            container = getattr(self, group)
            if name in container:
                item = container[name]
                if isinstance(item, nn.Parameter):
                    yield item
                else:
                    yield from item.parameters()

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """Tensors of adapter ``name`` keyed by their name without the adapter name."""
        state: dict[str, torch.Tensor] = {}
        for group in self.adapter_groups:
            container = getattr(self, group)
            if name not in container:
                continue
            item = container[name]
            if isinstance(item, nn.Parameter):
                state[group] = item.detach()
            else:
                for key, value in item.state_dict().items():
                    state[f"{group}.{key}"] = value.detach()
        return state

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor], where: str) -> None:
        """Copy ``state`` into adapter ``name``; shapes must match exactly (``where`` names the module)."""
        check_shapes(self.adapter_state(name), state, where)
        with torch.no_grad():
            for group in self.adapter_groups:
                container = getattr(self, group)
                if name not in container:
                    continue
                item = container[name]
                if isinstance(item, nn.Parameter):
                    if group in state:
                        item.copy_(state[group].to(item.dtype))
                else:
                    prefix = f"{group}."
                    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                    if sub:
                        item.load_state_dict(sub, strict=False)

    def delete_adapter(self, name: str) -> None:
        if self.merged_adapter == name:
            self.unmerge()
        for attribute in self.adapter_groups + self.adapter_settings:
            container = getattr(self, attribute)
            if isinstance(container, set):
                container.discard(name)
            elif name in container:
                del container[name]
        if self.active_adapter == name:
            self.active_adapter = None

    # -- merging (reparameterisation methods override delta application) -----------
    def merge(self, name: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into the base weights")

    def unmerge(self) -> None:
        if self.merged_adapter is None:
            return
        with torch.no_grad():
            for path, original in self._unmerged_copies.items():
                self._merge_target(path).copy_(original)
        self._unmerged_copies.clear()
        self.merged_adapter = None

    def _merge_target(self, path: str) -> torch.Tensor:
        module_path, _, attribute = path.rpartition(".")
        owner = self.get_submodule(module_path) if module_path else self
        return getattr(owner, attribute)

    def _keep_original(self, path: str) -> torch.Tensor:
        """Copy the tensor at ``path`` before merging so that unmerge restores it bit for bit."""
        tensor = self._merge_target(path)
        self._unmerged_copies[path] = tensor.detach().clone()
        return tensor

    # -- removal -----------------------------------------------------------------
    def unwrap(self) -> nn.Module | None:
        """The module to put back in this one's place once it holds no adapter (None: remove)."""
        return getattr(self, "base_layer", None)

    def remove_hooks(self) -> None:
        """Undo anything done outside this module (hooks on other modules) before removal."""


class WrappedLayer(AdapterModule):
    """An adapter that replaces ``base_layer`` and calls it."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer

    def __getattr__(self, name: str):
        # Let code that reads attributes of the wrapped layer (e.g. ``.weight``, ``.in_features``)
        # keep working, as it does for HF PEFT's wrappers.
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Never forward special names: copy.deepcopy looks ``__deepcopy__`` up on the instance and
            # would otherwise copy only the wrapped layer when it defines one (parametrized modules do).
            if name == "base_layer" or _is_special(name):
                raise
            return getattr(self.base_layer, name)


class DeltaWeightLayer(WrappedLayer):
    """A wrapped layer whose adapter adds a dense update ``delta_weight(name)`` to one base tensor;
    merging adds that update in place (unmerge restores the saved copy bit for bit)."""

    weight_name = "weight"
    """The base module's attribute holding the adapted weight."""

    def delta_weight(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def merge(self, name: str) -> None:
        with torch.no_grad():
            weight = self._keep_original(f"base_layer.{self.weight_name}")
            weight += self.delta_weight(name).to(weight.dtype)
        self.merged_adapter = name


class HeadCopy(AdapterModule):
    """A task head trained and saved with an adapter (HF PEFT's ``modules_to_save``).

    Each adapter trains its own copy; the original stays untouched, so disabling adapters
    gives back the base model's head.
    """

    adapter_groups = ("modules_to_save",)
    mixes_rows = True

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()

    def add_adapter(self, name: str) -> None:
        head = copy.deepcopy(self.original_module)
        for parameter in head.parameters():
            parameter.requires_grad_(False)
        self.modules_to_save[name] = head

    def forward(self, *args, **kwargs):
        if self.row_groups is not None:
            # Each row through its adapter's head: the original head's output, those rows replaced.
            (x, *rest), axis = args, self.row_groups.axis(self)
            return self.row_groups.replace(
                self.original_module(*args, **kwargs),
                self.adapter_names(),
                lambda name, index: self.modules_to_save[name](x.index_select(axis, index), *rest, **kwargs),
                self,
                axis,
            )
        if self.active_adapter is not None:
            return self.modules_to_save[self.active_adapter](*args, **kwargs)
        return self.original_module(*args, **kwargs)

    def unwrap(self) -> nn.Module | None:
        return self.original_module

    # HF PEFT saves a head copy under the head's own name (``classifier.weight``).
    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.modules_to_save:
            return {}
        return {k: v.detach() for k, v in self.modules_to_save[name].state_dict().items()}

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor], where: str) -> None:
        check_shapes(self.adapter_state(name), state, where)
        self.modules_to_save[name].load_state_dict(state, strict=False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original_module", "modules_to_save") or _is_special(name):
                raise
            return getattr(self.original_module, name)


def _is_special(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def logical_path(name: str) -> str:
    """A module name as the base model knows it: without the wrappers' own path segments."""
    parts = [p for p in name.split(".") if p not in ("base_layer", "original_module")]
    return ".".join(parts)
