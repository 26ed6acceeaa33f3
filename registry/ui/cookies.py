"""Reading the web interface's own cookies from a request.

Starlette's ``request.cookies`` unquotes every value with Python's
``http.cookies._unquote``, which on Python 3.11.7 takes quadratic time in
the backslashes of a quoted value (CVE-2024-7592): a 16 KiB ``Cookie``
header, sent to any page without signing in, held the event loop for half a
second. The interface sets only cookies of its own, whose values never hold
a quote or a backslash, so it reads them here in one pass and unquotes
nothing; a value that needed unquoting is not one of them and does not match.
"""

from __future__ import annotations

from starlette.requests import Request


def cookie(request: Request, name: str) -> str | None:
    """The value of the cookie ``name`` in ``request``'s ``Cookie`` headers, or None.

    Pairs are split on ``;`` and at their first ``=`` and stripped of spaces,
    as browsers send them; a value in double quotes loses the quotes. When
    the name comes more than once the last one wins, as with
    ``request.cookies``.
    """
    found = None
    for header in request.headers.getlist("cookie"):
        for pair in header.split(";"):
            key, equals, value = pair.partition("=")
            if equals and key.strip() == name:
                value = value.strip()
                found = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    return found
