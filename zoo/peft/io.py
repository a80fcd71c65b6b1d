"""Saving and loading adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

Tensor names are HF PEFT's: ``base_model.model.<module path>.<tensor>`` with the adapter
name dropped, so a lora, dora, ia3 or prefix adapter saved here loads with
``peft.PeftModel.from_pretrained`` and an adapter saved by ``peft`` loads here. zoo's own
options travel under the ``"zoo"`` key of the config. Loading is all or nothing: a missing,
unexpected or mis-shaped tensor is an error naming it, and the model is left as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from zoo.errors import AdapterFileError
from zoo.files import atomic_directory
from zoo.peft.config import ConfigError
from zoo.peft.engine import (
    DEFAULT_ADAPTER,
    AdapterRecord,
    PeftState,
    _state_or_error,
    adapter_modules,
    apply,
    delete_adapter,
)
from zoo.peft.layers import logical_path
from zoo.peft.registry import get_method, list_methods

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1


def _named_adapter(state: PeftState, adapter_name: str | None) -> tuple[str, AdapterRecord]:
    """The name and record of the adapter ``adapter_name`` (None: the active one)."""
    name = adapter_name or state.active
    if name not in state.adapters:
        raise ConfigError(f"no adapter named {name!r}; adapters on this model: {', '.join(state.adapters)}")
    return name, state.adapters[name]


def adapter_tensors(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one adapter under the names they are saved with."""
    name, record = _named_adapter(_state_or_error(model), adapter_name)
    spec = get_method(record.method)
    prefix = spec.peft_key_prefix
    tensors: dict[str, torch.Tensor] = {}
    if spec.trains_base:
        for key, value in model.state_dict().items():
            tensors[prefix + key] = value.detach()
    else:
        for module_name, module in adapter_modules(model):
            if module.has_adapter(name):
                path = logical_path(module_name)
                for key, value in module.adapter_state(name).items():
                    tensors[f"{prefix}{path}.{key}" if path else prefix + key] = value
    if spec.export_keys is not None:
        tensors = spec.export_keys(tensors)
    return {k: v.contiguous() for k, v in tensors.items()}


def adapter_config(model: nn.Module, adapter_name: str | None = None) -> dict[str, Any]:
    name, record = _named_adapter(_state_or_error(model), adapter_name)
    spec = get_method(record.method)
    config: dict[str, Any] = {}
    # With a block selection the file stays in zoo's format: peft's layers_to_transform counts layers its own way.
    if spec.peft_type is not None and spec.to_peft is not None and record.config.layers is None:
        peft_fields = spec.to_peft(record.config, model, name)
        if peft_fields is not None:
            config.update(peft_fields)
            config["peft_type"] = spec.peft_type
    if "peft_type" not in config:
        config["zoo"] = zoo_section(model, name)
    return config


def zoo_section(model: nn.Module, adapter_name: str | None = None) -> dict[str, Any]:
    """zoo's own description of an adapter. peft-loadable adapters carry it in the safetensors
    metadata rather than in ``adapter_config.json``, where peft would warn about an unknown key."""
    state = _state_or_error(model)
    name, record = _named_adapter(state, adapter_name)
    return {
        "format_version": FORMAT_VERSION,
        "method": record.method,
        "config": record.config.to_dict(),
        "structure": state.structure.name if state.structure else None,
    }


def save_adapter(model: nn.Module, adapter_dir: str | os.PathLike, adapter_name: str | None = None) -> Path:
    """Write one adapter to ``adapter_dir`` atomically (a reader never sees half a directory)."""
    tensors = adapter_tensors(model, adapter_name)
    config = adapter_config(model, adapter_name)
    target = Path(adapter_dir)
    with atomic_directory(target) as staging:  # the umask's mode, not tempfile's 0700
        metadata = {"format": "pt", "zoo": json.dumps(zoo_section(model, adapter_name), default=str)}
        # safetensors' save_file makes its file 0600 whatever the umask; written here it gets the umask's mode
        (staging / WEIGHTS_NAME).write_bytes(save(tensors, metadata=metadata))
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return target


def adapter_size_bytes(model: nn.Module, adapter_name: str | None = None) -> int:
    """Bytes the adapter takes on disk (tensors and config), without writing it."""
    tensors = adapter_tensors(model, adapter_name)
    config = json.dumps(adapter_config(model, adapter_name), indent=2, sort_keys=True, default=str)
    metadata = {"format": "pt", "zoo": json.dumps(zoo_section(model, adapter_name), default=str)}
    return len(save(tensors, metadata=metadata)) + len(config) + 1


