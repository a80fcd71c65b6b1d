"""Rendering against a hand computation: mean ± 95% t-interval over seeds, Δ vs full fine-tuning, the published
number, the legend."""

from __future__ import annotations

import csv

from PIL import Image

from tests.results.conftest import SMALL, write_table


def row(method: str, domain: str, seed: int, value: float, random_init: bool = False, **fields) -> dict:
    return {
        "run_dir": f"/runs/{domain}/{method}/{seed}",
        "status": "complete",
        "table": "small",
        "scale": "cpu",
        "domain": domain,
        "method_label": method,
        "seed": seed,
        "train_size": None,
        "metric": "accuracy",
        "metric_split": "val",
        "metric_value": value,
        "trainable_parameters": 1000 if method != "full" else 100000,
        "trainable_percent": 1.0 if method != "full" else 100.0,
        "peak_memory_bytes": 2**20 * 100,
        "train_seconds": 10.0,
        "random_init": random_init,
        **fields,
    }


def test_mean_std_delta_and_published_match_a_hand_computation(tmp_path):
    from zoo.results.render import RANDOM_INIT_NOTE, render
    from zoo.results.spec import load_table

    spec = load_table(write_table(tmp_path, SMALL))
    rows = [
        row("full", "text", 0, 0.90),
        row("full", "text", 1, 0.95),
        row("bitfit", "text", 0, 0.80),
        row("bitfit", "text", 1, 0.90),
        row("bitfit", "text", 2, 0.70),
        row("bitfit", "video_text", 0, 0.25, random_init=True, metric="R@1"),
        {
            **row("adapter-tiny", "video_text", 0, 0.0),
            "status": "n/a",
            "metric_value": None,
            "error": "adapter does not fit open_clip attention",
        },
    ]
    files = render(rows, tmp_path / "out", spec, scale="cpu", command="zoo reproduce small --scale cpu")
    names = {path.name for path in files}
    assert {"small.md", "small.csv", "small-metric-vs-parameters.png", "small-memory-time.png"} <= names
    # one panel of 4 x 3.5 inches per domain (text, video_text) at 110 dpi; the memory/time pair is 10 x 3.5
    sizes = {path.name: Image.open(path).size for path in files if path.suffix == ".png"}
    assert sizes == {"small-metric-vs-parameters.png": (880, 385), "small-memory-time.png": (1100, 385)}
    # by hand: bitfit mean (0.8 + 0.9 + 0.7) / 3 = 0.8; sample std sqrt((0 + 0.01 + 0.01) / 2) = 0.1;
    # 95% t-interval: t(0.975, 2 df) = 4.3027 (t table) * 0.1 / sqrt(3) = 0.24841.
    # full mean 0.925, std sqrt((0.025^2 * 2) / 1) = 0.035355; t(0.975, 1 df) = 12.7062 * 0.035355 / sqrt(2) = 0.31766
    # delta 0.8 - 0.925 = -0.125
    markdown = (tmp_path / "out" / "small.md").read_text()
    assert "0.8000 ± 0.2484 (Δ -0.1250)" in markdown
    assert "0.9250 ± 0.3177 [pub. 0.9480]" in markdown
    assert "0.2500¹ †" in markdown and RANDOM_INIT_NOTE in markdown  # one seed: no interval; random weights marked
    assert "n/a" in markdown and "adapter does not fit" in markdown
    # the legend names the interval's method and the test; without test predictions there is no mark
    assert "mean ± 95% t-interval over seeds (Student t, n-1 df) (1 to 3 a cell: the seeds column)" in markdown
    assert "▲ better / ▼ worse than `full`" in markdown and "paired bootstrap" in markdown
    assert "▲" not in markdown.split("| method |")[1].split("\n\n")[0]
    records = {(r["domain"], r["method"]): r for r in csv.DictReader((tmp_path / "out" / "small.csv").open())}
    bitfit = records[("text", "bitfit")]
    assert abs(float(bitfit["mean"]) - 0.8) < 1e-12 and abs(float(bitfit["std"]) - 0.1) < 1e-12
    assert abs(float(bitfit["ci95_half_width"]) - 4.302653 * 0.1 / 3**0.5) < 1e-6
    assert abs(float(bitfit["ci95_low"]) - (0.8 - 0.248414)) < 1e-6 and bitfit["interval_method"].startswith("95% t")
    assert bitfit["vs_baseline"] == "" and bitfit["paired_test"] == "no per-example predictions recorded"
    assert records[("video_text", "bitfit")]["ci95_half_width"] == ""
    assert records[("video_text", "bitfit")]["interval_method"] == "one seed: no interval"
    assert abs(float(bitfit["delta_vs_baseline"]) + 0.125) < 1e-12 and bitfit["seeds"] == "3"
    assert (
        float(records[("text", "full")]["published"]) == 0.948 and records[("text", "full")]["delta_vs_baseline"] == ""
    )
    assert float(bitfit["peak_memory_mib"]) == 100.0 and float(bitfit["trainable_percent"]) == 1.0


