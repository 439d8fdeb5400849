"""Jobs that nothing a client does breaks, over real HTTP on the real local Ray: cancels
at every moment of a video job's life through either of two ingress replicas beside a
steady stream of photos, concurrent submissions while expiry deletes earlier jobs, a
hundred followers of one job, a thousand-frame GIF at the largest size, absurd Range
headers, and a full store.

Each test deploys the configuration it needs over a job store of its own (the module's
``default_app`` puts the default application back afterwards). Timings are printed, not
asserted.
"""

from __future__ import annotations

import collections
import io
import itertools
import math
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from serve_app.config import ANIMATION_BYTES_PER_PIXEL, SIDE_MULTIPLE, MediaConfig
from serve_app.media.service import OUTPUT_PREFIX
from tests.support.abuse import (
    Crowd,
    PhotoStream,
    bad_photo_answers,
    distinct_states,
    files_under,
    gif_frame_count,
    make_flicker_gif,
)
from tests.support.http import sse_states
from tests.support.jobs import wait_done
from tests.support.media import make_h264_aac_mp4, make_large_h264_mp4
from tests.support.pictures import synthetic_jpeg
from tests.support.replicas import answering_replicas, replica_ids, replica_pids
from tests.support.serve import app_args, deploy, ingress_deployment, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VIDEO_SIZE = 64


def deploy_jobs(base_url: str, store: Path, ingress_replicas: int = 1, **jobs) -> dict:
    """The test application over the job store ``store``, with these job settings."""
    args = app_args(jobs={"store_url": str(store), **jobs})
    deploy(args, ingress=ingress_deployment(num_replicas=ingress_replicas))
    wait_healthy(base_url)
    return args


