"""The framework floor: a bare Ray Serve FastAPI route, for the benchmark only.

One POST route reads the upload, makes one call to a tiny named actor (the shape of a
shared-cache lookup) and answers fixed PNG bytes. Whatever the real service spends on
top of this on a cache hit is its own overhead. Deployed by ``load_tests.bench`` as a
second application (``route_prefix: /floor``) next to the service, in the same run:

    import_path: load_tests.floor_app:build_floor
    args: {png_path: /path/to/response.png}
"""

# No ``from __future__ import annotations``: FastAPI must see the real ``Request`` class
# in the method signature Serve rewrites, or it takes ``request`` for a query parameter.
from pathlib import Path

import ray
from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from ray.serve import Application

ROUTE = "/stylize"
LOOKUP_ACTOR = "floor-lookup"
LOOKUP_NAMESPACE = "floor-bench"

app = FastAPI(title="framework floor")


class Lookup:
    """A tiny actor answering one async call, as the result cache answers a miss."""

    async def get(self, key: int) -> None:
        return None


def lookup_actor():
    return (
        ray.remote(Lookup)
        .options(name=LOOKUP_ACTOR, namespace=LOOKUP_NAMESPACE, get_if_exists=True, num_cpus=0)
        .remote()
    )


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Floor:
    def __init__(self, png_path: str):
        self._png = Path(png_path).read_bytes()
        self._lookup = lookup_actor()

    @app.post(ROUTE)
    async def respond(self, request: Request) -> Response:
        body = await request.body()
        await self._lookup.get.remote(len(body))
        return Response(self._png, media_type="image/png")


def build_floor(args: dict) -> Application:
    """``args``: ``{"png_path": ...}``, the bytes every response carries."""
    return Floor.bind(str(args["png_path"]))
