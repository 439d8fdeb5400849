"""Reading uploads off an HTTP request with every limit checked while the body streams in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from serve_app.concurrency import next_within
from serve_app.errors import (
    BadMultipart,
    EmptyUpload,
    InvalidParameters,
    MissingImage,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    UploadStalled,
)

# Room for multipart boundaries and part headers around the image bytes themselves.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
RAW_MEDIA_TYPES = ("application/octet-stream",)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")


async def limited_stream(request: Request, limit: int, idle_s: float) -> AsyncIterator[bytes]:
    """The body's chunks; stops with 413 as soon as more than ``limit`` bytes arrive, and
    with 408 when no chunk arrives for ``idle_s``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    received = 0
    chunks = request.stream()
    try:
        while True:
            try:
                chunk = await next_within(chunks, idle_s)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise UploadStalled(
                    f"no part of the upload arrived for {idle_s:g} s ({received} bytes had arrived)"
                ) from None
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            yield chunk
    finally:
        await chunks.aclose()


async def read_limited_body(request: Request, limit: int, idle_s: float) -> bytes:
    return b"".join([chunk async for chunk in limited_stream(request, limit, idle_s)])


class _FileFieldParser(MultiPartParser):
    """Reads every part of a picture field as a file, and stops one past ``max_file_bytes``
    as it streams in (413).

    RFC 7578 makes ``filename`` optional (SHOULD, not MUST), clients generated from the
    OpenAPI document label the part with its image type instead, and ``curl -F
    'image=<photo.jpg'`` sends a picture as a text part; Starlette reads a part without a
    filename as a text field, which the route then dropped without a word (a batch's
    indices moved) or refused as missing. Parts of other fields stay text.
    """

    def __init__(self, *args, file_fields: tuple[str, ...], max_file_bytes: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._file_fields = {field.encode() for field in file_fields}
        self._max_file_bytes = max_file_bytes
        self._file_bytes = 0

    began = False  # a part began
    ended = False  # the closing boundary was read

    def on_part_begin(self) -> None:
        self.began = True
        self._file_bytes = 0
        super().on_part_begin()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self._file_bytes += end - start
            if self._file_bytes > self._max_file_bytes:
                raise PayloadTooLarge(
                    f"a file of the form exceeds the limit of {self._max_file_bytes} bytes"
                )
        super().on_part_data(data, start, end)

    def on_end(self) -> None:
        self.ended = True
        super().on_end()

    def on_headers_finished(self) -> None:
        part = self._current_part
        if part.content_disposition is not None:
            _, options = parse_options_header(part.content_disposition)
            if options.get(b"name") in self._file_fields and b"filename" not in options:
                part.content_disposition += b'; filename=""'
        super().on_headers_finished()


def media_type_of(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form_files(
    request: Request,
    field: str | tuple[str, ...],
    max_files: int,
    max_file_bytes: int,
    idle_s: float,
) -> list[bytes]:
    """The files of a multipart field (or of several, in the order named), in order, each
    at most ``max_file_bytes``; the body at most that and the multipart overhead per file.
    A field of another name beside them is refused (422): an option sent as a form field
    would otherwise be ignored without a word."""
    fields = (field,) if isinstance(field, str) else field
    if media_type_of(request) != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content type {media_type_of(request) or '(none)'!r}: send multipart/form-data "
            f"with the pictures as fields {fields[0]!r}"
        )
    limit = max_files * (max_file_bytes + MULTIPART_OVERHEAD_BYTES)
    parser = _FileFieldParser(
        request.headers,
        limited_stream(request, limit, idle_s),
        file_fields=fields,
        max_file_bytes=max_file_bytes,
        max_files=max_files,
        max_fields=max_files + 16,
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise _multipart_error(error) from None
    if parser.began and not parser.ended:  # none began: no picture (422, below)
        await form.close()
        raise BadMultipart(
            "the multipart body ended before its closing boundary (the upload was cut off)"
        )
    try:
        items = [item for name in fields for item in form.getlist(name)]
        uploads = [item for item in items if isinstance(item, UploadFile)]
        others = sorted({name for name, _ in form.multi_items()} - set(fields))
        if others and uploads:  # with no picture, the missing picture is what to say
            raise InvalidParameters(
                f"form field(s) {others} not taken: the options go in the query "
                f"(?style=...&size=...), the form holds the pictures only ({fields[0]!r})"
            )
        return [await upload.read() for upload in uploads]
    finally:
        await form.close()


def _multipart_error(error: MultiPartException) -> ServiceError:
    """Too many parts, or a field too long: 413; anything else malformed: 400."""
    # Starlette says which limit was hit only in its message.
    if error.message.startswith(("Too many", "Part exceeded")):
        return PayloadTooLarge(error.message)
    cause = error.__cause__  # python-multipart's own error says where parsing stopped
    message = f"{error.message} ({cause})" if cause else error.message
    return BadMultipart(message)


async def read_single_upload(
    request: Request, max_bytes: int, idle_s: float, videos: bool = False
) -> bytes:
    """One image: multipart field ``image``, or the raw body with an ``image/*`` type.
    ``videos``: also a video (a ``video/*`` body), and the multipart field ``file``. The
    upload stops with 408 when no part of it arrives for ``idle_s``."""
    media_type = media_type_of(request)
    raw = media_type.startswith("image/") or media_type in RAW_MEDIA_TYPES
    if media_type == "multipart/form-data":
        fields = ("file", "image") if videos else ("image",)
        files = await read_form_files(request, fields, 1, max_bytes, idle_s)
        if not files:
            raise MissingImage(f"send the upload as the multipart field {fields[0]!r}")
        data = files[0]
    elif raw or (videos and media_type.startswith("video/")):
        data = await read_limited_body(request, max_bytes, idle_s)
    else:
        kinds = "image/* or video/*" if videos else "image/*"
        raise UnsupportedMediaType(
            f"content type {media_type or '(none)'!r}: send multipart/form-data with an 'image' "
            f"field, or the raw upload with an {kinds} content type",
        )
    if not data:
        raise EmptyUpload("the uploaded picture is empty")
    return data
