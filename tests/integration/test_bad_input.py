"""Issue 5, item 1: bad input gets its documented 4xx at once, awkward pictures are served right.

One parametrised test sends every case while another thread probes ``/healthz``: each bad
upload must get the status of docs/api.md's "Limits and errors" table with the JSON error
body (never a 5xx, never a hang), each valid-but-awkward picture a correct 200, and the
probe must stay fast throughout. A last test checks the service still serves afterwards.

Over-limit bodies are sent through a raw socket (``http.client``) that watches for the
answer between chunks: httpx writes the whole body before it reads a response, and the
HTTP server keeps reading (and dropping) the rest of a body it has already answered, so
only a socket-level client can tell *when* the 413 came.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import select
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from serve_app.imaging.pixels import target_dimensions
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import STYLE_A, TEST_SIZE, app_args

pytestmark = pytest.mark.integration

ARGS = app_args()
MAX_BYTES = ARGS["limits"]["max_bytes"]  # 2 MiB in the test application
MAX_SIZE = ARGS["limits"]["max_size"]
MAX_PIXELS = ARGS["limits"]["max_pixels"]
MAX_BATCH = ARGS["max_batch_images"]

MIB = 2**20
REQUEST_TIMEOUT_S = 30  # "never a hang": every request of this file gives up after this
HEALTH_LIMIT_S = 2.0  # a liveness check, not a benchmark: generous on a busy 2-core box
PROBE_INTERVAL_S = 0.05
BOMB_ANSWER_S = 2.0  # a pixel bomb is refused from its header: no time to decode it

# A streaming client offers far more than the limit, in paced chunks (an ordinary fast
# upload), and stops as soon as an answer is readable. Measured here: the 413 came after
# 2.06-2.12 MiB of a 64 MiB chunked body (limit 2 MiB); an unpaced localhost client got
# 15 MiB out first, because Ray's proxy reads ahead of the app without bound.
STREAM_OFFER = 64 * MIB
STREAM_CHUNK = 64 * 1024
STREAM_PACE_S = 0.01  # about 6 MiB/s
STREAM_ANSWER_BY = STREAM_OFFER // 4  # the 413 must come before a quarter is sent

BOUNDARY = "bad-input-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


# --------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    status: int
    body: bytes
    headers: dict[str, str]  # lower-case names
    elapsed: float
    sent: int | None = None  # streamed cases: body bytes sent before the answer was readable
    offered: int | None = None  # streamed cases: body bytes the client would have sent


Sender = Callable[[str, httpx.Client], Outcome]
Check = Callable[[Outcome, httpx.Client], None]


@dataclass(frozen=True)
class Case:
    id: str
    send: Sender
    status: int
    code: str | None = None  # the JSON error code; None for a 200
    check: Check | None = None
    json_error: bool = True  # False: answered by Ray's HTTP server itself, before the app


def _from_httpx(response: httpx.Response) -> Outcome:
    return Outcome(
        response.status_code,
        response.content,
        {name.lower(): value for name, value in response.headers.items()},
        response.elapsed.total_seconds(),
    )


# --------------------------------------------------------------------------- senders


def upload(
    data: Callable[[], bytes],
    filename: str = "photo.jpg",
    content_type: str = "image/jpeg",
    field: str = "image",
    **params,
) -> Sender:
    """One file as a multipart field."""

    def send(_: str, client: httpx.Client) -> Outcome:
        files = {field: (filename, data(), content_type)}
        return _from_httpx(
            client.post("/v1/stylize", files=files, params=params, timeout=REQUEST_TIMEOUT_S)
        )

    return send


def raw(
    data: Callable[[], bytes],
    content_type: str | None = "image/jpeg",
    headers: dict[str, str] | None = None,
    **params,
) -> Sender:
    """The raw request body with a content type."""

    def send(_: str, client: httpx.Client) -> Outcome:
        all_headers = {**(headers or {})}
        if content_type is not None:
            all_headers["content-type"] = content_type
        return _from_httpx(
            client.post(
                "/v1/stylize",
                content=data(),
                headers=all_headers,
                params=params,
                timeout=REQUEST_TIMEOUT_S,
            )
        )

    return send


def multipart(
    body: Callable[[], bytes], route: str = "/v1/stylize", content_type: str = MULTIPART
) -> Sender:
    """A multipart body written by hand (for what httpx would never send)."""

    def send(_: str, client: httpx.Client) -> Outcome:
        return _from_httpx(
            client.post(
                route,
                content=body(),
                headers={"content-type": content_type},
                params={"size": 64},
                timeout=REQUEST_TIMEOUT_S,
            )
        )

    return send


def batch(count: int) -> Sender:
    def send(_: str, client: httpx.Client) -> Outcome:
        files = [("images", (f"{i}.jpg", small_jpeg(), "image/jpeg")) for i in range(count)]
        return _from_httpx(
            client.post(
                "/v1/stylize/batch", files=files, params={"size": 64}, timeout=REQUEST_TIMEOUT_S
            )
        )

    return send


def open_raw_post(
    base_url: str, headers: dict[str, str], route: str = "/v1/stylize"
) -> http.client.HTTPConnection:
    """A POST whose headers are sent and whose body is left to the caller."""
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(
        address.hostname, address.port, timeout=REQUEST_TIMEOUT_S
    )
    connection.putrequest("POST", route, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    return connection


def read_outcome(
    connection: http.client.HTTPConnection, started: float, sent: int, offered: int
) -> Outcome:
    response = connection.getresponse()
    body = response.read()
    headers = {name.lower(): value for name, value in response.getheaders()}
    return Outcome(response.status, body, headers, time.perf_counter() - started, sent, offered)


def streamed(
    content_type: str,
    chunks: Callable[[], Iterator[bytes]],
    *,
    content_length: int | None = None,
    route: str = "/v1/stylize",
) -> Sender:
    """Send a body in paced chunks (chunked encoding without a Content-Length), and stop
    as soon as the server's answer is readable; ``sent`` says how far the body had got."""

    def send(base_url: str, _: httpx.Client) -> Outcome:
        chunked = content_length is None
        length = (
            {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(content_length)}
        )
        started = time.perf_counter()
        connection = open_raw_post(base_url, {"Content-Type": content_type, **length}, route)
        try:
            sock = connection.sock
            sent = offered = 0
            answered = False
            for chunk in chunks():
                offered += len(chunk)
                if answered:
                    continue  # only count what the client would have sent
                if select.select([sock], [], [], 0)[0]:
                    answered = True
                    continue
                try:
                    sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                except OSError:  # the server closed the connection: also an early answer
                    answered = True
                    continue
                sent += len(chunk)
                time.sleep(STREAM_PACE_S)
            if not answered and chunked:
                sock.sendall(b"0\r\n\r\n")
            return read_outcome(connection, started, sent, offered)
        finally:
            connection.close()

    return send


