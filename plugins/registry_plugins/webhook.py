"""Built-in plugin ``webhook``: POST each package event to configured URLs.

Off by default (``[webhooks] urls = []``). Events go through the record
store's outbox (:meth:`registry.store.RecordStore.add_outbox`): the change's
event is queued there right after the change is committed, before the request
answers, one delivery per URL; every serving instance with webhooks
configured drains the outbox, so a slow or dead receiver never delays an
upload, and an event raised on one instance may be delivered by another.

- Each delivery is claimed with a lease by one process at a time
  (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: an ``UPDATE … RETURNING``
  under the write lock), so it is delivered once in the normal case. A
  process that dies mid-attempt leaves its lease to lapse (``timeout`` plus
  :data:`LEASE_MARGIN` seconds); then another instance delivers it again: at
  least once.
- Each URL receives its events in order: a URL's next event waits while the
  one before is being delivered or backing off.
- Headers: ``X-Registry-Event-Id`` (the same for every URL and every retry of
  an event: receivers de-duplicate with it) and, with ``secret`` set,
  ``X-Registry-Signature: sha256=<hex HMAC of the body>``.
- Up to ``max_attempts`` tries per event and URL, ``timeout`` seconds each,
  with exponential back-off from :data:`FIRST_BACKOFF` seconds; a 2xx answer
  is success. After the last failed try the delivery is given up (``failed``
  in the outbox, logged). Finished deliveries are deleted after
  :data:`KEEP_FINISHED`.

The outbox names a URL by its sha256, never by the URL, which may carry
credentials. The URLs come from the operator's configuration, not from
clients, so they are not subject to the link-fetching policy. httpx is
imported only when webhooks are configured (it costs about 60 ms of start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from datetime import timedelta

import anyio

from registry.events import PackageEvent
from registry.hookspecs import hookimpl
from registry.leases import make_holder
from registry.records import Delivery, NewOutboxEvent, utc_now
from registry.redact import redact_url
from registry.service import Registry
from registry.settings import Setting, positive

logger = logging.getLogger("registry.webhook")
NAME = "webhook"
#: seconds before the second try of a delivery; doubled for each later one
FIRST_BACKOFF = 0.5
#: a claim lasts ``timeout`` plus this: time to record the attempt's outcome
LEASE_MARGIN = 5.0
#: how often an idle instance looks for deliveries queued elsewhere or due again
POLL_SECONDS = 0.5
#: how long shutdown goes on delivering what is pending (as the in-memory queue did)
DRAIN_SECONDS = 5.0
#: delivered and given-up deliveries are kept this long, then deleted
KEEP_FINISHED = timedelta(days=7)
#: how often the finished ones are looked for
EXPIRE_EVERY = 3600.0


def target_of(url: str) -> str:
    """The outbox's name for ``url``: its sha256, so no credential in it is stored."""
    return hashlib.sha256(url.encode()).hexdigest()


def backoff(failed_attempts: int) -> float:
    """Seconds to wait after the ``failed_attempts``-th failed try."""
    return float(FIRST_BACKOFF * 2 ** (failed_attempts - 1))


