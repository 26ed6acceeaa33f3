"""Checks on local paths that create nothing (``check-config`` must leave no trace)."""

from __future__ import annotations

import os
from pathlib import Path


def creatable_problem(path: Path) -> str | None:
    """Why the file ``path`` could not be opened or created (with its folders), or None.

    Looks only: the nearest existing ancestor must be a folder this process
    may write into, and an existing ``path`` must be a file it may read and write.
    """
    if path.exists():
        if path.is_dir():
            return f"{path} is a folder, not a file"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not readable and writable by this process"
        return None
    current = path.parent
    while not current.exists():
        current = current.parent
    if not current.is_dir():
        return f"cannot create {path}: {current} is not a folder"
    if not os.access(current, os.W_OK | os.X_OK):
        return f"cannot create {path}: folder {current} is not writable by this process"
    return None
