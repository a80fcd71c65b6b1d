"""Train-step time and peak memory of zoo's LoRA and DoRA against HF peft, on CPU.

Everything is a ratio against a peer measured in the same run:

- zoo lora / peft lora and zoo dora / peft dora: step time (forward + backward + AdamW
  step) and peak memory, with the same config (r=8, lora_alpha=16, no dropout, the task
  head trained as ``modules_to_save``);
- zoo dora / zoo lora step time, and peft's dora / lora for context;
- zoo lora / floor, where the floor is the frozen backbone's own forward + backward with
  only the head and the output of the input embedding trainable (so backward runs
  through every block, as it must for LoRA, but no adapter exists);
- latency of the model returned by ``zoo.peft.merge_and_unload`` / the base model's;
- with ``--lst``, instead of all the above: zoo's ladder side-tuning (LST, reduction 8, side
  network initialised from the pruned blocks) against zoo LoRA, full fine-tuning and the floor,
  peak memory and step time. LST never backpropagates through the backbone, so its memory may
  sit below the floor, which does.

Models: a BERT-base-sized ``BertForSequenceClassification`` (random weights) on
token batches and timm's ``vit_small_patch16_224`` (``pretrained=False``) on images.
peft cannot target slices of timm's fused ``qkv``, so on ViT peft adapts all of ``qkv``;
zoo is measured both with ``qkv[q,v]`` (its default) and with ``qkv`` (like for like).

Timing: one process holds every variant of a model (each a deep copy of the same
seeded backbone, fed the same batch). After warm-up, rounds alternate between
variants in a rotating order so that drift of the machine spreads over all of them;
each figure is the median of the single-step wall times. Beside the ratio of medians the
table gives the ratio of the fastest steps and of the median CPU time of the process;
on a machine shared with other jobs, ``--threads 1`` makes the CPU-time ratio the
steadiest figure (with 2 threads, OpenMP threads spin while waiting for a descheduled
sibling, so wall and CPU time both inflate).

Peak memory: CPU allocations of torch are invisible to tracemalloc, so each variant
runs in its own subprocess. After importing the libraries and building the base model
and the batch, it resets its peak resident set size to the current one (writing 5 to
``/proc/self/clear_refs``) and notes the RSS; then it applies the adapter, trains, and
reports the peak (``VmHWM``) minus that baseline. ``ru_maxrss`` is not used where the
reset works because it cannot be reset and a child inherits the parent's peak across
fork/exec. The figure holds adapter and head copies, gradients, AdamW state,
activations kept for backward and allocator overhead.

    python benchmarks/peft_speed.py            # defaults: about 6 minutes on 2 idle cores
    python benchmarks/peft_speed.py --quick    # small models, a smoke run
    python benchmarks/peft_speed.py --lst      # LST against LoRA, full fine-tuning and the floor
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

HEAD = {"bert": "classifier", "vit": "head"}
FULL_TARGETS = {"bert": ["query", "value"], "vit": ["qkv"]}
RANK, ALPHA = 8, 16.0


@dataclass
class Settings:
    threads: int = 2
    seed: int = 0
    bert_layers: int = 6  # BERT-base widths; 12 layers triples the run time for the same ratios
    bert_batch: int = 8
    bert_seq: int = 128
    vit_depth: int = 12
    vit_batch: int = 8
    vit_image: int = 224
    warmup: int = 1
    rounds: int = 5
    steps_per_round: int = 2
    memory_steps: int = 2
    inference_rounds: int = 10

    @classmethod
    def quick(cls, threads: int) -> "Settings":
        return cls(
            threads=threads,
            bert_layers=2,
            bert_batch=2,
            bert_seq=32,
            vit_depth=2,
            vit_batch=2,
            rounds=2,
            steps_per_round=2,
            memory_steps=1,
            inference_rounds=4,
        )


# -- models and batches -------------------------------------------------------------
def build_backbone(family: str, s: Settings) -> torch.nn.Module:
    torch.manual_seed(s.seed)
    if family == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            hidden_size=768,
            num_hidden_layers=s.bert_layers,
            num_attention_heads=12,
            intermediate_size=3072,
            num_labels=2,
        )
        return BertForSequenceClassification(config)
    import timm

    return timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=2, depth=s.vit_depth, img_size=s.vit_image
    )


def make_batch(family: str, s: Settings) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(s.seed + 7)
    if family == "bert":
        ids = torch.randint(0, 30522, (s.bert_batch, s.bert_seq), generator=generator)
        labels = torch.randint(0, 2, (s.bert_batch,), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    images = torch.randn(s.vit_batch, 3, s.vit_image, s.vit_image, generator=generator)
    return {"images": images, "labels": torch.randint(0, 2, (s.vit_batch,), generator=generator)}


def forward(family: str, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (inference) of ``model`` on ``batch``."""
    if family == "bert":
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return model(batch["images"])


