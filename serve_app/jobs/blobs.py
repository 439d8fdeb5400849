"""Uploads and results of jobs, under one fsspec URL (a local folder, or object storage
on a cluster: ``s3://``, ``gs://``), one folder per job.

Each run of a job writes its result under a name of its own (``result-<attempt>``), and a
result counts only once the job's record names it: a runner that lost its job (cancelled,
taken over) never overwrites what another run wrote, and what it wrote is deleted by it
or, if it died, with the job's folder when the record expires.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from serve_app.errors import StoreError, StoreFull

logger = logging.getLogger(__name__)

UPLOAD = "upload"


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """OSErrors of the store as the service's errors: a full disk is StoreFull."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(f"the job store is full: {what} could not be written") from error
        raise StoreError(f"the job store failed while {what}: {error}") from error


class BlobStore:
    def __init__(self, url: str) -> None:
        self.url = url if "://" in url else os.path.expanduser(url)
        self._fs, self._root = fsspec.core.url_to_fs(self.url)
        self._fs.makedirs(self._root, exist_ok=True)
        self.local = isinstance(self._fs, LocalFileSystem)

    def local_root(self) -> Path | None:
        """The folder on this node, when the store is one (else None)."""
        return Path(self._root) if self.local else None

    def _path(self, job_id: str, name: str = "") -> str:
        return (
            posixpath.join(self._root, job_id, name) if name else posixpath.join(self._root, job_id)
        )

    def put(self, job_id: str, name: str, data: bytes) -> None:
        with store_errors(f"storing {name}"):
            self._fs.makedirs(self._path(job_id), exist_ok=True)
            path = self._path(job_id, name)
            # Aside, then moved: a reader never sees half a blob (an object store's put is
            # atomic already, and the move a copy).
            partial = f"{path}.{uuid.uuid4().hex}.partial"
            with self._fs.open(partial, "wb") as file:
                file.write(data)
            self._fs.mv(partial, path)

    def put_file(self, job_id: str, name: str, local: Path) -> None:
        with store_errors(f"storing {name}"):
            self._fs.makedirs(self._path(job_id), exist_ok=True)
            path = self._path(job_id, name)
            partial = f"{path}.{uuid.uuid4().hex}.partial"
            self._fs.put_file(str(local), partial)
            self._fs.mv(partial, path)

    def read(self, job_id: str, name: str) -> bytes:
        with self._fs.open(self._path(job_id, name), "rb") as file:
            return file.read()

    def read_range(self, job_id: str, name: str, start: int, length: int) -> bytes:
        with self._fs.open(self._path(job_id, name), "rb") as file:
            file.seek(start)
            return file.read(length)

    def size(self, job_id: str, name: str) -> int:
        return int(self._fs.size(self._path(job_id, name)))

    def local_path(self, job_id: str, name: str) -> Path:
        """Where a blob is on this node (a local store only)."""
        if not self.local:
            raise ValueError("the job store is not on this node")
        return Path(self._path(job_id, name))

    def fetch(self, job_id: str, name: str, dest: Path) -> None:
        """A blob copied to a file on this node (object storage)."""
        with store_errors(f"fetching {name}"):
            self._fs.get_file(self._path(job_id, name), str(dest))

    def copy(self, source_job: str, source_name: str, job_id: str, name: str) -> None:
        with store_errors(f"copying {source_name}"):
            self._fs.makedirs(self._path(job_id), exist_ok=True)
            self._fs.copy(self._path(source_job, source_name), self._path(job_id, name))

    def delete(self, job_id: str, name: str | None = None) -> bool:
        """A blob, or the job's whole folder; nothing there is fine. False when it is
        still there (logged): the sweep keeps the job's record and tries again."""
        path = self._path(job_id, name or "")
        try:
            self._fs.rm(path, recursive=name is None)
        except FileNotFoundError:
            return True
        except OSError as error:  # a runner writing into it meanwhile
            logger.warning("job %s: %s not deleted yet: %s", job_id, name or "folder", error)
            return False
        return True
