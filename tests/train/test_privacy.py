"""train.privacy: DP-SGD through Opacus. Epsilon as Opacus' accountant gives it, clipping as written by
hand, Poisson batches, refusals before training, the record and the card, and a tiny run end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.train.helpers import PointsDataset, PointsTask, trainable_state
from zoo.errors import ConfigError
from zoo.train import Trainer, TrainSettings
from zoo.train import private_training as private_module
from zoo.train.privacy import calibrate_noise, check_private_task, plan_privacy
from zoo.train.private_training import CHECKED_METHODS, PoissonBatches, PrivateTraining
from zoo.train.reporting import read_metrics
from zoo.train.settings import PrivacySettings

ROOT = Path(__file__).resolve().parents[2]


def opacus_epsilon(accountant: str, noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """Opacus' accountant stepped once per optimizer step, as its PrivacyEngine does."""
    from opacus.accountants import create_accountant

    tracker = create_accountant(mechanism=accountant)
    for _ in range(steps):
        tracker.step(noise_multiplier=noise, sample_rate=sample_rate)
    return tracker.get_epsilon(delta=delta)


class PrivateFriendly(nn.Module):
    """A frozen layer, then trainable Linear and LayerNorm layers and a head: every trainable parameter in a
    module Opacus has a per-example rule for."""

    def __init__(self, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.frozen = nn.Linear(8, 16)
        self.frozen.requires_grad_(False)
        self.hidden = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(16, 3)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        features = torch.tanh(self.frozen(batch["x"]))
        return self.head(self.dropout(self.norm(torch.tanh(self.hidden(features)))))


# -- epsilon ------------------------------------------------------------------------------------
@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_reported_epsilon_is_opacus_accountants_for_the_same_mechanism(accountant):
    privacy = PrivacySettings(noise_multiplier=1.1, delta=1e-5, accountant=accountant)
    plan = plan_privacy(privacy, train_examples=1000, batch_size=50, steps=120)
    assert plan.sample_rate == 0.05
    for steps in (1, 60, 120):
        expected = opacus_epsilon(accountant, 1.1, 0.05, steps, 1e-5)
        assert plan.spent(steps)["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert plan.planned_epsilon == pytest.approx(opacus_epsilon(accountant, 1.1, 0.05, 120, 1e-5), rel=1e-9)


def test_calibrated_noise_meets_the_target_by_opacus_accountant_and_not_by_much_more():
    plan = plan_privacy(PrivacySettings(epsilon=3, accountant="rdp"), train_examples=2000, batch_size=40, steps=300)
    reached = opacus_epsilon("rdp", plan.noise_multiplier, 0.02, 300, 1 / 20000)
    assert plan.delta == 1 / 20000  # the default: 1 / (10 n_train)
    assert 0.99 * 3 <= reached <= 3
    assert reached == pytest.approx(plan.planned_epsilon, rel=1e-9)
    # the least such noise: a little less would spend more than the target
    assert opacus_epsilon("rdp", plan.noise_multiplier * 0.98, 0.02, 300, 1 / 20000) > 3


def test_an_unattainable_epsilon_is_refused_with_the_reason_and_the_fixes():
    assert calibrate_noise("rdp", 0.01, 1e-5, 0.5, 1000, 10.0) is None
    with pytest.raises(ConfigError) as error:
        plan_privacy(PrivacySettings(epsilon=0.01, accountant="rdp"), train_examples=100, batch_size=50, steps=1000)
    message = str(error.value)
    assert "train.privacy.epsilon=0.01 cannot be met" in message and "1000 steps" in message
    assert "train.max_steps" in message and "train.privacy.max_noise_multiplier" in message


@pytest.mark.parametrize(
    ("privacy", "examples", "batch", "expected"),
    [
        ({"epsilon": 8, "delta": 0.2}, 10, 2, "delta=0.2 is at least 1 / n_train"),
        ({"epsilon": 8}, 10, 20, "train.batch_size=20 with train.privacy"),
    ],
)
def test_delta_and_sample_rate_out_of_range_are_refused(privacy, examples, batch, expected):
    with pytest.raises(ConfigError, match=expected):
        plan_privacy(PrivacySettings(**privacy, accountant="rdp"), examples, batch, 10)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"grad_accum": 2}, "train.grad_accum=2 with train.privacy"),
        ({"group_by_length": True}, "not Poisson samples"),
        ({"precision": "bf16"}, "set train.precision=fp32"),
        ({"gradient_checkpointing": True}, "train.gradient_checkpointing=false"),
        ({"strategy": "fsdp"}, "set train.strategy=ddp"),
        ({"privacy": {"epsilon": 8, "noise_multiplier": 1.0}}, "exactly one of epsilon"),
        ({"privacy": {"epsilon": 8, "accountant": "gdp"}}, "choose one of prv, rdp"),
        ({"privacy": {"epsilon": 8, "epsilom": 1}}, "unknown key 'train.privacy.epsilom'"),
    ],
)
def test_settings_that_private_training_cannot_honour_are_refused_at_validation(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        TrainSettings(**{"privacy": {"epsilon": 8}, **overrides})


def test_a_task_whose_loss_mixes_the_batch_is_refused():
    check_private_task("classification")
    with pytest.raises(ConfigError, match="per_residue.*mean of one term per example"):
        check_private_task("per_residue")


def test_missing_opacus_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "opacus" else real(name, *a))
    with pytest.raises(ConfigError, match=r'pip install "zoo-peft\[privacy\]"'):
        plan_privacy(PrivacySettings(epsilon=8), 100, 10, 10)


