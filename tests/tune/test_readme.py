"""The README's hyperparameter-search commands chain as written (at scale=tiny, with fewer trials)."""

import re
import shlex
from pathlib import Path

import pytest

from zoo.cli.main import main
from zoo.experiment import load_run
from zoo.experiment.yaml_files import read_yaml

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_tune_commands() -> list[list[str]]:
    """The ``zoo`` commands of the README's hyperparameter-search block, continuation lines joined."""
    section = README.read_text().split("## Hyperparameter search", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [words[1:] for words in commands if words and words[0] == "zoo"]


def _smaller(command: list[str]) -> list[str]:
    """The same command at scale=tiny with a tenth of the trials (at least one)."""
    if command[0] != "tune":
        return command
    trials = command.index("--trials") + 1
    command = [*command[:trials], str(max(1, int(command[trials]) // 10)), *command[trials + 1 :]]
    return command if "scale=tiny" in command else [*command[:2], "scale=tiny", *command[2:]]


@pytest.mark.slow
def test_the_readme_tune_commands_chain(tmp_path, monkeypatch, capsys):
    commands = readme_tune_commands()
    assert [c[0] for c in commands] == ["tune", "train", "tune", "tune"]
    monkeypatch.chdir(tmp_path)
    for command in map(_smaller, commands):
        assert main(command) == 0, command
    out = capsys.readouterr().out
    trained = next(c for c in commands if c[0] == "train")
    assert load_run(trained[trained.index("--out") + 1]).status == "complete"  # best.yaml was there to train
    first_study = Path(commands[0][commands[0].index("--study") + 1])
    trials = sorted((first_study / "trials").iterdir())
    assert len(trials) == 2  # --trials 10 then 20 at a tenth: the second run added one trial
    bests = re.findall(r"best: trial (\d+), .*; train it with: zoo train (\S+)", out)
    assert len(bests) == out.count("train it with: zoo train") == 3  # one per zoo tune command
    for trial, best in bests:
        # the best recipe is that trial's resolved config, its description aside
        trial_config = read_yaml(Path(best).parent / "trials" / f"trial-{int(trial):03d}" / "config.yaml")
        assert {**read_yaml(best), "description": None} == {**trial_config, "description": None}
    assert len({Path(s).parent for s in re.findall(r"train it with: zoo train (\S+)", out)}) == 2  # no collision
