"""``zoo serve [NAME...] [--hub URL] [--host 127.0.0.1] [--port 8000]``: hub adapters over HTTP, on LitServe.

``POST /predict`` with ``{"adapter": NAME, "inputs": [...]}`` answers what ``zoo predict NAME ...
--format json`` prints; ``GET /adapters`` lists the adapters available and loaded; ``GET /health``.
Requests that arrive together (up to ``--max-batch-size``, waiting at most ``--batch-timeout``) are
answered together, the rows of adapters of one backbone in one forward pass. Adapters load on
first use (pulled and verified as ``zoo pull`` does) and the least recently used are evicted past
``--max-memory-mb``; the NAMEs given load at start. See :mod:`zoo.hub.serve` for the API and its errors.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from zoo.errors import ConfigError

HOSTS = ("127.0.0.1", "0.0.0.0", "::")
"""What LitServe binds: this machine only, or every interface (IPv4, IPv6)."""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="serve hub adapters over HTTP; one batch mixes adapters (LitServe)")
    parser.add_argument(
        "names", nargs="*", help="adapters to load at start, <domain>/<task>-<method>[@version] (others load on use)"
    )
    parser.add_argument("--hub", help="the hub to serve from (default: $ZOO_HUB, then zoo's own)")
    parser.add_argument("--host", choices=HOSTS, default="127.0.0.1", help="the interface to listen on")
    parser.add_argument("--port", type=int, default=8000, help="1024-65535 (default 8000)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="requests answered together (default 16)")
    parser.add_argument(
        "--batch-timeout", type=float, default=0.01, help="seconds a batch waits to fill up (default 0.01)"
    )
    parser.add_argument(
        "--max-memory-mb",
        type=float,
        default=2048,
        help="the loaded adapters' tensors, each shared backbone counted once; past it the least recently used "
        "are evicted (default 2048)",
    )
    parser.add_argument("--max-body-mb", type=float, default=16, help="the largest request body (default 16)")
    parser.add_argument("--max-inputs", type=int, default=256, help="the most inputs in one request (default 256)")
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=60,
        help="seconds a request may wait for the model before it is answered 504 (default 60)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads of the model's process (default: torch's, one per core)"
    )
    parser.set_defaults(run=run)


def require_litserve() -> None:
    import importlib.util

    if importlib.util.find_spec("litserve") is None:
        raise ConfigError('litserve is not installed: zoo serve needs the serve extra; pip install "zoo-peft[serve]"')


def _check(args: argparse.Namespace) -> None:
    if not 1024 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: choose a port from 1024 to 65535")
    for flag, value in (
        ("--max-batch-size", args.max_batch_size),
        ("--max-memory-mb", args.max_memory_mb),
        ("--max-body-mb", args.max_body_mb),
        ("--max-inputs", args.max_inputs),
        ("--queue-timeout", args.queue_timeout),
        ("--threads", 1 if args.threads is None else args.threads),
    ):
        if value <= 0:
            raise ConfigError(f"{flag} {value}: must be above 0")
    if args.batch_timeout < 0:
        raise ConfigError(f"--batch-timeout {args.batch_timeout}: must be 0 or more seconds")


def run(args: argparse.Namespace) -> int:
    require_litserve()
    _check(args)
    from zoo.hub.pull import pull
    from zoo.hub.serve import Settings, available_adapters, build_server, run_server, unknown_adapter

    available = available_adapters(args.hub)
    for name in args.names:
        unknown = unknown_adapter(name, available)
        if unknown:
            raise ConfigError(unknown.replace("GET /adapters lists them", "zoo ls adapters lists them"))
        pull(name, args.hub)  # fetched and verified here, so a hub's error shows before the server starts
    with tempfile.TemporaryDirectory(prefix="zoo-serve-") as folder:
        settings = Settings(
            hub=args.hub,
            preload=tuple(args.names),
            memory_bound_bytes=int(args.max_memory_mb * 2**20),
            max_inputs=args.max_inputs,
            available=available,
            status_file=f"{folder}/adapters.json",
            threads=args.threads,
        )
        max_body_bytes = int(args.max_body_mb * 2**20)
        server = build_server(settings, args.max_batch_size, args.batch_timeout, max_body_bytes, args.queue_timeout)
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"zoo serve: loading {len(args.names)} adapter(s), then serving http://{shown}:{args.port} "
            f"(POST /predict, GET /adapters, GET /health); Ctrl-C stops",
            file=sys.stderr,
        )
        run_server(server, args.host, args.port)
    return 0
