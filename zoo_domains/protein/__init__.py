"""Protein domain: ESM-2 backbones (fair-esm) and FLIP / your own sequence datasets."""

from zoo_domains.protein import backbones, data, inputs, prefix_attention  # noqa: F401  (importing registers them)
