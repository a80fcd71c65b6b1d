"""Multi-process training: process-group set-up, model wrapping and the torchrun launcher.

``zoo train ... --nproc N`` (or ``python -m zoo.train.launch --nproc N -m MODULE ...``)
re-runs the command under ``torchrun``; each process then finds ``WORLD_SIZE``/``RANK`` in
its environment, and the trainer joins the process group (gloo on CPU, nccl on GPU) and
wraps the model in DDP or FSDP. Only rank 0 writes files.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from zoo.errors import ConfigError


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


def resolve_device(name: str) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use device=auto or cpu")
    index = local_rank() if launched_by_torchrun() else torch.cuda.current_device()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_distributed(device_type: str) -> bool:
    """Join the process group when started by torchrun with several processes; True if distributed."""
    if world_size() <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        # left to the interpreter's exit, gloo's threads are torn down mid-flight now and then
        # ("terminate called without an active exception", exit -6 after the work is done)
        atexit.register(_leave_process_group)
    return True


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


GROUP_STOP_GRACE_S = 30.0
"""Seconds torchrun's session gets to stop after SIGTERM before it is killed."""


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
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *argv,
    ]
    # torchrun and its ranks get a session of their own so that, whatever stops this call (Ctrl-C, SIGTERM,
    # a test's timeout), all of them can be stopped together: killing torchrun alone leaves its ranks running
    process = subprocess.Popen(command, start_new_session=True)
    previous = signal.getsignal(signal.SIGTERM)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return process.wait()
    except BaseException:
        stop_process_group(process)
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_process_group(process: subprocess.Popen, grace_s: float = GROUP_STOP_GRACE_S) -> None:
    """SIGTERM to ``process``'s whole session (each rank marks its run interrupted and saves what resume
    needs), then SIGKILL to whatever is left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        try:  # torchrun has exited; a rank it left behind still holds the group
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return


class DistributedModel(DistributedDataParallel):
    """DDP whose unknown attributes come from the wrapped model, so a task may call ``model.loss``."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_ddp(model: nn.Module, device: torch.device) -> DistributedModel:
    return DistributedModel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_fsdp(model: nn.Module) -> str:
    """Shard ``model`` in place with FSDP (one unit per block, then the rest); returns how, for the log."""
    from torch.distributed.fsdp import fully_shard

    from zoo.peft.engine import peft_state
    from zoo.peft.structure import detect_structure

    state = peft_state(model)
    structure = state.structure if state is not None and state.structure is not None else detect_structure(model)
    blocks = structure.block_names(model) if structure is not None else []
    for name in blocks:
        fully_shard(model.get_submodule(name))
    fully_shard(model)
    return f"FSDP over {len(blocks)} blocks + root" if blocks else "FSDP over the whole model as one unit"


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if world_size() > 1 and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size()
    return value


def barrier() -> None:
    if world_size() > 1 and dist.is_initialized():
        dist.barrier()


def broadcast_object(value, source: int = 0):
    if world_size() > 1 and dist.is_initialized():
        holder = [value]
        dist.broadcast_object_list(holder, src=source)
        return holder[0]
    return value


def gather_objects(value) -> list:
    """``value`` from every rank, on every rank (rank order)."""
    if world_size() > 1 and dist.is_initialized():
        gathered = [None] * world_size()
        dist.all_gather_object(gathered, value)
        return gathered
    return [value]
