"""Optional API keys for the /v1 routes, CORS (off unless configured), and the origins
that may open a WebSocket."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from starlette.datastructures import Headers
from starlette.responses import Response

from serve_app.errors import CorsRefused, Unauthorized
from serve_app.http.errors import error_response

logger = logging.getLogger(__name__)

# Request headers a browser client sends that no route declares as a parameter: the key,
# the body's type, the request's id, a byte range of a result and the version it is of,
# and the version a client holds already.
# The routes' own header parameters (Idempotency-Key, Prefer) are added from the routes.
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "X-Request-ID",
    "Range",
    "If-Range",
    "If-None-Match",
)
# Response headers a browser client may read (CORS hides all but a few otherwise): the
# picture's, the request's id, a job's URL and waiting, ranges, and when to retry. Headers
# that the routes document in their responses are added from the routes.
EXPOSED_HEADERS = (
    "X-Cache",
    "X-Style",
    "X-Weights",
    "X-Request-ID",
    "ETag",
    "Location",
    "Retry-After",
    "Content-Range",
    "Accept-Ranges",
    "Content-Length",
    "Preference-Applied",
)


def load_api_keys(env_var: str | None) -> tuple[bytes, ...]:
    """The keys in ``env_var`` (comma-separated); none means the routes are open."""
    raw = os.environ.get(env_var, "") if env_var else ""
    keys = tuple(key.strip().encode() for key in raw.split(",") if key.strip())
    logger.info("API keys: %s", f"{len(keys)} configured" if keys else "none (open)")
    return keys


def key_is_valid(authorization: str | None, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every key, so timing says nothing of a near miss."""
    scheme, _, offered = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not offered:
        return False
    offered_bytes = offered.strip().encode()
    matches = [hmac.compare_digest(offered_bytes, key) for key in keys]
    return any(matches)


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries a configured key (if any)."""
    keys: tuple[bytes, ...] = getattr(request.app.state, "api_keys", ())
    if keys and not key_is_valid(request.headers.get("authorization"), keys):
        raise Unauthorized("this service requires an API key: send 'Authorization: Bearer <key>'")


def checks_api_key(dependant: Dependant) -> bool:
    """Whether a route (or one of its dependencies) depends on ``require_api_key``."""
    return dependant.call is require_api_key or any(
        checks_api_key(dependency) for dependency in dependant.dependencies
    )


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a WebSocket's ``Origin`` may open it: none sent (not a browser), one of
    ``allowed`` (the CORS origins; ``*``: any), or a page of the service's own host (the
    host name of the ``Host`` it was asked under; ports aside, since a reverse proxy may
    pass the host without its port).

    Browsers send Origin on every WebSocket and apply no CORS to them: without this check
    any site could run its visitors' cameras through an open service's model, which CORS
    keeps it from doing over the HTTP routes."""
    if origin is None or "*" in allowed or origin in allowed:
        return True
    try:
        origin_host = urlsplit(origin).hostname
        own_host = urlsplit(f"//{host or ''}").hostname
    except ValueError:  # a malformed Origin or Host
        return False
    return origin_host is not None and origin_host == own_host


def enable_cors(app: FastAPI, origins: list[str]) -> None:
    """CORS for ``origins`` over every method, request header and response header of the
    app's routes: call it once the routers are included."""
    if not origins:
        return
    routes = api_routes(app)
    app.add_middleware(
        JsonCORSMiddleware,
        allow_origins=origins,
        allow_methods=sorted({"OPTIONS", *(m for route in routes for m in route.methods)}),
        allow_headers=_unique([*ALLOWED_HEADERS, *_declared_request_headers(routes)]),
        expose_headers=_unique([*EXPOSED_HEADERS, *_declared_response_headers(routes)]),
    )


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, its refusal of a preflight in the API's JSON error shape (Starlette
    answers it in plain text)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        refusal = error_response(CorsRefused(bytes(answer.body).decode()))
        for name, value in answer.headers.items():
            if name not in ("content-type", "content-length"):
                refusal.headers[name] = value
        return refusal


def api_routes(app: FastAPI) -> list[RouteContext]:
    """The app's HTTP API routes (not its docs pages, mounts or WebSockets), as included."""
    return [
        context
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
    ]


def _declared_request_headers(routes: list[RouteContext]) -> list[str]:
    """The header parameters the routes and their dependencies take (``Idempotency-Key``),
    as sent on the wire."""
    return [name for route in routes for name in _header_names(route.dependant)]


def _header_names(dependant: Dependant) -> Iterator[str]:
    yield from (param.alias for param in dependant.header_params)
    for dependency in dependant.dependencies:
        yield from _header_names(dependency)


def _declared_response_headers(routes: list[RouteContext]) -> list[str]:
    return [
        name
        for route in routes
        for response in route.responses.values()
        for name in response.get("headers", {})
    ]


def _unique(names: list[str]) -> list[str]:
    """Header names without repeats (compared case-insensitively), in first-seen order."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.lower(), name)
    return list(seen.values())
