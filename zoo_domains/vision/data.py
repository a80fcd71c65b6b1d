"""Image classification data: the 2D MedMNIST collection and any folder of labelled images.

MedMNIST (Yang et al. 2023, "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D
biomedical image classification", Scientific Data 10:41; v3 files on Zenodo record 10519652):
one ``.npz`` per dataset with ``{train,val,test}_images`` (N, 28, 28) or (N, 28, 28, 3) uint8
and ``{train,val,test}_labels`` (N, 1) class indices (or (N, L) 0/1 for multi-label sets),
kept under ``<data root>/medmnist/<name>.npz``. Upstream publishes MD5s only (``INFO`` in
``medmnist/info.py`` of medmnist 3.0.2, matching the record-10519652 URLs); those are verified.
Items are ``(uint8 array (H, W[, 3]), label)``, which the vision backbones' ``collate`` takes.

``pneumoniamnist_subset`` reads ``medmnist/pneumoniamnist_subset.npz``, a smaller copy in the
same layout (e.g. the one shipped with the shared offline data). It is checked against the
official PneumoniaMNIST file, so a subset loads with a ChecksumWarning instead of an error;
when it is missing, the official file is downloaded under that name.

``image_folder`` reads your own images, ImageFolder style: ``<root>/<split>/<class>/<image>``
(or, for the train split only, ``<root>/<class>/<image>`` when there are no split folders).
Class indices follow the sorted class folder names over all splits, so every split agrees.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.catalog.datasets import DataError, DatasetSpec, RemoteFile, register_dataset
from zoo_domains.vision.images import IMAGE_EXTENSIONS

MEDMNIST_FOLDER = "medmnist"
MEDMNIST_RECORD = "https://zenodo.org/records/10519652/files"
SPLITS = ("train", "val", "test")
FIXTURE_SIZES = {"train": 8, "val": 4, "test": 4}


# -- MedMNIST --------------------------------------------------------------------------
class MedMNISTDataset(Dataset):
    """One split of a MedMNIST ``.npz``: items ``(image uint8 (H, W[, C]), label)``; ``classes[i]`` names
    class i (what a pushed adapter records and ``zoo predict`` prints)."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, multi_label: bool, classes: Sequence[str] | None = None
    ) -> None:
        self.images = images
        self.classes = list(classes) if classes is not None else None
        self.multi_label = multi_label
        self.labels = labels.astype(np.float32) if multi_label else labels.reshape(-1).astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        label = torch.from_numpy(self.labels[index]) if self.multi_label else int(self.labels[index])
        return self.images[index], label


