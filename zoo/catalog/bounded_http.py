"""HTTP GETs with a deadline for the whole request, not only for each read.

``requests``' ``timeout`` bounds each socket operation: a server that sends one byte every few
seconds (its headers or its body) never trips it, and would keep a download going for ever. Here
every request also has an overall deadline (``ZOO_HTTP_DEADLINE_S``, default 600 s): when it
passes, a watchdog shuts the request's socket down, which wakes a read blocked in any layer
(``requests``, ``urllib3``, ``http.client``, TLS), and the request fails as
:class:`DeadlineExceeded` (a ``requests.Timeout``, so callers that handle network errors handle it).
Content is asked for as ``identity``: the bytes read are the bytes served, which is what a size
limit and a sha256 are about.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from zoo.errors import ConfigError

DEADLINE_ENV = "ZOO_HTTP_DEADLINE_S"
DEFAULT_DEADLINE_S = 600.0
READ_TIMEOUT_S = 30.0


class DeadlineExceeded(requests.Timeout):
    """The request was still running when its overall deadline passed."""


def request_deadline(default: float = DEFAULT_DEADLINE_S) -> float:
    """Seconds one request may take in all: ``$ZOO_HTTP_DEADLINE_S``, else ``default``."""
    text = os.environ.get(DEADLINE_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{DEADLINE_ENV}={text!r} must be a positive number of seconds (e.g. 600)")
    return value


def _recording_pools(sockets: list[socket.socket]) -> dict[str, type]:
    """urllib3 connection pools whose connections add their socket to ``sockets`` once connected."""
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def recording(base: type) -> type:
        class RecordingConnection(base):
            def connect(self) -> None:
                super().connect()
                sockets.append(self.sock)

        return RecordingConnection

    return {
        "http": type("DeadlineHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": recording(HTTPConnection)}),
        "https": type("DeadlineHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": recording(HTTPSConnection)}),
    }


class _RecordingAdapter(HTTPAdapter):
    def __init__(self, sockets: list[socket.socket]) -> None:
        self._sockets = sockets  # read by init_poolmanager, which HTTPAdapter.__init__ calls
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _recording_pools(self._sockets)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        from urllib3.poolmanager import ProxyManager

        manager = super().proxy_manager_for(proxy, **kwargs)
        if isinstance(manager, ProxyManager):  # an HTTP(S) proxy (a SOCKS one keeps its own pools)
            manager.pool_classes_by_scheme = _recording_pools(self._sockets)
        return manager


class BoundedGet:
    """``with BoundedGet(url, deadline_s=60) as request:`` then ``request.response`` (headers read) and
    ``request.chunks(size)`` (the body); both raise :class:`DeadlineExceeded` once the deadline passes."""

    def __init__(
        self,
        url: str,
        *,
        deadline_s: float | None = None,
        timeout: float = READ_TIMEOUT_S,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.deadline_s = request_deadline() if deadline_s is None else deadline_s
        self.timeout = min(timeout, self.deadline_s)
        self.headers = {"Accept-Encoding": "identity", **(headers or {})}
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._session: requests.Session | None = None
        self._timer: threading.Timer | None = None
        self._end = 0.0
        self._response: requests.Response | None = None

    def _expire(self) -> None:
        self.expired.set()
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass

    def _deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"{self.url} did not finish within {self.deadline_s:g} s (the overall deadline of one request; "
            f"set {DEADLINE_ENV} to allow more)"
        )

    def __enter__(self) -> BoundedGet:
        self._session = requests.Session()
        adapter = _RecordingAdapter(self._sockets)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._end = time.monotonic() + self.deadline_s
        self._timer = threading.Timer(self.deadline_s, self._expire)
        self._timer.daemon = True
        self._timer.start()
        try:
            self._response = self._session.get(self.url, stream=True, timeout=self.timeout, headers=self.headers)
        except (requests.RequestException, OSError):
            self.__exit__(None, None, None)
            if self.expired.is_set():
                raise self._deadline_error() from None
            raise
        return self

    @property
    def response(self) -> requests.Response:
        """The response, its headers read (its body not yet)."""
        if self._response is None:
            raise RuntimeError("use BoundedGet as a context manager: `with BoundedGet(url) as request:`")
        return self._response

    def chunks(self, size: int) -> Iterator[bytes]:
        """The body, ``size`` bytes at a time (the last chunk may be shorter)."""
        try:
            for chunk in self.response.iter_content(size):
                if self.expired.is_set() or time.monotonic() > self._end:
                    raise self._deadline_error()
                yield chunk
        except (requests.RequestException, OSError) as error:
            if self.expired.is_set() and not isinstance(error, DeadlineExceeded):
                raise self._deadline_error() from None
            raise
        if self.expired.is_set():  # a body without a length just ends when its socket is shut down
            raise self._deadline_error()

    def __exit__(self, *exc_info: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._response is not None:
            self._response.close()
        if self._session is not None:
            self._session.close()
