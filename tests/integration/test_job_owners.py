"""Jobs for many people: owned by their API key, listed, idempotent, waited for, followed
over a WebSocket, announced by signed webhooks, expired — over real HTTP on real Ray."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.jobs import wait_done
from tests.support.pictures import synthetic_jpeg
from tests.support.serve import app_args, deploy, ingress_deployment, wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY_A, KEY_B = "owner-key-a", "owner-key-b"
SECRET = "whsec_" + base64.b64encode(b"a test secret of 24 bytes").decode()
TTL_S = 3  # the expiry test's own deploy
LARGE = 512  # tiled in this deploy: a job that runs for a while


class Receiver:
    """A webhook receiver on loopback: keeps what arrives; answers 500 to the first
    ``failures`` deliveries of each event."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.deliveries: list[tuple[dict, bytes]] = []
        self._seen: dict[str, int] = {}
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                event = json.loads(body)["type"]
                with receiver.arrived:
                    tries = receiver._seen.get(event, 0) + 1
                    receiver._seen[event] = tries
                    receiver.deliveries.append((dict(self.headers), body))
                    receiver.arrived.notify_all()
                self.send_response(500 if tries <= receiver.failures else 204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 60) -> list[tuple[dict, bytes]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.deliveries) >= count, timeout_s)
            return list(self.deliveries)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver(failures=1)
    yield receiver
    receiver.close()


def owned_args(store, receiver: Receiver, **jobs) -> dict:
    return app_args(
        limits={"max_size": LARGE, "max_sync_size": 256, "max_bytes": 2 * 2**20},
        tiling={"max_whole_pixels": 256 * 256, "tile_size": 128, "overlap": 32},
        jobs={
            "store_url": str(store),
            "max_queued": 200,
            "max_active_per_key": 200,  # the listing test's hundred jobs of one key
            "webhooks": {"allow": [receiver.url], "first_retry_s": 0.2},
            **jobs,
        },
    )


def deploy_owned(args: dict, base_url: str) -> None:
    env = {"ANIMEGAN_API_KEYS": f"{KEY_A},{KEY_B}", "ANIMEGAN_WEBHOOK_SECRET": SECRET}
    deploy(
        args,
        ingress=ingress_deployment(
            ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}}
        ),
    )
    wait_healthy(base_url)


@pytest.fixture(scope="module")
def owned(default_app, receiver, tmp_path_factory):
    deploy_owned(owned_args(tmp_path_factory.mktemp("owned-jobs"), receiver), default_app)
    yield default_app


