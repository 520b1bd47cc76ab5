"""`onnx-serve`'s HTTP API as a Starlette app (see docs/serving.md and `GET /openapi.json`).

`Front`, a plain ASGI layer outside the routes, does what every request needs: the bearer-token
check (constant-time), the body limit (a declared length over it is answered 413 before any byte
of the body is read; a chunked body is cut off where it passes the limit), the access log (method,
path, status, time: never a byte of the body, every client string escaped), the request metrics,
and one JSON error line instead of a traceback for anything unexpected.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Optional

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import first_line
from .image import Encoded
from .serve_batcher import Batcher, QueueFull, ShuttingDown
from .serve_metrics import Metrics
from .serve_models import ModelSlot
from .serve_page import CSP, PAGE
from .serve_schema import openapi
from .terminal import printable

log = logging.getLogger("alexnet_onnx.serve")
access = logging.getLogger("alexnet_onnx.serve.access")

# A body must arrive within this (a client trickling bytes is answered 408 and let go).
BODY_TIMEOUT_S = 60.0
RETRY_AFTER_S = 1  # what a 503 asks the client to wait
# The status logged and counted for a client that left before its answer (nginx's convention;
# nobody receives it).
CLIENT_GONE = 499
RAW_NAME = "upload"  # a raw body's row path when no ?name= is given
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/openapi.json"})
HANDLERS = frozenset({"/", "/healthz", "/readyz", "/openapi.json", "/metrics", "/v1/model", "/v1/classify"})
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Service:
    """What the routes share: the model slot, the batcher, the metrics and the limits."""

    slot: ModelSlot
    batcher: Batcher
    metrics: Metrics
    max_body: int
    version: str
    debug: bool = False
    draining: bool = False


class BodyTooLarge(Exception):
    pass


def json_response(obj: dict, status: int = 200, headers: Optional[dict] = None) -> Response:
    """ASCII escapes for every non-ASCII or control character, whatever the text came from."""
    return Response(json.dumps(obj, allow_nan=False), status, headers, media_type="application/json")


def error_response(status: int, message: str, headers: Optional[dict] = None) -> Response:
    return json_response({"error": message}, status, headers)


def build_app(service: Service, *, token: Optional[str], cors: Optional[str]):
    """The ASGI app: the routes inside `Front`, inside CORS middleware only when `cors` is set."""
    async def page(request: Request) -> Response:
        return Response(PAGE, media_type="text/html", headers={
            "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    async def healthz(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def readyz(request: Request) -> Response:
        if service.draining:
            return Response("draining\n", 503, media_type="text/plain")
        return Response("ready\n", media_type="text/plain")

    async def schema(request: Request) -> Response:
        return json_response(openapi(service.version))

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=METRICS_TYPE)

    async def model(request: Request) -> Response:
        return json_response(service.slot.current.describe())

    async def classify_route(request: Request) -> Response:
        return await classify(request, service)

    async def crashed(request: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")

    routes = [Route("/", page, methods=["GET"]), Route("/healthz", healthz, methods=["GET"]),
              Route("/readyz", readyz, methods=["GET"]), Route("/openapi.json", schema, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"]), Route("/v1/model", model, methods=["GET"]),
              Route("/v1/classify", classify_route, methods=["POST"])]
    # `crashed` shapes the 500's body; the exception still reaches Front, which logs it.
    app = Front(Starlette(routes=routes, exception_handlers={Exception: crashed}), service, token)
    if cors:
        from starlette.middleware.cors import CORSMiddleware

        return CORSMiddleware(app, allow_origins=[cors], allow_methods=["GET", "POST"],
                              allow_headers=["Authorization", "Content-Type"], max_age=600)
    return app


async def classify(request: Request, service: Service) -> Response:
    start = time.monotonic()
    metrics = service.metrics
    model = service.slot.current
    try:
        top_k = int(request.query_params.get("top_k", "1"))
    except ValueError:
        top_k = 0
    if top_k < 1:
        return error_response(400, "top_k must be a whole number >= 1")
    try:
        images = await asyncio.wait_for(_read_images(request, service), BODY_TIMEOUT_S)
    except BodyTooLarge:
        return _too_large(service)
    except asyncio.TimeoutError:
        metrics.error("timeout")
        return error_response(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s",
                              {"Connection": "close"})
    except ClientDisconnect:
        metrics.error("client_gone")
        return Response(status_code=CLIENT_GONE)
    except HTTPException as exc:  # a malformed multipart body
        metrics.error("bad_request")
        return error_response(exc.status_code, f"malformed multipart body: {exc.detail}")
    if isinstance(images, str):
        metrics.error("bad_request")
        return error_response(400, images)
    try:
        jobs = service.batcher.submit(model, images, top_k)
    except QueueFull:
        metrics.error("queue_full")
        return error_response(503, f"the queue is full ({service.batcher.max_queue} images waiting); retry shortly",
                              {"Retry-After": str(RETRY_AFTER_S)})
    except ShuttingDown:
        return error_response(503, "the server is shutting down", {"Retry-After": str(RETRY_AFTER_S)})
    futures = [asyncio.wrap_future(job.future) for job in jobs]
    results = asyncio.gather(*futures)
    gone = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not results.done():  # the client left: drop its images that have not run yet
        results.cancel()
        for job in jobs:
            job.future.cancel()
        metrics.error("client_gone")
        return Response(status_code=CLIENT_GONE)
    gone.cancel()
    rows = results.result()
    kinds = {row.kind for row in rows}
    if "ok" in kinds:
        status = 200
    elif "model" in kinds:
        status = 500
    else:
        status = 415 if kinds == {"unsupported"} else 422
    seconds = time.monotonic() - start
    head = {"model_sha256": model.sha256, "seconds": round(seconds, 6)}
    if status != 200:
        head["error"] = json.loads(rows[0].line)["error"]
    # The rows are the CLI's own JSON lines, spliced in byte for byte.
    body = json.dumps(head)[:-1] + ', "rows": [' + ", ".join(row.line for row in rows) + "]}"
    metrics.request("/v1/classify", "POST", status, seconds)
    return Response(body, status, media_type="application/json")


async def _read_images(request: Request, service: Service) -> list[Encoded] | str:
    """The images in the body, or a one-line reason there are none."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        limit = service.batcher.max_queue
        async with request.form(max_files=limit, max_fields=limit) as form:
            images = []
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    name = value.filename or f"{RAW_NAME}-{len(images) + 1}"
                    images.append(Encoded(name, await value.read()))
        return images or "the multipart body has no file part; send each image as a file"
    body = await request.body()
    if not body:
        return "the request has no image: send it as the body, or as multipart/form-data files"
    return [Encoded(request.query_params.get("name") or RAW_NAME, body)]


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body is already read, so only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _too_large(service: Service) -> Response:
    service.metrics.error("too_large")
    return error_response(413, f"the body is larger than --max-body-mb ({service.max_body >> 20} MiB)",
                          {"Connection": "close"})