def loss_of(family: str, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(forward(family, model, batch), batch["labels"])


LST_VARIANTS = ["floor", "full", "zoo_lora", "zoo_lst"]
"""What ``--lst`` measures: ladder side-tuning against the frozen floor, full fine-tuning and LoRA."""


def variants_for(family: str) -> list[str]:
    """Names are ``<library>_<method>[_qv]``; ``_qv`` adapts only the q and v slices of fused qkv."""
    names = ["floor", "zoo_lora", "peft_lora", "zoo_dora", "peft_dora"]
    if family == "vit":
        names[1:1] = ["zoo_lora_qv"]
        names[4:4] = ["zoo_dora_qv"]
    return names


def dora_available() -> bool:
    import zoo.peft as zp

    return "dora" in zp.list_methods()


def prepare(family: str, variant: str, model: torch.nn.Module, s: Settings) -> torch.nn.Module:
    """Turn a fresh backbone into ``variant``; returns the model to train."""
    torch.manual_seed(s.seed + 1)
    if variant == "floor":
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in model.get_submodule(HEAD[family]).parameters():
            parameter.requires_grad_(True)
        # A trainable embedding output makes backward run through every block, as for LoRA.
        embedding = model.bert.embeddings if family == "bert" else model.patch_embed
        embedding.register_forward_hook(lambda module, args, output: output.requires_grad_())
        return model
    if variant in ("full", "zoo_lst"):
        import zoo.peft as zp

        # lst: reduction 8, the side network pruned from the blocks, its own copy of the head (as LoRA's)
        return zp.apply(model, "full") if variant == "full" else zp.apply(model, "lst", modules_to_save=[HEAD[family]])
    library, method, *slices = variant.split("_")
    targets = ["qkv[q,v]"] if slices else FULL_TARGETS[family]
    if library == "zoo":
        import zoo.peft as zp

        return zp.apply(
            model,
            method,
            r=RANK,
            lora_alpha=ALPHA,
            lora_dropout=0.0,
            target_modules=targets,
            modules_to_save=[HEAD[family]],
        )
    import peft

    config = peft.LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=targets,
        modules_to_save=[HEAD[family]],
        use_dora=method == "dora",
    )
    return peft.get_peft_model(model, config)


class Trainer:
    """One AdamW training step on a fixed batch."""

    def __init__(self, family: str, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
        self.family, self.model, self.batch = family, model.train(), batch
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=1e-4)

    def step(self) -> tuple[float, float]:
        with Stopwatch() as watch:
            loss_of(self.family, self.model, self.batch).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return watch.wall, watch.cpu

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.parameters)


# -- timing -------------------------------------------------------------------------
class Stopwatch:
    """Wall time and this process's CPU time (all threads) of a ``with`` block."""

    def __enter__(self) -> "Stopwatch":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def interleaved(
    runners: dict[str, callable], s: Settings, rounds: int, per_round: int
) -> dict[str, list[tuple[float, float]]]:
    """Warm up every runner, then time them in rounds with a rotating order."""
    names = list(runners)
    for name in names:
        for _ in range(s.warmup):
            runners[name]()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(per_round):
                times[name].append(runners[name]())
    return times


