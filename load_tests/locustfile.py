"""Locust load on POST /v1/stylize, for exploring by hand (the benchmark is load_tests.bench).

    locust -f load_tests/locustfile.py --host http://127.0.0.1:8000 \\
        --hot-ratio 0.5 --hot-set 4 --size 256

Each request is, with probability ``--hot-ratio``, one of ``--hot-set`` popular photos
(the same bytes on every locust worker), else a photo never sent before (a variant of
the shared photos made byte-unique; see ``load_tests.workloads``). Statistics are split
by kind: ``/v1/stylize [hot]`` and ``/v1/stylize [unique]``. Every option can also come
from the environment: ANIMEGAN_HOT_RATIO, ANIMEGAN_HOT_SET, ANIMEGAN_SIZE, ANIMEGAN_STYLE,
ANIMEGAN_FORMAT, ANIMEGAN_PHOTOS, ANIMEGAN_VARIANTS.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

from locust import HttpUser, constant, events, task

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `locust -f` puts only this file's folder on the path
    sys.path.insert(0, str(REPO))

from load_tests.workloads import (  # noqa: E402
    Uploads,
    default_photos_dir,
    load_photos,
    make_variants,
)

_state: dict = {}


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    group = parser.add_argument_group("animegan workload")
    group.add_argument(
        "--hot-ratio",
        type=float,
        default=0.5,
        env_var="ANIMEGAN_HOT_RATIO",
        help="share of requests sent from the hot set (0..1)",
    )
    group.add_argument(
        "--hot-set", type=int, default=4, env_var="ANIMEGAN_HOT_SET", help="popular photos"
    )
    group.add_argument(
        "--size", type=int, default=256, env_var="ANIMEGAN_SIZE", help="output longer side, px"
    )
    group.add_argument("--style", default="", env_var="ANIMEGAN_STYLE", help="default: server's")
    group.add_argument("--format", default="png", env_var="ANIMEGAN_FORMAT", dest="out_format")
    group.add_argument(
        "--photos",
        default=str(default_photos_dir(REPO)),
        env_var="ANIMEGAN_PHOTOS",
        help="folder of *.jpg to vary (synthetic pictures if none)",
    )
    group.add_argument(
        "--variants", type=int, default=8, env_var="ANIMEGAN_VARIANTS", help="pixel variants"
    )


@events.test_start.add_listener
def build_uploads(environment, **_kwargs) -> None:
    options = environment.parsed_options
    photos = load_photos(Path(options.photos))
    uploads = Uploads(
        make_variants(photos, max(options.variants, 1)),
        tag=f"locust-{os.getpid()}-{time.time_ns()}",
    )
    _state["uploads"] = uploads
    _state["hot"] = uploads.hot_set(options.hot_set)


class StylizeUser(HttpUser):
    """A closed-loop client: the next request leaves as soon as the answer is read."""

    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self._rng = random.Random()
        self._hot_ratio = options.hot_ratio if options.hot_set > 0 else 0.0
        self._params = {"size": options.size, "format": options.out_format}
        if options.style:
            self._params["style"] = options.style

    @task
    def stylize(self) -> None:
        kind, data = _state["uploads"].pick(_state["hot"], self._hot_ratio, self._rng)
        with self.client.post(
            "/v1/stylize",
            params=self._params,
            files={"image": ("photo.jpg", data, "image/jpeg")},
            name=f"/v1/stylize [{kind}]",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
