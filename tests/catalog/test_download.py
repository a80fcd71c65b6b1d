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
