"""Warmup + cosine schedule against the formula written out by hand, through a real optimizer."""

import math

import pytest
import torch

from zoo.train.schedule import warmup_cosine, warmup_steps


@pytest.mark.parametrize("total, ratio", [(20, 0.1), (7, 0.0), (10, 0.5), (1, 0.1)])
def test_learning_rate_per_step(total, ratio):
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=0.3)
    scheduler = warmup_cosine(optimizer, total, ratio)
    warmup = math.ceil(total * ratio)
    assert warmup_steps(total, ratio) == warmup
    for step in range(total):
        if step < warmup:
            expected = 0.3 * (step + 1) / warmup
        else:
            expected = 0.3 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
        optimizer.step()
        scheduler.step()
    if warmup:
        assert max(0.3 * (s + 1) / warmup for s in range(warmup)) == pytest.approx(0.3)


def test_scheduler_state_round_trips():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, 10, 0.2)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    other_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    other = warmup_cosine(other_optimizer, 10, 0.2)
    other.load_state_dict(scheduler.state_dict())
    assert other.get_last_lr() == scheduler.get_last_lr()
