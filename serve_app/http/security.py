"""Optional API keys for the /v1 routes, and CORS (off unless configured)."""

from __future__ import annotations

import hmac
import logging
import os

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from serve_app.errors import Unauthorized

logger = logging.getLogger(__name__)

EXPOSED_HEADERS = ["X-Cache", "X-Style", "X-Weights", "X-Request-ID", "ETag"]


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


def enable_cors(app: FastAPI, origins: list[str]) -> None:
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=EXPOSED_HEADERS,
    )
