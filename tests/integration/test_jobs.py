"""Jobs over real HTTP on a real local Ray: submit, follow, fetch, cancel, survive."""

from __future__ import annotations

import io
import re
import time

import httpx
import pytest
from PIL import Image
from ray import serve

from serve_app.errors import UnknownJob
from tests.support.http import sse_states
from tests.support.jobs import wait_done
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import app_args, deploy, kill_replica, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYNC_SIZE = 128
JOB_SIZE = 320


@pytest.fixture(scope="module")
def jobs_app(default_app, tmp_path_factory):
    store = tmp_path_factory.mktemp("job-store")
    args = app_args(
        limits={"max_size": 512, "max_sync_size": SYNC_SIZE, "max_bytes": 2 * 2**20},
        jobs={"store_url": str(store), "heartbeat_s": 0.5, "stale_after_s": 3},
        # Pictures past 256×256 run in small tiles: a 512 px job takes dozens of steps.
        tiling={
            "max_whole_pixels": 256 * 256,
            "tile_size": 128,
            "overlap": 32,
            "stats_pixels": 64 * 64,
        },
    )
    deploy(args)
    wait_healthy(default_app)
    yield default_app, args, store


def submit(
    client: httpx.Client, data: bytes, headers: dict | None = None, **params
) -> httpx.Response:
    files = {"image": ("p.jpg", data, "image/jpeg")}
    return client.post("/v1/jobs", params=params, files=files, headers=headers)


def test_a_size_past_the_synchronous_limit_is_sent_to_jobs(jobs_app, client):
    response = client.post(
        "/v1/stylize",
        params={"size": JOB_SIZE},
        files={"image": ("p.jpg", synthetic_jpeg(seed=61_000))},
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "use_jobs" and "/v1/jobs" in error["message"]
    too_big = submit(client, synthetic_jpeg(seed=61_000), size=1024)
    assert too_big.status_code == 422 and too_big.json()["error"]["code"] == "invalid_size"


def test_a_large_print_job_is_followed_and_fetched(jobs_app, client):
    base_url, _, _ = jobs_app
    photo = synthetic_jpeg(seed=61_001, width=640, height=480)
    response = submit(client, photo, size=JOB_SIZE, format="png")
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and job["frames_total"] == 1
    assert set(job["links"]) == {"self", "events", "result"}

    events = sse_states(base_url, f"/v1/jobs/{job['id']}/events")
    assert events[-1]["state"] == "done"
    assert events[-1]["frames_done"] == 1 and events[-1]["eta_s"] == 0

    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(result.content))
    assert max(picture.size) == JOB_SIZE
    assert int(result.headers["content-length"]) == events[-1]["result"]["bytes"]

    # The same bytes again on this open service: a job of its own (ids are never shared),
    # answered at once from the first one's output.
    started = time.monotonic()
    again = submit(client, photo, headers={"Prefer": "wait=30"}, size=JOB_SIZE, format="png")
    seconds = time.monotonic() - started
    print(f"the same upload as a new job answered in {seconds * 1e3:.0f} ms")
    assert again.status_code == 200 and again.headers["preference-applied"] == "wait=30"
    assert again.json()["id"] != job["id"] and again.json()["state"] == "done"
    assert again.json()["result"]["cache"] == "hit"
    other = submit(client, photo, size=JOB_SIZE, format="jpeg")  # other options: a new job
    assert other.status_code == 202 and other.json()["id"] != job["id"]
    assert wait_done(client, other.json()["id"])["state"] == "done"


def test_a_tiled_large_print_reports_progress_as_its_tiles_run(jobs_app, client):
    base_url, _, _ = jobs_app
    photo = synthetic_jpeg(seed=61_010, width=800, height=600)
    job = submit(client, photo, size=512).json()
    events = sse_states(base_url, f"/v1/jobs/{job['id']}/events")
    assert events[-1]["state"] == "done" and events[-1]["progress"] == 1
    running = [event["progress"] for event in events if event["state"] == "running"]
    print(f"progress seen while running: {running}")
    assert any(0.05 < progress < 0.9 for progress in running), running  # the tiles' steps
    assert running == sorted(running)
    assert any(event["eta_s"] and event["eta_s"] > 0 for event in events)
    stats = client.get("/v1/stats").json()["model"]
    assert stats["tiled_images"] >= 1


def test_a_failed_job_reports_its_error_and_has_no_result(jobs_app, client):
    response = submit(client, b"definitely not a picture", size=JOB_SIZE)
    assert response.status_code == 202
    job = wait_done(client, response.json()["id"])
    assert job["state"] == "failed"
    assert job["error"]["code"] == "undecodable_image"
    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 409 and result.json()["error"]["code"] == "job_not_done"


