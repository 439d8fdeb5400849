"""The request pipeline without Ray: a fake model and a dict for a cache."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time

import numpy as np
import pytest

from serve_app import concurrency
from serve_app.config import AppConfig
from serve_app.errors import Overloaded, ReplicaFailed, Timeout, TooManyPictures, Unavailable
from serve_app.http.batch import batch_body
from serve_app.imaging import decode
from serve_app.model.identity import ModelIdentity, StylizedArray
from serve_app.options import resolve_options
from serve_app.pipeline import keys, lru, stylize
from serve_app.pipeline.keys import result_key
from serve_app.pipeline.results import StylizeResult
from serve_app.pipeline.stylize import StylizePipeline
from tests.support.pictures import synthetic_jpeg

WEIGHTS = "weights-a:align_corners=True"
RUNTIME = "cpu/fp32/nhwc/torch-x"
IDENTITY = ModelIdentity(WEIGHTS, RUNTIME)
REQUEST = contextvars.ContextVar("request", default=None)


def make_config(**overrides) -> AppConfig:
    args = {
        "styles": [{"name": "alpha", "weights": "random"}],
        "default_size": 32,
        "request_timeout_s": 5,
        **overrides,
    }
    return AppConfig.model_validate(args)


class FakeCache:
    def __init__(self):
        self.data = {}
        self.puts = 0

    async def get(self, key):
        return self.data.get(key)

    async def put(self, key, value):
        self.puts += 1
        self.data[key] = value


class FakeModel:
    """Answers after ``gate`` opens; records calls, cancellations and the caller's context."""

    def __init__(self, identity=IDENTITY, failures=0):
        self.identity = identity
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls = 0
        self.cancelled = 0
        self.failures = failures
        self.contexts = []

    async def __call__(self, rgb: np.ndarray, style: str) -> StylizedArray:
        self.calls += 1
        self.contexts.append(REQUEST.get())
        if self.failures:
            self.failures -= 1
            raise ReplicaFailed("replica died")
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return StylizedArray(255 - rgb, self.identity, 0.0, 1.0, 1)


def make_pipeline(model=None, cache=None, **config):
    config = make_config(**config)
    model = model or FakeModel()
    cache = cache or FakeCache()
    return StylizePipeline(config, cache, model, {"alpha": WEIGHTS}), model, cache


def options(pipe: StylizePipeline, **kw):
    return resolve_options(pipe._config, **kw)


def run(coroutine):
    return asyncio.run(coroutine)


async def until(condition, timeout_s: float = 10.0) -> None:
    """Wait, a loop turn at a time, for ``condition()``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def background_done() -> None:
    """Let every other task of the loop end (the cache puts and cancelled work run in
    tasks of their own): whatever they would do has been done after it."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    await asyncio.gather(*others, return_exceptions=True)


def waiters(pipe: StylizePipeline) -> int:
    """Callers waiting for the pipeline's shared work now."""
    return sum(work.waiters for work in pipe._in_flight.values())


def test_miss_then_hit_computes_once():
    async def scenario():
        pipe, model, cache = make_pipeline()
        first = await pipe.stylize(synthetic_jpeg(seed=1), options(pipe))
        await background_done()  # the cache put runs in the background
        second = await pipe.stylize(synthetic_jpeg(seed=1), options(pipe))
        return first, second, model, cache

    first, second, model, cache = run(scenario())
    assert (first.cache, second.cache) == ("miss", "hit")
    assert first.data == second.data and first.key == second.key
    assert model.calls == 1 and cache.puts == 1
    assert set(first.timings_ms) == {"decode", "queue", "inference", "encode"}


def test_identical_requests_coalesce_onto_one_computation():
    async def scenario():
        pipe, model, _ = make_pipeline()
        model.gate.clear()
        data = synthetic_jpeg(seed=2)
        tasks = [asyncio.create_task(pipe.stylize(data, options(pipe))) for _ in range(8)]
        await until(lambda: waiters(pipe) == 8)
        model.gate.set()
        return await asyncio.gather(*tasks), model

    results, model = run(scenario())
    assert sorted(r.cache for r in results) == ["coalesced"] * 7 + ["miss"]
    assert model.calls == 1
    assert len({r.data for r in results}) == 1


