"""The stylize options as HTTP query parameters, and the service a route works with."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from serve_app.http.security import require_api_key
from serve_app.service.service import AnimeService

StyleParam = Annotated[str | None, Query(description="a style from /v1/styles")]
SizeParam = Annotated[int | None, Query(description="output longer side, px")]
FormatParam = Annotated[str | None, Query(description="output format, case-insensitive")]
QualityParam = Annotated[int | None, Query(description="1..100, jpeg and webp")]
StrengthParam = Annotated[
    float | None, Query(description="0 (the photo) .. 1 (the style's full effect, default)")
]
PreserveColorParam = Annotated[
    bool | None, Query(description="keep the photo's colours, take the style's lightness")
]
PortraitParam = Annotated[
    str | None,
    Query(
        description="off (default); crop: the largest face, square; paste: every face "
        "stylised at the face styles' scale and pasted back into the picture"
    ),
]
BackgroundParam = Annotated[
    str | None,
    Query(description="portrait=paste: `photo` (default) or a style for the rest"),
]
NoFaceParam = Annotated[
    str | None,
    Query(description="portrait found no face: `error` (default, 422 no_face) or `whole`"),
]
ContainerParam = Annotated[
    str | None,
    Query(
        description="videos (jobs): the output container, `same` (default: the input's "
        "family), `mp4`, `webm`, `matroska` or `mov`"
    ),
]
MaxFpsParam = Annotated[
    float | None,
    Query(
        description="videos: at most this many frames a second (the first frame at or "
        "after each 1/max_fps step is kept, the rest dropped); default: every frame"
    ),
]
API_KEY = [Depends(require_api_key)]


def stylize_query(
    style: StyleParam = None,
    size: SizeParam = None,
    format: FormatParam = None,
    quality: QualityParam = None,
    strength: StrengthParam = None,
    preserve_color: PreserveColorParam = None,
    portrait: PortraitParam = None,
    background: BackgroundParam = None,
    no_face: NoFaceParam = None,
    container: ContainerParam = None,
    max_fps: MaxFpsParam = None,
) -> dict:
    """The options as sent, for the service to resolve (every route that makes pictures)."""
    return {
        "style": style,
        "size": size,
        "format": format,
        "quality": quality,
        "strength": strength,
        "preserve_color": preserve_color,
        "portrait": portrait,
        "background": background,
        "no_face": no_face,
        "container": container,
        "max_fps": max_fps,
    }


StylizeQuery = Annotated[dict, Depends(stylize_query)]


def service_of(request: Request) -> AnimeService:
    return request.app.state.service


Service = Annotated[AnimeService, Depends(service_of)]
