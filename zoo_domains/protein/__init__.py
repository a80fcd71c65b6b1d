"""Protein domain: ESM-2 backbones (fair-esm), AntiBERTy (antiberty package) and FLIP / your own sequence datasets."""

from zoo_domains.protein import (  # noqa: F401  (importing registers them)
    antiberty,
    backbones,
    data,
    inputs,
    prefix_attention,
    transforms,
)