def test_leader_hang_up_does_not_fail_the_follower():
    async def scenario():
        pipe, model, cache = make_pipeline()
        model.gate.clear()
        data = synthetic_jpeg(seed=3)
        leader = asyncio.create_task(pipe.stylize(data, options(pipe)))
        await until(lambda: waiters(pipe) == 1)
        follower = asyncio.create_task(pipe.stylize(data, options(pipe)))
        await until(lambda: waiters(pipe) == 2)
        leader.cancel()  # what Serve does when the leader's client disconnects
        await asyncio.wait([leader])  # it has left the shared work
        model.gate.set()
        result = await follower
        await background_done()
        return leader, result, model, cache

    leader, result, model, cache = run(scenario())
    assert leader.cancelled()
    assert result.cache == "coalesced"
    assert model.calls == 1 and model.cancelled == 0
    assert cache.puts == 1  # the work completed for the cache too


def test_shared_work_runs_outside_the_callers_context():
    async def scenario():
        pipe, model, _ = make_pipeline()
        REQUEST.set("request-1")  # like Serve's per-request context
        await pipe.stylize(synthetic_jpeg(seed=4), options(pipe))
        return model

    assert run(scenario()).contexts == [None]


def test_each_waiter_has_its_own_deadline():
    async def scenario():
        pipe, model, _ = make_pipeline(request_timeout_s=0.4)
        model.gate.clear()
        data = synthetic_jpeg(seed=5)
        early = asyncio.create_task(pipe.stylize(data, options(pipe)))
        await asyncio.sleep(0.3)
        late = asyncio.create_task(pipe.stylize(data, options(pipe)))
        with pytest.raises(Timeout):
            await early  # its deadline: 0.4 s after it arrived
        model.gate.set()
        return await late, model  # joined 0.3 s in: it still has time

    result, model = run(scenario())
    assert result.cache == "coalesced"
    assert model.calls == 1


def test_work_nobody_waits_for_is_cancelled_and_frees_its_slot():
    async def scenario():
        pipe, model, _ = make_pipeline(max_in_flight=1, request_timeout_s=0.2)
        model.gate.clear()
        with pytest.raises(Timeout):
            await pipe.stylize(synthetic_jpeg(seed=6), options(pipe))
        await background_done()  # the cancelled work has ended
        freed = pipe.in_flight
        model.gate.set()
        other = await pipe.stylize(synthetic_jpeg(seed=7), options(pipe))
        return freed, other, model

    freed, other, model = run(scenario())
    assert freed == 0
    assert model.cancelled == 1  # the model call itself was stopped
    assert other.cache == "miss"


def test_all_waiters_hanging_up_cancels_the_work():
    async def scenario():
        pipe, model, _ = make_pipeline()
        model.gate.clear()
        data = synthetic_jpeg(seed=8)
        tasks = [asyncio.create_task(pipe.stylize(data, options(pipe))) for _ in range(3)]
        await until(lambda: waiters(pipe) == 3)
        for task in tasks:
            task.cancel()
        await background_done()
        return pipe, model

    pipe, model = run(scenario())
    assert model.cancelled == 1 and pipe.in_flight == 0


def test_past_max_in_flight_a_new_picture_is_refused_but_a_repeat_joins():
    async def scenario():
        pipe, model, _ = make_pipeline(max_in_flight=1)
        model.gate.clear()
        busy = synthetic_jpeg(seed=9)
        first = asyncio.create_task(pipe.stylize(busy, options(pipe)))
        await until(lambda: pipe.in_flight == 1)
        with pytest.raises(Overloaded) as refused:
            await pipe.stylize(synthetic_jpeg(seed=10), options(pipe))
        joined = asyncio.create_task(pipe.stylize(busy, options(pipe)))
        await until(lambda: waiters(pipe) == 2)
        model.gate.set()
        return refused.value, await first, await joined

    refused, first, joined = run(scenario())
    assert refused.status == 503 and refused.headers == {"Retry-After": "1"}
    assert (first.cache, joined.cache) == ("miss", "coalesced")