class Front:
    """Auth, body limit, access log, request metrics and the last-resort error line (see module doc)."""

    def __init__(self, app, service: Service, token: Optional[str]) -> None:
        self.app, self.service = app, service
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        path = scope["path"]
        handler = path if path in HANDLERS else "other"
        status = [0]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            early = self._refuse(scope, path)
            if early is not None:
                await early(scope, receive, sending)
            else:
                await self.app(scope, self._limited(receive), sending)
        except Exception as exc:
            self.service.metrics.error("internal")
            log.error("internal error on %s %s: %s: %s", scope["method"], printable(path), type(exc).__name__,
                      printable(first_line(exc, 300)))
            if self.service.debug:
                log.error("%s", traceback.format_exc())
            if not status[0]:
                await error_response(500, f"internal error ({type(exc).__name__}); see the server log")(
                    scope, receive, sending)
        seconds = time.monotonic() - start
        if handler != "/v1/classify" or status[0] not in (200, 415, 422, 500):
            self.service.metrics.request(handler, scope["method"], status[0], None)
        client = scope.get("client") or ("-", 0)
        access.info('%s "%s %s" %d %.1fms', printable(str(client[0])), printable(scope["method"]), printable(path),
                    status[0], 1000 * seconds)

    def _refuse(self, scope, path: str) -> Optional[Response]:
        """The answer to a request refused before its body is read, or None."""
        if self.token is not None and path not in OPEN_PATHS and not self._authorized(scope):
            self.service.metrics.error("unauthorized")
            return error_response(401, "a valid bearer token is required (Authorization: Bearer TOKEN)",
                                  {"WWW-Authenticate": 'Bearer realm="onnx-serve"', "Connection": "close"})
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                self.service.metrics.error("bad_request")
                return error_response(400, "the Content-Length header is not a number", {"Connection": "close"})
            if length > self.service.max_body:
                return _too_large(self.service)
        return None

    def _authorized(self, scope) -> bool:
        given = _header(scope, b"authorization") or b""
        scheme, _, value = given.partition(b" ")
        # compare_digest takes time independent of where the first difference is.
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token)

    def _limited(self, receive):
        limit, seen = self.service.max_body, [0]

        async def limited():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise BodyTooLarge()
            return message

        return limited


def _header(scope, name: bytes) -> Optional[bytes]:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None
