"""The adapters ``zoo serve`` holds: loaded on first use, kept in a least-recently-used order under a
memory bound, and the adapters of one backbone sharing that backbone in one task model.

An adapter is loaded exactly as ``zoo predict`` loads it (:func:`zoo.hub.pull.pull` into the
verified cache, then :func:`zoo.hub.predict.from_pulled`: ``config.yaml`` read as untrusted data,
the base weights fingerprinted against the entry). A classification or regression adapter whose
task head is saved with it then moves onto its backbone's :class:`SharedBackbone`: one task model
per backbone (name, options, scale, weights and their fingerprint), which holds every such adapter
under its own name while each adapter's head is kept beside it, since heads differ in size (2
classes, 4 classes). One forward pass over rows of several adapters runs them together through
:func:`zoo.peft.mixed`, and :class:`RowHeads` gives each row its own adapter's head. Other adapters
(per-token tasks, retrieval, full fine-tuning) keep the task model ``from_pulled`` built and
predict one request at a time.

The memory of the loaded adapters is counted as the bytes of their tensors: each shared backbone
once (its task model without adapters), plus what each adapter adds to it (its modules, its head,
and the copy of its LoRA/DoRA factors that mixed batches stack, zoo.peft.stacked_rows); an adapter that keeps its own model counts all of it. Past the bound, the least recently
used adapters are evicted (a backbone goes with its last adapter) once a load has finished, so
the server holds at most the bound plus the adapter being loaded, and one adapter larger than the
bound alone is still served.
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

import zoo.peft as zp
from zoo.errors import ConfigError, DataError
from zoo.hub.locations import say_to_stderr
from zoo.hub.predict import Predictor, from_pulled, read_outputs
from zoo.peft.engine import peft_state
from zoo.peft.layers import HeadCopy
from zoo.peft.stacked_rows import stack_bytes
from zoo.tasks.heads import TaskModel

ROWS_PER_FORWARD = 64
"""The most rows one forward pass takes; a batch with more runs in several."""
COUNTS = ("forwards", "mixed_forwards", "rows", "loads", "evictions", "abandoned")
"""What the server counts: forward passes (those whose rows used several adapters), rows, adapters loaded and
evicted, requests dropped because their client went away."""


def tensor_bytes(module: nn.Module) -> int:
    """The bytes of a module's parameters and buffers, each storage counted once."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class RowHeads(nn.Module):
    """Each row through the head of its own adapter, in place of a task model's one head.

    Heads may differ in size: the output has as many columns as the widest, and row i's outputs
    are its first ``heads[keys[i]].out_features`` columns (the rest are zeros)."""

    def __init__(self, heads: dict[str, nn.Linear], keys: Sequence[str]) -> None:
        super().__init__()
        self.heads = heads  # a plain dict, not registered: the heads stay out of the task model's modules
        self.rows: dict[str, list[int]] = {}
        for row, key in enumerate(keys):
            self.rows.setdefault(key, []).append(row)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        heads = self.heads
        width = max(heads[key].out_features for key in self.rows)
        out = pooled.new_zeros(pooled.shape[0], width)
        for key, rows in self.rows.items():
            index = torch.tensor(rows, device=pooled.device)
            out[index, : heads[key].out_features] = heads[key](pooled.index_select(0, index)).to(out.dtype)
        return out


