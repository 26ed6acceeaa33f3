"""What the CLI shows a person: progress bars and tables.

Progress goes to stderr and only when stderr is a terminal, so piped or
logged output never fills with bar redraws. Tables go to stdout: a rich table
on a terminal, plain space-aligned columns otherwise (stable for ``awk`` and
tests).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from typing import Protocol

from registry.printable import escape_unsafe

#: The one way the CLI shows a time, as the records' ``created``/``updated`` are.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class ProgressSink(Protocol):
    """Receives progress of one task: bytes (or items) done so far, and the total."""

    def __call__(self, done: int, total: int | None) -> None: ...


def _silent(done: int, total: int | None) -> None:
    """The sink used off a terminal: shows nothing."""


@contextmanager
def progress_bar(description: str, *, unit: str = "bytes") -> Iterator[ProgressSink]:
    """A progress bar on stderr for the duration of the block, if stderr is a terminal.

    Yields a :class:`ProgressSink`; call it as work advances. ``unit`` is
    ``bytes`` (sizes and speed shown) or ``items`` (a plain count).
    ``description`` is shown as plain text (controls escaped, no markup).
    The bar is removed when the block ends, leaving the command's own output.
    """
    if not sys.stderr.isatty():
        yield _silent
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    # the description names a file: shown as it is, never read as rich markup
    columns = [TextColumn("{task.description}", markup=False), BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
    else:
        columns += [MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(escape_unsafe(description), total=None)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[str] = ()) -> None:
    """Print ``rows`` under ``headers`` on stdout.

    Cells are data from the registry, shown as they are: control characters
    and bidi overrides as escapes (:func:`registry.printable.escape_unsafe`),
    brackets as brackets (never rich markup).

    :param right: headers of columns to align right (numbers).
    """
    rows = [[escape_unsafe(cell) for cell in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, header_style="bold", pad_edge=False)
        for header in headers:
            table.add_column(header, justify="right" if header in right else "left", no_wrap=True)
        for row in rows:
            # Text, not str: rich would read "[red]" in a package name as markup
            table.add_row(*(Text(cell) for cell in row))
        Console().print(table)
        return
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if header in right else cell.ljust(width)
            for cell, width, header in zip(cells, widths, headers, strict=False)
        ]
        return "  ".join(parts).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KiB``: sizes for people (machine output keeps bytes)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def display_time(value: datetime | str | None, zone: tzinfo, *, never: str = "-") -> str:
    """A time as every CLI table shows times: ``YYYY-MM-DD HH:MM:SS`` in ``zone``.

    Accepts a ``datetime`` (naive means UTC), the stored text form
    (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC) and ISO 8601 with an offset; None
    or empty gives ``never``.
    """
    if not value:
        return never
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone).strftime(TIME_FORMAT)
