"""``animegan stylize --server``: the command's remote mode against a scripted service."""

from __future__ import annotations

import io
import sys

import httpx
import pytest

from serve_app.cli import remote
from serve_app.cli.main import main
from serve_app.cli.output import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from serve_app.client import Client
from tests.support.scripted_service import (
    JOB_ID,
    PICTURE,
    URL,
    Service,
    answer,
    events,
    job,
    refusal,
)

STYLIZED = b"stylized picture bytes"
VIDEO = b"\x00\x00\x00\x18ftypmp42 stylized video"


def picture_answer(media_type: str = "image/png"):
    return lambda request: httpx.Response(
        200, content=STYLIZED, headers={"content-type": media_type, "x-cache": "miss"}
    )


@pytest.fixture
def service(monkeypatch) -> Service:
    scripted = Service()
    monkeypatch.setattr(remote, "Client", scripted.client)
    monkeypatch.delenv("ANIMEGAN_API_KEY", raising=False)
    return scripted


@pytest.fixture
def photos(tmp_path):
    paths = [tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "other" / "a.jpg"]
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(PICTURE)
    return paths


def stylize(*argv: str) -> int:
    return main(["stylize", *argv, "--server", URL])


def test_one_photo_sends_only_the_flags_given_and_the_outputs_format(service, photos, tmp_path):
    service.on("POST", "/v1/stylize", picture_answer("image/webp"))
    target = tmp_path / "out.webp"
    assert stylize(str(photos[0]), "-o", str(target), "--size", "64", "--preserve-color") == 0
    (sent,) = service.requests
    assert dict(sent.url.params) == {"size": "64", "preserve_color": "true", "format": "webp"}
    assert sent.headers["content-type"] == "image/jpeg" and sent.content == PICTURE
    assert target.read_bytes() == STYLIZED


def test_several_inputs_into_a_directory_each_failing_alone(service, photos, tmp_path, capsys):
    refused = refusal(400, "undecodable_image", "not a picture")
    service.on("POST", "/v1/stylize", picture_answer(), refused, picture_answer())
    out = tmp_path / "out"
    code = stylize(*map(str, photos), "-o", str(out))
    assert code == EXIT_FAILED
    assert sorted(path.name for path in out.iterdir()) == ["a-1.png", "a.png"]
    err = capsys.readouterr().err
    assert f"{photos[1]}: 400 undecodable_image: not a picture" in err
    assert "1 of 3 input(s) failed" in err


def test_a_video_is_made_as_a_job_followed_and_downloaded(service, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"a video")
    path = f"/v1/jobs/{JOB_ID}"
    service.on("POST", "/v1/jobs", answer(202, job("queued")))
    result = {
        "media_type": "video/mp4",
        "bytes": len(VIDEO),
        "width": 64,
        "height": 36,
        "cache": "miss",
    }
    done = job("done", progress=1.0, frames_done=6, frames_total=6, result=result)
    service.on("GET", f"{path}/events", events(job("running", frames_total=6), done))
    service.on(
        "GET",
        f"{path}/result",
        lambda request: httpx.Response(200, content=VIDEO, headers={"content-type": "video/mp4"}),
    )
    target = tmp_path / "anime.mp4"
    assert stylize(str(clip), "-o", str(target), "--style", "alpha") == EXIT_OK
    (submitted,) = service.requests[:1]  # a video goes to the jobs at once
    assert submitted.url.path == "/v1/jobs" and submitted.headers["content-type"] == "video/mp4"
    assert dict(submitted.url.params) == {"style": "alpha"}
    assert target.read_bytes() == VIDEO


def test_a_picture_the_service_makes_as_a_job_is_one(service, photos, tmp_path):
    path = f"/v1/jobs/{JOB_ID}"
    service.on("POST", "/v1/stylize", refusal(422, "use_jobs", "size 4096 is above 2048"))
    service.on("POST", "/v1/jobs", answer(202, job("queued")))
    result = {"media_type": "image/png", "bytes": 3, "width": 9, "height": 9, "cache": "miss"}
    service.on("GET", f"{path}/events", events(job("done", progress=1.0, result=result)))
    service.on("GET", f"{path}/result", picture_answer())
    target = tmp_path / "print.png"
    assert stylize(str(photos[0]), "-o", str(target), "--size", "4096") == EXIT_OK
    assert [r.url.path for r in service.requests[:2]] == ["/v1/stylize", "/v1/jobs"]
    assert target.read_bytes() == STYLIZED


def test_stdin_to_stdout(service, monkeypatch, capsysbinary):
    service.on("POST", "/v1/stylize", picture_answer())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(PICTURE)))
    assert stylize("-", "-o", "-", "--format", "png") == EXIT_OK
    assert capsysbinary.readouterr().out == STYLIZED
    (sent,) = service.requests
    assert sent.content == PICTURE


def test_unusable_requests_are_usage_errors(service, photos, capsys):
    assert stylize(*map(str, photos[:2]), "-o", "-") == EXIT_USAGE
    assert "directory" in capsys.readouterr().err
    assert service.requests == []


def test_an_unreachable_service_exits_4(monkeypatch, photos, tmp_path, capsys):
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(
        remote, "Client", lambda url, key: Client(url, key, transport=httpx.MockTransport(refuse))
    )
    assert stylize(str(photos[0]), "-o", str(tmp_path / "x.png")) == EXIT_UNAVAILABLE
    assert "unreachable" in capsys.readouterr().err


def test_version_and_the_exit_codes_in_help(capsys):
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("animegan ")
    with pytest.raises(SystemExit):
        main(["stylize", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 success; 1 some input" in help_text and "--server URL" in help_text


def test_no_output_replaces_an_input(service, tmp_path, capsys):
    service.on("POST", "/v1/stylize", picture_answer())
    inputs = [tmp_path / "a.jpg", tmp_path / "a.png"]
    for path in inputs:
        path.write_bytes(PICTURE)
    assert stylize(str(inputs[1]), "-o", str(inputs[1])) == EXIT_USAGE
    assert "is the input" in capsys.readouterr().err and service.requests == []
    assert stylize(*map(str, inputs), "-o", str(tmp_path)) == EXIT_OK
    assert [path.read_bytes() for path in inputs] == [PICTURE, PICTURE]
    assert (tmp_path / "a-1.png").read_bytes() == (tmp_path / "a-2.png").read_bytes() == STYLIZED
