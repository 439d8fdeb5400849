"""Generator weights: the official checkpoints, their download and cache, local files, ``random``.

A weights *spec* is what a user writes in the config or on the command line:

- a registry name (``face_paint_512_v2``, ``paprika``, ...): the official checkpoint,
  downloaded once per node into :func:`weights_dir` and checked against its git blob SHA-1;
- a local path (contains a ``/`` or ends in ``.pt``/``.pth``): used as is;
- ``random``: a seeded, untrained generator (same compute, meaningless picture).

Nothing here runs at import time; nothing here prints (progress bars go to stderr via tqdm).

Longer than most modules, on purpose: a verified download is one job, and most of it is
its failure handling (partial files, a lock per node, resumes, wrong bytes, timeouts).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

if TYPE_CHECKING:
    import torch

    from serve_app.model.generator import Generator

logger = logging.getLogger(__name__)

RANDOM = "random"
RANDOM_DIGEST_PREFIX = "random-seed"
DEFAULT_BASE_URL = "https://github.com/bryandlee/animegan2-pytorch/raw/main/weights"
WEIGHTS_DIR_ENV = "ANIMEGAN_WEIGHTS_DIR"
WEIGHTS_URL_ENV = "ANIMEGAN_WEIGHTS_URL"
WEIGHTS_MAX_BYTES_ENV = "ANIMEGAN_WEIGHTS_MAX_BYTES"
WEIGHTS_LOCK_TIMEOUT_ENV = "ANIMEGAN_WEIGHTS_LOCK_TIMEOUT_S"

# The official checkpoints are about 8.6 MB each; a mirror or proxy that sends far more
# is broken or hostile, and an unbounded body would fill the disk of every node.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Long enough for another replica to finish a slow download of ~8.6 MB; short enough
# that a lock left by a wedged process surfaces as an error instead of a silent hang.
DEFAULT_LOCK_TIMEOUT_S = 300.0
# The checkpoints are public data and the directory may be shared by several users
# (one cache per node): everyone reads the files, and anyone may wait on the lock.
_FILE_MODE = 0o644
_DIR_MODE = 0o755
_LOCK_MODE = 0o666

_CHUNK = 1 << 16
_LOCAL_SUFFIXES = (".pt", ".pth")


class WeightsError(RuntimeError):
    """Weights could not be found, fetched, verified or loaded; the message says what to do."""


@dataclass(frozen=True)
class OfficialWeights:
    """One official AnimeGANv2 PyTorch checkpoint."""

    name: str
    blob_sha1: str  # git blob SHA-1 of the file's exact bytes
    align_corners: bool  # the upsampling mode the reference scripts use for this style

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"

    def url(self, base_url: str | None = None) -> str:
        """The download URL under ``base_url`` (default: the env override, else GitHub)."""
        base = base_url if base_url is not None else weights_base_url()
        return f"{base.rstrip('/')}/{self.filename}"


REGISTRY: dict[str, OfficialWeights] = {
    w.name: w
    for w in (
        OfficialWeights("face_paint_512_v2", "d75102f8f201ddaf8dbe6b913b1a97585b55f838", True),
        OfficialWeights("face_paint_512_v1", "19c1a1da4d9580186109a2b055d91044e5127de6", True),
        OfficialWeights("celeba_distill", "3b7ea61b02254980831cc3bc77af30666dbc999c", True),
        OfficialWeights("paprika", "58086c9db9fc7a9e5c2876ca31b8079599352643", False),
    )
}


# --- locations ---------------------------------------------------------------------


def weights_dir() -> Path:
    """The cache directory (not created here).

    ``$ANIMEGAN_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/animegan-serve/weights``,
    else ``~/.cache/animegan-serve/weights``.
    """
    override = os.environ.get(WEIGHTS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return cache_home() / "weights"


def cache_home() -> Path:
    """What the service keeps on a node: ``$XDG_CACHE_HOME/animegan-serve``, else
    ``~/.cache/animegan-serve`` (not created here)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "animegan-serve"


def weights_base_url() -> str:
    """``$ANIMEGAN_WEIGHTS_URL`` (a mirror) or the official GitHub location."""
    return os.environ.get(WEIGHTS_URL_ENV) or DEFAULT_BASE_URL


