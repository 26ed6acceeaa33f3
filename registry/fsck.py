"""``registry fsck``: re-hash every stored blob against its record.

Every record whose blob should exist (live and soft-deleted ones; not those
whose blob ``gc`` purged) is read back through the configured storage plugin
(:meth:`registry.storage.Storage.open`), so the check works for any backend,
and its size and sha256 compared with the record's.

With ``repair``, each record found bad is marked ``broken`` (the reason), and
a mark is cleared from a record whose blob now checks out (restored from a
backup, say). The registry answers a download of a broken record with 503
``OBJECT_STORE_EXCEPTION`` instead of serving bad bytes; uploading the same
version's bytes again replaces the blob and clears the mark.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import anyio.to_thread

from registry.errors import RegistryError
from registry.records import Record
from registry.service import Registry
from registry.storage import BlobMissing

PAGE_SIZE = 500

MISSING = "missing"
SIZE = "size"
SHA256 = "sha256"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Problem:
    """A record whose blob is missing, unreadable or differs from the record.

    :param kind: ``missing``, ``size``, ``sha256`` or ``unreadable``.
    :param detail: what was found, for people.
    """

    record: Record
    kind: str
    detail: str

    @property
    def reason(self) -> str:
        """The short text stored in the record's ``broken`` mark."""
        return f"{self.kind}: {self.detail}"

    def describe(self) -> str:
        """One line naming the record, its blob key and what is wrong."""
        r = self.record
        state = " (deleted)" if r.is_deleted else ""
        return (f"{self.kind.upper()}: id {r.id} {r.code}/{r.module} version {r.version}{state}"
                f" key {r.blob_key}: {self.detail}")


@dataclass
class FsckReport:
    """What a run found.

    :param checked: records whose blob was read.
    :param purged: records skipped because ``gc`` removed their blob on purpose.
    :param marked: records newly marked broken (``repair`` only).
    :param cleared: records whose broken mark was removed (``repair`` only).
    """

    checked: int = 0
    bytes_read: int = 0
    purged: int = 0
    problems: list[Problem] = field(default_factory=list)
    marked: int = 0
    cleared: int = 0


async def check_blob(registry: Registry, record: Record, advance: Callable[[int], None]) -> Problem | None:
    """Read ``record``'s blob to the end; the problem with it, or None.

    :param advance: called with the size of each chunk read.
    """
    digest = hashlib.sha256()
    size = 0
    try:
        async with aclosing(registry.storage.open(record.blob_key)) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                # hashing 1 MiB blocks; a worker thread keeps the event loop free
                await anyio.to_thread.run_sync(digest.update, chunk)
                size += len(chunk)
                advance(len(chunk))
    except BlobMissing:
        return Problem(record, MISSING, "no blob under its key")
    except RegistryError as exc:
        return Problem(record, UNREADABLE, exc.detail("en"))
    except (OSError, ValueError) as exc:
        return Problem(record, UNREADABLE, f"{type(exc).__name__}: {exc}")
    if size != record.package_size:
        return Problem(record, SIZE, f"{size} bytes stored, the record says {record.package_size}")
    if digest.hexdigest() != record.sha256:
        return Problem(record, SHA256, f"sha256 {digest.hexdigest()} stored, the record says {record.sha256}")
    return None


async def fsck(
    registry: Registry,
    *,
    repair: bool = False,
    on_problem: Callable[[Problem], None] = lambda problem: None,
    on_progress: Callable[[int, int | None], None] = lambda done, total: None,
) -> FsckReport:
    """Check every record's blob; see the module docstring.

    :param on_problem: called as each problem is found (to print it at once).
    :param on_progress: ``(bytes read, total bytes)``.
    """
    report = FsckReport()
    records = registry.records
    _, total_bytes = await anyio.to_thread.run_sync(records.blob_totals)

    def advance(size: int) -> None:
        report.bytes_read += size
        on_progress(report.bytes_read, total_bytes)

    last_id = 0
    while page := await anyio.to_thread.run_sync(records.page_by_id, last_id, PAGE_SIZE):
        last_id = page[-1].id
        for record in page:
            if record.purged_at is not None:
                report.purged += 1
                continue
            problem = await check_blob(registry, record, advance)
            report.checked += 1
            if problem is not None and await _changed_meanwhile(registry, record):
                # overwritten, revived or purged while we read: the old blob's
                # absence is expected, and the new one is for the next run
                problem = None
            if problem is not None:
                report.problems.append(problem)
                on_problem(problem)
            if repair:
                await _update_mark(registry, record, problem, report)
    return report


async def _changed_meanwhile(registry: Registry, record: Record) -> bool:
    current = await anyio.to_thread.run_sync(registry.records.get, record.code, record.module, record.id)
    return current is None or current.blob_key != record.blob_key or current.purged_at is not None


async def _update_mark(registry: Registry, record: Record, problem: Problem | None, report: FsckReport) -> None:
    """Set or clear the record's ``broken`` mark to match what was found."""
    set_broken = registry.records.set_broken
    if problem is not None and not record.broken:
        if await anyio.to_thread.run_sync(set_broken, record.id, record.blob_key, problem.reason):
            report.marked += 1
    elif (
        problem is None
        and record.broken
        and await anyio.to_thread.run_sync(set_broken, record.id, record.blob_key, None)
    ):
        report.cleared += 1
