"""zoo.peft: every PEFT method, on any torch backbone.

>>> import zoo.peft as zp
>>> model = zp.apply(model, "lora", r=8, lora_alpha=16)      # freezes the rest
>>> print(zp.parameter_report(model))
>>> zp.save_adapter(model, "runs/adapter")
>>> with zp.mixed(model, ["a", None, "b"]):                  # row i with adapter names[i]
...     outputs = model(batch)
"""

from zoo.errors import (
    AdapterFileError,
    CheckpointError,
    ChecksumWarning,
    ConfigError,
    DataError,
    DownloadError,
    PretrainedUnavailable,
    UnknownNameError,
)
from zoo.peft.config import MethodConfig
from zoo.peft.engine import (
    DEFAULT_ADAPTER,
    active_adapter,
    apply,
    delete_adapter,
    disable_adapters,
    disabled,
    enable_adapters,
    list_adapters,
    merge,
    merge_and_unload,
    set_active_adapter,
    unload,
    unmerge,
)
from zoo.peft.exclusions import Exclusion, exclusion_for, list_exclusions, register_exclusion
from zoo.peft.io import adapter_size_bytes, load_adapter, read_adapter_dir, save_adapter
from zoo.peft.mixed import mixed
from zoo.peft.registry import MethodSpec, get_method, list_methods, register_method
from zoo.peft.report import ParameterReport, parameter_report
from zoo.peft.structure import Structure, detect_structure, get_structure, list_structures, register_structure

__all__ = [
    "CheckpointError",
    "ChecksumWarning",
    "DataError",
    "DownloadError",
    "PretrainedUnavailable",
    "UnknownNameError",
    "AdapterFileError",
    "ConfigError",
    "DEFAULT_ADAPTER",
    "Exclusion",
    "MethodConfig",
    "MethodSpec",
    "ParameterReport",
    "Structure",
    "active_adapter",
    "adapter_size_bytes",
    "apply",
    "delete_adapter",
    "detect_structure",
    "disable_adapters",
    "disabled",
    "enable_adapters",
    "exclusion_for",
    "get_method",
    "get_structure",
    "list_adapters",
    "list_exclusions",
    "list_methods",
    "list_structures",
    "load_adapter",
    "merge",
    "merge_and_unload",
    "mixed",
    "parameter_report",
    "read_adapter_dir",
    "register_exclusion",
    "register_method",
    "register_structure",
    "save_adapter",
    "set_active_adapter",
    "unload",
    "unmerge",
]
