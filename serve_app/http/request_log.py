"""Per-request context: the request id, one structured log line, metrics.

A pure ASGI middleware: it adds no task or copy per request (the cache-hit path is meant
to cost little more than the framework itself).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import ClientClosedRequest
from serve_app.metrics import IngressMetrics

# A child of Serve's logger: lines land in the replica's log file, formatted and filtered
# by the application's `logging_config` like Serve's own.
logger = logging.getLogger("ray.serve.animegan.requests")

MAX_REQUEST_ID_CHARS = 128


@functools.cache
def ingress_metrics() -> IngressMetrics:
    """Created on first use inside a replica, never at import."""
    return IngressMetrics()


def request_id_from(scope: Scope) -> str:
    """Serve's proxy puts the request id (the caller's `X-Request-ID`, else a new UUID) in
    the request headers and returns it on the response; outside Serve, make one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return value.decode("latin-1")[:MAX_REQUEST_ID_CHARS]
    return str(uuid.uuid4())


def route_label(scope: Scope) -> str:
    """The route's path template (``/v1/jobs/{job_id}``): one label per route, never one
    per URL; "other" for requests no route matched."""
    path = scope.get("path", "")
    if path.startswith("/static/"):
        return "/static"
    template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else "other"


def log_fields(scope: Scope) -> dict:
    """The dict a route fills with what the log line should say (style, cache, timings)."""
    return scope.setdefault("state", {}).setdefault("log", {})


# Probes and assets would drown the log; they are counted in the metrics all the same.
UNLOGGED_ROUTES = frozenset({"/healthz", "/readyz", "/static"})


class RequestContextMiddleware:
    """Counts and times every HTTP request and WebSocket session by route and status, and
    logs one line for each (a WebSocket's status: 101 once accepted, else the refusal's;
    an HTTP request whose client hung up before its answer: 499)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        started = time.perf_counter()
        # An HTTP request that ends without an answer is the server's fault, unless it was
        # cancelled (Serve cancels a request whose client hung up); a WebSocket closed
        # before its accept was refused (the ASGI server answers 403).
        unanswered = 500 if scope["type"] == "http" else 403
        status: int | None = None

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.close" and status == 101:
                log_fields(scope)["close_code"] = message.get("code", 1000)
            await send(message)

        if scope["type"] == "http":
            receive = _disconnect_when_failing(receive)
        try:
            await self.app(scope, receive, send_and_note_status)
        except asyncio.CancelledError:
            if scope["type"] == "http":
                unanswered = ClientClosedRequest.status
            raise
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1e3
            self._record(scope, request_id, status or unanswered, elapsed_ms)

    @staticmethod
    def _record(scope: Scope, request_id: str, status: int, elapsed_ms: float) -> None:
        route = route_label(scope)
        metrics = ingress_metrics()
        metrics.requests.inc(tags={"route": route, "status": str(status)})
        metrics.request_ms.observe(elapsed_ms, tags={"route": route})
        if route in UNLOGGED_ROUTES:
            return
        method = scope.get("method", "WEBSOCKET")
        fields = {
            "request_id": request_id,
            "method": method,
            "route": route,
            "status": status,
            "ms": round(elapsed_ms, 1),
            **log_fields(scope),
        }
        # With Serve's `logging_config: encoding: JSON` each field is a key of the line's
        # JSON object (beside Serve's own: replica, request_id, ...); the message is the
        # line a person reads in the text encoding.
        logger.info(
            "%s %s %s %.1f ms",
            method,
            route,
            status,
            elapsed_ms,
            extra={"ray_serve_extra_fields": fields},
        )


def _disconnect_when_failing(receive: Receive) -> Receive:
    """``receive``, except that a failure of it reads as the client's disconnect, which it
    is: Serve's proxy cancels its side of a request whose client hung up, and the
    replica's ``receive`` then raises Ray's cancellation error instead of answering
    ``http.disconnect`` (Starlette reads that as ``ClientDisconnect``; an error there was
    answered and counted as a 500)."""

    async def receive_or_disconnect() -> Message:
        try:
            return await receive()
        except Exception:
            return {"type": "http.disconnect"}

    return receive_or_disconnect
