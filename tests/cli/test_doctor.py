"""``zoo doctor`` and the diagnosis of a backbone library that does not load.

The broken case is the real one: a ``torchaudio`` whose ``libtorchaudio.so`` needs a symbol
this torch does not export (built with gcc when there is one, so the loader itself fails
with ``undefined symbol: torch_exception_get_what_without_backtrace``; otherwise the package
raises that loader message), put in front of the installed torchaudio on the import path.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from zoo import environment
from zoo.cli import ls

REPO = Path(__file__).resolve().parents[2]
SYMBOL = "torch_exception_get_what_without_backtrace"
LABELS = {  # label in the report -> distribution name, as the task states them (not read from zoo)
    "torch": "torch",
    "torchvision": "torchvision",
    "torchaudio": "torchaudio",
    "transformers": "transformers",
    "timm": "timm",
    "open_clip": "open_clip_torch",
    "fair-esm": "fair-esm",
    "huggingface_hub": "huggingface-hub",
    "peft": "peft",
}


def declared_pins() -> list[str]:
    """torch, torchvision and torchaudio as zoo-peft's metadata pins them, e.g. ``torch==2.14.1``."""
    pins = [r.split(";")[0].strip() for r in metadata.requires("zoo-peft")]
    found = [p for p in pins if re.match(r"(torch|torchvision|torchaudio)==", p)]
    assert len(found) == 3, pins
    return found


@pytest.fixture(scope="module")
def broken_torchaudio(tmp_path_factory) -> Path:
    """A folder holding a ``torchaudio`` package whose compiled library does not load beside this torch."""
    root = tmp_path_factory.mktemp("broken-torchaudio")
    package = root / "torchaudio"
    (package / "lib").mkdir(parents=True)
    (package / "_extension").mkdir()
    library = package / "lib" / "libtorchaudio.so"
    (package / "__init__.py").write_text("import torch\n\nfrom . import _extension  # noqa: F401\n")
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler:
        source = root / "probe.c"
        source.write_text(
            f"extern const char *{SYMBOL}(void *);\nconst char *zoo_probe(void *e) {{ return {SYMBOL}(e); }}\n"
        )
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
        loader = "import torch\n\ntorch.ops.load_library(LIBRARY)\n"
    else:
        loader = f"raise OSError(str(LIBRARY) + ': undefined symbol: {SYMBOL}')\n"
    (package / "_extension" / "__init__.py").write_text(
        f"from pathlib import Path\n\nLIBRARY = Path(__file__).parents[1] / 'lib' / 'libtorchaudio.so'\n{loader}"
    )
    return root


@pytest.fixture
def torchaudio_broken_here(broken_torchaudio, monkeypatch):
    """This process imports the broken torchaudio until the test ends (the real one is put back after)."""
    for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(broken_torchaudio))
    with pytest.raises(OSError, match="libtorchaudio.so"):
        import torchaudio  # noqa: F401
    return broken_torchaudio


def rows(out: str, section: str) -> dict[str, str]:
    """The rows of one section of the report: first word -> the rest of the line."""
    lines = out.splitlines()
    lines = lines[lines.index(section) + 1 :]
    table = {}
    for line in lines:
        if not line.startswith("  "):
            break
        name, _, rest = line.strip().partition(" ")
        table[name] = rest.strip()
    return table


def test_doctor_passes_here_and_lists_every_library_with_its_installed_version(zoo):
    code, out, err = zoo("doctor")
    assert code == 0, out + err
    versions = rows(out, "versions")
    assert versions["python"].startswith(platform.python_version())
    for label, distribution in LABELS.items():
        assert versions[label].split()[0] == metadata.version(distribution), (label, versions[label])
    assert versions["torch"].split()[1] == declared_pins()[0].removeprefix("torch")  # the range zoo declares
    checks = rows(out, "checks")
    assert set(checks) == set(LABELS)
    assert all(rest.startswith("ok ") for rest in checks.values()), checks
    assert "ops.nms" in checks["torchvision"] and "libtorchaudio" in checks["torchaudio"]
    import torch

    devices = rows(out, "devices")
    assert devices["cpu"].endswith(f"torch uses {torch.get_num_threads()} threads")
    assert devices["cuda"].startswith("available" if torch.cuda.is_available() else "not available")
    assert out.rstrip().endswith("all checks passed")