def live_replicas(deployment: str, count: int, timeout_s: float = 60) -> tuple[list[str], set]:
    """The ids and processes of the deployment's ``count`` replicas, once the replicas of
    an earlier deploy have gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids, pids = replica_ids(deployment), replica_pids(deployment)
        if len(ids) == len(pids) == count:
            return ids, pids
        assert time.monotonic() < deadline, (ids, pids)
        time.sleep(0.5)


def no_5xx(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 500, (response.request.url, response.text[:300])
    return response


def post_video(client: httpx.Client, path: Path, **params) -> dict:
    response = no_5xx(
        client.post(
            "/v1/jobs",
            params={"size": VIDEO_SIZE, **params},
            content=path.read_bytes(),
            headers={"content-type": "video/mp4"},
        )
    )
    assert response.status_code == 202, response.text
    return response.json()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def print_photo_figures(label: str, answers) -> None:
    seconds = [a.answered_at - a.sent_at for a in answers if a.status == 200]
    statuses = {s: sum(1 for a in answers if a.status == s) for s in {a.status for a in answers}}
    if seconds:
        print(
            f"{label}: {len(answers)} photos {statuses}; p50 {statistics.median(seconds):.3f} s, "
            f"p95 {percentile(seconds, 0.95):.3f} s, max {max(seconds):.3f} s"
        )


# --- cancels at every moment of a video job, through either ingress replica --------------

# Seconds from the 202 to the DELETE: at once (queued, probing), then through decoding,
# the model, encoding and storing; the short clips are done before the later ones.
CANCEL_DELAYS_S = (0.0, 0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.1, 1.5, 2.0, 2.5)
CLIP_KINDS = ("short", "medium", "long", "large")
# Then short clips cancelled at these fractions of the time one takes here, end to end:
# their last frames, encoding and storing (measured first, so on any machine).
TAIL_FRACTIONS = (0.6, 0.75, 0.85, 0.9, 0.95, 1.0, 1.05)
# Further cancels, at most, until both replicas have served one and one replica has
# cancelled a job the other runs (the proxy picks replicas at random).
MORE_CANCELS = 24


def make_clip(folder: Path, kind: str, number: int) -> Path:
    """A distinct H.264 clip per job (no frame of it is in the result cache yet)."""
    path = folder / f"{kind}-{number}.mp4"
    # Other frames, other cache keys: sizes no other test's clips have.
    size = (162 + 4 * (number % 20), 98 + 4 * (number // 20))
    if kind == "large":  # few big frames, slow to probe and decode
        return make_large_h264_mp4(path, 2 * 2**20, size=(640, 360), seed=number)
    seconds, fps = {"short": (1.0, 10), "medium": (4.0, 10), "long": (8.0, 12)}[kind]
    return make_h264_aac_mp4(path, seconds=seconds, fps=fps, size=size)


@dataclass
class Cancel:
    job_id: str
    clip: str
    delay_s: float
    submit_request: str
    cancel_request: str
    cancelled: dict  # the DELETE's answer: the job as the cancel found it
    follower: object  # a future: the events of a stream opened right after the 202
    phase: str = ""  # where the job was when the cancel came


def phase_of(cancelled: dict) -> str:
    """Where the job was when the cancel won, from the record it cancelled (frames are
    written every few tens of ms; progress is 1 once the result is stored)."""
    if cancelled["progress"] >= 1.0:
        return "done"
    if cancelled["started_at"] is None:
        return "queued"
    if cancelled["frames_done"] == 0:
        return "probing/decoding"
    if cancelled["frames_done"] < cancelled["frames_total"]:
        return "model"
    return "encoding/storing"


def short_clip_seconds(client: httpx.Client, clip: Path) -> float:
    """How long a short clip's job takes here from submission to done (the server's own
    clock), with photos coming in beside it."""
    job = wait_done(client, post_video(client, clip)["id"])
    assert job["state"] == "done", job
    return job["finished_at"] - job["created_at"]


def cancel_one(client, followers, base_url, clip: Path, delay_s: float) -> Cancel:
    submit_request = f"abuse-submit-{uuid.uuid4().hex}"
    cancel_request = f"abuse-cancel-{uuid.uuid4().hex}"
    submitted = no_5xx(
        client.post(
            "/v1/jobs",
            params={"size": VIDEO_SIZE},
            content=clip.read_bytes(),
            headers={"content-type": "video/mp4", "X-Request-ID": submit_request},
        )
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    follower = followers.submit(sse_states, base_url, f"/v1/jobs/{job_id}/events")
    time.sleep(delay_s)
    deleted = no_5xx(client.delete(f"/v1/jobs/{job_id}", headers={"X-Request-ID": cancel_request}))
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["state"] == "cancelled"
    return Cancel(
        job_id, clip.stem, delay_s, submit_request, cancel_request, deleted.json(), follower
    )


def replicas_of(cancels: list[Cancel]) -> dict[str, str]:
    requests = [c.submit_request for c in cancels] + [c.cancel_request for c in cancels]
    return answering_replicas(requests)


def cancel_coverage(cancels: list[Cancel], replicas: list[str]) -> tuple[set, int]:
    """The replicas that served cancels, and how many cancels one replica served for a job
    the other ran (a job runs where it was submitted)."""
    answered = replicas_of(cancels)
    served = {answered.get(c.cancel_request) for c in cancels} & set(replicas)
    foreign = sum(
        1
        for c in cancels
        if answered.get(c.cancel_request)
        and answered.get(c.submit_request)
        and answered[c.cancel_request] != answered[c.submit_request]
    )
    return served, foreign


def test_cancels_at_every_moment_of_a_video_job_through_either_replica(default_app, tmp_path):
    store = tmp_path / "store"
    deploy_jobs(default_app, store, ingress_replicas=2)
    ids, pids = live_replicas("Ingress", 2)
    outputs_before = set(Path(tempfile.gettempdir()).glob(f"{OUTPUT_PREFIX}*"))
    clips = tmp_path / "clips"
    clips.mkdir()
    cancels: list[Cancel] = []
    with (
        PhotoStream(default_app, seed=910_000) as photos,
        httpx.Client(base_url=default_app, timeout=60) as client,
        ThreadPoolExecutor(4) as followers,
    ):
        short_s = short_clip_seconds(client, make_clip(clips, "short", 199))
        fixed = [(CLIP_KINDS[i % len(CLIP_KINDS)], d) for i, d in enumerate(CANCEL_DELAYS_S)]
        planned = fixed + [("short", fraction * short_s) for fraction in TAIL_FRACTIONS]
        more = itertools.islice(itertools.cycle(fixed), MORE_CANCELS)
        started = time.monotonic()
        for number, (kind, delay_s) in enumerate(itertools.chain(planned, more)):
            if number >= len(planned):
                served, foreign = cancel_coverage(cancels, ids)
                if served == set(ids) and foreign:
                    break
            clip = make_clip(clips, kind, number)
            cancels.append(cancel_one(client, followers, default_app, clip, delay_s))
        cancelled_by = time.monotonic()

        # Every cancelled job reads cancelled, through whichever replica answers.
        for cancel in cancels:
            job = no_5xx(client.get(f"/v1/jobs/{cancel.job_id}"))
            assert job.status_code == 200 and job.json()["state"] == "cancelled", job.text
            events = sse_states(default_app, f"/v1/jobs/{cancel.job_id}/events")
            assert [e["state"] for e in events] == ["cancelled"]
            result = no_5xx(client.get(f"/v1/jobs/{cancel.job_id}/result"))
            assert result.status_code in (404, 409), result.text
            # A stream opened before the cancel ends with it (unless the job was done by then).
            followed = cancel.follower.result(timeout=120)
            assert followed, cancel
            last = followed[-1]
            if last["state"] == "done":  # it was done before the cancel came
                assert last["finished_at"] <= cancel.cancelled["finished_at"], (cancel, last)
                cancel.phase = "done"
            else:
                assert last["state"] == "cancelled", (cancel, [e["state"] for e in followed])
                cancel.phase = phase_of(cancel.cancelled)
        photos_during = photos.stop()

    # The runners let go of everything: no file of a cancelled job is left in the store,
    # and no temporary output of theirs in the temporary folder.
    deadline = time.monotonic() + 60
    while left := {c.job_id: files for c in cancels if (files := files_under(store / c.job_id))}:
        assert time.monotonic() < deadline, left
        time.sleep(0.2)
    emptied_after_s = time.monotonic() - cancelled_by
    outputs_left = set(Path(tempfile.gettempdir()).glob(f"{OUTPUT_PREFIX}*")) - outputs_before
    assert not outputs_left, outputs_left

    # No ingress replica died, and the cancels came through both, one for the other's job.
    assert replica_ids("Ingress") == ids
    assert replica_pids("Ingress") == pids and all(psutil.pid_exists(p) for p in pids)
    served, foreign = cancel_coverage(cancels, ids)
    assert served == set(ids), served
    assert foreign >= 1

    # Every photo was answered: 200, or a documented 503 with Retry-After.
    assert photos_during, "the photo stream sent nothing"
    assert not bad_photo_answers(photos_during), bad_photo_answers(photos_during)[:5]

    phases: dict[str, list[str]] = {}
    for cancel in cancels:
        phases.setdefault(cancel.phase, []).append(f"{cancel.clip}@{cancel.delay_s:.2f}s")
    print(
        f"\na short clip's job takes {short_s:.2f} s; "
        f"cancels: {len(cancels)} in {cancelled_by - started:.1f} s; {foreign} through the "
        f"replica not running the job; store emptied {emptied_after_s:.2f} s after the last"
    )
    for phase, which in sorted(phases.items()):
        print(f"  {phase}: {len(which)} ({', '.join(which)})")
    print_photo_figures("photos beside the cancels", photos_during)


# --- concurrent submissions while expiry runs ---------------------------------------------

CLIENTS = 8
MIN_JOBS = 240
MAX_JOBS = 600
TTL_S = 2.0
SWEEP_INTERVAL_S = 0.1
STILL_SIZE = 32


@dataclass
class Submitted:
    index: int
    job_id: str | None
    status: int
    seconds: float
    ended: str | None  # the final state seen: from `Prefer: wait`, or its event stream


def test_concurrent_submissions_while_earlier_jobs_expire(default_app, tmp_path):
    store = tmp_path / "store"
    deploy_jobs(default_app, store, ttl_s=TTL_S, sweep_interval_s=SWEEP_INTERVAL_S, max_running=4)
    counter = itertools.count()
    results: list[Submitted] = []
    lock = threading.Lock()
    first_expired = threading.Event()
    first_job: dict[str, str] = {}

    def submit_one(client: httpx.Client, index: int) -> Submitted:
        # Half wait for the end in the submission (Prefer: wait), half follow its events.
        headers = {"Prefer": "wait=60"} if index % 2 == 0 else {}
        photo = synthetic_jpeg(40, 30, seed=930_000 + index, quality=80)
        sent = time.monotonic()
        try:
            response = client.post(
                "/v1/jobs",
                params={"size": STILL_SIZE},
                files={"image": ("p.jpg", photo, "image/jpeg")},
                headers=headers,
            )
        except httpx.HTTPError as error:
            return Submitted(index, None, -1, time.monotonic() - sent, repr(error))
        seconds = time.monotonic() - sent
        if response.status_code not in (200, 202):
            return Submitted(index, None, response.status_code, seconds, response.text[:200])
        job = response.json()
        ended = job["state"]
        if ended not in ("done", "failed", "cancelled"):
            ended = sse_states(default_app, f"/v1/jobs/{job['id']}/events")[-1]["state"]
        return Submitted(index, job["id"], response.status_code, seconds, ended)

    def client_loop() -> None:
        with httpx.Client(base_url=default_app, timeout=120) as client:
            while True:
                index = next(counter)
                if index >= MAX_JOBS or (index >= MIN_JOBS and first_expired.is_set()):
                    return
                submitted = submit_one(client, index)
                with lock:
                    results.append(submitted)
                    if index == 0 and submitted.job_id:
                        first_job["id"] = submitted.job_id

    def watch_first_expiry() -> None:
        """Expiry must overlap the submissions: the first job expires while they go on."""
        with httpx.Client(base_url=default_app, timeout=30) as client:
            while not stop_watching.is_set():
                if "id" in first_job:
                    answer = client.get(f"/v1/jobs/{first_job['id']}")
                    if (
                        answer.status_code == 404
                        and answer.json()["error"]["code"] == "job_expired"
                    ):
                        first_expired.set()
                        return
                time.sleep(0.1)

    stop_watching = threading.Event()
    watcher = threading.Thread(target=watch_first_expiry, daemon=True)
    watcher.start()
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        for future in [pool.submit(client_loop) for _ in range(CLIENTS)]:
            future.result()
    elapsed = time.monotonic() - started
    stop_watching.set()
    watcher.join()

    statuses = {s: sum(1 for r in results if r.status == s) for s in {r.status for r in results}}
    failures = [r for r in results if r.status not in (200, 202) or r.ended != "done"]
    assert not failures, (statuses, failures[:5])
    assert first_expired.is_set(), "no job expired while the submissions went on"
    assert len(results) >= MIN_JOBS

    # Expiry deletes every job, folder and all, and its id then answers job_expired.
    deadline = time.monotonic() + 60
    while left := [r.job_id for r in results if (store / r.job_id).exists()]:
        assert time.monotonic() < deadline, left[:5]
        time.sleep(0.2)
    with httpx.Client(base_url=default_app, timeout=30) as client:
        for submitted in results[:: max(len(results) // 20, 1)]:
            gone = no_5xx(client.get(f"/v1/jobs/{submitted.job_id}"))
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_expired"

    by_index = sorted(results, key=lambda r: r.index)
    tenth = max(len(by_index) // 10, 1)
    waited = [r.seconds for r in by_index if r.index % 2 == 0]
    plain = [r.seconds for r in by_index if r.index % 2 == 1]
    print(
        f"\n{len(results)} jobs from {CLIENTS} clients in {elapsed:.1f} s "
        f"({len(results) / elapsed:.1f} jobs/s), statuses {statuses}; submit p50 "
        f"{statistics.median(plain) * 1e3:.0f} ms (plain), "
        f"{statistics.median(waited) * 1e3:.0f} ms (Prefer: wait, to done); first 10% "
        f"p50 {statistics.median(r.seconds for r in by_index[:tenth]) * 1e3:.0f} ms, last "
        f"10% p50 {statistics.median(r.seconds for r in by_index[-tenth:]) * 1e3:.0f} ms"
    )


# --- a hundred followers of one job ------------------------------------------------------

SSE_FOLLOWERS = 100
WS_FOLLOWERS = 5
PHOTOS_WHILE_FOLLOWED = 5


def test_a_hundred_followers_of_one_job_while_photos_are_answered(default_app, tmp_path):
    deploy_jobs(default_app, tmp_path / "store", max_running=1)
    # The followed job waits behind a long one until the whole crowd follows it; then the
    # long one is cancelled and the followed one runs.
    # Sizes of their own: no frame of theirs is in the result cache yet.
    blocker_clip = make_h264_aac_mp4(tmp_path / "blocker.mp4", seconds=60, size=(242, 138))
    followed_clip = make_h264_aac_mp4(tmp_path / "followed.mp4", seconds=3, size=(246, 138))
    with (
        httpx.Client(base_url=default_app, timeout=60) as client,
        PhotoStream(default_app, seed=950_000) as photos,
    ):
        blocker = post_video(client, blocker_clip)
        followed = post_video(client, followed_clip)
        assert followed["state"] == "queued"
        started = time.monotonic()
        crowd = Crowd(default_app, followed["id"], sse=SSE_FOLLOWERS, ws=WS_FOLLOWERS)
        attached = crowd.wait_attached(timeout_s=90)
        attached_s = time.monotonic() - started
        # Photos are answered while the whole crowd follows, the followed job still queued.
        since = time.monotonic()
        during = photos.wait_answers(PHOTOS_WHILE_FOLLOWED, since, timeout_s=60)
        photo_s = time.monotonic() - since
        state_after_photos = no_5xx(client.get(f"/v1/jobs/{followed['id']}")).json()["state"]
        unblocked = no_5xx(client.delete(f"/v1/jobs/{blocker['id']}")).json()
        released = time.monotonic()
        followers = crowd.join(timeout_s=300)
        followed_s = time.monotonic() - released
        job = wait_done(client, followed["id"])
    answers = photos.answers
    firsts = collections.Counter(f.states[0] if f.states else None for f in followers)
    attach_s = sorted(f.first_at - started for f in followers if f.first_at is not None)
    events = [len(f.states) for f in followers]
    print(
        f"\n{attached} of {len(followers)} followers attached in {attached_s:.2f} s (first "
        f"events {dict(firsts)}; p50 {percentile(attach_s, 0.5):.2f} s, max "
        f"{attach_s[-1]:.2f} s); {len(during)} photos meanwhile in {photo_s:.2f} s; the "
        f"long job was {unblocked['frames_done']}/{unblocked['frames_total']} frames in; "
        f"the followed job's {job['frames_total']} frames followed to the end in "
        f"{followed_s:.2f} s; events per follower {min(events)}..{max(events)}"
    )
    print_photo_figures("photos beside the crowd", answers)

    # Every follower got the job while it waited (not only once it had ended and other
    # streams had let go of their places on the replica).
    assert firsts == {"queued": SSE_FOLLOWERS + WS_FOLLOWERS}, dict(firsts)
    assert state_after_photos == "queued", "the photos were answered only once the job ended"
    assert len(during) >= PHOTOS_WHILE_FOLLOWED and all(a.status == 200 for a in during), during
    assert not bad_photo_answers(answers), bad_photo_answers(answers)[:5]
    assert job["state"] == "done" and job["progress"] == 1.0, job
    for follower in followers:
        assert follower.error is None, follower
        assert distinct_states(follower.states) == ["queued", "running", "done"], follower
        if follower.kind == "sse":
            assert follower.status == 200
        else:
            assert follower.close_code == 1000


# --- a thousand tiny frames at the largest size --------------------------------------------


def largest_animation_size(frames: int, side: int, limit: int) -> int:
    """The largest size (a multiple of SIDE_MULTIPLE) at which ``frames`` square frames
    stay within ``limit`` output pixels."""
    size = math.isqrt(limit // frames) // SIDE_MULTIPLE * SIDE_MULTIPLE
    assert frames * size * size <= limit
    return size


def test_a_thousand_frame_gif_is_refused_at_the_largest_size_and_made_at_one_that_fits(
    default_app, tmp_path
):
    args = deploy_jobs(default_app, tmp_path / "store")
    media = MediaConfig()
    frames = media.max_animation_frames
    gif = make_flicker_gif(tmp_path / "flicker.gif", frames=frames, side=16)
    largest = args["limits"]["max_size"]
    fits = largest_animation_size(frames, 16, media.max_animation_pixels)
    assert fits < largest
    with httpx.Client(base_url=default_app, timeout=60) as client:

        def post(size: int) -> httpx.Response:
            return no_5xx(
                client.post(
                    "/v1/jobs",
                    params={"size": size},
                    content=gif.read_bytes(),
                    headers={"content-type": "image/gif"},
                )
            )

        refused = post(largest)
        assert refused.status_code == 413, refused.text
        assert refused.json()["error"]["code"] == "media_too_large"

        _, (pid,) = live_replicas("Ingress", 1)
        before_mb = psutil.Process(pid).memory_info().rss / 2**20
        peak_mb = [before_mb]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak_mb[0] = max(peak_mb[0], psutil.Process(pid).memory_info().rss / 2**20)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        accepted = post(fits)
        assert accepted.status_code == 202, accepted.text
        job = wait_done(client, accepted.json()["id"], timeout_s=300)
        made_s = time.monotonic() - started
        sampling.set()
        sampler.join()
        assert job["state"] == "done" and job["progress"] == 1.0, job
        result = client.get(f"/v1/jobs/{job['id']}/result")
        assert result.status_code == 200
    assert gif_frame_count(result.content) == frames
    assert Image.open(io.BytesIO(result.content)).size == (fits, fits)
    bound_mb = frames * fits * fits * ANIMATION_BYTES_PER_PIXEL / 2**20
    print(
        f"\n{frames}-frame GIF ({gif.stat().st_size} bytes): refused at size {largest} "
        f"({refused.json()['error']['message']}); made at {fits} in {made_s:.1f} s "
        f"({job['frames_model']} computed, {job['frames_repeated']} repeated); ingress RSS "
        f"{before_mb:.0f} -> peak {peak_mb[0]:.0f} MB (the writer's documented bound at this "
        f"size: {bound_mb:.0f} MB)"
    )


# --- absurd Range headers ----------------------------------------------------------------

HUGE = "9" * 5000
# Range header -> what RFC 9110 allows: "416", "full" (200, the whole result: the header
# ignored), or (first, last) (206 with those bytes; None for "the last byte").
RANGES: dict[str, tuple] = {
    f"bytes={HUGE}-": ("416",),
    "bytes=99999999999999999999-": ("416",),
    f"bytes={HUGE}-{HUGE}": ("416",),
    "bytes=-0": ("416",),
    "bytes=500-100": ("full", "416"),  # an invalid spec: ignored or refused
    "bytes=5-4": ("full", "416"),
    "bytes=0-1,5-9": ("full", "multipart"),
    "bytes=0-0," + ",".join(f"{i}-{i}" for i in range(2, 2000, 2)): ("full", "multipart", "416"),
    "bytes=-5-10": ("full", "416"),
    "bytes=1e3-": ("full", "416"),
    "bytes=--5": ("full", "416"),
    "bytes=-": ("full", "416"),
    "bytes=": ("full", "416"),
    "bytes 0-5": ("full",),  # no "=": not a bytes range at all
    "items=0-5": ("full",),  # a unit the server does not know: must be ignored
    "pages=1-2": ("full",),
    "\xff\xfe=0-5": ("full",),  # not even ASCII
    "bytes=0-": ((0, None),),
    "bytes=0-0": ((0, 0),),
    f"bytes=0-{HUGE}": ((0, None),),
    f"bytes=-{HUGE}": ((0, None),),
    "bytes=-1": ((-1, None),),
}


def check_range(client: httpx.Client, path: str, header: str, whole: bytes) -> str:
    size = len(whole)
    allowed = RANGES[header]
    response = no_5xx(client.get(path, headers={"Range": header.encode("latin-1")}))
    status = response.status_code
    if status == 416:
        assert "416" in allowed, (header[:60], status)
        assert response.json()["error"]["code"] == "range_not_satisfiable"
        return "416"
    if status == 200:
        assert "full" in allowed, (header[:60], status)
        assert response.content == whole
        return "full"
    assert status == 206, (header[:60], status, response.text[:200])
    if response.headers["content-type"].startswith("multipart/byteranges"):
        assert "multipart" in allowed, header[:60]
        return "multipart"
    (first, last), *_ = [a for a in allowed if isinstance(a, tuple)]
    first = first % size
    last = size - 1 if last is None else last
    assert response.headers["content-range"] == f"bytes {first}-{last}/{size}", header[:60]
    assert response.content == whole[first : last + 1]
    return "206"


def test_absurd_range_headers_get_416_or_the_whole_result(default_app, tmp_path):
    deploy_jobs(default_app, tmp_path / "store")
    with httpx.Client(base_url=default_app, timeout=60) as client:
        photo = synthetic_jpeg(320, 240, seed=960_001)
        submitted = no_5xx(
            client.post("/v1/jobs", params={"size": 256}, files={"image": ("p.jpg", photo)})
        )
        job = wait_done(client, submitted.json()["id"])
        assert job["state"] == "done", job
        path = f"/v1/jobs/{job['id']}/result"
        whole = client.get(path).content
        assert len(whole) == job["result"]["bytes"] > 1000

        answers = {
            f"{header[:24]}…({len(header)})": check_range(client, path, header, whole)
            for header in RANGES
        }

        # `bytes=0-` (what a <video> asks first) streams the whole result as a 206.
        with client.stream("GET", path, headers={"Range": "bytes=0-"}) as streamed:
            assert streamed.status_code == 206
            assert streamed.headers["content-range"] == f"bytes 0-{len(whole) - 1}/{len(whole)}"
            assert streamed.headers["content-length"] == str(len(whole))
            chunks = list(streamed.iter_bytes())
        assert b"".join(chunks) == whole
        # A 416 says how long the result is (RFC 9110 15.5.17).
        refused = client.get(path, headers={"Range": "bytes=99999999999999999999-"})
        assert refused.headers.get("content-range") == f"bytes */{len(whole)}", refused.headers
    print(f"\nRange answers over a {len(whole)}-byte result: {answers}")


# --- a full store ------------------------------------------------------------------------

STORE_BYTES = 250_000  # a few still jobs' reservations at STORED_SIZE
STORED_SIZE = 96
MAX_FILL = 60


def test_a_full_store_answers_507_and_keeps_what_it_holds(default_app, tmp_path):
    store = tmp_path / "store"
    deploy_jobs(default_app, store, max_store_bytes=STORE_BYTES)
    kept: dict[str, bytes] = {}
    with httpx.Client(base_url=default_app, timeout=60) as client:

        def submit(seed: int) -> httpx.Response:
            photo = synthetic_jpeg(64, 48, seed=seed)
            files = {"image": ("p.jpg", photo, "image/jpeg")}
            response = client.post("/v1/jobs", params={"size": STORED_SIZE}, files=files)
            assert response.status_code in (202, 507), response.text  # 507: full, no other 5xx
            return response

        for seed in range(970_000, 970_000 + MAX_FILL):
            response = submit(seed)
            if response.status_code == 507:
                break
            assert response.status_code == 202, response.text
            job = wait_done(client, response.json()["id"])
            assert job["state"] == "done", job
            kept[job["id"]] = no_5xx(client.get(f"/v1/jobs/{job['id']}/result")).content
        else:
            pytest.fail(f"{MAX_FILL} jobs fitted in a store of {STORE_BYTES} bytes")
        assert response.json()["error"]["code"] == "store_full", response.text
        assert len(kept) >= 2, f"only {len(kept)} job(s) fitted"
        again = submit(seed + 1)
        assert again.status_code == 507

        # Everything stored stays, whole.
        for job_id, data in kept.items():
            assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "done"
            assert client.get(f"/v1/jobs/{job_id}/result").content == data
        # Deleting finished jobs makes room again.
        freed = []
        for job_id in list(kept)[:-1]:
            assert no_5xx(client.delete(f"/v1/jobs/{job_id}")).json()["state"] == "cancelled"
            freed.append(kept.pop(job_id))
            after = submit(seed + 1 + len(freed))
            if after.status_code != 507:
                break
        assert after.status_code == 202, after.text
        assert wait_done(client, after.json()["id"])["state"] == "done"
        for job_id, data in kept.items():
            assert client.get(f"/v1/jobs/{job_id}/result").content == data
    print(
        f"\nthe {STORE_BYTES}-byte store took {len(kept) + len(freed)} jobs at size "
        f"{STORED_SIZE} before 507; {len(freed)} deleted made room for the next"
    )