def test_the_core_does_not_import_opacus():
    code = "import sys, zoo.train, zoo.experiment.runner, zoo.experiment.record; print('opacus' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


# -- clipping and sampling ----------------------------------------------------------------------
def gradients_alone(model, task, examples, trainable):
    """Each example's gradient over the trainable parameters, computed by itself (no Opacus)."""
    alone = []
    for example in examples:
        batch, labels = task.collate([example])
        alone.append(torch.autograd.grad(F.cross_entropy(model(batch), labels), [p for _, p in trainable]))
    return alone


def noiseless_step_gradients(model, task, examples, trainable, plan):
    """The trainable parameters' gradients (times the expected batch) after one private step of ``plan`` without
    noise: what Opacus' clipping and sum made of ``examples``."""
    quiet = type(plan)(**{**plan.__dict__, "noise_multiplier": 0.0})
    private = PrivateTraining(model, torch.optim.SGD([p for _, p in trainable], lr=1.0), quiet, torch.device("cpu"))
    batch, labels = task.collate(examples)
    task.loss(model, batch, labels).backward()
    private.optimizer.pre_step()  # clip, sum, add (no) noise, divide by the expected batch size
    private.close()
    return [parameter.grad * plan.expected_batch_size for _, parameter in trainable]


def test_with_no_noise_the_step_gradient_is_the_sum_of_hand_clipped_per_example_gradients():
    model = PrivateFriendly()
    task, data = PointsTask(), PointsDataset(6)
    examples = [data[i] for i in range(6)]
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    # by hand: each example alone, its gradient over all trainable parameters, scaled to norm at most C
    alone = gradients_alone(model, task, examples, trainable)
    norms = torch.tensor([math.sqrt(sum(g.pow(2).sum().item() for g in grads)) for grads in alone])
    clip = float(norms.median())  # some examples are clipped, some are not
    assert (norms > clip).any() and (norms < clip).any()
    expected = [
        sum(grads[k] * min(1.0, clip / norms[i].item()) for i, grads in enumerate(alone)) for k in range(len(trainable))
    ]

    plan = plan_privacy(PrivacySettings(noise_multiplier=1.0, max_grad_norm=clip, accountant="rdp"), 6, 6, 1)
    got = noiseless_step_gradients(model, task, examples, trainable, plan)
    for (name, _), step, want in zip(trainable, got, expected):
        torch.testing.assert_close(step, want, atol=1e-6, rtol=1e-5, msg=name)


