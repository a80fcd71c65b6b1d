"""Every registered dataset names a task kind that some domain registers a builder for."""

import pytest

from zoo.catalog.datasets import DATASETS
from zoo.catalog.domains import load_domains
from zoo.tasks.train_tasks import TASK_BUILDERS

load_domains()


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_task_kind_has_a_builder(name):
    assert DATASETS.get(name).task in TASK_BUILDERS.names()