def test_unknown_jobs_answer_404_json(jobs_app, client):
    for method, path in (
        ("GET", "/v1/jobs/0123abcd"),
        ("GET", f"/v1/jobs/{'0' * 32}"),
        ("GET", f"/v1/jobs/{'0' * 32}/result"),
        ("GET", f"/v1/jobs/{'0' * 32}/events"),
        ("DELETE", f"/v1/jobs/{'0' * 32}"),
        ("GET", "/v1/jobs/..%2F..%2Fetc"),
    ):
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] in ("unknown_job", "not_found")


def test_a_deleted_job_is_cancelled_its_files_gone_and_its_record_kept(jobs_app, client):
    base_url, _, store = jobs_app
    response = submit(client, synthetic_jpeg(seed=61_002, width=800, height=600), size=512)
    job_id = response.json()["id"]
    deleted = client.delete(f"/v1/jobs/{job_id}")
    assert deleted.status_code == 200 and deleted.json()["state"] == "cancelled"
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 409 and result.json()["error"]["code"] == "job_not_done"
    assert [e["state"] for e in sse_states(base_url, f"/v1/jobs/{job_id}/events")] == ["cancelled"]
    # The runner hears of it and writes nothing back: once a later job has run through the
    # same replica's slots, the cancelled one's folder is still gone.
    later = submit(client, synthetic_jpeg(seed=61_006), size=JOB_SIZE).json()["id"]
    assert wait_done(client, later)["state"] == "done"
    assert not (store / job_id).exists()


def test_the_handle_api_submits_follows_and_fetches(jobs_app):
    handle = serve.get_app_handle("animegan")
    photo = synthetic_jpeg(seed=61_003)
    job = handle.submit_job.remote(photo, size=JOB_SIZE, format="webp").result()
    deadline = time.monotonic() + 120
    while job.state not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = handle.job.remote(job.id).result()
    assert job.state == "done"
    result = handle.job_result.remote(job.id).result()
    assert result.media_type == "image/webp"
    assert max(Image.open(io.BytesIO(result.data)).size) == JOB_SIZE

    # A key's jobs, as over HTTP: its own, newest first; another key's list is its own.
    key, other = "handle-key-a", "handle-key-b"
    owned = [
        handle.submit_job.remote(synthetic_jpeg(seed=seed), api_key=key, size=JOB_SIZE).result()
        for seed in (61_010, 61_011)
    ]
    assert handle.job.remote(owned[0].id, api_key=key).result().id == owned[0].id
    listed = handle.list_jobs.remote(key, limit=1).result()
    assert [j.id for j in listed.jobs] == [owned[1].id] and listed.next_cursor
    rest = handle.list_jobs.remote(key, cursor=listed.next_cursor).result()
    assert [j.id for j in rest.jobs] == [owned[0].id] and rest.next_cursor is None
    assert handle.list_jobs.remote(other).result().jobs == []
    with pytest.raises(UnknownJob):
        handle.job.remote(owned[0].id, api_key=other).result()


def test_jobs_outlive_the_ingress_that_ran_them(jobs_app, client):
    base_url, args, _ = jobs_app
    finished = submit(client, synthetic_jpeg(seed=61_004), size=JOB_SIZE)
    finished_id = finished.json()["id"]
    assert wait_done(client, finished_id)["state"] == "done"

    # A job in progress when its ingress replica dies is taken over by the next one.
    running = submit(client, synthetic_jpeg(seed=61_005, width=800, height=600), size=512)
    running_id = running.json()["id"]
    kill_replica("Ingress")
    wait_healthy(base_url)
    job = wait_done(client, running_id, timeout_s=180)
    assert job["state"] == "done", job
    assert (
        max(Image.open(io.BytesIO(client.get(f"/v1/jobs/{running_id}/result").content)).size) == 512
    )

    # A redeploy (new ingress replicas) still answers for finished jobs.
    deploy({**args, "request_timeout_s": 61})
    wait_healthy(base_url)
    assert client.get(f"/v1/jobs/{finished_id}").json()["state"] == "done"
    assert client.get(f"/v1/jobs/{finished_id}/result").status_code == 200


def test_an_open_service_gives_unguessable_ids_and_lists_nobody_s_jobs(jobs_app, client):
    photo = synthetic_jpeg(seed=61_007)
    ids = [submit(client, photo, size=JOB_SIZE).json()["id"] for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", job_id) for job_id in ids)
    assert ids[0] != ids[1]  # the same bytes: never a shared job
    listing = client.get("/v1/jobs")
    assert listing.status_code == 403 and listing.json()["error"]["code"] == "owner_required"
    for job_id in ids:
        wait_done(client, job_id)
