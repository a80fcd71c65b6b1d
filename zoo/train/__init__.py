"""The trainer: one loop for every task and domain.

``Trainer(model, task, train_set, val_set, settings, run_dir).fit()`` trains the model's
trainable parameters (the adapter and head after :func:`zoo.peft.apply`) with AdamW,
warmup + cosine decay, gradient accumulation, bf16 autocast, early stopping, atomic
resumable checkpoints, JSON-lines + TensorBoard logs and DDP/FSDP when started by
``torchrun`` (see :mod:`zoo.train.distributed`).
"""

from zoo.train.distributed import is_main_process, launch
from zoo.train.loop import Trainer, move_to_device
from zoo.train.result import TrainResult
from zoo.train.settings import TrainSettings
from zoo.train.task import TrainTask

__all__ = ["TrainResult", "TrainSettings", "TrainTask", "Trainer", "is_main_process", "launch", "move_to_device"]
