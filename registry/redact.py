"""Remove secrets from URLs before they are stored, logged or echoed."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

#: Query parameters whose values are credentials (compared case-insensitively).
SECRET_QUERY_KEYS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "signature",
        "sig",
        "token",
        "access_token",
    }
)
REDACTED = "REDACTED"

#: Something that looks like an absolute URL inside free text (a log line).
#: The scheme is at most 32 characters: with no bound, each position of a long
#: word was tried against the whole rest of it (quadratic: a 100 KB word, such
#: as a hostile redirect's ``Location`` in httpx's log line, took seconds).
#: A longer run before ``://`` still matches, from the first letter among its
#: last 32 characters; one with no letter there (``a`` and 40 digits) is no
#: longer taken for a scheme, and no client or library here fetches such a URL.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}://[^\s'\"<>]+")
#: Query separators: ``&``, and ``;`` which some servers also split on.
_QUERY_SEPARATOR = re.compile(r"([&;])")


def _redact_query(query: str) -> str:
    """``query`` with the value of every secret parameter replaced, the rest
    kept byte for byte. Keys are compared percent- and plus-decoded, trimmed
    and lower-cased, so no spelling of ``X-Amz-Signature`` slips through."""
    pieces = _QUERY_SEPARATOR.split(query)
    for index in range(0, len(pieces), 2):
        key, equals, _ = pieces[index].partition("=")
        if unquote_plus(key).strip().lower() in SECRET_QUERY_KEYS:
            pieces[index] = f"{key}={REDACTED}" if equals else key
    return "".join(pieces)


def redact_url(url: str) -> str:
    """``url`` without ``user:password@`` and with secret query values replaced.

    The fragment is dropped. Never raises: a string that does not parse as a
    URL is returned with everything after the first ``?`` or ``#`` and before
    the last ``@`` dropped.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        head = re.split(r"[?#]", url, maxsplit=1)[0]
        scheme, sep, rest = head.partition("://")
        if not sep:
            return head.rsplit("@", 1)[-1]
        return f"{scheme}://{rest.rsplit('@', 1)[-1]}"
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    query = _redact_query(parts.query) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URLs in a record's message.

    Attach it to loggers of libraries that log request URLs (httpx logs every
    request at INFO, query string and ``user:password@`` included).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 -- a record that cannot be formatted is logging's to report
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Attach one :class:`RedactingFilter` to each named logger (idempotent)."""
    for name in logger_names:
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in target.filters):
            target.addFilter(RedactingFilter())
