"""AntiBERTy backbone: the real weights against the antiberty package's own runner, offline loading
from the installed package, and the tiny variant's tokenisation, pooling and per-residue layout."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

import zoo.peft as zp
from zoo.catalog import backbones as catalog
from zoo.catalog.backbones import BACKBONES, create_backbone
from zoo.errors import DataError, PretrainedUnavailable
from zoo.tasks.heads import IGNORE_INDEX, TaskModel
from zoo_domains.protein import antiberty as zoo_antiberty
from zoo_domains.protein import data as protein_data

# Two human heavy-chain variable domains (trastuzumab's and a VH4 germline-like one) and a short fragment.
HEAVY_CHAINS = [
    "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS",
    "QVQLQESGPGLVKPSETLSLTCTVSGGSISSYYWSWIRQPPGKGLEWIGYIYYSGSTNYNPSLKSRVTISVDTSKNQFSLKLSSVTAADTAVYYCAR",
    "DIQMTQSPSSLSASVGDRVT",
]


def trained_models() -> Path:
    spec = importlib.util.find_spec("antiberty")
    if spec is None:
        pytest.skip(
            'the antiberty 0.1.3 package (real AntiBERTy weights; pip install "zoo-peft[pretrained]") is not installed'
        )
    return Path(spec.submodule_search_locations[0]) / "trained_models"


@pytest.fixture(scope="module")
def real_backbone():
    trained_models()
    return create_backbone("antiberty", pretrained=True).eval()


# -- the real weights ----------------------------------------------------------------------


def test_real_features_equal_the_antiberty_runner(real_backbone, monkeypatch):
    """Last-layer features of every residue and special token equal ``AntiBERTyRunner.embed`` (the package's
    own model, tokenizer and preprocessing), for sequences of different lengths padded in one batch."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from antiberty import AntiBERTyRunner

    try:
        runner = AntiBERTyRunner()
    except AttributeError as error:  # the package's own PreTrainedModel subclass predates transformers 5
        import transformers

        if int(transformers.__version__.split(".")[0]) < 5:
            raise
        pytest.skip(
            f"antiberty 0.1.3's own AntiBERTy model does not load on transformers {transformers.__version__} "
            f"({error}); the reference runs on the locked transformers 4"
        )
    runner.model, runner.device = runner.model.cpu(), torch.device("cpu")
    reference = runner.embed(HEAVY_CHAINS)  # per sequence: (L + 2, 512), [CLS] and [SEP] included
    batch = real_backbone.collate(HEAVY_CHAINS)
    with torch.no_grad():
        features = real_backbone(batch)
        pooled = real_backbone.pool(features, batch)
    for row, sequence in enumerate(HEAVY_CHAINS):
        torch.testing.assert_close(features[row, : len(sequence) + 2], reference[row], rtol=0, atol=1e-5)
        torch.testing.assert_close(pooled[row], reference[row][1:-1].mean(0), rtol=1e-5, atol=1e-5)
    # a trained model: the two heavy chains are closer to each other than to the light-chain fragment
    similarity = torch.nn.functional.cosine_similarity(pooled[:, None], pooled[None, :], dim=-1)
    assert similarity[0, 1] > similarity[0, 2] and similarity[0, 1] > similarity[1, 2]


def test_pretrained_true_reads_the_installed_package_and_names_the_extra_when_missing(real_backbone, monkeypatch):
    folder, named = catalog.package_weights(BACKBONES.get("antiberty"))
    assert named == "antiberty==0.1.3" and folder == trained_models()
    for path in (folder, folder / zoo_antiberty.MODEL_FOLDER):  # the trained_models folder or the model in it
        by_path = create_backbone("antiberty", pretrained=path)
        assert all(
            torch.equal(a, b) for a, b in zip(real_backbone.state_dict().values(), by_path.state_dict().values())
        )
    monkeypatch.setattr(catalog, "package_weights", lambda spec: None)  # as if the package were not installed
    with pytest.raises(
        PretrainedUnavailable, match=r'pip install "zoo-peft\[pretrained\]" \(or pip install antiberty==0\.1\.3\)'
    ):
        create_backbone("antiberty", pretrained=True)


def test_code_vocabulary_architecture_and_checksum_are_the_packages():
    import hashlib
    import json

    folder = trained_models()
    assert tuple((folder / "vocab.txt").read_text().split()) == zoo_antiberty.VOCABULARY
    config = json.loads((folder / zoo_antiberty.MODEL_FOLDER / "config.json").read_text())
    assert {key: config[key] for key in zoo_antiberty.ARCHITECTURE} == zoo_antiberty.ARCHITECTURE
    digest = hashlib.sha256((folder / zoo_antiberty.MODEL_FOLDER / "pytorch_model.bin").read_bytes()).hexdigest()
    assert digest == BACKBONES.get("antiberty").weights.sha256
    # random weights at full size: the same tensors by name and shape as the real encoder
    real = create_backbone("antiberty", pretrained=folder).state_dict()
    random = create_backbone("antiberty", pretrained=False).state_dict()
    assert {k: v.shape for k, v in random.items()} == {k: v.shape for k, v in real.items()}
    assert not torch.equal(
        random["model.encoder.layer.0.attention.self.query.weight"],
        real["model.encoder.layer.0.attention.self.query.weight"],
    )


