"""A domain is one plug-in: a package of its own and one ``zoo.domains`` entry point, nothing in zoo.

A throwaway domain is installed the way pip installs one (a package and a ``.dist-info`` with an
``entry_points.txt``, on ``sys.path``); its backbone, dataset, task kind and input reader then
show in ``zoo ls``, ``zoo predict --help`` and what ``zoo predict`` reads, and a backbone built
from the registry runs on what its reader read.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

import zoo.catalog.domains as domains
from zoo.catalog.backbones import BACKBONES, create_backbone
from zoo.catalog.datasets import DATASETS
from zoo.cli.main import main
from zoo.errors import DataError
from zoo.hub.inputs import INPUT_READERS, read_inputs
from zoo.tasks.train_tasks import TASK_BUILDERS

TOY_PACKAGE = '''
"""Toy domain: words as letter counts."""

from pathlib import Path

import torch
from torch import nn

from zoo.catalog.backbones import register_backbone
from zoo.catalog.datasets import DatasetSpec, register_dataset
from zoo.hub.inputs import InputExample, InputReader, register_input_reader
from zoo.tasks.train_tasks import register_task_builder


class LetterCounts(nn.Module):
    hidden_size = 26

    def forward(self, batch):
        return batch["counts"].unsqueeze(1)

    def pool(self, features, batch):
        return features[:, 0]

    def collate(self, examples):
        counts = torch.zeros(len(examples), 26)
        for row, word in enumerate(examples):
            for letter in word:
                counts[row, ord(letter) - ord("a")] += 1
        return {"counts": counts}

    def example_inputs(self, count):
        return ["zoo"] * count


@register_backbone("toy_letters", domain="toy", weights=None, structure=None, description="letter counts of a word")
def toy_letters(pretrained=False, tiny=False, **options):
    return LetterCounts()


@register_task_builder("toy_spelling", "spell the word back")
def build_spelling(backbone, request):
    raise NotImplementedError


register_dataset(
    DatasetSpec(
        name="toy_words", domain="toy", task="toy_spelling", load=list, make_fixture=lambda folder: None,
        folder=None, description="words, one a line",
    )
)


def read_words(path: Path):
    return [(word, f"{path}:{word}") for word in path.read_text().split()]


def write_example(folder: Path) -> InputExample:
    (folder / "a.words").write_text("cab abc")
    return InputExample((str(folder / "a.words"), "bad"), ("cab", "abc", "bad"))


register_input_reader(
    InputReader(
        domain="toy", takes="lower-case words or .words files", suffixes=(".words",), read_file=read_words,
        write_example=write_example, read_argument=lambda word: (word, word), kinds={".words": "a word list"},
    )
)
'''


@pytest.fixture
def toy_domain(tmp_path, monkeypatch):
    """The toy domain installed as a distribution with its entry point; the registries as they were afterwards."""
    site = tmp_path / "site"
    (site / "toy_domain").mkdir(parents=True)
    (site / "toy_domain" / "__init__.py").write_text(textwrap.dedent(TOY_PACKAGE))
    info = site / "toy_domain-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-domain\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[zoo.domains]\ntoy = toy_domain\n")
    for registry in (BACKBONES, DATASETS, TASK_BUILDERS, INPUT_READERS):
        registry.names()  # the installed domains first, so the copies kept below hold them
        monkeypatch.setattr(registry, "_items", dict(registry._items))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(domains, "_names", None)  # entry points are read again on the next lookup
    yield tmp_path
    sys.modules.pop("toy_domain", None)


def test_an_installed_domain_package_is_found_through_its_entry_point_alone(toy_domain, capsys):
    def zoo(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    assert "toy" in domains.load_domains() and "text" in domains.load_domains()
    code, out, _ = zoo("ls", "backbones", "toy*")
    assert code == 0 and out.split()[:2] == ["toy_letters", "toy"] and "letter counts of a word" in out
    code, out, _ = zoo("ls", "datasets", "toy*")
    assert code == 0 and out.split()[:3] == ["toy_words", "toy", "toy_spelling"]
    code, out, _ = zoo("ls", "tasks", "toy*")
    assert code == 0 and out.split()[0] == "toy_spelling"
    with pytest.raises(SystemExit) as helped:
        main(["predict", "--help"])
    out = capsys.readouterr().out
    assert helped.value.code == 0 and "toy: lower-case words or .words files" in " ".join(out.split())


def test_the_domains_reader_reads_for_zoo_predict_and_its_backbone_takes_what_it_read(toy_domain):
    folder = toy_domain / "example"
    folder.mkdir()
    example = INPUT_READERS.get("toy").write_example(folder)
    inputs, names = read_inputs("toy", example.arguments)
    assert inputs == list(example.inputs) and names == [f"{folder / 'a.words'}:cab", f"{folder / 'a.words'}:abc", "bad"]
    features = create_backbone("toy_letters", scale="tiny")(create_backbone("toy_letters").collate(inputs))
    assert torch.equal(features[0], features[1]) and features[2, 0, 3] == 1  # anagrams count alike; 'bad' has a 'd'
    with pytest.raises(DataError, match="takes lower-case words or .words files; x.png is an image"):
        read_inputs("toy", ["x.png"])
    with pytest.raises(DataError, match="takes lower-case words or .words files; x.fasta is a FASTA file"):
        read_inputs("toy", ["x.fasta"])  # a kind the protein domain names, not the core
