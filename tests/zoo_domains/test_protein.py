"""Protein domain: ESM-2 backbones against fair-esm's own forward, safe checkpoint loading,
offline behaviour, PEFT structure on ESM blocks, FLIP and generic datasets, bad input."""

from __future__ import annotations

import argparse
import copy
import zipfile
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

import zoo.peft as zp
from zoo.catalog.backbones import BACKBONES, PretrainedUnavailable, create_backbone
from zoo.catalog.datasets import DATASETS, DataError, load_dataset
from zoo.catalog.registry import UnknownNameError
from zoo.errors import ConfigError
from zoo.tasks.heads import IGNORE_INDEX, TaskModel
from zoo_domains.protein import backbones as protein_backbones
from zoo_domains.protein import data as protein_data

esm = pytest.importorskip("esm")

SHARED_GB1 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flip" / "gb1"
SEQUENCES = ["MKTAYIAKQR", "GSHM", "PEELKKLLEELAKRHGW"]


def tiny_esm2(seed: int = 0):
    torch.manual_seed(seed)
    alphabet = esm.Alphabet.from_architecture("ESM-1b")
    model = esm.model.esm2.ESM2(num_layers=2, embed_dim=32, attention_heads=4, alphabet=alphabet)
    return model.eval(), alphabet


def reference_features(model, tokens: torch.Tensor) -> torch.Tensor:
    """fair-esm's own forward: the last layer's representation (after the final layer norm)."""
    with torch.no_grad():
        return model(tokens, repr_layers=[model.num_layers])["representations"][model.num_layers]


