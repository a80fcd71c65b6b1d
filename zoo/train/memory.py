"""Peak memory of a training run: CUDA's max allocated bytes on a GPU, the process's peak RSS on a CPU.

Linux lets a process reset its own peak RSS (``VmHWM``) by writing ``5`` to ``/proc/self/clear_refs``,
so that several runs in one process (a results table) each report their own peak. Where that is not
possible the peak is the process's since it started, and ``peak_memory_kind`` says so.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def reset_peak_memory() -> bool:
    """Start counting afresh; False when the CPU peak cannot be reset (it then covers the whole process)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def peak_memory(device: torch.device | str | None, reset_worked: bool = True) -> dict[str, object]:
    """``{"peak_memory_bytes": ..., "peak_memory_kind": ...}`` for the device the run trained on."""
    if device is not None and torch.device(device).type == "cuda":
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_memory_kind": "cuda_max_allocated",
        }
    kind = "peak_rss" if reset_worked else "peak_rss_since_process_start"
    return {"peak_memory_bytes": _peak_rss_bytes(), "peak_memory_kind": kind}
