"""The package record as the platform's API shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from registry.records import Record

WIRE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def format_time(moment: datetime, zone: ZoneInfo) -> str:
    """A record's time as ``YYYY-MM-DD HH:MM:SS`` in ``zone``."""
    return moment.astimezone(zone).strftime(WIRE_TIME_FORMAT)


def record_json(record: Record, zone: ZoneInfo) -> dict[str, Any]:
    """The record's public JSON object: the contract's fields only (no blob
    key, origin or source URL), ``package_size`` as a string, times in ``zone``."""
    return {
        "id": record.id,
        "version": record.version,
        "package_name": record.package_name,
        "package_size": str(record.package_size),
        "sha256_signature": record.sha256,
        "is_deleted": record.is_deleted,
        "updated": format_time(record.updated, zone),
        "created": format_time(record.created, zone),
        "operator": record.operator,
    }