def false_content_length(declared: int, body: Callable[[], bytes]) -> Sender:
    """A Content-Length smaller than the body that follows it, through a raw socket."""

    def send(base_url: str, _: httpx.Client) -> Outcome:
        started = time.perf_counter()
        headers = {"Content-Type": "image/jpeg", "Content-Length": str(declared)}
        connection = open_raw_post(base_url, headers)
        try:
            data = body()
            sent = 0
            for start in range(0, len(data), STREAM_CHUNK):
                if select.select([connection.sock], [], [], 0)[0]:
                    break
                try:
                    connection.sock.sendall(data[start : start + STREAM_CHUNK])
                except OSError:
                    break
                sent += len(data[start : start + STREAM_CHUNK])
            return read_outcome(connection, started, sent, len(data))
        finally:
            connection.close()

    return send


# --------------------------------------------------------------------------- pictures


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def claimed_size_png(width: int, height: int) -> bytes:
    """A few-KB 1-bit PNG whose header claims width×height (only its first rows follow)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = (b"\0" + bytes((width + 7) // 8)) * 8
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


@functools.cache
def small_jpeg() -> bytes:
    return synthetic_jpeg(160, 120, seed=7)


@functools.cache
def noisy_png() -> bytes:
    return encode(Image.open(io.BytesIO(synthetic_jpeg(160, 120, seed=8))), "PNG")


def pattern(size: tuple[int, int], background, foreground) -> Image.Image:
    """A flat background with a rectangle: distinct, and exact in a GIF palette."""
    image = Image.new("RGB", size, background)
    width, height = size
    box = (width // 5, height // 4, width * 3 // 5, height * 3 // 4)
    ImageDraw.Draw(image).rectangle(box, fill=foreground)
    return image


FIRST = pattern((160, 120), (220, 30, 30), (255, 255, 255))
SECOND = pattern((160, 120), (30, 30, 220), (0, 0, 0))


@functools.cache
def animated_gif() -> bytes:
    return encode(FIRST, "GIF", save_all=True, append_images=[SECOND], duration=100, loop=0)


@functools.cache
def multipage_tiff() -> bytes:
    page_two = pattern((64, 64), (30, 30, 220), (0, 0, 0))  # another size, too
    return encode(FIRST, "TIFF", save_all=True, append_images=[page_two])


@functools.cache
def cmyk_jpeg() -> bytes:
    cmyk = Image.open(io.BytesIO(synthetic_jpeg(160, 120, seed=9))).convert("CMYK")
    return encode(cmyk, "JPEG", quality=95)


@functools.cache
def grey_levels() -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(synthetic_jpeg(160, 120, seed=10))).convert("L"))


def png16() -> bytes:
    """16-bit grey: each 8-bit level v stored as v * 257, which maps back to v exactly."""
    image = Image.fromarray(grey_levels().astype(np.uint16) * 257)
    assert image.mode == "I;16"
    return encode(image, "PNG")


def grey8_png() -> bytes:
    return encode(Image.fromarray(grey_levels()), "PNG")


@functools.cache
def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (160, 120), 0)
    image.putpalette([255, 255, 255, 220, 30, 30] + [0, 0, 0] * 254)
    ImageDraw.Draw(image).rectangle((80, 0, 159, 119), fill=1)  # right half opaque red
    return encode(image, "PNG", transparency=0)  # palette index 0 (left half) transparent


@functools.cache
def exif_rotated_jpeg() -> bytes:
    """Stored 160×96 (landscape); EXIF orientation 6 says: turn 90° clockwise to show."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.open(io.BytesIO(synthetic_jpeg(160, 96, seed=11)))
    return encode(stored, "JPEG", quality=95, exif=exif)


