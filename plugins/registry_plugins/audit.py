"""Built-in plugin ``audit``: every package event, kept in the record store's audit trail.

Each stored, overwritten, deleted or restored package adds one event with the
operator, the time and the sha256 of the bytes concerned; ``registry events``
lists them (through the record store, so any store plugin keeps them).

An event is in the trail before the request that raised it answers. Events
raised while an earlier batch is being written wait and go in together, in one
write transaction (:meth:`registry.store.RecordStore.add_events`): concurrent
small uploads would otherwise queue twice for the database's write lock, once
for their record and once for their event.
"""

from __future__ import annotations

import asyncio

from registry.events import PackageEvent
from registry.hookspecs import hookimpl
from registry.records import AuditEvent
from registry.service import Registry

#: The most events one write transaction takes; more wait for the next one.
MAX_BATCH = 256


def audit_event(event: PackageEvent) -> AuditEvent:
    """The audit-trail row of ``event``."""
    return AuditEvent(
        kind=event.kind, time=event.time, operator=event.operator, code=event.record.code,
        module=event.record.module, package_id=event.record.id, version=event.record.version,
        sha256=event.record.sha256, package_size=event.record.package_size, payload=event.to_json(),
    )


class EventWriter:
    """Group commit of one registry's audit events (one per serving process).

    :meth:`add` returns once its event is committed, or raises what the store
    raised for the batch it went in. The first event written while none is
    being written goes at once, alone: nothing waits for a batch to fill.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._waiting: list[tuple[AuditEvent, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def add(self, event: AuditEvent) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # retrieved here even when the request that waited is gone
        done.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._waiting.append((event, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        # a request cancelled meanwhile (its client left) does not take the batch with it
        await asyncio.shield(done)

    async def _write_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                await self._write(batch)
            except BaseException:  # the loop is going away: nobody waits forever
                for _, done in batch + self._waiting:
                    if not done.done():
                        done.cancel()
                self._waiting = []
                raise

    async def _write(self, batch: list[tuple[AuditEvent, asyncio.Future[None]]]) -> None:
        try:
            await self._registry.write(self._registry.records.add_events, [event for event, _ in batch])
        except Exception as exc:  # noqa: BLE001 -- handed to the callers waiting on the batch
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
            else:  # one event the store refuses must not cost the others theirs
                await self._write_one_by_one(batch)
        else:
            for _, done in batch:
                done.set_result(None)

    async def _write_one_by_one(self, batch: list[tuple[AuditEvent, asyncio.Future[None]]]) -> None:
        for event, done in batch:
            try:
                await self._registry.write(self._registry.records.add_event, event)
            except Exception as exc:  # noqa: BLE001 -- raised to the caller waiting on this event
                done.set_exception(exc)
            else:
                done.set_result(None)


@hookimpl
async def registry_package_event(event: PackageEvent, registry: Registry) -> None:
    writer = registry.extensions.get("audit")
    if not isinstance(writer, EventWriter):
        writer = registry.extensions["audit"] = EventWriter(registry)
    await writer.add(audit_event(event))
