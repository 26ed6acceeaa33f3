"""Text that is safe to print: on a terminal, in a log line.

Clients choose file names, URLs and archive member names, and the registry
quotes them in log lines, error details and tables. A control character in
such a text can forge a log line (``\\n``), move a terminal's cursor or
recolour it (``ESC``), or reorder what is shown around it (bidi overrides);
U+2028/U+2029 end a line for many log viewers. :func:`escape_unsafe` writes
each of those as a visible backslash escape instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: C0 controls, DEL, C1 controls, U+2028/U+2029, and the bidi embeddings,
#: overrides and isolates (U+202A-U+202E, U+2066-U+2069)
UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: the same, but for the line feed (for multi-line texts such as tracebacks)
UNSAFE_CHARS_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_unsafe(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every character of :data:`UNSAFE_CHARS` as a backslash
    escape (``\\n``, ``\\x1b``, ``\\u202e``); other text, non-ASCII included, as is.

    :param keep_newlines: leave ``\\n`` alone (a traceback's own line breaks).
    """
    pattern = UNSAFE_CHARS_BUT_NEWLINE if keep_newlines else UNSAFE_CHARS
    return pattern.sub(_escape, text)


#: What ``json.dumps(ensure_ascii=False)`` leaves raw that :data:`UNSAFE_CHARS`
#: names (it escapes C0 controls itself): written as ``\uXXXX`` escapes.
_JSON_ESCAPES = {
    c: f"\\u{c:04x}"
    for c in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def safe_json(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON with non-ASCII text readable, and every character
    of :data:`UNSAFE_CHARS` as a ``\\uXXXX`` escape: the same data for a
    JSON reader, nothing raw for a terminal or a line-based log reader."""
    return json.dumps(value, ensure_ascii=False, indent=indent).translate(_JSON_ESCAPES)
