"""Vision, including medical imaging: timm ViT backbones, MedMNIST and image-folder datasets."""

from zoo_domains.vision import backbones, data, inputs  # noqa: F401  (importing registers them)
