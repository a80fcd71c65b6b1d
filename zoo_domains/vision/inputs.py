"""What ``zoo predict`` reads for vision adapters: image files, or folders of them.

Each image is handed to the backbone's ``collate`` as the ``PIL.Image`` PIL decodes, in its own
mode (greyscale, RGB, 16-bit), which ``zoo_domains.vision.images`` scales and resizes exactly as it
does the training images.
"""

from __future__ import annotations

from pathlib import Path

from zoo_domains.vision.images import IMAGE_EXTENSIONS
from zoo.errors import DataError
from zoo.hub.inputs import InputReader, Read, register_input_reader

SUFFIXES = tuple(sorted({*IMAGE_EXTENSIONS, ".gif"}))


def read_image_file(path: Path) -> Read:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: not an image PIL can read ({type(error).__name__}: {error})") from None
    return [(image, str(path))]


register_input_reader(
    InputReader(
        domain="vision",
        takes=f"image files ({'/'.join(SUFFIXES)}) or folders of them",
        suffixes=SUFFIXES,
        read_file=read_image_file,
        reads_folders=True,
    )
)
