"""serve_app.weights: registry, cache dir, download (integrity, locking, failures), loading."""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serve_app.model import weights
from serve_app.model.weights import (
    REGISTRY,
    OfficialWeights,
    ResolvedWeights,
    WeightsError,
    download_weights,
    git_blob_sha1,
    git_blob_sha1_file,
    load_generator_for,
    load_state_dict,
    resolve_weights,
)

# The official checkpoints: git blob SHA-1 and upsampling mode, as published upstream.
PUBLISHED_WEIGHTS = {
    "face_paint_512_v2": ("d75102f8f201ddaf8dbe6b913b1a97585b55f838", True),
    "face_paint_512_v1": ("19c1a1da4d9580186109a2b055d91044e5127de6", True),
    "celeba_distill": ("3b7ea61b02254980831cc3bc77af30666dbc999c", True),
    "paprika": ("58086c9db9fc7a9e5c2876ca31b8079599352643", False),
}


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _assert_actionable(message: str, served) -> None:
    """A download failure message says what failed and how to get out of it."""
    assert served.name in message
    assert served.url in message
    assert str(served.path) in message
    assert served.entry.blob_sha1 in message
    assert "random" in message


# --- registry and locations --------------------------------------------------------------


def test_registry_matches_design():
    assert {name: (w.blob_sha1, w.align_corners) for name, w in REGISTRY.items()} == (
        PUBLISHED_WEIGHTS
    )
    for name, w in REGISTRY.items():
        assert w.name == name
        assert w.url(weights.DEFAULT_BASE_URL) == f"{weights.DEFAULT_BASE_URL}/{name}.pt"
    assert weights.DEFAULT_BASE_URL == (
        "https://github.com/bryandlee/animegan2-pytorch/raw/main/weights"
    )


def test_url_honours_mirror_env(monkeypatch):
    monkeypatch.delenv(weights.WEIGHTS_URL_ENV, raising=False)
    assert REGISTRY["paprika"].url() == f"{weights.DEFAULT_BASE_URL}/paprika.pt"
    monkeypatch.setenv(weights.WEIGHTS_URL_ENV, "http://mirror.local/w/")
    assert REGISTRY["paprika"].url() == "http://mirror.local/w/paprika.pt"


def test_weights_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert weights.weights_dir() == tmp_path / "home" / ".cache" / "animegan-serve" / "weights"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.weights_dir() == tmp_path / "xdg" / "animegan-serve" / "weights"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "explicit"))
    assert weights.weights_dir() == tmp_path / "explicit"
    assert not (tmp_path / "explicit").exists()  # resolving a location creates nothing


def test_git_blob_sha1_matches_git(tmp_path):
    # `git hash-object` of the empty file and of "hello\n".
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    data = bytes(range(256)) * 1000  # several streaming chunks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert git_blob_sha1_file(path) == git_blob_sha1(data)


# --- download ------------------------------------------------------------------------------


def test_download_once_then_cached(served_style):
    resolved = resolve_weights(served_style.name, progress=False)
    assert resolved.kind == "registry"
    assert resolved.path == served_style.path
    assert resolved.digest == served_style.entry.blob_sha1
    assert resolved.align_corners is False
    assert served_style.path.read_bytes() == served_style.data
    assert served_style.server.request_count == 1

    again = resolve_weights(served_style.name, progress=False)
    assert again == resolved
    assert served_style.server.request_count == 1  # no HTTP request the second time
    assert served_style.leftovers() == []


def test_file_appears_only_after_verification(served_style):
    served_style.server.mode = "gated"  # half the body, then wait for the gate
    result: dict[str, object] = {}

    def run():
        try:
            result["path"] = download_weights(served_style.name, progress=False)
        except Exception as exc:  # surfaced by the assertions below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:

        def partial_written() -> bool:
            parts = list(served_style.cache_dir.glob("*.part"))
            return bool(parts) and parts[0].stat().st_size > 0

        assert _wait_for(partial_written), "no temporary file appeared"
        assert not served_style.path.exists()  # not in place while incomplete
    finally:
        served_style.server.gate.set()
        thread.join(timeout=20)
    assert "error" not in result, result
    assert result["path"] == served_style.path
    assert served_style.path.read_bytes() == served_style.data
    assert served_style.leftovers() == []


