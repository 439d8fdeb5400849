"""HEAD on the GET routes: the GET's status and headers, no body (RFC 9110, 9.3.2).

FastAPI registers a route for the methods it is declared with, so a GET route answers HEAD
with 405 unless told otherwise; uptime checkers and download managers (a result's size and
``Accept-Ranges`` before a ranged download) send HEAD. Each GET route gets a HEAD twin: the
same endpoint and checks (API key, query parameters), left out of the OpenAPI document
(HEAD is implied by GET). The HTTP server sends no body for HEAD; an endpoint that would
read a body only to drop it (a job's result) sees ``request.method`` and reads none.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from fastapi import APIRouter
from fastapi.routing import APIRoute


def head_router(routers: Iterable[APIRouter], without: Collection[Callable]) -> APIRouter:
    """A HEAD twin for each GET route of ``routers`` but those whose endpoint is in
    ``without`` (an answer that never ends, a WebSocket's path); include it after them."""
    heads = APIRouter()
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute) or "GET" not in route.methods:
                continue
            if route.endpoint in without:
                continue
            heads.add_api_route(
                route.path,
                route.endpoint,
                methods=["HEAD"],
                name=f"{route.name}_head",
                dependencies=route.dependencies,
                status_code=route.status_code,
                response_class=route.response_class,
                response_model=route.response_model,
                include_in_schema=False,
            )
    return heads
