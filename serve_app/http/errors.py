"""Every failure, ours or the framework's, answered in the API's one JSON shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import (
    ClientClosedRequest,
    InvalidParameters,
    MethodNotAllowed,
    NotFound,
    ServiceError,
)

logger = logging.getLogger(__name__)


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(error.to_dict(), status_code=error.status, headers=error.headers)


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("query", "body"))
        parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts) or "invalid request parameters"


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path: Starlette's own Allow header names only
    the first route that matched, though GET and DELETE of one path are two routes."""
    methods: set[str] = set()
    # Included routers are wrapped: their own routes are the ones that match.
    for context in iter_route_contexts(request.app.routes):
        route = context.original_route
        route_methods = getattr(route, "methods", None)
        if not route_methods:
            continue
        match, _ = route.matches({**request.scope, "method": next(iter(route_methods))})
        if match == Match.FULL:
            methods |= route_methods
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure, ours or the framework's, answers in the one JSON shape."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, error: ServiceError):
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid_parameters(_: Request, error: RequestValidationError):
        return error_response(InvalidParameters(_validation_message(error)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        known = {404: NotFound, 405: MethodNotAllowed}.get(error.status_code)
        if known is None:
            body = {"error": {"code": "http_error", "message": str(error.detail)}}
            return JSONResponse(body, status_code=error.status_code, headers=error.headers)
        response = error_response(known(str(error.detail)))
        response.headers.update(error.headers or {})
        allowed = allowed_methods(request) if error.status_code == 405 else []
        if allowed:  # else the raiser's own (a mount, such as the static files', declares none)
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(_: Request, __: ClientDisconnect):
        # Nobody reads it: the status is for the request's log line and metrics.
        return error_response(ClientClosedRequest("the client hung up before its answer"))

    # The last resort, for a failure in a middleware outside AnswerUnexpectedErrors:
    # Starlette answers it from its outermost layer, without CORS headers.
    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception):
        return unexpected_error_response()


def unexpected_error_response() -> JSONResponse:
    logger.exception("unexpected error")
    return error_response(ServiceError())


class AnswerUnexpectedErrors:
    """Answers an exception that no handler took with the JSON 500, from inside the app's
    middleware: Starlette's own catch-all answers from outside all of them, so a browser
    could not read that 500 (no CORS headers) and the request's log line had no answer.
    An answer already under way cannot be replaced: its failure goes on up."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answering = False

        async def send_noting_start(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception:
            if answering:
                raise
            await unexpected_error_response()(scope, receive, send)