def client_for(base_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=120, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def alice(owned):
    with client_for(owned, KEY_A) as client:
        yield client


@pytest.fixture
def bob(owned):
    with client_for(owned, KEY_B) as client:
        yield client


def submit(client: httpx.Client, data: bytes, headers: dict | None = None, **params):
    files = {"image": ("p.jpg", data, "image/jpeg")}
    return client.post("/v1/jobs", params=params, files=files, headers=headers)


def test_two_keys_and_the_same_bytes_make_two_jobs_neither_can_reach_the_others(alice, bob):
    photo = synthetic_jpeg(seed=71_001)
    mine = submit(alice, photo, size=64)
    assert mine.status_code == 202
    mine_id = mine.json()["id"]
    assert wait_done(alice, mine_id)["state"] == "done"
    # The same key again: its own job back.
    again = submit(alice, photo, size=64)
    assert again.status_code == 200 and again.json()["id"] == mine_id

    started = time.monotonic()
    theirs = submit(bob, photo, headers={"Prefer": "wait=30"}, size=64)
    seconds = time.monotonic() - started
    print(f"the other owner's job of the same bytes answered in {seconds * 1e3:.0f} ms")
    assert theirs.status_code == 200 and theirs.json()["id"] != mine_id
    assert theirs.json()["state"] == "done" and theirs.json()["result"]["cache"] == "hit"
    theirs_id = theirs.json()["id"]

    for owner, other_id in ((bob, mine_id), (alice, theirs_id)):
        for method, path in (
            ("GET", f"/v1/jobs/{other_id}"),
            ("GET", f"/v1/jobs/{other_id}/events"),
            ("GET", f"/v1/jobs/{other_id}/result"),
            ("DELETE", f"/v1/jobs/{other_id}"),
        ):
            response = owner.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "unknown_job"
    assert alice.get(f"/v1/jobs/{mine_id}/result").status_code == 200
    assert bob.get(f"/v1/jobs/{theirs_id}/result").status_code == 200


def test_a_cancel_leaves_another_owners_job_of_the_same_bytes_running(alice, bob):
    photo = synthetic_jpeg(seed=71_002, width=800, height=600)
    mine = submit(alice, photo, size=LARGE).json()["id"]
    theirs = submit(bob, photo, size=LARGE).json()["id"]
    assert alice.delete(f"/v1/jobs/{mine}").json()["state"] == "cancelled"
    assert wait_done(bob, theirs)["state"] == "done"
    assert alice.get(f"/v1/jobs/{mine}").json()["state"] == "cancelled"


def test_listing_pages_through_over_a_hundred_jobs_newest_first(alice, bob):
    made = []
    for index in range(105):
        response = submit(alice, synthetic_jpeg(seed=72_000 + index, width=32, height=32), size=16)
        assert response.status_code == 202, response.text
        made.append(response.json()["id"])
    submit(bob, synthetic_jpeg(seed=72_999, width=32, height=32), size=16)
    listed, cursor, pages = [], None, 0
    while True:
        params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        page = alice.get("/v1/jobs", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        listed += [job["id"] for job in body["jobs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages >= 3
    assert listed[: len(made)] == list(reversed(made))  # the newest 105, newest first
    assert len(listed) == len(set(listed))
    for job_id in made:
        wait_done(alice, job_id)
    done = alice.get("/v1/jobs", params={"state": "done", "limit": 100}).json()["jobs"]
    assert {job["state"] for job in done} == {"done"} and len(done) == 100
    bad = alice.get("/v1/jobs", params={"state": "finished"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameters"


def test_an_idempotency_key_returns_the_same_job_and_refuses_another_upload(alice, bob):
    photo = synthetic_jpeg(seed=71_003)
    key = {"Idempotency-Key": "order-1234"}
    first = submit(alice, photo, headers=key, size=64)
    again = submit(alice, photo, headers=key, size=64)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = submit(alice, synthetic_jpeg(seed=71_004), headers=key, size=64)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # Another owner's key space is its own.
    theirs = submit(bob, photo, headers=key, size=64)
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]


def test_prefer_wait_answers_with_the_finished_job_or_the_usual_202(alice):
    quick = submit(alice, synthetic_jpeg(seed=71_005), headers={"Prefer": "wait=60"}, size=64)
    assert quick.status_code == 200 and quick.json()["state"] == "done"
    assert quick.headers["preference-applied"] == "wait=60"
    photo = synthetic_jpeg(seed=71_006, width=800, height=600)
    slow = submit(alice, photo, headers={"Prefer": "wait=1"}, size=LARGE)
    assert slow.status_code == 202 and slow.json()["state"] in ("queued", "running")
    assert slow.headers["location"] == f"/v1/jobs/{slow.json()['id']}"
    wait_done(alice, slow.json()["id"])


def test_events_over_a_websocket_with_the_key_as_a_subprotocol(owned, alice):
    photo = synthetic_jpeg(seed=71_007, width=800, height=600)
    job_id = submit(alice, photo, size=LARGE).json()["id"]
    url = owned.replace("http://", "ws://") + f"/v1/jobs/{job_id}/events"
    states = []
    protocols = ["animegan.jobs.v1", f"bearer.{KEY_A}"]
    with connect(url, subprotocols=protocols, open_timeout=30) as socket:
        assert socket.subprotocol == "animegan.jobs.v1"
        for message in socket:
            event = json.loads(message)
            assert event["event"] == event["data"]["state"]
            states.append(event["event"])
    assert states[-1] == "done" and "running" in states
    others = ["animegan.jobs.v1", f"bearer.{KEY_B}"]
    with connect(url, subprotocols=others) as socket, pytest.raises(ConnectionClosed) as closed:
        socket.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


def verify_standard_webhook(headers: dict, body: bytes) -> bool:
    """The Standard Webhooks check, written from its specification."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    lower = {name.lower(): value for name, value in headers.items()}
    signed = f"{lower['webhook-id']}.{lower['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [
        s.split(",", 1)[1] for s in lower["webhook-signature"].split() if s.startswith("v1,")
    ]
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def test_webhooks_are_signed_retried_and_allow_listed(alice, receiver):
    refused = submit(alice, b"x", size=64, webhook="http://169.254.169.254/latest/")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "webhook_refused"

    job = submit(
        alice,
        synthetic_jpeg(seed=71_008),
        size=64,
        webhook=receiver.url + "done",
        webhook_events="running,done",
    ).json()
    assert job["webhook"]["events"] == ["running", "done"]
    deliveries = receiver.wait_for(4)  # each event: a 500 first, then accepted
    events = [json.loads(body)["type"] for _, body in deliveries]
    assert sorted(events) == ["job.done", "job.done", "job.running", "job.running"]
    for headers, body in deliveries:
        assert verify_standard_webhook(headers, body)
        assert abs(time.time() - int(headers["webhook-timestamp"])) < 300
    done = [json.loads(body) for _, body in deliveries if json.loads(body)["type"] == "job.done"]
    assert done[-1]["data"]["id"] == job["id"] and done[-1]["data"]["state"] == "done"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = alice.get(f"/v1/jobs/{job['id']}").json()["webhook"]["deliveries"]
        if len(status) == 2 and all(d["status"] == "delivered" for d in status):
            break
        time.sleep(0.2)
    assert {(d["event"], d["status"], d["attempts"]) for d in status} == {
        ("running", "delivered", 2),
        ("done", "delivered", 2),
    }


def test_an_expired_job_answers_404_with_its_own_code_to_its_owner(
    owned, alice, bob, receiver, tmp_path
):
    deploy_owned(owned_args(tmp_path, receiver, ttl_s=TTL_S, sweep_interval_s=0.5), owned)
    job_id = submit(alice, synthetic_jpeg(seed=71_009), size=64).json()["id"]
    ended_at = wait_done(alice, job_id)["finished_at"]
    deadline = time.monotonic() + TTL_S + 30
    while time.monotonic() < deadline:
        response = alice.get(f"/v1/jobs/{job_id}")
        if response.status_code == 404:
            break
        time.sleep(0.5)
    assert response.status_code == 404 and response.json()["error"]["code"] == "job_expired"
    assert time.time() >= ended_at + TTL_S
    others = bob.get(f"/v1/jobs/{job_id}")
    assert others.status_code == 404 and others.json()["error"]["code"] == "unknown_job"


def test_api_keys_take_turns_at_the_places_and_each_has_a_bound(
    owned, alice, bob, receiver, tmp_path
):
    jobs = {"max_running": 1, "max_active_per_key": 2}
    deploy_owned(owned_args(tmp_path, receiver, **jobs), owned)
    # Alice's first job runs a while (tiled), her second waits behind it.
    slow = submit(alice, synthetic_jpeg(seed=71_100, width=640, height=480), size=LARGE)
    assert slow.status_code == 202, slow.text
    first = slow.json()["id"]
    while alice.get(f"/v1/jobs/{first}").json()["state"] == "queued":
        time.sleep(0.1)
    small = [synthetic_jpeg(seed=71_101 + n, width=32, height=32) for n in range(3)]
    queued = submit(alice, small[0], size=16)
    assert queued.status_code == 202, queued.text
    refused = submit(alice, small[1], size=16)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
    assert refused.json()["error"]["code"] == "too_many_jobs"
    again = submit(alice, small[0], size=16)  # a resubmission finds her job
    assert again.status_code in (200, 202) and again.json()["id"] == queued.json()["id"]
    bobs = submit(bob, small[2], size=16)  # another key's bound is its own
    assert bobs.status_code == 202, bobs.text
    assert alice.delete(f"/v1/jobs/{first}").status_code == 200
    hers = wait_done(alice, queued.json()["id"])
    his = wait_done(bob, bobs.json()["id"])
    assert hers["state"] == his["state"] == "done"
    # The freed place went to Bob, whose job came after hers but who had had no turn.
    assert his["started_at"] < hers["started_at"]
