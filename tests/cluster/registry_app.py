"""The real application plus test checkpoints registered as if they were official ones.

The official checkpoints cannot be downloaded here (no internet), and a registry entry is
what makes ``serve_app.weights`` download a file once per node under its file lock. The
multi-node test serves a random state dict from a local HTTP server and registers it here,
in every process that resolves weights: the build task (``build_app``) and each Stylizer
replica (``ClusterStylizer.__init__``, before the real ``Stylizer.__init__``). Nothing else
differs from ``serve_app.app:build_app``; the download, the lock and the SHA-1 check are
the real code.

Workers import this module by name (``tests.cluster.registry_app``): the test cluster's
nodes run with the repository root on ``PYTHONPATH``.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.app import style_digest
from serve_app.config import AppConfig
from serve_app.ingress import Ingress
from serve_app.model import weights
from serve_app.model.deployment import Stylizer

REGISTRY_ARG = "test_registry"


def register(entries: list[dict[str, Any]]) -> None:
    """Add ``{name, blob_sha1, align_corners}`` entries to this process's registry."""
    for entry in entries:
        weights.REGISTRY.setdefault(
            entry["name"],
            weights.OfficialWeights(entry["name"], entry["blob_sha1"], entry["align_corners"]),
        )


@serve.deployment(name="Stylizer")
class ClusterStylizer(Stylizer.func_or_class):
    def __init__(self, config: AppConfig, registry: list[dict[str, Any]]):
        register(registry)
        super().__init__(config)


def build_app(args: dict[str, Any]) -> Application:
    """``serve_app.app.build_app`` with one extra argument, ``test_registry``."""
    args = dict(args)
    registry = args.pop(REGISTRY_ARG, [])
    register(registry)
    config = AppConfig.model_validate(args)
    digests = {style.name: style_digest(style, config.seed) for style in config.styles}
    return Ingress.bind(ClusterStylizer.bind(config, registry), config, digests)
