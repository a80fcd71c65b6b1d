"""Task kinds that no recipe uses yet build and train through the same path: per-residue labels
(ESM-2 on FLIP secondary structure) and generation (FLAN-T5, registered by the text domain)."""

from __future__ import annotations

import pytest
import torch

from zoo.experiment.build import build_run
from zoo.experiment.config import validate
from zoo.tasks.train_tasks import TASK_BUILDERS


@pytest.fixture(autouse=True)
def fixture_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


def tiny_run(backbone: str, dataset: str, method: str = "lora", data: dict | None = None, **task):
    config = validate(
        {
            "scale": "tiny",
            "backbone": {"name": backbone},
            "data": {"name": dataset, **(data or {})},
            "task": task,
            "method": {"name": method},
            "train": {"batch_size": 4, "max_steps": 2},
        }
    )
    return build_run(config)


def one_step(built) -> torch.Tensor:
    train = built.datasets["train"]
    batch, labels = built.task.collate([train[i] for i in range(min(4, len(train)))])
    loss = built.task.loss(built.model, batch, labels)
    loss.backward()
    return loss


def test_domains_register_their_task_kinds():
    assert {"classification", "regression", "per_residue", "retrieval", "generation"} <= set(TASK_BUILDERS.names())


def test_per_residue_labels_are_padded_to_the_tokens_and_scored_on_labelled_positions_only():
    built = tiny_run("esm2_t6_8m", "flip_secondary_structure")
    assert torch.isfinite(one_step(built))
    train = built.datasets["train"]
    batch, labels = built.task.collate([train[i] for i in range(3)])
    assert labels.shape == built.model(batch).shape[:2]  # one label per token, -100 where there is none
    metrics = built.task.evaluate(built.model, built.datasets["val"], batch_size=2)
    assert set(metrics) == {"q3_accuracy"} and 0.0 <= metrics["q3_accuracy"] <= 1.0
    # batch size must not change the score: padding positions are never counted
    assert built.task.evaluate(built.model, built.datasets["val"], batch_size=1) == pytest.approx(metrics)


def test_generation_builds_the_decoder_trains_and_reports_rouge_l():
    built = tiny_run("flan_t5_small", "text2text_jsonl", data={"test_split": None}, options={"max_new_tokens": 4})
    assert getattr(built.model.backbone.model, "decoder", None) is not None  # encoder_only=False from the builder
    assert torch.isfinite(one_step(built))
    metrics = built.task.evaluate(built.model, built.datasets["val"], batch_size=2)
    assert set(metrics) == {"rougeL"}
