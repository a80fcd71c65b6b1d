"""What zoo runs on, and whether the backbone libraries load their compiled parts.

torchvision and torchaudio ship compiled code linked against one torch release. Installed
beside another, they fail at import with a linker error (``libtorchaudio.so: undefined
symbol: torch_exception_get_what_without_backtrace``, ``operator torchvision::nms does not
exist``), often from deep inside a library that imports them. :func:`diagnose` turns such an
error into which package is broken, the one-line reason and the command that reinstalls the
set zoo declares (``pyproject.toml``, read back through ``importlib.metadata``). ``zoo doctor``
runs :func:`run_checks` and prints the full report; every other ``zoo`` command prints the
same diagnosis when it hits such an error (see ``zoo.cli.main``).

Only the standard library is imported at module level, so this works when torch does not.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import re
import shlex
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "zoo-peft"
# Released together and pinned together: never move one without the others.
TORCH_SET = ("torch", "torchvision", "torchaudio")


@dataclass(frozen=True)
class Library:
    label: str
    distribution: str
    module: str
    optional: bool = False


LIBRARIES = (
    Library("torch", "torch", "torch"),
    Library("torchvision", "torchvision", "torchvision"),
    Library("torchaudio", "torchaudio", "torchaudio"),
    Library("transformers", "transformers", "transformers"),
    Library("timm", "timm", "timm"),
    Library("open_clip", "open_clip_torch", "open_clip"),
    Library("fair-esm", "fair-esm", "esm"),
    Library("huggingface_hub", "huggingface-hub", "huggingface_hub"),
    Library("peft", "peft", "peft", optional=True),
)
_BY_MODULE = {library.module: library for library in LIBRARIES}

# Errors that mean "this library's compiled parts (or its dependencies) do not load", as
# opposed to a missing file or a network failure, which transformers also raises as OSError.
_LOAD_FAILURE = re.compile(
    r"undefined symbol|cannot open shared object|symbol not found|Library not loaded|image not found"
    r"|DLL load failed|\.so(\.\d+)*\b|\.dylib\b|\.pyd\b|operator \w+::\w+ does not exist"
    r"|Couldn't load custom C\+\+ ops|module compiled against|_ARRAY_API not found",
)
_OPERATOR = re.compile(r"operator (\w+)::\w+ does not exist")
_PACKAGE_DIR = re.compile(r"[/\\](" + "|".join(re.escape(m) for m in _BY_MODULE) + r")[/\\]")
_LIBRARY_FILE = re.compile(r"\blib(torchaudio|torchvision)\b")


def version(distribution: str) -> str | None:
    """The installed version as the package's metadata says, without importing it."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements() -> dict[str, str]:
    """zoo's own dependencies as its distribution declares them: ``{"torch": "torch==2.14.1", ...}``."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return {}
    declared = {}
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)", spec)
        if match:
            name = _canonical(match.group(1))
            if name not in declared or not marker:  # a base requirement wins over an extra's
                declared[name] = f"{match.group(1)}{match.group(3).strip()}".replace(" ", "")
    return declared


def declared_range(distribution: str) -> str:
    """The version range zoo declares for a distribution (``==2.14.1``, ``<5.25,>=4.56``), else ''."""
    requirement = declared_requirements().get(_canonical(distribution), "")
    return re.sub(r"^[A-Za-z0-9._-]+", "", requirement)


def satisfies(installed: str, allowed: str) -> bool | None:
    """Whether ``installed`` lies in ``allowed``; None when it cannot be told (no range, no ``packaging``)."""
    if not allowed:
        return None
    try:
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(allowed).contains(installed, prereleases=True)
    except Exception:  # noqa: BLE001  (no packaging, or a range it cannot parse)
        return None


def checkout_root() -> Path | None:
    """The source checkout zoo runs from, if it has the lock file (an editable install)."""
    root = Path(__file__).resolve().parents[1]
    if (root / "requirements.lock").is_file() and (root / "pyproject.toml").is_file():
        return root
    return None


def _pip() -> str:
    python = shlex.quote(sys.executable or "python")
    if importlib.util.find_spec("pip") is None:
        return f"uv pip install --python {python}"
    return f"{python} -m pip install"


def fix_commands(package: str) -> list[str]:
    """Commands that put a broken package back: the locked set from a checkout, else the declared versions."""
    commands = []
    root = checkout_root()
    if root is not None:
        commands.append(f'cd {shlex.quote(str(root))} && {_pip()} -c requirements.lock -e ".[test]"')
    declared = declared_requirements()
    names = TORCH_SET if package in TORCH_SET else (_BY_MODULE[package].distribution,)
    pins = [declared[_canonical(name)] for name in names if _canonical(name) in declared]
    if pins:
        commands.append(f"{_pip()} {' '.join(shlex.quote(pin) for pin in pins)}")
    if not commands:
        commands.append(f"{_pip()} --force-reinstall {DISTRIBUTION}")
    return commands


@dataclass
class Problem:
    """A backbone library that does not load: which one, why, and how to fix it."""

    package: str  # a module name from LIBRARIES: torchaudio, torchvision, transformers, ...
    reason: str  # one line: the exception type and the first line of its message
    fixes: list[str] = field(default_factory=list)

    def headline(self) -> str:
        library = _BY_MODULE[self.package]
        installed = version(library.distribution)
        if installed is None:
            return f"{library.label} is not installed"
        text = f"{library.label} {installed} does not load"
        torch_version = version("torch")
        if self.package in TORCH_SET and self.package != "torch" and torch_version:
            text += f" beside torch {torch_version} (built for another torch?)"
        return text

    def lines(self) -> list[str]:
        fixes = self.fixes or fix_commands(self.package)
        out = [f"  {self.reason}", f"  fix: {fixes[0]}"]
        out += [f"   or: {command}" for command in fixes[1:]]
        return out

    def report(self, prefix: str = "zoo") -> str:
        """The diagnosis a zoo command prints instead of a traceback."""
        return "\n".join([f"{prefix}: error: {self.headline()}", *self.lines(), "run `zoo doctor` for the full report"])


def one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else ''}".rstrip(": ")


def _chain(error: BaseException) -> list[BaseException]:
    """The error and what caused it, innermost first (transformers re-raises import errors as RuntimeError)."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return seen[::-1]


