"""Turning images in any common form into normalised model inputs.

Accepted per image: a torch tensor ``(C, H, W)`` or ``(H, W)``, a numpy array ``(H, W, C)``
or ``(H, W)`` (the layout of PIL and of the MedMNIST ``.npz`` files), or a ``PIL.Image``.
Integer pixels are scaled by their type's range (uint8 / 255, uint16 / 65535); float
pixels must already lie in [0, 1]. One channel is repeated to three, an alpha channel
is dropped. Every image is resized whole (no crop: a centre crop would cut away the
edges of small medical images) to the model's input size, then normalised with the
mean and std of the model's pretrained configuration.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zoo.catalog.datasets import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# PIL reads 16-bit greyscale (common for X-ray and CT exports) into these modes.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Float pixels a little outside [0, 1] come from resampling; far outside means unscaled data.
_FLOAT_TOLERANCE = 1e-3


def _pil_to_array(image: Any) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        return np.clip(np.asarray(image, dtype=np.float64) / 65535.0, 0.0, 1.0).astype(np.float32)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image)


def _scale(values: torch.Tensor, index: int) -> torch.Tensor:
    if values.dtype == torch.uint8:
        return values.float() / 255.0
    if values.dtype == torch.bool:
        return values.float()
    if values.dtype == torch.uint16:
        return values.float() / 65535.0
    if not values.is_floating_point():
        raise DataError(
            f"image {index}: pixel type {values.dtype} is not supported; use uint8, uint16 or floats in [0, 1]"
        )
    values = values.float()
    low, high = values.min().item(), values.max().item()
    if low < -_FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
        raise DataError(
            f"image {index}: float pixels must lie in [0, 1], got [{low:.3g}, {high:.3g}]; "
            f"divide 8-bit values by 255 (or pass the uint8 array as is)"
        )
    return values.clamp(0.0, 1.0)


def to_chw_float(image: Any, index: int = 0) -> torch.Tensor:
    """One image as a float tensor (3, H, W) in [0, 1]."""
    from PIL import Image

    if isinstance(image, Image.Image):
        image = _pil_to_array(image)
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:  # torch has only limited uint16 support
            image = image.astype(np.float32) / 65535.0
        array = np.ascontiguousarray(image)
        if array.ndim == 3:
            array = np.ascontiguousarray(array.transpose(2, 0, 1))  # HWC -> CHW
        if not array.flags.writeable:  # e.g. views of PIL images; torch wants writable memory
            array = array.copy()
        tensor = torch.from_numpy(array)
    elif torch.is_tensor(image):
        tensor = image.detach().cpu()
    else:
        raise DataError(
            f"image {index}: {type(image).__name__} is not an image; pass a torch tensor (C, H, W), "
            f"a numpy array (H, W, C) or a PIL image"
        )
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3 or tensor.shape[-1] == 0 or tensor.shape[-2] == 0:
        raise DataError(f"image {index}: shape {tuple(tensor.shape)} is not (C, H, W) / (H, W, C) / (H, W)")
    channels = tensor.shape[0]
    if channels in (1, 2):  # greyscale, or greyscale + alpha
        tensor = tensor[:1].expand(3, -1, -1)
    elif channels == 4:  # RGBA
        tensor = tensor[:3]
    elif channels != 3:
        raise DataError(
            f"image {index}: {channels} channels (shape {tuple(tensor.shape)}); expected 1 (grey), 3 (RGB) or "
            f"4 (RGBA); tensors are (C, H, W), numpy arrays (H, W, C)"
        )
    return _scale(tensor, index)


def prepare_images(
    images: Sequence[Any],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """A normalised batch (B, 3, *size) from raw images of any accepted form and size."""
    if len(images) == 0:
        raise DataError("cannot collate an empty list of images")
    mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"
    resized = []
    for index, image in enumerate(images):
        pixels = to_chw_float(image, index)
        if tuple(pixels.shape[-2:]) != tuple(size):
            options = {"antialias": True, "align_corners": False} if mode != "nearest" else {}
            # bicubic overshoots at sharp edges; clamp back into the pixel range
            pixels = F.interpolate(pixels.unsqueeze(0), size=tuple(size), mode=mode, **options)[0].clamp(0.0, 1.0)
        resized.append(pixels)
    batch = torch.stack(resized)
    mean_tensor = torch.tensor(mean, dtype=batch.dtype).view(1, -1, 1, 1)
    std_tensor = torch.tensor(std, dtype=batch.dtype).view(1, -1, 1, 1)
    return (batch - mean_tensor) / std_tensor
