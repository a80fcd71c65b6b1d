"""Resumable checkpoints with atomic writes.

A checkpoint holds what is needed to continue bit for bit: the TRAINABLE parameters (the
frozen backbone is rebuilt from its source), the optimizer and scheduler states, every
RNG state (per process) and the data position. Files are written to a temporary name in
the same folder, flushed to disk, then renamed over the old one with ``os.replace``, so a
run killed while writing leaves the previous checkpoint intact.

``last.pt`` is written with :func:`save_rotating`: the checkpoint it replaces becomes
``last.prev.pt`` only once the new one is on disk, and every checkpoint carries a digest of
its contents, so a file damaged later (truncated, bytes flipped on disk) is recognised and
:func:`load_newest` resumes from the older one instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from pathlib import Path
from typing import Any, Iterator, cast

import numpy as np
import torch
from torch import nn

from zoo.errors import CheckpointError
from zoo.files import atomic_file

CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last.pt"
PREVIOUS_NAME = "last.prev.pt"
"""The checkpoint before ``last.pt``, kept in case ``last.pt`` is damaged."""
BEST_NAME = "best.pt"
FORMAT_VERSION = 1
DIGEST_KEY = "content_sha256"

# Settings that may differ between a run and its resume without changing what it computes.
ADDED_SETTINGS = {"group_by_length": False, "threads": None, "privacy": None}
"""Settings newer than some checkpoints, with the value that a checkpoint without them ran with."""
RESUME_MAY_CHANGE = frozenset(
    {"log_every", "num_workers", "eval_batch_size", "checkpoint_every", "device", "load_best_at_end", "threads"}
)

logger = logging.getLogger("zoo.train")


def content_digest(value: Any, digest: Any = None) -> Any:
    """A sha256 over everything in a checkpoint payload: tensors by dtype, shape and bytes, the rest by repr.

    torch.load does not verify the bytes of tensors, so flipped bytes on disk would otherwise
    load as wrong weights without an error."""
    digest = hashlib.sha256() if digest is None else digest
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"tensor {tensor.dtype} {tuple(value.shape)}:".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        items = [(key, item) for key, item in value.items() if key != DIGEST_KEY]
        digest.update(f"dict {len(items)}:".encode())
        for key, item in items:
            content_digest(key, digest)
            content_digest(item, digest)
    elif isinstance(value, (list, tuple)):  # alike: torch.load may give back a list for a saved tuple
        digest.update(f"sequence {len(value)}:".encode())
        for item in value:
            content_digest(item, digest)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())
    return digest


def atomic_save(payload: dict[str, Any], path: Path, keep_previous: Path | None = None) -> Path:
    """Write ``payload`` to ``path`` atomically; with ``keep_previous``, the file it replaces is moved
    there, but only after the new one is flushed to disk (so a good checkpoint always exists)."""
    payload = {**payload, DIGEST_KEY: content_digest(payload).hexdigest()}
    # keep_previous: a kill between the two renames leaves only keep_previous, which load_newest reads
    with atomic_file(path, "wb", keep_previous=keep_previous) as handle:
        torch.save(payload, handle)
    return path


def save_rotating(payload: dict[str, Any], directory: Path) -> Path:
    """Write ``last.pt``, keeping the checkpoint it replaces as ``last.prev.pt``."""
    return atomic_save(payload, directory / LAST_NAME, keep_previous=directory / PREVIOUS_NAME)


def save_best(
    directory: Path, step: int, main_metric: str, metrics: dict[str, float], trainable: dict[str, torch.Tensor]
) -> Path:
    """Write ``best.pt``: the trainable tensors of the best validation so far, at ``step``."""
    return atomic_save(
        {
            "format": FORMAT_VERSION,
            "step": step,
            "main_metric": main_metric,
            "metrics": metrics,
            "trainable": trainable,
        },
        directory / BEST_NAME,
    )


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    # A damaged file fails in many ways (RuntimeError, OSError on a truncated zip, UnpicklingError, ...).
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is corrupt or not a zoo checkpoint ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a zoo training checkpoint (format {FORMAT_VERSION})")
    expected = payload.get(DIGEST_KEY)  # absent in checkpoints written before digests existed
    if expected is not None and content_digest(payload).hexdigest() != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the digest written with them")
    return payload


def load_newest(directory: Path) -> tuple[dict[str, Any], Path, list[tuple[Path, str]]]:
    """The newest checkpoint in ``directory`` that reads cleanly (``last.pt``, else ``last.prev.pt``),
    its path, and (path, what is wrong) for any newer one. None readable: a CheckpointError naming them all."""
    problems: list[tuple[Path, str]] = []
    for name in (LAST_NAME, PREVIOUS_NAME):
        path = directory / name
        if not path.exists():
            continue
        try:
            return load(path), path, problems
        except CheckpointError as error:
            problems.append((path, str(error)))
    if not problems:
        raise CheckpointError(f"no checkpoint in {directory} ({LAST_NAME} or {PREVIOUS_NAME})")
    raise CheckpointError(
        f"no checkpoint in {directory} can be read: {'; '.join(problem for _, problem in problems)}. "
        f"The run cannot be resumed; "
        f"start it afresh without --resume (its checkpoints are then replaced)"
    )


def check_resumable(
    payload: dict[str, Any], settings: dict[str, Any], strategy: str, trainable_names: list[str], directory: Path
) -> None:
    """CheckpointError unless the checkpoint ``payload`` (from ``directory``) was written by a run with these
    settings (but those of RESUME_MAY_CHANGE), this strategy and these trainable parameters."""
    saved = payload["settings"]
    changed = [
        f"{name}: {saved.get(name)!r} -> {value!r}"
        for name, value in settings.items()
        if name not in RESUME_MAY_CHANGE and saved.get(name, ADDED_SETTINGS.get(name)) != value
    ]
    if changed:
        raise CheckpointError(
            f"cannot resume {directory}: these settings differ from the checkpoint's ({'; '.join(changed)}); "
            f"put them back, or start a new run"
        )
    if payload["strategy"] != strategy:
        raise CheckpointError(f"cannot resume: the checkpoint was written with strategy {payload['strategy']}")
    if payload["trainable_names"] != trainable_names:
        raise CheckpointError("cannot resume: the model's trainable parameters differ from the checkpoint's")


def capture_rng_state() -> dict[str, Any]:
    # legacy=True (the default): the tuple (name, keys, position, has_gauss, cached_gaussian)
    numpy_state = cast(tuple[Any, ...], np.random.get_state())
    state = {
        "python": random.getstate(),
        # numpy's key array becomes a tensor so the file loads with weights_only=True
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    # random.setstate wants tuples; torch.load may hand back lists
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(item) for item in value)
    return value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def restore_process_state(per_process: list[dict[str, Any]], world_size: int, rank: int, seed: int, step: int) -> float:
    """Put back this process's RNG state from a checkpoint's ``per_process`` records; its share of the
    logging window's loss, to carry on summing from."""
    if len(per_process) == world_size:
        restore_rng_state(per_process[rank]["rng"])
        return per_process[rank]["window_loss"]
    # another process count: the data order still matches, the dropout streams cannot
    logger.warning(
        "resuming with %d processes, the checkpoint had %d: dropout will not replay exactly",
        world_size,
        len(per_process),
    )
    seed_everything(seed + rank + 7919 * step)
    return sum(p["window_loss"] for p in per_process) / len(per_process)