def summary(samples: list[tuple[float, float]]) -> dict:
    walls, cpus = [w for w, _ in samples], [c for _, c in samples]
    ordered = sorted(walls)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {
        "median_ms": 1e3 * statistics.median(ordered),
        "min_ms": 1e3 * ordered[0],
        "p25_ms": 1e3 * quartiles[0],
        "p75_ms": 1e3 * quartiles[2],
        "cpu_median_ms": 1e3 * statistics.median(cpus),
        "samples_ms": [round(1e3 * w, 2) for w in walls],
        "cpu_samples_ms": [round(1e3 * c, 2) for c in cpus],
    }


def time_training(family: str, names: list[str], s: Settings) -> dict[str, dict]:
    base, batch = build_backbone(family, s), make_batch(family, s)
    trainers, results = {}, {}
    for name in names:
        try:
            trainers[name] = Trainer(family, prepare(family, name, copy.deepcopy(base), s), batch)
        except Exception as error:  # e.g. a method that does not support fused-slice targets
            results[name] = {"error": f"{type(error).__name__}: {error}"}
    del base
    gc.collect()
    times = interleaved({n: t.step for n, t in trainers.items()}, s, s.rounds, s.steps_per_round)
    for name, trainer in trainers.items():
        results[name] = {**summary(times[name]), "trainable_parameters": trainer.trainable}
    return results


def time_inference(family: str, s: Settings) -> dict:
    """Base model vs the plain model from merge_and_unload (and the unmerged adapter, for context)."""
    import zoo.peft as zp

    base, batch = build_backbone(family, s).eval(), make_batch(family, s)
    adapted = prepare(family, "zoo_lora", copy.deepcopy(base), s)
    with torch.no_grad():  # a trained-looking update, so merging changes the weights
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    adapted.eval()
    merged = zp.merge_and_unload(copy.deepcopy(adapted)).eval()
    with torch.inference_mode():
        difference = (forward(family, merged, batch) - forward(family, adapted, batch)).abs().max().item()

    def runner(model):
        def run() -> tuple[float, float]:
            with Stopwatch() as watch, torch.inference_mode():
                forward(family, model, batch)
            return watch.wall, watch.cpu

        return run

    models = {"base": base, "merged": merged, "unmerged": adapted}
    times = interleaved({n: runner(m) for n, m in models.items()}, s, s.inference_rounds, 1)
    leftover = [n for n, m in merged.named_modules() if type(m).__module__.startswith("zoo.")]
    return {
        **{n: summary(t) for n, t in times.items()},
        "merged_vs_unmerged_max_abs_diff": difference,
        "zoo_modules_left_after_unload": leftover,
    }


# -- memory (one subprocess per variant) -----------------------------------------------
def status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Set this process's peak RSS (VmHWM) to its current RSS; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_worker(family: str, variant: str, s: Settings) -> dict:
    import peft  # noqa: F401  -- imported before the baseline so that library code is not counted

    import zoo.peft  # noqa: F401

    model, batch = build_backbone(family, s), make_batch(family, s)
    gc.collect()
    # ru_maxrss cannot be reset and a child inherits its parent's peak across fork/exec, so the
    # peak is read from VmHWM after resetting it here; ru_maxrss is the fallback.
    exact = reset_peak_rss()
    baseline = status_kib("VmRSS")
    baseline_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    trainer = Trainer(family, prepare(family, variant, model, s), batch)
    for _ in range(s.memory_steps):
        trainer.step()
    peak = status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_delta_mib": (peak - baseline) / 1024,
        "baseline_rss_mib": baseline / 1024,
        "peak_rss_mib": peak / 1024,
        "method": "VmHWM after clear_refs" if exact else "ru_maxrss",
        "baseline_is_peak": not exact and peak <= baseline_maxrss,
    }


def measure_memory(family: str, names: list[str], s: Settings) -> dict[str, dict]:
    results = {}
    for name in names:
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--memory-worker",
            f"{family}:{name}",
            "--settings-json",
            json.dumps(asdict(s)),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            results[name] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
        else:
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