def read_adapter_dir(adapter_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The parsed config and the tensors of an adapter directory, with clear errors."""
    directory = Path(adapter_dir)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise AdapterFileError(
            f"{config_path} not found: an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(as written by zoo.peft.save_adapter or peft's save_pretrained)"
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterFileError(
            f"{config_path} is not valid JSON ({error}); the file is corrupt, save the adapter again"
        ) from None
    if not isinstance(config, dict):
        raise AdapterFileError(f"{config_path} must hold a JSON object, found {type(config).__name__}")
    weights_path = directory / WEIGHTS_NAME
    if weights_path.is_file():
        try:
            tensors = load_file(weights_path)
            with safe_open(weights_path, "pt") as handle:
                metadata = handle.metadata() or {}
            if "zoo" in metadata and "zoo" not in config:
                config["zoo"] = json.loads(metadata["zoo"])
        except (SafetensorError, OSError, ValueError) as error:
            raise AdapterFileError(
                f"{weights_path} is not a readable safetensors file ({error}); the file is corrupt"
            ) from None
    elif (directory / "adapter_model.bin").is_file():
        try:
            tensors = torch.load(directory / "adapter_model.bin", map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a bad pickle
            raise AdapterFileError(f"{directory / 'adapter_model.bin'} cannot be read safely ({error})") from None
    else:
        raise AdapterFileError(f"{weights_path} not found next to {CONFIG_NAME}")
    return config, tensors


def _method_and_options(config: dict[str, Any], source: str) -> tuple[str, dict[str, Any], bool]:
    zoo_section = config.get("zoo")
    if isinstance(zoo_section, dict) and "method" in zoo_section:
        version = zoo_section.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise AdapterFileError(
                f"{source} uses adapter format {version}; this zoo reads up to {FORMAT_VERSION}: upgrade zoo"
            )
        return zoo_section["method"], dict(zoo_section.get("config") or {}), False
    peft_type = config.get("peft_type")
    for name in list_methods():
        spec = get_method(name)
        if spec.peft_type == peft_type and spec.from_peft is not None:
            options = spec.from_peft(config)
            if options is not None:  # a method may decline (lora declines use_dora=True)
                return name, options, True
    raise AdapterFileError(
        f"{source}: cannot tell which method made this adapter (peft_type={peft_type!r}, no 'zoo' section); "
        f"zoo reads its own adapters and peft's LORA (incl. DoRA), IA3 and PREFIX_TUNING"
    )


def load_adapter(
    model: nn.Module,
    adapter_dir: str | os.PathLike,
    adapter_name: str = DEFAULT_ADAPTER,
    structure: Any = None,
) -> nn.Module:
    """Add the adapter saved in ``adapter_dir`` to ``model`` as ``adapter_name`` and activate it."""
    config, tensors = read_adapter_dir(adapter_dir)
    method, options, from_peft = _method_and_options(config, str(Path(adapter_dir) / CONFIG_NAME))
    spec = get_method(method)
    if spec.import_keys is not None:
        tensors = spec.import_keys(tensors)
    if from_peft and options.get("modules_to_save"):
        # peft lists candidate head names for a task type ("classifier", "score"); keep those present.
        names = [n for n, _ in model.named_modules()]
        options["modules_to_save"] = [
            h for h in options["modules_to_save"] if any(n == h or n.endswith("." + h) for n in names)
        ]
    if spec.trains_base:
        _load_full(model, tensors, spec.peft_key_prefix, adapter_dir)
        return apply(model, method, adapter_name, structure=structure, **options)
    apply(model, method, adapter_name, structure=structure, **options)
    try:
        _copy_into_adapter(model, adapter_name, tensors, adapter_dir)
    except Exception:
        delete_adapter(model, adapter_name)
        raise
    return model


def _copy_into_adapter(model: nn.Module, adapter_name: str, tensors: dict[str, torch.Tensor], adapter_dir: Any) -> None:
    spec = get_method(_state_or_error(model).adapters[adapter_name].method)
    expected = adapter_tensors(model, adapter_name)
    if spec.import_keys is not None:  # ``tensors`` already went through import_keys: compare like with like
        expected = spec.import_keys(expected)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing tensor(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            detail.append(f"unexpected tensor(s) {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise AdapterFileError(
            f"the adapter in {adapter_dir} does not fit this model: {'; '.join(detail)}. "
            f"Was it made for another backbone or with other target_modules?"
        )
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise AdapterFileError(
                f"tensor {key} has shape {tuple(tensor.shape)} in {adapter_dir} but {tuple(expected[key].shape)} "
                f"in the model: the adapter was made for a backbone of another size"
            )
    prefix = spec.peft_key_prefix
    for module_name, module in adapter_modules(model):
        if not module.has_adapter(adapter_name):
            continue
        path = logical_path(module_name)
        head = f"{prefix}{path}." if path else prefix
        own = {key[len(head) :]: value for key, value in tensors.items() if key.startswith(head)}
        local = {k: v for k, v in own.items() if k in module.adapter_state(adapter_name)}
        module.load_adapter_state(adapter_name, local, f"{prefix}{path}")


def _load_full(model: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, adapter_dir: Any) -> None:
    own = model.state_dict()
    stripped = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in tensors.items()}
    missing = sorted(set(own) - set(stripped))
    unexpected = sorted(set(stripped) - set(own))
    if missing or unexpected:
        raise AdapterFileError(
            f"the full fine-tuning checkpoint in {adapter_dir} does not fit this model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, tensor in stripped.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise AdapterFileError(
                f"tensor {prefix}{key} has shape {tuple(tensor.shape)} in {adapter_dir} but {tuple(own[key].shape)} in the model"
            )
    model.load_state_dict(stripped, strict=True)
