"""A client of a running animegan-serve, over HTTP: ``Client`` (sync) and ``AsyncClient``.

    from serve_app.client import Client

    with Client("http://127.0.0.1:8000") as client:
        picture = client.stylize("photo.jpg", style="face_paint_512_v2", size=512)
        job = client.submit_job("clip.mp4", style="face_paint_512_v2")
        client.wait(job["id"], on_progress=lambda job: print(job["progress"]))
        client.result(job["id"], "clip.anime.mp4")

Errors are the service's own classes (``serve_app.errors``); no answer at all is
``NoAnswer``. Needs httpx and pydantic only: no torch, Ray or image libraries.
"""

from serve_app.client.aio import AsyncClient
from serve_app.client.live import LiveFrame
from serve_app.client.sync import Client
from serve_app.client.wire import BatchOutcome, Download, Picture
from serve_app.errors import NoAnswer, ServiceError

__all__ = [
    "AsyncClient",
    "BatchOutcome",
    "Client",
    "Download",
    "LiveFrame",
    "NoAnswer",
    "Picture",
    "ServiceError",
]