# -- report -------------------------------------------------------------------------
def lst_comparisons() -> list[tuple]:
    """``--lst``: ladder side-tuning's memory and step time over its peers' (the paper: 69% less memory than
    full fine-tuning on T5, i.e. about 0.31x)."""
    rows = [("lst/full: memory", "zoo_lst", "full", "memory", "(paper, T5: ~0.31x)", None)]
    rows += [
        (f"lst/{peer}: memory", "zoo_lst", name, "memory", "", None)
        for peer, name in (("lora", "zoo_lora"), ("floor", "floor"))
    ]
    rows += [("lora/full (context): memory", "zoo_lora", "full", "memory", "", None)]
    for peer, name in (("full", "full"), ("lora", "zoo_lora"), ("floor", "floor")):
        rows.append((f"lst/{peer}: step", "zoo_lst", name, "step", "", None))
    return rows


def comparisons(family: str) -> list[tuple]:
    """``(label, numerator, denominator, kind, target, (low, high) or None)`` for one model."""
    # (zoo variant, note against peft, note alone): on ViT zoo runs with qkv[q,v] and with qkv
    lora = [("zoo_lora_qv", " (qkv[q,v] vs peft qkv)", " (qkv[q,v])"), ("zoo_lora", " (qkv vs qkv)", " (qkv)")]
    lora = lora if family == "vit" else [("zoo_lora", "", "")]
    dora = [(name.replace("lora", "dora"), note, short) for name, note, short in lora]
    rows = []
    for zoo_name, note, _ in lora:
        rows.append((f"lora zoo/peft{note}: step", zoo_name, "peft_lora", "step", "<= 0.95x", (0, 0.95)))
        rows.append((f"lora zoo/peft{note}: memory", zoo_name, "peft_lora", "memory", "<= 1.00x", (0, 1.0)))
    for zoo_name, note, _ in dora:
        rows.append((f"dora zoo/peft{note}: step", zoo_name, "peft_dora", "step", "", None))
        rows.append((f"dora zoo/peft{note}: memory", zoo_name, "peft_dora", "memory", "", None))
    for (lora_name, _, short), (dora_name, _, _) in zip(lora, dora):
        rows.append((f"dora/lora zoo{short}: step", dora_name, lora_name, "step", "<= 1.10x", (0, 1.10)))
    rows.append(("dora/lora peft (context): step", "peft_dora", "peft_lora", "step", "", None))
    for lora_name, _, short in lora:
        rows.append((f"lora zoo/floor{short}: step", lora_name, "floor", "step", "", None))
    rows.append(("lora peft/floor (context): step", "peft_lora", "floor", "step", "", None))
    # What the adapter adds above the frozen floor, zoo's over peft's: the floor's own time
    # does not water this ratio down as it does zoo/peft.
    for lora_name, note, _ in lora:
        target = ("< 0.60x", (0, 0.6)) if lora_name == "zoo_lora_qv" or family == "bert" else ("", None)
        rows.append((f"lora zoo/peft above floor{note}: step", lora_name, "peft_lora", "above_floor", *target))
    rows.append(("merged/base: inference", "merged", "base", "inference", "= 1.00x (0.95-1.05)", (0.95, 1.05)))
    rows.append(("unmerged lora/base (context): inference", "unmerged", "base", "inference", "", None))
    return rows


def ratio_rows(family: str, result: dict, lst: bool = False) -> list[dict]:
    rows = []
    for label, numerator, denominator, kind, target, bounds in lst_comparisons() if lst else comparisons(family):
        source = {
            "step": result["train"],
            "above_floor": result["train"],
            "memory": result["memory"],
            "inference": result.get("inference", {}),
        }[kind]
        top, bottom = source.get(numerator, {}), source.get(denominator, {})
        floor = source.get("floor", {}) if kind == "above_floor" else {}

        def ratio(key, top=top, bottom=bottom, floor=floor, kind=kind):
            if not (top.get(key) and bottom.get(key)):
                return None
            if kind != "above_floor":
                return top[key] / bottom[key]
            if not floor.get(key) or bottom[key] <= floor[key]:
                return None
            return (top[key] - floor[key]) / (bottom[key] - floor[key])

        def above(timing, key, floor=floor):
            return timing[key] - floor[key] if timing.get(key) and floor.get(key) else None

        key = "peak_delta_mib" if kind == "memory" else "median_ms"
        median = ratio(key)
        rows.append(
            {
                "model": family,
                "comparison": label,
                "numerator": numerator,
                "denominator": denominator,
                "value": above(top, key) if kind == "above_floor" else top.get(key),
                "peer": above(bottom, key) if kind == "above_floor" else bottom.get(key),
                "unit": "MiB" if kind == "memory" else "ms",
                "ratio": median,
                # less sensitive to other processes competing for the CPU than the ratio of medians
                "ratio_of_min": None if kind == "memory" else ratio("min_ms"),
                "ratio_of_cpu_time": None if kind == "memory" else ratio("cpu_median_ms"),
                "target": target,
                "ok": None if median is None or bounds is None else bounds[0] <= median <= bounds[1],
            }
        )
    return rows


