"""The framework floor: a bare Ray Serve FastAPI route, for the benchmark only.

One POST route reads the upload, makes one call to a tiny named actor (the shape of a
shared-cache lookup) and answers the bytes of ``body_path``: what the service answers for
the same upload, written there by the benchmark before the first call. Whatever the
service spends above this on a cache hit is its own overhead. ``load_tests.bench`` deploys
it as a second application at ``/floor`` in the same ``serve run``.
"""

# No ``from __future__ import annotations``: FastAPI must see the real ``Request`` class
# in the method signature Serve rewrites, or it takes ``request`` for a query parameter.
from pathlib import Path

import ray
from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from ray.serve import Application

app = FastAPI(title="framework floor")


class Lookup:
    async def get(self, key: int) -> None:
        return None


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Floor:
    def __init__(self, body_path: str):
        self._body_path = Path(body_path)
        self._body: bytes | None = None
        self._lookup = (
            ray.remote(Lookup).options(name="floor-lookup", get_if_exists=True, num_cpus=0).remote()
        )

    @app.post("/stylize")
    async def respond(self, request: Request) -> Response:
        body = await request.body()
        await self._lookup.get.remote(len(body))
        if self._body is None:  # the file appears once the service has answered
            self._body = self._body_path.read_bytes()
        return Response(self._body, media_type="image/png")


def build_floor(args: dict) -> Application:
    return Floor.bind(str(args["body_path"]))
