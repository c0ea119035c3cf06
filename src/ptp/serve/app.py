"""The Starlette application: OpenAI's routes, API-key check, body limit, JSON errors and response counting."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .engine import Engine
from .errors import APIError
from .metrics import Metrics
from .responses import Envelope, chunk, completion, sse
from .schema import MAX_BODY_BYTES, parse_json, parse_request
from .worker import Delta, Done, Failed, Job

log = logging.getLogger("ptp.serve")

PATHS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")
CLOSED = 499  # status recorded for a client that left before its answer (nobody receives it)


class CountResponses:
    """ASGI middleware counting every response by route and status (unknown paths as "other", so a
    client cannot grow the metric's label set)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in PATHS else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.response(path, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it exceeds ``limit`` bytes."""
    too_large = APIError(413, f"the request body exceeds {limit} bytes", code="request_too_large")
    try:
        if int(request.headers.get("content-length", "0")) > limit:
            raise too_large
    except ValueError:
        pass  # the server already refuses a malformed Content-Length; a chunked body has none
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large
        chunks.append(part)
    return b"".join(chunks)


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns once the client has gone (the body is read by then, so receive only reports the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(engine: Engine, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The ASGI app serving ``engine``; its decoding worker runs while the app is up (lifespan)."""

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send the header Authorization: Bearer KEY",
                           code="invalid_api_key", type="authentication_error")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": engine.model_id, "queue_depth": engine.worker.depth})

    async def models(request: Request) -> Response:
        authorize(request)
        card = {"id": engine.model_id, "object": "model", "created": engine.created, "owned_by": "ptp"}
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics(request: Request) -> Response:
        authorize(request)
        return PlainTextResponse(engine.metrics.render(engine.worker.depth), media_type="text/plain; version=0.0.4")

    async def answer(request: Request, chat: bool) -> Response:
        authorize(request)
        body = parse_json(await read_body(request, max_body_bytes))
        parsed = parse_request(body, chat, engine.model_id)
        job = engine.job(parsed, asyncio.get_running_loop())
        engine.worker.submit(job)
        envelope = Envelope(chat=chat, model=engine.model_id)
        if parsed.stream:
            return StreamingResponse(stream(job, envelope), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await whole(request, job, envelope)

    async def chat_completions(request: Request) -> Response:
        return await answer(request, chat=True)

    async def completions(request: Request) -> Response:
        return await answer(request, chat=False)

    async def whole(request: Request, job: Job, envelope: Envelope) -> Response:
        def on_disconnect(task: asyncio.Future) -> None:
            if not task.cancelled() and task.exception() is None:
                job.cancel()

        watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
        watcher.add_done_callback(on_disconnect)
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, Done):
                    return JSONResponse(completion(envelope, event))
                if isinstance(event, Failed):
                    raise event.error
                if not isinstance(event, Delta):  # Gone: the client left, nobody reads this
                    return Response(status_code=CLOSED)
        finally:
            watcher.cancel()

    async def stream(job: Job, envelope: Envelope) -> AsyncIterator[bytes]:
        # Starlette cancels this generator when the client disconnects; the finally then stops the decoder.
        try:
            if envelope.chat:
                yield sse(chunk(envelope, role=True))
            while True:
                event = await job.events.get()
                if isinstance(event, Delta):
                    yield sse(chunk(envelope, text=event.text))
                elif isinstance(event, Done):
                    yield sse(chunk(envelope, done=event))
                    yield sse("[DONE]")
                    return
                elif isinstance(event, Failed):
                    yield sse(event.error.body())
                    return
                else:
                    return
        finally:
            job.cancel()

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        what = {404: f"no route {request.url.path!r}: use one of {', '.join(PATHS)}",
                405: f"method {request.method} is not allowed on {request.url.path}"}
        return await api_error(request, APIError(exc.status_code, what.get(exc.status_code, str(exc.detail)),
                                                 code="not_found" if exc.status_code == 404 else None))

    async def client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=CLOSED)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s", request.url.path, exc_info=exc)
        return await api_error(request, APIError(500, "internal server error: see the server log",
                                                 code="internal_error", type="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.worker.close)

    routes = [
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    handlers: dict[Any, Any] = {APIError: api_error, HTTPException: http_error, ClientDisconnect: client_gone,
                                Exception: server_error}
    return Starlette(routes=routes, middleware=[Middleware(CountResponses, metrics=engine.metrics)],
                     exception_handlers=handlers, lifespan=lifespan)
