"""Reading video clips stored as .npy arrays, frame folders or video files.

Every reader returns ``num_frames`` frames (F, 3, H, W), float in [0, 1], sampled uniformly:
the middle frame of each of F equal segments (as TSN and CLIP4Clip sample at test time).
Only the sampled frames are decoded. A file that cannot be read raises :class:`DataError`
naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zoo.catalog.datasets import DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def sample_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread uniformly over ``total`` frames: the middle of each of
    ``count`` equal segments (frames repeat when the clip is shorter than ``count``)."""
    return [min(total - 1, int((i + 0.5) * total / count)) for i in range(count)]


def _to_unit_float(frames: np.ndarray | torch.Tensor, path: Path) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(frames)) if not torch.is_tensor(frames) else frames
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    if not tensor.is_floating_point():
        raise DataError(f"{path}: frames must be uint8 or float in [0, 1], got {tensor.dtype}")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise DataError(f"{path}: float frames must lie in [0, 1]")
    return tensor


def _read_npy(path: Path, num_frames: int) -> torch.Tensor:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npy clip ({type(error).__name__}: {error})") from None
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or array.shape[0] == 0:
        raise DataError(f"{path}: a .npy clip must have shape (frames >= 1, height, width, 3), got {array.shape}")
    try:
        picked = np.ascontiguousarray(array[sample_indices(array.shape[0], num_frames)])
    except (ValueError, OSError) as error:  # a truncated file maps fewer bytes than its header claims
        raise DataError(f"{path}: the clip data is truncated or corrupt ({error})") from None
    return _to_unit_float(picked, path).permute(0, 3, 1, 2)


def _read_frame_folder(path: Path, num_frames: int) -> torch.Tensor:
    from PIL import Image  # not torchvision.io: its image decoding is deprecated since torchvision 0.29

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: frame folder has no {'/'.join(IMAGE_SUFFIXES)} images")
    frames = []
    for file in (files[i] for i in sample_indices(len(files), num_frames)):
        try:
            with Image.open(file) as image:
                frames.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1))
        except OSError as error:  # PIL.UnidentifiedImageError included; a truncated file raises OSError itself
            raise DataError(f"{file}: not a readable image ({str(error).splitlines()[0]})") from None
    if len({tuple(f.shape) for f in frames}) != 1:
        raise DataError(f"{path}: frames differ in size ({sorted({tuple(f.shape[1:]) for f in frames})})")
    return torch.stack(frames).float() / 255.0


def _read_video_file(path: Path, num_frames: int) -> torch.Tensor:
    try:
        import av
    except ImportError:
        raise DataError(
            f"{path}: decoding {path.suffix} needs PyAV (pip install av; torchvision no longer decodes video). "
            f"Or store the clip as a frame folder videos/<video_id>/000.png... or videos/<video_id>.npy"
        ) from None
    try:
        with av.open(str(path)) as container:
            total = container.streams.video[0].frames
        if not total:  # the container does not say: count the packets (cheap, nothing is decoded)
            with av.open(str(path)) as container:
                total = sum(1 for packet in container.demux(video=0) if packet.size)
        wanted = sample_indices(total, num_frames) if total else []
        kept: dict[int, np.ndarray] = {}
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    kept[index] = frame.to_ndarray(format="rgb24")
                if index >= max(wanted, default=-1):
                    break
    except DataError:
        raise
    except Exception as error:  # PyAV raises its own FFmpeg error types
        raise DataError(f"{path}: not a readable video ({type(error).__name__}: {error})") from None
    if not kept:
        raise DataError(f"{path}: the video has no decodable frames")
    # A container may announce more frames than decode; repeat the last decoded one for those.
    last = kept[max(kept)]
    frames = np.stack([kept.get(i, last) for i in wanted])
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def read_clip(path: Path, num_frames: int) -> torch.Tensor:
    """``num_frames`` frames (F, 3, H, W) in [0, 1] of a clip stored as .npy, a frame folder or a video file."""
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be at least 1")
    if path.is_dir():
        frames = _read_frame_folder(path, num_frames)
    elif path.suffix == ".npy":
        frames = _read_npy(path, num_frames)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        frames = _read_video_file(path, num_frames)
    else:
        raise DataError(f"{path}: unknown clip format; use .npy, a frame folder or {'/'.join(VIDEO_SUFFIXES)}")
    return frames.expand(-1, 3, -1, -1).contiguous() if frames.shape[1] == 1 else frames


def find_clip(videos: Path, video_id: str) -> Path | None:
    candidates = []
    for folder in (videos, videos / "all"):  # videos/all/ is the canonical archive's folder
        candidates += [folder / f"{video_id}.npy", folder / video_id]
        candidates += [folder / f"{video_id}{suffix}" for suffix in VIDEO_SUFFIXES]
    return next((c for c in candidates if c.exists()), None)
