"""Training hyperparameters: one typed, validated settings object for the trainer.

It is also the ``train`` section of a run configuration (:mod:`zoo.experiment.config`): the same
strict pydantic model types both, so a recipe's ``train.<field>`` is checked once, here.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field

from zoo.errors import ConfigError
from zoo.strict_model import Number, StrictModel

PRECISIONS = ("fp32", "bf16")
STRATEGIES = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")
ACCOUNTANTS = ("prv", "rdp")
CLIPPINGS = (None, "flat", "per_tensor")
"""Opacus' accountants that bound epsilon; ``gdp`` (a central-limit approximation, not a bound) is left out."""


class PrivacySettings(StrictModel):
    """``train.privacy``: differentially private training (DP-SGD through Opacus; :mod:`zoo.train.privacy`).

    Each step takes a Poisson sample of the training set (every example with probability
    ``batch_size / n_train``), clips each example's gradient to ``max_grad_norm`` and adds Gaussian
    noise of standard deviation ``noise_multiplier * max_grad_norm`` to their sum. Give ``epsilon``
    (the noise is calibrated to reach it at ``delta`` after the run's steps) or ``noise_multiplier``.
    """

    epsilon: Number | None = Field(
        None, description="Target epsilon at delta after all steps; the noise multiplier is calibrated to it."
    )
    noise_multiplier: Number | None = Field(
        None, description="Noise std / clipping norm, instead of epsilon (the epsilon it gives is recorded)."
    )
    delta: Number | None = Field(None, description="The delta of (epsilon, delta)-DP; null: 1 / (10 n_train).")
    max_grad_norm: Number = Field(1.0, description="Per-example clipping norm C of the trainable parameters' gradient.")
    accountant: str = Field("prv", description="prv (Gopi et al. 2021, Opacus' default, tighter) or rdp.")
    clipping: str | None = Field(
        None,
        description="flat (null): an example's whole gradient clipped to max_grad_norm; per_tensor: each of the n "
        "trainable tensors clipped to max_grad_norm / sqrt(n) (Opacus' per-layer clipping; the whole stays within "
        "max_grad_norm, the noise and the privacy spent are the same), so every tensor keeps its own share.",
    )
    max_noise_multiplier: Number = Field(
        10.0, description="Refuse an epsilon that needs more noise than this (it would drown the gradient)."
    )

    error_prefix: ClassVar[str] = "train.privacy"

    def check(self) -> None:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ConfigError(
                "train.privacy needs exactly one of epsilon (the noise is calibrated to it) and noise_multiplier, "
                f"got epsilon={self.epsilon!r}, noise_multiplier={self.noise_multiplier!r}; e.g. train.privacy.epsilon=8"
            )
        for name in ("epsilon", "noise_multiplier", "max_grad_norm", "max_noise_multiplier"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"train.privacy.{name}={value!r} must be > 0")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"train.privacy.delta={self.delta!r} must be in (0, 1), or null for 1 / (10 n_train)")
        if self.clipping not in CLIPPINGS:
            raise ConfigError(f"train.privacy.clipping={self.clipping!r}: choose flat (or null) or per_tensor")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"train.privacy.accountant={self.accountant!r} is not allowed; choose one of {', '.join(ACCOUNTANTS)}"
            )


def _privacy_section(value: Any) -> PrivacySettings | None:
    # Typed by its own model, so that its errors name train.privacy.<key>.
    if value is None or isinstance(value, PrivacySettings):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"train.privacy must be a mapping (e.g. train.privacy.epsilon=8) or null for ordinary training, got {value!r}"
        )
    return PrivacySettings(**value)


