"""Which metrics are better when smaller: the core's own, and those a domain registers."""

from zoo.catalog.domains import load_domains
from zoo.tasks.metrics import greater_is_better, register_lower_is_better


def test_losses_and_errors_are_better_when_smaller_and_scores_when_greater():
    assert not greater_is_better("loss") and not greater_is_better("rmse")
    assert greater_is_better("accuracy") and greater_is_better("spearman")


def test_the_video_text_domain_registers_median_rank_as_lower_is_better():
    load_domains()
    assert not greater_is_better("median_rank")


def test_a_registered_metric_changes_direction():
    assert greater_is_better("made_up_error")
    register_lower_is_better("made_up_error")
    assert not greater_is_better("made_up_error")
