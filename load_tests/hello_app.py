"""The smallest Ray Serve app: one deployment answering "hello" at its route prefix.

The cold-start baseline (``load_tests/cold_start.py``): what `serve run` costs with no
model, no torch and no project code, on the same machine and Ray as the service.

    serve run load_tests.hello_app:app
"""

from __future__ import annotations

from ray import serve
from starlette.requests import Request
from starlette.responses import PlainTextResponse


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Hello:
    async def __call__(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")


app = Hello.bind()
