"""Built-in plugin ``audit``: every package event, kept in the record store's audit trail.

Each stored, overwritten, deleted or restored package adds one event with the
operator, the time and the sha256 of the bytes concerned; ``registry events``
lists them (through the record store, so any store plugin keeps them).
"""

from __future__ import annotations

from registry.events import PackageEvent
from registry.hookspecs import hookimpl
from registry.records import AuditEvent
from registry.service import Registry


def audit_event(event: PackageEvent) -> AuditEvent:
    """The audit-trail row of ``event``."""
    return AuditEvent(
        kind=event.kind, time=event.time, operator=event.operator, code=event.record.code,
        module=event.record.module, package_id=event.record.id, version=event.record.version,
        sha256=event.record.sha256, package_size=event.record.package_size, payload=event.to_json(),
    )


@hookimpl
async def registry_package_event(event: PackageEvent, registry: Registry) -> None:
    await registry.write(registry.records.add_event, audit_event(event))
