"""Result-table tests run offline in their own folders, on small table specs they write themselves."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from zoo.cli.main import main


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_CACHE_DIR", str(tmp_path_factory.mktemp("zoo-cache")))
        patch.setenv("ZOO_DATA_DIR", str(tmp_path_factory.mktemp("empty-data-root")))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.delenv("ZOO_RECIPES_DIR", raising=False)
        yield


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def zoo(capsys):
    def run(*argv) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def write_table(folder: Path, body: str, name: str = "small") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return path


SMALL = """
name: small
baseline: full
domains:
  text: {recipe: "text/sst2-{method}", metric: accuracy}
  video_text: {recipe: "video_text/retrieval-{method}", metric: R@1}
methods:
  - full
  - bitfit
  - {label: adapter-tiny, method: adapter, overrides: [method.reduction_factor=null, method.size=tiny]}
seeds: [0]
scales:
  tiny: {overrides: [scale=tiny, train.max_steps=2]}
published:
  - {method: full, domain: text, value: 0.948, citation: "Hu et al. 2021, Table 2"}
"""


@pytest.fixture
def small_table(tmp_path) -> Path:
    """Six cells: full, bitfit and the adapter on text and video_text (where the adapter does not apply)."""
    return write_table(tmp_path, SMALL)
