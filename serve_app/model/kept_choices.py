"""The runtime choices a node's replicas made, kept on the node's disk.

The choice board (``choice_board.py``) lives as long as its Ray instance: a new one (a
`serve run` started again, a cluster restarted) or a board that restarted starts empty,
and its first replica of each node class would time the candidate runtimes again (seconds
of a cold start) and might choose another runtime than the replicas still running, whose
results the cache holds under the old one's keys. A replica that measured keeps its
node class's choice here; a replica that finds no choice on the board looks here first,
and publishes what it finds.

A JSON object {decision key: the published choice} in one file per node: best effort, a
file that cannot be read or written means measuring, with a warning. Deleting the file
makes the next start measure again. Two replicas keeping choices of different keys at the
same moment: the later file stands, and the other key is measured again at a later start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serve_app.model.weights import cache_home

logger = logging.getLogger(__name__)

KEPT_CHOICES_ENV = "ANIMEGAN_RUNTIME_CHOICES"


def kept_choices_path() -> Path:
    """``$ANIMEGAN_RUNTIME_CHOICES``, else ``runtime-choices.json`` in the service's cache
    directory (beside the weights' folder)."""
    override = os.environ.get(KEPT_CHOICES_ENV)
    return Path(override).expanduser() if override else cache_home() / "runtime-choices.json"


class KeptChoices:
    """The choices in one file (``lookup`` and ``keep`` as the board's)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lookup(self, key: str) -> Mapping[str, Any] | None:
        record = self._read().get(key)
        return record if isinstance(record, dict) else None

    def keep(self, key: str, record: Mapping[str, Any]) -> None:
        """Add or replace ``key``'s choice: the file is written whole and renamed into
        place, so a reader never sees half of it."""
        choices = {**self._read(), key: dict(record)}
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(choices, indent=1, sort_keys=True))
            os.replace(partial, self.path)
        except OSError as error:
            with contextlib.suppress(OSError):  # what a full disk left half written
                partial.unlink(missing_ok=True)
            logger.warning("runtime choice not kept in %s: %s", self.path, error)

    def _read(self) -> dict[str, Any]:
        try:
            choices = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            logger.warning("kept runtime choices unreadable (%s: %s): ignored", self.path, error)
            return {}
        return choices if isinstance(choices, dict) else {}
