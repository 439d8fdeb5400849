"""The runtime choices of one model deployment, shared by its replicas: a named Ray actor.

One detached actor per Serve application and deployment (``runtime-choices-<app>-
<deployment>`` in the ``animegan`` namespace, where the result cache's shards live too),
holding a ``ChoiceTable``: {node class and settings: the published choice}. Detached, so
that a replica that scales in takes nobody's choice with it, and a redeploy with the same
settings keeps the choice, and with it the cache keys; a deploy with other weights,
precision or device decides anew (another key). Nothing here touches Ray at import time.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import ray
from ray import serve
from ray.actor import ActorHandle

CHOICES_NAMESPACE = "animegan"  # the project's actors' namespace (the result cache's too)
HEAD_NODE_RESOURCE = "node:__internal_head__"  # ray._common.constants.HEAD_NODE_RESOURCE_NAME
# A first call may wait for the actor's process to start on a busy head: generous, yet
# bounded, so that a board that cannot be placed only delays a replica's start.
BOARD_TIMEOUT_S = 30.0


class ChoiceTable:
    """Body of the board actor: {decision key: published choice}, set-if-absent (an actor
    runs one call at a time). Nothing heavy here: its process imports this module alone,
    not torch."""

    def __init__(self) -> None:
        self._choices: dict[str, dict[str, Any]] = {}

    def lookup(self, key: str) -> dict[str, Any] | None:
        return self._choices.get(key)

    def publish(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        return self._choices.setdefault(key, dict(record))

    def entries(self) -> dict[str, dict[str, Any]]:
        return dict(self._choices)


def board_name(app: str, deployment: str) -> str:
    return f"runtime-choices-{app}-{deployment}"


@functools.lru_cache(maxsize=1)
def _remote_choice_table() -> Any:
    # Built once, lazily: ray.remote() at import time would be a side effect.
    return ray.remote(ChoiceTable)


def get_or_create_board(name: str) -> ActorHandle:
    """The named detached board actor, created if it does not exist."""
    return (
        _remote_choice_table()
        .options(
            name=name,
            namespace=CHOICES_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            # On the head, as Serve places its controller: not on a node the autoscaler
            # may remove. A restart comes back empty: the next replica to start measures.
            resources={HEAD_NODE_RESOURCE: 0.001},
            max_restarts=-1,
        )
        .remote()
    )


class RayChoiceBoard:
    """A ``runtime_sharing.ChoiceBoard`` over the board actor (found or created on the
    first call; every call bounded by ``BOARD_TIMEOUT_S``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._handle: ActorHandle | None = None

    def open(self) -> None:
        """Find or create the actor now (without waiting for its process to start)."""
        if self._handle is None:
            self._handle = get_or_create_board(self.name)

    def lookup(self, key: str) -> Mapping[str, Any] | None:
        return self._call("lookup", key)

    def publish(self, key: str, record: Mapping[str, Any]) -> Mapping[str, Any]:
        return self._call("publish", key, dict(record))

    def _call(self, method: str, *args: Any) -> Any:
        self.open()
        return ray.get(getattr(self._handle, method).remote(*args), timeout=BOARD_TIMEOUT_S)


def replica_choice_board() -> RayChoiceBoard | None:
    """The board of the deployment this replica belongs to; None outside Serve."""
    try:
        context = serve.get_replica_context()
    except Exception:  # outside a Serve replica (unit tests, scripts): decide alone
        return None
    return RayChoiceBoard(board_name(context.app_name, context.deployment))