def _read_npz(file: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    if not file.is_file():
        raise DataError(f"MedMNIST file {file} does not exist")
    try:
        with np.load(file, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(
                    f"{file} lacks {', '.join(missing)}; it has {', '.join(archive.files) or 'no arrays'} "
                    f"(a MedMNIST file holds {{train,val,test}}_{{images,labels}})"
                )
            return {k: archive[k] for k in keys}
    except DataError:
        raise
    except Exception as error:  # numpy raises anything from ValueError to tokenize errors on damaged headers
        raise DataError(f"{file} is not a readable .npz archive ({type(error).__name__}: {error})") from None


def _check_labels(labels: np.ndarray, num_classes: int, multi_label: bool, where: str) -> None:
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
        if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
            raise DataError(f"{where}: labels must be integers, got {labels.dtype}")
    if multi_label:
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise DataError(f"{where}: multi-label labels must be (N, {num_classes}), got {labels.shape}")
        bad = ~np.isin(labels, (0, 1))
    else:
        if labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 1):
            raise DataError(f"{where}: labels must be (N,) or (N, 1) class indices, got shape {labels.shape}")
        bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        rows = np.nonzero(bad.reshape(len(labels), -1).any(axis=1))[0]
        allowed = "0 or 1" if multi_label else f"0..{num_classes - 1}"
        raise DataError(
            f"{where}: {len(rows)} label(s) out of range (allowed {allowed}), e.g. row {rows[0]} = "
            f"{labels[rows[0]].tolist()}"
        )


def load_medmnist(
    directory: Path,
    split: str,
    *,
    filename: str,
    num_classes: int,
    multi_label: bool = False,
    classes: Sequence[str] | None = None,
) -> MedMNISTDataset:
    file = Path(directory) / filename
    arrays = _read_npz(file, (f"{split}_images", f"{split}_labels"))
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    where = f"{file} ({split} split)"
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))):
        raise DataError(f"{where}: images must be (N, H, W) or (N, H, W, 3), got {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    _check_labels(labels, num_classes, multi_label, where)
    return MedMNISTDataset(images, labels, multi_label, classes)


def write_medmnist_fixture(
    directory: Path, *, filename: str, num_classes: int, channels: int, multi_label: bool = False
) -> None:
    """A tiny random copy of a MedMNIST file in the real layout (uint8 images, (N, 1) uint8 labels)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    arrays = {}
    for split, count in FIXTURE_SIZES.items():
        shape = (count, 28, 28) if channels == 1 else (count, 28, 28, channels)
        arrays[f"{split}_images"] = generator.integers(0, 256, shape, dtype=np.uint8)
        if multi_label:
            arrays[f"{split}_labels"] = generator.integers(0, 2, (count, num_classes), dtype=np.uint8)
        else:
            arrays[f"{split}_labels"] = (np.arange(count) % num_classes).astype(np.uint8).reshape(count, 1)
    np.savez_compressed(directory / filename, **arrays)


class MedMNISTFile(NamedTuple):
    md5: str
    """As published in ``INFO`` of medmnist 3.0.2 for the record-10519652 file."""
    channels: int
    classes: tuple[str, ...]
    licence: str
    description: str


ORGANS = (
    "bladder",
    "femur-left",
    "femur-right",
    "heart",
    "kidney-left",
    "kidney-right",
    "liver",
    "lung-left",
    "lung-right",
    "pancreas",
    "spleen",
)
MEDMNIST = {
    "pneumoniamnist": MedMNISTFile(
        "28209eda62fecd6e6a2d98b1501bb15f",
        1,
        ("normal", "pneumonia"),
        "CC BY 4.0",
        "paediatric chest X-ray, pneumonia vs normal (4708/524/624)",
    ),
    "breastmnist": MedMNISTFile(
        "750601b1f35ba3300ea97c75c52ff8f6",
        1,
        ("malignant", "normal, benign"),
        "CC BY 4.0",
        "breast ultrasound, malignant vs normal/benign (546/78/156)",
    ),
    "dermamnist": MedMNISTFile(
        "0744692d530f8e62ec473284d019b0c7",
        3,
        (
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        "CC BY-NC 4.0",
        "dermatoscopy (HAM10000), 7 skin lesion classes (7007/1003/2005)",
    ),
    "bloodmnist": MedMNISTFile(
        "7053d0359d879ad8a5505303e11de1dc",
        3,
        (
            "basophil",
            "eosinophil",
            "erythroblast",
            "immature granulocytes",
            "lymphocyte",
            "monocyte",
            "neutrophil",
            "platelet",
        ),
        "CC BY 4.0",
        "blood cell microscopy, 8 cell types (11959/1712/3421)",
    ),
    "organamnist": MedMNISTFile(
        "68e3f8846a6bd62f0c9bf841c0d9eacc",
        1,
        ORGANS,
        "CC BY 4.0",
        "abdominal CT, axial view, 11 organs (34561/6491/17778)",
    ),
    "organcmnist": MedMNISTFile(
        "b9ceb9546e10131b32923c5bbeaea2b1",
        1,
        ORGANS,
        "CC BY 4.0",
        "abdominal CT, coronal view, 11 organs (12975/2392/8216)",
    ),
    "organsmnist": MedMNISTFile(
        "9ab87b696fb54e2a387ebe992d6ed5f1",
        1,
        ORGANS,
        "CC BY 4.0",
        "abdominal CT, sagittal view, 11 organs (13932/2452/8827)",
    ),
    "octmnist": MedMNISTFile(
        "c68d92d5b585d8d81f7112f81e2d0842",
        1,
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        "CC BY 4.0",
        "retinal OCT, 4 diagnoses (97477/10832/1000)",
    ),
    "pathmnist": MedMNISTFile(
        "a8b06965200029087d5bd730944a56c1",
        3,
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth muscle",
            "normal colon mucosa",
            "cancer-associated stroma",
            "colorectal adenocarcinoma epithelium",
        ),
        "CC BY 4.0",
        "colon pathology (NCT-CRC-HE), 9 tissue types (89996/10004/7180)",
    ),
    "tissuemnist": MedMNISTFile(
        "ebe78ee8b05294063de985d821c1c34b",
        1,
        (
            "collecting duct, connecting tubule",
            "distal convoluted tubule",
            "glomerular endothelial cells",
            "interstitial endothelial cells",
            "leukocytes",
            "podocytes",
            "proximal tubule segments",
            "thick ascending limb",
        ),
        "CC BY 4.0",
        "kidney cortex cell microscopy, 8 types (165466/23640/47280)",
    ),
    # Ordinal 5-level grading upstream; MedMNIST reports it with the multi-class AUC and ACC.
    "retinamnist": MedMNISTFile(
        "bd4c0672f1bba3e3a89f0e4e876791e4",
        3,
        ("0", "1", "2", "3", "4"),
        "CC BY 4.0",
        "fundus photographs, diabetic retinopathy grade 0-4 (1080/120/400)",
    ),
}
# chestmnist (14 labels per image) is not registered: zoo.tasks.heads has no multi-label task yet;
# load_medmnist(..., multi_label=True) already reads it.


def _register_medmnist(name: str, filename: str, official: str, info: MedMNISTFile, description: str) -> None:
    options = {"filename": filename, "num_classes": len(info.classes)}
    register_dataset(
        DatasetSpec(
            name=name,
            domain="vision",
            task="classification",
            load=functools.partial(load_medmnist, classes=info.classes, **options),
            make_fixture=functools.partial(write_medmnist_fixture, channels=info.channels, **options),
            folder=MEDMNIST_FOLDER,
            files=(RemoteFile(filename, f"{MEDMNIST_RECORD}/{official}.npz?download=1", md5=info.md5),),
            splits=SPLITS,
            num_classes=len(info.classes),
            licence=info.licence,
            description=f"MedMNIST {description}, 28x28",
            extras={"classes": info.classes, "channels": info.channels, "metrics": ("auroc", "accuracy")},
        )
    )


for _name, _info in MEDMNIST.items():
    _register_medmnist(_name, f"{_name}.npz", _name, _info, _info.description)

# The shared offline copy is a subset of PneumoniaMNIST (2428/270/468 images): same layout,
# checked against the official file's MD5 so that it loads with a ChecksumWarning.
_register_medmnist(
    "pneumoniamnist_subset",
    "pneumoniamnist_subset.npz",
    "pneumoniamnist",
    MEDMNIST["pneumoniamnist"],
    "PneumoniaMNIST, a local subset in the official layout (the official file if downloaded)",
)


# -- image folders ---------------------------------------------------------------------
class ImageFolderDataset(Dataset):
    """``(PIL image, class index)`` for every image file under ``<split root>/<class>/``."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str]) -> None:
        self.samples = samples
        self.classes = classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"image folder: cannot read image {path} ({type(error).__name__}: {error})") from None
        return image, label


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_root(directory: Path, split: str) -> Path:
    if (directory / split).is_dir():
        return directory / split
    has_split_folders = any((directory / s).is_dir() for s in SPLITS)
    if split == "train" and not has_split_folders:
        return directory
    raise DataError(
        f"image folder {directory}: no {split}/ folder; expected <root>/{{train,val,test}}/<class>/<image> "
        f"(or <root>/<class>/<image>, read as the train split)"
    )