# -- trainable tensors and optimizer state, whole, for plain, DDP and FSDP models ---------------------
# Under FSDP these are collectives (every process calls them) and only rank 0 gets the tensors.


def gather_trainable(
    model: nn.Module, trainable: list[tuple[str, nn.Parameter]], fsdp: bool
) -> dict[str, torch.Tensor]:
    """Whole trainable tensors on CPU, by parameter name."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        state = get_model_state_dict(model, options=options)
        # full_state_dict: each value is a whole tensor; no buffers
        return {name: cast(torch.Tensor, state[name]) for name, _ in trainable if name in state}
    return {name: parameter.detach().to("cpu", copy=True) for name, parameter in trainable}


def load_trainable(
    model: nn.Module, trainable: list[tuple[str, nn.Parameter]], state: dict[str, torch.Tensor], fsdp: bool
) -> None:
    names = [name for name, _ in trainable]
    missing, unexpected = sorted(set(names) - set(state)), sorted(set(state) - set(names))
    if missing or unexpected:
        raise CheckpointError(
            f"the checkpoint does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, ValueType, set_model_state_dict

        full_state: dict[str, ValueType] = dict(state)
        set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    with torch.no_grad():
        for name, parameter in trainable:
            if state[name].shape != parameter.shape:
                raise CheckpointError(
                    f"checkpoint tensor {name} has shape {tuple(state[name].shape)}, the model {tuple(parameter.shape)}"
                )
            parameter.copy_(state[name])


def gather_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> dict[str, Any]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    return optimizer.state_dict()


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)


@contextlib.contextmanager
def full_weights(
    model: nn.Module, trainable: list[tuple[str, nn.Parameter]], fsdp: bool, is_main: bool
) -> Iterator[nn.Module]:
    """``model`` with whole trainable tensors on rank 0; see ``Trainer.full_weights``."""
    if not fsdp:
        yield model
        return
    state = gather_trainable(model, trainable, fsdp)
    swapped: list[tuple[nn.Module, str, nn.Parameter | None]] = []
    if is_main:
        for name, _ in trainable:
            owner_name, _, attribute = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            swapped.append((owner, attribute, owner._parameters[attribute]))
            owner._parameters[attribute] = nn.Parameter(state[name], requires_grad=True)
    try:
        yield model
    finally:
        for owner, attribute, parameter in swapped:
            owner._parameters[attribute] = parameter
