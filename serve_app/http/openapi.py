"""The OpenAPI contract: request bodies, response headers and error statuses of the routes,
and the document with the constraints of the running config."""

from __future__ import annotations

import copy
import re

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serve_app.config import AppConfig
from serve_app.errors import ErrorBody
from serve_app.http.security import api_routes, checks_api_key
from serve_app.http.uploads import RAW_MEDIA_TYPES
from serve_app.imaging.pixels import MEDIA_TYPES
from serve_app.media import probe
from serve_app.options import option_fields

ERROR_DESCRIPTIONS = {
    400: "not a usable picture or video (undecodable, empty, too small), or a broken "
    "multipart body",
    401: "an API key is configured and the request has none or a wrong one",
    403: "listing jobs needs an API key (on an open service a job is reached by its id)",
    404: "no such job, or not the caller's (`unknown_job`), or one that expired (`job_expired`)",
    408: "no part of the upload arrived for `limits.upload_idle_timeout_s` (`upload_stalled`)",
    413: "more bytes, pixels, frames, seconds or multipart parts than the limits allow",
    415: "a picture format or video codec not accepted, or a body neither multipart nor "
    "image/* (video/* for jobs)",
    416: "a Range past the end of the result",
    422: "a bad parameter, or no picture in the multipart body (a refused webhook, a reused "
    "Idempotency-Key)",
    426: "a WebSocket route asked for with plain HTTP",
    429: "the API key is at one of its bounds: pictures in progress on the picture routes "
    "(`too_many_pictures`), jobs queued or running on `POST /v1/jobs` (`too_many_jobs`); "
    "retry after Retry-After seconds",
    500: "a bug; the server log has the traceback",
    503: "at capacity, the model could not answer, the job store is unavailable, or (/readyz) "
    "not ready yet; retry after Retry-After seconds",
    504: "not ready within the request's deadline",
    507: "the job store is full; retry later",
}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    416: {"Content-Range": {"schema": {"type": "string"}, "description": "`bytes */size`"}},
    426: {"Upgrade": {"schema": {"type": "string"}, "description": "websocket"}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    503: {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
}


def error_statuses(*statuses: int) -> dict:
    """OpenAPI entries for the error statuses a route can answer."""
    return {
        status: {
            "model": ErrorBody,
            "description": ERROR_DESCRIPTIONS[status],
            **({"headers": ERROR_HEADERS[status]} if status in ERROR_HEADERS else {}),
        }
        for status in statuses
    }


BINARY = {"type": "string", "format": "binary"}
ERROR_BODY_REF = "#/components/schemas/ErrorBody"
# The types a client may label a picture with; the server goes by the bytes' signature.
IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
    "image/heic",
    "image/heif",
    "image/avif",
)
RAW_BODY = {media_type: {"schema": BINARY} for media_type in (*IMAGE_TYPES, *RAW_MEDIA_TYPES)}


def multipart_body(field: str, many: bool, types: tuple[str, ...] = IMAGE_TYPES) -> dict:
    schema = {"type": "array", "items": BINARY, "minItems": 1} if many else BINARY
    # The contract is the picture field alone: the server refuses any other field (422).
    form = {
        "type": "object",
        "required": [field],
        "properties": {field: schema},
        "additionalProperties": False,
    }
    encoding = {field: {"contentType": ", ".join(types)}}
    return {"multipart/form-data": {"schema": form, "encoding": encoding}}


VIDEO_TYPES = ("video/mp4", "video/quicktime", "video/x-matroska", "video/webm")
JOB_BODY = {
    **multipart_body("file", many=False, types=(*IMAGE_TYPES, *VIDEO_TYPES)),
    **RAW_BODY,
    **{media_type: {"schema": BINARY} for media_type in VIDEO_TYPES},
}


STYLIZE_ERRORS = error_statuses(400, 401, 408, 413, 415, 422, 429, 500, 503, 504)
PICTURE_HEADERS = {
    "X-Cache": {"schema": {"type": "string", "enum": ["hit", "miss", "coalesced"]}},
    "X-Style": {"schema": {"type": "string"}, "description": "the style applied"},
    "ETag": {"schema": {"type": "string"}, "description": "the cache key, quoted"},
    "X-Weights": {"schema": {"type": "string", "enum": ["random"]}, "description": "untrained"},
}


SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
        "data": {"type": "string", "description": "the job's JSON, as GET /v1/jobs/{id}"},
    },
}
PICTURE_MEDIA_TYPES = sorted({*MEDIA_TYPES.values(), *probe.ANIMATION_MEDIA_TYPES})
RESULT_MEDIA_TYPES = sorted({*PICTURE_MEDIA_TYPES, *probe.VIDEO_MEDIA_TYPES})
_TEXT = {"schema": {"type": "string"}}
RESULT_HEADERS = {
    "ETag": {**_TEXT, "description": "this run's output (an `If-Range` names it)"},
    "Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}},
    "Cache-Control": _TEXT,
}
RANGE_HEADERS = {
    **RESULT_HEADERS,
    "Content-Range": {**_TEXT, "description": "`bytes first-last/size`"},
}
JOB_HEADERS = {"Location": {"schema": {"type": "string"}, "description": "the job's URL"}}


