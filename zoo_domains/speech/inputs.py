"""What ``zoo predict`` reads for speech adapters: audio files soundfile reads, or folders of them.

Each clip is handed to the backbone's ``collate`` as the ``(waveform, sample_rate)`` pair the
datasets give (at the file's own rate, every channel kept), which mixes it to mono and
resamples it to the model's rate exactly as it does the training clips.
"""

from __future__ import annotations

from pathlib import Path

from zoo.hub.inputs import InputExample, InputReader, Read, register_input_reader
from zoo_domains.speech.data import read_audio

SUFFIXES = (".wav", ".flac", ".ogg")


def read_audio_file(path: Path) -> Read:
    return [(read_audio(path), str(path))]


def write_example(folder: Path) -> InputExample:
    """A folder of a mono clip at 8 kHz and a stereo one at 16 kHz (float WAV, so every sample survives)."""
    import numpy as np
    import soundfile
    import torch

    time = np.arange(4000) / 8000
    mono = (0.4 * np.sin(2 * np.pi * 440 * time)).astype(np.float32)
    stereo = np.stack([mono, 0.5 * mono[::-1]], axis=1)  # (time, channels), as soundfile writes it
    clips = folder / "clips"
    clips.mkdir()
    soundfile.write(clips / "a.wav", mono, 8000, subtype="FLOAT")
    soundfile.write(clips / "b.wav", stereo, 16000, subtype="FLOAT")
    mono_wave, stereo_wave = torch.from_numpy(mono), torch.from_numpy(np.ascontiguousarray(stereo.T))
    written = ((mono_wave, 8000), (mono_wave, 8000), (stereo_wave, 16000))  # (time,) or (channels, time)
    return InputExample((str(clips / "a.wav"), str(clips)), written)


register_input_reader(
    InputReader(
        domain="speech",
        takes=f"audio files ({'/'.join(SUFFIXES)}) or folders of them",
        suffixes=SUFFIXES,
        read_file=read_audio_file,
        write_example=write_example,
        reads_folders=True,
    )
)