def load_image_folder(directory: Path, split: str, classes: Sequence[str] | None = None) -> ImageFolderDataset:
    directory = Path(directory)
    split_root = _split_root(directory, split)
    if classes is None:
        roots = [directory / s for s in SPLITS if (directory / s).is_dir()] or [directory]
        classes = sorted({p.name for root in roots for p in _class_folders(root)})
    classes = list(classes)
    if not classes:
        raise DataError(f"image folder {split_root}: no class folders found (expected <class>/<image> inside it)")
    index_of = {name: i for i, name in enumerate(classes)}
    samples = []
    for class_folder in _class_folders(split_root):
        if class_folder.name not in index_of:
            raise DataError(
                f"image folder {split_root}: class folder {class_folder.name!r} is not one of the "
                f"{len(classes)} classes {classes[:10]}"
            )
        for path in sorted(class_folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                samples.append((path, index_of[class_folder.name]))
    if not samples:
        raise DataError(f"image folder {split_root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return ImageFolderDataset(samples, classes)


def write_image_folder_fixture(directory: Path) -> None:
    """Two classes, greyscale and RGB PNGs of different sizes, in train/val/test folders."""
    from PIL import Image

    generator = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1), ("test", 1)):
        for class_name in ("benign", "malignant"):
            folder = Path(directory) / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                if index % 2 == 0:
                    pixels = generator.integers(0, 256, (28, 28), dtype=np.uint8)
                else:
                    pixels = generator.integers(0, 256, (40, 36, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{class_name}_{index}.png")


register_dataset(
    DatasetSpec(
        name="image_folder",
        domain="vision",
        task="classification",
        load=load_image_folder,
        make_fixture=write_image_folder_fixture,
        folder=None,
        splits=SPLITS,
        description="your own labelled images: <root>/<split>/<class>/<image> (root = data.root)",
    )
)
