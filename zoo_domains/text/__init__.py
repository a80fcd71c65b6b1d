"""Text domain: transformer encoders (BERT, RoBERTa, MiniLM), FLAN-T5, and text classification / generation data."""

from zoo_domains.text import (
    backbones,  # noqa: F401  (registers backbones and structures)
    data,  # noqa: F401  (registers datasets)
    inputs,  # noqa: F401  (registers what zoo predict reads)
    tasks,  # noqa: F401
)
