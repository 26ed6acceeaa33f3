"""Package events, delivered to every ``registry_package_event`` implementation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from registry.hooks import call_hook
from registry.records import Record

if TYPE_CHECKING:
    from registry.service import Registry

logger = logging.getLogger("registry.events")

STORED = "stored"
OVERWRITTEN = "overwritten"
DELETED = "deleted"
RESTORED = "restored"


@dataclass(frozen=True)
class PackageEvent:
    """Something happened to a package record.

    :param kind: ``stored``, ``overwritten``, ``deleted`` or ``restored``.
    :param record: the record after the change.
    :param operator: who made the change.
    :param time: when, in UTC.
    """

    kind: str
    record: Record
    operator: str
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        """The event as webhooks and the audit log see it."""
        return {
            "event": self.kind,
            "time": self.time.isoformat(timespec="seconds"),
            "operator": self.operator,
            "application": self.record.code,
            "module": self.record.module,
            "id": self.record.id,
            "version": self.record.version,
            "package_name": self.record.package_name,
            "package_size": self.record.package_size,
            "sha256": self.record.sha256,
        }


async def dispatch(registry: Registry, event: PackageEvent) -> None:
    """Call each implementation in turn; one that fails is logged and skipped."""
    await call_hook(registry.pm.hook.registry_package_event, {"event": event, "registry": registry},
                    on_error="log", what=f"{event.kind} of package {event.record.id}")
