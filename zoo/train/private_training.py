"""The training side of DP-SGD (:mod:`zoo.train.privacy`): per-example gradients, clipping and noise,
Poisson batches, and the check that a model's per-example gradients are what they claim to be.

Opacus' hooks (``GradSampleHooks``, attached to the model, not wrapping it) compute each example's
gradient of every module that holds trainable parameters directly: ``nn.Linear``, ``nn.LayerNorm``,
``nn.Embedding``, convolutions and norms by their own rules, other modules by ``torch.func`` on that
module alone. Frozen modules get no hooks. Opacus' ``DPOptimizer`` clips, sums, adds the noise and
steps the trainer's AdamW; Opacus' accountant counts the steps.

Poisson sampling and the noise draw from generators seeded, step by step, from a secret seed drawn
from the operating system when the run starts (kept in its checkpoints, so a resumed run draws what
the uninterrupted one would have); ``train.seed``, which is published with the run's configuration,
does not determine them. This is torch's generator, not Opacus' ``secure_mode`` (a cryptographic one).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from zoo.errors import ConfigError
from zoo.train.devices import move_to_device
from zoo.train.privacy import PrivacyPlan, require_opacus
from zoo.train.task import dataset_size

CHECKED_METHODS = ("lora", "adapter", "adaptformer", "linear")
"""Methods whose per-example gradients pass :func:`check_per_example_gradients` on the text and vision
backbones (tests/train/test_privacy.py checks the text ones). The check refuses methods whose parameters act
outside a module called on the batch: bitfit's and (IA)^3's vectors, prompts (prefix, vpt, unipelt), DoRA's
weight norms, k-adaptation, lst, loreft; and sparse (its mask is a buffer). Full fine-tuning passes on RoBERTa,
not on BERT-style backbones (MiniLM, AntiBERTy: one position table row for the whole batch) or a ViT."""
FIX = f"train one of {', '.join(CHECKED_METHODS)}, whose per-example gradients Opacus computes"
PROBE_EXAMPLES = 3
"""Training examples whose per-example gradients are checked against their gradients alone before training."""
PROBE_TOLERANCE = 1e-3
"""Relative difference allowed between the two (padding to a longer batch changes float rounding)."""


def step_seed(secret: int, purpose: str, step: int) -> int:
    """A seed for ``purpose`` (sampling or noise) at ``step``, from the run's secret seed."""
    digest = hashlib.sha256(f"{secret}:{purpose}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class PoissonBatches(Sampler[list[int]]):
    """Steps ``first_step`` .. ``first_step + steps - 1``: each a list of the indices of ``0 .. size - 1``
    drawn independently with probability ``sample_rate`` (as Opacus' ``UniformWithReplacementSampler``),
    possibly empty; step ``s`` draws from a generator of its own, so any step can be drawn again."""

    def __init__(self, size: int, sample_rate: float, secret: int, first_step: int, steps: int) -> None:
        self.size, self.sample_rate, self.secret = size, sample_rate, secret
        self.first_step, self.steps = first_step, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first_step, self.first_step + self.steps):
            generator = torch.Generator().manual_seed(step_seed(self.secret, "sample", step))
            chosen = torch.rand(self.size, generator=generator) < self.sample_rate
            yield chosen.nonzero().flatten().tolist()


class CollateOrEmpty:
    """The task's collate, and ``(None, None)`` for an empty Poisson sample (which a collate cannot batch)."""

    def __init__(self, collate: Callable[[Sequence[Any]], tuple[Any, Any]]) -> None:
        self.collate = collate

    def __call__(self, examples: Sequence[Any]) -> tuple[Any, Any]:
        return self.collate(examples) if examples else (None, None)


