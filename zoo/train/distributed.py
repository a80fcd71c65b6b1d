"""Multi-process training: process-group set-up, model wrapping and the torchrun launcher.

``zoo train ... --nproc N`` (or ``python -m zoo.train.launch --nproc N -m MODULE ...``)
re-runs the command under ``torchrun``; each process then finds ``WORLD_SIZE``/``RANK`` in
its environment, and the trainer joins the process group (gloo on CPU, nccl on GPU) and
wraps the model in DDP or FSDP. Only rank 0 writes files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence

import torch
import torch.distributed as dist

from zoo.peft.config import ConfigError


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True in a single process and on rank 0: the one process that writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def init_distributed(device_type: str) -> bool:
    """Join the process group when started by torchrun with several processes; True if distributed."""
    if world_size() <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def launch(nproc: int, argv: Sequence[str], module: str = "zoo.cli.main") -> int:
    """Run ``python -m MODULE *argv`` in ``nproc`` processes through torchrun; returns the exit code.

    ``argv`` must not ask for another launch (drop ``--nproc`` from it).
    """
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ConfigError(f"--nproc={nproc!r} must be a whole number >= 1")
    if launched_by_torchrun():
        raise ConfigError("this process was already started by torchrun; do not pass --nproc again inside it")
    if nproc > 1 and torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc={nproc} but only {torch.cuda.device_count()} GPU(s) are visible")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", module, *argv,
    ]
    return subprocess.call(command)
