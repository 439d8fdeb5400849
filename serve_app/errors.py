"""The API's errors: one JSON shape, `{"error": {"code", "message"}}`, for every failure."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.imaging import ImageError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A failure with its HTTP status; also raised to Python handle callers as is."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def __reduce__(self):  # keep every field across Ray's pickling
        return (type(self), (self.status, self.code, self.message, self.headers))


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def as_api_error(error: ImageError) -> ApiError:
    return ApiError(error.http_status, error.code, str(error))


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("query", "body"))
        parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts) or "invalid request parameters"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError):
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(ImageError)
    async def _image_error(_: Request, error: ImageError):
        return error_response(error.http_status, error.code, str(error))

    @app.exception_handler(RequestValidationError)
    async def _invalid_parameters(_: Request, error: RequestValidationError):
        return error_response(422, "invalid_parameters", _validation_message(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail), error.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception):
        logger.exception("unexpected error")
        return error_response(500, "internal_error", "internal error; see the server log")
