"""Jobs on two nodes: a head and a worker (`ray start` process trees on this machine), an
ingress replica on each (`max_replicas_per_node: 1`, so one per node) behind its node's
own Serve proxy; the job records in a real Redis (Debian's redis-server on loopback,
append-only file on, started, stopped and started again by these tests); uploads and
results in a folder both nodes reach. Both "nodes" run on this one machine, so a plain
local folder is shared by them, as object storage (or a shared volume) is on a real
cluster. The stores' URLs reach the replicas the way the shipped cluster setup gives them:
the ``ANIMEGAN_JOBS_RECORDS_URL``/``ANIMEGAN_JOBS_STORE_URL`` environment variables.

In order (each test uses what the ones before left; the last one kills the worker):
Redis down when the app starts, then up; a job submitted through one node's proxy read,
followed, fetched, listed and cancelled through the other's; a key's bound of active jobs
counted on both nodes together, and its live streams; a Redis restart mid-job; the node
running a job killed mid-way.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.media import frame_count, make_h264_aac_mp4
from tests.support.pictures import synthetic_jpeg
from tests.support.ray_cluster import (
    HOST,
    LocalCluster,
    free_ports,
    serve_config,
    wait_for,
    write_config,
)
from tests.support.redis_server import RedisServer, redis_available
from tests.support.serve import TEST_RUNTIME

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "jobs-on-nodes-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SIZE = 64
WORKER = "jobs-worker"
LIVE_PROTOCOLS = ["animegan.live.v1", f"bearer.{KEY}"]
ENDED = ("done", "failed", "cancelled")
MEDIA = {
    "max_bytes": 8 * 2**20,
    "max_duration_s": 40,
    "max_frames": 600,
    "max_frame_pixels": 320 * 240,
    "frames_in_flight": 8,
    "frame_batch": 4,
}


@dataclass
class JobsCluster:
    cluster: LocalCluster
    redis: RedisServer
    store: Path
    clip: Path
    head: httpx.Client  # through the head's proxy (node A)
    worker: httpx.Client  # through the worker's proxy (node B)
    worker_url: str
    worker_node: object
    finished: dict | None = None  # a job finished before the Redis restart

    def record(self, job_id: str) -> dict:
        """The job as stored (runner and lease included), read from Redis itself."""
        client = redis.Redis.from_url(self.redis.url)
        try:
            return json.loads(client.get(f"animegan:jobs:job:{job_id}"))
        finally:
            client.close()


@pytest.fixture(scope="module")
def jobs_cluster(cluster: LocalCluster, tmp_path_factory) -> Iterator[JobsCluster]:
    if not redis_available():
        pytest.fail("redis-server is not installed (Debian package redis-server)")
    records = RedisServer()  # not started yet: the app comes up without it
    folder = tmp_path_factory.mktemp("jobs-on-nodes")
    store = folder / "shared-job-store"
    clip = make_h264_aac_mp4(folder / "clip.mp4", seconds=20.0, fps=12)  # 240 frames
    (worker_port,) = free_ports(1)
    # No CPU on the worker: the Stylizer (1 CPU) runs on the head; only the worker's
    # proxy and ingress replica (0 CPU each) run there, so killing it loses no model.
    worker = cluster.add_worker(
        WORKER, num_cpus=0, env={"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(worker_port)}
    )
    worker_url = f"http://{HOST}:{worker_port}"
    args = {
        "styles": [{"name": "alpha", "weights": "random"}],
        "runtime": TEST_RUNTIME,
        "default_size": SIZE,
        "limits": {"max_size": 256},
        "request_timeout_s": 60,
        "cache": {"name": "cluster-jobs", "local_max_bytes": 0, "timeout_s": 2.0},
        # The key's bound, low enough to reach (no test before that one holds 3 at once).
        "jobs": {"heartbeat_s": 0.5, "stale_after_s": 3, "max_active_per_key": 3},
        "media": MEDIA,
        "live": {"max_streams_per_key": 2},
    }
    stylizer = {
        "num_replicas": 1,
        "max_ongoing_requests": 8,
        "max_queued_requests": 256,
        "ray_actor_options": {"num_cpus": 1},
        "user_config": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01},
    }
    ingress = {"num_replicas": 2, "max_replicas_per_node": 1}
    environment = {
        "ANIMEGAN_API_KEYS": KEY,
        "ANIMEGAN_JOBS_RECORDS_URL": records.url,
        "ANIMEGAN_JOBS_STORE_URL": str(store),
    }
    config = serve_config(
        cluster.serve_port,
        args,
        stylizer,
        ingress=ingress,
        runtime_env={"env_vars": environment},
    )
    head = httpx.Client(base_url=cluster.base_url, headers=AUTH, timeout=90)
    through_worker = httpx.Client(base_url=worker_url, headers=AUTH, timeout=90)
    try:
        cluster.serve_deploy(write_config(folder / "jobs-on-nodes.yaml", config))
        cluster.wait_app_running(timeout_s=240)
        nodes = {r["node_id"] for r in cluster.replicas("Ingress")}
        assert len(nodes) == 2, "one ingress replica on each node"
        for client in (head, through_worker):
            wait_for(lambda c=client: c.get("/healthz").status_code == 200, 60, "the proxies")
        yield JobsCluster(cluster, records, store, clip, head, through_worker, worker_url, worker)
    finally:
        head.close()
        through_worker.close()
        if cluster.nodes and cluster.nodes[0].alive:
            cluster.remove_apps()
        if worker.alive:
            worker.kill()
        records.close()


def post_still(client: httpx.Client, seed: int) -> httpx.Response:
    photo = synthetic_jpeg(seed=seed)
    files = {"image": ("p.jpg", photo, "image/jpeg")}
    return client.post("/v1/jobs", params={"size": SIZE}, files=files)


def post_video(client: httpx.Client, clip: Path, **params) -> dict:
    response = client.post(
        "/v1/jobs",
        params={"size": SIZE, **params},
        content=clip.read_bytes(),
        headers={"content-type": "video/mp4"},
    )
    assert response.status_code == 202, response.text
    return response.json()


def job(client: httpx.Client, job_id: str) -> dict:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_ended(client: httpx.Client, job_id: str, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = job(client, job_id)
        if body["state"] in ENDED:
            return body
        assert time.monotonic() < deadline, json.dumps(body)  # whole: pytest cuts a dict
        time.sleep(0.2)


def wait_frames(client: httpx.Client, job_id: str, frames: int = 1, timeout_s=120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = job(client, job_id)
        if body["frames_done"] >= frames:
            return body
        assert body["state"] in ("queued", "running"), body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


class Follower(threading.Thread):
    """A client following a job's events (SSE) to its end, in the background."""

    def __init__(self, base_url: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.job_id = base_url, job_id
        self.events: list[dict] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        url = f"{self.base_url}/v1/jobs/{self.job_id}/events"
        try:
            with httpx.stream("GET", url, headers=AUTH, timeout=120) as response:
                assert response.status_code == 200, response.read()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line.removeprefix("data: ")))
        except BaseException as error:  # reported by the test
            self.error = error

    def states(self, timeout_s: float = 240) -> list[str]:
        self.join(timeout_s)
        assert not self.is_alive(), "the event stream did not end"
        assert self.error is None, self.error
        return [event["state"] for event in self.events]


