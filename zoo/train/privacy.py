"""Differential privacy of a training run: the noise it needs, the epsilon it spends, what it refuses.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv:1607.00133) through
Opacus (Yousefpour et al. 2021, arXiv:2109.12298). Step ``t`` draws a Poisson sample ``B_t`` (each
training example independently with probability ``q = batch_size / n_train``) and updates with

    g_t = ( sum_{i in B_t} g_i * min(1, C / ||g_i||)  +  N(0, sigma^2 C^2 I) ) / batch_size

where ``g_i`` is example ``i``'s gradient of all trainable parameters together, ``C`` the clipping
norm (``train.privacy.max_grad_norm``) and ``sigma`` the noise multiplier. After ``T`` steps the
released weights are (epsilon, delta)-DP with respect to adding or removing one training example;
epsilon is what the accountant (:data:`ACCOUNTANTS`) gives for ``(sigma, q, T)`` at delta.

The accountant defaults to ``prv`` (Gopi et al. 2021, "Numerical Composition of Differential
Privacy", arXiv:2106.02848): Opacus' ``PrivacyEngine`` default, a numerical bound on the privacy loss
distribution that is tighter than ``rdp`` (Mironov 2017), so a target epsilon needs less noise; ``rdp``
is the looser, faster bound most papers up to 2021 report.

This module needs no model: the runner calls :func:`check_private_run` before it makes the run
directory, so that a target that cannot be met is refused before anything is written or trained.
The training side (per-example gradients, noise, Poisson batches) is :mod:`zoo.train.private_training`.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from zoo.errors import ConfigError
from zoo.train.settings import PrivacySettings, TrainSettings

logger = logging.getLogger("zoo.train")

PER_EXAMPLE_TASK_KINDS = ("classification", "regression")
"""Task kinds whose loss is a mean of one term per example, so that a per-example gradient exists."""
MIN_CALIBRATED_NOISE = 0.3
"""The least noise calibration tries: below it epsilon is in the tens and the PRV accountant slows down a lot."""
CALIBRATION_TOLERANCE = 0.01
"""Calibration stops within this fraction below the target epsilon (never above it)."""


def require_opacus() -> None:
    """Opacus, or an error naming the extra that installs it."""
    import importlib.util

    if importlib.util.find_spec("opacus") is None:
        raise ConfigError(
            'opacus is not installed: train.privacy needs the privacy extra; pip install "zoo-peft[privacy]"'
        )


@functools.lru_cache(maxsize=256)
def epsilon_after(accountant: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` steps of the Poisson-subsampled Gaussian mechanism, by Opacus'
    ``accountant`` (the same history its ``step()`` would build one step at a time)."""
    if steps == 0:
        return 0.0
    require_opacus()
    from opacus.accountants import create_accountant

    tracker = create_accountant(mechanism=accountant)
    tracker.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():  # "optimal order is the largest alpha": about the bound's tightness only
        warnings.simplefilter("ignore")
        return float(tracker.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=32)
def calibrate_noise(
    accountant: str, epsilon: float, delta: float, sample_rate: float, steps: int, max_noise: float
) -> tuple[float, float] | None:
    """``(noise_multiplier, epsilon it gives)``: the least noise whose epsilon is at most ``epsilon``,
    within :data:`CALIBRATION_TOLERANCE`; None when even ``max_noise`` gives more than ``epsilon``.

    Epsilon falls smoothly as the noise rises, close to a power law, so the search interpolates in
    log-log space inside a bracket: a few accountant calls where a plain bisection (Opacus'
    ``get_noise_multiplier``, to an absolute 0.01) needs a dozen or more."""

    def spent(noise: float) -> float:
        return epsilon_after(accountant, noise, sample_rate, steps, delta)

    high, high_epsilon = max_noise, spent(max_noise)
    if high_epsilon > epsilon:
        return None
    low, low_epsilon = high, high_epsilon
    while low_epsilon <= epsilon:  # walk down until the target is exceeded: then it lies in [low, high]
        if low <= MIN_CALIBRATED_NOISE:
            return low, low_epsilon
        high, high_epsilon = low, low_epsilon
        low = max(MIN_CALIBRATED_NOISE, low / 4)
        low_epsilon = spent(low)
    for _ in range(40):
        if high_epsilon >= (1 - CALIBRATION_TOLERANCE) * epsilon or high / low < 1.0001:
            break
        share = (math.log(low_epsilon) - math.log(epsilon)) / (math.log(low_epsilon) - math.log(high_epsilon))
        share = min(max(share, 0.05), 0.95)  # never at an end of the bracket, so it always shrinks
        middle = math.exp(math.log(low) + share * (math.log(high) - math.log(low)))
        middle_epsilon = spent(middle)
        if middle_epsilon > epsilon:
            low, low_epsilon = middle, middle_epsilon
        else:
            high, high_epsilon = middle, middle_epsilon
    return high, high_epsilon


