"""zoo predict reads each domain's inputs from real files (and standard input), prints class names and
rounded values, and refuses what it cannot read with one clear line.

Every prediction is compared with the model of the run directory run directly on the same input,
decoded independently (the array written to the file, the sequence as typed), never through
``zoo.hub.inputs``.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from tests.zoo_domains.registered import main_recipe
from zoo.catalog.backbones import BACKBONES
from zoo.cli.main import main
from zoo.hub.inputs import INPUT_READERS

TEXTS = ["a gripping, beautifully acted film", "dull and far too long", "the music is the best thing about it"]


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
    """A tiny LoRA run of each domain with a predict reader, on the domain's main task (conftest's
    ``tiny_run`` for its own domain)."""
    import zoo

    out = tmp_path_factory.mktemp("runs")
    made = {BACKBONES.get(zoo.load_run(tiny_run.dir).config.backbone.name).domain: tiny_run}
    for domain in INPUT_READERS.names():
        if domain not in made:
            made[domain] = zoo.run(main_recipe(domain, "lora"), ["scale=tiny"], out=out / domain, log=None)
    return made


def model_outputs(run_dir, inputs):
    """The run rebuilt by the experiment layer, its raw outputs on ``inputs``."""
    import zoo

    built = zoo.load_run(run_dir).build()
    with torch.no_grad():
        return built.model(built.model.backbone.collate(list(inputs))).float()


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def predict_json(capsys, model, *inputs):
    code, out, err = run_cli(capsys, "predict", model, *inputs, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def assert_classified(rows, logits, names):
    probabilities = logits.softmax(-1)
    assert len(rows) == len(probabilities)
    for row, expected in zip(rows, probabilities):
        assert list(row["scores"]) == names
        assert torch.allclose(torch.tensor(list(row["scores"].values())), expected, atol=1e-5)
        assert row["label"] == names[int(expected.argmax())]


# -- what is a file and what is text -------------------------------------------------------
@pytest.mark.parametrize(
    "argument, message",
    [
        ("nothere.txt", "nothere.txt: no such file or folder"),
        ("img.png", "takes text or .txt/.csv/.tsv/.jsonl/.json files of texts; img.png is an image"),
        ("bin.dat", "bin.dat is a binary data file"),
        ("reviews/missing", "reviews/missing: no such file or folder"),
    ],
)
def test_a_text_adapter_refuses_what_looks_like_a_file_it_cannot_read(tiny_run, capsys, argument, message):
    code, out, err = run_cli(capsys, "predict", tiny_run.dir, TEXTS[0], argument)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_an_existing_file_of_another_domain_is_named_by_kind(tiny_run, capsys, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "img.png")
    code, _, err = run_cli(capsys, "predict", tiny_run.dir, tmp_path / "img.png")
    assert code == 2 and f"{tmp_path / 'img.png'} is an image" in err


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
@pytest.mark.parametrize("content", ["", "\n  \n\t\n"])
def test_an_empty_or_blank_file_is_one_clear_error_in_every_format(tiny_run, capsys, tmp_path, fmt, content):
    path = tmp_path / "inputs.txt"
    path.write_text(content)
    code, out, err = run_cli(capsys, "predict", tiny_run.dir, path, "--format", fmt)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"{path}: no inputs in it (the file is empty or holds only blank lines)" in err


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_no_inputs_at_all_is_one_clear_error_in_every_format(tiny_run, capsys, fmt):
    code, out, err = run_cli(capsys, "predict", tiny_run.dir, "--format", fmt)
    assert code == 2 and out == "" and "no inputs given" in err and "Traceback" not in err


def test_words_and_text_files_of_every_layout_are_texts(tiny_run, capsys, tmp_path):
    (tmp_path / "a.txt").write_text(f"{TEXTS[0]}\n\n{TEXTS[1]}\n")
    (tmp_path / "b.tsv").write_text(f"sentence\tlabel\n{TEXTS[2]} \t1\n")  # the GLUE layout, with its header
    (tmp_path / "c.csv").write_text(f'id,text\n7,"{TEXTS[0]}"\n')
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": TEXTS[1], "label": 0}) + "\n")
    (tmp_path / "e.json").write_text(json.dumps([TEXTS[2]]))
    files = [tmp_path / name for name in ("a.txt", "b.tsv", "c.csv", "d.jsonl", "e.json")]
    rows = predict_json(capsys, tiny_run.dir, "plain words stay text", *files)
    expected_texts = ["plain words stay text", TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[0], TEXTS[1], TEXTS[2]]
    assert [row["input"] for row in rows] == expected_texts
    assert_classified(rows, model_outputs(tiny_run.dir, expected_texts), ["negative", "positive"])


def test_a_dash_reads_one_text_a_line_from_standard_input(tiny_run, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{TEXTS[0]}\n\nnot/a file.txt\n"))
    rows = predict_json(capsys, tiny_run.dir, "-")
    assert [row["input"] for row in rows] == [TEXTS[0], "not/a file.txt"]  # never read as file names
    assert_classified(rows, model_outputs(tiny_run.dir, [TEXTS[0], "not/a file.txt"]), ["negative", "positive"])
    monkeypatch.setattr("sys.stdin", io.StringIO("\n \n"))
    code, out, err = run_cli(capsys, "predict", tiny_run.dir, "-")
    assert code == 2 and out == "" and "standard input ('-') held no inputs" in err


# -- every domain -------------------------------------------------------------------------
@pytest.mark.parametrize("domain", INPUT_READERS.names())
def test_each_domain_predicts_on_its_example_files_as_its_model_does_on_what_was_written(
    runs, capsys, tmp_path, domain
):
    import zoo

    run_dir = runs[domain].dir
    built = zoo.load_run(run_dir).build()
    if hasattr(built.model, "predict_inputs"):
        pytest.skip("predicts its inputs against each other: see the video-text tests below")
    example = INPUT_READERS.get(domain).write_example(tmp_path)
    rows = predict_json(capsys, run_dir, *example.arguments)
    assert len(rows) == len(example.inputs)
    outputs = model_outputs(run_dir, example.inputs)  # the inputs as written, never read back from the files
    if "value" in rows[0]:
        assert [row["value"] for row in rows] == pytest.approx(outputs.reshape(-1).tolist(), abs=1e-5)
    else:
        assert_classified(rows, outputs, list(rows[0]["scores"]))


# -- speech ------------------------------------------------------------------------------
def test_speech_refuses_text_and_other_files(runs, capsys, tmp_path):
    run_dir = runs["speech"].dir
    code, _, err = run_cli(capsys, "predict", run_dir, "hello")
    assert code == 2 and "takes audio files (.wav/.flac/.ogg) or folders of them; 'hello' is neither" in err
    (tmp_path / "noise.wav").write_bytes(b"not audio at all")
    code, _, err = run_cli(capsys, "predict", run_dir, tmp_path / "noise.wav")
    assert code == 2 and f"{tmp_path / 'noise.wav'}: cannot read audio" in err


# -- vision ------------------------------------------------------------------------------
def vision_images(tmp_path):
    from PIL import Image

    generator = np.random.default_rng(0)
    grey = generator.integers(0, 256, (28, 28), dtype=np.uint8)
    colour = generator.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(grey).save(folder / "a.png")
    Image.fromarray(colour).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image, skipped in a folder")
    return folder, [grey, colour]


def test_vision_predictions_carry_class_names(runs, capsys, tmp_path):
    folder, arrays = vision_images(tmp_path)
    run_dir = runs["vision"].dir
    rows = predict_json(capsys, run_dir, folder / "b.png", folder)
    assert [row["input"] for row in rows] == [str(folder / name) for name in ("b.png", "a.png", "b.png")]
    reference = model_outputs(run_dir, [arrays[1], arrays[0], arrays[1]])  # the arrays, not the decoded files
    assert_classified(rows, reference, ["normal", "pneumonia"])
    code, out, err = run_cli(capsys, "predict", run_dir, folder / "a.png")
    assert code == 0, err
    assert out.split()[1] in ("normal", "pneumonia")


def test_a_pushed_vision_adapter_records_and_prints_class_names(runs, capsys, tmp_path):
    from zoo.hub.push import push

    push(runs["vision"].dir, tmp_path / "hub", log=None)
    folder, arrays = vision_images(tmp_path)
    rows = predict_json(capsys, "vision/pneumoniamnist-lora", folder, "--hub", tmp_path / "hub")
    assert_classified(rows, model_outputs(runs["vision"].dir, arrays), ["normal", "pneumonia"])


def test_a_pushed_vision_adapter_keeps_image_references_that_its_pulled_copy_must_reproduce(
    runs, tmp_path, isolated_cache
):
    import json

    import numpy as np

    import zoo.hub
    from zoo.errors import HubError
    from zoo.hub.pull import pull
    from zoo.hub.push import push
    from zoo.hub.reference import check_reference_predictions

    hub = tmp_path / "hub"
    entry = push(runs["vision"].dir, hub, log=None)
    references = entry["reference_predictions"]
    assert len(references) >= 4 and "reference_predictions_note" not in entry  # the tiny test split's rows, up to 8
    first = references[0]["input"]
    assert first["dtype"] == "uint8" and np.asarray(first["array"]).shape == tuple(first["shape"])
    name = entry["name"]
    predictor = zoo.hub.load(name, hub=hub, log=None)
    assert check_reference_predictions(predictor, pull(name, hub, log=None).entry) == len(references)
    # the stored outputs are the model's own on those arrays: the run rebuilt gives the same labels
    arrays = [np.asarray(r["input"]["array"], dtype=np.uint8) for r in references]
    logits = model_outputs(runs["vision"].dir, arrays)
    assert [r["output"]["index"] for r in references] == logits.argmax(-1).tolist()
    tampered = json.loads(json.dumps(pull(name, hub, log=None).entry))
    tampered["reference_predictions"][0]["input"]["shape"] = [1, 2]
    with pytest.raises(HubError, match="has shape"):
        check_reference_predictions(predictor, tampered)


def test_the_dataset_registry_names_classes_an_entry_lacks(runs):
    import zoo
    from zoo.hub.predict import Predictor

    built = zoo.load_run(runs["vision"].dir).build()
    predictor = Predictor(
        built.model, built.model.backbone.collate, "classification", None, "vision", "x", config=built.config
    )
    assert predictor.labels == ["normal", "pneumonia"]
    assert predictor.predict([np.zeros((28, 28), dtype=np.uint8)])[0]["label"] in ("normal", "pneumonia")


def test_vision_refuses_words_and_text_files(runs, capsys, tmp_path):
    run_dir = runs["vision"].dir
    code, _, err = run_cli(capsys, "predict", run_dir, "cat")
    assert code == 2 and "image files (" in err and "'cat' is neither a file nor a folder" in err
    (tmp_path / "x.txt").write_text("a cat\n")
    code, _, err = run_cli(capsys, "predict", run_dir, tmp_path / "x.txt")
    assert code == 2 and f"{tmp_path / 'x.txt'} is a text file" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "predict", run_dir, tmp_path / "empty")
    assert code == 2 and "a folder with no" in err


# -- protein -----------------------------------------------------------------------------
FASTA = ">first some description\nMKTAYIAKQR\nQISFVKSHFS\n\n>second\nmktayiak\n"
SEQUENCES = ["MKTAYIAKQRQISFVKSHFS", "MKTAYIAK"]  # lower case in FASTA marks soft-masking: same residues


def test_protein_reads_fasta_files_and_sequences_and_rounds_the_table(runs, capsys, tmp_path):
    (tmp_path / "p.fasta").write_text(FASTA)
    run_dir = runs["protein"].dir
    rows = predict_json(capsys, run_dir, tmp_path / "p.fasta", "GVSERTIDPK")
    assert [row["input"] for row in rows] == [
        f"{tmp_path / 'p.fasta'}:first",
        f"{tmp_path / 'p.fasta'}:second",
        "GVSERTIDPK",
    ]
    expected = model_outputs(run_dir, [*SEQUENCES, "GVSERTIDPK"]).reshape(-1)
    assert [row["value"] for row in rows] == pytest.approx(expected.tolist(), abs=1e-6)  # json: full precision
    code, out, err = run_cli(capsys, "predict", run_dir, "GVSERTIDPK")
    assert code == 0, err
    assert out.split() == ["GVSERTIDPK", f"{rows[2]['value']:.4g}"]


def test_protein_refuses_words_and_files_of_other_kinds(runs, capsys, tmp_path):
    run_dir = runs["protein"].dir
    code, _, err = run_cli(capsys, "predict", run_dir, "hello")
    assert code == 2 and "letter 'h' at residue 1" in err and "upper-case" in err
    code, _, err = run_cli(capsys, "predict", run_dir, "scan.png")
    assert code == 2 and "FASTA files (" in err and "scan.png is an image" in err
    (tmp_path / "blank.fasta").write_text("\n\n")
    code, _, err = run_cli(capsys, "predict", run_dir, tmp_path / "blank.fasta")
    assert code == 2 and "no inputs in it" in err


# -- video-text --------------------------------------------------------------------------
def test_video_text_retrieval_matches_each_query_and_clip_as_its_model_scores_the_pairs(runs, capsys, tmp_path):
    import zoo

    run_dir = runs["video_text"].dir
    example = INPUT_READERS.get("video_text").write_example(tmp_path)  # a .npy clip, a frame folder, a query
    queries = [argument for argument in example.arguments if not argument.startswith(str(tmp_path))]
    queries.append("a blue square moves to the left")
    clip_names = [argument for argument in example.arguments if argument.startswith(str(tmp_path))]
    rows = predict_json(capsys, run_dir, *clip_names, *queries)
    assert [row["input"] for row in rows] == [*clip_names, *queries]

    built = zoo.load_run(run_dir).build()
    frames = built.config.data.options["num_frames"]
    clips = [clip for clip in example.inputs if not isinstance(clip, str)]
    # the middle frame of each of `frames` equal segments of the written clip, as training samples it
    sampled = [clip[[int((i + 0.5) * len(clip) / frames) for i in range(frames)]] for clip in clips]
    pairs = [(clip, query) for clip in sampled for query in queries]
    with torch.no_grad():
        outputs = built.model(built.model.backbone.collate(pairs)).reshape(len(clips), len(queries), 2, -1)
        logits = built.model.temperature() * (outputs[..., 1, :] * outputs[..., 0, :]).sum(-1)  # (clips, queries)
    for row, expected in zip(rows, [*logits.softmax(-1), *logits.T.softmax(-1)]):
        shown = queries if row["input"] in clip_names else clip_names
        assert list(row["scores"]) == shown
        assert list(row["scores"].values()) == pytest.approx(expected.tolist(), abs=1e-5)
        assert row["label"] == shown[int(expected.argmax())]

    code, out, err = run_cli(capsys, "predict", run_dir, *clip_names, queries[0], "--format", "csv")
    assert code == 0, err
    assert out.splitlines()[0].split(",") == ["input", "label", queries[0], *clip_names]


def test_video_text_refuses_queries_alone_and_files_it_cannot_read(runs, capsys, tmp_path):
    run_dir = runs["video_text"].dir
    code, out, err = run_cli(capsys, "predict", run_dir, "a dog runs", "a cat sleeps")
    assert code == 2 and out == ""
    assert "retrieval matches text queries against clips; got 2 queries and 0 clips" in err
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    code, _, err = run_cli(capsys, "predict", run_dir, tmp_path / "broken.mp4", "a dog runs")
    assert code == 2 and f"{tmp_path / 'broken.mp4'}: " in err and ("PyAV" in err or "not a readable video" in err)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("no frames here")
    code, _, err = run_cli(capsys, "predict", run_dir, tmp_path / "notes", "a dog runs")
    assert code == 2 and "a folder with neither frame images" in err
    code, _, err = run_cli(capsys, "predict", run_dir, "img.wav", "a dog runs")
    assert code == 2 and "img.wav is an audio file" in err


def test_a_video_text_classifier_reads_clips_only_sampled_as_it_was_trained(tmp_path):
    from zoo.errors import DataError
    from zoo.hub.inputs import reader_for

    reader = reader_for("video_text", "classification", {"num_frames": 3})
    assert reader.read_argument is None and reader.read_lines is None and "queries" not in reader.takes
    clip = np.arange(6 * 4 * 5 * 3, dtype=np.uint8).reshape(6, 4, 5, 3)
    np.save(tmp_path / "clip.npy", clip)
    [(frames, name)] = reader.read_file(tmp_path / "clip.npy")
    expected = torch.from_numpy(clip[[1, 3, 5]]).permute(0, 3, 1, 2).float() / 255  # segment middles of 6 frames
    assert name == str(tmp_path / "clip.npy") and torch.allclose(frames, expected)
    with pytest.raises(DataError, match="num_frames is 0"):
        reader_for("video_text", "retrieval", {"num_frames": 0})