def test_data_scale_plot_when_there_are_several_sizes(tmp_path):
    from zoo.results.render import render

    rows = [
        row(m, "sst2", 0, v, train_size=n, steps_to_95pct_best_val=s)
        for m, n, v, s in (
            ("full", 100, 0.6, 5),
            ("full", 1000, 0.8, 10),
            ("lora", 100, 0.55, 15),
            ("lora", 1000, 0.8, 20),
        )
    ]
    names = {p.name for p in render(rows, tmp_path, None)}
    assert "results-data-scale.png" in names
    assert "## 100 training examples" in (tmp_path / "results.md").read_text()


def test_marks_follow_the_paired_test_on_recorded_test_predictions(tmp_path):
    import numpy as np

    from zoo.experiment.predictions import Predictions, write_predictions
    from zoo.results.render import render
    from zoo.results.spec import load_table

    spec = load_table(write_table(tmp_path, SMALL))
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 300)
    rows = []
    for method, rate in (("full", 0.70), ("bitfit", 0.90), ("adapter-tiny", 0.45)):
        for seed in range(3):
            correct = rng.random(300) < rate
            predicted = np.where(correct, target, 1 - target)
            output = np.eye(2)[predicted] * 0.8 + 0.1  # probabilities whose argmax is the prediction
            run_dir = tmp_path / "runs" / method / str(seed)
            write_predictions(run_dir, "test", Predictions("classification", np.arange(300), target, output))
            accuracy = float(correct.mean())
            rows.append(
                row(
                    method, "text", seed, accuracy, run_dir=str(run_dir), metric_split="test", predictions={"test": "x"}
                )
            )
    render(rows, tmp_path / "out", spec, plots=False)
    markdown = (tmp_path / "out" / "small.md").read_text()
    lines = {line.split(" | ")[0].strip("| "): line for line in markdown.splitlines() if line.startswith("| ")}
    assert "▲" in lines["bitfit"] and "▼" in lines["adapter-tiny"] and "▲" not in lines["full"]
    records = {r["method"]: r for r in csv.DictReader((tmp_path / "out" / "small.csv").open())}
    assert records["bitfit"]["vs_baseline"] == "better" and float(records["bitfit"]["delta_ci95_low"]) > 0
    assert records["adapter-tiny"]["vs_baseline"] == "worse" and float(records["adapter-tiny"]["delta_p_value"]) < 0.01
    assert records["full"]["vs_baseline"] == "" and "3 seed(s), 300 test rows" in records["bitfit"]["paired_test"]


def test_a_whole_training_set_comes_after_the_sizes_with_its_rows_and_convergence_curves(tmp_path):
    from zoo.results.plots import seed_band
    from zoo.results.render import render

    curves = {0: [[5, 0.5], [10, 0.7], [15, 0.8]], 1: [[5, 0.6], [10, 0.9], [15, 0.7]]}
    rows = [
        row(m, "sst2", seed, v, train_size=n, train_rows=n or 5000, steps_to_95pct_best_val=10, val_curve=curves[seed])
        for m in ("full", "lora")
        for n, v in ((None, 0.9), (100, 0.6))
        for seed in (0, 1)
    ]
    names = {p.name for p in render(rows, tmp_path, None)}
    assert {"results-data-scale.png", "results-convergence.png"} <= names
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.index("## 100 training examples") < markdown.index("## All training examples (sst2 5,000)")
    assert "| sst2 | full | all (5000) | 2 |" in markdown
    # by hand: the mean and range of the two seeds at each step both evaluated
    steps, mean, low, high = seed_band([curves[0], curves[1][:2]])
    assert steps == [5, 10] and low == [0.5, 0.7] and high == [0.6, 0.9]
    assert [round(m, 12) for m in mean] == [0.55, 0.8]
