"""The ingress deployment: composes the service at start and serves it over HTTP and
Serve handles.

The routes live in ``serve_app/http`` and the logic in ``serve_app/service``; this class
only builds the service over the Ray-backed model client and result cache, and offers
the Python handle API (the same operations as the routes, with the same errors). Like the
model deployment's module, it imports neither torch nor the media stack until a replica
starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppConfig
from serve_app.http.request_log import ingress_metrics
from serve_app.jobs.records import JobList, JobView, owner_of
from serve_app.metrics import JobMetrics, LiveMetrics
from serve_app.model_client import ModelClient
from serve_app.pipeline.cache_client import CacheClient
from serve_app.replica_logging import log_through_serve

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serve_app.jobs.service import JobOutput
    from serve_app.pipeline.results import StylizeResult


# An event stream holds a place as long as its job lasts: room for many followers beside
# photos (whose computing is bounded by max_in_flight, not by this).
@serve.deployment(max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    def __init__(self, stylizer: DeploymentHandle, config: AppConfig, weights: dict[str, str]):
        """``weights``: style name -> the digest of its configured weights."""
        # The service's stack (the routes, PyAV, Pillow) is imported here, in the replica:
        # building the app imports this module on every deploy's way to its first replica.
        from serve_app.service.service import AnimeService

        log_through_serve()
        self._service = AnimeService(
            config,
            ModelClient(stylizer, config.tiling.max_whole_pixels),
            CacheClient(config.cache),
            weights,
            metrics=ingress_metrics(),
            job_metrics=JobMetrics(),
            live_metrics=LiveMetrics(),
        )
        self._service.in_background(self._service.start())

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls it once the service is composed: the routes answer with it."""
        from serve_app.http.app import create_app

        return create_app(self._service)

    # --- the Python handle API ---------------------------------------------------------

    async def stylize(self, data: bytes, **options: Any) -> StylizeResult:
        """Bytes of a picture -> the stylized picture; raises the API's errors. Options: the
        fields of ``StylizeOptions``, as the query parameters of ``POST /v1/stylize`` (an
        unknown name: 422 ``invalid_parameters``)."""
        return await self._service.stylize(data, self._service.options(options))

    async def submit_job(
        self,
        data: bytes,
        api_key: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> JobView:
        """Start a job for a picture, animation or video (the options of ``stylize``;
        sizes up to ``limits.max_size``). ``api_key``: whose job it is (as over HTTP; none:
        anyone holding the id)."""
        service = self._service
        record, _ = await service.submit_job(
            data,
            service.options(options, synchronous=False),
            owner=owner_of(api_key),
            idempotency_key=idempotency_key,
        )
        return service.jobs.view(record)

    async def job(self, job_id: str, api_key: str | None = None) -> JobView:
        """A job's state and progress; raises UnknownJob."""
        jobs = self._service.jobs
        return jobs.view(await jobs.get(job_id, owner_of(api_key)))

    async def list_jobs(
        self,
        api_key: str,
        state: str | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> JobList:
        """The key's jobs, newest first (``next_cursor`` fetches the next page)."""
        jobs = self._service.jobs
        records, next_cursor = await jobs.list(owner_of(api_key), state, cursor, limit)
        return JobList(jobs=[jobs.view(r) for r in records], next_cursor=next_cursor)

    async def job_result(self, job_id: str, api_key: str | None = None) -> JobOutput:
        """A finished job's output; raises JobNotDone before it is done."""
        return await self._service.jobs.result(job_id, owner_of(api_key))

    async def cancel_job(self, job_id: str, api_key: str | None = None) -> JobView:
        """Stop a job and delete its files."""
        jobs = self._service.jobs
        return jobs.view(await jobs.cancel(job_id, owner_of(api_key)))

    async def warm_cache(self, paths: list[str]) -> int:
        """Stylize photos for every style at the defaults, so their first visitor waits for
        nothing; a bare file name (``4.jpg``) is one of the package's sample photos."""
        return await self._service.warm_cache(paths)
