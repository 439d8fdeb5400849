"""The live camera: ``/v1/live``, a WebSocket of frames in and stylized frames out.

A plain ``GET`` on the path answers 426 and documents the protocol in the OpenAPI
document (which has no place for WebSockets).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, WebSocket, WebSocketDisconnect

from serve_app.errors import ServiceError, UpgradeRequired
from serve_app.http.openapi import error_statuses
from serve_app.http.params import (
    API_CHECKS,
    Service,
    accept_socket,
    close_socket,
    make_stylize_query,
    owner_of_request,
    query_values,
)
from serve_app.jobs.records import keyed_owner
from serve_app.live.stream import LIVE_OPTIONS, LIVE_PROTOCOL, ClientLeft

logger = logging.getLogger(__name__)

router = APIRouter()

LiveQuery = Annotated[dict, Depends(make_stylize_query(LIVE_OPTIONS))]

PROTOCOL = f"""Open this path as a **WebSocket** (`ws://` or `wss://`), with the options as
query parameters ({", ".join(f"`{name}`" for name in LIVE_OPTIONS)}; `size` is the output's
longer side, small by default) and the API key as `Authorization: Bearer <key>` or, from a
browser, as the subprotocol `bearer.<key>` beside `{LIVE_PROTOCOL}`.

- **Frames in**: binary messages, each a JPEG or WebP picture (the same pixel limits as a
  photo). Send as fast as the camera gives them: while a frame is at the model, a newer
  one replaces the waiting one and the replaced frame is *skipped*.
- **Frames out**: for each frame processed, a text message
  `{{"seq", "skipped", "style", "width", "height", "timings_ms"}}` (`seq`: the frame's
  number counted from 0 in the order received; `skipped`: frames skipped so far), then the
  stylized frame as a binary message in the frame's format.
- **Errors**: a frame that cannot be stylized is answered with a text message
  `{{"seq", "skipped", "error": {{"code", "message"}}}}` and the stream goes on.
- **Controls**: a text message with a JSON object of options (`{{"style": "hayao"}}`)
  changes them for the next frames, answered with `{{"options": {{...}}}}` (or an error).
- **Closing**: 4000 + the HTTP status the same request would get, with the reason
  `"<error code>: <message>"`: 4401 (no or a wrong API key), 4403 (a web page of another
  site than the service's own and `cors_origins`), 4422 (a bad option, or a query
  parameter unknown or sent twice), 4429 (the key's streams on the service's replicas
  are at `live.max_streams_per_key`), 4503 (the replica's at `live.max_streams`), 4408
  (idle for `live.idle_timeout_s`, or not reading answers for `live.send_timeout_s`).

A plain HTTP request here answers 426."""


class _Socket:
    """A WebSocket as a live stream's transport."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def receive(self) -> bytes | str | None:
        message = await self._websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("bytes")
        return data if data is not None else message.get("text") or ""

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def _send(self, message: dict) -> None:
        try:
            await self._websocket.send(message)
        except (WebSocketDisconnect, OSError, RuntimeError) as error:
            # Gone: Starlette's disconnect, the server's (an OSError), or a send after the
            # close Starlette already saw (RuntimeError).
            raise ClientLeft(str(error)) from error


@router.get(
    "/v1/live",
    status_code=UpgradeRequired.status,  # its one answer: there is no 200 to document
    response_model=None,
    dependencies=API_CHECKS,
    summary="Live camera (a WebSocket): frames in, stylized frames out, the latest wins",
    description=PROTOCOL,
    responses=error_statuses(401, 422, 426),
)
async def live_route(query: LiveQuery, service: Service) -> None:
    service.live.options({name: value for name, value in query.items() if value is not None})
    raise UpgradeRequired("/v1/live is a WebSocket: open it with a WebSocket client")


@router.websocket("/v1/live")
async def live_socket(websocket: WebSocket) -> None:
    if not await accept_socket(websocket, LIVE_PROTOCOL):
        return
    live = websocket.app.state.service.live
    owner = owner_of_request(websocket)
    try:
        options = live.options(query_values(websocket.query_params, LIVE_OPTIONS))
        async with live.admit(keyed_owner(owner)):
            ended = await live.run(_Socket(websocket), options)
    except ServiceError as error:  # refused: options, admission
        ended = error
    except WebSocketDisconnect:
        return
    if ended is not None:
        await close_socket(websocket, ended)