def logged(cluster: LocalCluster, node: str, *texts: str) -> bool:
    """Whether one line of the node's Ray logs (its replicas' included) holds every text."""
    for path in (cluster.root / node).glob("session_*/logs/**/*"):
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if all(text in line for text in texts):
                return True
    return False


def test_a_record_server_down_at_start_is_said_and_jobs_wait_for_it(jobs_cluster):
    """Redis is not running when the app starts: each ingress replica logs an error naming
    it, the job routes answer 503 `store_error` naming it, pictures are served; once it is
    up, jobs work without a redeploy."""
    jc = jobs_cluster
    for client in (jc.head, jc.worker):
        refused = post_still(client, seed=71_000)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "store_error" and jc.redis.url in error["message"], error
        listing = client.get("/v1/jobs")
        assert listing.status_code == 503 and jc.redis.url in listing.json()["error"]["message"]
        picture = client.post("/v1/stylize", files={"image": ("p.jpg", synthetic_jpeg(seed=1))})
        assert picture.status_code == 200, picture.text
    for node in ("head", WORKER):
        wait_for(
            lambda n=node: logged(jc.cluster, n, "job records cannot be reached", jc.redis.url),
            30,
            f"the {node} ingress to log that the record server is away",
            interval_s=1.0,
        )

    jc.redis.start()
    for seed, client in enumerate((jc.head, jc.worker), start=71_001):
        wait_for(lambda c=client, s=seed: post_still(c, s).status_code == 202, 30, "jobs")