class OutboxDrainer:
    """This process's deliverer: claims due deliveries of its URLs, POSTs them,
    records the outcome. One background task; deliveries of different URLs
    run concurrently."""

    def __init__(self, registry: Registry, urls: list[str], max_attempts: int, timeout: float, secret: str) -> None:
        import httpx

        self.registry = registry
        self.urls = {target_of(url): url for url in urls}
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.secret = secret.encode()
        self.holder = make_holder()
        self.client = httpx.AsyncClient(timeout=timeout, trust_env=False)
        self.wake = anyio.Event()
        self._stop_by: float | None = None  # anyio.current_time() deadline once stopping
        self.task: asyncio.Task[None] | None = None
        self._unavailable_logged = False
        #: deliveries this process failed and will try again: id -> when (anyio.current_time())
        self._retries: dict[int, float] = {}

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="registry-webhooks")

    def notify(self) -> None:
        """An event was just queued here: look now instead of at the next poll."""
        self.wake.set()

    async def stop(self) -> None:
        """Go on delivering for up to :data:`DRAIN_SECONDS` while deliveries are
        due (claimable now, or this process's retries due within that time),
        then stop; claims still held are released for other instances, and
        what is left waits in the outbox for them or the next start."""
        self._stop_by = anyio.current_time() + DRAIN_SECONDS
        self.wake.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), DRAIN_SECONDS + 1)
            except TimeoutError:
                pass
            except Exception:
                logger.exception("the webhook deliverer failed")
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        try:
            await self.registry.write(self.registry.records.release_deliveries, self.holder)
        except Exception:  # their leases lapse instead
            logger.warning("could not release this process's webhook deliveries", exc_info=True)
        await self.client.aclose()

    async def _run(self) -> None:
        last_expiry = -EXPIRE_EVERY
        while True:
            try:
                batch = await self.registry.write(self.registry.records.claim_deliveries, self.holder,
                                                  self.timeout + LEASE_MARGIN, list(self.urls))
                if anyio.current_time() - last_expiry >= EXPIRE_EVERY:
                    last_expiry = anyio.current_time()
                    await self.registry.write(self.registry.records.expire_deliveries, utc_now() - KEEP_FINISHED)
                self._unavailable_logged = False
            except Exception as exc:  # noqa: BLE001 -- the database is down: try again at the next poll
                if not self._unavailable_logged:
                    logger.warning("webhook outbox unreadable, retrying: %s", exc)
                    self._unavailable_logged = True
                batch = []
            if batch:
                for delivery in batch:
                    self._retries.pop(delivery.id, None)
                async with anyio.create_task_group() as deliveries:
                    for delivery in batch:
                        deliveries.start_soon(self._deliver, delivery)
                continue
            if self._retries:  # a retry long overdue was taken by another instance
                stale = anyio.current_time() - 10 * POLL_SECONDS
                self._retries = {key: due for key, due in self._retries.items() if due > stale}
            if self._stop_by is not None and not any(due < self._stop_by for due in self._retries.values()):
                return  # nothing of ours is due before the drain ends (others' deliveries are theirs)
            with anyio.move_on_after(POLL_SECONDS):
                await self.wake.wait()
            if self.wake.is_set():
                self.wake = anyio.Event()

    async def _deliver(self, delivery: Delivery) -> None:
        url = self.urls[delivery.target]
        body = json.dumps(delivery.payload, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "X-Registry-Event-Id": delivery.event_id}
        if self.secret:
            digest = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            headers["X-Registry-Signature"] = f"sha256={digest}"
        problem = None
        try:
            # httpx's timeout bounds each read and write; this bounds the whole attempt
            with anyio.fail_after(self.timeout):
                response = await self.client.post(url, content=body, headers=headers)
            if not response.is_success:
                problem = f"HTTP {response.status_code}"
        except Exception as exc:  # noqa: BLE001 -- any failure of a delivery is retried, named
            problem = type(exc).__name__
        records = self.registry.records
        try:
            if problem is None:
                await self.registry.write(records.delivered, delivery.id, self.holder)
                return
            attempt = delivery.attempts + 1
            logger.warning("webhook %s attempt %d/%d of event %s failed: %s", redact_url(url), attempt,
                           self.max_attempts, delivery.event_id, problem)
            if attempt < self.max_attempts:
                wait = backoff(attempt)
                retry_at = utc_now() + timedelta(seconds=wait)
                if await self.registry.write(records.delivery_failed, delivery.id, self.holder, problem, retry_at):
                    self._retries[delivery.id] = anyio.current_time() + wait
                return
            await self.registry.write(records.delivery_failed, delivery.id, self.holder, problem, None)
            logger.error("webhook %s gave up after %d attempts of event %s", redact_url(url), self.max_attempts,
                         delivery.event_id)
        except Exception:
            # the outcome is lost: the lease lapses and the delivery is tried again
            logger.warning("could not record the outcome of webhook delivery %d", delivery.id, exc_info=True)


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
    if not urls:
        return None
    import httpx

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
        drainer = OutboxDrainer(registry, urls, registry.settings["webhooks.max_attempts"],
                                registry.settings["webhooks.timeout"], registry.settings["webhooks.secret"])
        drainer.start()
        registry.extensions[NAME] = drainer


@hookimpl
async def registry_package_event(event: PackageEvent, registry: Registry) -> None:
    """Queue the event in the outbox (awaited before the request answers, so
    an answered change's event is kept even if this process dies next)."""
    urls: list[str] = registry.settings["webhooks.urls"]
    if not urls:
        return
    queued = NewOutboxEvent(event_id=secrets.token_hex(16), targets=tuple(dict.fromkeys(map(target_of, urls))),
                            payload=event.to_json())
    await registry.write(registry.records.add_outbox, queued)
    drainer = registry.extensions.get(NAME)
    if drainer is not None:
        drainer.notify()


@hookimpl
async def registry_shutdown(registry: Registry) -> None:
    drainer = registry.extensions.pop(NAME, None)
    if drainer is not None:
        await drainer.stop()
