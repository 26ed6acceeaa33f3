"""Package events, delivered to every ``registry_package_event`` implementation."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pluggy

from registry.records import Record

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
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


async def dispatch(pm: pluggy.PluginManager, event: PackageEvent) -> None:
    """Call each implementation in turn; one that fails is logged and skipped."""
    for impl in reversed(pm.hook.registry_package_event.get_hookimpls()):
        try:
            result = impl.function(event=event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("event hook %s failed for %s of package %s", impl.plugin_name, event.kind, event.record.id)
