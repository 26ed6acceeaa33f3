"""The opaque ``cursor`` of a listing's ``next`` and ``previous`` links (keyset pages).

A cursor names a position in one ordering: the ``order_by`` it belongs to,
the direction to read, and the key (sort value and id) of the record just
outside the page, or no key for the first page (forward) or the last page
(backward). It is URL-safe base64 of a small JSON array; clients never look
inside, they follow the links as they are. Anything that does not decode to
a position in the request's ``order_by`` is a 400 on ``cursor``, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime

from registry.errors import ValidationError
from registry.records import Order, PageKey, Record

#: A cursor longer than this is not one of ours.
MAX_CURSOR = 512


@dataclass(frozen=True)
class Position:
    """Where a keyset page starts: after ``key`` (or before it, ``backward``)."""

    key: PageKey | None
    backward: bool


def encode(order: Order, key: PageKey | None, backward: bool) -> str:
    """The cursor of a page read from ``key`` in ``order``'s direction (or against it)."""
    value: str | int | None = None
    if key is not None:
        value = key.value.isoformat() if isinstance(key.value, datetime) else key.value
    raw = json.dumps([order.value, int(backward), value, key.id if key else None], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def after(order: Order, record: Record) -> str:
    """The cursor of the page that follows ``record``."""
    return encode(order, PageKey.of(record, order), backward=False)


def before(order: Order, record: Record) -> str:
    """The cursor of the page that precedes ``record``."""
    return encode(order, PageKey.of(record, order), backward=True)


def _invalid() -> ValidationError:
    return ValidationError.single("cursor", "无效的分页游标，请使用 next/previous 链接",
                                  "not a valid page cursor: follow the next/previous links as they are")


def decode(cursor: str, order: Order) -> Position:
    """The position a cursor names, checked against the request's ``order``.

    :raises ValidationError: malformed, or made for another ``order_by``.
    """
    if len(cursor) > MAX_CURSOR or not cursor.isascii():
        raise _invalid()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        order_value, backward, value, record_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise _invalid() from None
    if order_value != order.value or backward not in (0, 1):
        raise _invalid()
    if value is None and record_id is None:
        return Position(None, bool(backward))
    if type(record_id) is not int or not 0 <= record_id < 2**63:
        raise _invalid()
    typed: datetime | str | int
    if order.column in ("created", "updated"):
        if not isinstance(value, str):
            raise _invalid()
        try:
            typed = datetime.fromisoformat(value)
        except ValueError:
            raise _invalid() from None
        if typed.tzinfo is None:
            raise _invalid()
    elif order.column == "package_size":
        if type(value) is not int or not 0 <= value < 2**63:
            raise _invalid()
        typed = value
    else:
        if not isinstance(value, str) or "\x00" in value:
            raise _invalid()
        typed = value
    return Position(PageKey(typed, record_id), bool(backward))
