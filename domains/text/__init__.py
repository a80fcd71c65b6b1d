"""Text domain: transformer encoders (BERT, RoBERTa, MiniLM), FLAN-T5, and text classification / generation data."""

from domains.text import backbones  # noqa: F401  (registers backbones and structures)
from domains.text import data  # noqa: F401  (registers datasets)
from domains.text import tasks  # noqa: F401
