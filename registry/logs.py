"""Logging set-up for ``registry serve`` and the operator commands.

Access lines (logger ``registry.access``) are written bare, one JSON object
per line, so log shippers can parse them without a pattern; everything else
gets a timestamped human format.
"""

from __future__ import annotations

import logging
import sys

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Send logs to stderr: the root logger at ``level`` in the human format,
    ``registry.access`` as bare lines that do not propagate.

    Idempotent: calling it again only sets the level, never adds a second handler.
    """
    root = logging.getLogger()
    if not any(getattr(h, "_registry", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(HUMAN_FORMAT))
        handler._registry = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    access = logging.getLogger("registry.access")
    if not access.handlers:
        line = logging.StreamHandler(sys.stderr)
        line.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(line)
    access.propagate = False
