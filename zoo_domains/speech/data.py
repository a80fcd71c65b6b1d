"""Speech datasets: Free Spoken Digit Dataset, Speech Commands v0.02, and a folder of labelled clips.

Every item is ``((waveform, sample_rate), label)``: the waveform a float32 tensor of shape
``(time,)`` (mono) or ``(channels, time)`` read with soundfile, at the file's own rate; the
speech backbones' ``collate`` mixes to mono and resamples to 16 kHz. Files are read when
an item is fetched; a file soundfile cannot read, or one with no samples, raises
:class:`~zoo.catalog.datasets.DataError` naming it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.catalog.datasets import DataError, DatasetSpec, RemoteFile, register_dataset

AUDIO_SUFFIXES = (".wav", ".flac")


def read_audio(path: Path) -> tuple[torch.Tensor, int]:
    """``(waveform, sample_rate)`` of an audio file; (time,) when mono, else (channels, time)."""
    import soundfile

    try:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise DataError(f"{path}: cannot read audio ({type(error).__name__}: {error})") from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: the audio is empty (0 samples)")
    waveform = torch.from_numpy(np.ascontiguousarray(data.T))
    return (waveform[0] if waveform.shape[0] == 1 else waveform), int(sample_rate)


class AudioClips(Dataset):
    """Labelled audio files, read on access."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], classes: Sequence[str]) -> None:
        for file, label in zip(files, labels):
            if not 0 <= label < len(classes):
                raise DataError(f"{file}: label {label} is out of range; allowed 0..{len(classes) - 1}")
        self.files, self.labels, self.classes = list(files), list(labels), list(classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, int], int]:
        return read_audio(self.files[index]), self.labels[index]