def write_fair_esm_checkpoint(model, path: Path, config_as_dict: bool = False) -> Path:
    """An ESM-2 checkpoint laid out as fair-esm publishes them (fairseq key prefixes, config
    in cfg['model'], contact-regression weights left to their separate file)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("contact_head.regression"):
            continue
        prefix = "encoder." if key.startswith("lm_head") else "encoder.sentence_encoder."
        state[prefix + key] = value.clone()
    config = dict(
        encoder_layers=model.num_layers,
        encoder_embed_dim=model.embed_dim,
        encoder_attention_heads=model.attention_heads,
        token_dropout=model.token_dropout,
    )
    torch.save({"model": state, "cfg": {"model": config if config_as_dict else argparse.Namespace(**config)}}, path)
    return path


# -- backbone -------------------------------------------------------------------------


def test_features_equal_fair_esm_forward_with_padding_and_masked_tokens():
    model, alphabet = tiny_esm2()
    reference = copy.deepcopy(model)
    backbone = protein_backbones.EsmBackbone(model, alphabet)
    batch = backbone.collate(SEQUENCES)
    batch["tokens"][0, 3] = alphabet.mask_idx  # exercises ESM-2's token-dropout rescaling
    features = backbone(batch)
    assert features.shape == (3, 2 + max(map(len, SEQUENCES)), 32) and backbone.hidden_size == 32
    torch.testing.assert_close(features, reference_features(reference, batch["tokens"]), rtol=1e-5, atol=1e-5)


def test_tokens_have_bos_eos_and_pool_averages_residues_only():
    backbone = create_backbone("esm2_t6_8m", scale="tiny").eval()
    batch = backbone.collate(SEQUENCES)
    alphabet = backbone.alphabet
    for row, sequence in enumerate(SEQUENCES):
        tokens = batch["tokens"][row]
        assert tokens[0] == alphabet.cls_idx and tokens[len(sequence) + 1] == alphabet.eos_idx
        assert (tokens[len(sequence) + 2 :] == alphabet.padding_idx).all()
        assert batch["residue_mask"][row].nonzero().flatten().tolist() == list(range(1, len(sequence) + 1))
    with torch.no_grad():
        features = backbone(batch)
        pooled = backbone.pool(features, batch)
        alone = backbone(backbone.collate(SEQUENCES[1:2]))
    for row, sequence in enumerate(SEQUENCES):
        torch.testing.assert_close(pooled[row], features[row, 1 : len(sequence) + 1].mean(0))
    # padding changes nothing: the short sequence alone gives the same residue features
    torch.testing.assert_close(features[1, : len(SEQUENCES[1]) + 2], alone[0], rtol=1e-5, atol=1e-5)
    # without residue_mask, pool finds the residues from the tokens
    torch.testing.assert_close(backbone.pool(features, {"tokens": batch["tokens"]}), pooled)


def test_collate_rejects_letters_outside_the_esm_alphabet():
    backbone = create_backbone("esm2_t6_8m", scale="tiny")
    with pytest.raises(DataError, match=r"sequence 1 of the batch: letter 'J' at residue 3"):
        backbone.collate(["MKT", "MKJL"])
    with pytest.raises(DataError, match="upper-case"):
        backbone.collate(["mkt"])
    with pytest.raises(DataError, match="empty"):
        backbone.collate([""])


def test_allowed_letters_are_fair_esms_residue_tokens():
    alphabet = esm.Alphabet.from_architecture("ESM-1b")
    letters = {t for t in alphabet.standard_toks if t.isalpha()}
    assert set(protein_backbones.PROTEIN_LETTERS) == letters


def test_variants_have_fair_esm_names_urls_and_structure():
    for name in ("esm2_t6_8m", "esm2_t12_35m", "esm2_t30_150m", "esm2_t33_650m"):
        spec = BACKBONES.get(name)
        fair_name = protein_backbones.VARIANTS[name].fair_esm_name
        assert spec.weights.source == f"esm:{fair_name}"
        assert spec.weights.url == f"https://dl.fbaipublicfiles.com/fair-esm/models/{fair_name}.pt"
        assert spec.structure.name == "fair-esm2" and "MIT" in spec.weights.licence


# -- checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("config_as_dict", [False, True])
def test_local_fair_esm_checkpoint_loads_and_matches_the_model_that_wrote_it(tmp_path, config_as_dict):
    writer, _ = tiny_esm2(seed=3)
    path = write_fair_esm_checkpoint(writer, tmp_path / "esm2_t6_8M_UR50D.pt", config_as_dict)
    with pytest.warns(UserWarning, match="2 layers of width 32"):  # the file is tiny, not the 8M model
        backbone = create_backbone("esm2_t6_8m", pretrained=path)
    with pytest.warns(UserWarning):
        from_folder = create_backbone("esm2_t6_8m", pretrained=tmp_path)
    batch = backbone.collate(SEQUENCES)
    expected = reference_features(writer, batch["tokens"])
    with torch.no_grad():
        torch.testing.assert_close(backbone(batch), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(from_folder(batch), expected, rtol=1e-5, atol=1e-5)


def test_checkpoint_needing_other_pickled_classes_is_refused(tmp_path):
    writer, _ = tiny_esm2()
    path = write_fair_esm_checkpoint(writer, tmp_path / "esm2_t6_8M_UR50D.pt")
    data = torch.load(path, weights_only=False)
    data["extra"] = Path("/not/allowed")  # any class beyond argparse.Namespace must not be unpickled
    torch.save(data, path)
    with pytest.raises(PretrainedUnavailable, match="weights_only=True"):
        create_backbone("esm2_t6_8m", pretrained=path)


def test_file_that_is_not_a_fair_esm_checkpoint_says_what_is_expected(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(PretrainedUnavailable, match="'model'.*'cfg'"):
        create_backbone("esm2_t6_8m", pretrained=tmp_path / "model.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedUnavailable, match="no .pt file"):
        create_backbone("esm2_t6_8m", pretrained=tmp_path / "empty")


def test_pretrained_without_network_fails_fast_with_what_to_do(tmp_path, monkeypatch):
    import requests

    calls = []

    def offline(url, **kwargs):
        calls.append(kwargs)
        raise requests.ConnectionError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("zoo.catalog.download.requests.get", offline)
    with pytest.raises(PretrainedUnavailable) as error:
        create_backbone("esm2_t6_8m", pretrained=True)
    message = str(error.value)
    assert "https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t6_8M_UR50D.pt" in message
    assert "pretrained=/path/to/esm2_t6_8M_UR50D.pt" in message and "scale=tiny" in message
    assert len(calls) == 1 and calls[0]["timeout"] <= 10  # one short attempt, no retries


def test_pretrained_uses_torch_hub_cache_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("zoo.catalog.download.requests.get", lambda *a, **k: pytest.fail("no download expected"))
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    writer, _ = tiny_esm2(seed=5)
    write_fair_esm_checkpoint(writer, cache / "esm2_t6_8M_UR50D.pt")
    with pytest.warns(UserWarning):
        backbone = create_backbone("esm2_t6_8m", pretrained=True)
    batch = backbone.collate(SEQUENCES)
    with torch.no_grad():
        torch.testing.assert_close(backbone(batch), reference_features(writer, batch["tokens"]), rtol=1e-5, atol=1e-5)


# -- PEFT on ESM blocks -------------------------------------------------------------------


def tiny_task(task="classification", outputs=2):
    torch.manual_seed(0)
    return TaskModel(create_backbone("esm2_t6_8m", scale="tiny"), task, outputs).eval()


def test_structure_defaults_target_q_and_v_of_every_layer():
    model = tiny_task()
    structure = BACKBONES.get("esm2_t6_8m").structure
    assert structure.block_names(model) == ["backbone.layers.0", "backbone.layers.1"]
    zp.apply(model, "lora", structure=structure, r=2)
    wrapped = sorted(n for n, m in model.named_modules() if type(m).__name__ == "LoraLinear" or hasattr(m, "lora_A"))
    assert [n for n in wrapped if n.endswith(("q_proj", "v_proj"))] == [
        f"backbone.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")
    ]
    assert not any(n.endswith(("k_proj", "out_proj", "fc1", "fc2")) for n in wrapped)


def test_prompts_on_esm_blocks_respect_padding():
    """VPT inserts prompts after <cls> in batch-first blocks and extends the padding mask, so a
    padded sequence gets the same features as alone."""
    model = tiny_task()
    zp.apply(model, "vpt", structure=BACKBONES.get("esm2_t6_8m").structure, num_prompts=3, deep=True)
    backbone = model.backbone
    batch = backbone.collate(SEQUENCES)
    with torch.no_grad():
        features = backbone(batch)
        alone = backbone(backbone.collate(SEQUENCES[1:2]))
        with zp.disabled(model):
            base = backbone(batch)
    assert features.shape == base.shape  # prompts are stripped after the last block
    assert not torch.allclose(features, base)
    torch.testing.assert_close(features[1, : len(SEQUENCES[1]) + 2], alone[0], rtol=1e-5, atol=1e-5)


def test_prefix_tuning_replaces_the_attention_forward_until_unload():
    """fair-esm's attention takes no key/value cache: prefix tuning gives it a forward that prepends
    unrotated prefix keys (checked against a dense reference in test_peft_attention.py)."""
    model = tiny_task()
    zp.apply(model, "prefix", structure=BACKBONES.get("esm2_t6_8m").structure, num_virtual_tokens=2)
    attentions = [layer.self_attn for layer in model.backbone.layers]
    assert all("forward" in attention.__dict__ for attention in attentions)
    zp.unload(model)
    assert not any("forward" in attention.__dict__ for attention in attentions)


def test_per_residue_labels_align_with_tokens_and_train(tmp_path):
    protein_data.make_flip_secondary_structure_fixture(tmp_path)
    dataset = protein_data.load_flip_secondary_structure(tmp_path, "train")
    model = tiny_task("per_residue", 3).train()
    sequences, labels = zip(*[dataset[i] for i in range(len(dataset))])
    batch = model.backbone.collate(list(sequences))
    labels = pad_sequence(list(labels), batch_first=True, padding_value=IGNORE_INDEX)
    assert labels.shape == batch["tokens"].shape
    labelled = labels != IGNORE_INDEX
    assert (labelled <= batch["residue_mask"]).all()  # never a label on <cls>, <eos> or padding
    # the fixture's mask hides each protein's first and last residue
    first = dataset[0][0]
    assert labels[0, 1] == IGNORE_INDEX and labels[0, len(first)] == IGNORE_INDEX and labelled[0, 2 : len(first)].all()
    outputs = model(batch)
    loss = model.loss(outputs, labels)
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= model.task.evaluate(outputs.detach(), labels)["q3_accuracy"] <= 1.0


# -- datasets ---------------------------------------------------------------------------


def test_gb1_fixture_splits_follow_set_and_validation_columns(tmp_path):
    protein_data.make_flip_gb1_fixture(tmp_path / "flip" / "gb1")
    splits = {s: load_dataset("flip_gb1", s, root=tmp_path, allow_download=False) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 8, "val": 2, "test": 6}
    sequence, target = splits["test"][0]
    assert isinstance(sequence, str) and target.dtype == torch.float32
    with pytest.raises(DataError, match=r"no split_name 'four_vs_rest'; available: low_vs_high, one_vs_rest"):
        protein_data.load_flip_gb1(tmp_path / "flip" / "gb1", "train", split_name="four_vs_rest")


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_GB1 / "splits.zip").exists(), reason="no real FLIP GB1 copy")
def test_gb1_real_copy_three_vs_rest():
    sizes = {s: len(protein_data.load_flip_gb1(SHARED_GB1, s)) for s in ("train", "val", "test")}
    assert sizes["test"] == 5743 and sizes["train"] + sizes["val"] + sizes["test"] == 8733
    assert len(protein_data.load_flip_gb1(SHARED_GB1, "val")[0][0]) == 265


def test_gb1_residues_keeps_that_window_of_every_sequence(tmp_path):
    folder = tmp_path / "flip" / "gb1"
    protein_data.make_flip_gb1_fixture(folder)
    whole = protein_data.load_flip_gb1(folder, "test")
    assert all(len(sequence) == 80 for sequence, _ in whole)  # GB1 (1-56) and the start of its fusion partner
    window = load_dataset("flip_gb1", "test", root=tmp_path, allow_download=False, residues="39-41")
    assert len(window) == len(whole)
    for index in range(len(whole)):
        assert window[index][0] == whole[index][0][38:41] and torch.equal(window[index][1], whole[index][1])
    # the window is an input transform: the loader reads whole sequences, the items are cut
    assert window.input_transform.as_record() == {"name": "residue_window", "parameters": {"residues": "39-41"}}
    for bad in ("41-39", "0-5", "a-b", "12"):
        with pytest.raises(ConfigError, match="expected FIRST-LAST, 1-based"):
            load_dataset("flip_gb1", "test", root=tmp_path, allow_download=False, residues=bad)
    # a sequence shorter than the window's end is an error when the split is loaded, naming the file and item
    with pytest.raises(
        DataError, match=r"three_vs_rest.csv \(test\) item 0: 80 residues, but inputs are cut to residues 70-81"
    ):
        load_dataset("flip_gb1", "test", root=tmp_path, allow_download=False, residues="70-81")


def test_a_window_that_a_hub_or_recipe_names_is_checked_by_the_registered_transform():
    from zoo.catalog.input_transforms import input_transform

    window = input_transform("residue_window", {"residues": " 01-56"})
    assert window.parameters == {"residues": "1-56"} and window("M" * 60 + "W", "x") == "M" * 56
    assert window.description == "inputs are cut to residues 1-56 before the model sees them"
    for parameters, message in (
        ({}, "needs residues=FIRST-LAST"),
        ({"residues": "1-56", "shift": 2}, "unknown parameter 'shift'"),
        ({"residues": 56}, "must be a string FIRST-LAST"),
        ({"residues": "56-1"}, "FIRST <= LAST"),
    ):
        with pytest.raises(ConfigError, match=message):
            input_transform("residue_window", parameters)
    with pytest.raises(ConfigError, match=r"unknown input transform 'residue_windw'. Did you mean 'residue_window'"):
        input_transform("residue_windw", {"residues": "1-56"})
    with pytest.raises(DataError, match=r"typed: 5 residues, but inputs are cut to residues 1-56"):
        window("MKTAY", "typed")


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_GB1 / "splits.zip").exists(), reason="no real FLIP GB1 copy")
def test_gb1_real_copy_varies_only_inside_residues_1_to_56():
    whole = protein_data.load_flip_gb1(SHARED_GB1, "test")
    window = load_dataset("flip_gb1", "test", root=SHARED_GB1.parents[1], allow_download=False, residues="1-56")
    tails = {whole[i][0][56:] for i in range(len(whole))}
    assert len(tails) == 1  # the fusion partner is the same in every variant: the window loses nothing
    assert len({window[i][0] for i in range(len(window))}) == len({whole[i][0] for i in range(len(whole))})


def test_missing_download_names_the_url(tmp_path):
    with pytest.raises(DataError, match="J-SNACKKB/FLIP/raw/main/splits/gb1/splits.zip"):
        load_dataset("flip_gb1", "train", root=tmp_path, allow_download=False)
    with pytest.raises(UnknownNameError, match="flip_gb1"):
        load_dataset("flip_gb", "train", root=tmp_path)


def _rewrite_member(archive: Path, member: str, edit) -> None:
    with zipfile.ZipFile(archive) as handle:
        contents = {n: handle.read(n).decode() for n in handle.namelist()}
    contents[member] = edit(contents[member])
    with zipfile.ZipFile(archive, "w") as handle:
        for name, text in contents.items():
            handle.writestr(name, text)


def test_gb1_bad_letter_bad_target_and_missing_column_name_file_and_line(tmp_path):
    protein_data.make_flip_gb1_fixture(tmp_path)
    archive = tmp_path / "splits.zip"
    _rewrite_member(archive, "splits/three_vs_rest.csv", lambda t: t.replace("\nMQYKL", "\nMQYJL", 1))
    with pytest.raises(DataError, match=r"splits.zip:splits/three_vs_rest.csv line 2: letter 'J' at residue 4"):
        protein_data.load_flip_gb1(tmp_path, "train")
    _rewrite_member(archive, "splits/sampled.csv", lambda t: t.replace(",1.0,", ",high,", 1))
    with pytest.raises(DataError, match=r"sampled.csv line 2: target 'high' is not a finite number"):
        protein_data.load_flip_gb1(tmp_path, "train", split_name="sampled")
    _rewrite_member(archive, "splits/one_vs_rest.csv", lambda t: t.replace("target", "fitness", 1))
    with pytest.raises(DataError, match=r"one_vs_rest.csv: missing column\(s\) target"):
        protein_data.load_flip_gb1(tmp_path, "test", split_name="one_vs_rest")


def test_corrupt_zip_is_named(tmp_path):
    (tmp_path / "splits.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DataError, match=r"splits.zip is not a readable zip archive"):
        protein_data.load_flip_gb1(tmp_path, "train")
    protein_data.make_flip_gb1_fixture(tmp_path)
    archive = tmp_path / "splits.zip"
    raw = bytearray(archive.read_bytes())
    start = raw.index(b"splits/three_vs_rest.csv") + len("splits/three_vs_rest.csv")
    raw[start + 5 : start + 40] = bytes(35)  # damage the compressed data of one member
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"splits.zip: member splits/three_vs_rest.csv cannot be read"):
        protein_data.load_flip_gb1(tmp_path, "train")


def test_secondary_structure_bad_lengths_states_and_ids(tmp_path):
    protein_data.make_flip_secondary_structure_fixture(tmp_path)
    archive = tmp_path / "splits.zip"
    _rewrite_member(archive, "splits/sampled.fasta", lambda t: t.replace("CCHHHHHHHHHHCCEEEEECCC", "CCHHHH", 1))
    with pytest.raises(DataError, match=r"sampled.fasta record 0: 6 per-residue labels for a sequence of 22 residues"):
        protein_data.load_flip_secondary_structure(tmp_path, "train")
    _rewrite_member(archive, "splits/sampled.fasta", lambda t: t.replace("CCHHHH\n", "CCHHHHHHHHHHCCEEEEECCX\n", 1))
    with pytest.raises(DataError, match=r"record 0: secondary-structure label 'X' is not allowed"):
        protein_data.load_flip_secondary_structure(tmp_path, "train")
    _rewrite_member(archive, "splits/sampled.fasta", lambda t: t.replace(">0 ", ">99 ", 1))
    with pytest.raises(DataError, match=r"record 99: no sequence with this ID"):
        protein_data.load_flip_secondary_structure(tmp_path, "train")


def test_secondary_structure_csv_form_and_label_padding(tmp_path):
    text = "sequence,target,set,validation\nMKTAY,CCHHE,train,\nGSHMW,CEEEC,train,True\nPEELK,HHHHC,test,\n"
    with zipfile.ZipFile(tmp_path / "splits.zip", "w") as archive:
        archive.writestr("splits/sampled.csv", text)
    train = protein_data.load_flip_secondary_structure(tmp_path, "train", label_padding=(0, 0))
    assert len(train) == 1 and train[0][1].tolist() == [0, 0, 2, 2, 1]
    assert protein_data.load_flip_secondary_structure(tmp_path, "val")[0][1].tolist() == [-100, 0, 1, 1, 1, 0, -100]
    with pytest.raises(DataError, match="label_padding"):
        protein_data.load_flip_secondary_structure(tmp_path, "train", label_padding=(-1, 0))


def test_own_csv_and_fasta_read_and_check_labels(tmp_path):
    for name in ("protein_csv", "protein_csv_regression", "protein_fasta", "protein_fasta_regression"):
        folder = tmp_path / name
        DATASETS.get(name).make_fixture(folder)
        dataset = load_dataset(name, "val", root=folder)
        expected = torch.long if DATASETS.get(name).task == "classification" else torch.float32
        assert len(dataset) == 6 and dataset[0][1].dtype == expected
    (tmp_path / "bad.csv").mkdir()
    (tmp_path / "bad.csv" / "train.csv").write_text("sequence,label\nMKT,0\nMKT,3\n")
    with pytest.raises(DataError, match=r"train.csv line 3: label 3 is out of range; allowed: 0..1"):
        load_dataset("protein_csv", "train", root=tmp_path / "bad.csv", num_classes=2)
    (tmp_path / "bad.csv" / "val.csv").write_text("sequence,label\nMKT,-1\n")
    with pytest.raises(DataError, match=r"val.csv line 2: label -1 is out of range"):
        load_dataset("protein_csv", "val", root=tmp_path / "bad.csv")
    (tmp_path / "bad.csv" / "test.csv").write_text("seq,label\nMKT,1\n")
    with pytest.raises(DataError, match=r"test.csv: missing column\(s\) sequence"):
        load_dataset("protein_csv", "test", root=tmp_path / "bad.csv")
    (tmp_path / "bad.fa").mkdir()
    (tmp_path / "bad.fa" / "train.fasta").write_text(">p1 label=1\nMKT\n>p2 label=0\nMK*T\n")
    with pytest.raises(DataError, match=r"train.fasta record p2: letter '\*' at residue 3"):
        load_dataset("protein_fasta", "train", root=tmp_path / "bad.fa")
    (tmp_path / "bad.fa" / "val.fasta").write_text(">p1 SET=train\nMKT\n")
    with pytest.raises(DataError, match=r"record p1: header 'p1 SET=train' has no label=VALUE"):
        load_dataset("protein_fasta_regression", "val", root=tmp_path / "bad.fa")
    with pytest.raises(DataError, match=r"test.fasta does not exist"):
        load_dataset("protein_fasta", "test", root=tmp_path / "bad.fa")
