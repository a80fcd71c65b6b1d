"""zoo: a cross-domain model zoo for parameter-efficient fine-tuning."""

__version__ = "0.1.0"