def test_per_tensor_clipping_clips_each_tensor_by_hand_to_its_share_and_keeps_the_noise():
    model = PrivateFriendly()
    task, data = PointsTask(), PointsDataset(6)
    examples = [data[i] for i in range(6)]
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    alone = gradients_alone(model, task, examples, trainable)
    clip = 0.5
    share = clip / math.sqrt(len(trainable))  # each tensor's norm, so that the whole stays within clip
    expected = [
        sum(grads[k] * min(1.0, share / grads[k].norm().item()) for grads in alone) for k in range(len(trainable))
    ]
    assert any(grads[k].norm() > share for grads in alone for k in range(len(trainable)))  # some are clipped

    settings = PrivacySettings(noise_multiplier=1.0, max_grad_norm=clip, accountant="rdp", clipping="per_tensor")
    plan = plan_privacy(settings, 6, 6, 1)
    assert plan.clipping == "per_tensor" and plan.spent(1)["clipping"] == "per_tensor"
    got = noiseless_step_gradients(model, task, examples, trainable, plan)
    for (name, _), step, want in zip(trainable, got, expected):
        torch.testing.assert_close(step, want, atol=1e-6, rtol=1e-5, msg=name)
    # the noise is drawn for the whole clipping norm, as with flat clipping: the privacy spent is the same
    other = PrivateFriendly()
    noisy = PrivateTraining(other, torch.optim.SGD(other.parameters(), lr=1.0), plan, torch.device("cpu"))
    assert noisy.optimizer.max_grad_norm == pytest.approx(clip)
    noisy.close()
    with pytest.raises(ConfigError, match="clipping='per_layer': choose flat"):
        PrivacySettings(epsilon=8, clipping="per_layer")


def test_poisson_batches_are_independent_draws_that_any_step_repeats():
    whole = list(PoissonBatches(200, 0.1, secret=7, first_step=0, steps=400))
    sizes = torch.tensor([len(batch) for batch in whole], dtype=torch.float)
    assert sizes.mean().item() == pytest.approx(20, rel=0.05)  # n q
    assert sizes.var().item() == pytest.approx(200 * 0.1 * 0.9, rel=0.2)  # binomial, not a fixed size
    assert list(PoissonBatches(200, 0.1, secret=7, first_step=150, steps=250)) == whole[150:]
    assert list(PoissonBatches(200, 0.1, secret=8, first_step=0, steps=3)) != whole[:3]


# -- the trainer --------------------------------------------------------------------------------
PRIVATE = dict(lr=1e-2, max_steps=8, batch_size=4, log_every=2, eval_every=4, checkpoint_every=3, device="cpu")


def private_trainer(run_dir, secret=11, size=24, callbacks=(), monkeypatch=None, **overrides):
    """A private run of 8 steps of Poisson samples of 4 expected examples (``secret``: its secret seed)."""
    if monkeypatch is not None:
        monkeypatch.setattr(private_module.secrets, "randbits", lambda bits: secret)
    privacy = {"noise_multiplier": 0.8, "accountant": "rdp"}
    settings = TrainSettings(**{**PRIVATE, "privacy": privacy, **overrides})
    model = PrivateFriendly(dropout=0.2)
    data, val = PointsDataset(size), PointsDataset(12, seed=1)
    return Trainer(model, PointsTask(), data, val, settings, run_dir, callbacks=callbacks), model


def test_a_private_run_logs_epsilon_and_records_what_it_spent(tmp_path, monkeypatch):
    trainer, model = private_trainer(tmp_path, monkeypatch=monkeypatch)
    before = trainable_state(model)
    result = trainer.fit()
    assert any(not torch.equal(value, before[name]) for name, value in trainable_state(model).items())
    spent = result.privacy
    assert spent["steps"] == 8 and spent["sample_rate"] == 4 / 24 and spent["noise_multiplier"] == 0.8
    assert spent["epsilon"] == pytest.approx(opacus_epsilon("rdp", 0.8, 4 / 24, 8, 1 / 240), rel=1e-9)
    logged = [record["epsilon"] for record in read_metrics(tmp_path) if record["split"] == "val"]
    assert logged == [pytest.approx(opacus_epsilon("rdp", 0.8, 4 / 24, steps, 1 / 240)) for steps in (4, 8)]
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # the hooks came off


