"""Videos and animated pictures as jobs, over real HTTP on a real local Ray, with media
files the tests make with PyAV and Pillow and check with a real decoder."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
import ray
from PIL import Image
from ray import serve

from serve_app.config import MediaConfig
from serve_app.media import probe
from tests.support.http import post_then_hang_up, sse_states
from tests.support.jobs import wait_done
from tests.support.media import (
    audio_packets,
    display_rotation,
    frame_count,
    make_animation,
    make_h264_aac_mp4,
    make_rotated_mp4,
    make_vp9_opus_webm,
    truncate,
    video_timestamps,
)
from tests.support.serve import (
    app_args,
    deploy,
    kill_replica,
    stylizer_deployment,
    stylizer_stats,
    wait_healthy,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = 64
MEDIA_LIMITS = {
    "max_bytes": 3 * 2**20,
    "max_duration_s": 12,
    "max_frames": 150,
    "max_frame_pixels": 320 * 240,
    "max_animation_frames": 40,
    "max_sync_pixels": 12 * 64 * 48,
    "frames_in_flight": 8,
    "frame_batch": 4,
}


@pytest.fixture(scope="module")
def video_app(default_app, tmp_path_factory):
    store = tmp_path_factory.mktemp("video-job-store")
    args = app_args(
        jobs={"store_url": str(store), "heartbeat_s": 0.5, "stale_after_s": 3},
        media=MEDIA_LIMITS,
    )
    deploy(args)
    wait_healthy(default_app)
    yield default_app, args, store


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {
        "mp4": make_h264_aac_mp4(folder / "clip.mp4", seconds=2.0, fps=10),
        "webm": make_vp9_opus_webm(folder / "clip.webm", seconds=1.5, fps=10),
        "rotated": make_rotated_mp4(folder / "phone.mp4", rotation=90, seconds=1.0),
        "gif": make_animation(folder / "a.gif", fmt="gif", frames=6, durations=[80, 120] * 3),
        "webp": make_animation(folder / "a.webp", fmt="webp", frames=5, loop=2),
        "long": make_h264_aac_mp4(folder / "long.mp4", seconds=8.0, fps=12),
    }


def post_job(
    client, path, media_type: str, headers: dict | None = None, **params
) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        params={"size": SIZE, **params},
        content=path.read_bytes(),
        headers={"content-type": media_type, **(headers or {})},
    )


def finished(client, response: httpx.Response, timeout_s: float = 180) -> dict:
    assert response.status_code in (200, 202), response.text
    job = wait_done(client, response.json()["id"], timeout_s)
    assert job["state"] == "done", job
    return job


def fetch(client, job: dict, tmp_path, name: str):
    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200
    assert result.headers["content-type"] == job["result"]["media_type"]
    path = tmp_path / name
    path.write_bytes(result.content)
    return path


def test_an_h264_aac_video_keeps_frames_timestamps_and_audio(video_app, client, clips, tmp_path):
    base_url, _, _ = video_app
    response = post_job(client, clips["mp4"], "video/mp4")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "video" and job["frames_total"] == 20
    assert job["media"]["video_codec"] == "h264" and job["media"]["audio_codecs"] == ["aac"]

    events = sse_states(base_url, f"/v1/jobs/{job['id']}/events")
    assert events[-1]["state"] == "done", events[-1]
    seen = [event["frames_done"] for event in events]
    assert seen == sorted(seen) and seen[-1] == 20
    done = events[-1]
    sources = ("frames_model", "frames_repeated", "frames_cached", "frames_similar")
    assert sum(done[source] for source in sources) == 20
    assert done["result"]["frames"] == 20 and done["result"]["media_type"] == "video/mp4"

    out = fetch(client, done, tmp_path, "out.mp4")
    assert frame_count(out) == frame_count(clips["mp4"])
    assert video_timestamps(out) == video_timestamps(clips["mp4"])
    assert audio_packets(out) == audio_packets(clips["mp4"])
    info = probe.probe(out, MediaConfig())
    assert max(info.width, info.height) == SIZE
    assert abs(info.duration_s - 2.0) < 0.15

    # A player's Range requests
    whole = out.read_bytes()
    part = client.get(f"/v1/jobs/{job['id']}/result", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    tail = client.get(f"/v1/jobs/{job['id']}/result", headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == whole[-50:]
    past = client.get(f"/v1/jobs/{job['id']}/result", headers={"Range": f"bytes={len(whole)}-"})
    assert past.status_code == 416 and past.json()["error"]["code"] == "range_not_satisfiable"

    # The same clip and options again (an open service: a job of its own), answered at
    # once with the first one's output
    started = time.monotonic()
    again = post_job(client, clips["mp4"], "video/mp4", headers={"Prefer": "wait=60"})
    print(f"resubmitted clip answered in {(time.monotonic() - started) * 1e3:.0f} ms")
    assert again.status_code == 200 and again.json()["id"] != job["id"]
    assert again.json()["state"] == "done" and again.json()["result"]["cache"] == "hit"
    assert client.get(again.json()["links"]["result"]).content == whole
    # Other options that only change the controls: a new job, every frame from the cache
    other = finished(client, post_job(client, clips["mp4"], "video/mp4", strength=0.5))
    assert other["id"] != job["id"]
    assert other["frames_model"] == 0 and other["frames_cached"] == 20


def test_a_vp9_opus_webm_sent_as_multipart_stays_webm(video_app, client, clips, tmp_path):
    response = client.post(
        "/v1/jobs",
        params={"size": SIZE},
        files={"file": ("clip.webm", clips["webm"].read_bytes(), "video/webm")},
    )
    job = finished(client, response)
    out = fetch(client, job, tmp_path, "out.webm")
    assert job["result"]["media_type"] == "video/webm"
    assert probe.probe(out, MediaConfig()).video_codec == "vp9"
    assert audio_packets(out) == audio_packets(clips["webm"])
    assert frame_count(out) == frame_count(clips["webm"])
    # Opus cannot go into MP4's family? It can; AAC cannot go into WebM:
    refused = post_job(client, clips["mp4"], "video/mp4", container="webm")
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "invalid_video_options"


def test_a_phone_video_keeps_its_rotation(video_app, client, clips, tmp_path):
    job = finished(client, post_job(client, clips["rotated"], "video/mp4"))
    assert job["media"]["rotation"] == 90
    out = fetch(client, job, tmp_path, "phone.mp4")
    assert display_rotation(out) == 90
    assert video_timestamps(out) == video_timestamps(clips["rotated"])


@pytest.mark.parametrize("kind", ["gif", "webp"])
def test_an_animation_job_keeps_frames_durations_and_loop(video_app, client, clips, kind):
    source = clips[kind]
    job = finished(client, post_job(client, source, f"image/{kind}"))
    assert job["kind"] == "animation"
    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.headers["content-type"] == f"image/{kind}"
    before = probe.probe(source, MediaConfig())
    after = probe.probe(io.BytesIO(result.content), MediaConfig())
    assert (after.kind, after.frames, after.loop) == ("animation", before.frames, before.loop)
    assert abs(after.duration_s - before.duration_s) < 0.011


def test_stylize_answers_small_animations_animated_and_sends_the_rest_to_jobs(
    video_app, client, clips, tmp_path
):
    gif = clips["gif"].read_bytes()
    response = client.post(
        "/v1/stylize", params={"size": SIZE}, content=gif, headers={"content-type": "image/gif"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/gif"
    assert Image.open(io.BytesIO(response.content)).n_frames == 6
    again = client.post(
        "/v1/stylize", params={"size": SIZE}, content=gif, headers={"content-type": "image/gif"}
    )
    assert again.headers["x-cache"] == "hit" and again.content == response.content

    many = make_animation(tmp_path / "many.gif", fmt="gif", frames=20)  # over the budget
    refused = client.post(
        "/v1/stylize",
        params={"size": SIZE},
        content=many.read_bytes(),
        headers={"content-type": "image/gif"},
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "use_jobs"
    video = client.post(
        "/v1/stylize",
        params={"size": SIZE},
        files={"image": ("clip.mp4", clips["mp4"].read_bytes(), "video/mp4")},
    )
    assert video.status_code == 422 and video.json()["error"]["code"] == "use_jobs"


def test_broken_and_oversized_media_are_refused_up_front(video_app, client, clips, tmp_path):
    cut = truncate(clips["mp4"], tmp_path / "cut.mp4", keep=0.6)
    response = post_job(client, cut, "video/mp4")
    if response.status_code == 202:  # the index came first: it fails while decoding
        job = wait_done(client, response.json()["id"])
        assert job["state"] == "failed" and job["error"]["code"] == "undecodable_media"
    else:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "undecodable_media"

    too_long = post_job(client, clips["long"], "video/mp4")  # 8 s × 12 fps = 96 frames: fine
    assert too_long.status_code == 202
    cases = {
        "duration": make_h264_aac_mp4(tmp_path / "d.mp4", seconds=13.0, fps=2),
        "frames": make_h264_aac_mp4(tmp_path / "f.mp4", seconds=6.5, fps=25),
        "frame size": make_h264_aac_mp4(tmp_path / "s.mp4", seconds=0.5, size=(400, 240)),
    }
    for what, path in cases.items():
        refused = post_job(client, path, "video/mp4")
        assert refused.status_code == 413, (what, refused.text)
        assert refused.json()["error"]["code"] == "media_too_large", what
    frames = make_animation(tmp_path / "f.gif", fmt="gif", frames=41)
    refused = post_job(client, frames, "image/gif")
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "media_too_large"
    huge = client.post(
        "/v1/jobs",
        content=b"\0" * (MEDIA_LIMITS["max_bytes"] + 1),
        headers={"content-type": "video/mp4"},
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
    refused = post_job(client, make_avi(tmp_path / "clip.avi"), "video/mp4")
    assert refused.status_code == 415, refused.text
    wait_done(client, too_long.json()["id"])


def test_a_cancelled_video_stops_reaching_the_model(video_app, client, clips):
    _, _, store = video_app
    response = post_job(client, clips["long"], "video/mp4", style="beta")
    job_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}").json()["frames_done"] < 8:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    deleted = client.delete(f"/v1/jobs/{job_id}")
    assert deleted.status_code == 200 and deleted.json()["state"] == "cancelled"
    # Its run has ended once the ingress runs no job; then one more picture sent straight
    # to the model is the only one it computes: none of the video's frames came after.
    deadline = time.monotonic() + 60
    while client.get("/v1/stats").json()["jobs"]["running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    images = stylizer_stats()["images"]
    stylizer = serve.get_deployment_handle("Stylizer", app_name="animegan")
    stylizer.stylize.remote(np.zeros((32, 32, 3), np.uint8), "alpha").result(timeout_s=60)
    assert stylizer_stats()["images"] == images + 1
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    assert not (store / job_id).exists()


def test_a_video_survives_its_model_replica_and_its_ingress(video_app, client, clips, tmp_path):
    base_url, args, _ = video_app
    # The model replica dies mid-way: its batch is retried on the new one.
    response = post_job(client, clips["long"], "video/mp4", size=SIZE - 8)
    job_id = response.json()["id"]
    wait_frames(client, job_id, 12)
    kill_replica("Stylizer")
    job = wait_done(client, job_id, timeout_s=240)
    assert job["state"] == "done", job
    out = fetch(client, job, tmp_path, "after-model.mp4")
    assert frame_count(out) == frame_count(clips["long"])
    assert video_timestamps(out) == video_timestamps(clips["long"])
    assert audio_packets(out) == audio_packets(clips["long"])

    # The ingress dies mid-way: another takes the job over; the frames made before come
    # from the result cache, so at most the frames in flight are computed again.
    response = post_job(client, clips["long"], "video/mp4", size=SIZE - 16)
    job_id = response.json()["id"]
    before = wait_frames(client, job_id, 24)
    kill_replica("Ingress")
    wait_healthy(base_url)
    job = wait_done(client, job_id, timeout_s=240)
    assert job["state"] == "done", job
    total = job["frames_total"]
    in_flight = MEDIA_LIMITS["frames_in_flight"] + MEDIA_LIMITS["frame_batch"]
    print(f"taken over after {before} frames; the rerun computed {job['frames_model']}")
    assert job["frames_model"] <= total - before + in_flight
    out = fetch(client, job, tmp_path, "after-ingress.mp4")
    assert frame_count(out) == total == frame_count(clips["long"])
    assert video_timestamps(out) == video_timestamps(clips["long"])

    # A redeploy still answers for the finished job.
    deploy({**args, "request_timeout_s": 62}, stylizer=stylizer_deployment())
    wait_healthy(base_url)
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "done"
    assert client.get(f"/v1/jobs/{job_id}/result").content == out.read_bytes()


@pytest.mark.parametrize("wait_s", [0.0, 0.3, 1.5])
def test_a_client_that_hangs_up_after_submitting_leaves_no_stuck_job(
    video_app, client, clips, wait_s
):
    """However far the submission got when its client went away (nothing, the record,
    the job started), the same upload submitted again ends done."""
    base_url, _, _ = video_app
    data = clips["mp4"].read_bytes()
    max_fps = {0.0: 9, 0.3: 8, 1.5: 7}[wait_s]  # a job of its own per case
    path = f"/v1/jobs?size={SIZE}&max_fps={max_fps}"
    post_then_hang_up(base_url, data, wait_s, path, "video/mp4")
    again = client.post(path, content=data, headers={"content-type": "video/mp4"})
    job = finished(client, again)
    assert job["frames_done"] == job["frames_total"] > 0


def test_a_client_that_hangs_up_while_waiting_leaves_its_job_running(video_app, client, tmp_path):
    """A submitter waiting for the end (``Prefer: wait``) hangs up while its job runs: the
    job is not the request's, so it runs on to the end in its first attempt (the model
    calls it made in the request's context were cancelled with it, and the job stalled
    until another runner took it over)."""
    base_url, _, _ = video_app
    clip = make_h264_aac_mp4(tmp_path / "waited.mp4", seconds=10.0, fps=12, size=(188, 124))
    key = {"Idempotency-Key": f"waited-{time.time_ns()}"}
    path = f"/v1/jobs?size={SIZE}"

    def job_running() -> bool:
        return client.get("/v1/stats").json()["jobs"]["running"] > 0

    post_then_hang_up(
        base_url,
        clip.read_bytes(),
        60,
        path,
        "video/mp4",
        headers={"Prefer": "wait=60", **key},
        until=job_running,
    )
    again = client.post(
        path, content=clip.read_bytes(), headers={"content-type": "video/mp4", **key}
    )
    assert again.status_code == 200, again.text  # the waiter's job, found
    assert again.json()["state"] == "running", "the job ended before the hang-up"
    job = wait_done(client, again.json()["id"], timeout_s=180)
    assert job["state"] == "done" and job["attempts"] == 1, job
    assert job["frames_done"] == frame_count(clip)


def test_a_client_that_hangs_up_mid_upload_leaves_nothing(video_app, client, clips):
    base_url, _, _ = video_app
    data = clips["webm"].read_bytes()
    path = f"/v1/jobs?size={SIZE}&max_fps=6"
    post_then_hang_up(base_url, data, 0.5, path, "video/webm", sent=len(data) // 2)
    # The half upload made no job: the whole one is new.
    response = client.post(path, content=data, headers={"content-type": "video/webm"})
    assert response.status_code == 202, response.text
    finished(client, response)


def test_the_handle_api_makes_a_video(video_app, clips):
    handle = serve.get_app_handle("animegan")
    data = clips["webm"].read_bytes()
    job = handle.submit_job.remote(data, size=SIZE, style="beta").result()
    deadline = time.monotonic() + 120
    while job.state not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = handle.job.remote(job.id).result()
    assert job.state == "done" and job.kind == "video"
    result = handle.job_result.remote(job.id).result()
    assert result.media_type == "video/webm"
    assert ray.is_initialized()


def make_avi(path):
    """A video in a container the service does not take (AVI, MPEG-4 part 2)."""
    import av
    import numpy as np

    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(5):
            picture = np.full((48, 64, 3), index * 40, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode())
    return path


def wait_frames(client, job_id: str, frames: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["frames_done"] >= frames:
            return body["frames_done"]
        assert body["state"] in ("queued", "running"), body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)
