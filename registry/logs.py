"""Logging set-up for ``registry serve`` and the operator commands.

Access lines (logger ``registry.access``) are written bare, one JSON object
per line, so log shippers can parse them without a pattern; everything else
gets a timestamped human format.

Messages quote what clients send (paths, URLs, archive member names), so
every line is written through :class:`OneLineFormatter`: a control
character, a line or paragraph separator or a bidi override in a message is
written as an escape (see :mod:`registry.printable`), and one record is
always one line (plus its traceback), whatever a client put in it.
"""

from __future__ import annotations

import logging
import sys

from registry.printable import escape_unsafe

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    """A formatter whose message part is always one line of printable text.

    The message (after ``%`` formatting with its arguments) is escaped with
    :func:`registry.printable.escape_unsafe`; a traceback keeps its line breaks but loses
    every other control character, since exception texts quote client data too.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_unsafe(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return escape_unsafe(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return escape_unsafe(super().formatStack(stack_info), keep_newlines=True)


def configure_logging(level: int = logging.INFO) -> None:
    """Send logs to stderr: the root logger at ``level`` in the human format,
    ``registry.access`` as bare lines that do not propagate, both through
    :class:`OneLineFormatter`.

    Idempotent: calling it again only sets the level, never adds a second handler.
    """
    root = logging.getLogger()
    if not any(getattr(h, "_registry", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(OneLineFormatter(HUMAN_FORMAT))
        handler._registry = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    access = logging.getLogger("registry.access")
    if not access.handlers:
        line = logging.StreamHandler(sys.stderr)
        line.setFormatter(OneLineFormatter("%(message)s"))
        access.addHandler(line)
    access.propagate = False
