"""``zoo pull NAME[@VERSION] [--hub URL]``: fetch an adapter into the cache, sha256 verified.

Without ``--hub``, the hubs of ``ZOO_HUB`` (comma-separated) are searched, then the default hub
that ships with zoo. An interrupted download resumes; offline (``ZOO_OFFLINE=1`` or no network)
an adapter pulled before is served from the cache. ``hf://org/repo[@revision]`` pulls a PEFT
adapter from the Hugging Face Hub.
"""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("pull", help="fetch an adapter from a hub into the local cache (verified)")
    parser.add_argument("name", help="<domain>/<task>-<method>[@version], or hf://org/repo[@revision]")
    parser.add_argument("--hub", help="a hub folder, http(s) URL or hf://org/repo (default: $ZOO_HUB, then zoo's own)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoo.hub.pull import pull

    pulled = pull(args.name, args.hub)
    print(pulled.dir)
    return 0