def test_bad_hash_keeps_nothing_and_retry_starts_clean(served_style):
    served_style.server.mode = "wrong"
    with pytest.raises(WeightsError) as info:
        resolve_weights(served_style.name, progress=False)
    message = str(info.value)
    assert "do not match" in message
    _assert_actionable(message, served_style)
    assert not served_style.path.exists()
    assert served_style.leftovers() == []  # no temporary file either

    served_style.server.mode = "ok"
    resolved = resolve_weights(served_style.name, progress=False)
    assert resolved.path.read_bytes() == served_style.data
    assert served_style.server.request_count == 2
    assert served_style.leftovers() == []


def test_corrupt_cached_file_is_downloaded_again(served_style):
    served_style.cache_dir.mkdir(parents=True)
    served_style.path.write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="download is disabled"):
        resolve_weights(served_style.name, download=False)
    resolved = resolve_weights(served_style.name, progress=False)
    assert resolved.path.read_bytes() == served_style.data
    assert served_style.server.request_count == 1


def test_missing_without_download_says_where_to_put_it(served_style):
    with pytest.raises(WeightsError) as info:
        resolve_weights(served_style.name, download=False)
    message = str(info.value)
    assert str(served_style.path) in message
    assert served_style.entry.blob_sha1 in message
    assert "random" in message
    assert served_style.server.request_count == 0


def test_http_404_is_actionable(served_style):
    served_style.server.mode = "404"
    with pytest.raises(WeightsError) as info:
        resolve_weights(served_style.name, progress=False)
    assert "404" in str(info.value)
    _assert_actionable(str(info.value), served_style)
    assert not served_style.path.exists()
    assert served_style.leftovers() == []


def test_connection_refused_is_actionable(served_style, monkeypatch):
    with socket.socket() as sock:  # a port that was free a moment ago and is closed now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(weights.WEIGHTS_URL_ENV, f"http://127.0.0.1:{port}/weights")
    started = time.monotonic()
    with pytest.raises(WeightsError) as info:
        resolve_weights(served_style.name, progress=False, timeout_s=2.0)
    assert time.monotonic() - started < 4.0
    message = str(info.value)
    assert f"http://127.0.0.1:{port}/weights/{served_style.name}.pt" in message
    assert served_style.name in message
    assert str(served_style.path) in message
    assert "random" in message
    assert served_style.leftovers() == []


def test_timeout_fails_fast_and_is_actionable(served_style):
    served_style.server.mode = "hang"
    timeout_s = 1.0
    started = time.monotonic()
    with pytest.raises(WeightsError) as info:
        resolve_weights(served_style.name, progress=False, timeout_s=timeout_s)
    elapsed = time.monotonic() - started
    assert elapsed < timeout_s + 2.0
    assert "timed out" in str(info.value)
    _assert_actionable(str(info.value), served_style)
    assert not served_style.path.exists()
    assert served_style.leftovers() == []


def test_concurrent_threads_download_once(served_style):
    served_style.server.mode = "slow"  # the second caller arrives while the first downloads
    served_style.server.delay_s = 0.5
    results: list[object] = []
    barrier = threading.Barrier(2)

    def run():
        barrier.wait()
        try:
            results.append(resolve_weights(served_style.name, progress=False).path)
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert results == [served_style.path, served_style.path]
    assert served_style.server.request_count == 1
    assert served_style.leftovers() == []


def _child_download(name: str, sha1: str, queue) -> None:
    """Runs in a spawned process: register the test style there too, then download."""
    weights.REGISTRY[name] = OfficialWeights(name, sha1, align_corners=False)
    try:
        queue.put(str(download_weights(name, progress=False)))
    except Exception as exc:
        queue.put(f"error: {exc}")