@dataclass(frozen=True)
class PrivacyPlan:
    """The mechanism a private run uses, fixed before its first step."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    """``batch_size / train_examples``: each example's chance to be in a step's Poisson sample."""
    expected_batch_size: int
    train_examples: int
    steps: int
    """The steps the run is planned for (early stopping may end it sooner, spending less)."""
    delta: float
    accountant: str
    target_epsilon: float | None
    """``train.privacy.epsilon`` when the noise was calibrated to it; None when the noise was given."""
    planned_epsilon: float
    """Epsilon after all planned steps."""
    clipping: str = "flat"
    """flat: each example's whole gradient clipped to ``max_grad_norm``; per_tensor: each trainable tensor's to
    ``max_grad_norm / sqrt(n)``."""

    def __str__(self) -> str:
        target = f", calibrated to epsilon {self.target_epsilon:g}" if self.target_epsilon is not None else ""
        return (
            f"train.privacy: (epsilon {self.planned_epsilon:.4g}, delta {self.delta:.3g})-DP after {self.steps} steps "
            f"({self.accountant} accountant{target}): noise multiplier {self.noise_multiplier:.4g}, per-example "
            f"clipping norm {self.max_grad_norm:g} ({self.clipping}), Poisson sample rate {self.sample_rate:.4g} "
            f"(batch {self.expected_batch_size} of {self.train_examples} examples)"
        )

    def epsilon(self, steps: int) -> float:
        return epsilon_after(self.accountant, self.noise_multiplier, self.sample_rate, steps, self.delta)

    def spent(self, steps: int) -> dict[str, Any]:
        """What the run record keeps after ``steps`` steps: the epsilon spent and the mechanism that spent it."""
        record = {key: value for key, value in asdict(self).items() if key not in ("steps", "planned_epsilon")}
        return {"epsilon": self.epsilon(steps), **record, "steps": steps, "planned_steps": self.steps}


def private_steps(settings: TrainSettings, train_examples: int) -> int:
    """The optimizer steps of a private run on one process: one per Poisson batch, an epoch being
    ``ceil(n_train / batch_size)`` of them (the trainer's count, with ``grad_accum`` 1)."""
    return settings.max_steps or settings.epochs * math.ceil(train_examples / settings.batch_size)


def plan_privacy(privacy: PrivacySettings, train_examples: int, batch_size: int, steps: int) -> PrivacyPlan:
    """The noise for ``privacy``'s target over ``steps`` steps, or ConfigError saying why it cannot be met."""
    require_opacus()
    if batch_size > train_examples:
        raise ConfigError(
            f"train.batch_size={batch_size} with train.privacy: the Poisson sample rate batch_size / n_train must be "
            f"at most 1, and there are {train_examples} training examples; lower train.batch_size"
        )
    sample_rate = batch_size / train_examples
    delta = privacy.delta if privacy.delta is not None else 1 / (10 * train_examples)
    if delta >= 1 / train_examples:
        raise ConfigError(
            f"train.privacy.delta={privacy.delta} is at least 1 / n_train ({1 / train_examples:.3g}): publishing one "
            f"training example in the clear meets such a delta; set it below, or null for 1 / (10 n_train)"
        )
    if privacy.noise_multiplier is not None:
        noise, target = float(privacy.noise_multiplier), None
        planned = epsilon_after(privacy.accountant, noise, sample_rate, steps, delta)
    else:
        target = float(privacy.epsilon or 0.0)
        calibrated = calibrate_noise(
            privacy.accountant, target, delta, sample_rate, steps, float(privacy.max_noise_multiplier)
        )
        if calibrated is None:
            reached = epsilon_after(privacy.accountant, privacy.max_noise_multiplier, sample_rate, steps, delta)
            raise ConfigError(
                f"train.privacy.epsilon={privacy.epsilon} cannot be met: after {steps} steps at sample rate "
                f"{sample_rate:.4g} (batch {batch_size} of {train_examples} examples), the {privacy.accountant} "
                f"accountant gives epsilon {reached:.3g} at delta {delta:.3g} even with noise multiplier "
                f"{privacy.max_noise_multiplier} (train.privacy.max_noise_multiplier), noise the gradient would "
                f"drown in. Allow a larger epsilon, train fewer steps (train.max_steps, train.epochs), sample less "
                f"per step (a smaller train.batch_size), or raise train.privacy.max_noise_multiplier"
            )
        noise, planned = calibrated
    plan = PrivacyPlan(
        noise_multiplier=noise,
        max_grad_norm=float(privacy.max_grad_norm),
        sample_rate=sample_rate,
        expected_batch_size=batch_size,
        train_examples=train_examples,
        steps=steps,
        delta=delta,
        accountant=privacy.accountant,
        target_epsilon=target,
        planned_epsilon=planned,
        clipping=privacy.clipping or "flat",
    )
    logger.info("%s", plan)
    return plan


def trainer_plan(settings: TrainSettings, train_examples: int, steps: int) -> PrivacyPlan | None:
    """The trainer's plan for ``settings.privacy`` over its ``steps``; None for ordinary training."""
    if settings.privacy is None:
        return None
    from zoo.train import distributed

    if distributed.world_size() > 1:
        raise ConfigError(
            "train.privacy trains on one process (its per-example clipping and Poisson sampling are not distributed "
            "here); run without --nproc / torchrun"
        )
    return plan_privacy(settings.privacy, train_examples, settings.batch_size, steps)


def check_private_task(task_kind: str) -> None:
    """ConfigError unless the task's loss is a mean of per-example terms (see :data:`PER_EXAMPLE_TASK_KINDS`)."""
    if task_kind in PER_EXAMPLE_TASK_KINDS:
        return
    raise ConfigError(
        f"train.privacy with task kind {task_kind!r}: DP-SGD clips each example's gradient, which needs a loss "
        f"that is a mean of one term per example ({', '.join(PER_EXAMPLE_TASK_KINDS)}); this kind's loss mixes "
        f"the examples of a batch (a mean over the batch's tokens, or in-batch negatives), so one example's "
        f"influence is not bounded by the clipping norm. Train it without train.privacy"
    )


def check_private_run(settings: TrainSettings, train_examples: int, task_kind: str) -> PrivacyPlan | None:
    """Everything a private run can be refused for without a model: the task kind, the sample rate, delta and
    whether the target epsilon can be met in the run's steps. None for a run without ``train.privacy``."""
    if settings.privacy is None:
        return None
    check_private_task(task_kind)
    steps = private_steps(settings, train_examples)
    return plan_privacy(settings.privacy, train_examples, settings.batch_size, steps)
