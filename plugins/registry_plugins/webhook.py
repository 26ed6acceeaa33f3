"""Built-in plugin ``webhook``: POST each package event to configured URLs.

Off by default (``[webhooks] urls = []``). Events are queued and delivered by
one background task, so a slow or dead receiver never delays an upload. Each
URL gets up to ``max_attempts`` tries with exponential back-off; a 2xx answer
is success. With ``secret`` set, the body is signed:
``X-Registry-Signature: sha256=<hex HMAC of the body>``. The URLs come from
the operator's configuration, not from clients, so they are not subject to the
link-fetching policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from typing import Any

import httpx

from registry.events import PackageEvent
from registry.hookspecs import hookimpl
from registry.redact import redact_url
from registry.service import Registry
from registry.settings import Setting, positive

logger = logging.getLogger("registry.webhook")
NAME = "webhook"
QUEUE_SIZE = 10_000
FIRST_BACKOFF = 0.5


class WebhookSender:
    """The queue and the task that empties it."""

    def __init__(self, urls: list[str], max_attempts: int, timeout: float, secret: str) -> None:
        self.urls = urls
        self.max_attempts = max_attempts
        self.secret = secret.encode()
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_SIZE)
        self.client = httpx.AsyncClient(timeout=timeout, trust_env=False)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="registry-webhooks")

    def enqueue(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        try:
            self.queue.put_nowait(body)
        except asyncio.QueueFull:
            logger.error("webhook queue full; dropped %s event for package %s", payload["event"], payload["id"])

    async def stop(self, drain_seconds: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), drain_seconds)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.client.aclose()

    async def _run(self) -> None:
        while True:
            body = await self.queue.get()
            try:
                for url in self.urls:
                    await self._deliver(url, body)
            finally:
                self.queue.task_done()

    async def _deliver(self, url: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        if self.secret:
            digest = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            headers["X-Registry-Signature"] = f"sha256={digest}"
        delay = FIRST_BACKOFF
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = await self.client.post(url, content=body, headers=headers)
                if response.is_success:
                    return
                problem = f"HTTP {response.status_code}"
            except Exception as exc:
                problem = type(exc).__name__
            logger.warning("webhook %s attempt %d/%d failed: %s", redact_url(url), attempt, self.max_attempts, problem)
            if attempt < self.max_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        logger.error("webhook %s gave up after %d attempts", redact_url(url), self.max_attempts)


@hookimpl
def registry_settings() -> list[Setting]:
    return [
        Setting("webhooks.urls", "list[str]", [], "URLs that receive each package event as a JSON POST; empty: off.",
                check=_check_urls),
        Setting("webhooks.max_attempts", "int", 5, "Tries per event and URL, with exponential back-off.",
                check=positive),
        Setting("webhooks.timeout", "float", 10, "Seconds per delivery attempt.", check=positive),
        Setting("webhooks.secret", "str", "", "Key for the X-Registry-Signature HMAC header; empty: unsigned."),
    ]


def _check_urls(urls: list[str]) -> str | None:
    for url in urls:
        try:
            parsed = httpx.URL(url)
            usable = parsed.scheme in ("http", "https") and bool(parsed.host)  # .host decodes IDNA labels
        except (httpx.InvalidURL, UnicodeError, ValueError):
            usable = False
        if not usable:
            return f"{redact_url(url)!r} is not an http(s) URL"
    return None


@hookimpl
def registry_startup(registry: Registry) -> None:
    urls = registry.settings["webhooks.urls"]
    if urls:
        sender = WebhookSender(urls, registry.settings["webhooks.max_attempts"],
                               registry.settings["webhooks.timeout"], registry.settings["webhooks.secret"])
        sender.start()
        registry.extensions[NAME] = sender


@hookimpl
def registry_package_event(event: PackageEvent, registry: Registry) -> None:
    sender = registry.extensions.get(NAME)
    if sender is not None:
        sender.enqueue(event.to_json())


@hookimpl
async def registry_shutdown(registry: Registry) -> None:
    sender = registry.extensions.pop(NAME, None)
    if sender is not None:
        await sender.stop()
