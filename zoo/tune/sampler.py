"""A sampler whose randomness for trial N depends only on the study's seed and N.

Optuna's samplers draw from one random stream per sampler object. A study that is resumed or
extended makes a new sampler with the same seed, so its stream starts again from the top and the
new trials repeat the first trials' values. Seeding a fresh TPE sampler per trial number instead
gives each trial its own stream: a study extended from 2 to 4 trials proposes for trials 2 and 3
what one uninterrupted 4-trial study proposes, never trial 0's and 1's values again.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int, number: int) -> int:
    """A well-mixed 32-bit seed for trial ``number`` of a study seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeededSampler(BaseSampler):
    """Delegates every call about a trial to a sampler made for that trial, seeded by its number.

    The samplers read the finished trials from the study's storage as usual, so what TPE learned
    from earlier trials is kept; only the random stream is per trial.
    """

    def __init__(self, seed: int, make: Callable[[int], BaseSampler] | None = None) -> None:
        if seed < 0:
            raise ValueError(f"the sampler seed must be >= 0, not {seed}")
        self._seed = seed
        self._make = make or (lambda trial_seed_: TPESampler(seed=trial_seed_))
        self._samplers: dict[int, BaseSampler] = {}
        self._lock = threading.Lock()  # study.optimize(n_jobs>1) asks from several threads

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        with self._lock:
            if trial.number not in self._samplers:
                self._samplers[trial.number] = self._make(trial_seed(self._seed, trial.number))
            return self._samplers[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        sampler = self._for(trial)
        try:
            sampler.after_trial(study, trial, state, values)
        finally:
            with self._lock:
                self._samplers.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's stream is fixed by the seed and its number."""
