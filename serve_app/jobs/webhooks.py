"""Webhooks: a job's submitter hears when it runs and ends, signed the Standard Webhooks way.

Each delivery is a JSON POST with the headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` (``v1,`` + base64 of HMAC-SHA256 over ``id.timestamp.body`` with the
service's secret), so receivers verify it with any Standard Webhooks library. A delivery
that fails (no answer, a non-2xx status) is tried again with growing waits, up to
``webhooks.attempts`` times; its status is kept in the job (``webhook.deliveries``).

Destinations come only from the configured allow-list: a URL outside it is refused at
submission (422), and redirects are never followed, so a webhook cannot make the cluster
request anything else.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlsplit

import httpx

from serve_app.config import WebhookConfig
from serve_app.errors import WebhookRefused
from serve_app.jobs.records import JobRecord, WebhookDelivery, WebhookInfo

logger = logging.getLogger(__name__)

WEBHOOK_EVENTS = ("running", "done", "failed", "cancelled")
DEFAULT_EVENTS = ("done", "failed", "cancelled")
MAX_URL_CHARS = 2048
SECRET_PREFIX = "whsec_"

SaveDelivery = Callable[[str, WebhookDelivery], Awaitable[None]]
"""(job id, one event's delivery) -> its status stored in the job's record."""


def signing_key(secret: str) -> bytes:
    """Standard Webhooks secrets are ``whsec_`` + base64; any other string is used as is."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX) :])
    return secret.encode()


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def _origin(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)  # raises for a malformed bracketed host, or one NFKC changes
    except ValueError as error:
        raise WebhookRefused(f"webhook {url[:200]!r}: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused(f"webhook {url[:200]!r}: only http(s) URLs are taken")
    if parts.username or parts.password:
        raise WebhookRefused("webhook URLs may not carry credentials")
    default = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default
    except ValueError as error:
        raise WebhookRefused(f"webhook {url[:200]!r}: {error}") from None
    # A dot segment, even percent-encoded, leaves the prefix it is written under once the
    # client (or the receiving server) resolves it: /allowed/../admin is /admin.
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        raise WebhookRefused(f"webhook {url[:200]!r}: a path may not hold . or .. segments")
    return parts.scheme, parts.hostname.lower(), port, parts.path or "/"


class Webhooks:
    """Checks webhook URLs at submission and delivers events in the background."""

    def __init__(self, config: WebhookConfig, save: SaveDelivery) -> None:
        self._config = config
        self._save = save
        self._allowed = [_origin(prefix) for prefix in config.allow]
        secret = os.environ.get(config.secret_env, "")
        self._key = signing_key(secret) if secret else None
        self._tasks: set[asyncio.Task] = set()

    def check(self, url: str | None, events: str | None) -> WebhookInfo | None:
        """The webhook a submission asks for, or WebhookRefused (422)."""
        if not url:
            return None  # (webhook_events alone: nothing to tell, nobody to tell it to)
        if len(url) > MAX_URL_CHARS:
            raise WebhookRefused(f"webhook URLs are at most {MAX_URL_CHARS} characters")
        scheme, host, port, path = _origin(url)
        if not any(
            (scheme, host, port) == allowed[:3] and path.startswith(allowed[3])
            for allowed in self._allowed
        ):
            where = (
                "no webhook destinations are configured"
                if not self._allowed
                else ("it is not under any of the allowed destinations (jobs.webhooks.allow)")
            )
            raise WebhookRefused(f"webhook {url[:200]!r} refused: {where}")
        wanted = [e.strip() for e in (events or ",".join(DEFAULT_EVENTS)).split(",") if e.strip()]
        unknown = sorted(set(wanted) - set(WEBHOOK_EVENTS))
        if unknown or not wanted:
            raise WebhookRefused(f"webhook_events must be some of {list(WEBHOOK_EVENTS)}")
        return WebhookInfo(url=url, events=sorted(set(wanted), key=WEBHOOK_EVENTS.index))

    def notify(self, record: JobRecord, view: dict) -> None:
        """The job reached ``record.state``: deliver it if its webhook asked for it."""
        webhook = record.webhook
        if webhook is None or record.state not in webhook.events:
            return
        task = asyncio.ensure_future(self._deliver(record.id, webhook, record.state, view))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job_id: str, webhook: WebhookInfo, event: str, view: dict) -> None:
        delivery = WebhookDelivery(event=event, status="pending")
        message_id = f"msg_{uuid.uuid4().hex}"
        body = json.dumps(
            {"type": f"job.{event}", "timestamp": time.time(), "data": view},
            separators=(",", ":"),
        ).encode()
        wait_s = self._config.first_retry_s
        async with httpx.AsyncClient(
            timeout=self._config.timeout_s, follow_redirects=False
        ) as client:
            for attempt in range(1, self._config.attempts + 1):
                delivery.attempts = attempt
                try:
                    response = await client.post(
                        webhook.url, content=body, headers=self._headers(message_id, body)
                    )
                    delivery.last_status, delivery.last_error = response.status_code, None
                    if response.is_success:
                        delivery.status, delivery.delivered_at = "delivered", time.time()
                        break
                except httpx.HTTPError as error:
                    delivery.last_error = f"{type(error).__name__}: {error}"[:200]
                if attempt == self._config.attempts:
                    delivery.status = "failed"
                    break
                await self._save_quietly(job_id, delivery)
                await asyncio.sleep(wait_s)
                wait_s *= 2
        await self._save_quietly(job_id, delivery)
        logger.info("job %s: webhook %s %s", job_id, event, delivery.status)

    def _headers(self, message_id: str, body: bytes) -> dict[str, str]:
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, message_id, timestamp, body)
        return headers

    async def _save_quietly(self, job_id: str, delivery: WebhookDelivery) -> None:
        try:
            await self._save(job_id, delivery.model_copy())
        except Exception as error:  # the status is a courtesy; the delivery goes on
            logger.warning("job %s: webhook status not saved: %s", job_id, error)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
