"""Registries of backbones, datasets and tasks that the domain packages fill, and checked downloads."""
