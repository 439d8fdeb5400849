"""The media path's error boundary: what Pillow or PyAV raise on an upload, as the
service's errors.

A video or animated picture is read (sniffed, probed, decoded) and written back (its
frames, timestamps, audio and loop count re-encoded) by libraries whose plugins each
raise their own exception types on odd input: ``SyntaxError`` on a broken APNG,
``NotImplementedError`` on a pixel format a plugin does not implement,
``DecompressionBombError`` on a frame larger than Pillow allows, FFmpeg's errors on a
broken stream. Each becomes one of the service's errors (a 4xx with a code), never a raw
exception and a 500: the upload is what the library could not handle.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import av
from PIL import Image, UnidentifiedImageError

from serve_app.errors import MediaTooLarge, ServiceError, UndecodableMedia, UnsupportedCodec

logger = logging.getLogger(__name__)

NOT_MEDIA = "not a video (MP4, MOV, MKV, WebM) or animated picture (GIF, WebP, APNG)"


def media_error(exc: Exception, doing: str) -> Exception:
    """The service's error for what a decoder or encoder raised; ``doing`` says what
    failed ("the animation cannot be read") and starts the message. A ServiceError comes
    back as it is, and so does MemoryError (the server's problem, not the upload's)."""
    if isinstance(exc, (ServiceError, MemoryError)):
        return exc
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return MediaTooLarge(f"{doing}: its frames are too large ({exc})")
    if isinstance(exc, UnidentifiedImageError):
        return UnsupportedCodec(NOT_MEDIA)
    if isinstance(exc, av.FFmpegError):
        return UndecodableMedia(f"{doing}: {exc}")
    # Pillow's plugins raise anything (SyntaxError, NotImplementedError, struct.error,
    # IndexError...) on input they cannot handle; kept in the log in case it is ours.
    logger.info("%s: %s", doing, type(exc).__name__, exc_info=exc)
    return UndecodableMedia(f"{doing}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def media_errors(doing: str) -> Iterator[None]:
    """Whatever the block raises, as :func:`media_error` makes it."""
    try:
        yield
    except Exception as exc:
        error = media_error(exc, doing)
        if error is exc:
            raise
        raise error from exc


@contextlib.contextmanager
def bombs_refused() -> Iterator[None]:
    """Pillow's warning for a frame past its own pixel ceiling, as the error it stands for.
    (Before Python 3.14 the filter is process-wide while it lasts, as on the picture path;
    it only ever turns that one warning into an error.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield
