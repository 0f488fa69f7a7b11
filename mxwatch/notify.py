"""Webhook notifications on the tenant transitions a person should hear about.

A cycle only hands transitions to `WebhookNotifier.submit`, which never waits: a bounded queue
feeds one background sender with a timeout and bounded retries, so a dead or slow webhook
can never delay or fail a cycle. The webhook URL is a secret (Slack and Teams put the key in
the path), so only its scheme and host are ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx

from . import __version__
from .logs import get_logger, register_secret
from .model import Transition
from .settings import NotifyConfig

log = get_logger("mxwatch.notify")

QUEUE_SIZE = 100  # transitions waiting to be sent; beyond that new ones are dropped (logged)
_BACKOFF = 1.0  # seconds before the first retry, doubled for each further one
_EMOJI = {"enabled": "✅", "regressed": "🚨", "blocked": "⛔", "waiting": "↩️"}


def is_notable(transition: Transition) -> bool:
    """Tenant moves to enabled, regressed, blocked, or back to waiting after being enabled."""
    if transition.domain is not None:
        return False
    if transition.to_state in ("enabled", "regressed", "blocked"):
        return True
    # enabled/regressed -> waiting: mxwatch (on_regression = "disable") or a person turned
    # the connector off again.
    return transition.to_state == "waiting" and transition.from_state in ("enabled", "regressed")


def safe_target(url: str) -> str:
    """scheme://host[:port] of a webhook URL: what may appear in a log line."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def summary(transition: Transition) -> str:
    was = transition.from_state or "new"
    return (
        f"mxwatch: tenant {transition.tenant} is now {transition.to_state} "
        f"(was {was}): {transition.reason}"
    )


def payload(transition: Transition, style: str) -> dict[str, Any]:
    """The JSON body for one transition in the configured format."""
    if style == "slack":
        # Slack incoming webhooks: "text" is required and is also the notification text.
        emoji = _EMOJI.get(transition.to_state, "")
        return {"text": f"{emoji} {summary(transition)}".strip()}
    if style == "teams":
        return _teams(transition)
    return {
        "event": "tenant_transition",
        "tenant": transition.tenant,
        "from": transition.from_state,
        "to": transition.to_state,
        "reason": transition.reason,
        "at": transition.at.isoformat().replace("+00:00", "Z"),
        "text": summary(transition),
    }


def _teams(transition: Transition) -> dict[str, Any]:
    # An Adaptive Card in a "message" envelope: the form both Teams incoming webhooks and
    # Workflows ("When a Teams webhook request is received") accept.
    facts = [
        {"title": "Tenant", "value": transition.tenant},
        {"title": "From", "value": transition.from_state or "new"},
        {"title": "To", "value": transition.to_state},
        {"title": "At", "value": transition.at.isoformat().replace("+00:00", "Z")},
    ]
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": summary(transition), "wrap": True, "weight": "Bolder"},
            {"type": "FactSet", "facts": facts},
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
        ],
    }


class WebhookNotifier:
    """Sends notable transitions to one webhook from a background task."""

    def __init__(self, config: NotifyConfig) -> None:
        if config.webhook is None:
            raise ValueError("WebhookNotifier needs notify.webhook")
        self.config = config
        self._url = config.webhook
        self._target = safe_target(self._url)
        # httpx and our own errors could echo the URL; the log renderer scrubs it everywhere.
        register_secret(self._url)
        path = urlsplit(self._url)._replace(scheme="", netloc="").geturl()
        register_secret(path)
        self._queue: asyncio.Queue[Transition] = asyncio.Queue(QUEUE_SIZE)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout.total_seconds()),
            headers={"User-Agent": f"mxwatch/{__version__}"},
            follow_redirects=False,  # a redirect would resend the body to a host nobody chose
        )
        self._worker: asyncio.Task[None] | None = None

    def submit(self, transitions: Iterable[Transition]) -> int:
        """Queue the notable ones without waiting; returns how many were queued."""
        queued = 0
        for transition in transitions:
            if not is_notable(transition):
                continue
            try:
                self._queue.put_nowait(transition)
            except asyncio.QueueFull:
                log.warning(
                    "notify_dropped",
                    webhook=self._target,
                    tenant=transition.tenant,
                    queue=QUEUE_SIZE,
                )
                continue
            queued += 1
        if queued and self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="mxwatch-notify")
        return queued

    async def aclose(self, grace: float) -> None:
        """Give queued notifications up to `grace` seconds, then stop and close."""
        if self._worker is not None:
            try:
                await asyncio.wait_for(self._queue.join(), grace)
            except TimeoutError:
                log.warning("notify_abandoned", webhook=self._target, pending=self._queue.qsize())
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            transition = await self._queue.get()
            try:
                await self._deliver(transition)
            finally:
                self._queue.task_done()

    async def _deliver(self, transition: Transition) -> None:
        body = payload(transition, self.config.format)
        attempts = 1 + self.config.retries
        problem = ""
        for attempt in range(1, attempts + 1):
            problem = await self._post(body)
            if not problem:
                log.info(
                    "notify_sent",
                    webhook=self._target,
                    tenant=transition.tenant,
                    to=transition.to_state,
                )
                return
            if attempt < attempts:
                await asyncio.sleep(_BACKOFF * 2 ** (attempt - 1))
        log.error(
            "notify_failed",
            webhook=self._target,
            tenant=transition.tenant,
            to=transition.to_state,
            attempts=attempts,
            error=problem,
        )

    async def _post(self, body: dict[str, Any]) -> str:
        """ "" on success, else what went wrong, without the URL."""
        try:
            response = await self._http.post(self._url, json=body)
        except httpx.TimeoutException:
            return f"no answer within {self.config.timeout.total_seconds():g}s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"  # the text may carry the URL
        if response.is_success:
            return ""
        return f"HTTP {response.status_code}"
