"""The training loop: one screenful of forward, backward and step, with the bookkeeping around it.

Every unusual line says why it is there. What the loop guarantees:

- the same settings and seed give the same weights, whether the run went through in one go
  or was killed and resumed (``fit(resume=True)``) any number of times (bit for bit on CPU);
- the same global batch gives the same updates whatever the number of processes (DDP),
  up to floating-point summation order;
- checkpoints are written atomically: a kill at any moment leaves a loadable one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from zoo.errors import ConfigError
from zoo.train import checkpoint as ckpt
from zoo.train import distributed as dist_utils
from zoo.train.devices import move_to_device, quiet_worker, set_threads
from zoo.train.divergence import DivergenceWatch, first_batch_loss
from zoo.train.privacy import PrivacyPlan, trainer_plan
from zoo.train.private_training import PrivateTraining
from zoo.train.progress import RunProgress
from zoo.train.recompute import enable_gradient_checkpointing
from zoo.train.reporting import RunReporter
from zoo.train.result import TrainResult
from zoo.train.sampler import ResumableDistributedSampler
from zoo.train.schedule import make_optimizer, warmup_cosine
from zoo.train.settings import TrainSettings
from zoo.train.task import TrainTask, dataset_size, example_lengths

logger = logging.getLogger("zoo.train")


class Trainer:
    """Trains ``model``'s trainable parameters on ``train_set`` for ``task``; see the module docstring.

    ``callbacks`` are called as ``callback(trainer, step)`` after every optimizer step, once the
    step's logging, evaluation and checkpoint are done. ``show_progress`` shows a progress bar on a
    terminal, else a plain line every ``log_every`` steps on stderr; False shows nothing. A loss
    that becomes NaN or infinite stops the run with :class:`zoo.train.divergence.TrainingDiverged`.
    """

    def __init__(
        self,
        model: nn.Module,
        task: TrainTask,
        train_set: Dataset,
        val_set: Dataset | None,
        settings: TrainSettings,
        run_dir: str | os.PathLike,
        *,
        callbacks: Sequence[Callable[["Trainer", int], None]] = (),
        show_progress: bool = True,
    ) -> None:
        missing = [
            name
            for name in ("collate", "loss", "evaluate", "main_metric", "greater_is_better")
            if not hasattr(task, name)
        ]
        if missing:
            raise TypeError(f"task {type(task).__name__} lacks {', '.join(missing)} (see zoo.train.TrainTask)")
        settings.check()  # ranges again: a caller may have changed a value after construction
        if dataset_size(train_set) == 0:
            raise ConfigError("the training set is empty")
        self.model, self.task, self.train_set, self.val_set = model, task, train_set, val_set
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.callbacks = list(callbacks)
        self.show_progress = show_progress

        self.device = dist_utils.resolve_device(settings.device)
        self.distributed = dist_utils.init_distributed(self.device.type)
        self.world_size, self.rank = dist_utils.world_size(), dist_utils.rank()
        self.is_main = self.rank == 0
        if settings.batch_size % self.world_size:
            raise ConfigError(
                f"train.batch_size={settings.batch_size} must be a multiple of the number of processes ({self.world_size})"
            )
        self.local_batch_size = settings.batch_size // self.world_size
        if settings.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision=bf16: this GPU does not support bfloat16; use fp32")
        self.threads = set_threads(settings.threads, int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)))
        self.sampler = ResumableDistributedSampler(
            dataset_size(train_set),
            self.world_size,
            self.rank,
            seed=settings.seed,
            lengths=example_lengths(task, train_set) if settings.group_by_length else None,
            batch_size=settings.batch_size,
        )
        self.micro_batches_per_epoch = self.sampler.batches_per_epoch(self.local_batch_size)
        self.steps_per_epoch = math.ceil(self.micro_batches_per_epoch / settings.grad_accum)
        self.total_steps = settings.max_steps or settings.epochs * self.steps_per_epoch
        self.privacy: PrivacyPlan | None = trainer_plan(settings, dataset_size(train_set), self.total_steps)
        """DP-SGD's noise, clipping and sampling (train.privacy), fixed before training; None: ordinary training."""
        self.private: PrivateTraining | None = None
        self.fsdp = self.distributed and settings.strategy == "fsdp"
        self.progress = RunProgress()
        self.window_loss = torch.zeros((), device=self.device)
        self.training_model: nn.Module = model
        self.optimizer: torch.optim.Optimizer | None = None
        self.checkpoint_dir = self.run_dir / ckpt.CHECKPOINT_DIR
        self.divergence = DivergenceWatch(self.device, settings.lr, settings.precision, self.checkpoint_dir)
        self.resumed_from: Path | None = None
        """The checkpoint ``fit(resume=True)`` carried on from; None for a fresh start."""
        self._fit_called = False

    # -- set-up -----------------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self.optimizer is not None:
            return
        self.model.to(self.device)
        if self.settings.gradient_checkpointing:
            logger.info("gradient checkpointing: %s", enable_gradient_checkpointing(self.model))
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError(
                "the model has no trainable parameters; add a PEFT method (zoo.peft.apply) or unfreeze some"
            )
        if self.fsdp:
            logger.info(dist_utils.shard_fsdp(self.model))  # swaps parameters for sharded ones in place
        elif self.distributed:
            self.training_model = dist_utils.wrap_ddp(self.model, self.device)
        # Collected after sharding, which replaces the parameter objects.
        self.trainable = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = make_optimizer(
            self.trainable, self.settings.lr, self.settings.weight_decay, self.settings.optimizer
        )
        self.scheduler = warmup_cosine(self.optimizer, self.total_steps, self.settings.warmup_ratio)
        if self.privacy is not None:  # the scheduler keeps AdamW's parameter groups, which DPOptimizer shares
            self.private = PrivateTraining(self.model, self.optimizer, self.privacy, self.device)
            self.private.check(self.task, self.train_set)  # refuses a model without true per-example gradients
            self.optimizer = self.private.optimizer

    def _prepared_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise RuntimeError("the optimizer is made by _prepare(), which fit() calls first")
        return self.optimizer

    def _loader(self, epoch: int) -> DataLoader:
        # Own generator: worker seeds come from it instead of the global RNG, which would
        # otherwise be advanced once per epoch and make a mid-epoch resume diverge.
        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + epoch)
        batching: dict[str, Any] = {"batch_size": self.local_batch_size, "sampler": self.sampler}
        if self.private is not None:  # one Poisson sample per step, as the privacy accounting assumes
            steps_left = self.micro_batches_per_epoch - self.progress.micro
            batching = {"batch_sampler": self.private.batches(self.progress.step, steps_left)}
        return DataLoader(
            self.train_set,
            **batching,
            collate_fn=self.private.collate(self.task) if self.private is not None else self.task.collate,
            num_workers=self.settings.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
            worker_init_fn=quiet_worker if self.settings.num_workers else None,
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.settings.precision == "bf16")

    @contextlib.contextmanager
    def _gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Skip the all-reduce on micro-batches whose gradients are only accumulated."""
        if self.fsdp:
            self.model.set_requires_gradient_sync(enabled)  # type: ignore[operator]  # added by fully_shard
            yield
        elif self.distributed and not enabled:
            with self.training_model.no_sync():  # type: ignore[operator]  # a DistributedDataParallel here
                yield
        else:
            yield

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``max_steps`` / ``epochs`` or early stopping; ``resume`` continues from the last checkpoint."""
        started = time.perf_counter()
        if self._fit_called:  # the optimizer and schedule carry state: a second fit would not start afresh
            raise RuntimeError(
                "Trainer.fit() runs once per Trainer; make a new Trainer (fit(resume=True) continues a run)"
            )
        self._fit_called = True
        self._prepare()
        saved = [self.checkpoint_dir / name for name in (ckpt.LAST_NAME, ckpt.PREVIOUS_NAME)]
        resumed = resume and any(path.exists() for path in saved)
        if resumed:
            payload, path, problems = ckpt.load_newest(self.checkpoint_dir)
            for damaged, problem in problems:  # a damaged newer checkpoint: say so, and which one is used instead
                logger.warning("%s cannot be read (%s); resuming from the older %s", damaged, problem, path.name)
            self._restore(payload)
            self.resumed_from = path
            logger.info(
                "resuming %s at step %d of %d from %s", self.run_dir, self.progress.step, self.total_steps, path
            )
        else:
            if resume:
                logger.warning("no checkpoint in %s: training from the start", self.checkpoint_dir)
            self.progress = RunProgress()
            self.window_loss.zero_()
            ckpt.seed_everything(self.settings.seed + self.rank)  # ranks differ in dropout, agree in data order
            if self.is_main:  # a fresh run must not leave an older run's checkpoints to resume from
                for name in (ckpt.LAST_NAME, ckpt.PREVIOUS_NAME, ckpt.BEST_NAME):
                    (self.checkpoint_dir / name).unlink(missing_ok=True)
        reporter = RunReporter(
            self.run_dir,
            self.is_main,
            self.total_steps,
            self.progress.step,
            resumed,
            show=self.show_progress,
        )
        logger.info(
            "training %d trainable tensors for %d steps (%d per epoch), global batch %d x %d accumulation, %d process(es) on %s",
            len(self.trainable),
            self.total_steps,
            self.steps_per_epoch,
            self.settings.batch_size,
            self.settings.grad_accum,
            self.world_size,
            self.device,
        )
        try:
            self._train(reporter)
        finally:
            reporter.close()
            if self.private is not None:
                self.private.close()
        if self.settings.load_best_at_end and self.progress.best_step is not None:
            dist_utils.barrier()  # rank 0 wrote best.pt; every rank reads it
            best = ckpt.load(self.checkpoint_dir / ckpt.BEST_NAME)["trainable"]
            ckpt.load_trainable(self.model, self.trainable, best, self.fsdp)
        return self._result(time.perf_counter() - started)

    def _train(self, reporter: RunReporter) -> None:
        settings, progress, task = self.settings, self.progress, self.task
        model, optimizer = self.training_model, self._prepared_optimizer()
        model.train()
        window_start = time.perf_counter()
        while progress.step < self.total_steps and not progress.stopped_early:
            self.sampler.set_epoch(progress.epoch)
            self.sampler.set_start(progress.micro * self.local_batch_size)  # resume mid-epoch: skip what was seen
            batches = iter(self._loader(progress.epoch))
            while True:
                # The last group of an epoch may be short; its loss is averaged over what it has.
                group = min(settings.grad_accum, self.micro_batches_per_epoch - progress.micro)
                for index in range(group):
                    batch, labels = next(batches)
                    if batch is None and self.private is not None:  # an empty Poisson sample; logged as loss 0
                        self.private.empty_batch()
                        continue
                    batch, labels = move_to_device(batch, self.device), move_to_device(labels, self.device)
                    with self._gradient_sync(index == group - 1):
                        with self._autocast():
                            loss = task.loss(model, batch, labels)
                        (loss / group).backward()
                    self.window_loss += loss.detach().float()  # no .item() here: it would wait for the GPU every step
                progress.window_micro += group
                progress.micro += group
                if self.private is not None:  # each example's gradient is clipped instead (train.privacy)
                    self.private.before_step(progress.step)
                elif settings.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable], settings.max_grad_norm)
                optimizer.step()
                self.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                progress.step += 1
                self.divergence.after_step(self.window_loss, progress.step)
                epoch_done = progress.micro >= self.micro_batches_per_epoch
                if epoch_done:
                    progress.epoch, progress.micro = progress.epoch + 1, 0
                reporter.advance()
                finished = progress.step >= self.total_steps
                if progress.step % settings.log_every == 0 or finished:
                    self._stop_if_diverged()
                    mean_loss = dist_utils.all_reduce_mean(self.window_loss / progress.window_micro).item()
                    elapsed = time.perf_counter() - window_start
                    reporter.log_train(
                        progress.step,
                        self._epochs_done(),
                        mean_loss,
                        float(self.scheduler.get_last_lr()[0]),
                        progress.window_micro * settings.batch_size / max(elapsed, 1e-9),
                    )
                    progress.train_loss = mean_loss
                    self.window_loss.zero_()
                    progress.window_micro, window_start = 0, time.perf_counter()
                every = settings.eval_every
                if self.val_set is not None and (
                    (every and progress.step % every == 0) or (every is None and epoch_done) or finished
                ):
                    self._stop_if_diverged()  # NaN scores would reach the metric, or be taken for a result
                    self._validate(reporter, self.val_set)
                    model.train()
                every = settings.checkpoint_every
                if (every and progress.step % every == 0) or epoch_done or finished or progress.stopped_early:
                    self._stop_if_diverged()  # never save NaN weights over the last good checkpoint
                    self._save_last()
                for callback in self.callbacks:
                    callback(self, progress.step)
                if epoch_done or finished or progress.stopped_early:
                    break

    def _stop_if_diverged(self) -> None:
        """Raise TrainingDiverged if a loss since the last check was NaN or infinite (every process calls it)."""
        self.divergence.stop_if_diverged(
            self.progress.step,
            self.distributed,
            lambda: dist_utils.all_reduce_mean(self.window_loss / max(self.progress.window_micro, 1)).item(),
        )

    def _epochs_done(self) -> float:
        return self.progress.epoch + self.progress.micro / self.micro_batches_per_epoch

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, dataset: Dataset) -> dict[str, float]:
        """``task.evaluate`` on ``dataset`` in eval mode without gradients; every process computes it whole."""
        self._prepare()
        was_training = self.model.training
        self.model.eval()
        try:
            try:
                # no_grad, not inference_mode: models that cache a tensor made in forward (ESM-2's rotary
                # tables) would hand an inference tensor to the next training step, which autograd refuses.
                with torch.no_grad(), self._autocast():
                    metrics = self.task.evaluate(self.model, dataset, self.settings.eval_batch_size)
            except Exception as error:
                # A step can leave weights that overflow on the next forward before any training loss
                # shows it (e.g. one step, then validation): a metric then fails on NaN scores.
                self._raise_if_outputs_diverged(dataset, error)
                raise
            if not math.isfinite(float(metrics.get(self.task.main_metric, 0.0))):
                self._raise_if_outputs_diverged(dataset, None)
        finally:
            self.model.train(was_training)
        return {name: float(value) for name, value in metrics.items()}

    def _raise_if_outputs_diverged(self, dataset: Dataset, error: BaseException | None) -> None:
        """TrainingDiverged if the trained model's loss on the first batch of ``dataset`` is not finite."""
        if self.progress.step == 0 or dataset_size(dataset) == 0:
            return  # nothing trained yet: whatever failed is not divergence
        loss = first_batch_loss(
            self.task, self.model, dataset, self.settings.eval_batch_size, self.device, self._autocast
        )
        if loss is not None and not math.isfinite(loss):
            raise self.divergence.error(self.progress.step, loss) from error

    def _validate(self, reporter: RunReporter, val_set: Dataset) -> None:
        progress, name = self.progress, self.task.main_metric
        metrics = self.evaluate(val_set)
        if name not in metrics:
            raise ConfigError(
                f"the task's evaluate() gave {', '.join(metrics) or 'nothing'} but not its main metric {name!r}"
            )
        improved = progress.record_validation(
            metrics, self._epochs_done(), name, self.task.greater_is_better, self.settings.early_stopping_patience
        )
        if improved:
            self._save_best(metrics)
        spent = {"epsilon": self.privacy.epsilon(progress.step)} if self.privacy is not None else None
        reporter.log_eval(progress.step, self._epochs_done(), metrics, name, improved, spent)

    @contextlib.contextmanager
    def full_weights(self) -> Iterator[nn.Module]:
        """The model with whole (unsharded) trainable tensors on rank 0, e.g. to save the adapter.

        A no-op unless strategy=fsdp; then a collective: EVERY process must enter it. Inside,
        rank 0's trainable parameters are plain CPU tensors (for reading, not for forward);
        on leaving, the sharded ones are put back.
        """
        with ckpt.full_weights(self.model, self.trainable, self.fsdp, self.is_main) as model:
            yield model

    # -- checkpoints ------------------------------------------------------------------------------
    def _save_last(self) -> None:
        trainable, optimizer = (
            ckpt.gather_trainable(self.model, self.trainable, self.fsdp),
            ckpt.gather_optimizer(self.model, self._prepared_optimizer(), self.fsdp),
        )
        # every rank's own: its dropout stream and its share of the logging window's loss
        per_process = dist_utils.gather_objects(
            {"rng": ckpt.capture_rng_state(), "window_loss": self.window_loss.item()}
        )
        if not self.is_main:
            return
        ckpt.save_rotating(
            {
                "format": ckpt.FORMAT_VERSION,
                "progress": dataclasses.asdict(self.progress),
                "settings": self.settings.to_dict(),
                "world_size": self.world_size,
                "strategy": "fsdp" if self.fsdp else "ddp",
                "trainable_names": [name for name, _ in self.trainable],
                "trainable": trainable,
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "per_process": per_process,
                "privacy": self.private.state() if self.private is not None else None,
            },
            self.checkpoint_dir,
        )

    def _save_best(self, metrics: dict[str, float]) -> None:
        trainable = ckpt.gather_trainable(self.model, self.trainable, self.fsdp)
        if self.is_main:
            ckpt.save_best(self.checkpoint_dir, self.progress.step, self.task.main_metric, metrics, trainable)

    def _restore(self, payload: dict[str, Any]) -> None:
        strategy, names = "fsdp" if self.fsdp else "ddp", [name for name, _ in self.trainable]
        ckpt.check_resumable(payload, self.settings.to_dict(), strategy, names, self.checkpoint_dir)
        ckpt.load_trainable(self.model, self.trainable, payload["trainable"], self.fsdp)
        ckpt.load_optimizer(self.model, self._prepared_optimizer(), payload["optimizer"], self.fsdp)
        self.scheduler.load_state_dict(payload["scheduler"])
        self.progress = RunProgress(**payload["progress"])
        if self.private is not None:
            self.private.restore(payload.get("privacy"), self.progress.step)
        self.window_loss.fill_(
            ckpt.restore_process_state(
                payload["per_process"], self.world_size, self.rank, self.settings.seed, self.progress.step
            )
        )

    def _result(self, seconds: float) -> TrainResult:
        best_path = self.checkpoint_dir / ckpt.BEST_NAME
        result = self.progress.result(self.task.main_metric, self._epochs_done(), best_path, self.run_dir, seconds)
        if self.privacy is not None:
            result.privacy = self.privacy.spent(self.progress.step)
        return result
