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


@dataclass(frozen=True)
class Window:
    """One page of a listing and the cursors of the pages either side (None: no page that way)."""

    records: list[Record]
    next: str | None
    previous: str | None


def read_limit(position: Position | None, limit: int) -> int:
    """How many records to ask the store for: one more than the page on a
    keyset read, which tells whether a page follows in the direction of travel."""
    return limit if position is None else limit + 1


def window(order: Order, position: Position | None, records: list[Record], *,
           limit: int, offset: int, count: int) -> Window:
    """The page among ``records`` (read with :func:`read_limit` from ``position``,
    or by ``offset`` when it is None) and the cursors of its neighbours.

    The neighbours' links always carry cursors, so a client that follows
    them pays the same for every page of a module, the last one included.
    """
    next_cursor: str | None = None
    previous_cursor: str | None = None
    if position is None:
        if offset + limit < count and records:
            next_cursor = after(order, records[-1])
        if offset > 0:
            previous_cursor = before(order, records[0]) if records else encode(order, None, backward=True)
        return Window(records, next_cursor, previous_cursor)
    more = len(records) > limit
    if position.backward:
        records = records[1:] if more else records
        if more:
            previous_cursor = before(order, records[0])
        if position.key is not None:  # None: the last page
            next_cursor = after(order, records[-1]) if records else encode(order, None, backward=False)
    else:
        records = records[:limit]
        if more:
            next_cursor = after(order, records[-1])
        if position.key is not None:  # None: the first page
            previous_cursor = before(order, records[0]) if records else encode(order, None, backward=True)
    return Window(records, next_cursor, previous_cursor)


# -- the applications listing: keyset by code -----------------------------------------------

#: The first element of an applications cursor (a package cursor starts with an ``order_by``).
APPLICATIONS = "applications"


def encode_code(code: str | None, backward: bool) -> str:
    """The cursor of the applications page after ``code`` (before it when
    ``backward``; None: the first or the last page)."""
    raw = json.dumps([APPLICATIONS, int(backward), code], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_code(cursor: str) -> tuple[str | None, bool]:
    """The (code, backward) an applications cursor names.

    :raises ValidationError: anything :func:`encode_code` did not make.
    """
    if len(cursor) > MAX_CURSOR or not cursor.isascii():
        raise _invalid()
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        kind, backward, code = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise _invalid() from None
    if kind != APPLICATIONS or backward not in (0, 1) or not (code is None or isinstance(code, str)):
        raise _invalid()
    if code is not None and ("\x00" in code or len(code) > MAX_CURSOR):
        raise _invalid()
    return code, bool(backward)


def code_window(codes: list[str], code: str | None, backward: bool, *, limit: int, keyed: bool,
                offset: int, count: int) -> tuple[slice, str | None, str | None]:
    """Like :func:`window` for applications: which of ``codes`` (read with one
    extra from the cursor's ``code``/``backward`` when ``keyed``, else by
    ``offset``) make the page, and the cursors either side."""
    next_cursor: str | None = None
    previous_cursor: str | None = None
    if not keyed:
        if offset + limit < count and codes:
            next_cursor = encode_code(codes[-1], backward=False)
        if offset > 0:
            previous_cursor = encode_code(codes[0], backward=True) if codes else encode_code(None, backward=True)
        return slice(None), next_cursor, previous_cursor
    more = len(codes) > limit
    if backward:
        page = slice(1, None) if more else slice(None)
        shown = codes[page]
        if more:
            previous_cursor = encode_code(shown[0], backward=True)
        if code is not None:
            next_cursor = encode_code(shown[-1], backward=False) if shown else encode_code(None, backward=False)
    else:
        page = slice(None, limit)
        shown = codes[page]
        if more:
            next_cursor = encode_code(shown[-1], backward=False)
        if code is not None:
            previous_cursor = encode_code(shown[0], backward=True) if shown else encode_code(None, backward=True)
    return page, next_cursor, previous_cursor
