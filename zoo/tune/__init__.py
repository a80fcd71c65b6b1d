"""Hyperparameter search (``zoo tune``) and its search-space grammar."""

from zoo.tune.space import GRAMMAR, SearchParameter, parse_search
from zoo.tune.study import TuneResult, default_study_dir, tune
from zoo.tune.trials import TrialsFailing

__all__ = ["GRAMMAR", "SearchParameter", "TrialsFailing", "TuneResult", "default_study_dir", "parse_search", "tune"]
