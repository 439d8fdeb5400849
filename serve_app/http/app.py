"""The FastAPI application over a service: routers, error handlers, request context,
API keys, CORS and the OpenAPI document with the config's limits.

Routes are thin over the service (``serve_app/service``); the ingress deployment builds
one app per replica, after composing the service.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from serve_app.http import jobs, live, meta, stylize
from serve_app.http.errors import AnswerUnexpectedErrors, install_error_handlers
from serve_app.http.head import head_router
from serve_app.http.openapi import openapi_document
from serve_app.http.request_log import RequestContextMiddleware
from serve_app.http.security import enable_cors, load_api_keys
from serve_app.service.examples import document_examples
from serve_app.service.service import AnimeService

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


ROUTERS = (stylize.router, jobs.router, live.router, meta.router)


def create_app(service: AnimeService) -> FastAPI:
    """The HTTP API of ``service``: its config's API keys, CORS origins and limits (in the
    OpenAPI document) take effect."""
    config = service.config
    app = FastAPI(
        title="animegan-serve",
        summary="Photo in, anime-style picture out (AnimeGANv2 on Ray Serve).",
        version="1",
    )
    app.state.service = service
    app.state.api_keys = load_api_keys(config.api_key_env)
    install_error_handlers(app)
    # Innermost first: a bug's 500 then passes the request's log line, metrics and CORS.
    app.add_middleware(AnswerUnexpectedErrors)
    app.add_middleware(RequestContextMiddleware)
    app.mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static")
    for router in ROUTERS:
        app.include_router(router)
    # Not the event stream (its answer never ends) nor the live socket's plain-HTTP path.
    app.include_router(head_router(ROUTERS, without=(jobs.job_events_route, live.live_route)))
    enable_cors(app, config.cors_origins)  # over the routes' methods and headers

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = openapi_document(app, config)
            document_examples(document, service.examples)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
    return app
