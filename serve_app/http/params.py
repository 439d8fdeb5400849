"""The stylize options as HTTP query parameters (derived from ``StylizeOptions``), the
service a route works with, and whose jobs a request may reach."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Annotated, Any

from fastapi import Depends, Query, Request, WebSocket
from fastapi.dependencies.models import Dependant
from starlette.datastructures import QueryParams
from starlette.requests import HTTPConnection

from serve_app.errors import (
    WS_CLOSE_OFFSET,
    InvalidParameters,
    OriginRefused,
    ServiceError,
    Unauthorized,
)
from serve_app.http.security import key_is_valid, origin_allowed, require_api_key
from serve_app.jobs.records import ANONYMOUS, owner_of
from serve_app.options import option_fields
from serve_app.service.service import AnimeService


def query_values(query: QueryParams, taken: Collection[str]) -> dict[str, str]:
    """The query's values by name; 422 ``invalid_parameters`` for a name not in ``taken``
    or one sent twice: a misspelt option or a second value would otherwise be dropped
    without a word."""
    values: dict[str, str] = {}
    for name, value in query.multi_items():
        if name not in taken:
            raise InvalidParameters(
                f"unknown query parameter {name!r}; this route takes {sorted(taken)}"
            )
        if name in values:
            raise InvalidParameters(f"query parameter {name!r} sent more than once")
        values[name] = value
    return values


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included (a few, walked per
    request: cheaper than a cache that outlives the app)."""
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


# Every dependency here is a coroutine function though none of them awaits: FastAPI runs a
# plain function's in its thread pool, a hop to a worker thread and back per dependency
# per request, which cost the ingress more CPU on a cache hit than the lookup itself.


async def exact_query(connection: HTTPConnection) -> None:
    """A route that takes query parameters refuses any other, and any sent twice; one that
    takes none ignores a query (a page's own link parameters, a cache buster)."""
    taken = _query_names(connection.scope["route"].dependant)
    if taken:
        query_values(connection.query_params, taken)


# What every /v1 route checks before its own work: the API key, then the query's names.
API_CHECKS = [Depends(require_api_key), Depends(exact_query)]


def make_stylize_query(
    names: tuple[str, ...] | None = None,
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """One FastAPI dependency taking every option of ``StylizeOptions`` as a query
    parameter: its name, its type (a wrong type answers 422 ``invalid_parameters``) and its
    description, each optional. Its values are checked by ``resolve_options`` (the service's
    ``options``), so a refused value gets the option's own error. ``names``: only these
    options (default: all)."""

    async def stylize_query(**sent: Any) -> dict[str, Any]:
        """The options as sent (None: not sent), for the service to resolve."""
        return sent

    stylize_query.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                option.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    option.value_type | None, Query(description=option.description)
                ],
            )
            for option in option_fields()
            if names is None or option.name in names
        ]
    )
    return stylize_query


stylize_query = make_stylize_query()
StylizeQuery = Annotated[dict, Depends(stylize_query)]


async def service_of(request: Request) -> AnimeService:
    return request.app.state.service


Service = Annotated[AnimeService, Depends(service_of)]


def api_key_of(headers: Mapping[str, str]) -> str | None:
    """The API key a request offers: ``Authorization: Bearer <key>``, or (browsers cannot
    set headers on a WebSocket) a ``Sec-WebSocket-Protocol`` value ``bearer.<key>``, which
    keeps it out of URLs and access logs."""
    scheme, _, offered = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and offered.strip():
        return offered.strip()
    for protocol in (headers.get("sec-websocket-protocol") or "").split(","):
        protocol = protocol.strip()
        if protocol.startswith(BEARER_PROTOCOL_PREFIX):
            return protocol[len(BEARER_PROTOCOL_PREFIX) :]
    return None


BEARER_PROTOCOL_PREFIX = "bearer."


def owner_of_request(request: HTTPConnection) -> str:
    """Whose jobs a request may reach: its API key's (checked by ``require_api_key``
    first), or everyone's on an open service (then a job is reached by its id only)."""
    if not getattr(request.app.state, "api_keys", ()):
        return ANONYMOUS
    return owner_of(api_key_of(request.headers))


async def _owner(request: HTTPConnection) -> str:
    return owner_of_request(request)


Owner = Annotated[str, Depends(_owner)]


# A close frame's reason is at most 123 bytes of UTF-8.
WS_MAX_REASON_BYTES = 123


async def close_socket(websocket: WebSocket, error: ServiceError) -> None:
    """Close with 4000 + the error's status and the reason ``"<code>: <message>"`` (cut to
    fit a close frame), so a client can tell the error class as from a JSON answer."""
    reason = f"{error.code}: {error.message}".encode()[:WS_MAX_REASON_BYTES]
    await websocket.close(WS_CLOSE_OFFSET + error.status, reason.decode(errors="ignore"))


async def accept_socket(websocket: WebSocket, protocol: str) -> bool:
    """Accept a WebSocket (speaking ``protocol`` when the client offers it) and check its
    origin and API key; False once it is closed, with 4403 for a web page of another site
    (``origin_allowed``) or 4401 for a missing or wrong key.

    Browsers cannot set headers on a WebSocket: they offer the key as the subprotocol
    ``bearer.<key>`` beside the route's own, which the server picks. Refusals come after
    the handshake: a browser sees a refused handshake only as a failed connection, and a
    close code and reason say why."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    await websocket.accept(subprotocol=protocol if protocol in offered else None)
    origin = websocket.headers.get("origin")
    allowed = websocket.app.state.service.config.cors_origins
    if not origin_allowed(origin, websocket.headers.get("host"), allowed):
        message = f"a page of {origin} may not open this WebSocket; see cors_origins"
        await close_socket(websocket, OriginRefused(message))
        return False
    keys = getattr(websocket.app.state, "api_keys", ())
    key = api_key_of(websocket.headers)
    if keys and not (key and key_is_valid(f"Bearer {key}", keys)):
        await close_socket(websocket, Unauthorized("this service requires an API key"))
        return False
    return True
