"""The job workload: videos through the running service, next to the bare model.

Per repetition, against the service the benchmark started (``run``):

- throughput: a clip of unique frames (each frame different), submitted and waited for;
  frames per second from the job's own start and finish times;
- dedup: a clip whose second half is a still shot; model passes against frames;
- resubmission: the throughput clip again: the time to the answer (the finished job);
- interactive: single photos one after another, idle and while a long clip runs; p50s.

Each repetition makes its own clips (a seed in the picture): nothing is found in the
cache from an earlier one.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np

from load_tests.workloads import CONTENT_TYPE, UploadSource, multipart

FRAME_SIZE = 256  # the jobs' output longer side
SOURCE = (640, 360)  # the clips' frames (16:9: 256×144 after resizing)
FPS = 10
CLIP_S, QUICK_CLIP_S = 8.0, 2.0  # the throughput clip
LONG_S, QUICK_LONG_S = 20.0, 4.0  # the clip running while photos are timed
PHOTOS, QUICK_PHOTOS = 12, 3  # photos timed idle, and again during a job
# A client following its job once a second: the job's own start and finish times make the
# figures, and faster polling would be load the frames/s figure pays for.
POLL_S = 1.0


def make_clip(path: Path, seconds: float, seed: int, still_after_s: float | None = None) -> Path:
    """An H.264 + AAC MP4 of frames that all differ (noise seeded per clip and frame),
    the last frame repeated from ``still_after_s`` on (encoded losslessly, so the still
    frames decode identical)."""
    rng = np.random.default_rng(seed)
    width, height = SOURCE
    base = rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)
    frames = round(seconds * FPS)
    still_from = None if still_after_s is None else round(still_after_s * FPS)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"crf": "0" if still_from is not None else "18", "preset": "veryfast"}
        audio = out.add_stream("aac", rate=48_000)
        audio.layout = "mono"
        picture = None
        for index in range(frames):
            if still_from is None or index <= still_from:
                shifted = np.roll(base, index, axis=1) ^ np.uint8(index * 7 % 256)
                picture = np.kron(shifted, np.ones((8, 8, 1), np.uint8))
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode())
        _add_tone(out, audio, seconds)
    return path


def _add_tone(out, audio, seconds: float) -> None:
    samples = 1024
    for start in range(0, int(seconds * 48_000), samples):
        t = (np.arange(start, start + samples) / 48_000).astype(np.float32)
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, start, Fraction(1, 48_000)
        out.mux(audio.encode(frame))
    out.mux(audio.encode())


RESUBMIT_WAIT_S = 30  # past it the answer is the usual 202 (and the run fails: a defect)


def submit(client: httpx.Client, clip: Path, wait_s: int = 0) -> httpx.Response:
    """``wait_s``: answered with the finished job if it ends by then (``Prefer: wait``)."""
    headers = {"content-type": "video/mp4"}
    if wait_s:
        headers["prefer"] = f"wait={wait_s}"
    return client.post(
        "/v1/jobs", params={"size": FRAME_SIZE}, content=clip.read_bytes(), headers=headers
    )


def wait(client: httpx.Client, job_id: str, timeout_s: float = 900) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            if job["state"] != "done":
                raise RuntimeError(f"job {job_id} {job['state']}: {job.get('error')}")
            return job
        time.sleep(POLL_S)
    raise TimeoutError(f"job {job_id} not done within {timeout_s} s")


def photo_p50_ms(url: str, photos: UploadSource, count: int) -> float:
    """Single photos one after another (a person waiting for each): the median latency."""
    times = []
    with httpx.Client(timeout=120) as client:
        for _ in range(count):
            start = time.perf_counter()
            response = client.post(
                url, content=multipart(photos()), headers={"Content-Type": CONTENT_TYPE}
            )
            response.raise_for_status()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run(root: str, photo_url: str, photos: UploadSource, repeats: int, quick: bool) -> dict:
    """The job figures, one list entry per repetition."""
    clip_s = QUICK_CLIP_S if quick else CLIP_S
    long_s = QUICK_LONG_S if quick else LONG_S
    count = QUICK_PHOTOS if quick else PHOTOS
    runs = []
    with (
        tempfile.TemporaryDirectory() as folder,
        httpx.Client(base_url=root, timeout=120) as client,
    ):
        for rep in range(repeats):
            seed = time.time_ns() % 2**32 + rep
            clip = make_clip(Path(folder) / f"unique-{rep}.mp4", clip_s, seed)
            job = wait(client, submit(client, clip).json()["id"])
            frames_per_s = job["frames_done"] / (job["finished_at"] - job["started_at"])

            half = make_clip(Path(folder) / f"half-{rep}.mp4", clip_s, seed + 1, clip_s / 2)
            still = wait(client, submit(client, half).json()["id"])

            # The same clip again: a job of its own (ids are never shared), made by copying
            # the finished job's output; the answer waits for it (Prefer: wait).
            start = time.perf_counter()
            again = submit(client, clip, wait_s=RESUBMIT_WAIT_S)
            resubmit_ms = (time.perf_counter() - start) * 1e3
            if again.json()["state"] != "done" or again.json()["frames_model"]:
                raise RuntimeError(f"resubmission not answered from the job: {again.text}")

            idle = photo_p50_ms(photo_url, photos, count)
            busy = _p50_during_job(client, photo_url, photos, count, folder, long_s, seed + 2)
            runs.append(
                {
                    "frames_per_s": frames_per_s,
                    "frames": job["frames_done"],
                    "still_frames": still["frames_done"],
                    "still_model_passes": still["frames_model"],
                    "still_repeated": still["frames_repeated"],
                    "resubmit_ms": resubmit_ms,
                    "photo_idle_p50_ms": idle,
                    "photo_during_job_p50_ms": busy,
                }
            )
    return {"runs": runs, "frame_size": FRAME_SIZE, "source": SOURCE, "fps": FPS}


def _p50_during_job(client, photo_url, photos, count, folder, seconds, seed) -> float:
    """Photos timed once a long clip's frames flow; the clip must still run at the end."""
    clip = make_clip(Path(folder) / f"long-{seed}.mp4", seconds, seed)
    job_id = submit(client, clip).json()["id"]
    while client.get(f"/v1/jobs/{job_id}").json()["frames_done"] == 0:
        time.sleep(POLL_S)
    p50 = photo_p50_ms(photo_url, photos, count)
    if client.get(f"/v1/jobs/{job_id}").json()["state"] != "running":
        raise RuntimeError("the job ended before the photos were timed: make the clip longer")
    wait(client, job_id)
    return p50