def _frame_packages(error: BaseException) -> list[tuple[str, bool]]:
    """(package, at module level) for each frame of a watched package the error passed through, outermost first."""
    frames = []
    tb = error.__traceback__
    while tb is not None:
        top = (tb.tb_frame.f_globals.get("__name__") or "").partition(".")[0]
        if top in _BY_MODULE:
            frames.append((top, tb.tb_frame.f_code.co_name == "<module>"))
        tb = tb.tb_next
    return frames


def _attribute(error: BaseException) -> str | None:
    """Which watched package an error comes from: named in the message, else the innermost one raising it."""
    message = str(error)
    if isinstance(error, ImportError) and error.name:
        top = error.name.partition(".")[0]
        if top in _BY_MODULE and isinstance(error, ModuleNotFoundError):
            return top
    operator = _OPERATOR.search(message)
    if operator:
        namespace = operator.group(1).lstrip("_")
        return {"image": "torchvision"}.get(namespace, namespace if namespace in _BY_MODULE else None)
    named = _LIBRARY_FILE.findall(message) or _PACKAGE_DIR.findall(message)
    if named:
        return named[-1]  # the directory nearest the failing file
    # The innermost package frame, except torch's functions (torch.ops.load_library) called by the
    # package that asked them to load something: torch itself is to blame only while it is imported.
    for package, module_level in reversed(_frame_packages(error)):
        if package != "torch" or module_level:
            return package
    return "torch" if _frame_packages(error) else None


def _is_load_failure(error: BaseException) -> bool:
    if isinstance(error, FileNotFoundError):  # a missing file, data or checkpoint: the user's to fix
        return False
    if isinstance(error, ImportError):
        return True
    return bool(_LOAD_FAILURE.search(str(error)))


def diagnose(error: BaseException) -> Problem | None:
    """A :class:`Problem` when ``error`` is a backbone library failing to load, else None.

    It is one when an ImportError, or an OSError or RuntimeError about a shared library or a
    missing compiled operator, comes from inside torch, torchvision, torchaudio, transformers,
    timm, open_clip, esm, huggingface_hub or peft (or names one of their files).
    """
    for cause in _chain(error):
        if not isinstance(cause, (ImportError, OSError, RuntimeError)) or not _is_load_failure(cause):
            continue
        package = _attribute(cause)
        if package is None:
            continue
        return Problem(package, one_line(cause), fix_commands(package))
    return None


# -- the checks of `zoo doctor` --------------------------------------------------------------
def _check_torch() -> str:
    import torch

    assert torch.equal(torch.ones(2, 2) @ torch.ones(2, 2), torch.full((2, 2), 2.0))
    return "tensor arithmetic"


def _check_torchvision() -> str:
    import torch
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    kept = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert kept.tolist() == [0, 2], kept
    return "compiled ops (ops.nms)"