def max_download_bytes() -> int:
    """``$ANIMEGAN_WEIGHTS_MAX_BYTES`` or :data:`DEFAULT_MAX_BYTES`: the cap on one download."""
    raw = os.environ.get(WEIGHTS_MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise WeightsError(
            f"{WEIGHTS_MAX_BYTES_ENV}={raw!r} is not a positive whole number of bytes "
            f"(unset it for the default, {DEFAULT_MAX_BYTES})"
        )
    return value


def download_lock_timeout_s() -> float:
    """``$ANIMEGAN_WEIGHTS_LOCK_TIMEOUT_S`` or :data:`DEFAULT_LOCK_TIMEOUT_S`."""
    raw = os.environ.get(WEIGHTS_LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise WeightsError(
            f"{WEIGHTS_LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds >= 0 "
            f"(unset it for the default, {DEFAULT_LOCK_TIMEOUT_S:g})"
        )
    return value


def cached_path(name: str) -> Path:
    """Where the registry checkpoint ``name`` lives (or will live) in the cache."""
    return weights_dir() / _official(name).filename


# --- integrity ------------------------------------------------------------------------


def git_blob_sha1(data: bytes) -> str:
    """The git blob SHA-1 of ``data`` (what ``git hash-object`` prints)."""
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def git_blob_sha1_file(path: str | os.PathLike[str]) -> str:
    """:func:`git_blob_sha1` of a file, streamed."""
    path = Path(path)
    with path.open("rb") as f:
        return _git_blob_sha1_stream(f, os.fstat(f.fileno()).st_size)


def _git_blob_sha1_stream(f: BinaryIO, size: int) -> str:
    h = hashlib.sha1(b"blob %d\0" % size)
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _matches(path: Path, sha1: str) -> bool:
    try:
        return git_blob_sha1_file(path) == sha1
    except OSError:
        return False


# --- resolution -----------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedWeights:
    """A spec turned into something loadable."""

    spec: str  # what the user wrote
    kind: Literal["registry", "path", "random"]
    path: Path | None
    digest: str  # git blob SHA-1 of the file, or "random-seed<N>"
    align_corners: bool | None  # the registry's per-style default; None for path/random
    seed: int = 0  # the seed of a random generator (unused otherwise)

    @property
    def is_random(self) -> bool:
        return self.kind == "random"


def weights_identity(weights: ResolvedWeights, align_corners: bool | None) -> str:
    """What identifies a style's output function: the weights' bytes and the upsampling mode."""
    if align_corners is None:
        align_corners = True if weights.align_corners is None else weights.align_corners
    return f"{weights.digest}:align_corners={align_corners}"


def is_random_digest(digest: str) -> bool:
    """Whether a weights digest (see ResolvedWeights.digest) names untrained weights."""
    return digest.startswith(RANDOM_DIGEST_PREFIX)


def is_path_spec(spec: str) -> bool:
    """A spec names a local file when it contains a path separator or ends in .pt/.pth."""
    return "/" in spec or os.sep in spec or spec.lower().endswith(_LOCAL_SUFFIXES)


def resolve_weights(
    spec: str,
    *,
    download: bool = True,
    seed: int = 0,
    timeout_s: float = 10.0,
    progress: bool = True,
    max_bytes: int | None = None,
    lock_timeout_s: float | None = None,
) -> ResolvedWeights:
    """Turn a weights spec into a verified local file (downloading an official one if needed).

    Registry checkpoints are reused from the cache when their SHA-1 matches; a cached file
    that does not match is downloaded again. With ``download=False`` a missing or corrupt
    cached file is a :class:`WeightsError` instead. ``max_bytes`` and ``lock_timeout_s``:
    see :func:`download_weights`.
    """
    spec = spec.strip()
    if spec == RANDOM:
        digest = f"{RANDOM_DIGEST_PREFIX}{seed}"
        return ResolvedWeights(spec, "random", None, digest, None, seed=seed)

    if spec in REGISTRY:
        official = REGISTRY[spec]
        path = cached_path(spec)
        if path.is_file():
            if _matches(path, official.blob_sha1):
                logger.debug("weights %s: using cached %s", spec, path)
                return ResolvedWeights(
                    spec, "registry", path, official.blob_sha1, official.align_corners
                )
            logger.warning(
                "weights %s: cached file %s does not match SHA-1 %s; downloading it again",
                spec,
                path,
                official.blob_sha1,
            )
        if not download:
            raise WeightsError(
                f"weights {spec!r} are not in the cache and download is disabled.\n"
                + _hand_placement_hint(official, path)
            )
        path = download_weights(
            spec,
            timeout_s=timeout_s,
            progress=progress,
            max_bytes=max_bytes,
            lock_timeout_s=lock_timeout_s,
        )
        return ResolvedWeights(spec, "registry", path, official.blob_sha1, official.align_corners)

    if is_path_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {str(path)!r} does not exist (or is not a file)")
        try:
            digest = git_blob_sha1_file(path)
        except OSError as exc:
            raise WeightsError(f"weights file {str(path)!r} cannot be read: {exc}") from exc
        return ResolvedWeights(spec, "path", path.resolve(), digest, None)

    known = ", ".join([*REGISTRY, RANDOM])
    raise WeightsError(
        f"unknown weights {spec!r}: use one of {known}, or a path to a .pt/.pth state dict"
    )


def _official(name: str) -> OfficialWeights:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(REGISTRY)
        raise WeightsError(f"{name!r} is not an official style; known: {known}") from None


def _hand_placement_hint(official: OfficialWeights, path: Path) -> str:
    return (
        f"To install it by hand, download {official.url()} elsewhere and place it at\n"
        f"  {path}\n"
        f"(expected git blob SHA-1 {official.blob_sha1}; "
        f"`{WEIGHTS_DIR_ENV}` changes the directory, `{WEIGHTS_URL_ENV}` the mirror).\n"
        f"Offline, `weights: {RANDOM}` (or `--style {RANDOM}`) runs an untrained generator: "
        "same compute, meaningless picture."
    )


# --- download -------------------------------------------------------------------------


def download_weights(
    name: str,
    *,
    timeout_s: float = 10.0,
    progress: bool = True,
    max_bytes: int | None = None,
    lock_timeout_s: float | None = None,
) -> Path:
    """Download the official checkpoint ``name`` into the cache and return its path.

    One download per node: a file lock next to the file makes concurrent callers wait,
    after which they find the verified file. The bytes stream into a temporary file in
    the same directory and are renamed into place only once their SHA-1 matches; on any
    failure the temporary file is removed and a :class:`WeightsError` explains what to do.
    ``timeout_s`` bounds connecting and each wait for data.

    ``max_bytes`` (default ``$ANIMEGAN_WEIGHTS_MAX_BYTES``, else 64 MiB) caps the body: a
    larger declared ``Content-Length`` is refused before reading, and a body without one
    is cut off as soon as it passes the cap. ``lock_timeout_s`` (default
    ``$ANIMEGAN_WEIGHTS_LOCK_TIMEOUT_S``, else 300 s) bounds the wait for another
    process's download. The file is left readable by every user (0o644), as are the
    directories created for it (0o755); the lock file is 0o666 so that other users of a
    shared directory can take it too.
    """
    from filelock import FileLock, Timeout  # imported here: keeps import of this module cheap

    official = _official(name)
    cap = max_download_bytes() if max_bytes is None else max_bytes
    if cap <= 0:
        raise WeightsError(f"max_bytes must be positive, not {cap}")
    wait_s = download_lock_timeout_s() if lock_timeout_s is None else lock_timeout_s
    directory = weights_dir()
    path = directory / official.filename
    url = official.url()
    try:
        _make_shared_dirs(directory)
    except OSError as exc:
        raise WeightsError(
            f"cannot create the weights directory {directory}: {exc}\n"
            + _hand_placement_hint(official, path)
        ) from exc

    lock_path = directory / f"{official.filename}.lock"
    lock = FileLock(str(lock_path), timeout=wait_s, mode=_LOCK_MODE)
    try:
        lock.acquire()
    except Timeout:
        raise WeightsError(
            f"weights {name!r}: gave up after {wait_s:g} s waiting for the lock {lock_path}.\n"
            "Another process holds it, most likely downloading this checkpoint: wait for it "
            f"to finish, or raise {WEIGHTS_LOCK_TIMEOUT_ENV}. If no process using this "
            f"weights directory is alive, the lock is stale: remove {lock_path} and try "
            "again.\n" + _hand_placement_hint(official, path)
        ) from None
    except OSError as exc:
        raise WeightsError(
            f"weights {name!r}: cannot open the lock file {lock_path}: {exc}\n"
            + _hand_placement_hint(official, path)
        ) from exc
    try:
        if path.is_file() and _matches(path, official.blob_sha1):
            logger.info("weights %s: %s already downloaded", name, path)
            return path
        _download_verified(
            official, url, path, timeout_s=timeout_s, progress=progress, max_bytes=cap
        )
    finally:
        lock.release()
    return path


def _make_shared_dirs(directory: Path) -> None:
    """``mkdir -p`` that leaves the directories it creates readable by everyone.

    Only the directories created here are changed: an existing one keeps the mode its
    owner chose. The chmod is explicit because a restrictive umask (077) would otherwise
    hide the cache from the other users of a node.
    """
    missing: list[Path] = []
    current = directory
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    directory.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        with contextlib.suppress(OSError):  # created concurrently by another user: theirs
            os.chmod(created, _DIR_MODE)


class _TooLarge(Exception):
    """The body is over the download cap (raised before the excess is written)."""


def _download_verified(
    official: OfficialWeights,
    url: str,
    path: Path,
    *,
    timeout_s: float,
    progress: bool,
    max_bytes: int,
) -> None:
    logger.info("weights %s: downloading %s", official.name, url)
    started = time.monotonic()
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{official.filename}.", suffix=".part", dir=path.parent
        )
    except OSError as exc:
        raise WeightsError(
            f"cannot write into the weights directory {path.parent}: {exc}\n"
            + _hand_placement_hint(official, path)
        ) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            # mkstemp creates 0o600; the checkpoint is public and the cache may be shared.
            try:
                os.fchmod(out.fileno(), _FILE_MODE)
            except OSError as exc:  # some network filesystems refuse; the file still works
                logger.warning("weights %s: cannot chmod %s: %s", official.name, tmp, exc)
            try:
                size = _stream(
                    official, url, out, timeout_s=timeout_s, progress=progress, max_bytes=max_bytes
                )
            except _TooLarge as exc:
                raise WeightsError(
                    f"download of weights {official.name!r} from {url} aborted: {exc}, "
                    f"over the cap of {max_bytes} bytes (the official checkpoints are about "
                    f"8.6 MB; {WEIGHTS_MAX_BYTES_ENV} sets the cap). The partial file was "
                    "removed.\n" + _hand_placement_hint(official, path)
                ) from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise WeightsError(
                    f"could not download weights {official.name!r} from {url}: {_describe(exc)}\n"
                    + _hand_placement_hint(official, path)
                ) from exc
        digest = git_blob_sha1_file(tmp)  # the blob header holds the size: hash once complete
        if digest != official.blob_sha1:
            raise WeightsError(
                f"downloaded weights {official.name!r} from {url} do not match: "
                f"git blob SHA-1 {digest} ({size} bytes), expected {official.blob_sha1}. "
                "The file was discarded.\n" + _hand_placement_hint(official, path)
            )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    logger.info(
        "weights %s: %d bytes verified in %.1f s -> %s",
        official.name,
        size,
        time.monotonic() - started,
        path,
    )


def _stream(
    official: OfficialWeights,
    url: str,
    out: BinaryIO,
    *,
    timeout_s: float,
    progress: bool,
    max_bytes: int,
) -> int:
    """Copy ``url`` into ``out``; return the number of bytes. Never writes past ``max_bytes``."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "animegan-serve"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        length_header = response.headers.get("Content-Length")
        total = int(length_header) if length_header and length_header.isdigit() else None
        if total is not None and total > max_bytes:
            raise _TooLarge(f"the server declared {total} bytes")
        size = 0
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=official.name,
            disable=not (progress and sys.stderr.isatty()),
            leave=False,
        ) as bar:
            while chunk := response.read(_CHUNK):
                # Counted here, not trusted from the header: it may be absent or wrong.
                if size + len(chunk) > max_bytes:
                    raise _TooLarge(f"the server sent more than {max_bytes} bytes")
                out.write(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        if total is not None and size != total:
            raise http.client.IncompleteRead(b"", total - size)
    return size


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return "timed out"
        return str(reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


# --- loading --------------------------------------------------------------------------


def load_state_dict(resolved: ResolvedWeights) -> dict[str, torch.Tensor] | None:
    """The state dict of a resolved weights file (on the CPU), or None for ``random``.

    Loads with ``weights_only=True`` (no arbitrary pickles). A ``{"state_dict": {...}}``
    wrapper is unwrapped.
    """
    import torch

    if resolved.is_random:
        return None
    assert resolved.path is not None
    try:
        obj = torch.load(resolved.path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"cannot load weights {resolved.spec!r} from {resolved.path}: {exc}"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"weights {resolved.spec!r} ({resolved.path}) do not hold a state dict of tensors"
        )
    return obj


def load_generator_for(resolved: ResolvedWeights, align_corners: bool | None = None) -> Generator:
    """A generator with the resolved weights (every key must match).

    ``align_corners``: the explicit argument, else the registry's per-style default, else True.
    """
    from serve_app.model import generator as model

    align = align_corners if align_corners is not None else resolved.align_corners
    align = True if align is None else align
    if resolved.is_random:
        logger.warning(
            "RANDOM WEIGHTS: output is meaningless (untrained generator, seed %d, spec %r); "
            "for tests and benchmarks only",
            resolved.seed,
            resolved.spec,
        )
        return model.random_generator(resolved.seed, align)
    state_dict = load_state_dict(resolved)
    assert state_dict is not None
    try:
        return model.load_generator(state_dict, align)
    except RuntimeError as exc:
        raise WeightsError(
            f"weights {resolved.spec!r} ({resolved.path}) do not fit the AnimeGANv2 "
            f"generator: {exc}"
        ) from exc
