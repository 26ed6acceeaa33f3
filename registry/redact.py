"""Remove secrets from URLs before they are stored, logged or echoed."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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


def redact_url(url: str) -> str:
    """``url`` without ``user:password@`` and with secret query values replaced.

    Never raises: a string that does not parse as a URL is returned with
    everything after the first ``?`` and before any ``@`` dropped.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        head = url.split("?", 1)[0]
        return head.rsplit("@", 1)[-1]
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, REDACTED if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs],
            safe="/:",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