def _check_torchaudio() -> str:
    import torch
    import torchaudio

    extension = getattr(torchaudio, "_extension", None)
    if extension is not None and not getattr(extension, "_IS_TORCHAUDIO_EXT_AVAILABLE", True):
        raise ImportError("torchaudio's compiled extension (libtorchaudio) is not installed")
    from torchaudio.functional import lfilter

    out = lfilter(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([1.0, -0.5]), torch.tensor([1.0, 0.0]))
    assert torch.allclose(out, torch.tensor([[1.0, 0.5, 0.25]])), out
    return "libtorchaudio (functional.lfilter)"


def _check_transformers() -> str:
    from transformers import BertModel  # noqa: F401  (loads the model code, and through it torch)

    return "model classes (BertModel)"


def _check_timm() -> str:
    import timm

    assert timm.list_models("vit_base_patch16_224*")
    return "model registry"


def _check_open_clip() -> str:
    import open_clip

    assert open_clip.list_models()
    return "model configs"


def _check_esm() -> str:
    import esm

    assert callable(esm.pretrained.esm2_t6_8M_UR50D)
    return "esm.pretrained"


def _check_huggingface_hub() -> str:
    import huggingface_hub  # noqa: F401

    return "import"


def _check_peft() -> str:
    import peft  # noqa: F401

    return "import"


CHECKS: dict[str, Callable[[], str]] = {
    "torch": _check_torch,
    "torchvision": _check_torchvision,
    "torchaudio": _check_torchaudio,
    "transformers": _check_transformers,
    "timm": _check_timm,
    "open_clip": _check_open_clip,
    "esm": _check_esm,
    "huggingface_hub": _check_huggingface_hub,
    "peft": _check_peft,
}


@dataclass
class CheckResult:
    library: Library
    ok: bool
    detail: str  # what was checked when ok, the one-line reason when not
    seconds: float
    problem: Problem | None = None
    skipped: bool = False


def run_checks() -> list[CheckResult]:
    """Import each backbone library and exercise its compiled parts; optional ones not installed are skipped."""
    results = []
    for library in LIBRARIES:
        if library.optional and version(library.distribution) is None:
            results.append(CheckResult(library, True, "not installed (optional)", 0.0, skipped=True))
            continue
        start = time.perf_counter()
        try:
            detail = CHECKS[library.module]()
        except Exception as error:  # noqa: BLE001  (every failure is reported, none stops the others)
            problem = diagnose(error) or Problem(library.module, one_line(error), fix_commands(library.module))
            reason = problem.reason  # the root cause (torch wraps a loader's OSError in another)
            if problem.package != library.module:
                reason = f"{_BY_MODULE[problem.package].label} does not load: {reason}"
            results.append(CheckResult(library, False, reason, time.perf_counter() - start, problem))
        else:
            results.append(CheckResult(library, True, detail, time.perf_counter() - start))
    return results


def _cudnn(number: int | None) -> str:
    if not number:
        return "none"
    major, rest = divmod(number, 10000 if number >= 10000 else 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def devices(torch: types.ModuleType | None = None) -> list[tuple[str, str]]:
    """(name, description) rows: CPU, CUDA, MPS. ``torch`` is imported here unless given."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = [("cpu", f"{platform.machine() or '?'}, {cores} cores available")]
    if torch is None:
        try:
            torch = importlib.import_module("torch")
        except Exception as error:  # noqa: BLE001
            rows.append(("torch", f"does not import: {one_line(error)}"))
            return rows
    rows[0] = ("cpu", rows[0][1] + f", torch uses {torch.get_num_threads()} threads")
    built = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else "torch built without CUDA"
    try:
        cudnn = _cudnn(torch.backends.cudnn.version())
    except Exception:  # noqa: BLE001
        cudnn = "unknown"
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        rows.append(("cuda", f"available: {count} device(s), CUDA {torch.version.cuda}, cuDNN {cudnn}"))
        for index in range(count):
            props = torch.cuda.get_device_properties(index)
            memory = f"{props.total_memory / 2**30:.0f} GiB"
            rows.append((f"cuda:{index}", f"{props.name}, {memory}, compute capability {props.major}.{props.minor}"))
    else:
        rows.append(("cuda", f"not available ({built}" + (f", cuDNN {cudnn})" if torch.version.cuda else ")")))
    mps = getattr(torch.backends, "mps", None)
    rows.append(("mps", "available" if mps is not None and mps.is_available() else "not available"))
    return rows
