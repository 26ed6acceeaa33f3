"""Lease holders: names of processes that claim background jobs and uploads' write leases.

A holder is ``host:pid:random``. A claim in the record store names its holder
and a time its lease lapses; a store may also hand a claim on when the holder
is a process of this host that no longer exists (:func:`holder_is_dead`), so
a job left by a crashed worker runs again at once instead of after its lease.
"""

from __future__ import annotations

import os
import socket


def make_holder() -> str:
    """A name for this process, unique across restarts: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def holder_is_dead(holder: str | None) -> bool:
    """True when ``holder`` names a process of this host that no longer exists
    (or is empty). Holders on other hosts are never judged dead here: their
    leases expire."""
    if not holder:
        return True
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this very process holds it: alive by definition
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def local_prefix() -> str:
    """How the holders of this host's processes begin (the only ones
    :func:`holder_is_dead` can judge), for narrowing a store's query."""
    return f"{socket.gethostname()}:"
