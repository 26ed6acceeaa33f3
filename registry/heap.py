"""The C heap of a serving process: keep transfer buffers' memory between requests.

Every upload passes through buffers of a few hundred KiB to 2 MiB: asyncio
receives up to 256 KiB at a time into a new ``bytes``, uvicorn copies it on, and
a staging file joins a batch of up to 2 MiB for its writer. glibc's malloc
hands such memory back to the kernel as soon as enough of it is free at the
top of its heap (``M_TRIM_THRESHOLD``, which it adjusts to twice the largest
buffer freed) and takes it again on the next request, a page fault for each
4 KiB. The event loop's thread measured 16k page faults per 256 MiB file
upload and 24k per tus upload in 8 MiB PATCHes (the heap shrank after each
PATCH and grew again with the next), a fifth of that thread's system time on
the development VM, where a page fault is dear.

:func:`keep_transfer_buffers` fixes both thresholds, so such buffers always
come from the heap and up to :data:`TRIM_THRESHOLD` of free memory stays
with the process, in each of at most :data:`ARENA_MAX` arenas. The peak
memory is what the transfers need, as before; the resident size after a
burst stays up to that much higher instead of shrinking.
"""

from __future__ import annotations

import ctypes
import logging

from registry.transfers import UPLOAD_BUDGET

logger = logging.getLogger("registry.heap")

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Free memory at the top of a heap the process keeps: the uploads' buffer budget.
TRIM_THRESHOLD = UPLOAD_BUDGET
#: Allocations at least this large get a mapping of their own (none of the
#: transfers' buffers do; glibc's own ceiling for it is 32 MiB).
MMAP_THRESHOLD = 16 * 1024 * 1024
#: Arenas the process's threads share (the main one included). Each keeps up
#: to :data:`TRIM_THRESHOLD` free, and by default a thread takes an arena of
#: its own up to eight per core: after mixed uploads and downloads the
#: resident size crept up by what each of them kept (137-156 MB on the 2-core
#: VM, rising with each round, where two arenas stayed at 108-118 MB). Python
#: threads allocate under the GIL, so they hardly contend for an arena.
ARENA_MAX = 2


def keep_transfer_buffers() -> bool:
    """Fix glibc's trim and mmap thresholds and its number of arenas for this
    process (its forks inherit them; call it before threads allocate, as
    arenas are only ever added); True when done, False where the C library
    has no ``mallopt`` (musl, macOS), which leaves the heap as it was."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success, 0 for a value it refuses.
    done = all(mallopt(option, value) == 1 for option, value in (
        (M_ARENA_MAX, ARENA_MAX), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    if not done:
        logger.info("the C library refused the heap thresholds; uploads take more page faults")
    return done
