"""What a published adapter says about the run that made it, without a path of the machine it ran on.

A run directory speaks of its machine: ``data.root`` is a folder there, ``backbone.pretrained`` may be
a checkpoint's path (in a virtualenv's site-packages, in a Hugging Face cache), and the command names
the run's ``--out`` folder. On a hub the same facts are named portably: the data by dataset, file,
rows and sha256 (in the entry), the weights by ``distribution==version`` or hub id and revision plus
the fingerprint, and the configuration is one that ``zoo eval``/``zoo predict`` resolve on the
machine that uses it (``data.root: null``: ``--data-root`` or ``$ZOO_DATA_DIR``; ``pretrained:
true``: the installed package, the cache, ``--backbone-weights``; checked against the fingerprint).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Sequence

from zoo.experiment.config import RunConfig
from zoo.experiment.record import WeightsRecord

FLAGS_WITH_VALUE = ("--out", "--nproc")
NAMED_WEIGHTS = ("package", "hf", "checkpoint", "source")
"""Origins that ``pretrained: true`` finds again (a checkpoint: given with ``--backbone-weights``)."""


def portable_config(config: RunConfig, origin: WeightsRecord, recipe: str | None, changed: list[str]) -> str:
    """``config.yaml`` as published: the run's configuration with the data root and weights path left
    to the machine that uses it."""
    data = config.to_dict()
    data["data"]["root"] = None
    if origin.kind in NAMED_WEIGHTS:
        data["backbone"]["pretrained"] = True
    if changed:  # the recipe's description would speak of another backbone or dataset
        data["description"] = f"{recipe} with {', '.join(changed)}"
    import yaml

    header = (
        f"# resolved configuration of {recipe or 'a zoo run'}, as published on a hub: data.root is the user's "
        f"(--data-root, $ZOO_DATA_DIR);\n# the base weights are found by pretrained=true (or --backbone-weights) "
        f"and checked against the entry's fingerprint\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def is_machine_path(value: str) -> bool:
    """An absolute or home-relative path: meaningful on one machine only."""
    return value.startswith(("/", "~")) or (len(value) > 2 and value[1] == ":" and value[2] in "\\/")


def portable_command(command: str | None, recipe: str | None, name: str) -> tuple[str, list[str]]:
    """(the run's ``zoo train`` command as anyone can type it, the words left that still name a path).

    ``data.root=...`` is dropped (the data root is ``$ZOO_DATA_DIR``, or ``data.root=`` added by the user),
    a ``backbone.pretrained`` path becomes ``true`` (the weights by name, checked by fingerprint), the
    output folder is ``runs/<name>``, ``--resume`` goes, and a recipe given as a file becomes the
    published ``config.yaml``. A cell of ``zoo reproduce`` (``... # cell NAME: RECIPE OVERRIDES``) is the
    ``zoo train`` of its recipe and overrides."""
    cell = re.match(r"zoo reproduce .*?# cell \S+: (.+)$", command or "")
    words = ["zoo", "train", *shlex.split(cell.group(1))] if cell else shlex.split(command) if command else []
    if words[:2] != ["zoo", "train"] or len(words) < 3:
        words = ["zoo", "train", recipe or "config.yaml"]
    kept, left, skip = ["zoo", "train"], [], False
    recipe_word = words[2]
    if recipe_word.endswith((".yaml", ".yml")) or is_machine_path(recipe_word):
        recipe_word = "config.yaml"
    kept.append(recipe_word)
    for position, word in enumerate(words[3:], 3):
        if skip:
            skip = False
            continue
        key, equals, value = word.partition("=")
        if word == "--resume" or key == "--out" or key == "data.root":
            skip = key == "--out" and not equals
            continue
        if key in FLAGS_WITH_VALUE and not equals and position + 1 < len(words):
            kept += [word, words[position + 1]]
            skip = True
            continue
        if key == "backbone.pretrained" and value.lower() not in ("true", "false"):
            kept.append("backbone.pretrained=true")
            continue
        if is_machine_path(value or word):
            left.append(word)
        kept.append(word)
    kept += ["--out", f"runs/{name}"]
    return shlex.join(kept), left


def machine_paths(text: str, paths: Sequence[str | Path]) -> list[str]:
    """Which of ``paths`` (this machine's data root, run folder, virtualenv, home) ``text`` names."""
    return [str(p) for p in paths if p and str(p) not in ("/", ".") and str(p) in text]


def machine_path_markers(run_dir: Path, data_dir: Path | None) -> list[str]:
    """The folders of this machine that a published file must not name."""
    import sys

    markers = [str(run_dir.resolve()), str(run_dir), sys.prefix, str(Path.home()), "site-packages"]
    if data_dir is not None:
        markers += [str(Path(data_dir).resolve().parent), str(data_dir)]
    return [m for m in markers if m and m not in ("/", ".")]


def entry_weights(origin: WeightsRecord) -> dict[str, Any]:
    """The entry's ``backbone`` fields that say where the weights came from, by name only."""
    if origin.kind == "package":
        return {"local_copy": origin.label}
    if origin.kind == "hf" and origin.label is not None:  # org/repo@revision
        return {"revision": origin.label.partition("@")[2], "local_copy": f"hf-hub:{origin.label}"}
    if origin.kind == "checkpoint":
        return {"local_copy": "a local checkpoint (identified by the fingerprint)"}
    return {}