def write_tone(path: Path, frequency: float, seconds: float, sample_rate: int, seed: int) -> None:
    """A short noisy tone as 16-bit PCM: fixture audio whose class is audible in its pitch."""
    import soundfile

    time = np.arange(int(seconds * sample_rate)) / sample_rate
    noise = np.random.default_rng(seed).normal(0.0, 0.02, time.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(
        str(path),
        (0.4 * np.sin(2 * np.pi * frequency * time) + noise).astype(np.float32),
        sample_rate,
        subtype="PCM_16",
    )


def _no_empty(dataset: AudioClips, name: str, split: str, where: Path) -> AudioClips:
    if len(dataset) == 0:
        raise DataError(f"dataset {name}: no {split} clips under {where}")
    return dataset


# -- Free Spoken Digit Dataset -----------------------------------------------------------
# Jackson et al., github.com/Jakobovski/free-spoken-digit-dataset: 3000 recordings (6 speakers x
# 10 digits x 50), 8 kHz mono, named {digit}_{speaker}_{index}.wav. Official split: index 0-4 is
# test. Validation is carved from the rest the same way: index 5-9 is val, 10-49 train, so
# every speaker and digit is in every split and the split is the same on every machine.
FSDD_VERSION = "1.0.10"
FSDD_NAME = re.compile(r"(?P<digit>\d+)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)")
FSDD_SPLITS = {"test": range(0, 5), "val": range(5, 10), "train": range(10, 10**9)}


def load_fsdd(directory: Path, split: str) -> AudioClips:
    recordings = directory / "recordings"
    if not recordings.is_dir():
        raise DataError(
            f"dataset fsdd: {recordings} is missing; expected recordings/{{digit}}_{{speaker}}_{{index}}.wav"
        )
    files, labels = [], []
    for file in sorted(recordings.glob("*.wav")):
        match = FSDD_NAME.fullmatch(file.stem)
        if match is None:
            raise DataError(f"dataset fsdd: {file} is not named {{digit}}_{{speaker}}_{{index}}.wav")
        if int(match["index"]) in FSDD_SPLITS[split]:
            files.append(file)
            labels.append(int(match["digit"]))
    return _no_empty(AudioClips(files, labels, [str(d) for d in range(10)]), "fsdd", split, recordings)


def make_fsdd_fixture(directory: Path) -> None:
    for digit in range(10):
        for speaker in ("george", "lucas"):
            for index in (0, 5, 10, 11):  # test, val, train, train
                path = directory / "recordings" / f"{digit}_{speaker}_{index}.wav"
                write_tone(path, 200 + 60 * digit, 0.15 + 0.01 * index, 8000, seed=digit * 100 + index)


register_dataset(
    DatasetSpec(
        name="fsdd",
        domain="speech",
        task="classification",
        load=load_fsdd,
        make_fixture=make_fsdd_fixture,
        folder="fsdd",
        files=(
            RemoteFile(
                path="recordings",
                url=f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v{FSDD_VERSION}.tar.gz",
                # No checksum is published for this archive, and GitHub builds tag archives on the
                # fly (their bytes have changed before), so none is pinned.
                sha256=None,
                unpack=f"free-spoken-digit-dataset-{FSDD_VERSION}",
            ),
        ),
        num_classes=10,
        licence="CC BY-SA 4.0",
        description="Spoken digits 0-9, 6 speakers, 8 kHz; test = recording index 0-4, val = 5-9, train = 10-49.",
    )
)


# -- Speech Commands v0.02 --------------------------------------------------------------
# Warden 2018, arXiv:1804.03209: one-second 16 kHz clips of 35 words in <word>/<speaker>_nohash_<n>.wav;
# validation_list.txt and testing_list.txt name the val and test clips, the rest is train.
# Registered as 35-way word classification over all clips (not the 12-class keyword-spotting
# variant with "_unknown_" and "_silence_"); _background_noise_ is not a class.
SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # fmt: skip
SPLIT_LISTS = {"val": "validation_list.txt", "test": "testing_list.txt"}


def _read_list(directory: Path, list_name: str) -> list[str]:
    path = directory / list_name
    if not path.is_file():
        raise DataError(f"dataset speech_commands: {path} is missing")
    entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    for entry in entries:
        if not (directory / entry).is_file():
            raise DataError(f"dataset speech_commands: {path} names {entry}, which is not under {directory}")
    return entries


def load_speech_commands(directory: Path, split: str) -> AudioClips:
    word_index = {word: i for i, word in enumerate(SPEECH_COMMANDS_WORDS)}
    if split in SPLIT_LISTS:
        entries = _read_list(directory, SPLIT_LISTS[split])
    else:
        held_out = {entry for name in SPLIT_LISTS.values() for entry in _read_list(directory, name)}
        entries = sorted(
            f"{folder.name}/{file.name}"
            for folder in directory.iterdir()
            if folder.is_dir() and not folder.name.startswith("_")
            for file in folder.glob("*.wav")
            if f"{folder.name}/{file.name}" not in held_out
        )
    files, labels = [], []
    for entry in entries:
        word = entry.split("/", 1)[0]
        if word not in word_index:
            raise DataError(
                f"dataset speech_commands: {directory / entry} is in folder {word!r}, not one of the 35 words "
                f"({', '.join(SPEECH_COMMANDS_WORDS)})"
            )
        files.append(directory / entry)
        labels.append(word_index[word])
    return _no_empty(AudioClips(files, labels, SPEECH_COMMANDS_WORDS), "speech_commands", split, directory)


def make_speech_commands_fixture(directory: Path) -> None:
    """Four of the 35 word folders, three speakers each; one speaker held out for val, one for test."""
    speakers = ("0a7c2a8d", "1b4c9b89", "3bfd30e6")
    for w, word in enumerate(("yes", "no", "up", "down")):
        for s, speaker in enumerate(speakers):
            write_tone(directory / word / f"{speaker}_nohash_0.wav", 300 + 100 * w, 0.1, 16000, seed=10 * w + s)
    write_tone(directory / "_background_noise_" / "white_noise.wav", 50, 0.2, 16000, seed=99)
    (directory / "validation_list.txt").write_text(
        "".join(f"{w}/{speakers[1]}_nohash_0.wav\n" for w in ("yes", "no", "up", "down"))
    )
    (directory / "testing_list.txt").write_text(
        "".join(f"{w}/{speakers[2]}_nohash_0.wav\n" for w in ("yes", "no", "up", "down"))
    )


register_dataset(
    DatasetSpec(
        name="speech_commands",
        domain="speech",
        task="classification",
        load=load_speech_commands,
        make_fixture=make_speech_commands_fixture,
        folder="speech_commands",
        files=(
            RemoteFile(
                path="testing_list.txt",
                url="http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
                # The checksum torchaudio's SPEECHCOMMANDS dataset verifies for this file.
                sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
                unpack="",
            ),
        ),
        num_classes=len(SPEECH_COMMANDS_WORDS),
        licence="CC BY 4.0",
        description="Speech Commands v0.02: 35 spoken words, 1 s clips at 16 kHz, official val/test lists.",
    )
)


# -- A folder of your own clips -----------------------------------------------------------
def load_audio_folder(directory: Path, split: str, classes: Sequence[str] | None = None) -> AudioClips:
    """``<root>/<split>/<class>/*.wav|flac``. Classes are the sorted class folders over all splits
    (so labels agree between splits), or ``classes`` in the given order."""
    split_dir = directory / split
    if not split_dir.is_dir():
        raise DataError(f"dataset audio_folder: {split_dir} is missing; expected <root>/{split}/<class>/<clip>.wav")
    found = {
        p.name
        for s in ("train", "val", "test")
        if (directory / s).is_dir()
        for p in (directory / s).iterdir()
        if p.is_dir()
    }
    classes = list(classes) if classes is not None else sorted(found)
    index = {name: i for i, name in enumerate(classes)}
    files, labels = [], []
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise DataError(f"dataset audio_folder: class folder {folder} is not among classes {classes}")
        for file in sorted(f for f in folder.iterdir() if f.suffix.lower() in AUDIO_SUFFIXES):
            files.append(file)
            labels.append(index[folder.name])
    return _no_empty(AudioClips(files, labels, classes), "audio_folder", split, split_dir)


def make_audio_folder_fixture(directory: Path) -> None:
    for split in ("train", "val", "test"):
        for c, name in enumerate(("bird", "engine")):
            for k in range(2):
                write_tone(directory / split / name / f"clip_{k}.wav", 250 + 400 * c, 0.1, 16000, seed=c * 10 + k)


register_dataset(
    DatasetSpec(
        name="audio_folder",
        domain="speech",
        task="classification",
        load=load_audio_folder,
        make_fixture=make_audio_folder_fixture,
        folder=None,
        licence="that of your recordings",
        description="Your own clips: <root>/<split>/<class>/*.wav (or .flac), any sample rate.",
    )
)
