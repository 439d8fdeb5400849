"""The ingress deployment: composes the service at start and serves it over HTTP and
Serve handles.

The routes live in ``serve_app/http`` and the logic in ``serve_app/service``; this class
only builds the service over the Ray-backed model client and result cache, and offers
the Python handle API (the same operations as the routes, with the same errors).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppConfig
from serve_app.http.app import create_app
from serve_app.http.request_log import ingress_metrics
from serve_app.jobs.service import JobOutput, JobView
from serve_app.metrics import JobMetrics
from serve_app.model_client import ModelClient
from serve_app.pipeline.cache_client import CacheClient
from serve_app.pipeline.results import StylizeResult
from serve_app.service.service import AnimeService


@serve.deployment(max_ongoing_requests=64)
@serve.ingress()
class Ingress:
    def __init__(self, stylizer: DeploymentHandle, config: AppConfig, weights: dict[str, str]):
        """``weights``: style name -> the digest of its configured weights."""
        self._service = AnimeService(
            config,
            ModelClient(stylizer, config.tiling.max_whole_pixels),
            CacheClient(config.cache),
            weights,
            metrics=ingress_metrics(),
            job_metrics=JobMetrics(),
        )
        self._service.in_background(self._service.start())

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls it once the service is composed: the routes answer with it."""
        return create_app(self._service)

    # --- the Python handle API ---------------------------------------------------------

    async def stylize(self, data: bytes, **options: Any) -> StylizeResult:
        """Bytes of a picture -> the stylised picture; raises the API's errors. Options as
        the query parameters of ``POST /v1/stylize`` (style, size, format, ...)."""
        return await self._service.stylize(data, self._service.options(**options))

    async def submit_job(self, data: bytes, **options: Any) -> JobView:
        """Start a job for a picture, animation or video (the options of ``stylize``; sizes
        up to ``limits.max_size``), or find the one already made for these bytes and options."""
        options = self._service.options(synchronous=False, **options)
        record, _ = await self._service.submit_job(data, options)
        return self._service.jobs.view(record)

    async def job(self, job_id: str) -> JobView:
        """A job's state and progress; raises UnknownJob."""
        return await self._service.job(job_id)

    async def job_result(self, job_id: str) -> JobOutput:
        """A finished job's picture; raises JobNotDone before it is done."""
        return await self._service.job_result(job_id)

    async def cancel_job(self, job_id: str) -> JobView:
        """Stop a job and delete its files."""
        return await self._service.cancel_job(job_id)

    async def warm_cache(self, paths: list[str]) -> int:
        """Stylise photos for every style at the defaults, so their first visitor waits for
        nothing; a bare file name (``4.jpg``) is one of the package's sample photos."""
        return await self._service.warm_cache(paths)