def test_one_key_s_misses_are_bounded_and_leave_room_for_the_others():
    async def scenario():
        pipe, model, _ = make_pipeline(max_in_flight=4, max_in_flight_per_key=2, max_batch_images=2)
        model.gate.clear()
        alice = [synthetic_jpeg(seed=seed) for seed in (20, 21, 22)]
        started = [
            asyncio.create_task(pipe.stylize(data, options(pipe), owner="alice"))
            for data in alice[:2]
        ]
        await until(lambda: pipe.in_flight == 2)
        with pytest.raises(TooManyPictures) as refused:
            await pipe.stylize(alice[2], options(pipe), owner="alice")
        # Joining a miss in progress costs the key nothing; other keys, and callers
        # without one, still start misses.
        joined = asyncio.create_task(pipe.stylize(alice[0], options(pipe), owner="alice"))
        bob = asyncio.create_task(pipe.stylize(synthetic_jpeg(seed=23), options(pipe), owner="bob"))
        keyless = asyncio.create_task(pipe.stylize(synthetic_jpeg(seed=24), options(pipe)))
        await until(lambda: pipe.in_flight == 4 and waiters(pipe) == 5)
        model.gate.set()
        done = await asyncio.gather(*started, joined, bob, keyless)
        # Once hers are made, the key starts misses again.
        again = await pipe.stylize(alice[2], options(pipe), owner="alice")
        return refused.value, done, again

    refused, done, again = run(scenario())
    assert refused.status == 429 and refused.code == "too_many_pictures"
    assert refused.headers == {"Retry-After": "1"}
    assert [result.cache for result in done] == ["miss", "miss", "coalesced", "miss", "miss"]
    assert again.cache == "miss"


def test_a_failed_replica_is_retried_once():
    async def scenario(failures):
        pipe, model, _ = make_pipeline(model=FakeModel(failures=failures))
        try:
            return await pipe.stylize(synthetic_jpeg(seed=11), options(pipe)), model
        except Unavailable as error:
            return error, model

    result, model = run(scenario(1))
    assert result.cache == "miss" and model.calls == 2
    error, model = run(scenario(2))
    assert isinstance(error, Unavailable) and error.status == 503 and model.calls == 2


def test_a_result_from_other_weights_is_returned_but_never_cached():
    async def scenario():
        stale = FakeModel(identity=ModelIdentity("old-weights", RUNTIME))
        pipe, _, cache = make_pipeline(model=stale)
        result = await pipe.stylize(synthetic_jpeg(seed=12), options(pipe))
        await background_done()  # a put would have run by now
        return result, cache

    result, cache = run(scenario())
    assert result.cache == "miss"
    assert cache.puts == 0


def test_results_are_keyed_by_the_runtime_that_computed_them():
    async def scenario():
        pipe, model, _ = make_pipeline()
        data = synthetic_jpeg(seed=13)
        before = pipe.expected_identity("alpha")
        first = await pipe.stylize(data, options(pipe))
        await background_done()
        again = await pipe.stylize(data, options(pipe))
        model.identity = ModelIdentity(WEIGHTS, "cpu/bf16/nhwc/torch-x")  # another node
        other = await pipe.stylize(synthetic_jpeg(seed=14), options(pipe))
        await background_done()
        return before, first, again, other, pipe

    before, first, again, other, pipe = run(scenario())
    assert before.runtime == "unknown"  # nothing learnt yet: the first lookup misses
    assert first.key == result_key(
        lru.image_digest(synthetic_jpeg(seed=13)),
        options(pipe),
        ModelIdentity(WEIGHTS, RUNTIME),
    )
    assert again.cache == "hit"
    assert other.key != first.key
    assert pipe.expected_identity("alpha").runtime == "cpu/bf16/nhwc/torch-x"


def test_key_changes_with_every_part_and_the_pipeline_version(monkeypatch):
    pipe, _, _ = make_pipeline()
    identity = ModelIdentity(WEIGHTS, RUNTIME)
    base = result_key("d", options(pipe), identity)
    variants = [
        result_key("e", options(pipe), identity),
        result_key("d", options(pipe, size=64), identity),
        result_key("d", options(pipe, format="jpeg"), identity),
        result_key("d", options(pipe, format="jpeg", quality=50), identity),
        result_key("d", options(pipe, strength=0.5), identity),
        result_key("d", options(pipe, preserve_color=True), identity),
        result_key("d", options(pipe), ModelIdentity("other", RUNTIME)),
        result_key("d", options(pipe), ModelIdentity(WEIGHTS, "cuda/fp16")),
    ]
    assert len({base, *variants}) == 9
    monkeypatch.setattr(keys, "PIPELINE_VERSION", keys.PIPELINE_VERSION + 1)
    assert result_key("d", options(pipe), identity) != base


def test_decodes_share_a_memory_budget(monkeypatch):
    active, peak, lock = [0], [0], threading.Lock()
    real_decode = decode.decode_resized

    def counting_decode(*args):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            threading.Event().wait(0.05)
            return real_decode(*args)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(decode, "decode_resized", counting_decode)

    async def scenario():
        # Room for two decodes of these small pictures (each reserves ~34 MiB).
        pipe, _, _ = make_pipeline(decode_memory_bytes=70 * 2**20)
        files = [synthetic_jpeg(seed=20 + i) for i in range(6)]
        return await asyncio.gather(*(pipe.stylize(f, options(pipe)) for f in files))

    assert len(run(scenario())) == 6
    assert peak[0] == 2


