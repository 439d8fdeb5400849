"""``animegan jobs`` and ``animegan stylize --server``: the installed command against a real
service on real Ray, with an API key — jobs submitted and waited for, downloaded, listed,
followed, cancelled, refused; pictures, a directory, a video and stdin sent for stylizing."""

from __future__ import annotations

import io
import json
import subprocess

import av
import pytest
from PIL import Image

from tests.support.cli import RunningAnimegan, animegan_command, cli_env, run_animegan
from tests.support.media import make_h264_aac_mp4
from tests.support.paths import REPO
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import app_args, deploy, keyed_ingress, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "cli-jobs-key"
LARGE = 768  # tiled in this deploy: a job that runs for a while
EXIT_FAILED, EXIT_REFUSED = 1, 3  # serve_app/cli/output.py, as a user's script reads them


@pytest.fixture(scope="module")
def service(default_app, tmp_path_factory) -> str:
    args = app_args(
        limits={"max_size": LARGE, "max_sync_size": 256, "max_bytes": 2 * 2**20},
        tiling={"max_whole_pixels": 256 * 256, "tile_size": 128, "overlap": 32},
        jobs={"store_url": str(tmp_path_factory.mktemp("cli-jobs"))},
    )
    deploy(args, ingress=keyed_ingress([KEY]))
    wait_healthy(default_app)
    return default_app


def animegan(service: str, *args: str, key: str | None = KEY):
    return run_animegan("jobs", *args, url=service, key=key)


def test_submit_waits_for_the_job_and_downloads_a_picture_of_the_asked_size(service, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(synthetic_jpeg(160, 120, seed=93_001))
    target = tmp_path / "out" / "anime.png"
    options = ["--size", "64", "--format", "png"]
    done = animegan(service, "submit", str(photo), *options, "--wait", "-o", str(target))
    assert done.returncode == 0, done.stderr
    job_id, state = done.stdout.split()
    assert state == "done" and f"job {job_id}: done" in done.stderr
    assert KEY not in done.stdout + done.stderr
    with Image.open(target) as picture:
        picture.load()
        assert picture.format == "PNG" and picture.size == (64, 48)
    assert [path.name for path in target.parent.iterdir()] == ["anime.png"]

    listed = animegan(service, "list", "--state", "done", "--all")
    assert listed.returncode == 0, listed.stderr
    assert job_id in [row.split()[0] for row in listed.stdout.splitlines()[1:]]
    shown = animegan(service, "show", job_id, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["result"]["width"] == 64

    again = tmp_path / "again.png"
    fetched = animegan(service, "result", job_id, "-o", str(again))
    assert fetched.returncode == 0 and again.read_bytes() == target.read_bytes()


def test_files_and_keys_the_service_refuses_print_its_code_and_exit_non_zero(service, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    refused = animegan(service, "submit", str(notes))
    assert refused.returncode == EXIT_REFUSED and refused.stdout == ""
    assert "415 unsupported_media_type:" in refused.stderr

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut off here")
    # Refused at once, or a job that fails with the decoder's code: either way, said so.
    failed = animegan(service, "submit", str(broken), "--wait")
    assert failed.returncode in (EXIT_FAILED, EXIT_REFUSED), failed.stderr
    assert "undecodable_image" in failed.stderr

    stranger = animegan(service, "list", key="not-a-key")
    assert stranger.returncode == EXIT_REFUSED and "401 unauthorized:" in stranger.stderr
    assert "not-a-key" not in stranger.stderr


def test_a_running_job_cancelled_reads_cancelled_and_its_follower_ends(service, tmp_path):
    photo = tmp_path / "large.jpg"
    photo.write_bytes(synthetic_jpeg(800, 600, seed=93_002))
    submitted = animegan(service, "submit", str(photo), "--size", str(LARGE))
    assert submitted.returncode == 0, submitted.stderr
    job_id, _ = submitted.stdout.split()
    follower = RunningAnimegan("jobs", "follow", job_id, url=service, key=KEY)
    try:
        follower.wait_for_line(f"job {job_id}: running")
        cancelled = animegan(service, "cancel", job_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.split() == [job_id, "cancelled"]
        code, stdout = follower.finish()
    finally:
        follower.stop()
    assert code == EXIT_FAILED and stdout.split() == [job_id, "cancelled"]
    shown = animegan(service, "show", job_id)
    assert shown.returncode == 0 and "state:     cancelled" in shown.stdout


# --- animegan stylize --server -----------------------------------------------------------


def stylize_remote(service: str, *args: str, key: str | None = KEY):
    return run_animegan("stylize", *args, "--server", service, url=service, key=key)


def test_stylize_server_a_photo_and_a_directory(service, tmp_path):
    photos = []
    for name, seed in (("a.jpg", 93_101), ("b.jpg", 93_102)):
        photos.append(tmp_path / name)
        photos[-1].write_bytes(synthetic_jpeg(160, 120, seed=seed))
    one = tmp_path / "one.webp"
    made = stylize_remote(service, str(photos[0]), "-o", str(one), "--size", "64")
    assert made.returncode == 0, made.stderr
    with Image.open(one) as picture:
        assert picture.format == "WEBP" and picture.size == (64, 48)

    out = tmp_path / "out"
    made = stylize_remote(service, *map(str, photos), "-o", str(out), "--size", "48")
    assert made.returncode == 0, made.stderr
    assert sorted(path.name for path in out.iterdir()) == ["a.png", "b.png"]

    refused = stylize_remote(service, str(photos[0]), "-o", str(one), key="not-a-key")
    assert refused.returncode == EXIT_FAILED and "401 unauthorized" in refused.stderr


def test_stylize_server_a_video_is_a_job_followed_to_its_end(service, tmp_path):
    clip = make_h264_aac_mp4(tmp_path / "clip.mp4", seconds=1.0, fps=8)
    target = tmp_path / "anime.mp4"
    made = stylize_remote(service, str(clip), "-o", str(target), "--size", "64")
    assert made.returncode == 0, made.stderr
    # The job's states on stderr as it goes (which of them it is seen in depends on speed).
    lines = [line for line in made.stderr.splitlines() if line.startswith("job ")]
    states = [line.split(": ", 1)[1].split()[0] for line in lines]
    assert states[-1] == "done" and set(states) <= {"queued", "running", "done"}
    with av.open(str(target)) as video:
        assert sum(1 for _ in video.decode(video=0)) == 8


def test_stylize_server_reads_stdin_and_writes_stdout(service):
    photo = synthetic_jpeg(120, 90, seed=93_103)
    made = subprocess.run(
        [*animegan_command(), "stylize", "-", "-o", "-", "--server", service, "--size", "32"],
        input=photo,
        capture_output=True,
        cwd=REPO,
        env=cli_env(service, KEY),
        timeout=120,
    )
    assert made.returncode == 0, made.stderr.decode()
    with Image.open(io.BytesIO(made.stdout)) as picture:
        assert picture.format == "PNG" and picture.size == (32, 24)
