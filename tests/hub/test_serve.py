"""``zoo serve``: a server started as ``zoo serve`` would be (a subprocess on 127.0.0.1) over a local HTTP hub of
tiny random-weight adapters: three on one backbone (2- and 4-class heads), one on another.

Each request of a batch that mixes adapters is answered with what ``zoo predict --format json`` prints for that
adapter alone; each bad request gets its 4xx and the next good request is answered; a client that goes away
before its request is computed costs no forward pass. The memory bound is checked on ServedAdapters in-process.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.hub.conftest import HubServer
from zoo.cli.main import main

needs_litserve = pytest.mark.skipif(
    importlib.util.find_spec("litserve") is None, reason='litserve is not installed (pip install "zoo-peft[serve]")'
)
TEXTS = ["a gripping, beautifully acted film", "dull and far too long", "the music is the best thing about it"]
NEWS = ["Stocks rallied as the central bank held rates", "The striker scored twice in the final"]
SAME_BACKBONE = ("text/sst2-lora", "text/agnews_roberta-lora", "text/sst2-ia3")  # tiny RoBERTa; 2, 4, 2 classes
OTHER_BACKBONE = "text/agnews-lora"  # tiny MiniLM-shaped BERT
STARTUP_S = 600  # the worker imports torch and loads two adapters, on a machine that may be busy


@pytest.fixture(scope="module")
def serve_hub(tiny_run, tmp_path_factory):
    """The sst2-lora run of the hub tests and three more tiny runs, pushed to a hub folder served over HTTP."""
    import zoo
    from zoo.hub.push import push

    root = tmp_path_factory.mktemp("serve-hub") / "hub"
    runs = tmp_path_factory.mktemp("serve-runs")
    push(tiny_run.dir, root, log=None)
    for recipe, overrides, name in [
        ("text/sst2-ia3", [], None),
        ("text/agnews-lora", ["backbone.name=roberta_base"], "text/agnews_roberta-lora"),
        ("text/agnews-lora", [], None),
    ]:
        run = zoo.run(recipe, ["scale=tiny", *overrides], out=runs / (name or recipe).replace("/", "_"), log=None)
        push(run.dir, root, name=name, log=None)
    server = HubServer(root)
    yield server.url
    server.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ZooServe:
    """``zoo serve`` in a subprocess of its own session (so that every process it starts can be stopped)."""

    def __init__(self, folder: Path, hub: str, names: list[str], *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"
        env = {**os.environ, "ZOO_CACHE_DIR": str(folder / "cache"), "ZOO_OFFLINE": ""}
        command = [sys.executable, "-m", "zoo.cli.main", "serve", *names, "--hub", hub, "--port", str(self.port)]
        with self.log.open("w") as log:
            self.process = subprocess.Popen([*command, *flags], stdout=log, stderr=log, env=env, start_new_session=True)
        self._wait()

    def _wait(self) -> None:
        import requests

        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"zoo serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)
        self.stop()
        pytest.fail(f"zoo serve did not answer /health within {STARTUP_S} s:\n{self.log.read_text()}")

    def post(self, body: dict | bytes, **headers: str):
        import requests

        if isinstance(body, bytes):
            return requests.post(f"{self.url}/predict", data=body, headers=headers, timeout=60)
        return requests.post(f"{self.url}/predict", json=body, timeout=60)

    def counts(self) -> dict[str, int]:
        import requests

        return requests.get(f"{self.url}/adapters", timeout=10).json()["counts"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # LitServe stops its worker and HTTP process
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def server(serve_hub, tmp_path_factory):
    # batches wait up to 0.5 s to fill, so that requests sent together are answered together
    flags = ["--max-batch-size", "8", "--batch-timeout", "0.5", "--max-inputs", "8", "--max-body-mb", "0.05"]
    flags += ["--threads", "1"]
    started = ZooServe(tmp_path_factory.mktemp("serve"), serve_hub, list(SAME_BACKBONE[:2]), *flags)
    yield started
    started.stop()


def zoo_predict_json(capsys, hub: str, name: str, inputs: list[str]) -> list[dict]:
    code = main(["predict", name, *inputs, "--hub", hub, "--format", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def assert_same_rows(answered: list[dict], expected: list[dict]) -> None:
    assert len(answered) == len(expected)
    for row, reference in zip(answered, expected):
        assert {k: v for k, v in row.items() if k != "scores"} == {k: v for k, v in reference.items() if k != "scores"}
        assert row["scores"].keys() == reference["scores"].keys()
        assert row["scores"] == pytest.approx(reference["scores"], abs=1e-6)  # float rounding across batch shapes


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the first to run trains three tiny runs and starts the server
@needs_litserve
def test_a_batch_mixing_adapters_answers_each_as_zoo_predict_alone(server, serve_hub, capsys):
    requests_sent = [
        {"adapter": SAME_BACKBONE[0], "inputs": TEXTS},
        {"adapter": SAME_BACKBONE[1], "inputs": NEWS},
        {"adapter": SAME_BACKBONE[2], "inputs": TEXTS[1:]},  # loaded on first use
        {"adapter": OTHER_BACKBONE, "inputs": NEWS[:1]},
        {"adapter": f"{SAME_BACKBONE[0]}@1", "inputs": TEXTS[:1]},
    ]
    before = server.counts()
    answers: list = [None] * len(requests_sent)
    start = threading.Barrier(len(requests_sent))

    def send(number: int) -> None:
        start.wait()
        answers[number] = server.post(requests_sent[number])

    threads = [threading.Thread(target=send, args=(number,)) for number in range(len(requests_sent))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = server.counts()
    assert after["mixed_forwards"] > before["mixed_forwards"], "the requests were not answered in one mixed batch"
    for request, answer in zip(requests_sent, answers):
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Zoo-Adapter"] == request["adapter"].split("@")[0] + "@1"
        assert_same_rows(answer.json(), zoo_predict_json(capsys, serve_hub, request["adapter"], request["inputs"]))


def _file(name: str, data: bytes) -> dict:
    return {"name": name, "base64": base64.b64encode(data).decode()}


PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")
BAD_REQUESTS = {
    "unknown adapter": ({"adapter": "text/sst2-lroa", "inputs": ["x"]}, 404, "did you mean text/sst2-lora"),
    "unknown version": ({"adapter": "text/sst2-lora@9", "inputs": ["x"]}, 404, "no version '9'; versions: 1"),
    "malformed JSON": (b'{"adapter": "text/sst2-lora", "inputs": ["x"', 400, "not valid JSON"),
    "not sent as JSON": (b"adapter=text/sst2-lora", 415, "Content-Type: application/json"),
    "missing inputs": ({"adapter": "text/sst2-lora"}, 422, "body.inputs: Field required"),
    "no inputs": ({"adapter": "text/sst2-lora", "inputs": []}, 422, "no inputs"),
    "an image for a text adapter": (
        {"adapter": "text/sst2-lora", "inputs": ["fine", _file("cat.png", PNG)]},
        422,
        "input 1: text/sst2-lora@1 takes text or .txt",
    ),
    "an input of no kind": ({"adapter": "text/sst2-lora", "inputs": [3]}, 422, "input 0: expected a string or a file"),
    "an empty text": ({"adapter": "text/sst2-lora", "inputs": [" "]}, 422, "input 0: an empty text"),
    "too many inputs": ({"adapter": "text/sst2-lora", "inputs": ["x"] * 9}, 413, "at most 8 a request"),
    "too many inputs in a file": (
        {"adapter": "text/sst2-lora", "inputs": [_file("many.txt", b"x\n" * 9)]},
        413,
        "the files hold 9 inputs",
    ),
    "a body over the limit": ({"adapter": "text/sst2-lora", "inputs": ["x" * 60_000]}, 413, "zoo serve --max-body-mb"),
}


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the first to run trains three tiny runs and starts the server
@needs_litserve
@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_a_bad_request_gets_its_4xx_and_the_server_keeps_serving(server, case):
    body, status, message = BAD_REQUESTS[case]
    headers = {
        "Content-Type": "application/x-www-form-urlencoded" if case == "not sent as JSON" else "application/json"
    }
    answer = server.post(body, **headers) if isinstance(body, bytes) else server.post(body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
    good = server.post({"adapter": "text/sst2-lora", "inputs": [TEXTS[0], _file("more.txt", b"dull\n\nfine\n")]})
    assert good.status_code == 200, good.text
    assert [row["input"] for row in good.json()] == [TEXTS[0], "dull", "fine"]


def _send_and_close(port: int, body: bytes, cut: int | None = None) -> None:
    """A POST /predict whose client goes away: before its body is whole (``cut`` bytes of it), or once it is sent."""
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(head.encode() + body[:cut])


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the first to run trains three tiny runs and starts the server
@needs_litserve
def test_clients_that_go_away_cost_no_forward_pass(server):
    body = json.dumps({"adapter": "text/sst2-lora", "inputs": TEXTS}).encode()
    before = server.counts()
    for _ in range(3):
        _send_and_close(server.port, body, cut=20)
    for _ in range(4):
        _send_and_close(server.port, body)  # queued; the batch waits 0.5 s, long after the client has gone
    time.sleep(2)
    after = server.counts()
    assert after["abandoned"] - before["abandoned"] == 4
    assert after["rows"] == before["rows"]
    answer = server.post({"adapter": "text/sst2-lora", "inputs": TEXTS})
    assert answer.status_code == 200 and len(answer.json()) == len(TEXTS)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_adapters_over_the_memory_bound_are_evicted_least_recently_used_first(serve_hub, capsys):
    """In-process: the bound counts a shared backbone once; what is evicted and reloaded answers as zoo predict."""
    from zoo.hub.served_adapters import ServedAdapters

    sst2_lora, agnews_lora, sst2_ia3 = SAME_BACKBONE
    adapters = ServedAdapters(serve_hub, memory_bound=1 << 40, log=lambda _message: None)
    news, reviews = adapters.get(agnews_lora), adapters.get(sst2_lora)
    assert news.backbone is reviews.backbone and news.backbone is not None
    assert adapters.used_bytes == news.backbone.base_bytes + news.size_bytes + reviews.size_bytes
    adapters.get(agnews_lora)  # now the most recent: sst2-lora is the least recently used
    adapters.memory_bound = adapters.used_bytes  # no room for one more adapter
    small = adapters.get(sst2_ia3)  # (IA)^3's vectors take less room than the LoRA it evicts
    assert small.size_bytes < reviews.size_bytes
    assert list(adapters.loaded) == [news.name, small.name]
    assert adapters.used_bytes <= adapters.memory_bound
    other = adapters.get(OTHER_BACKBONE)  # another backbone: the first goes with its last adapter
    assert list(adapters.loaded) == [other.name] and list(adapters.backbones.values()) == [other.backbone]
    assert adapters.counts["evictions"] == 3
    adapters.memory_bound = 1 << 40
    again = adapters.get(sst2_lora)  # loaded again, onto its backbone built again
    outputs = adapters.predict([(again, TEXTS, TEXTS), (other, NEWS, NEWS)])
    for name, inputs, rows in ((sst2_lora, TEXTS, outputs[0]), (OTHER_BACKBONE, NEWS, outputs[1])):
        answered = [{"input": text, **row} for text, row in zip(inputs, rows)]
        assert_same_rows(answered, zoo_predict_json(capsys, serve_hub, name, inputs))


@needs_litserve
def test_an_unknown_adapter_named_at_start_is_refused_with_close_matches(pushed_hub, capsys):
    assert main(["serve", "text/sst2-lroa", "--hub", str(pushed_hub)]) == 2
    assert "did you mean text/sst2-lora" in capsys.readouterr().err


def test_without_litserve_the_command_names_the_extra(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litserve" else real(name, *a))
    assert main(["serve", "text/sst2-lora"]) == 2
    assert 'pip install "zoo-peft[serve]"' in capsys.readouterr().err