def test_doctor_reports_a_torchaudio_built_for_another_torch_with_the_fix(zoo, torchaudio_broken_here):
    code, out, _ = zoo("doctor")
    assert code == 1
    checks = rows(out, "checks")
    assert re.match(rf"FAILED\s+OSError: \S*libtorchaudio\.so: undefined symbol: {SYMBOL}", checks["torchaudio"])
    assert all(checks[name].startswith("ok ") for name in LABELS if name != "torchaudio"), checks
    assert f"torchaudio {metadata.version('torchaudio')} does not load beside torch {metadata.version('torch')}" in out
    fixes = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith(("fix:", "or:"))]
    assert any(f.endswith('-m pip install -c requirements.lock -e ".[test]"') and str(REPO) in f for f in fixes), fixes
    assert any(f.split("install ", 1)[1].split() == declared_pins() for f in fixes), fixes
    assert out.rstrip().endswith("1 check(s) failed: torchaudio")


def test_a_command_that_imports_the_broken_torchaudio_prints_the_diagnosis_not_a_traceback(broken_torchaudio, tmp_path):
    # A fresh interpreter, as a user runs it: the speech backbone imports torchaudio when it is built.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(broken_torchaudio), str(REPO)]))
    command = [sys.executable, "-m", "zoo.cli.main", "validate", "speech/digits-lora", "scale=tiny"]
    result = subprocess.run(command, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err and 'File "' not in err
    assert err.startswith(f"zoo validate: error: torchaudio {metadata.version('torchaudio')} does not load")
    assert f"undefined symbol: {SYMBOL}" in err
    assert " ".join(declared_pins()) in err and 'pip install -c requirements.lock -e ".[test]"' in err
    assert err.rstrip().endswith("run `zoo doctor` for the full report")


def test_a_torch_that_does_not_import_is_blamed_on_torch_not_on_what_imports_it(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('cannot import name _C from torch')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    doctor, demo = (
        subprocess.run(
            [sys.executable, "-m", "zoo.cli.main", *argv],
            check=False,
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        for argv in (["doctor"], ["demo", "lora"])
    )
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    checks = rows(doctor.stdout, "checks")
    assert checks["torch"].startswith("FAILED  ImportError: cannot import name _C from torch")
    assert checks["torchvision"].startswith("FAILED  torch does not load: ImportError")
    assert checks["huggingface_hub"].startswith("ok ")
    assert f"\ntorch {metadata.version('torch')} does not load\n" in doctor.stdout
    assert demo.returncode == 1 and "Traceback" not in demo.stderr
    assert demo.stderr.startswith(f"zoo demo: error: torch {metadata.version('torch')} does not load")


def test_the_same_command_passes_with_the_installed_torchaudio(zoo):
    code, out, err = zoo("validate", "speech/digits-lora", "scale=tiny")
    assert code == 0 and "valid" in out, err


def test_a_missing_torchvision_operator_is_blamed_on_torchvision():
    try:
        try:
            raise RuntimeError("operator torchvision::nms does not exist")
        except RuntimeError as inner:  # how transformers' lazy import reports it
            raise RuntimeError(
                "Failed to import transformers.models.bert.modeling_bert because of the "
                "following error (look up to see its traceback):\n" + str(inner)
            ) from inner
    except RuntimeError as error:
        problem = environment.diagnose(error)
    assert problem is not None and problem.package == "torchvision"
    assert problem.reason == "RuntimeError: operator torchvision::nms does not exist"
    assert problem.fixes[-1].split("install ", 1)[1].split() == declared_pins()


def test_errors_that_are_not_a_broken_install_are_left_alone():
    from transformers import AutoConfig

    with pytest.raises(OSError) as missing_model:  # raised from inside transformers, but the user's to fix
        AutoConfig.from_pretrained(str(Path("no-such-model-folder").resolve()))
    assert environment.diagnose(missing_model.value) is None
    assert environment.diagnose(FileNotFoundError("/x/libfoo.so")) is None
    assert environment.diagnose(RuntimeError("CUDA out of memory")) is None


def test_other_errors_in_a_command_still_raise(zoo, monkeypatch):
    def fail(args):
        raise RuntimeError("a bug, not an install problem")

    monkeypatch.setattr(ls, "run", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        zoo("ls")
