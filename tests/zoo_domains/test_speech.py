"""Speech domain: torchaudio wav2vec2 / HuBERT loading and batching, FSDD / Speech Commands / folder data."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import soundfile
import torch
import torchaudio.functional as AF

import zoo.peft as zp
from zoo.catalog.backbones import BACKBONES, PretrainedUnavailable, create_backbone
from zoo.catalog.datasets import DATASETS, DataError, load_dataset
from zoo.peft.structure import detect_structure
from zoo.tasks.heads import TaskModel
from zoo_domains.speech import backbones as speech
from zoo_domains.speech import data

SHARED_FSDD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fsdd"


def tiny_torchaudio_model(seed: int = 0):
    from torchaudio.models import wav2vec2_model

    torch.manual_seed(seed)
    return wav2vec2_model(**speech.TINY_PARAMS).eval()


@pytest.fixture
def tiny_bundle(monkeypatch):
    """Makes the real loading code build the tiny architecture, so tiny checkpoints stand in for the bundle's."""
    bundle = SimpleNamespace(
        _path="wav2vec2_fairseq_base_ls960.pth", _params=speech.TINY_PARAMS, _normalize_waveform=False
    )
    monkeypatch.setattr(speech, "_bundle", lambda name: bundle)
    return bundle


def legacy_weight_norm_keys(state: dict) -> dict:
    """The key names of the published .pth files (torch.nn.utils.weight_norm's weight_g / weight_v)."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("conv.parametrizations.weight.original0", "conv.weight_g")
        renamed[key.replace("conv.parametrizations.weight.original1", "conv.weight_v")] = value
    return renamed


# -- pretrained weights --------------------------------------------------------------------
@pytest.mark.parametrize("legacy_keys", [False, True])
def test_local_checkpoint_loads_through_the_real_code(tmp_path, tiny_bundle, legacy_keys):
    reference = tiny_torchaudio_model(seed=3)
    state = reference.state_dict()
    torch.save(legacy_weight_norm_keys(state) if legacy_keys else state, tmp_path / "weights.pth")
    for checkpoint in (tmp_path / "weights.pth", tmp_path):  # the file, or a folder holding it
        backbone = create_backbone("hubert_base", pretrained=checkpoint).eval()
        batch = backbone.collate(backbone.example_inputs(2))
        with torch.no_grad():
            expected, _ = reference(batch["waveforms"], batch["lengths"])
            assert torch.equal(backbone(batch), expected)


def test_checkpoint_that_is_not_a_state_dict_is_refused(tmp_path, tiny_bundle):
    torch.save({"epoch": 3}, tmp_path / "other.pth")
    with pytest.raises(PretrainedUnavailable, match="not a state dict"):
        create_backbone("wav2vec2_base", pretrained=tmp_path / "other.pth")


def test_offline_pretrained_fails_fast_and_says_how_to_pass_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch.hub cache
    calls = []

    def unreachable(url, **kwargs):
        calls.append((url, kwargs))
        raise requests.ConnectionError("network is unreachable")

    monkeypatch.setattr(requests, "get", unreachable)
    with pytest.raises(PretrainedUnavailable) as error:
        create_backbone("wav2vec2_base", pretrained=True)
    message = str(error.value)
    assert "torchaudio:WAV2VEC2_BASE" in message and "pretrained=/path/to/it" in message and ".pth" in message
    assert (
        len(calls) == 1
        and calls[0][0] == "https://download.pytorch.org/torchaudio/models/wav2vec2_fairseq_base_ls960.pth"
    )
    assert calls[0][1]["timeout"] <= 30  # one short try, no hanging on an unreachable host
    assert not list(tmp_path.rglob("*.pth"))  # nothing half-downloaded left in the cache


def test_pretrained_reads_torch_hub_cache_like_torchaudio(tmp_path, monkeypatch, tiny_bundle):
    reference = tiny_torchaudio_model(seed=5)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(legacy_weight_norm_keys(reference.state_dict()), cache / tiny_bundle._path)
    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("a cached checkpoint must not be downloaded"))
    backbone = create_backbone("wav2vec2_base", pretrained=True).eval()
    batch = backbone.collate(backbone.example_inputs(1))
    with torch.no_grad():
        assert torch.equal(backbone(batch), reference(batch["waveforms"], batch["lengths"])[0])


def test_default_size_is_the_bundle_architecture():
    with torch.device("meta"):  # shapes only, no 95M-parameter initialisation
        backbone = create_backbone("wav2vec2_base")
    assert backbone.hidden_size == 768 and backbone.min_samples == 400  # 25 ms receptive field at 16 kHz
    assert len(backbone.model.encoder.transformer.layers) == 12
    assert backbone.model.encoder.transformer.layer_drop == 0.0
    assert BACKBONES.get("wav2vec2_base").structure.matches(TaskModel(backbone, "classification", 2))
    assert "MIT" in BACKBONES.get("hubert_base").weights.licence


# -- batching and pooling -----------------------------------------------------------------------
def test_collate_resamples_8khz_to_16khz_and_mixes_to_mono():
    backbone = create_backbone("wav2vec2_base", scale="tiny")
    rng = np.random.default_rng(0)
    mono = torch.from_numpy(rng.normal(size=1234).astype(np.float32))
    stereo = torch.from_numpy(rng.normal(size=(2, 3000)).astype(np.float32))
    native = torch.from_numpy(rng.normal(size=900).astype(np.float32))
    batch = backbone.collate([(mono, 8000), (stereo.numpy(), np.int64(8000)), (native, 16000)])
    expected_mono = AF.resample(mono, 8000, 16000)
    expected_stereo = AF.resample(stereo, 8000, 16000).mean(0)
    assert len(expected_mono) == math.ceil(1234 * 16000 / 8000)
    assert batch["lengths"].tolist() == [len(expected_mono), len(expected_stereo), 900]
    assert batch["waveforms"].shape == (3, len(expected_stereo))
    torch.testing.assert_close(batch["waveforms"][0, : len(expected_mono)], expected_mono)
    torch.testing.assert_close(batch["waveforms"][1], expected_stereo, atol=1e-5, rtol=1e-5)
    assert torch.equal(batch["waveforms"][2, :900], native)
    assert batch["waveforms"][0, len(expected_mono) :].abs().sum() == 0
    assert batch["attention_mask"].sum(1).tolist() == batch["lengths"].tolist()


def test_pool_averages_exactly_the_frames_of_real_audio():
    backbone = create_backbone("hubert_base", scale="tiny").eval()
    batch = backbone.collate(backbone.example_inputs(3))
    with torch.no_grad():
        features = backbone(batch)
        pooled = backbone.pool(features, batch)
        _, frames = backbone.model(batch["waveforms"], batch["lengths"])  # torchaudio's own frame count
    assert frames.tolist() != [features.shape[1]] * 3  # the inputs differ in length
    for row, count in enumerate(frames.tolist()):
        torch.testing.assert_close(pooled[row], features[row, :count].mean(0))


def test_clip_shorter_than_the_receptive_field_still_gives_a_frame():
    backbone = create_backbone("wav2vec2_base", scale="tiny").eval()
    batch = backbone.collate([(torch.ones(10), 16000), (torch.ones(500), 16000)])
    assert batch["lengths"][0] == backbone.min_samples
    assert backbone.frame_lengths(batch["lengths"])[0] == 1
    with torch.no_grad():
        assert torch.isfinite(backbone.pool(backbone(batch), batch)).all()


@pytest.mark.parametrize(
    "example, message",
    [
        ((torch.zeros(0), 16000), "empty"),
        ((torch.zeros(2, 2, 100), 16000), "shape"),
        ((torch.zeros(100), 0), "sample_rate"),
        (torch.zeros(100), "pair"),
    ],
)
def test_collate_rejects_bad_examples(example, message):
    backbone = create_backbone("wav2vec2_base", scale="tiny")
    with pytest.raises(DataError, match=message):
        backbone.collate([(torch.ones(400), 16000), example])


def test_structure_defaults_and_prefix_placement():
    model = TaskModel(create_backbone("wav2vec2_base", scale="tiny"), "classification", 2)
    assert detect_structure(model) is speech.TORCHAUDIO_WAV2VEC2
    zp.apply(model, "lora")
    wrapped = sorted(n.split("layers.")[1] for n, m in model.named_modules() if hasattr(m, "base_layer"))
    assert wrapped == ["0.attention.q_proj", "0.attention.v_proj", "1.attention.q_proj", "1.attention.v_proj"]
    other = TaskModel(create_backbone("hubert_base", scale="tiny"), "classification", 2)
    # torchaudio's SelfAttention takes no key/value cache: prefix tuning gives each one a forward that
    # prepends the prefixes (checked against a dense reference in test_peft_attention.py), undone on unload.
    zp.apply(other, "prefix", num_virtual_tokens=2)
    attentions = [layer.attention for layer in other.backbone.model.encoder.transformer.layers]
    assert all("forward" in attention.__dict__ for attention in attentions)
    zp.unload(other)
    assert not any("forward" in attention.__dict__ for attention in attentions)


# -- datasets -----------------------------------------------------------------------------------
def test_fsdd_fixture_splits_by_recording_index(tmp_path):
    data.make_fsdd_fixture(tmp_path)
    sizes = {split: len(data.load_fsdd(tmp_path, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 40, "val": 20, "test": 20}
    test = data.load_fsdd(tmp_path, "test")
    assert all(f.stem.endswith("_0") for f in test.files)
    (waveform, sample_rate), label = test[test.files.index(tmp_path / "recordings" / "7_lucas_0.wav")]
    assert label == 7 and sample_rate == 8000 and waveform.dtype == torch.float32 and waveform.dim() == 1
    # The items feed a tiny backbone end to end.
    backbone = create_backbone("wav2vec2_base", scale="tiny")
    model = TaskModel(backbone, "classification", 10)
    logits = model(backbone.collate([test[i][0] for i in range(4)]))
    assert logits.shape == (4, 10)


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_FSDD.exists(), reason="no real FSDD copy")
def test_fsdd_real_copy_has_the_official_split():
    sizes = {split: len(load_dataset("fsdd", split, root=SHARED_FSDD.parent)) for split in ("train", "val", "test")}
    assert sizes == {"train": 2400, "val": 300, "test": 300}
    test = load_dataset("fsdd", "test", root=SHARED_FSDD.parent)
    assert np.bincount(test.labels).tolist() == [30] * 10


def test_fsdd_bad_files_are_named(tmp_path):
    data.make_fsdd_fixture(tmp_path)
    recordings = tmp_path / "recordings"
    (recordings / "3_george_12.wav").write_bytes(b"RIFF\x00\x00not a wave file")
    soundfile.write(str(recordings / "4_george_13.wav"), np.zeros(0, np.float32), 8000, subtype="PCM_16")
    train = data.load_fsdd(tmp_path, "train")
    with pytest.raises(DataError, match="3_george_12.wav.*cannot read"):
        train[train.files.index(recordings / "3_george_12.wav")]
    with pytest.raises(DataError, match="4_george_13.wav.*empty"):
        train[train.files.index(recordings / "4_george_13.wav")]
    data.write_tone(recordings / "12_george_14.wav", 300, 0.1, 8000, seed=0)
    with pytest.raises(DataError, match="12_george_14.wav: label 12 is out of range"):
        data.load_fsdd(tmp_path, "train")
    (recordings / "12_george_14.wav").rename(recordings / "george_seven.wav")
    with pytest.raises(DataError, match="george_seven.wav is not named"):
        data.load_fsdd(tmp_path, "test")


def test_fsdd_downloads_and_unpacks_the_github_archive(tmp_path, monkeypatch):
    spec = DATASETS.get("fsdd")
    remote = spec.files[0]
    data.make_fsdd_fixture(tmp_path / "source")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as handle:
        handle.add(tmp_path / "source" / "recordings", arcname=f"{remote.unpack}/recordings")
    fetched = []

    def fake_download(url, destination, sha256, what, md5=None, timeout=30.0):
        fetched.append(url)
        destination.write_bytes(archive.getvalue())
        return destination

    monkeypatch.setattr("zoo.catalog.datasets.download", fake_download)
    root = tmp_path / "root"
    assert len(load_dataset("fsdd", "test", root=root)) == 20
    assert fetched == [remote.url] and remote.url.endswith("free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz")
    assert sorted(p.name for p in (root / "fsdd").iterdir()) == ["recordings"]  # no archive or scratch left
    load_dataset("fsdd", "train", root=root)  # unpacked: no second download
    assert len(fetched) == 1


def test_speech_commands_fixture_uses_the_official_lists(tmp_path):
    data.make_speech_commands_fixture(tmp_path)
    splits = {split: data.load_speech_commands(tmp_path, split) for split in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 4, "val": 4, "test": 4}
    assert all("1b4c9b89" in f.name for f in splits["val"].files)
    assert not any("_background_noise_" in str(f) for d in splits.values() for f in d.files)
    (waveform, sample_rate), label = splits["train"][
        splits["train"].files.index(tmp_path / "yes" / "0a7c2a8d_nohash_0.wav")
    ]
    assert data.SPEECH_COMMANDS_WORDS[label] == "yes" and sample_rate == 16000 and len(data.SPEECH_COMMANDS_WORDS) == 35
    assert DATASETS.get("speech_commands").num_classes == 35


def test_speech_commands_rejects_unknown_words_and_dangling_list_entries(tmp_path):
    data.make_speech_commands_fixture(tmp_path)
    data.write_tone(tmp_path / "yess" / "0a7c2a8d_nohash_0.wav", 300, 0.1, 16000, seed=0)
    with pytest.raises(DataError, match="yess.*not one of the 35 words"):
        data.load_speech_commands(tmp_path, "train")
    (tmp_path / "testing_list.txt").write_text("no/ffffffff_nohash_9.wav\n")
    with pytest.raises(DataError, match="testing_list.txt names no/ffffffff_nohash_9.wav"):
        data.load_speech_commands(tmp_path, "test")


def test_audio_folder_labels_agree_across_splits(tmp_path):
    data.make_audio_folder_fixture(tmp_path)
    (tmp_path / "test" / "bird").rename(tmp_path / "test" / "owl")  # a class only the test split has
    data.write_tone(tmp_path / "test" / "bird" / "clip_9.wav", 250, 0.1, 16000, seed=1)
    train = load_dataset("audio_folder", "train", root=tmp_path)
    test = load_dataset("audio_folder", "test", root=tmp_path)
    assert train.classes == test.classes == ["bird", "engine", "owl"]
    assert test[test.files.index(tmp_path / "test" / "bird" / "clip_9.wav")][1] == 0
    with pytest.raises(DataError, match="owl.*not among classes"):
        data.load_audio_folder(tmp_path, "test", classes=["bird", "engine"])
    with pytest.raises(DataError, match="pass root="):
        load_dataset("audio_folder", "train")
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="val is missing"):
        load_dataset("audio_folder", "val", root=tmp_path)
