"""``zoo serve``: hub adapters over HTTP, on LitServe, with batches that mix adapters.

- ``POST /predict`` ``{"adapter": "text/sst2-lora[@version]", "inputs": [...]}``: the list ``zoo
  predict NAME INPUT... --format json`` prints for those inputs (one object per input: ``input``,
  ``label``, ``index``, ``scores``; or ``value``; or ``labels``). Inputs are JSON, read by the
  adapter's domain reader (:mod:`zoo.hub.request_inputs`: strings are typed inputs, files come as
  ``{"name", "base64"}``). The ``X-Zoo-Adapter`` header names the version that answered.
- ``GET /adapters``: those available on the hubs searched, those loaded (with their memory), and
  counts of forward passes (``mixed_forwards``: passes whose rows used several adapters).
- ``GET /health``: LitServe's, 200 ``ok`` once the adapters named at start are loaded.

LitServe gathers up to ``max_batch_size`` requests (waiting at most ``batch_timeout``) and hands
them to :meth:`AdapterAPI.predict` together; the rows of all requests whose adapters share a
backbone go through one forward pass (:class:`zoo.hub.served_adapters.ServedAdapters`).

Bad requests are answered with a 4xx and ``{"detail": message}`` and the server keeps serving:
400 a body that is not JSON, 415 one not sent as JSON, 422 one not shaped ``{"adapter",
"inputs"}`` or an input the adapter's domain does not read, 404 an unknown adapter or version
(with close matches), 413 a body over the size limit or more inputs than the limit. An adapter the
server cannot load (its weights are not on this machine, say) is a 500 naming why; a request that
waited longer than the queue timeout for the model, LitServe's 504. A request is
refused with a response rather than by raising HTTPException from ``decode_request``: LitServe
0.2.19's batched loop sends an exception raised while decoding one request to every request of its
batch (``litserve/loops/simple_loops.py``, ``BatchedLoop.run_batched_loop``), so each refusal travels
through the batch as a value and :meth:`AdapterAPI.encode_response` makes it that request's own
response. A request whose client disconnects while it waits in the queue is dropped before it is
computed (:mod:`zoo.hub.request_guard`); one already being computed finishes, and its answer is dropped.

LitServe runs the model in a worker process of its own; that process writes what it holds to a
status file, which ``GET /adapters`` (served by the HTTP process) reads.
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation (PredictRequest) and
# encode_response's (Response) as the endpoint's body and response types, and needs the classes, not strings.
import difflib
import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import litserve as ls  # type: ignore[import-untyped]
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from zoo.errors import DataError
from zoo.files import atomic_write_text
from zoo.hub.locations import say_to_stderr, search_path
from zoo.hub.request_guard import AbandonedRequests, RequestGuard

logger = logging.getLogger(__name__)
REQUEST_SHAPE = '{"adapter": "<domain>/<task>-<method>[@version]", "inputs": [...]}'


class PredictRequest(BaseModel):
    """The body of ``POST /predict``; FastAPI checks it in the HTTP process, before it reaches the worker."""

    model_config = ConfigDict(extra="forbid")
    adapter: str
    inputs: list[Any]
    request_id: int = Field(0, alias="_zoo_request")  # REQUEST_ID_FIELD
    """Set by the HTTP process (zoo.hub.request_guard) to tell a request whose client went away."""


@dataclass(frozen=True)
class Refusal:
    status: int
    detail: str


@dataclass(frozen=True)
class Answer:
    adapter: str
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class Settings:
    """What the worker process needs (pickled into it)."""

    hub: str | None
    preload: tuple[str, ...]
    memory_bound_bytes: int
    max_inputs: int
    available: dict[str, dict[str, Any]]
    """name -> {"versions", "latest", "domain", "hub"} of every adapter on the hubs searched."""
    status_file: str
    threads: int | None = None
    """torch's threads in the worker; None: torch's own choice."""


def available_adapters(hub: str | None, log: Callable[[str], None] = say_to_stderr) -> dict[str, dict[str, Any]]:
    """Every adapter of the hubs searched (the first hub that has a name serves it, as ``zoo pull`` does)."""
    from zoo.errors import DownloadError, HubError

    found: dict[str, dict[str, Any]] = {}
    for candidate in search_path(hub, on_bad_url=lambda item, error: log(f"ZOO_HUB item {item} skipped: {error}")):
        try:
            index = candidate.index(log)
        except (DownloadError, HubError) as error:
            if hub:
                raise
            log(f"{candidate}: skipped ({error})")
            continue
        for name, record in sorted(index["adapters"].items()):
            latest = record.get("latest") or list(record["versions"])[-1]
            entry = record["versions"][latest]
            found.setdefault(
                name,
                {
                    "versions": list(record["versions"]),
                    "latest": latest,
                    "domain": entry["domain"],
                    "hub": str(candidate),
                },
            )
    return found


def unknown_adapter(reference: str, available: dict[str, dict[str, Any]]) -> str | None:
    """Why ``reference`` names no adapter of the hubs (with close matches), None when it names one."""
    name, _, version = reference.partition("@")
    if name not in available:
        close = difflib.get_close_matches(name, list(available), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(available) or 'none'}"
        return f"no adapter {name!r} on the hubs this server reads; {hint} (GET /adapters lists them)"
    if version and version not in available[name]["versions"]:
        return f"{name} has no version {version!r}; versions: {', '.join(available[name]['versions'])}"
    return None


class AdapterAPI(ls.LitAPI):
    """Requests decoded (and refused) one by one, answered a batch at a time."""

    def __init__(
        self, settings: Settings, abandoned: AbandonedRequests, max_batch_size: int = 1, batch_timeout: float = 0.0
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.settings, self.abandoned = settings, abandoned
        self.adapters: Any = None
        """The ServedAdapters, made in the worker process (setup)."""

    def setup(self, device: str) -> None:
        from zoo.hub.served_adapters import ServedAdapters

        if self.settings.threads:
            import torch

            torch.set_num_threads(self.settings.threads)
        self.adapters = ServedAdapters(self.settings.hub, self.settings.memory_bound_bytes, _log)
        for name in self.settings.preload:
            self.adapters.get(name)
        self._write_status()

    def decode_request(self, request: PredictRequest) -> Refusal | PredictRequest:
        if not request.inputs:
            return Refusal(422, f"no inputs: send {REQUEST_SHAPE} with at least one input")
        if len(request.inputs) > self.settings.max_inputs:
            return Refusal(413, _too_many(len(request.inputs), self.settings.max_inputs))
        unknown = unknown_adapter(request.adapter, self.settings.available)
        return Refusal(404, unknown) if unknown else request

    def predict(self, x: Any) -> Any:
        answers = self._answer(x if isinstance(x, list) else [x])
        return answers if isinstance(x, list) else answers[0]

    def encode_response(self, output: Refusal | Answer) -> Response:
        if isinstance(output, Refusal):
            return JSONResponse({"detail": output.detail}, status_code=output.status)
        # as zoo predict --format json writes it (NaN and all), one object per input
        return Response(
            json.dumps(output.rows), media_type="application/json", headers={"X-Zoo-Adapter": output.adapter}
        )

    def _answer(self, requests: list[Refusal | PredictRequest]) -> list[Refusal | Answer]:
        from zoo.hub.request_inputs import read_request_inputs

        answers: list[Refusal | Answer | None] = [item if isinstance(item, Refusal) else None for item in requests]
        work: list[tuple[Any, list[Any], list[str]]] = []
        positions: list[int] = []
        pinned: list[str] = []
        for number, request in enumerate(requests):
            if isinstance(request, Refusal):
                continue
            if request.request_id in self.abandoned:  # its client went away while it waited in the queue
                answers[number] = Refusal(499, "the client closed the connection")
                self.adapters.counts["abandoned"] += 1
                continue
            try:
                adapter = self.adapters.get(request.adapter, pinned)
            except Exception as error:  # its files, weights or configuration: nothing the client can change
                logger.exception("loading %s", request.adapter)
                answers[number] = Refusal(500, f"{request.adapter} could not be loaded on this server: {error}")
                continue
            pinned.append(adapter.name)
            predictor = adapter.predictor
            try:
                options = predictor.config.data.options if predictor.config is not None else None
                inputs, names = read_request_inputs(
                    predictor.domain, request.inputs, adapter.name, predictor.task_kind, options
                )
            except DataError as error:
                answers[number] = Refusal(422, str(error))
                continue
            if len(inputs) > self.settings.max_inputs:
                answers[number] = Refusal(413, _too_many(len(inputs), self.settings.max_inputs, "the files hold "))
                continue
            work.append((adapter, inputs, names))
            positions.append(number)
        for number, (adapter, _, names), result in zip(positions, work, self.adapters.predict(work)):
            answers[number] = (
                Refusal(422, str(result))
                if isinstance(result, DataError)
                else Answer(adapter.name, [{"input": name, **row} for name, row in zip(names, result)])
            )
        self.adapters.fit()  # the batch's adapters are no longer pinned
        self._write_status()
        return [answer if answer is not None else Refusal(500, "no answer") for answer in answers]

    def _write_status(self) -> None:
        atomic_write_text(Path(self.settings.status_file), json.dumps(self.adapters.describe()))


def _log(message: str) -> None:
    say_to_stderr(f"zoo serve: {message}")


def _too_many(count: int, limit: int, what: str = "") -> str:
    return f"{what}{count} inputs; this server takes at most {limit} a request (zoo serve --max-inputs); split them"


async def _refuse_malformed(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's validation errors, as one message and the status that says what went wrong."""
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    for problem in problems:
        if problem.get("type") == "json_invalid":
            why = problem.get("ctx", {}).get("error", "")
            return JSONResponse({"detail": f"the body is not valid JSON ({why}); send {REQUEST_SHAPE}"}, 400)
    if isinstance(getattr(error, "body", None), (bytes, str)):  # not parsed: it came as another content type
        return JSONResponse({"detail": f"send the body as JSON (Content-Type: application/json): {REQUEST_SHAPE}"}, 415)
    listed = "; ".join(f"{'.'.join(map(str, p.get('loc', ())))}: {p.get('msg', '')}" for p in problems)
    return JSONResponse({"detail": f"the body must be {REQUEST_SHAPE}: {listed}"}, 422)