def test_concurrent_processes_download_once(served_style):
    served_style.server.mode = "slow"
    served_style.server.delay_s = 1.0
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_child_download, args=(served_style.name, served_style.entry.blob_sha1, queue)
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    try:
        outcomes = sorted(queue.get(timeout=30) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert outcomes == [str(served_style.path)] * 2
    assert served_style.server.request_count == 1
    assert served_style.path.read_bytes() == served_style.data


# --- size cap, lock timeout, permissions ----------------------------------------------------


def refused_before_the_gate(served_style, cap: int) -> str:
    """Download with a cap from a server that holds the rest of the body back until its
    gate opens: the refusal must come long before (the read timeout is 20 s)."""
    started = time.monotonic()
    try:
        with pytest.raises(WeightsError) as info:
            download_weights(served_style.name, progress=False, timeout_s=20.0, max_bytes=cap)
        elapsed = time.monotonic() - started
    finally:
        served_style.server.gate.set()
    assert elapsed < 5.0
    return str(info.value)


def test_declared_length_over_the_cap_is_refused_before_reading(served_style):
    # Gated: half the body, then nothing until the gate opens. A cap between half and all
    # of it is only hit in time if the declared length is checked before reading.
    served_style.server.mode = "gated"
    cap = len(served_style.data) * 3 // 4
    message = refused_before_the_gate(served_style, cap)
    assert f"declared {len(served_style.data)} bytes" in message
    assert f"cap of {cap} bytes" in message
    assert weights.WEIGHTS_MAX_BYTES_ENV in message
    _assert_actionable(message, served_style)
    assert not served_style.path.exists()
    assert served_style.leftovers() == []


def test_undeclared_length_is_cut_off_at_the_cap_while_streaming(served_style):
    # No Content-Length and the second half held back: only counting the bytes as they
    # arrive stops the download before the gate (or the read timeout) would.
    served_style.server.mode = "gated"
    served_style.server.send_length = False
    cap = len(served_style.data) // 4
    message = refused_before_the_gate(served_style, cap)
    assert f"sent more than {cap} bytes" in message
    assert "partial file was removed" in message
    _assert_actionable(message, served_style)
    assert not served_style.path.exists()
    assert served_style.leftovers() == []


def test_cap_comes_from_the_env_and_a_body_at_the_cap_passes(served_style, monkeypatch):
    size = len(served_style.data)
    assert weights.DEFAULT_MAX_BYTES > 2 * 8_600_000  # well above the official checkpoints
    monkeypatch.setenv(weights.WEIGHTS_MAX_BYTES_ENV, str(size - 1))
    with pytest.raises(WeightsError, match=f"cap of {size - 1} bytes"):
        resolve_weights(served_style.name, progress=False)
    assert served_style.leftovers() == []

    monkeypatch.setenv(weights.WEIGHTS_MAX_BYTES_ENV, "lots")
    with pytest.raises(WeightsError, match=weights.WEIGHTS_MAX_BYTES_ENV):
        resolve_weights(served_style.name, progress=False)

    served_style.server.send_length = False  # counted, not declared: exactly the cap is fine
    monkeypatch.setenv(weights.WEIGHTS_MAX_BYTES_ENV, str(size))
    resolved = resolve_weights(served_style.name, progress=False)
    assert resolved.path.read_bytes() == served_style.data
    assert served_style.leftovers() == []


_HOLD_LOCK = """
import sys
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def _download_in_thread(name: str, **kwargs) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def run():
        try:
            outcome["path"] = download_weights(name, progress=False, **kwargs)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_lock_held_elsewhere_times_out_with_a_clear_error(served_style, monkeypatch):
    served_style.cache_dir.mkdir(parents=True)
    lock_path = served_style.cache_dir / f"{served_style.name}.pt.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(lock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"

        started = time.monotonic()
        thread, outcome = _download_in_thread(served_style.name, lock_timeout_s=0.5)
        thread.join(timeout=10)  # without a lock timeout this would wait forever
        assert not thread.is_alive(), "download_weights kept waiting for the lock"
        assert time.monotonic() - started < 5.0
        error = outcome.get("error")
        assert isinstance(error, WeightsError), outcome
        message = str(error)
        assert str(lock_path) in message
        assert "Another process" in message
        assert "remove" in message
        assert weights.WEIGHTS_LOCK_TIMEOUT_ENV in message

        monkeypatch.setenv(weights.WEIGHTS_LOCK_TIMEOUT_ENV, "0.2")  # the env sets the default
        thread, outcome = _download_in_thread(served_style.name)
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), WeightsError), outcome
        assert served_style.server.request_count == 0
    finally:
        holder.kill()
        holder.wait(timeout=10)

    # The holder died with the lock held: the kernel dropped it, the next download proceeds.
    assert download_weights(served_style.name, progress=False) == served_style.path
    assert served_style.server.request_count == 1

    monkeypatch.setenv(weights.WEIGHTS_LOCK_TIMEOUT_ENV, "soon")
    with pytest.raises(WeightsError, match=weights.WEIGHTS_LOCK_TIMEOUT_ENV):
        download_weights(served_style.name, progress=False)


def test_downloads_are_readable_by_other_users(served_style, monkeypatch, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    cache_dir = private / "a" / "weights"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(cache_dir))
    previous = os.umask(0o077)  # the most restrictive common umask
    try:
        path = download_weights(served_style.name, progress=False)
    finally:
        os.umask(previous)
    assert path == cache_dir / f"{served_style.name}.pt"
    assert path.read_bytes() == served_style.data

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(path) == 0o644
    assert mode(cache_dir) == 0o755
    assert mode(cache_dir.parent) == 0o755
    assert mode(private) == 0o700  # a directory that existed keeps its owner's choice
    assert mode(cache_dir / f"{served_style.name}.pt.lock") == 0o666


# --- specs and loading --------------------------------------------------------------------


def test_local_path_spec_loads(tmp_path, tiny_weights):
    import torch

    from serve_app.model.generator import random_generator

    path = tmp_path / "custom weights" / "mine.pth"
    path.parent.mkdir()
    path.write_bytes(tiny_weights.data)
    resolved = resolve_weights(str(path))
    assert resolved.kind == "path"
    assert resolved.path == path.resolve()
    assert resolved.digest == tiny_weights.sha1
    assert resolved.align_corners is None
    assert not resolved.is_random

    generator = load_generator_for(resolved)
    assert generator.align_corners is True  # path: default True unless told
    expected = random_generator(1).state_dict()
    for key, value in generator.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert load_generator_for(resolved, align_corners=False).align_corners is False


def test_bare_pt_name_is_a_path(tmp_path, monkeypatch, tiny_weights):
    monkeypatch.chdir(tmp_path)
    Path("local.pt").write_bytes(tiny_weights.data)
    assert resolve_weights("local.pt").kind == "path"


def test_missing_path_raises():
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights("/nonexistent/dir/weights.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights("nothing-here.pth")


def test_unknown_name_raises():
    with pytest.raises(WeightsError) as info:
        resolve_weights("not_a_style")
    message = str(info.value)
    assert "paprika" in message
    assert "random" in message


def test_random_spec_is_seeded_and_loud(caplog):
    import torch

    from serve_app.model.generator import random_generator

    resolved = resolve_weights("random", seed=7)
    assert resolved == ResolvedWeights("random", "random", None, "random-seed7", None, seed=7)
    assert resolved.is_random
    assert load_state_dict(resolved) is None
    with caplog.at_level(logging.WARNING, logger="serve_app.model.weights"):
        generator = load_generator_for(resolved)
    assert any(
        r.levelno >= logging.WARNING and "RANDOM WEIGHTS" in r.getMessage() for r in caplog.records
    )
    expected = random_generator(7)
    for (key, value), ref in zip(
        generator.state_dict().items(), expected.state_dict().values(), strict=True
    ):
        assert torch.equal(value, ref), key
    assert generator.align_corners is True


def test_registry_align_corners_default_and_override(served_style):
    resolved = resolve_weights(served_style.name, progress=False)
    assert load_generator_for(resolved).align_corners is False  # the style's own default
    assert load_generator_for(resolved, align_corners=True).align_corners is True


def test_load_generator_for_is_strict(tmp_path, tiny_weights):
    import io

    import torch

    state = torch.load(io.BytesIO(tiny_weights.data), weights_only=True)
    extra = dict(state, unexpected_key=torch.zeros(1))
    missing = dict(state)
    missing.pop(next(iter(missing)))
    for name, sd in (("extra", extra), ("missing", missing)):
        path = tmp_path / f"{name}.pt"
        torch.save(sd, path)
        with pytest.raises(WeightsError, match="do not fit"):
            load_generator_for(resolve_weights(str(path)))


def test_load_state_dict_rejects_non_state_dicts(tmp_path):
    import torch

    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="state dict"):
        load_state_dict(resolve_weights(str(path)))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot load"):
        load_state_dict(resolve_weights(str(garbage)))
