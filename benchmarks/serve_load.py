"""Load test of ``zoo serve``: 64 concurrent clients over a mix of adapters, for a bounded time.

Builds a hub of tiny random-weight adapters (``zoo.run(recipe, ["scale=tiny"])`` runs pushed to a
folder, as tests/hub does; kept in ``--hub-dir`` and reused), serves that folder over HTTP on
127.0.0.1, starts ``zoo serve`` on 127.0.0.1 at a free port with the mix preloaded, and runs
``--clients`` threads for ``--seconds``. Each client posts, one after another, a request for an
adapter of the mix drawn at random (seeded per client) with 1-4 texts. The mix: four adapters of one
backbone (tiny RoBERTa: sst2 LoRA and (IA)^3, AG News LoRA with its 4-class head, sst2 DoRA) and two
of another (tiny BERT: AG News LoRA and (IA)^3), so batches mix adapters within a backbone and
across backbones.

Reports requests/s, p50/p99 latency, errors (any answer but 200; there must be none: the exit status
is 1 otherwise), the server's counts (forward passes, those that mixed adapters, rows), and its
resident memory before the timed run (after a warm-up that loads every adapter) and after it: the
worker that holds the models, and all of the server's processes together. Growth past
``--max-memory-mb`` (the server's bound on the adapters it holds) is reported as a failure too.

    python benchmarks/serve_load.py                          # 30 s, 64 clients
    nice -n 10 python benchmarks/serve_load.py --seconds 10  # a short round on a busy machine
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = [  # (recipe, overrides, hub name or None for the recipe's own)
    ("text/sst2-lora", [], None),
    ("text/sst2-ia3", [], None),
    ("text/agnews-lora", ["backbone.name=roberta_base"], "text/agnews_roberta-lora"),
    ("text/sst2-dora", [], None),
    ("text/agnews-lora", [], None),
    ("text/agnews-ia3", [], None),
]
TEXTS = [
    "a gripping, beautifully acted film",
    "dull and far too long",
    "the music is the best thing about it",
    "Stocks rallied as the central bank held rates",
    "The striker scored twice in the final",
    "A new chip promises faster phones",
    "talky, but the last act lands",
    "Oil prices fell for a third day",
]


def build_hub(folder: Path) -> list[str]:
    """The tiny runs pushed to ``folder`` (once; a hub already there is reused); returns the adapters' names."""
    import zoo
    from zoo.hub.push import push

    names = [name or recipe for recipe, _, name in ADAPTERS]
    if (folder / "index.json").is_file():
        index = json.loads((folder / "index.json").read_text())
        if all(name in index["adapters"] for name in names):
            return names
    with tempfile.TemporaryDirectory() as runs:
        for recipe, overrides, name in ADAPTERS:
            print(f"training {name or recipe} (scale=tiny)", file=sys.stderr)
            run = zoo.run(recipe, ["scale=tiny", *overrides], out=Path(runs) / str(len(os.listdir(runs))), log=None)
            push(run.dir, folder, name=name, log=None)
    return names


def serve_folder(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory of the server's worker (the process holding the models) and of all its processes."""
    main = psutil.Process(pid)
    processes = [main, *main.children(recursive=True)]
    worker = [p for p in processes if "spawn_main" in " ".join(p.cmdline())]
    return {
        "worker": round(sum(p.memory_info().rss for p in worker) / 2**20, 1),
        "all": round(sum(p.memory_info().rss for p in processes) / 2**20, 1),
    }


def client(url: str, names: list[str], seed: int, deadline: float, results: list) -> None:
    draw = random.Random(seed)
    with requests.Session() as session:
        while time.monotonic() < deadline:
            body = {"adapter": draw.choice(names), "inputs": draw.sample(TEXTS, draw.randint(1, 4))}
            start = time.perf_counter()
            try:
                answer = session.post(f"{url}/predict", json=body, timeout=120)
                ok = answer.status_code == 200 and len(answer.json()) == len(body["inputs"])
                error = None if ok else f"{answer.status_code} {answer.text[:200]}"
            except requests.RequestException as failure:
                error = f"{type(failure).__name__}: {failure}"
            results.append((time.perf_counter() - start, error))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the clients run (default 30)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--max-memory-mb", type=float, default=64.0, help="the server's bound (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    parser.add_argument("--hub-dir", type=Path, default=ROOT / ".bench" / "serve_load_hub")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "serve_load.json")
    args = parser.parse_args()

    args.hub_dir.mkdir(parents=True, exist_ok=True)
    names = build_hub(args.hub_dir)
    hub_server, hub_url = serve_folder(args.hub_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as cache:
        command = [sys.executable, "-m", "zoo.cli.main", "serve", *names, "--hub", hub_url, "--port", str(port)]
        command += ["--max-batch-size", str(args.max_batch_size), "--batch-timeout", str(args.batch_timeout)]
        command += ["--max-memory-mb", str(args.max_memory_mb), "--threads", str(args.threads)]
        log = open(Path(cache) / "serve.log", "w")
        server = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, "ZOO_CACHE_DIR": cache})
        try:
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    if requests.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(1)
            else:
                print((Path(cache) / "serve.log").read_text(), file=sys.stderr)
                raise SystemExit("zoo serve did not start")
            for name in names:  # warm-up: every adapter answers once before anything is measured
                assert requests.post(f"{url}/predict", json={"adapter": name, "inputs": TEXTS[:2]}, timeout=300).ok
            before = memory_mb(server.pid)
            counts_before = requests.get(f"{url}/adapters", timeout=30).json()["counts"]
            results: list = []
            end = time.monotonic() + args.seconds
            threads = [
                threading.Thread(target=client, args=(url, names, seed, end, results)) for seed in range(args.clients)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            status = requests.get(f"{url}/adapters", timeout=30).json()
            after = memory_mb(server.pid)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
            hub_server.shutdown()
            log.close()
    latencies = sorted(seconds for seconds, _ in results)
    errors = [error for _, error in results if error]
    counts = {key: status["counts"][key] - counts_before.get(key, 0) for key in status["counts"]}
    report = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": len(results),
        "requests_per_s": round(len(results) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "errors": len(errors),
        "first_errors": errors[:3],
        "server_counts": counts,
        "rows_per_forward": round(counts["rows"] / max(counts["forwards"], 1), 1),
        "adapters_loaded": [adapter["name"] for adapter in status["loaded"]],
        "adapters_memory_mb": status["memory_mb"],
        "memory_bound_mb": args.max_memory_mb,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "rss_growth_mb": {key: round(after[key] - before[key], 1) for key in before},
        "settings": {
            "max_batch_size": args.max_batch_size,
            "batch_timeout": args.batch_timeout,
            "threads": args.threads,
        },
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    grew = report["rss_growth_mb"]["worker"] > args.max_memory_mb
    if errors or grew:
        print(f"FAILED: {len(errors)} errors; worker RSS grew {report['rss_growth_mb']['worker']} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