def build_server(
    settings: Settings, max_batch_size: int, batch_timeout: float, max_body_bytes: int, timeout: float = 60.0
) -> ls.LitServer:
    """The LitServer: /predict on a CPU worker, /adapters from the worker's status file, requests' limits."""
    abandoned = AbandonedRequests()
    api = AdapterAPI(settings, abandoned, max_batch_size, batch_timeout)
    guard = (RequestGuard, {"max_bytes": max_body_bytes, "abandoned": abandoned})
    server = ls.LitServer(api, accelerator="cpu", timeout=timeout, middlewares=[guard])
    available = [{"name": name, **record} for name, record in settings.available.items()]

    async def adapters(request: Request) -> JSONResponse:
        try:
            held = json.loads(Path(settings.status_file).read_text())
        except (OSError, ValueError):  # the worker is still loading the adapters named at start
            held = {"loaded": [], "memory_mb": None, "counts": {}}
        return JSONResponse({**held, "available": available})

    server.app.add_api_route("/adapters", adapters, methods=["GET"])
    server.app.add_exception_handler(RequestValidationError, _refuse_malformed)
    return server


def run_server(server: ls.LitServer, host: str, port: int) -> None:
    """Serves until Ctrl-C or SIGTERM, either of which shuts LitServe's processes down (its worker among them)."""

    owner = os.getpid()

    def interrupt(signal_number: int, frame: Any) -> None:
        if os.getpid() != owner:  # a process LitServe forked (uvicorn's), stopped by LitServe itself: just exit
            raise SystemExit(0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        server.run(host=host, port=port, generate_client_file=False, log_level="warning", num_api_servers=1)
    finally:
        # stopped while the worker still loads: LitServe has not reached its own shutdown, which stops it
        for worker in getattr(server, "inference_workers", []):
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=10)