def test_folder_without_antiberty_files_says_what_is_expected(tmp_path):
    with pytest.raises(PretrainedUnavailable, match="trained_models folder of the antiberty 0.1.3 package"):
        create_backbone("antiberty", pretrained=tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(zoo_antiberty.VOCABULARY))
    (tmp_path / zoo_antiberty.MODEL_FOLDER).mkdir()
    (tmp_path / zoo_antiberty.MODEL_FOLDER / "config.json").write_text('{"model_type": "bert", "vocab_size": 25}')
    with pytest.raises(PretrainedUnavailable, match="no pytorch_model.bin or model.safetensors"):
        create_backbone("antiberty", pretrained=tmp_path)


# -- the tiny variant: tokenisation, pooling, per-residue layout -----------------------------


def test_collate_writes_cls_residues_sep_and_pads():
    backbone = create_backbone("antiberty", scale="tiny")
    batch = backbone.collate(["ACDY", "WX"])
    vocabulary = {token: index for index, token in enumerate(zoo_antiberty.VOCABULARY)}
    cls, sep, pad, unk = (vocabulary[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"))
    expected = [
        [cls, vocabulary["A"], vocabulary["C"], vocabulary["D"], vocabulary["Y"], sep],
        [cls, vocabulary["W"], unk, sep, pad, pad],  # X (unknown residue) is [UNK]
    ]
    assert batch["input_ids"].tolist() == expected
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert batch["residue_mask"].tolist() == [[0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]]
    # without the collated mask, the same residues are found from the special ids and the attention mask
    assert torch.equal(
        backbone.residue_mask({k: batch[k] for k in ("input_ids", "attention_mask")}), batch["residue_mask"]
    )


def test_pool_is_the_mean_over_residues_and_padding_changes_nothing():
    torch.manual_seed(0)
    backbone = create_backbone("antiberty", scale="tiny").eval()
    sequences = ["MKTAYIAKQRQISF", "GVSE"]
    batch = backbone.collate(sequences)
    with torch.no_grad():
        features = backbone(batch)
        pooled = backbone.pool(features, batch)
        alone = backbone(backbone.collate(sequences[1:]))
    torch.testing.assert_close(pooled[1], features[1, 1:5].mean(0))
    torch.testing.assert_close(features[1, :6], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("sequence", "message"),
    [
        ("ACDB", r"letter 'B' at residue 4 is not in AntiBERTy's vocabulary"),
        ("A" * 511, r"511 residues; AntiBERTy reads at most 510"),
        ("acd", r"not in the ESM alphabet \(use upper-case"),
    ],
)
def test_collate_refuses_what_antiberty_cannot_read(sequence, message):
    backbone = create_backbone("antiberty", scale="tiny")
    with pytest.raises(DataError, match=message):
        backbone.collate(["ACD", sequence])


def test_lora_targets_query_and_value_of_every_layer():
    model = TaskModel(create_backbone("antiberty", scale="tiny"), "regression", 1)
    zp.apply(model, "lora", structure=BACKBONES.get("antiberty").structure, r=2)
    wrapped = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A"))
    assert wrapped == [
        f"backbone.model.encoder.layer.{i}.attention.self.{p}" for i in (0, 1) for p in ("query", "value")
    ]


def test_per_residue_labels_align_with_tokens_and_train(tmp_path):
    protein_data.make_flip_secondary_structure_fixture(tmp_path)
    dataset = protein_data.load_flip_secondary_structure(tmp_path, "train")
    torch.manual_seed(0)
    model = TaskModel(create_backbone("antiberty", scale="tiny"), "per_residue", 3).train()
    sequences, labels = zip(*[dataset[i] for i in range(len(dataset))])
    batch = model.backbone.collate(list(sequences))
    labels = pad_sequence(list(labels), batch_first=True, padding_value=IGNORE_INDEX)
    assert labels.shape == batch["input_ids"].shape
    labelled = labels != IGNORE_INDEX
    assert (labelled <= batch["residue_mask"]).all()  # never a label on [CLS], [SEP] or padding
    outputs = model(batch)
    assert outputs.shape[:2] == labels.shape
    loss = model.loss(outputs, labels)
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= model.task.evaluate(outputs.detach(), labels)["q3_accuracy"] <= 1.0