def test_a_job_is_read_followed_fetched_and_cancelled_through_the_other_node(jobs_cluster):
    jc = jobs_cluster
    # A video submitted through the head, followed through the worker: the head's runner
    # writes, the worker's follower hears each change through Redis.
    video = post_video(jc.head, jc.clip)
    follower = Follower(jc.worker_url, video["id"])
    assert job(jc.worker, video["id"])["id"] == video["id"]
    states = follower.states()
    assert states[-1] == "done" and "running" in states, states
    frames_seen = [e["frames_done"] for e in follower.events if e["state"] == "running"]
    assert len(set(frames_seen)) > 1, f"progress through the other node: {frames_seen}"
    done = job(jc.worker, video["id"])
    result = jc.worker.get(f"/v1/jobs/{video['id']}/result")
    assert result.status_code == 200 and len(result.content) == done["result"]["bytes"]
    assert result.content == jc.head.get(f"/v1/jobs/{video['id']}/result").content
    listed = jc.worker.get("/v1/jobs", params={"state": "done"}).json()["jobs"]
    assert video["id"] in [j["id"] for j in listed]
    jc.finished = done

    # Another submitted through the head, cancelled through the worker mid-way: the
    # head's runner stops and the files go.
    running = post_video(jc.head, jc.clip, style="alpha", size=SIZE - 8)
    wait_frames(jc.worker, running["id"], frames=1)
    cancelled = jc.worker.delete(f"/v1/jobs/{running['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert job(jc.head, running["id"])["state"] == "cancelled"
    wait_for(lambda: not (jc.store / running["id"]).exists(), 30, "the files to be deleted")
    later = job(jc.head, running["id"])
    assert later["state"] == "cancelled" and later["frames_done"] < later["frames_total"]
    gone = jc.head.get(f"/v1/jobs/{running['id']}/result")
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "job_not_done"


def test_a_key_s_bound_of_active_jobs_counts_its_jobs_on_both_nodes(jobs_cluster):
    """`jobs.max_active_per_key` (3 here) counts in the shared records: two jobs run by the
    head's ingress and one by the worker's, a fourth is refused through either node
    (each replica alone holds fewer than 3); a cancel through the other node frees a
    place."""
    jc = jobs_cluster
    sizes = iter(range(SIZE + 12, SIZE + 64, 4))  # other options: other jobs of one clip
    made = [
        post_video(client, jc.clip, size=next(sizes)) for client in (jc.head, jc.head, jc.worker)
    ]
    try:
        runners = [jc.record(video["id"])["runner"] for video in made]
        assert len(set(runners)) == 2, f"each node's ingress runs some: {runners}"
        for client in (jc.head, jc.worker):
            refused = client.post(
                "/v1/jobs",
                params={"size": next(sizes)},
                content=jc.clip.read_bytes(),
                headers={"content-type": "video/mp4"},
            )
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "too_many_jobs"
        assert jc.worker.delete(f"/v1/jobs/{made[0]['id']}").status_code == 200
        made[0] = post_video(jc.worker, jc.clip, size=next(sizes))  # room again
    finally:
        for video in made:
            jc.head.delete(f"/v1/jobs/{video['id']}")


def live_stream(base_url: str) -> ClientConnection:
    url = base_url.replace("http://", "ws://", 1) + f"/v1/live?size={SIZE}"
    return connect(url, subprotocols=LIVE_PROTOCOLS, open_timeout=30)


def test_a_key_s_bound_of_live_streams_counts_its_streams_on_both_nodes(jobs_cluster):
    """`live.max_streams_per_key` (2 here) counts in the shared records: a stream through
    each node's proxy (each ingress replica holds one), a third through either node is
    closed with 4429."""
    jc = jobs_cluster
    with contextlib.ExitStack() as streams:
        for seed, url in enumerate((jc.cluster.base_url, jc.worker_url), start=71_200):
            ws = streams.enter_context(live_stream(url))
            ws.send(synthetic_jpeg(96, 72, seed=seed))
            assert json.loads(ws.recv(timeout=60))["seq"] == 0  # admitted: a frame answered
            ws.recv(timeout=60)
        for url in (jc.cluster.base_url, jc.worker_url):
            with live_stream(url) as third, pytest.raises(ConnectionClosed) as closed:
                third.recv(timeout=60)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
            assert "too_many_streams" in closed.value.rcvd.reason


def test_a_redis_restart_mid_job_loses_no_finished_job(jobs_cluster):
    jc = jobs_cluster
    assert jc.finished is not None, "runs after the cross-node test"
    finished_bytes = jc.head.get(f"/v1/jobs/{jc.finished['id']}/result").content
    video = post_video(jc.head, jc.clip, size=SIZE - 4)
    follower = Follower(jc.worker_url, video["id"])
    wait_frames(jc.worker, video["id"], frames=1)

    jc.redis.stop()
    for client in (jc.head, jc.worker):
        away = client.get(f"/v1/jobs/{jc.finished['id']}")
        assert away.status_code == 503 and away.json()["error"]["code"] == "store_error"
        picture = client.post("/v1/stylize", files={"image": ("p.jpg", synthetic_jpeg(seed=2))})
        assert picture.status_code == 200, picture.text
    jc.redis.start()  # the same port and folder: its append-only file

    done = wait_ended(jc.worker, video["id"])
    assert done["state"] == "done", done
    assert follower.states()[-1] == "done"
    out = jc.worker.get(f"/v1/jobs/{video['id']}/result")
    assert out.status_code == 200 and len(out.content) == done["result"]["bytes"]
    kept = job(jc.worker, jc.finished["id"])
    assert kept["state"] == "done" and kept["result"] == jc.finished["result"]
    assert jc.worker.get(f"/v1/jobs/{jc.finished['id']}/result").content == finished_bytes
    print(f"a Redis restart mid-job: the job ended done after {done['attempts']} run(s)")


def test_a_job_on_a_killed_node_is_finished_on_the_other(jobs_cluster, tmp_path):
    jc = jobs_cluster
    video = post_video(jc.worker, jc.clip, size=SIZE + 8)  # run by the worker's ingress
    wait_frames(jc.head, video["id"], frames=1)
    runner = jc.record(video["id"])["runner"]
    killed_at = time.monotonic()
    jc.worker_node.kill()
    before = job(jc.head, video["id"])
    assert before["state"] == "running" and before["frames_done"] < before["frames_total"]

    follower = Follower(jc.cluster.base_url, video["id"])
    try:
        done = wait_ended(jc.head, video["id"], timeout_s=300)
    except AssertionError as error:  # where it stuck: the head's runs, and its model
        jobs = jc.head.get("/v1/stats").json().get("jobs")
        files = {"image": ("p.jpg", synthetic_jpeg(seed=71_099), "image/jpeg")}
        try:
            photo = jc.head.post("/v1/stylize", files=files).status_code
        except httpx.HTTPError as failed:
            photo = repr(failed)
        where = f"the head replica's jobs: {jobs}; a photo through it: {photo}"
        raise AssertionError(f"{error}\n{where}") from None
    seconds = time.monotonic() - killed_at
    assert done["state"] == "done", done
    assert done["attempts"] == 2, (
        f"no takeover ({done['attempts']} run): the job was not run by the killed "
        "worker's ingress (Serve's proxy prefers its own node's replica)"
    )
    assert follower.states()[-1] == "done"
    out = tmp_path / "taken-over.mp4"
    out.write_bytes(jc.head.get(f"/v1/jobs/{video['id']}/result").content)
    assert frame_count(out) == frame_count(jc.clip) == done["frames_total"]
    print(
        f"worker killed after {before['frames_done']} of {done['frames_total']} frames "
        f"(runner {runner}); done on the head {seconds:.1f} s later, the rerun computed "
        f"{done['frames_model']} frames"
    )
