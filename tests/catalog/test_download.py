"""The one check every domain makes before asking the Hugging Face Hub for weights."""

import huggingface_hub.constants
import pytest
import requests

from zoo.catalog import download


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")


def test_the_offline_flag_is_reason_enough(monkeypatch, online):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(download.requests, "head", lambda *a, **k: pytest.fail("no request when offline"))
    assert download.hf_hub_unavailable() == "the hub is offline (HF_HUB_OFFLINE is set)"


def test_an_endpoint_that_does_not_answer_is_named(online):
    # port 9 (discard) on loopback refuses at once
    assert download.hf_hub_unavailable(timeout=2) == "http://127.0.0.1:9 is unreachable (ConnectionError)"


def test_an_endpoint_that_answers_means_available(monkeypatch, online):
    asked = []
    monkeypatch.setattr(download.requests, "head", lambda url, **k: asked.append(url) or requests.Response())
    assert download.hf_hub_unavailable() is None and asked == ["http://127.0.0.1:9"]


def _serve(body: bytes, every: float = 0.0):
    """An HTTP server on 127.0.0.1 sending ``body``, one byte every ``every`` seconds when set."""
    import http.server
    import threading
    import time

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(every)
            except OSError:  # the client hung up at its deadline
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/file.tsv"


def test_download_verifies_and_saves(tmp_path):
    import hashlib

    body = b"sentence\tlabel\nfine\t1\n"
    server, url = _serve(body)
    try:
        saved = download.download(url, tmp_path / "file.tsv", hashlib.sha256(body).hexdigest(), "dataset x")
    finally:
        server.shutdown()
    assert saved.read_bytes() == body


def test_download_from_a_trickling_server_stops_at_the_deadline_and_keeps_nothing(tmp_path, monkeypatch):
    import time

    from zoo.errors import DownloadError

    monkeypatch.setenv("ZOO_HTTP_DEADLINE_S", "1.5")
    server, url = _serve(b"x" * 40, every=0.25)  # 10 s in all
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError, match=r"did not finish within 1\.5 s"):
            download.download(url, tmp_path / "file.tsv", None, "dataset x")
    finally:
        server.shutdown()
    assert time.monotonic() - started < 5
    assert list(tmp_path.iterdir()) == []
