"""``zoo export --format onnx`` on tiny runs: the file onnxruntime runs computes what the torch model computes
on shapes other than the export example's, ``zoo predict --runtime onnx`` predicts as the torch path does,
and what cannot be exported or would overwrite a file is refused with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the export extra is not installed")

TEXTS = ["a gripping, beautifully acted film", "dull", "stocks rallied on the news after a long and quiet week"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny SST-2 LoRA run and a tiny medical-image LoRA run, each exported once."""
    import zoo
    from zoo.cli.main import main

    root = tmp_path_factory.mktemp("export")
    runs = {
        "text": zoo.run("text/sst2-lora", ["scale=tiny", "train.max_steps=2"], out=root / "text", log=None).dir,
        "vision": zoo.run(
            "vision/medical-lora", ["scale=tiny", "train.max_steps=2"], out=root / "vision", log=None
        ).dir,
    }
    for name, run_dir in runs.items():
        assert main(["export", str(run_dir), "--format", "onnx", "--out", str(root / f"{name}.onnx")]) == 0
    return root, runs


def torch_and_onnx(run_dir, onnx_path, batch):
    """The run's model as zoo predict builds it (adapter not merged) and the exported file, on one batch."""
    import onnxruntime

    from zoo.hub.predict import load

    model = load(run_dir, log=None).model.eval()
    with torch.no_grad():
        expected = model(batch).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(["logits"], {name: tensor.numpy() for name, tensor in batch.items()})[0]
    return expected, actual


def test_text_graph_equals_the_torch_model_at_other_batch_sizes_and_lengths(exported):
    root, runs = exported
    generator = torch.Generator().manual_seed(1)
    for size, length in ((4, 11), (1, 23)):  # the export example: 2 texts; the command's own check: 3x7, 5x19
        mask = torch.ones(size, length, dtype=torch.long)
        mask[0, length - 3 :] = 0
        batch = {"input_ids": torch.randint(0, 50, (size, length), generator=generator), "attention_mask": mask}
        expected, actual = torch_and_onnx(runs["text"], root / "text.onnx", batch)
        assert actual.shape == (size, 2)
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_vision_graph_equals_the_torch_model_at_other_batch_sizes(exported):
    root, runs = exported
    for size in (1, 6):
        batch = {"pixel_values": torch.randn(size, 3, 32, 32, generator=torch.Generator().manual_seed(size))}
        expected, actual = torch_and_onnx(runs["vision"], root / "vision.onnx", batch)
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_the_description_says_what_the_graph_takes_and_where_it_came_from(exported):
    root, runs = exported
    described = json.loads((root / "text.json").read_text())
    assert [item["name"] for item in described["inputs"]] == ["input_ids", "attention_mask"]
    assert described["inputs"][0]["dynamic_axes"] == {"0": "batch", "1": "sequence"}
    assert described["labels"] == ["negative", "positive"]
    assert described["source"]["method"] == "lora" and described["source"]["merged"] is True
    assert described["source"]["base_fingerprint"].startswith("sha256:")
    assert described["parity"]["passed"] and described["parity"]["max_abs_diff"] < 1e-4
    assert [check["shape"] for check in described["parity"]["checks"]] == [[3, 7], [5, 19]]
    vision = json.loads((root / "vision.json").read_text())
    assert vision["inputs"][0]["dynamic_axes"] == {"0": "batch"}
    assert vision["preprocessing"]["image"]["input_size"] == [3, 32, 32]


def test_predict_with_the_onnx_runtime_gives_the_torch_predictions(exported, zoo):
    root, runs = exported
    rows = {}
    for runtime in ("torch", "onnx"):
        extra = ["--runtime", "onnx", "--onnx", root / "text.onnx"] if runtime == "onnx" else []
        code, out, err = zoo("predict", runs["text"], *TEXTS, "--format", "json", *extra)
        assert code == 0, err
        rows[runtime] = json.loads(out)
    assert [row["label"] for row in rows["onnx"]] == [row["label"] for row in rows["torch"]]
    for onnx_row, torch_row in zip(rows["onnx"], rows["torch"]):
        assert onnx_row["scores"] == pytest.approx(torch_row["scores"], abs=1e-5)


def test_onnx_file_of_another_adapter_is_refused(exported, zoo):
    root, runs = exported
    code, _, err = zoo("predict", runs["vision"], "x.png", "--runtime", "onnx", "--onnx", root / "text.onnx")
    assert code == 2 and "exported from another adapter" in err


def test_an_existing_file_is_kept_unless_forced(exported, zoo, tmp_path):
    root, runs = exported
    (tmp_path / "model.onnx").write_text("mine")
    code, _, err = zoo("export", runs["text"], "--format", "onnx", "--out", "model.onnx")
    assert code == 2 and "model.onnx exists; pass --force" in err
    assert (tmp_path / "model.onnx").read_text() == "mine"


def test_a_method_the_exporter_cannot_trace_is_refused_with_the_reason_and_nothing_is_written(zoo, tmp_path):
    import zoo as zoo_api

    run_dir = zoo_api.run(
        "text/sst2-loreft", ["scale=tiny", "train.max_steps=1"], out=tmp_path / "loreft", log=None
    ).dir
    code, _, err = zoo("export", run_dir, "--format", "onnx", "--out", "loreft.onnx")
    assert code == 2
    assert "loreft adapter cannot be folded into the weights" in err and "dynamo exporter failed" in err
    assert "linalg_qr" in err  # the op the exporter has no ONNX function for
    assert sorted(path.name for path in tmp_path.iterdir()) == ["loreft"]  # no .onnx, .json nor temporary file
