"""What ``zoo predict`` reads for speech adapters: audio files soundfile reads, or folders of them.

Each clip is handed to the backbone's ``collate`` as the ``(waveform, sample_rate)`` pair the
datasets give (at the file's own rate, every channel kept), which mixes it to mono and
resamples it to the model's rate exactly as it does the training clips.
"""

from __future__ import annotations

from pathlib import Path

from zoo_domains.speech.data import read_audio
from zoo.hub.inputs import InputReader, Read, register_input_reader

SUFFIXES = (".wav", ".flac", ".ogg")


def read_audio_file(path: Path) -> Read:
    return [(read_audio(path), str(path))]


register_input_reader(
    InputReader(
        domain="speech",
        takes=f"audio files ({'/'.join(SUFFIXES)}) or folders of them",
        suffixes=SUFFIXES,
        read_file=read_audio_file,
        reads_folders=True,
    )
)
