"""Moving a collated batch to the device the model is on, and sizing the CPU thread pool."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

logger = logging.getLogger("zoo.train")


def move_to_device(value: Any, device: torch.device | str) -> Any:
    """Tensors anywhere inside dicts, lists and tuples moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: move_to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(move_to_device(item, device) for item in value)
    return value


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or ``taskset`` narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_threads(requested: int | None, processes_on_machine: int) -> int:
    """Size torch's intra-op thread pool and return the number of threads it has.

    ``requested`` (``train.threads``) wins; else a user's ``OMP_NUM_THREADS`` (torchrun sets it to 1
    per process when it starts several) is left as it is; else the available cores, shared among the
    ``processes_on_machine`` processes of this run. torch's own default counts the machine's cores,
    which overbooks a process limited to fewer (e.g. 2 of 16), and slows it down.
    """
    if requested is not None:
        threads = requested
    elif os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    else:
        threads = max(1, available_cores() // max(1, processes_on_machine))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        logger.info("torch uses %d CPU threads", threads)
    return threads


def quiet_worker(worker_id: int) -> None:
    """DataLoader worker set-up: one thread each, and no tokenizer thread pool inside a forked worker."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    torch.set_num_threads(1)