class SharedBackbone:
    """One task model holding the adapters of one backbone, each under its own name, and their heads."""

    def __init__(self, model: TaskModel, structure: Any, description: str) -> None:
        self.model, self.structure, self.description = model.eval(), structure, description
        self.base_bytes = tensor_bytes(model)
        """The task model without adapters: the backbone and its head as built (the heads served are beside it)."""
        self.heads: dict[str, nn.Linear] = {}

    def add(self, adapter_dir: Any, key: str) -> int:
        """Loads the adapter in ``adapter_dir`` as ``key``, its head beside the model; returns the bytes it adds."""
        # the adapter's modules without its head (heads differ in size), as zoo merge loads adapters of several tasks
        from zoo.peft.arithmetic import _load_body

        before = tensor_bytes(self.model)
        heads, head_tensors = _load_body(self.model, adapter_dir, key, self.structure)
        try:
            prefix = zp.get_method(peft_state(self.model).adapters[key].method).peft_key_prefix  # type: ignore[union-attr]
            state = {name.removeprefix(f"{prefix}head."): tensor for name, tensor in head_tensors.items()}
            original = self.model.head
            if (
                heads != ["head"]
                or set(state) != {"weight", "bias"}
                or state["weight"].shape[1] != original.in_features
            ):
                raise ConfigError(f"{adapter_dir}: its saved head does not fit this task model's head ({heads})")
            head = nn.Linear(original.in_features, state["weight"].shape[0]).to(original.weight.device)
            head.load_state_dict(state)
        except Exception:
            zp.delete_adapter(self.model, key)
            raise
        self.model.eval()  # the modules just added start in training mode (dropout on)
        self.heads[key] = head.eval()
        return tensor_bytes(self.model) - before + tensor_bytes(head) + stack_bytes(self.model, key)

    def remove(self, key: str) -> None:
        self.heads.pop(key)
        if key in zp.list_adapters(self.model):
            zp.delete_adapter(self.model, key)

    def outputs(self, keys: Sequence[str], inputs: Sequence[Any]) -> list[torch.Tensor]:
        """Row i's raw outputs with adapter ``keys[i]``, in one forward pass where the adapters mix."""
        model: Any = self.model  # its head is swapped for RowHeads during the pass
        original = model.head
        try:
            with torch.no_grad():
                try:
                    model.head = RowHeads(self.heads, keys)
                    with zp.mixed(model, list(keys)):
                        out = model(model.backbone.collate(list(inputs))).float().cpu()
                except ConfigError:
                    # rows that cannot share a pass (vpt prompts of other lengths, a tower that flattens its batch):
                    # each adapter's rows in a pass of their own
                    out = self._one_adapter_at_a_time(keys, inputs)
        finally:
            model.head = original
        return [out[row, : self.heads[key].out_features] for row, key in enumerate(keys)]

    def _one_adapter_at_a_time(self, keys: Sequence[str], inputs: Sequence[Any]) -> torch.Tensor:
        width = max(self.heads[key].out_features for key in keys)
        out = torch.zeros(len(keys), width)
        model: Any = self.model
        for key in dict.fromkeys(keys):
            rows = [row for row, name in enumerate(keys) if name == key]
            zp.set_active_adapter(model, key)
            model.head = RowHeads(self.heads, [key] * len(rows))
            out[rows] = model(model.backbone.collate([inputs[row] for row in rows])).float().cpu()
        return out


@dataclass
class ServedAdapter:
    name: str
    """``<domain>/<task>-<method>@<version>``."""
    predictor: Predictor
    """How it reads its outputs (task kind, class names, domain, configuration); predicts itself when not shared."""
    size_bytes: int
    backbone: SharedBackbone | None = None
    key: str | None = None
    """Its name inside the shared task model."""
    served: int = 0
    """Requests answered."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "domain": self.predictor.domain,
            "task": self.predictor.task_kind,
            "labels": self.predictor.labels,
            "backbone": self.backbone.description if self.backbone else "its own (not shared)",
            "size_mb": round(self.size_bytes / 2**20, 3),
            "requests": self.served,
        }


def model_inputs(predictor: Predictor, inputs: Sequence[Any], names: Sequence[str]) -> list[Any]:
    """The inputs as the adapter's model sees them: through its input transform, where its Predictor has one."""
    transform = getattr(predictor, "model_inputs", None)
    return list(transform(inputs, names)) if transform is not None else list(inputs)


