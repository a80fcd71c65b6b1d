"""``zoo doctor``: versions, devices, and whether every backbone library loads its compiled parts.

Prints the versions of Python, zoo and the backbone libraries (from their package metadata,
so a package that does not import still shows its version, beside the range zoo declares),
the devices torch sees, and one check per library: import it and call into its compiled code
(torchvision's ``ops.nms``, torchaudio's ``lfilter`` in libtorchaudio, transformers'
``BertModel``, ...). A library that fails is reported with the one-line reason and the
command that reinstalls the set zoo declares. Exit status 0 when every check passes, 1 when
one fails (other ``zoo`` commands that hit the same failure also exit with 1).
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from zoo.environment import Problem


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("doctor", help="check the installation: versions, devices, compiled libraries")
    parser.set_defaults(run=run)


def _table(rows: Sequence[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        (indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]).rstrip()
        for row in rows
    ]


def _versions() -> list[str]:
    from zoo import __version__
    from zoo import environment as env

    rows = [("", "version", "zoo declares", "package"), ("python", platform.python_version(), "", sys.executable)]
    root = env.checkout_root()
    rows.append(
        (
            "zoo",
            __version__,
            "",
            f"{env.DISTRIBUTION} {env.version(env.DISTRIBUTION) or '(not installed)'}"
            + (f", from {root}" if root else ""),
        )
    )
    for library in env.LIBRARIES:
        installed = env.version(library.distribution)
        allowed = env.declared_range(library.distribution)
        package = library.distribution if library.distribution != library.label else ""
        if installed is None:
            installed = "not installed" + (" (optional)" if library.optional else "")
        elif env.satisfies(installed, allowed) is False:
            package = f"{package}  <- outside the range zoo declares".lstrip()
        rows.append((library.label, installed, allowed, package))
    return _table(rows)


def run(args: argparse.Namespace) -> int:
    from zoo import environment as env

    print("versions")
    print("\n".join(_versions()))
    results = env.run_checks()  # before the device rows: a torch that does not import is reported there
    print("devices")
    print("\n".join(_table(env.devices(sys.modules.get("torch") if results[0].ok else None))))
    print("checks")
    rows = [
        (r.library.label, "ok" if r.ok else "FAILED", r.detail + ("" if r.skipped else f" ({r.seconds:.1f} s)"))
        for r in results
    ]
    print("\n".join(_table(rows)))
    problems: dict[str, Problem] = {}
    for result in results:
        if result.problem is not None:
            problems.setdefault(result.problem.package, result.problem)
    failed = [r.library.label for r in results if not r.ok]
    if not failed:
        print("all checks passed")
        return 0
    for problem in problems.values():
        print(f"\n{problem.headline()}")
        print("\n".join(problem.lines()))
    print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}")
    return 1
