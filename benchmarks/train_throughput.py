"""Trainer throughput against a bare hand-written torch loop, or against HF Trainer + peft on a real job.

    .venv/bin/python benchmarks/train_throughput.py             # BERT-style 4 x 256 + LoRA, CPU: ~1-2 minutes on 2 cores
    .venv/bin/python benchmarks/train_throughput.py --quick     # a smoke run
    .venv/bin/python benchmarks/train_throughput.py --device cuda --layers 12 --hidden 768 --batch 32
    .venv/bin/python benchmarks/train_throughput.py --against hf   # MiniLM SST-2 LoRA: zoo vs transformers.Trainer

``--against hf`` trains all-MiniLM-L6-v2 with LoRA on the first ``--rows`` rows of SST-2's train.tsv
(``--sst2``, default $ZOO_DATA_DIR/sst2 or ../shared/data/sst2) for ``--epochs``, once through
``zoo train text/sst2-lora`` and once through ``transformers.Trainer`` with a ``peft`` model, each in
its own process with ``--threads`` threads, and scores both on the 872-sentence dev set; the job's
settings are in ``benchmarks/against_hf.py``. It prints each side's training examples per second
(wall) and per CPU-second of the training call, the dev accuracy, and the ratios zoo / HF.

The rest of this text is about the default comparison against a bare loop.

Both sides train a deep copy of one seeded model (transformers BertForSequenceClassification
with random weights + zoo LoRA r=8 on query/value, the head trained) on the same synthetic
token data with the same global batch, doing the same work per step: forward, cross-entropy,
backward, gradient clipping at 1.0, AdamW, warmup + cosine schedule. The bare loop is what one
writes by hand (a shuffling DataLoader and those five lines); the trainer adds its sampler,
device moves, loss bookkeeping, JSON-lines and TensorBoard logging every ``--log-every`` steps,
the progress bar machinery and a final checkpoint. Each side's time is the whole call (set-up of
optimizer and loader included) for ``--steps`` steps; the sides alternate for ``--rounds``
rounds after one untimed warm-up round each, so that drift of the machine spreads over both.

Prints examples/second per side (median and best over rounds) and the ratio trainer/bare (target
>= 0.95), and writes every sample to ``--out`` (default ``.bench/train_throughput.json``). On a
shared machine other jobs stretch whole runs of either side: then trust the ratio of the best runs,
or the ratio of examples per CPU-second of this process (``time.process_time``), which other
processes barely move.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo import peft  # noqa: E402
from zoo.train import Trainer, TrainSettings  # noqa: E402
from zoo.train.schedule import warmup_cosine  # noqa: E402


class Tokens(Dataset):
    def __init__(self, size: int, length: int, vocab: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(1, vocab, (size, length), generator=generator)
        self.labels = self.tokens[:, 0] % 2

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index):
        return self.tokens[index], int(self.labels[index])


def collate(examples):
    tokens = torch.stack([t for t, _ in examples])
    return {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}, torch.tensor([y for _, y in examples])


class ClassificationTask:
    main_metric, greater_is_better = "accuracy", True
    collate = staticmethod(collate)

    def loss(self, model, batch, labels):
        return F.cross_entropy(model(**batch).logits, labels)

    def evaluate(self, model, dataset, batch_size):
        return {"accuracy": 0.0}


def build_model(args) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        intermediate_size=4 * args.hidden,
        max_position_embeddings=max(512, args.length),
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    return peft.apply(model, "lora", r=8, lora_alpha=16, target_modules=["query", "value"])


def run_trainer(model, dataset, args, device) -> tuple[float, float]:
    settings = TrainSettings(
        lr=1e-4,
        max_steps=args.steps,
        batch_size=args.batch,
        warmup_ratio=0.1,
        log_every=args.log_every,
        device=device.type,
        load_best_at_end=False,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        start, start_cpu = time.perf_counter(), time.process_time()
        Trainer(model, ClassificationTask(), dataset, None, settings, run_dir).fit()
        _synchronize(device)  # fit() already waited for the last loss; this is for symmetry
        return time.perf_counter() - start, time.process_time() - start_cpu


def run_bare(model, dataset, args, device) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01)
    scheduler = warmup_cosine(optimizer, args.steps, 0.1)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, collate_fn=collate)
    model.train()
    step = 0
    while step < args.steps:
        for batch, labels in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = F.cross_entropy(model(**batch).logits, labels.to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == args.steps:
                break
    loss.item()
    _synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_against_hf(args) -> None:
    """zoo and HF Trainer + peft on the same MiniLM SST-2 LoRA job, each in its own process (see against_hf.py)."""
    import os
    import resource
    import subprocess

    source = Path(
        args.sst2 or Path(os.environ.get("ZOO_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data")) / "sst2"
    )
    side_script = Path(__file__).with_name("against_hf.py")
    results: dict[str, list[dict]] = {"zoo": [], "hf": []}
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "sst2"
        data.mkdir()
        lines = (source / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        (data / "train.tsv").write_text("".join(lines[: args.rows + 1]), encoding="utf-8")  # the header and rows
        (data / "dev.tsv").write_bytes((source / "dev.tsv").read_bytes())
        for round_index in range(args.rounds):
            order = ["zoo", "hf"] if round_index % 2 == 0 else ["hf", "zoo"]
            for side in order:
                out = Path(work) / f"{side}-{round_index}.json"
                command = [sys.executable, str(side_script), "--side", side, "--data", work, "--rows", str(args.rows)]
                command += ["--epochs", str(args.epochs), "--threads", str(args.threads), "--out", str(out)]
                command += ["--group-by-length"] if args.group_by_length == "on" else []
                before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                result = json.loads(out.read_text())
                result["job_wall"] = time.perf_counter() - start
                result["job_cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                results[side].append(result)
                print(f"round {round_index + 1} {side}: {json.dumps(result)}", flush=True)

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    def rate(side: str, key: str) -> float:
        return statistics.median(r["examples"] / r[key] for r in results[side])

    print(
        f"\nMiniLM-L6 + LoRA r=8 q/v, SST-2: {args.rows} train rows x {args.epochs} epoch(s), batch 32, max length 128, "
        f"group_by_length {args.group_by_length}, {args.threads} threads, {args.rounds} round(s), dev 872 sentences"
    )
    print(
        "| side | train examples/s (wall) | train examples per CPU-second | dev accuracy | whole job CPU-s | trainable |"
    )
    print("|---|---|---|---|---|---|")
    for side in results:
        print(
            f"| {side} | {rate(side, 'train_wall'):.1f} | {rate(side, 'train_cpu'):.1f} | "
            f"{median(side, 'accuracy'):.4f} | {median(side, 'job_cpu'):.0f} | {results[side][0]['trainable']} |"
        )
    wall_ratio, cpu_ratio = (
        rate("zoo", "train_wall") / rate("hf", "train_wall"),
        rate("zoo", "train_cpu") / rate("hf", "train_cpu"),
    )
    print(f"\nzoo / HF: {wall_ratio:.3f}x examples/s (wall), {cpu_ratio:.3f}x examples per CPU-second")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"args": vars(args), "results": results, "ratio_wall": wall_ratio, "ratio_cpu": cpu_ratio,
             "torch": torch.__version__, "machine": platform.platform()},
            indent=2,
        )
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--length", type=int, default=128, help="tokens per example")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per timed run")
    parser.add_argument("--rounds", type=int, default=None, help="default: 3 (--against hf: 1)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="2 x 64 model, 64 tokens, 10 steps, 2 rounds")
    parser.add_argument("--out", default=None, help="default: .bench/train_throughput[_hf].json")
    parser.add_argument("--against", choices=["bare", "hf"], default="bare", help="what the trainer is compared with")
    parser.add_argument("--rows", type=int, default=2000, help="--against hf: SST-2 training rows")
    parser.add_argument("--epochs", type=int, default=1, help="--against hf: epochs")
    parser.add_argument("--sst2", default=None, help="--against hf: folder with train.tsv and dev.tsv")
    parser.add_argument("--group-by-length", choices=["on", "off"], default="on", help="--against hf: both sides")
    args = parser.parse_args()
    if args.against == "hf":
        args.out = args.out or ".bench/train_throughput_hf.json"
        args.rounds = args.rounds or 1
        run_against_hf(args)
        return
    args.out = args.out or ".bench/train_throughput.json"
    args.rounds = args.rounds or 3
    if args.quick:
        args.layers, args.hidden, args.length, args.steps, args.rounds = 2, 64, 64, 10, 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    base = build_model(args)
    # enough data for every step to see new examples, as in a real epoch
    dataset = Tokens(args.batch * args.steps, args.length, args.vocab)
    sides = {"trainer": run_trainer, "bare": run_bare}
    samples: dict[str, list[float]] = {name: [] for name in sides}
    cpu_samples: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(args.rounds + 1):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for name in order:
            model = copy.deepcopy(base).to(device)
            seconds, cpu_seconds = sides[name](model, dataset, args, device)
            if round_index > 0:  # round 0 warms up allocators, kernels and imports
                samples[name].append(args.steps * args.batch / seconds)
                cpu_samples[name].append(args.steps * args.batch / cpu_seconds)
            del model

    median = {name: statistics.median(values) for name, values in samples.items()}
    best = {name: max(values) for name, values in samples.items()}
    ratio, best_ratio = median["trainer"] / median["bare"], best["trainer"] / best["bare"]
    cpu_median = {name: statistics.median(values) for name, values in cpu_samples.items()}
    cpu_ratio = cpu_median["trainer"] / cpu_median["bare"]
    print(
        f"model: BERT {args.layers} x {args.hidden}, {args.length} tokens, LoRA r=8 q/v; batch {args.batch}; "
        f"{args.steps} steps x {args.rounds} rounds; device {args.device}, {args.threads} CPU threads"
    )
    print("| side | examples/s (median) | examples/s (best) | examples per CPU-second (median) |")
    print("|---|---|---|---|")
    for name in sides:
        print(f"| {name} | {median[name]:.1f} | {best[name]:.1f} | {cpu_median[name]:.1f} |")
    verdict = "meets" if ratio >= 0.95 else "misses"
    print(
        f"\ntrainer / bare throughput: {ratio:.3f}x median, {best_ratio:.3f}x best ({verdict} the 0.95x target); "
        f"per CPU-second {cpu_ratio:.3f}x"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "samples_examples_per_second": samples,
                "ratio_median": ratio,
                "ratio_best": best_ratio,
                "samples_examples_per_cpu_second": cpu_samples,
                "ratio_cpu_median": cpu_ratio,
                "torch": torch.__version__,
                "machine": platform.platform(),
                "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
            },
            indent=2,
        )
    )
    if not math.isfinite(ratio):
        sys.exit(1)


if __name__ == "__main__":
    main()