def _release_memory() -> None:
    """Give freed tensors' pages back to the system, so an eviction shows in the process's resident memory."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # another C library: the pages stay with the allocator
            pass


@dataclass
class ServedAdapters:
    """The loaded adapters, least recently used first, under ``memory_bound`` bytes."""

    hub: str | None
    memory_bound: int
    log: Callable[[str], None] = say_to_stderr
    loaded: OrderedDict[str, ServedAdapter] = field(default_factory=OrderedDict)
    references: dict[str, str] = field(default_factory=dict)
    """A name as requested (``text/sst2-lora``) -> the version loaded for it (``text/sst2-lora@2``)."""
    backbones: dict[tuple, SharedBackbone] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    _next_key: int = 0

    @property
    def used_bytes(self) -> int:
        shared = {id(a.backbone): a.backbone.base_bytes for a in self.loaded.values() if a.backbone is not None}
        return sum(shared.values()) + sum(adapter.size_bytes for adapter in self.loaded.values())

    def get(self, reference: str, pinned: Sequence[str] = ()) -> ServedAdapter:
        """The adapter, loaded if it is not (evicting others, never those in ``pinned``), now the most recent."""
        name = self.references.get(reference, reference)
        if name not in self.loaded:
            adapter = self._load(reference)
            name = adapter.name
            self.references[reference] = name
            self.fit([*pinned, name])
            if self.used_bytes > self.memory_bound and len(self.loaded) == 1:
                self.log(f"{name} alone is over the memory bound; serving it anyway")
        self.loaded.move_to_end(name)
        return self.loaded[name]

    def _load(self, reference: str) -> ServedAdapter:
        from zoo.hub.pull import pull

        pulled = pull(reference, self.hub, self.log)
        if pulled.name in self.loaded:  # requested under another reference (latest and @version)
            return self.loaded[pulled.name]
        predictor = from_pulled(pulled, log=self.log)
        model, state = predictor.model, peft_state(predictor.model)
        shareable = (
            state is not None
            and not zp.get_method(state.adapters[zp.DEFAULT_ADAPTER].method).trains_base
            and isinstance(model, TaskModel)
            and not model.task.per_token
            and isinstance(model.head, HeadCopy)
        )
        self.counts["loads"] += 1
        if not shareable:
            adapter = ServedAdapter(pulled.name, predictor, tensor_bytes(model))
        else:
            config = cast(Any, predictor.config)
            backbone_key = (
                config.backbone.name,
                json.dumps(config.backbone.options, sort_keys=True, default=str),
                config.scale,
                str(config.backbone.pretrained),
                pulled.entry["backbone"]["fingerprint"],  # from_pulled found the weights to match it
            )
            backbone = self.backbones.get(backbone_key)
            if backbone is None:
                structure = state.structure if state else None
                zp.delete_adapter(model, zp.DEFAULT_ADAPTER)  # the task model as built: the shared base
                description = f"{config.backbone.name} ({pulled.entry['backbone']['fingerprint'][:19]})"
                backbone = self.backbones[backbone_key] = SharedBackbone(cast(TaskModel, model), structure, description)
            key = f"adapter{self._next_key}"
            self._next_key += 1
            try:
                size = backbone.add(pulled.adapter_dir, key)
            except Exception:
                if not backbone.heads:  # made for this adapter alone
                    del self.backbones[backbone_key]
                raise
            predictor.model = backbone.model  # the model from_pulled built for this adapter alone is let go
            adapter = ServedAdapter(pulled.name, predictor, size, backbone, key)
        self.loaded[adapter.name] = adapter
        mb = self.used_bytes / 2**20
        self.log(f"{adapter.name}: loaded ({adapter.size_bytes / 2**20:.1f} MB; {mb:.1f} MB of adapters held)")
        return adapter

    def fit(self, pinned: Sequence[str] = ()) -> None:
        """Evicts the least recently used adapters not in ``pinned`` until the rest fit under the bound."""
        while self.used_bytes > self.memory_bound:
            unpinned = [name for name in self.loaded if name not in pinned]
            if not unpinned or len(self.loaded) == 1:  # one adapter over the bound alone is still served
                return
            self.evict(unpinned[0])

    def evict(self, name: str) -> None:
        adapter = self.loaded.pop(name)
        self.references = {ref: loaded for ref, loaded in self.references.items() if loaded != name}
        backbone = adapter.backbone
        if backbone is not None and adapter.key is not None:
            backbone.remove(adapter.key)
            if not backbone.heads:  # its last adapter: the backbone goes too
                self.backbones = {key: b for key, b in self.backbones.items() if b is not backbone}
        adapter.predictor.model = None
        self.counts["evictions"] += 1
        _release_memory()
        self.log(f"{name}: evicted ({self.used_bytes / 2**20:.1f} MB of adapters held)")

    def predict(self, work: Sequence[tuple[ServedAdapter, list[Any], list[str]]]) -> list[list[dict] | DataError]:
        """For each (adapter, inputs, names): what ``Predictor.predict`` gives, rows of one backbone mixed in
        forward passes of up to ROWS_PER_FORWARD rows; an input its adapter's transform refuses: the DataError."""
        results: list[list[dict] | DataError | None] = [None] * len(work)
        rows: dict[int, tuple[SharedBackbone, list[tuple[int, str, Any]]]] = {}  # id -> (request, key, model input)
        for number, (adapter, inputs, names) in enumerate(work):
            adapter.served += 1
            try:
                if adapter.backbone is None:
                    results[number] = adapter.predictor.predict(inputs, ROWS_PER_FORWARD, names)
                    continue
                seen = model_inputs(adapter.predictor, inputs, names)
            except DataError as error:
                results[number] = error
                continue
            _, backbone_rows = rows.setdefault(id(adapter.backbone), (adapter.backbone, []))
            backbone_rows.extend((number, cast(str, adapter.key), item) for item in seen)
        outputs: dict[int, list[torch.Tensor]] = {}
        for backbone, backbone_rows in rows.values():
            for start in range(0, len(backbone_rows), ROWS_PER_FORWARD):
                chunk = backbone_rows[start : start + ROWS_PER_FORWARD]
                keys = [key for _, key, _ in chunk]
                self.counts["forwards"] += 1
                self.counts["mixed_forwards"] += len(set(keys)) > 1
                self.counts["rows"] += len(chunk)
                for (number, _, _), out in zip(chunk, backbone.outputs(keys, [item for _, _, item in chunk])):
                    outputs.setdefault(number, []).append(out)
        for number, found in outputs.items():
            predictor = work[number][0].predictor
            results[number] = read_outputs(torch.stack(found), predictor.task_kind, predictor.labels)
        return [result if result is not None else [] for result in results]

    def describe(self) -> dict[str, Any]:
        return {
            "loaded": [adapter.describe() for adapter in reversed(self.loaded.values())],  # most recent first
            "memory_mb": {"used": round(self.used_bytes / 2**20, 3), "bound": round(self.memory_bound / 2**20, 3)},
            "counts": dict(self.counts),
        }