def test_empty_poisson_samples_still_step(tmp_path, monkeypatch):
    # 4 examples, 1 expected a step: about a third of the steps sample nobody
    trainer, _ = private_trainer(tmp_path, size=4, batch_size=1, monkeypatch=monkeypatch)
    assert [] in list(PoissonBatches(4, 0.25, secret=11, first_step=0, steps=8))
    assert trainer.fit().steps == 8


class Killed(Exception):
    pass


def kill_at(step):
    def callback(trainer, current):
        if current == step:
            raise Killed

    return callback


def test_a_resumed_private_run_draws_the_same_batches_and_noise(tmp_path, monkeypatch):
    whole, model = private_trainer(tmp_path / "whole", monkeypatch=monkeypatch)
    whole.fit()
    expected = trainable_state(model)
    killed, _ = private_trainer(tmp_path / "resumed", callbacks=[kill_at(5)], monkeypatch=monkeypatch)
    with pytest.raises(Killed):
        killed.fit()
    # a new process draws another secret; the checkpoint's is the one that counts
    resumed, model = private_trainer(tmp_path / "resumed", secret=99, monkeypatch=monkeypatch)
    result = resumed.fit(resume=True)
    for name, value in trainable_state(model).items():
        assert torch.equal(value, expected[name]), name
    assert result.privacy["epsilon"] == pytest.approx(opacus_epsilon("rdp", 0.8, 4 / 24, 8, 1 / 240), rel=1e-9)


def test_the_noise_does_not_follow_the_published_seed(tmp_path):
    first, model_a = private_trainer(tmp_path / "a")
    second, model_b = private_trainer(tmp_path / "b")
    first.fit()
    second.fit()
    a, b = trainable_state(model_a), trainable_state(model_b)
    assert any(not torch.equal(a[name], b[name]) for name in a)


def test_a_model_without_per_example_gradients_is_refused_before_training(tmp_path):
    class SharedScale(PrivateFriendly):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))  # used outside any module call on the batch

        def forward(self, batch):
            return super().forward(batch) * self.scale

    settings = TrainSettings(**PRIVATE, privacy={"noise_multiplier": 1.0, "accountant": "rdp"})
    model = SharedScale()
    before = trainable_state(model)
    trainer = Trainer(model, PointsTask(), PointsDataset(24), None, settings, tmp_path)
    with pytest.raises(ConfigError, match="train.privacy"):
        trainer.fit()
    assert all(torch.equal(value, before[name]) for name, value in trainable_state(model).items())


# -- methods and the whole run ------------------------------------------------------------------
@pytest.mark.parametrize("target", ["qkv[q,v]", "qkv"])
def test_lora_factors_watched_by_opacus_give_the_same_outputs_and_true_per_example_gradients(vit, target):
    """Under the hooks LoRA calls its A and B modules on the batch (its faster paths read their weights);
    on fused q/k/v slices too."""
    import zoo.peft as zp
    from zoo.train.private_training import check_per_example_gradients

    zp.apply(vit, "lora", r=2, lora_alpha=4, target_modules=[target])
    trainable = [p for p in vit.parameters() if p.requires_grad]
    with torch.no_grad():
        for parameter in trainable:  # B starts at zero; random factors make the update show
            parameter.normal_(0, 0.1)
    generator = torch.Generator().manual_seed(3)
    examples = [(torch.randn(3, 32, 32, generator=generator), label) for label in (0, 1, 2)]

    def collate(batch):
        return torch.stack([x for x, _ in batch]), torch.tensor([y for _, y in batch])

    images, _ = collate(examples)
    vit.train()
    before = vit(images).detach()
    plan = plan_privacy(PrivacySettings(noise_multiplier=1.0, accountant="rdp"), 6, 2, 4)
    private = PrivateTraining(vit, torch.optim.SGD(trainable, lr=0.1), plan, torch.device("cpu"))
    with torch.no_grad():  # a forward with gradients would leave its activations with the hooks
        torch.testing.assert_close(vit(images), before, atol=1e-5, rtol=1e-5)
    check_per_example_gradients(
        vit, lambda model, x, y: F.cross_entropy(model(x), y), collate, examples, torch.device("cpu")
    )
    private.close()