def openapi_document(app: FastAPI, config: AppConfig) -> dict:
    """FastAPI's document, with the query constraints and limits ``config`` enforces."""
    # A copy: the document shares dicts with the routes' openapi_extra.
    schema = copy.deepcopy(
        get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    )
    limits = config.limits
    for path in ("/v1/stylize", "/v1/stylize/batch", "/v1/jobs"):
        operation = schema["paths"][path]["post"]
        _constrain_options(operation, config, synchronous=path != "/v1/jobs")
        operation["requestBody"]["description"] = (
            f"each picture at most {limits.max_bytes} bytes and {limits.max_pixels} pixels"
        )
    _constrain_webhook(schema["paths"]["/v1/jobs"]["post"], config)
    _constrain_live(schema["paths"]["/v1/live"]["get"], config)
    _own_validation_errors(schema)
    _declare_api_key(schema, app)
    batch = schema["paths"]["/v1/stylize/batch"]["post"]["requestBody"]
    images = batch["content"]["multipart/form-data"]["schema"]["properties"]["images"]
    images["maxItems"] = config.max_batch_images
    return schema


# What a webhook URL may hold past its allow-listed prefix (no credentials, no query).
WEBHOOK_PATH_CHARS = r"[A-Za-z0-9._~/%-]*"


def _constrain_webhook(operation: dict, config: AppConfig) -> None:
    """The ``webhook`` parameter as this deploy takes it: under one of the allow-listed
    prefixes, or (none configured) empty only."""
    allow = config.jobs.webhooks.allow
    for parameter in operation.get("parameters", []):
        if parameter["name"] != "webhook":
            continue
        if not allow:
            parameter["schema"] = {"type": "string", "maxLength": 0}
            parameter["description"] = "webhooks are off here (`jobs.webhooks.allow` is empty)"
            continue
        prefixes = "|".join(re.escape(prefix) for prefix in allow)
        pattern = f"^(?:{prefixes}){WEBHOOK_PATH_CHARS}$"
        parameter["schema"] = {"type": "string", "pattern": pattern, "maxLength": 2048}


BEARER_SCHEME = "bearerAuth"  # its name in components.securitySchemes


def _declare_api_key(schema: dict, app: FastAPI) -> None:
    """The API key (``Authorization: Bearer <key>``) as a security scheme, on every operation
    whose route checks it: required once keys are configured; optional on an open service,
    whose routes answer without one. Public routes (health, example photos) have none."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "one of the service's API keys (`api_key_env`); a WebSocket, which "
        "cannot send headers from a browser, offers it as the subprotocol `bearer.<key>`",
    }
    keys_required = bool(getattr(app.state, "api_keys", ()))
    requirement = [{BEARER_SCHEME: []}] if keys_required else [{BEARER_SCHEME: []}, {}]
    for route in api_routes(app):
        if route.include_in_schema and checks_api_key(route.dependant):
            for method in route.methods:
                schema["paths"][route.path_format][method.lower()]["security"] = requirement


def _own_validation_errors(schema: dict) -> None:
    """FastAPI documents a 422 in its own shape wherever a route takes parameters; the
    service answers those in the one error shape (``invalid_parameters``)."""
    ours = error_statuses(422)[422]
    for operations in schema["paths"].values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422")
            content = (answer or {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                operation["responses"]["422"] = {
                    "description": ours["description"],
                    "content": {"application/json": {"schema": {"$ref": ERROR_BODY_REF}}},
                }
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _constrain_live(operation: dict, config: AppConfig) -> None:
    """A live stream's options, with its own default and largest size."""
    _constrain_options(operation, config, synchronous=True)
    for parameter in operation.get("parameters", []):
        if parameter["name"] == "size":
            parameter["schema"]["maximum"] = config.largest_live_size
            parameter["schema"]["default"] = config.live_default_size


def _constrain_options(operation: dict, config: AppConfig, synchronous: bool) -> None:
    """The stylize options' query parameters with the values and limits ``config``
    enforces (``StylizeOptions``' fields). ``synchronous``: for the routes that answer with
    the picture (sizes up to ``limits.max_sync_size``); jobs take sizes up to
    ``limits.max_size``."""
    options = {option.name: option for option in option_fields()}
    for parameter in operation.get("parameters", []):
        option = options.get(parameter["name"]) if parameter["in"] == "query" else None
        if option is None:
            continue  # not a stylize option (a job's webhook, say)
        parameter["schema"] = option.json_schema(config, synchronous)
        if option.empty_means_default:
            parameter["allowEmptyValue"] = True  # `?style=` is the default style
