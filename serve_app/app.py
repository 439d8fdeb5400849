"""`build_app`: typed application arguments -> the bound Serve application.

`serve run serve_config.yaml` and `serve deploy` call it with the YAML's `args:`; Ray
validates them against :class:`AppConfig` because of the annotation.
"""

from __future__ import annotations

import logging

from ray.serve import Application

from serve_app.config import AppConfig, StyleConfig
from serve_app.ingress import Ingress
from serve_app.model.deployment import Stylizer
from serve_app.model.weights import is_random_digest, resolve_weights, weights_identity

logger = logging.getLogger(__name__)


def style_digest(style: StyleConfig, seed: int) -> str:
    """The identity of the weights a style must run (the model replicas report the same).

    Resolving downloads official weights that are not cached yet, so an offline deploy
    fails here, at once and with the message of ``weights.py``, rather than in replicas.
    """
    weights = resolve_weights(style.weights, seed=seed, progress=False)
    return weights_identity(weights, style.align_corners)


def build_app(args: AppConfig) -> Application:
    """The entry point of the serve configs; deployment knobs come from the YAML."""
    config = AppConfig.model_validate(args)
    digests = {style.name: style_digest(style, config.seed) for style in config.styles}
    for name, digest in digests.items():
        if is_random_digest(digest):
            logger.warning("style %r runs on RANDOM weights: its pictures are meaningless", name)
    return Ingress.bind(Stylizer.bind(config), config, digests)