def build_tiny(method: str):
    from zoo.experiment.build import build_run
    from zoo.experiment.config import load_config

    return build_run(load_config(f"text/sst2-{method}", ["scale=tiny"]))


@pytest.fixture
def fixture_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "zoo-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("method", [*CHECKED_METHODS, "prefix", "ia3"])
def test_methods_with_true_per_example_gradients_pass_the_check_and_others_are_refused(method, fixture_cache):
    built = build_tiny(method)
    plan = plan_privacy(PrivacySettings(noise_multiplier=1.0, accountant="rdp"), 6, 2, 4)
    trainable = [p for p in built.model.parameters() if p.requires_grad]
    private = PrivateTraining(built.model, torch.optim.SGD(trainable, lr=0.1), plan, torch.device("cpu"))
    if method in CHECKED_METHODS:
        private.check(built.task, built.datasets["train"])
        private.close()
    else:
        with pytest.raises(ConfigError, match="train.privacy: Opacus computed no per-example gradient"):
            private.check(built.task, built.datasets["train"])


def test_tiny_lora_run_trains_privately_end_to_end_and_its_record_and_card_carry_the_privacy_spent(
    tmp_path, fixture_cache
):
    from zoo.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "text/sst2-lora", "scale=tiny", "train.privacy.epsilon=8", "--out", str(out)]) == 0
    record = json.loads((out / "run.json").read_text())
    spent = record["privacy"]
    assert spent["accountant"] == "prv" and spent["target_epsilon"] == 8
    assert (spent["steps"], spent["expected_batch_size"], spent["train_examples"]) == (4, 4, 6)
    assert spent["sample_rate"] == 4 / 6 and spent["delta"] == 1 / 60 and spent["max_grad_norm"] == 1.0
    reached = opacus_epsilon("prv", spent["noise_multiplier"], 4 / 6, 4, 1 / 60)
    assert spent["epsilon"] == pytest.approx(reached, rel=1e-9) and 0.99 * 8 <= reached <= 8
    card = (out / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| Differential privacy |"))
    assert f"ε = {math.ceil(reached * 1000) / 1000:.3f}" in row and "δ = 0.0167" in row
    assert f"noise multiplier {spent['noise_multiplier']:.4g}" in row and "clipped to norm 1" in row
    assert "4 steps of Poisson samples at rate 0.6667" in row and "prv accountant" in row
    assert record["config"]["train"]["privacy"]["epsilon"] == 8 and spent["clipping"] == "flat"


def test_a_per_tensor_run_records_and_shows_its_clipping(tmp_path, fixture_cache):
    from zoo.cli.main import main

    out = tmp_path / "run"
    overrides = ["scale=tiny", "train.privacy.epsilon=8", "train.privacy.clipping=per_tensor"]
    assert main(["train", "text/sst2-lora", *overrides, "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["privacy"]["clipping"] == "per_tensor"
    row = next(line for line in (out / "README.md").read_text().splitlines() if "Differential privacy" in line)
    assert "each trainable tensor of each example's gradient clipped to its share of norm 1" in row


def test_an_unattainable_run_is_refused_before_its_directory_is_made(tmp_path, fixture_cache):
    import zoo

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="cannot be met"):
        zoo.run(
            "text/sst2-lora",
            ["scale=tiny", "train.privacy.epsilon=0.01", "train.privacy.accountant=rdp"],
            out=out,
            log=None,
        )
    assert not out.exists()
