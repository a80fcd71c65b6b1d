"""What ``zoo serve``'s HTTP process does with a ``POST /predict`` body before LitServe sees it.

- A body over the limit is refused with 413: by its ``Content-Length`` before it is read (what the
  client sends is read and dropped, so it is there to read the answer), else once the bytes read
  pass the limit.
- A JSON object body is tagged with a random request id (``_zoo_request``, replacing any the client
  sent), and the connection is watched while the answer is awaited: a client that goes away has
  its id written to :class:`AbandonedRequests`, which the worker reads before it computes a batch,
  so a request still queued when its client disconnects costs no forward pass. (LitServe itself
  computes every queued request and drops the answer.)
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import secrets
from typing import Any

from fastapi.responses import JSONResponse

REQUEST_ID_FIELD = "_zoo_request"


class AbandonedRequests:
    """The ids of the last ``size`` requests whose clients disconnected, in memory that the HTTP process (a
    fork of the one that made this) writes and LitServe's worker (spawned, handed this when it starts) reads."""

    def __init__(self, size: int = 4096) -> None:
        context = multiprocessing.get_context("spawn")
        self.ids = context.Array("q", size)
        self.written = context.Value("q", 0, lock=False)

    def add(self, request_id: int) -> None:
        with self.ids.get_lock():
            self.ids[self.written.value % len(self.ids)] = request_id
            self.written.value += 1

    def __contains__(self, request_id: object) -> bool:
        if not isinstance(request_id, int) or request_id == 0:
            return False
        with self.ids.get_lock():
            return request_id in self.ids[:]


class RequestGuard:
    """ASGI middleware for ``POST /predict``: the body's size limit, its request id, and its client's disconnect."""

    def __init__(self, app: Any, max_bytes: int, abandoned: AbandonedRequests, path: str = "/predict") -> None:
        self.app, self.max_bytes, self.abandoned, self.path = app, max_bytes, abandoned, path

    def _too_large(self, size: str) -> JSONResponse:
        detail = (
            f"the body is {size} bytes; this server takes at most {self.max_bytes} (zoo serve --max-body-mb); "
            f"send fewer or smaller inputs a request"
        )
        return JSONResponse({"detail": detail}, status_code=413)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length", b"").decode()
        body, size = bytearray(), 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before its body was whole: nothing was queued
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_bytes:
                body += chunk
            # past the limit the rest is read and dropped (up to a point), so that the client reads the answer
            if not message.get("more_body", False) or size > 16 * self.max_bytes:
                break
        if size > self.max_bytes:
            return await self._too_large(declared if declared.isdigit() else f"over {size}")(scope, receive, send)
        request_id = secrets.randbits(62) + 1
        body = bytearray(_tagged(bytes(body), request_id))
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}

        async def watch() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.abandoned.add(request_id)
            return message

        watcher = asyncio.ensure_future(watch())
        sent_body = False

        async def replay() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await asyncio.shield(watcher)

        try:
            await self.app(scope, replay, send)
        finally:
            watcher.cancel()


def _tagged(body: bytes, request_id: int) -> bytes:
    """The body with its request id, when it is a JSON object; else as it came (FastAPI names what is wrong)."""
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body
    if not isinstance(parsed, dict):
        return body
    parsed[REQUEST_ID_FIELD] = request_id
    return json.dumps(parsed).encode()