def test_a_decode_keeps_its_memory_reserved_until_it_ends_though_nobody_waits(monkeypatch):
    """The only caller hangs up mid-decode: the work is cancelled, but the decode thread
    runs on, holding its memory, so the budget is given back only once it ends (it was
    given back at once: four abandoned 7000x7000 decodes ran in the room of one)."""
    started, finish = threading.Event(), threading.Event()
    real_decode = decode.decode_resized

    def held_decode(*args):
        started.set()
        finish.wait(10)
        return real_decode(*args)

    monkeypatch.setattr(decode, "decode_resized", held_decode)

    async def scenario():
        pipe, _, _ = make_pipeline()
        budget = pipe.decode_memory
        asking = asyncio.ensure_future(pipe.stylize(synthetic_jpeg(seed=31), options(pipe)))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        asking.cancel()  # the client hung up; nobody else waits for this picture
        await asyncio.gather(asking, return_exceptions=True)
        await asyncio.sleep(0.05)  # the shared work's cancellation reaches the decode
        held_while_decoding = budget._free < budget._total
        finish.set()
        await until(lambda: budget._free == budget._total)
        return held_while_decoding

    assert run(scenario())


def test_large_uploads_are_hashed_off_the_event_loop(monkeypatch):
    threads = []
    real_digest = lru.image_digest

    def recording_digest(data):
        threads.append(threading.current_thread() is threading.main_thread())
        return real_digest(data)

    monkeypatch.setattr(stylize, "image_digest", recording_digest)

    async def scenario():
        pipe, _, _ = make_pipeline()
        small = synthetic_jpeg(seed=30)
        large = small + b"\0" * stylize.HASH_IN_THREAD_BYTES  # JPEG ignores the tail
        await pipe.stylize(small, options(pipe))
        await pipe.stylize(large, options(pipe))

    run(scenario())
    assert threads == [True, False]


def test_batch_body_reports_each_item():
    ok = StylizeResult(b"\x89PNG", "image/png", "miss", "alpha", 4, 4, "k", True)
    body = json.loads(batch_body([ok, Overloaded("busy"), RuntimeError("boom")]))
    first, second, third = body["results"]
    assert first["status"] == 200 and first["data"] == "iVBORw=="
    # What the single route says in its headers.
    assert (first["style"], first["etag"], first["random_weights"]) == ("alpha", '"k"', True)
    assert second == {
        "index": 1,
        "status": 503,
        "error": {"code": "overloaded", "message": "busy"},
        "retry_after_s": 1,
    }
    assert third["status"] == 500 and third["error"]["code"] == "internal_error"


def test_memory_budget_lets_an_oversized_reservation_through_alone():
    async def scenario():
        budget = concurrency.MemoryBudget(100)
        order = []

        async def use(name, amount, hold_s):
            async with budget.reserve(amount):
                order.append(f"{name}+")
                await asyncio.sleep(hold_s)
                order.append(f"{name}-")

        await asyncio.gather(use("a", 60, 0.05), use("b", 60, 0.01), use("huge", 500, 0.01))
        return order

    order = run(scenario())
    assert order[:2] == ["a+", "a-"]  # b (60) does not fit beside a (60)
    assert "huge+" in order and order.index("huge-") == order.index("huge+") + 1


def test_a_tiled_pictures_model_steps_move_its_progress():
    class SteppingModel(FakeModel):
        async def __call__(self, rgb, style, on_progress=None):
            assert on_progress is not None  # a picture past tiling.max_whole_pixels
            on_progress(1, 4)
            return await super().__call__(rgb, style)

    async def scenario():
        model = SteppingModel()
        model.gate.clear()
        pipe, _, _ = make_pipeline(model, tiling={"max_whole_pixels": 16 * 16})
        data, opts = synthetic_jpeg(seed=5), options(pipe)
        key = await pipe.key_of(data, opts)
        request = asyncio.ensure_future(pipe.stylize(data, opts))
        await until(lambda: model.calls == 1)  # it reported its first step, then waits
        during = pipe.progress(key)
        model.gate.set()
        await request
        return during, pipe.progress(key)

    during, after = run(scenario())
    decoded, stylized = stylize.PROGRESS_DECODED, stylize.PROGRESS_STYLIZED
    assert during == pytest.approx(decoded + (stylized - decoded) / 4)
    assert after is None  # nothing in flight any more