class PrivateTraining:
    """Per-example gradient hooks on ``model`` and ``optimizer`` wrapped by Opacus' DPOptimizer for ``plan``.

    ``self.optimizer`` is what the trainer steps; the scheduler stays on the wrapped optimizer, whose
    parameter groups are the same objects. :meth:`close` takes the hooks off again.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, plan: PrivacyPlan, device: torch.device):
        require_opacus()
        from opacus.accountants import create_accountant
        from opacus.grad_sample import GradSampleHooks
        from opacus.optimizers import DPOptimizer, DPPerLayerOptimizer

        self.model, self.plan = model, plan
        # A LoRA factor's input (a frozen layer's output) needs no gradient, which torch warns of at every
        # backward; the hook still gets the gradient of the factor's output, all the per-example rule needs.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        try:
            self.hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean", strict=True)
        except NotImplementedError as error:  # a trainable module with buffers (BatchNorm statistics, masks)
            problems = error.args[0] if error.args and isinstance(error.args[0], list) else [error]
            raise ConfigError(
                f"train.privacy: Opacus computes no per-example gradients for a trainable module that holds buffers "
                f"({str(problems[0]).strip()}{' and others' if len(problems) > 1 else ''}); {FIX}"
            ) from None
        self.noise = torch.Generator(device=device)
        options: dict[str, Any] = {
            "noise_multiplier": plan.noise_multiplier,
            "expected_batch_size": plan.expected_batch_size,
            "loss_reduction": "mean",
            "generator": self.noise,
        }
        if plan.clipping == "per_tensor":  # the norms' root sum of squares is max_grad_norm: the noise is unchanged
            tensors = sum(1 for group in optimizer.param_groups for p in group["params"] if p.requires_grad)
            share = plan.max_grad_norm / tensors**0.5
            self.optimizer: DPOptimizer = DPPerLayerOptimizer(optimizer, max_grad_norm=[share] * tensors, **options)
        else:
            self.optimizer = DPOptimizer(optimizer, max_grad_norm=plan.max_grad_norm, **options)
        self.accountant = create_accountant(mechanism=plan.accountant)
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(plan.sample_rate))
        self.secret = secrets.randbits(62)
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    def check(self, task: Any, train_set: Dataset) -> None:
        """:func:`check_per_example_gradients` on the first training examples; the hooks come off if it refuses."""
        probe = [train_set[index] for index in range(min(PROBE_EXAMPLES, dataset_size(train_set)))]
        try:
            check_per_example_gradients(self.model, task.loss, task.collate, probe, self.noise.device)
        except BaseException:
            self.close()
            raise

    def batches(self, first_step: int, steps: int) -> PoissonBatches:
        return PoissonBatches(self.plan.train_examples, self.plan.sample_rate, self.secret, first_step, steps)

    @staticmethod
    def collate(task: Any) -> CollateOrEmpty:
        return CollateOrEmpty(task.collate)

    def empty_batch(self) -> None:
        """No example was sampled: the step still adds its noise (skipping it would reveal the empty sample)."""
        for parameter in self.trainable:
            parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))  # type: ignore[attr-defined]

    def before_step(self, step: int) -> None:
        self.noise.manual_seed(step_seed(self.secret, "noise", step))

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps to resume drawing the same batches and noise."""
        return {"secret": self.secret}

    def restore(self, state: dict[str, Any] | None, steps: int) -> None:
        if state is None:
            raise ConfigError("cannot resume: the checkpoint was written by a run without train.privacy")
        self.secret = int(state["secret"])
        self.accountant.history = [(self.plan.noise_multiplier, self.plan.sample_rate, steps)] if steps else []

    def steps_taken(self) -> int:
        return sum(steps for _, _, steps in self.accountant.history)

    def close(self) -> None:
        self.hooks.cleanup()  # hooks off, and the grad_sample attributes Opacus put on the parameters


@contextlib.contextmanager
def _probe_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off (eval) everywhere but in the modules that hold trainable parameters, whose hooks record
    only in training mode; a module's training flag changes nothing else in Linear, LayerNorm or Embedding."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    for module in model.modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            module.train()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def check_per_example_gradients(
    model: nn.Module,
    loss: Callable[[nn.Module, Any, Any], torch.Tensor],
    collate: Callable[[Sequence[Any]], tuple[Any, Any]],
    examples: Sequence[Any],
    device: torch.device,
) -> None:
    """ConfigError unless, for a batch of ``examples``, Opacus' hooks give every trainable parameter a
    per-example gradient and example i's equals the gradient of example i's loss computed alone.

    This is what the privacy guarantee rests on. It fails for a method whose parameters act outside a
    module's forward on the batch (Opacus sees no per-example input), for a module whose per-example rule
    is wrong for the way it is called, and for a model that mixes the examples of a batch.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def gradients(batch_examples: Sequence[Any]) -> None:
        for _, parameter in trainable:
            parameter.grad, parameter.grad_sample = None, None  # type: ignore[attr-defined]
        batch, labels = collate(batch_examples)
        loss(model, move_to_device(batch, device), move_to_device(labels, device)).backward()

    with _probe_mode(model):
        try:
            gradients(examples)
            missing = [name for name, p in trainable if getattr(p, "grad_sample", None) is None]
            if missing:
                raise ConfigError(
                    f"train.privacy: Opacus computed no per-example gradient for {', '.join(missing[:4])}"
                    f"{' and others' if len(missing) > 4 else ''}: this method's parameters are not used through "
                    f"a module called on the batch, whose input Opacus needs; {FIX}"
                )
            per_example = {name: p.grad_sample.detach().clone() for name, p in trainable}  # type: ignore[attr-defined]
            worst, worst_name = 0.0, ""
            for index, example in enumerate(examples):
                gradients([example])
                for name, parameter in trainable:
                    alone = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
                    difference = (per_example[name][index] - alone).norm().item()
                    scale = max(alone.norm().item(), per_example[name][index].norm().item(), 1e-12)
                    if difference / scale > worst and difference > 1e-9:
                        worst, worst_name = difference / scale, name
        except ConfigError:
            raise
        except Exception as error:  # Opacus' per-layer rules raise on inputs they cannot take
            raise ConfigError(
                f"train.privacy: Opacus cannot compute this model's per-example gradients ({type(error).__name__}: "
                f"{error}); {FIX}"
            ) from error
        finally:
            for _, parameter in trainable:
                parameter.grad, parameter.grad_sample = None, None  # type: ignore[attr-defined]
    if worst > PROBE_TOLERANCE:
        raise ConfigError(
            f"train.privacy: an example's gradient in a batch differs from its gradient alone (by {worst:.2g} "
            f"relative, at {worst_name}), so clipping would not bound its influence: the model mixes the "
            f"examples of a batch, or Opacus' rule for that parameter's module does not fit how it is called; "
            f"{FIX}"
        )
