"""One tiny run pushed to a hub folder, and a threaded HTTP server on 127.0.0.1 that serves it.

The server honours ``Range`` requests, records every request, and can be told to drop the
connection half-way through a file or to answer slowly, to exercise resumed and concurrent pulls.
"""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    import zoo

    return zoo.run("text/sst2-lora", ["scale=tiny"], out=tmp_path_factory.mktemp("run") / "sst2-lora", log=None)


@pytest.fixture(scope="session")
def pushed_hub(tiny_run, tmp_path_factory):
    """A hub folder made by zoo push from the tiny run (read-only for the tests: copy it to change it)."""
    from zoo.hub.push import push

    root = tmp_path_factory.mktemp("hub") / "hub"
    push(tiny_run.dir, root, log=None)
    return root


@pytest.fixture
def hub_copy(pushed_hub, tmp_path):
    """A copy of the pushed hub that a test may damage."""
    return Path(shutil.copytree(pushed_hub, tmp_path / "hub"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("ZOO_HUB", raising=False)
    return tmp_path / "cache"


class HubServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_after: dict[str, int] = {}  # path -> bytes to send before closing, once
        self.delay = 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                path = self.path.split("?")[0].lstrip("/")
                server.requests.append((path, self.headers.get("Range")))
                file = (server.root / path).resolve()
                if not file.is_file() or not file.is_relative_to(server.root.resolve()):
                    self.send_error(404)
                    return
                data = file.read_bytes()
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.delay:
                    time.sleep(server.delay)
                cut = server.drop_after.pop(path, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, suffix: str) -> int:
        return sum(1 for path, _ in self.requests if path.endswith(suffix))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(root: Path) -> HubServer:
        servers.append(HubServer(root))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
