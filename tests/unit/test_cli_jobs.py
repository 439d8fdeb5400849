"""``animegan jobs``: the commands over the client, against a scripted service."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from serve_app.cli import jobs as jobs_cli
from serve_app.cli.flags import flag_of
from serve_app.cli.main import build_parser, main
from serve_app.cli.output import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE
from serve_app.client import Client, ServiceError
from serve_app.client.wire import MAX_RETRY_WAIT_S, POLL_INTERVAL_S, RETRIES, parse_sse
from serve_app.options import option_fields
from tests.support.scripted_service import (
    JOB_ID,
    KEY,
    PICTURE,
    URL,
    BreaksOff,
    Service,
    answer,
    events,
    job,
    refusal,
    sse,
)


@pytest.fixture
def service(monkeypatch) -> Service:
    """The service the ``animegan jobs`` commands reach."""
    scripted = Service()
    monkeypatch.setattr(jobs_cli, "Client", scripted.client)
    monkeypatch.delenv("ANIMEGAN_URL", raising=False)
    monkeypatch.delenv("ANIMEGAN_API_KEY", raising=False)
    return scripted


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(PICTURE)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["jobs", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the client's pieces -----------------------------------------------------------------


def test_sse_skips_comments_joins_data_lines_and_drops_an_event_cut_off():
    lines = [
        ": keep-alive",
        "",
        "event: running",
        "data: {",
        'data:"a": 1}',
        "id: 7",
        "",
        "",
        "data: plain",
        "",
        "event: done",
        "data: {}",  # the stream ends before the blank line: not an event
    ]
    assert [(e.event, e.data) for e in parse_sse(lines)] == [
        ("running", '{\n"a": 1}'),
        ("message", "plain"),
    ]


def test_events_read_over_http_with_keep_alives_between_them():
    service = Service()
    path = f"/v1/jobs/{JOB_ID}/events"
    service.on("GET", path, events(job("queued"), job("running", progress=0.5), job("done")))
    with service.client() as client:
        states = [(j["state"], j["progress"]) for j in client.events(JOB_ID)]
    assert states == [("queued", 0.0), ("running", 0.5), ("done", 0.0)]
    assert service.requests[0].headers["accept"] == "text/event-stream"


def test_every_stylize_option_is_a_submit_flag_and_only_the_given_ones_are_sent(
    service, picture, capsys
):
    args = build_parser().parse_args(["jobs", "submit", str(picture)])
    assert all(getattr(args, option.name) is None for option in option_fields())
    with pytest.raises(SystemExit):
        main(["jobs", "submit", "--help"])
    help_text = capsys.readouterr().out
    assert all(flag_of(option) in help_text for option in option_fields())

    service.on("POST", "/v1/jobs", answer(202, job("queued")))
    assert main(["jobs", "submit", str(picture), "--url", URL]) == EXIT_OK
    assert dict(service.requests[-1].url.params) == {}  # the service's defaults apply


def test_submit_sends_the_raw_file_typed_with_options_as_query_and_the_key_as_bearer(
    service, picture, capsys, caplog
):
    service.on("POST", "/v1/jobs", answer(202, job("queued")))
    code, out, err = run(
        capsys,
        "submit",
        str(picture),
        "--url",
        URL,
        "--key",
        KEY,
        "--size",
        "64",
        "--format",
        "PNG",
        "--preserve-color",
        "--max-fps",
        "12.5",
        "--idempotency-key",
        "order-1",
        "--webhook",
        "http://hooks.test/x",
    )
    assert code == EXIT_OK and out == f"{JOB_ID} queued\n"
    (sent,) = service.requests
    assert sent.method == "POST" and str(sent.url).startswith(f"{URL}/v1/jobs?")
    assert sent.headers["content-type"] == "image/png" and sent.content == PICTURE
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["idempotency-key"] == "order-1"
    assert dict(sent.url.params) == {
        "size": "64",
        "format": "png",
        "preserve_color": "true",
        "max_fps": "12.5",
        "webhook": "http://hooks.test/x",
    }
    assert KEY not in out + err + caplog.text


def test_submit_json_and_the_url_and_key_from_the_environment(
    service, picture, capsys, monkeypatch
):
    monkeypatch.setenv("ANIMEGAN_URL", "http://from-env.test:9/")
    monkeypatch.setenv("ANIMEGAN_API_KEY", KEY)
    service.on("POST", "/v1/jobs", answer(202, job("queued")))
    code, out, _ = run(capsys, "submit", str(picture), "--json")
    assert code == EXIT_OK and json.loads(out) == job("queued")
    (sent,) = service.requests
    assert sent.url.host == "from-env.test" and sent.headers["authorization"] == f"Bearer {KEY}"


def test_a_bad_option_is_a_usage_error_before_any_request(service, picture, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["jobs", "submit", str(picture), "--strength", "2"])
    assert exited.value.code == EXIT_USAGE and "must be 0..1" in capsys.readouterr().err
    assert service.requests == []


@pytest.mark.parametrize(
    ("reply", "code", "said"),
    [
        (
            refusal(415, "unsupported_media_type", "send image/*"),
            EXIT_REFUSED,
            "415 unsupported_media_type: send image/*",
        ),
        (
            refusal(422, "invalid_size", "size must be 16..256 px"),
            EXIT_REFUSED,
            "422 invalid_size: size must be 16..256 px",
        ),
        (refusal(500, "internal_error", "a bug"), EXIT_UNAVAILABLE, "500 internal_error: a bug"),
        (
            lambda request: httpx.Response(502, text="<h1>Bad Gateway</h1>"),
            EXIT_UNAVAILABLE,
            "502 http_502: <h1>Bad Gateway</h1>",
        ),
    ],
)
def test_the_services_error_is_printed_and_4xx_exits_apart_from_5xx(
    service, picture, capsys, reply, code, said
):
    service.on("POST", "/v1/jobs", reply)
    exit_code, out, err = run(capsys, "submit", str(picture), "--url", URL)
    assert exit_code == code and out == ""
    assert err == f"animegan: error: {said}\n"


def test_no_connection_and_an_unreadable_file_have_their_own_exit_codes(
    monkeypatch, picture, capsys
):
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    def client(url, key, **settings):
        return Client(url, key, transport=httpx.MockTransport(refuse), **settings)

    monkeypatch.setattr(jobs_cli, "Client", client)
    code, _, err = run(capsys, "show", JOB_ID, "--url", URL)
    assert code == EXIT_UNAVAILABLE and "unreachable" in err and URL in err
    code, _, err = run(capsys, "submit", str(picture.with_name("missing.png")), "--url", URL)
    assert code == EXIT_USAGE and "missing.png" in err


def test_a_busy_service_is_asked_again_after_retry_after(service, picture, capsys, caplog):
    busy = refusal(503, "overloaded", "too many jobs", {"Retry-After": "2"})
    service.on("POST", "/v1/jobs", busy, busy, answer(202, job("queued")))
    code, out, _ = run(capsys, "submit", str(picture), "--url", URL)
    assert code == EXIT_OK and out == f"{JOB_ID} queued\n"
    assert service.sleeps == [2, 2]
    assert [r.content for r in service.requests] == [PICTURE] * 3  # the whole file each time
    assert "overloaded" in caplog.text


def test_retries_are_bounded_and_a_503_without_retry_after_is_not_retried(service, picture, capsys):
    service.on("POST", "/v1/jobs", refusal(503, "overloaded", "busy", {"Retry-After": "3600"}))
    code, _, err = run(capsys, "submit", str(picture), "--url", URL)
    assert code == EXIT_UNAVAILABLE and "503 overloaded: busy" in err
    assert service.sleeps == [MAX_RETRY_WAIT_S] * RETRIES
    assert len(service.requests) == RETRIES + 1

    service.requests.clear()
    service.on("POST", "/v1/jobs", refusal(503, "store_error", "the store is away"))
    assert run(capsys, "submit", str(picture), "--url", URL)[0] == EXIT_UNAVAILABLE
    assert len(service.requests) == 1


def test_list_pages_through_next_cursor_with_all(service, capsys):
    ids = [f"{n:032x}" for n in range(5)]
    pages = {
        None: ([job("done", i) for i in ids[:2]], "1-" + ids[1]),
        "1-" + ids[1]: ([job("done", i) for i in ids[2:4]], "2-" + ids[3]),
        "2-" + ids[3]: ([job("done", ids[4])], None),
    }

    def page(request):
        jobs, cursor = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"jobs": jobs, "next_cursor": cursor})

    service.on("GET", "/v1/jobs", page)
    code, out, err = run(capsys, "list", "--url", URL, "--state", "done", "--limit", "2", "--all")
    assert code == EXIT_OK and err == ""
    rows = out.splitlines()
    assert rows[0].split() == ["ID", "STATE", "KIND", "PROGRESS", "CREATED"]
    assert [row.split()[0] for row in rows[1:]] == ids
    assert [dict(r.url.params) for r in service.requests] == [
        {"state": "done", "limit": "2"},
        {"state": "done", "limit": "2", "cursor": "1-" + ids[1]},
        {"state": "done", "limit": "2", "cursor": "2-" + ids[3]},
    ]

    code, out, err = run(capsys, "list", "--url", URL)  # the first page, and where it ended
    assert code == EXIT_OK and len(out.splitlines()) == 3 and f"--cursor 1-{ids[1]}" in err
    code, out, err = run(capsys, "list", "--url", URL, "--json")
    assert code == EXIT_OK and err == ""
    listed = json.loads(out)
    assert [j["id"] for j in listed["jobs"]] == ids[:2] and listed["next_cursor"] == "1-" + ids[1]


def test_listing_on_an_open_service_reads_the_services_refusal(service, capsys):
    service.on("GET", "/v1/jobs", refusal(403, "owner_required", "listing jobs needs an API key"))
    code, out, err = run(capsys, "list", "--url", URL)
    assert code == EXIT_REFUSED and out == ""
    assert "403 owner_required: listing jobs needs an API key" in err


def test_submit_wait_follows_the_events_then_downloads_the_result(
    service, picture, tmp_path, capsys
):
    path = f"/v1/jobs/{JOB_ID}"
    service.on("POST", "/v1/jobs", answer(202, job("queued")))
    done = job("done", result={"media_type": "image/png", "width": 64, "height": 48,
                               "bytes": 9, "cache": "miss"})  # fmt: skip
    service.on("GET", f"{path}/events", events(job("queued"), job("running", progress=0.5), done))
    service.on(
        "GET",
        f"{path}/result",
        lambda r: httpx.Response(200, content=b"the bytes", headers={"content-type": "image/png"}),
    )
    target = tmp_path / "out" / "anime.png"
    code, out, err = run(capsys, "submit", str(picture), "--url", URL, "--wait", "-o", str(target))
    assert code == EXIT_OK and out == f"{JOB_ID} done\n"
    assert target.read_bytes() == b"the bytes"
    assert list(target.parent.iterdir()) == [target]
    assert f"job {JOB_ID}: running" in err and "running 50%" in err and str(target) in err
    assert service.sleeps == []  # the stream carried it: no polling


def test_a_broken_event_stream_falls_back_to_polling(service, capsys, caplog):
    path = f"/v1/jobs/{JOB_ID}"
    first = sse(job("running", progress=0.25))
    service.on("GET", f"{path}/events", lambda r: httpx.Response(200, stream=BreaksOff(first)))
    service.on("GET", path, answer(200, job("running", progress=0.25)), answer(200, job("done")))
    code, out, err = run(capsys, "follow", JOB_ID, "--url", URL)
    assert code == EXIT_OK and out == f"{JOB_ID} done\n"
    assert f"job {JOB_ID}: running" in err and f"job {JOB_ID}: done" in err
    assert "the event stream broke" in caplog.text and "connection_lost" in caplog.text
    assert service.sleeps == [POLL_INTERVAL_S]
    assert len(service.sent("GET", path)) == 2


def test_a_stream_that_ends_early_is_polled_and_a_refusal_is_not(service):
    path = f"/v1/jobs/{JOB_ID}"
    service.on("GET", f"{path}/events", events(job("running")))
    service.on("GET", path, answer(200, job("failed", error={"code": "no_face", "message": "x"})))
    with service.client() as client:
        assert [j["state"] for j in client.follow(JOB_ID)] == ["running", "failed"]

    service.on("GET", f"{path}/events", refusal(404, "unknown_job", "no such job"))
    with service.client() as client, pytest.raises(ServiceError) as raised:
        list(client.follow(JOB_ID))
    assert raised.value.status == 404 and raised.value.code == "unknown_job"
    assert len(service.sent("GET", path)) == 1  # the refusal was not polled


def test_a_job_that_fails_is_cancelled_or_is_late_exits_1(service, picture, capsys):
    path = f"/v1/jobs/{JOB_ID}"
    service.on("POST", "/v1/jobs", answer(202, job("queued")))
    failed = job("failed", error={"code": "no_face", "message": "no face found"})
    service.on("GET", f"{path}/events", events(job("running"), failed))
    code, out, err = run(capsys, "submit", str(picture), "--url", URL, "--wait")
    assert code == EXIT_FAILED and out == f"{JOB_ID} failed\n"
    assert "no_face: no face found" in err

    service.on("GET", f"{path}/events", events(job("cancelled")))
    code, out, err = run(capsys, "follow", JOB_ID, "--url", URL)
    assert code == EXIT_FAILED and "was cancelled" in err

    # --wait 3: the stream ends early, the job stays running, polling stops at the deadline.
    service.on("GET", f"{path}/events", events(job("running")))
    service.on("GET", path, answer(200, job("running")))
    code, out, err = run(capsys, "submit", str(picture), "--url", URL, "--wait", "3")
    assert code == EXIT_FAILED and out == f"{JOB_ID} running\n"
    assert "still running after 3 s" in err and sum(service.sleeps) == 3


def test_show_and_cancel_print_the_job(service, capsys):
    path = f"/v1/jobs/{JOB_ID}"
    service.on("GET", path, answer(200, job("running", progress=0.4, frames_total=10)))
    service.on("DELETE", path, answer(200, job("cancelled")))
    code, out, _ = run(capsys, "show", JOB_ID, "--url", URL)
    assert code == EXIT_OK
    assert "state:     running" in out and "40% (frames 0/10)" in out
    code, out, _ = run(capsys, "show", JOB_ID, "--url", URL, "--json")
    assert json.loads(out)["progress"] == 0.4
    code, out, _ = run(capsys, "cancel", JOB_ID, "--url", URL)
    assert code == EXIT_OK and out == f"{JOB_ID} cancelled\n"


def test_a_result_is_written_whole_or_not_at_all(service, tmp_path, capsys):
    path = f"/v1/jobs/{JOB_ID}/result"
    target = tmp_path / "anime.png"
    target.write_bytes(b"an older file")
    service.on("GET", path, lambda r: httpx.Response(200, stream=BreaksOff(b"half of it")))
    code, out, err = run(capsys, "result", JOB_ID, "-o", str(target), "--url", URL)
    assert code == EXIT_UNAVAILABLE and "connection_lost" in err
    assert target.read_bytes() == b"an older file" and list(tmp_path.iterdir()) == [target]

    service.on("GET", path, refusal(409, "job_not_done", "the job is running"))
    code, _, err = run(capsys, "result", JOB_ID, "-o", str(target), "--url", URL)
    assert code == EXIT_REFUSED and "409 job_not_done" in err
    assert list(tmp_path.iterdir()) == [target]

    service.on("GET", path, lambda r: httpx.Response(200, content=b"new bytes"))
    code, out, _ = run(capsys, "result", JOB_ID, "-o", str(target), "--url", URL)
    assert code == EXIT_OK and out == f"{target}\n" and target.read_bytes() == b"new bytes"


def test_a_download_that_would_replace_the_upload_is_refused(service, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(PICTURE)
    code, _, err = run(capsys, "submit", str(clip), "--url", URL, "-o", str(clip))
    assert code == EXIT_USAGE and "is the input" in err and service.requests == []
