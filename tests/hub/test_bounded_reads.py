"""Remote hub reads are bounded: an index.json past the size limit is refused without being read whole,
and a server that trickles (its headers or its body) is cut at the request's overall deadline."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from zoo.errors import DownloadError, HubError
from zoo.hub.pull import pull

NAME = "text/sst2-lora"
WEIGHTS = "adapter/adapter_model.safetensors"


class HostileServer:
    """127.0.0.1 server whose answers misbehave: ``behave(handler, path)`` writes the whole response.
    Paths not handled by ``behave`` (it returns False) are served from ``root``."""

    def __init__(self, behave, root=None) -> None:

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                try:
                    if behave(self, path):
                        return
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: what is tested
                    return
                file = root / path if root is not None else None
                if file is None or not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # handlers still trickling must not hold up the test's end
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile():
    servers = []

    def start(behave, root=None) -> HostileServer:
        servers.append(HostileServer(behave, root))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def trickle(handler, data: bytes, every: float) -> None:
    for byte in data:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(every)


def test_an_index_declared_larger_than_the_limit_is_refused_unread(hostile):
    def huge(handler, path):
        handler.send_response(200)
        handler.send_header("Content-Length", str(40 << 20))
        handler.end_headers()
        handler.wfile.write(b"{" * 1024)  # then nothing: a client that waits for 40 MiB would hang
        handler.wfile.flush()
        time.sleep(3)
        return True

    server = hostile(huge)
    started = time.monotonic()
    with pytest.raises(
        HubError, match=r"index.json is 41943040 bytes, more than the 33554432 bytes an index.json may have"
    ):
        pull(NAME, server.url, log=None)
    assert time.monotonic() - started < 3


def test_an_endless_index_without_a_length_is_cut_at_the_limit(hostile, monkeypatch):
    monkeypatch.setattr("zoo.hub.locations.MAX_INDEX_BYTES", 256 << 10)

    def endless(handler, path):
        handler.send_response(200)
        handler.send_header("Connection", "close")  # no Content-Length: the body runs until the server stops
        handler.end_headers()
        for _ in range(4096):  # 16 MiB, far past the limit (a bound, so a failing test ends)
            handler.wfile.write(b" " * 4096)
        return True

    server = hostile(endless)
    with pytest.raises(
        HubError, match=r"runs past the 262144 bytes an index.json may have; refused, and read no further"
    ):
        pull(NAME, server.url, log=None)


def test_a_trickled_index_body_is_cut_at_the_deadline(hostile, monkeypatch):
    monkeypatch.setenv("ZOO_HTTP_DEADLINE_S", "1.5")

    def slow_body(handler, path):
        handler.send_response(200)
        handler.send_header("Content-Length", "40")
        handler.end_headers()
        trickle(handler, b'{"schema_version": 1, "adapters": {}}   ', every=0.25)  # 10 s in all
        return True

    server = hostile(slow_body)
    started = time.monotonic()
    with pytest.raises(HubError, match=r"did not finish within 1\.5 s.*ZOO_HTTP_DEADLINE_S"):
        pull(NAME, server.url, log=None)
    assert time.monotonic() - started < 5


def test_trickled_headers_are_cut_at_the_deadline(hostile, monkeypatch):
    monkeypatch.setenv("ZOO_HTTP_DEADLINE_S", "1.5")

    def slow_headers(handler, path):
        trickle(handler, b"HTTP/1.1 200 OK\r\nX-Padding: " + b"." * 30 + b"\r\n\r\n", every=0.25)  # 12 s
        return True

    server = hostile(slow_headers)
    started = time.monotonic()
    with pytest.raises(HubError, match=r"did not finish within 1\.5 s"):
        pull(NAME, server.url, log=None)
    assert time.monotonic() - started < 5


def test_a_trickled_adapter_file_is_cut_at_the_deadline_and_resumable(hostile, pushed_hub, monkeypatch):
    monkeypatch.setenv("ZOO_HTTP_DEADLINE_S", "1")
    weights = (pushed_hub / NAME / "1" / WEIGHTS).read_bytes()

    def slow_weights(handler, path):
        if not path.endswith(WEIGHTS):
            return False
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(weights)))
        handler.end_headers()
        trickle(handler, weights[:40], every=0.2)  # 8 s for 40 bytes, then the connection closes
        return True

    server = hostile(slow_weights, root=pushed_hub)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"did not finish within 1 s.*the next pull resumes"):
        pull(NAME, server.url, log=None)
    assert time.monotonic() - started < 3 * 1 + 6  # three attempts, each cut at its deadline


def test_the_deadline_setting_is_checked(monkeypatch):
    from zoo.catalog.bounded_http import request_deadline
    from zoo.errors import ConfigError

    monkeypatch.setenv("ZOO_HTTP_DEADLINE_S", "soon")
    with pytest.raises(ConfigError, match="ZOO_HTTP_DEADLINE_S='soon' must be a positive number of seconds"):
        request_deadline()
    monkeypatch.setenv("ZOO_HTTP_DEADLINE_S", "45")
    assert request_deadline() == 45.0


def test_a_large_local_index_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr("zoo.hub.locations.MAX_INDEX_BYTES", 1024)
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "index.json").write_text('{"schema_version": 1, "adapters": {}}' + " " * 2048)
    with pytest.raises(HubError, match="more than the 1024 bytes"):
        pull(NAME, hub, log=None)
