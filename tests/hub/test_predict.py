"""zoo predict / zoo ls adapters / zoo eval from a hub: the same outputs as the run directory they came from."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.cli.main import main

NAME = "text/sst2-lora"
TEXTS = ["a gripping, beautifully acted film", "dull and far too long", "the music is the best thing about it"]


def reference_probabilities(run_dir, texts):
    """Independently of zoo.hub: the run rebuilt by the experiment layer, its logits softmaxed."""
    import zoo

    built = zoo.load_run(run_dir).build()
    with torch.no_grad():
        return built.model(built.model.backbone.collate(texts)).softmax(-1)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_from_a_hub_matches_the_run_directory(tiny_run, pushed_hub, serve, capsys, tmp_path):
    server = serve(pushed_hub)
    text_file = tmp_path / "inputs.txt"
    text_file.write_text(TEXTS[2] + "\n\n")
    code, out, err = run_cli(
        capsys, "predict", NAME, TEXTS[0], TEXTS[1], str(text_file), "--hub", server.url, "--format", "json"
    )
    assert code == 0, err
    rows = json.loads(out)
    expected = reference_probabilities(tiny_run.dir, TEXTS)
    assert [row["input"] for row in rows] == TEXTS
    for row, probabilities in zip(rows, expected):
        assert set(row["scores"]) == {"negative", "positive"}
        assert torch.allclose(
            torch.tensor([row["scores"]["negative"], row["scores"]["positive"]]), probabilities, atol=1e-5
        )
        assert row["label"] == ["negative", "positive"][int(probabilities.argmax())]
    # the run directory itself gives the same json
    code, out_run, err = run_cli(capsys, "predict", str(tiny_run.dir), *TEXTS, "--format", "json")
    assert code == 0, err
    assert [r["label"] for r in json.loads(out_run)] == [r["label"] for r in rows]


def test_predict_csv_and_table(pushed_hub, capsys):
    code, out, err = run_cli(capsys, "predict", NAME, *TEXTS[:2], "--hub", str(pushed_hub), "--format", "csv")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "input,label,negative,positive" and len(lines) == 3
    code, out, _ = run_cli(capsys, "predict", NAME, TEXTS[0], "--hub", str(pushed_hub))
    assert TEXTS[0][:20] in out and ("positive" in out or "negative" in out)


def test_python_load_gives_a_predictor(tiny_run, pushed_hub):
    import zoo.hub

    predictor = zoo.hub.load(NAME, hub=str(pushed_hub), log=None)
    predictions = predictor.predict(TEXTS)
    expected = reference_probabilities(tiny_run.dir, TEXTS)
    assert torch.allclose(torch.tensor([list(p["scores"].values()) for p in predictions]), expected, atol=1e-5)


def test_ls_adapters_lists_the_hub_with_its_metric(pushed_hub, capsys):
    code, out, err = run_cli(capsys, "ls", "adapters", "--hub", str(pushed_hub))
    assert code == 0, err
    assert "text/sst2-lora@1" in out and "accuracy" in out and "sst2 val" in out


def test_eval_takes_a_hub_adapter(tiny_run, pushed_hub, capsys):
    code, out, err = run_cli(capsys, "eval", NAME, "--hub", str(pushed_hub), "--split", "val")
    assert code == 0, err
    accuracy = float(next(line for line in out.splitlines() if "accuracy" in line).split()[-1])
    assert accuracy == pytest.approx(tiny_run.metrics("val")["accuracy"])


def test_the_default_hub_is_found_and_listed(capsys):
    from zoo.hub import DEFAULT_HUB

    if not (DEFAULT_HUB / "index.json").is_file():
        pytest.skip("no default hub in this checkout")
    code, out, err = run_cli(capsys, "ls", "adapters")
    assert code == 0, err
    assert "text/agnews-lora" in out and "text/sst2-lora" in out


def test_a_bad_hub_is_one_clear_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "pull", NAME, "--hub", str(tmp_path / "nowhere"))
    assert code == 2 and "index.json" in err and "Traceback" not in err