def markdown(rows: list[dict], results: dict) -> str:
    def number(value, unit):
        if value is None:
            return "n/a"
        return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"

    def times(value):
        return "n/a" if value is None else f"{value:.3f}x"

    lines = [
        "| model | comparison | zoo / numerator | peer / denominator | ratio (median) | ratio (min) | ratio (CPU time) "
        "| target | ok |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ok = {None: "", True: "yes", False: "NO"}[r["ok"]]
        extra = "| | |" if r["unit"] == "MiB" else f"| {times(r['ratio_of_min'])} | {times(r['ratio_of_cpu_time'])} |"
        lines.append(
            f"| {r['model']} | {r['comparison']} | {number(r['value'], r['unit'])} | "
            f"{number(r['peer'], r['unit'])} | {times(r['ratio'])} {extra} {r['target']} | {ok} |"
        )
    lines += [
        "",
        "| model | variant | step median (ms) | min (ms) | p25-p75 (ms) | peak memory delta (MiB) | trainable params |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for family, result in results.items():
        for name, timing in result["train"].items():
            memory = result["memory"].get(name, {})
            if "error" in timing:
                lines.append(f"| {family} | {name} | n/a ({timing['error'][:80]}) | | | | |")
                continue
            peak = f"{memory['peak_delta_mib']:.0f}" if "peak_delta_mib" in memory else "n/a"
            lines.append(
                f"| {family} | {name} | {timing['median_ms']:.0f} | {timing['min_ms']:.0f} | {timing['p25_ms']:.0f}-{timing['p75_ms']:.0f} "
                f"| {peak} | {timing['trainable_parameters']:,} |"
            )
        inference = result.get("inference", {})
        for name in ("base", "merged", "unmerged") if inference else ():  # --lst measures no inference
            lines.append(
                f"| {family} | inference {name} | {inference[name]['median_ms']:.1f} | {inference[name]['min_ms']:.1f} "
                f"| {inference[name]['p25_ms']:.1f}-{inference[name]['p75_ms']:.1f} | | |"
            )
    return "\n".join(lines)


class OtherLoad:
    """CPU time that other processes used while the benchmark ran (a check on the figures' noise)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as handle:
            ticks = [int(v) for v in handle.readline().split()[1:9]]
        user, nice, system, idle, iowait, irq, softirq, steal = ticks
        hertz = os.sysconf("SC_CLK_TCK")
        own = sum(
            getattr(resource.getrusage(who), f)
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for f in ("ru_utime", "ru_stime")
        )
        return (user + nice + system + irq + softirq) / hertz, steal / hertz, own

    def report(self, wall_seconds: float) -> dict:
        busy, steal, own = (end - start for end, start in zip(self._sample(), self.start))
        capacity = wall_seconds * (os.cpu_count() or 1)
        other = max(busy - own, 0.0)
        return {
            "other_processes_cpu_s": other,
            "steal_s": steal,
            "own_cpu_s": own,
            "capacity_cpu_s": capacity,
            "other_fraction": other / capacity,
            "steal_fraction": steal / capacity,
        }


def describe(s: Settings, dora: bool, lst: bool = False) -> str:
    import peft
    import timm
    import transformers

    return (
        f"torch {torch.__version__}, peft {peft.__version__}, transformers {transformers.__version__}, "
        f"timm {timm.__version__}; {s.threads} threads; lora/dora r={RANK} alpha={ALPHA:g} dropout 0, head trained "
        f"as modules_to_save; AdamW.\nbert: BertForSequenceClassification hidden 768, {s.bert_layers} layers, "
        f"12 heads, random weights, batch {s.bert_batch} x seq {s.bert_seq}, targets query,value.\n"
        f"vit: vit_small_patch16_224 (pretrained=False, num_classes=2), depth {s.vit_depth}, batch {s.vit_batch} "
        f"at {s.vit_image}x{s.vit_image}, targets qkv (peft, zoo_lora) and qkv[q,v] (zoo_lora_qv).\n"
        f"timing: median of {s.rounds * s.steps_per_round} train steps per variant after {s.warmup} warm-up, "
        f"{s.rounds} interleaved rounds; inference: median of {s.inference_rounds} forwards (train mode for steps, "
        f"eval for inference).\nmemory: separate process per variant, peak RSS (VmHWM, reset after building "
        f"model and batch) after {s.memory_steps} train steps minus RSS after building model and batch."
        + ("" if dora else "\nzoo dora: not available (zoo/peft/dora.py missing).")
        + (
            "\n--lst: floor, full fine-tuning (every weight, AdamW), zoo lora and zoo lst (reduction_factor 8, "
            "gate_temperature 0.1, init pruned, head as modules_to_save); no peft, dora or inference rows."
            if lst
            else ""
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Small models, few steps: a smoke run.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every measurement.")
    parser.add_argument("--models", default="bert,vit", help="Comma-separated subset of bert,vit.")
    parser.add_argument("--bert-layers", type=int, help="Override the number of BERT layers.")
    parser.add_argument("--vit-depth", type=int, help="Override the ViT depth.")
    parser.add_argument("--rounds", type=int, help="Override the number of interleaved timing rounds.")
    parser.add_argument(
        "--lst", action="store_true", help="Only ladder side-tuning against LoRA, full fine-tuning and the floor."
    )
    parser.add_argument("--out", default=".bench/peft_speed.json", help="Where to write the JSON results.")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--settings-json", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_worker:
        s = Settings(**json.loads(args.settings_json))
        torch.set_num_threads(s.threads)
        family, variant = args.memory_worker.split(":")
        print(json.dumps(memory_worker(family, variant, s)))
        return

    s = Settings.quick(args.threads) if args.quick else Settings(threads=args.threads)
    for field, value in (("bert_layers", args.bert_layers), ("vit_depth", args.vit_depth), ("rounds", args.rounds)):
        if value is not None:
            setattr(s, field, value)
    torch.set_num_threads(s.threads)
    dora = dora_available()
    started, load = time.perf_counter(), OtherLoad()
    results, rows = {}, []
    for family in args.models.split(","):
        names = [n for n in variants_for(family) if dora or "dora" not in n.split("_")[1:2]]
        names = LST_VARIANTS if args.lst else names
        memory = measure_memory(family, names, s)
        results[family] = {"train": time_training(family, names, s), "memory": memory}
        if not args.lst:
            results[family]["inference"] = time_inference(family, s)
        rows += ratio_rows(family, results[family], lst=args.lst)
    elapsed = time.perf_counter() - started
    contention = load.report(elapsed)

    print(describe(s, dora, args.lst))
    print()
    print(markdown(rows, results))
    print(
        f"\nwall time {elapsed:.0f} s; other processes used {100 * contention['other_fraction']:.0f}% and "
        f"hypervisor steal {100 * contention['steal_fraction']:.0f}% of the {os.cpu_count()} CPUs meanwhile "
        f"(high values make the median ratios noisy: compare the ratio of the fastest steps, or run with "
        f"--threads 1 and read the CPU-time ratio)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "settings": asdict(s),
                "quick": args.quick,
                "dora_available": dora,
                "lst": args.lst,
                "description": describe(s, dora, args.lst),
                "ratios": rows,
                "results": results,
                "wall_time_s": elapsed,
                "contention": contention,
            },
            indent=2,
        )
    )
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
