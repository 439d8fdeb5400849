"""Prometheus metrics through Ray's metrics API (they appear on each node's Ray endpoint).

Created inside replicas, never at import time. Serve adds the deployment, replica and
application tags itself; names carry the `animegan_` prefix (Ray adds `ray_`).
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

MS_BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000]
BATCH_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


class IngressMetrics:
    """Requests, the cache's figures and the image work done in the ingress."""

    def __init__(self) -> None:
        self.requests = Counter(
            "animegan_requests",
            description="HTTP requests by route and status code",
            tag_keys=("route", "status"),
        )
        self.request_ms = Histogram(
            "animegan_request_ms",
            description="request latency in the ingress, ms",
            boundaries=MS_BOUNDARIES,
            tag_keys=("route",),
        )
        self.cache_results = Counter(
            "animegan_cache_results",
            description="stylize results by cache status: hit, miss, coalesced",
            tag_keys=("status",),
        )
        self.cache_entries = Gauge("animegan_cache_entries", description="shared cache entries")
        self.cache_bytes = Gauge("animegan_cache_bytes", description="shared cache bytes")
        self.cache_evictions = Gauge(
            "animegan_cache_evictions", description="shared cache evictions since start"
        )
        self.decode_ms = Histogram(
            "animegan_decode_ms",
            description="decode, validate and resize an upload, ms",
            boundaries=MS_BOUNDARIES,
        )
        self.encode_ms = Histogram(
            "animegan_encode_ms",
            description="encode a result, ms",
            boundaries=MS_BOUNDARIES,
            tag_keys=("format",),
        )

    def record_result(self, result, options) -> None:
        """One picture answered: its cache status, and a computed one's decode and encode."""
        self.cache_results.inc(tags={"status": result.cache})
        timings = result.timings_ms
        if timings:
            self.decode_ms.observe(timings["decode"])
            self.encode_ms.observe(timings["encode"], tags={"format": options.format})

    def record_cache(self, shared: dict) -> None:
        self.cache_entries.set(shared.get("entries", 0))
        self.cache_bytes.set(shared.get("bytes", 0))
        self.cache_evictions.set(shared.get("evictions", 0))


class ModelMetrics:
    """What the Stylizer replicas do: loads, batches, queue wait, inference time."""

    def __init__(self) -> None:
        self.loads = Counter("animegan_model_loads", description="style models loaded")
        self.batch_size = Histogram(
            "animegan_batch_size",
            description="pictures per forward pass (a batch runs one pass per shape, or several)",
            boundaries=BATCH_BOUNDARIES,
        )
        self.queue_ms = Histogram(
            "animegan_queue_wait_ms",
            description="arrival at the replica to the start of its batch, ms",
            boundaries=MS_BOUNDARIES,
            tag_keys=("style",),
        )
        self.inference_ms = Histogram(
            "animegan_inference_ms",
            description="one forward pass (a group of same style and shape), ms",
            boundaries=MS_BOUNDARIES,
            tag_keys=("style",),
        )
        self.images = Counter("animegan_images", description="images stylized", tag_keys=("style",))


class JobMetrics:
    """The ingress's job runner: job states, the frames jobs write, queue wait, failures."""

    # A job waits behind other jobs, not behind a batch: seconds to an hour, in ms.
    WAIT_BOUNDARIES_MS = (500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000)
    WAIT_BOUNDARIES_MS += (600_000, 1_200_000, 1_800_000, 3_600_000)

    def __init__(self) -> None:
        self.jobs = Counter(
            "animegan_jobs",
            description="jobs entering a state (queued, running, done, failed, cancelled) by kind",
            tag_keys=("state", "kind"),
        )
        self.jobs_active = Gauge(
            "animegan_jobs_active",
            description="jobs queued or running on this ingress replica now",
            tag_keys=("state",),
        )
        self.job_frames = Counter(
            "animegan_job_frames",
            description="frames written to job outputs by source: model, job (repeat), cache, "
            "similar (alike the last computed frame)",
            tag_keys=("source",),
        )
        self.job_queue_wait_ms = Histogram(
            "animegan_job_queue_wait_ms",
            description="job submission to the start of its run, ms",
            boundaries=list(self.WAIT_BOUNDARIES_MS),
        )
        self.job_failures = Counter(
            "animegan_job_failures",
            description="failed jobs by error code",
            tag_keys=("code",),
        )

    def set_active(self, queued: int, running: int) -> None:
        self.jobs_active.set(queued, tags={"state": "queued"})
        self.jobs_active.set(running, tags={"state": "running"})


class LiveMetrics:
    """Live camera streams on an ingress replica: open streams, frames, frame latency."""

    def __init__(self) -> None:
        self.streams_open = Gauge(
            "animegan_live_streams", description="live streams open on this ingress replica"
        )
        self.frames = Counter(
            "animegan_live_frames",
            description="live frames by outcome: received, processed, skipped (a newer frame "
            "replaced it while it waited), failed (answered with an error)",
            tag_keys=("outcome",),
        )
        self.frame_ms = Histogram(
            "animegan_live_frame_ms",
            description="a live frame's arrival to its stylized answer being sent, ms",
            boundaries=MS_BOUNDARIES,
        )

    def streams(self, open_streams: int) -> None:
        self.streams_open.set(open_streams)

    def frame(self, outcome: str) -> None:
        self.frames.inc(tags={"outcome": outcome})

    def latency(self, ms: float) -> None:
        self.frame_ms.observe(ms)
