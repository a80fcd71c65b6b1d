"""Training hyperparameters: one typed, validated settings object for the trainer."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import ConfigError

PRECISIONS = ("fp32", "bf16")
STRATEGIES = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainSettings:
    """What the trainer does; every field is reachable from a recipe as ``train.<field>``.

    ``batch_size`` is the GLOBAL micro-batch: with ``N`` processes each one takes
    ``batch_size / N`` examples, so a recipe gives the same updates whatever ``--nproc``
    is. One optimizer step sees ``batch_size * grad_accum`` examples.
    """

    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate of AdamW."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decoupled weight decay."})
    epochs: int = field(default=3, metadata={"help": "Passes over the training set (max_steps wins when set)."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps to run; None: epochs decide."})
    batch_size: int = field(default=32, metadata={"help": "Global micro-batch, split over processes."})
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size for evaluation."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches whose gradients make one optimizer step."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of the steps with linear warmup."})
    precision: str = field(default="fp32", metadata={"help": "fp32, or bf16 autocast where the device supports it."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute block activations in backward."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Evaluations without improvement before stopping; None: never stop early."}
    )
    eval_every: int | None = field(default=None, metadata={"help": "Evaluate every N steps; None: after each epoch."})
    checkpoint_every: int | None = field(
        default=None, metadata={"help": "Write a resumable checkpoint every N steps (also at each epoch end)."}
    )
    log_every: int = field(default=10, metadata={"help": "Log the training loss every N steps."})
    seed: int = field(default=0, metadata={"help": "Seed of torch, numpy, random and the data order."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Clip the gradient norm; None: no clipping."})
    strategy: str = field(default="ddp", metadata={"help": "Multi-process strategy: ddp, or fsdp for big backbones."})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu or cuda."})
    load_best_at_end: bool = field(
        default=True, metadata={"help": "After training, put the best validation weights back into the model."}
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for item in dataclasses.fields(self):
            _check_type(item.name, getattr(self, item.name), item.type)
            value = getattr(self, item.name)
            # nan passes every range check below (each comparison is False) and inf some of them
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(
                    f"train.{item.name}={value!r} is not allowed: it must be a finite number (nan and inf are refused)"
                )
        for name in ("lr", "eval_batch_size", "batch_size", "grad_accum", "log_every", "epochs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}={getattr(self, name)!r} must be > 0")
        for name in ("max_steps", "eval_every", "checkpoint_every", "early_stopping_patience", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"train.{name}={value!r} must be > 0, or null to switch it off")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay={self.weight_decay!r} must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers={self.num_workers!r} must be >= 0")
        for name, allowed in (("precision", PRECISIONS), ("strategy", STRATEGIES), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"train.{name}={getattr(self, name)!r} is not allowed; choose one of {', '.join(allowed)}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_TYPES = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}
_WORDS = {"float": "a number", "int": "a whole number", "bool": "true or false", "str": "a string"}


def _check_type(name: str, value: Any, annotation: str) -> None:
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None:
        if optional:
            return
        raise ConfigError(f"train.{name}=None is not allowed; it must be {_WORDS[base]}")
    allowed = _TYPES[base]
    # bool is an int subclass; a flag where a number is expected (or the reverse) is a mistake
    if not isinstance(value, allowed) or (isinstance(value, bool) and base != "bool"):
        raise ConfigError(f"train.{name}={value!r} must be {_WORDS[base]}{' or null' if optional else ''}")
