"""The batch route's answer: each picture, or its error, in one JSON body."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence

from serve_app.errors import ServiceError
from serve_app.pipeline.results import StylizeResult

logger = logging.getLogger(__name__)


def batch_item(index: int, outcome: StylizeResult | BaseException) -> dict:
    """One entry of a batch answer: the picture (base64) or its error, with what the single
    route would have said in its headers (style, ETag, random weights, Retry-After)."""
    if isinstance(outcome, StylizeResult):
        return {
            "index": index,
            "status": 200,
            "media_type": outcome.media_type,
            "cache": outcome.cache,
            "style": outcome.style,
            "etag": f'"{outcome.key}"',
            "random_weights": outcome.random_weights,
            "width": outcome.width,
            "height": outcome.height,
            "data": base64.b64encode(outcome.data).decode("ascii"),
        }
    if not isinstance(outcome, ServiceError):
        logger.error("batch item %d failed", index, exc_info=outcome)
        outcome = ServiceError()
    item = {"index": index, "status": outcome.status, **outcome.to_dict()}
    if outcome.retry_after_s is not None:
        item["retry_after_s"] = outcome.retry_after_s
    return item


def batch_body(outcomes: Sequence[StylizeResult | BaseException]) -> bytes:
    """The batch answer as JSON bytes (base64 of megabytes: run it off the event loop)."""
    results = [batch_item(index, outcome) for index, outcome in enumerate(outcomes)]
    return json.dumps({"results": results}, separators=(",", ":")).encode()
