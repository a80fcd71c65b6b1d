"""What ``zoo predict`` reads for vision adapters: image files, or folders of them.

Each image is handed to the backbone's ``collate`` as the ``PIL.Image`` PIL decodes, in its own
mode (greyscale, RGB, 16-bit), which ``zoo_domains.vision.images`` scales and resizes exactly as it
does the training images.
"""

from __future__ import annotations

from pathlib import Path

from zoo.errors import DataError
from zoo.hub.inputs import InputExample, InputReader, Read, register_input_reader
from zoo_domains.vision.images import IMAGE_EXTENSIONS

SUFFIXES = tuple(sorted({*IMAGE_EXTENSIONS, ".gif"}))


def read_image_file(path: Path) -> Read:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: not an image PIL can read ({type(error).__name__}: {error})") from None
    return [(image, str(path))]


def write_example(folder: Path) -> InputExample:
    """A folder of a greyscale and a colour PNG (and a text file, which a folder read skips)."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    grey = generator.integers(0, 256, (28, 28), dtype=np.uint8)
    colour = generator.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    images = folder / "images"
    images.mkdir()
    Image.fromarray(grey).save(images / "a.png")
    Image.fromarray(colour).save(images / "b.png")
    (images / "notes.txt").write_text("not an image, skipped in a folder")
    return InputExample((str(images / "b.png"), str(images)), (colour, grey, colour))


register_input_reader(
    InputReader(
        domain="vision",
        takes=f"image files ({'/'.join(SUFFIXES)}) or folders of them",
        suffixes=SUFFIXES,
        read_file=read_image_file,
        write_example=write_example,
        reads_folders=True,
    )
)