def still_of_first_frame(data: bytes) -> bytes:
    """The first frame as the service should see it (upright, 8-bit, RGB or RGBA), as PNG."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    mode = "RGBA" if image.has_transparency_data else "RGB"
    return encode(image.convert(mode), "PNG")


def psd() -> bytes:
    """A minimal 4×4 RGB Photoshop file: header, empty sections, raw channel data."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 4, 4, 8, 3)
    return header + struct.pack(">IIIH", 0, 0, 0, 0) + b"\x80" * 48


SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b'<rect width="64" height="64"/></svg>'
)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\nshowpage\n%%EOF\n"


# --------------------------------------------------------------------------- multipart


def part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename is not None:
        head += "Content-Type: image/jpeg\r\n"
    return head.encode() + b"\r\n" + data + b"\r\n"


def form(*parts: bytes, preamble: bytes = b"") -> bytes:
    return preamble + b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def filler(head: bytes = b"", unit: bytes = b"\xff") -> Iterator[bytes]:
    """``head``, then STREAM_OFFER bytes of ``unit`` repeated, in STREAM_CHUNK pieces."""
    if head:
        yield head
    chunk = unit * (STREAM_CHUNK // len(unit))
    for _ in range(STREAM_OFFER // STREAM_CHUNK):
        yield chunk


def file_head(field: str = "image") -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="huge.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()


# --------------------------------------------------------------------------- checks


def output_image(outcome: Outcome) -> Image.Image:
    return Image.open(io.BytesIO(outcome.body))


def has_size_of(upright: tuple[int, int], size: int = TEST_SIZE) -> Check:
    """200, a PNG, and the size the service promises for a source of ``upright`` size at
    ``size``."""

    def check(outcome: Outcome, _: httpx.Client) -> None:
        assert outcome.headers["content-type"] == "image/png"
        picture = output_image(outcome)
        assert picture.format == "PNG"
        assert picture.size == target_dimensions(*upright, size)

    return check


def same_output_as(reference: Callable[[], bytes], *, unlike: Callable[[], bytes] | None = None):
    """The output equals the service's output for ``reference`` (and differs from its
    output for ``unlike``): random weights change colours, so only the service itself can
    say what a picture should become."""

    def check(outcome: Outcome, client: httpx.Client) -> None:
        def served(data: bytes) -> bytes:
            files = {"image": ("still.png", data, "image/png")}
            response = client.post(
                "/v1/stylize", files=files, params={"style": STYLE_A}, timeout=REQUEST_TIMEOUT_S
            )
            assert response.status_code == 200, response.text
            return response.content

        assert outcome.body == served(reference())
        if unlike is not None:
            assert outcome.body != served(unlike())

    return check


def animated_like(source: Callable[[], bytes]) -> Check:
    """200, an animation of the source's format, frames, durations and loop, at the size
    the service promises."""

    def check(outcome: Outcome, _: httpx.Client) -> None:
        before = Image.open(io.BytesIO(source()))
        after = output_image(outcome)
        assert outcome.headers["content-type"] == f"image/{before.format.lower()}"
        assert (after.format, after.n_frames) == (before.format, before.n_frames)
        assert after.size == target_dimensions(*before.size, TEST_SIZE)
        assert after.info.get("loop") == before.info.get("loop")
        assert after.info.get("duration") == before.info.get("duration")

    return check


def all_of(*checks: Check) -> Check:
    def check(outcome: Outcome, client: httpx.Client) -> None:
        for one in checks:
            one(outcome, client)

    return check


def keeps_alpha(outcome: Outcome, _: httpx.Client) -> None:
    picture = output_image(outcome)
    assert picture.mode == "RGBA"
    alpha = np.asarray(picture.getchannel("A"))
    height, width = alpha.shape
    assert alpha[height // 2, width // 8] == 0  # the transparent left half
    assert alpha[height // 2, width * 7 // 8] == 255  # the opaque right half


def is_portrait(outcome: Outcome, _: httpx.Client) -> None:
    width, height = output_image(outcome).size
    assert height > width


def answered_within(seconds: float) -> Check:
    def check(outcome: Outcome, _: httpx.Client) -> None:
        assert outcome.elapsed < seconds

    return check


def batch_statuses(statuses: list[int]) -> Check:
    """A batch's answer: one item per picture sent, in order, with these statuses."""

    def check(outcome: Outcome, _: httpx.Client) -> None:
        items = json.loads(outcome.body)["results"]
        assert [item["index"] for item in items] == list(range(len(statuses)))
        assert [item["status"] for item in items] == statuses

    return check


def answered_before_sent(at_most: int) -> Check:
    """The answer was readable before ``at_most`` body bytes (and before all) were sent."""

    def check(outcome: Outcome, _: httpx.Client) -> None:
        assert outcome.sent is not None and outcome.offered is not None
        print(
            f"answered after {outcome.sent} of {outcome.offered} body bytes "
            f"({outcome.sent / MIB:.2f} MiB; limit {MAX_BYTES / MIB:.2f} MiB)"
        )
        assert outcome.sent < outcome.offered
        assert outcome.sent <= at_most

    return check


# --------------------------------------------------------------------------- the cases

GOOD = small_jpeg

CASES = [
    # Empty, missing, misnamed.
    Case("empty-raw-body", raw(lambda: b""), 400, "empty_upload"),
    Case("empty-file-field", upload(lambda: b""), 400, "empty_upload"),
    Case("empty-multipart-body", multipart(lambda: b""), 422, "missing_image"),
    Case("no-content-type", raw(lambda: b"", content_type=None), 415, "unsupported_media_type"),
    Case("missing-field", multipart(lambda: form(part("style", b"alpha"))), 422, "missing_image"),
    Case("misnamed-field", upload(GOOD, field="picture"), 422, "missing_image"),
    # A picture sent as a text part (no filename, no type: ``curl -F 'image=<a.jpg'``) is
    # still the picture: it was refused as missing, and dropped from a batch.
    Case(
        "image-as-text-field",
        multipart(lambda: form(part("image", GOOD()))),
        200,
        check=has_size_of((160, 120), size=64),  # the size multipart() asks for
    ),
    Case(
        "batch-picture-as-text-field",
        multipart(
            lambda: form(part("images", GOOD(), "a.jpg"), part("images", GOOD())),
            route="/v1/stylize/batch",
        ),
        200,
        check=batch_statuses([200, 200]),
    ),
    Case(
        "option-as-form-field",
        multipart(lambda: form(part("style", b"alpha"), part("image", GOOD(), "a.jpg"))),
        422,
        "invalid_parameters",
    ),
    Case(
        "option-as-form-field-batch",
        multipart(
            lambda: form(part("images", GOOD(), "a.jpg"), part("size", b"64")),
            route="/v1/stylize/batch",
        ),
        422,
        "invalid_parameters",
    ),
    Case(
        "multipart-without-boundary",
        multipart(lambda: form(part("image", GOOD(), "a.jpg")), content_type="multipart/form-data"),
        400,
        "bad_multipart",
    ),
    # Not pictures, broken pictures.
    Case(
        "text-named-jpg", upload(lambda: b"hello, I am plain text\n" * 40), 400, "undecodable_image"
    ),
    Case(
        "random-bytes-named-jpg",
        upload(lambda: np.random.default_rng(5).bytes(4096)),
        400,
        "undecodable_image",
    ),
    Case("truncated-jpeg", upload(lambda: GOOD()[: len(GOOD()) // 2]), 400, "undecodable_image"),
    Case(
        "truncated-png",
        upload(lambda: noisy_png()[: len(noisy_png()) // 2], "photo.png", "image/png"),
        400,
        "undecodable_image",
    ),
    Case(
        "too-thin-to-stylize",
        upload(lambda: encode(Image.new("RGB", (2000, 10)), "PNG"), "thin.png", "image/png"),
        400,
        "image_too_small",
    ),
    # Pixel bombs: refused from the header, before decoding. 40000×40000 is past Pillow's
    # own error ceiling, 10000×10000 in its warning range (which decode_upload raises as an
    # error; the unit tests check that with max_pixels above Pillow's), 2100×2100 only past
    # this service's own limit (4 M pixels in the test app).
    Case(
        "pixel-bomb-40000x40000",
        upload(lambda: claimed_size_png(40_000, 40_000), "bomb.png", "image/png"),
        413,
        "image_too_large",
        answered_within(BOMB_ANSWER_S),
    ),
    Case(
        "pixel-bomb-pillow-warning-range",
        raw(lambda: claimed_size_png(10_000, 10_000), "image/png"),
        413,
        "image_too_large",
        answered_within(BOMB_ANSWER_S),
    ),
    Case(
        "pixels-over-service-limit",
        upload(lambda: encode(Image.new("1", (2100, 2100)), "PNG"), "big.png", "image/png"),
        413,
        "image_too_large",
        answered_within(BOMB_ANSWER_S),
    ),
    # Over the byte limit. With a true Content-Length the header alone is refused; chunked
    # bodies are counted as they stream in. A Content-Length *smaller* than the body cannot
    # smuggle more bytes to the app: HTTP/1.1 frames the body by it, so the app reads the
    # declared bytes (a truncated picture) and Ray's HTTP server (uvicorn) refuses the
    # rest, which does not parse as a request, with its own plain-text 400.
    Case(
        "over-limit-true-content-length",
        streamed("image/jpeg", filler, content_length=STREAM_OFFER),
        413,
        "payload_too_large",
        answered_before_sent(STREAM_ANSWER_BY),
    ),
    Case(
        "over-limit-small-false-content-length",
        false_content_length(1024, lambda: GOOD() + b"\xff" * (2 * MAX_BYTES)),
        400,
        json_error=False,
    ),
    Case(
        "over-limit-chunked-raw",
        streamed("image/jpeg", filler),
        413,
        "payload_too_large",
        answered_before_sent(STREAM_ANSWER_BY),
    ),
    Case(
        "over-limit-chunked-multipart",
        streamed(MULTIPART, lambda: filler(file_head())),
        413,
        "payload_too_large",
        answered_before_sent(STREAM_ANSWER_BY),
    ),
    # A batch's pictures are each held to the single picture's limit as they stream in,
    # not only the whole body to the batch's (MAX_BATCH pictures and their overhead).
    Case(
        "over-limit-one-picture-of-a-batch",
        streamed(MULTIPART, lambda: filler(file_head("images")), route="/v1/stylize/batch"),
        413,
        "payload_too_large",
        answered_before_sent(2 * MAX_BYTES),
    ),
    Case(
        "over-limit-whole-body",
        raw(lambda: GOOD() + b"\xff" * (MAX_BYTES + 1)),
        413,
        "payload_too_large",
    ),
    # Formats outside the allowlist: 415 naming the format, recognised by its signature
    # (Pillow is only ever asked to open allowlisted formats).
    Case("svg", upload(lambda: SVG, "a.svg", "image/svg+xml"), 415, "unsupported_format"),
    Case("svg-raw", raw(lambda: SVG, "image/svg+xml"), 415, "unsupported_format"),
    Case("pdf", upload(lambda: PDF, "a.pdf", "application/pdf"), 415, "unsupported_format"),
    Case("eps", upload(lambda: EPS, "a.eps", "application/postscript"), 415, "unsupported_format"),
    Case("psd", upload(psd, "a.psd", "image/vnd.adobe.photoshop"), 415, "unsupported_format"),
    Case(
        "ico",
        upload(lambda: encode(Image.new("RGBA", (32, 32), (9, 9, 9, 255)), "ICO"), "a.ico"),
        415,
        "unsupported_format",
    ),
    # Bad parameters.
    Case("size-0", upload(GOOD, size=0), 422, "invalid_size"),
    Case("size-above-limit", upload(GOOD, size=MAX_SIZE + 1), 422, "invalid_size"),
    Case("size-not-a-number", upload(GOOD, size="big"), 422, "invalid_parameters"),
    Case("format-bmp", upload(GOOD, format="bmp"), 422, "invalid_format"),
    Case("unknown-style", upload(GOOD, style="no-such-style"), 422, "unknown_style"),
    Case("quality-1000", upload(GOOD, quality=1000), 422, "invalid_quality"),
    # Not an upload at all.
    Case(
        "url-encoded-form",
        raw(lambda: urlencode({"image": "x" * 100}).encode(), "application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    ),
    # A huge header: Ray's HTTP server (uvicorn with httptools) sets no header size limit,
    # so it is read and the request handled as usual; what counts is that nothing breaks.
    Case(
        "huge-header",
        raw(lambda: b"plain text", headers={"x-padding": "a" * MIB}),
        400,
        "undecodable_image",
    ),
    # Multipart abuse.
    Case(
        "thousand-file-parts",
        multipart(lambda: form(*(part("image", b"x", f"{i}.jpg") for i in range(1000)))),
        413,
        "payload_too_large",
    ),
    Case(
        "thousand-field-parts",
        multipart(lambda: form(*(part(f"f{i}", b"x") for i in range(1000)))),
        413,
        "payload_too_large",
    ),
    Case(
        "thousand-parts-batch",
        multipart(
            lambda: form(*(part("images", b"x", f"{i}.jpg") for i in range(1000))),
            route="/v1/stylize/batch",
        ),
        413,
        "payload_too_large",
    ),
    Case(
        "oversized-text-field",
        multipart(lambda: form(part("style", b"a" * (MIB + 1)), part("image", GOOD(), "a.jpg"))),
        413,
        "payload_too_large",
    ),
    Case(
        "part-with-huge-header",
        multipart(lambda: form(part("image", GOOD(), "a" * 100_000 + ".jpg"))),
        400,
        "bad_multipart",
    ),
    Case("batch-over-file-count", batch(MAX_BATCH + 1), 413, "payload_too_large"),
    # A preamble python-multipart skips (blank lines) is counted against the byte limit
    # while it streams; a text preamble is refused as malformed at its first chunk.
    Case(
        "huge-blank-preamble",
        streamed(MULTIPART, lambda: filler(unit=b"\r\n")),
        413,
        "payload_too_large",
        answered_before_sent(STREAM_ANSWER_BY),
    ),
    Case(
        "huge-text-preamble",
        multipart(lambda: form(part("image", GOOD(), "a.jpg"), preamble=b"preamble\r\n" * 100_000)),
        400,
        "bad_multipart",
    ),
    # Valid but awkward: all must succeed, correctly.
    Case(
        "animated-gif-stays-animated",
        upload(animated_gif, "anim.gif", "image/gif", style=STYLE_A),
        200,
        check=animated_like(animated_gif),
    ),
    Case(
        "multipage-tiff-first-page",
        upload(multipage_tiff, "pages.tiff", "image/tiff", style=STYLE_A),
        200,
        check=all_of(has_size_of((160, 120)), same_output_as(lambda: encode(FIRST, "PNG"))),
    ),
    Case(
        "cmyk-jpeg",
        upload(cmyk_jpeg, style=STYLE_A),
        200,
        check=all_of(
            has_size_of((160, 120)), same_output_as(lambda: still_of_first_frame(cmyk_jpeg()))
        ),
    ),
    Case(
        "png-16-bit",
        upload(png16, "deep.png", "image/png", style=STYLE_A),
        200,
        check=all_of(has_size_of((160, 120)), same_output_as(grey8_png)),
    ),
    Case(
        "palette-png-with-transparency",
        upload(palette_png_with_transparency, "palette.png", "image/png", style=STYLE_A),
        200,
        check=all_of(
            has_size_of((160, 120)),
            keeps_alpha,
            same_output_as(lambda: still_of_first_frame(palette_png_with_transparency())),
        ),
    ),
    Case(
        "exif-rotated-photo",
        upload(exif_rotated_jpeg, style=STYLE_A),
        200,
        check=all_of(
            has_size_of((96, 160)),
            is_portrait,
            same_output_as(lambda: still_of_first_frame(exif_rotated_jpeg())),
        ),
    ),
]


# --------------------------------------------------------------------------- the probe


class HealthProbe:
    """Probes /healthz from another thread while a case runs; keeps every latency."""

    def __init__(self, base_url: str):
        self._url = f"{base_url}/healthz"
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name="healthz-probe", daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
            while True:
                started = time.perf_counter()
                try:
                    status = http.get(self._url).status_code
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                else:
                    if status != 200:
                        self.failures.append(f"status {status}")
                self.latencies.append(time.perf_counter() - started)
                if self._stop.wait(PROBE_INTERVAL_S):
                    return

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT_S + 5)
        assert not self._thread.is_alive(), "the /healthz probe hung"


# --------------------------------------------------------------------------- the tests


def assert_json_error(outcome: Outcome, code: str) -> None:
    assert outcome.headers.get("content-type", "").startswith("application/json")
    body = json.loads(outcome.body)
    assert list(body) == ["error"], body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_input_gets_its_documented_answer(base_url: str, client: httpx.Client, case: Case):
    with HealthProbe(base_url) as probe:
        outcome = case.send(base_url, client)
    detail = f"{case.id}: {outcome.status} {outcome.body[:300]!r}"
    assert outcome.status < 500, detail
    assert outcome.status == case.status, detail
    if case.status == 200:
        assert case.code is None
    elif case.json_error:
        assert_json_error(outcome, case.code)
    if case.check is not None:
        case.check(outcome, client)
    assert not probe.failures, probe.failures
    assert probe.latencies, "the /healthz probe never answered"
    assert max(probe.latencies) < HEALTH_LIMIT_S, f"slowest /healthz: {max(probe.latencies):.2f} s"


def test_still_serves_a_good_picture_afterwards(client: httpx.Client):
    response = client.post(
        "/v1/stylize",
        files={"image": ("after.jpg", synthetic_jpeg(160, 120, seed=12), "image/jpeg")},
        params={"style": STYLE_A, "size": 128, "format": "jpeg"},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == "JPEG"
    assert picture.size == target_dimensions(160, 120, 128)
    assert client.get("/healthz", timeout=REQUEST_TIMEOUT_S).status_code == 200
