"""Hyperparameter search (``zoo tune``) and its search-space grammar."""

from zoo.tune.space import GRAMMAR, SearchParameter, parse_search
from zoo.tune.study import TuneResult, tune

__all__ = ["GRAMMAR", "SearchParameter", "TuneResult", "parse_search", "tune"]
