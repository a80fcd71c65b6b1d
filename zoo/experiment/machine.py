"""The machine a run trained on, as a run record, a result row and a model card state it."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any


@functools.cache
def hardware() -> dict[str, Any]:
    """CPU model and count, memory, GPUs, architecture and host name of this machine."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or None,
        "host": platform.node(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (OSError, ValueError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def machine_text(device: str = "cpu", threads: int | None = None, info: dict[str, Any] | None = None) -> str:
    """One line for a card: ``"1 thread of 2 CPU cores (Intel Xeon ...), 24.0 GiB"``, or the GPU used."""
    info = info if info is not None else hardware()
    cores = f"{info.get('cpus')} CPU cores" + (f" ({info['cpu']})" if info.get("cpu") else "")
    memory = f", {info['memory_gib']} GiB" if info.get("memory_gib") else ""
    if device.startswith("cuda") and info.get("gpus"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return f"{info['gpus'][min(index, len(info['gpus']) - 1)]}; host {cores}{memory}"
    used = f"{threads} thread{'s' if threads != 1 else ''} of " if threads else ""
    return f"{used}{cores}{memory}"