class TrainSettings(StrictModel):
    """What the trainer does; every field is reachable from a recipe as ``train.<field>``.

    ``batch_size`` is the GLOBAL micro-batch: with ``N`` processes each one takes
    ``batch_size / N`` examples, so a recipe gives the same updates whatever ``--nproc``
    is. One optimizer step sees ``batch_size * grad_accum`` examples.
    """

    lr: float = Field(1e-3, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.01, description="AdamW decoupled weight decay.")
    optimizer: str | None = Field(
        None,
        description="adamw (null) or sgd (momentum 0.9, the same weight decay on matrices): DP-SGD's own "
        "optimizer, whose step follows the noisy mean gradient rather than Adam's per-coordinate scale.",
    )
    epochs: int = Field(3, description="Passes over the training set (max_steps wins when set).")
    max_steps: int | None = Field(None, description="Optimizer steps to run; None: epochs decide.")
    batch_size: int = Field(32, description="Global micro-batch, split over processes.")
    eval_batch_size: int = Field(64, description="Batch size for evaluation.")
    grad_accum: int = Field(1, description="Micro-batches whose gradients make one optimizer step.")
    warmup_ratio: float = Field(0.1, description="Fraction of the steps with linear warmup.")
    precision: str = Field("fp32", description="fp32, or bf16 autocast where the device supports it.")
    gradient_checkpointing: bool = Field(False, description="Recompute block activations in backward.")
    early_stopping_patience: int | None = Field(
        None, description="Evaluations without improvement before stopping; None: never stop early."
    )
    eval_every: int | None = Field(None, description="Evaluate every N steps; None: after each epoch.")
    checkpoint_every: int | None = Field(
        None, description="Write a resumable checkpoint every N steps (also at each epoch end)."
    )
    log_every: int = Field(10, description="Log the training loss every N steps.")
    seed: int = Field(0, description="Seed of torch, numpy, random and the data order.")
    num_workers: int = Field(0, description="DataLoader worker processes.")
    group_by_length: bool = Field(
        False,
        description="Batch training examples of similar length (shuffled, sorted by length within groups of 50 "
        "batches, batches shuffled), so that padding to each batch's longest item wastes little; needs a task "
        "that measures its examples (the text backbones' tasks do).",
    )
    threads: int | None = Field(
        None,
        description="torch CPU threads; None: OMP_NUM_THREADS when set, else the cores this process may use "
        "(shared among the processes of a launch).",
    )
    max_grad_norm: float | None = Field(1.0, description="Clip the gradient norm; None: no clipping.")
    strategy: str = Field("ddp", description="Multi-process strategy: ddp, or fsdp for big backbones.")
    device: str = Field("auto", description="auto (cuda when available), cpu or cuda.")
    load_best_at_end: bool = Field(
        True, description="After training, put the best validation weights back into the model."
    )
    privacy: Annotated[PrivacySettings | None, BeforeValidator(_privacy_section)] = Field(
        None,
        description="Differentially private training (epsilon or noise_multiplier, delta, max_grad_norm, accountant); "
        "null: ordinary training. Needs the privacy extra.",
    )

    error_prefix: ClassVar[str] = "train"

    def check(self) -> None:
        if self.optimizer not in (None, "adamw", "sgd"):
            raise ConfigError(f"train.optimizer={self.optimizer!r}: choose adamw (or null) or sgd")
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
        if self.threads is not None and self.threads <= 0:
            raise ConfigError(f"train.threads={self.threads!r} must be > 0, or null to use the available cores")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers={self.num_workers!r} must be >= 0")
        for name, allowed in (("precision", PRECISIONS), ("strategy", STRATEGIES), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"train.{name}={getattr(self, name)!r} is not allowed; choose one of {', '.join(allowed)}"
                )
        if self.privacy is not None:
            self._check_private()

    def _check_private(self) -> None:
        """What DP-SGD as implemented here cannot do, refused with the reason and the fix."""
        refusals = {
            "grad_accum": (
                self.grad_accum != 1,
                "a private step is one Poisson-sampled batch; set train.grad_accum=1 and raise train.batch_size",
            ),
            "group_by_length": (
                self.group_by_length,
                "batches of similar length are not Poisson samples, which the privacy accounting assumes; set "
                "train.group_by_length=false",
            ),
            "precision": (
                self.precision != "fp32",
                "per-example gradients and their clipping norms are computed in fp32; set train.precision=fp32",
            ),
            "gradient_checkpointing": (
                self.gradient_checkpointing,
                "recomputing blocks in backward runs the per-example gradient hooks twice; set "
                "train.gradient_checkpointing=false",
            ),
            "strategy": (
                self.strategy != "ddp",
                "sharded parameters have no per-example gradients here; set train.strategy=ddp (and one process)",
            ),
        }
        for name, (refused, fix) in refusals.items():
            if refused:
                raise ConfigError(f"train.{name}={getattr(self, name)!r} with train.privacy: {fix}")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()
