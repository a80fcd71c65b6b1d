"""Run by the distributed tests under torchrun: train a tiny BERT + LoRA, save the adapter.

``python -m tests.train.distributed_run OUT_DIR STRATEGY...`` (one or several processes) trains once per
strategy into ``OUT_DIR/<strategy>``; several strategies share one launch (its start-up is the slow part).
"""

from __future__ import annotations

import sys

import torch

from zoo.train import Trainer, TrainSettings, is_main_process


def build():
    from tests.conftest import tiny_bert
    from zoo import peft

    model = tiny_bert(num_labels=3, seed=0)
    return peft.apply(model, "lora", r=4, target_modules=["query", "value"], modules_to_save=["classifier"])


class TokensDataset(torch.utils.data.Dataset):
    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(1, 100, (size, 12), generator=generator)
        self.labels = self.tokens[:, 0] % 3  # learnable from the first token

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index):
        return self.tokens[index], int(self.labels[index])


class TokensTask:
    main_metric = "accuracy"
    greater_is_better = True

    def collate(self, examples):
        tokens = torch.stack([t for t, _ in examples])
        return {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}, torch.tensor([y for _, y in examples])

    def loss(self, model, batch, labels):
        return torch.nn.functional.cross_entropy(model(**batch).logits, labels)

    def evaluate(self, model, dataset, batch_size):
        batch, labels = self.collate([dataset[i] for i in range(len(dataset))])
        logits = model(**batch).logits
        return {"accuracy": (logits.argmax(-1) == labels).float().mean().item()}


def settings(strategy: str) -> TrainSettings:
    return TrainSettings(
        lr=5e-3,
        epochs=2,
        batch_size=8,
        grad_accum=2,
        warmup_ratio=0.2,
        log_every=2,
        strategy=strategy,
        device="cpu",
        eval_every=3,
        checkpoint_every=2,
    )


class Killed(Exception):
    pass


def kill_at(step: int):
    def callback(trainer, current):
        if current == step:
            raise Killed

    return callback


def train(out_dir: str, name: str) -> None:
    """``name`` is a strategy, optionally with ``-resumed``: killed after step 5, then resumed from step 4 (mid-epoch)."""
    from zoo import peft

    strategy, _, resumed = name.partition("-")
    data = TokensDataset(48, seed=1), TokensDataset(16, seed=2)
    if resumed:
        trainer = Trainer(build(), TokensTask(), *data, settings(strategy), out_dir, callbacks=[kill_at(5)])
        try:
            trainer.fit()
        except Killed:
            pass
    model = build()
    trainer = Trainer(model, TokensTask(), *data, settings(strategy), out_dir)
    result = trainer.fit(resume=bool(resumed))
    with trainer.full_weights():  # every process enters: under FSDP it gathers the shards
        if is_main_process():
            peft.save_adapter(model, f"{out_dir}/adapter")
            print(f"steps={result.steps} best={result.best_metric}")


if __name__ == "__main__":
    for name in sys.argv[2:]:
        train(f"{sys.argv[1]}/{name}", name)
