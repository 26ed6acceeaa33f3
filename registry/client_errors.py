"""The failures of the registry's HTTP client, importable without the client.

The ``registry`` command catches these; keeping them apart from
:mod:`registry.client` (which imports httpx) lets commands that never talk
HTTP, such as ``registry --version``, start without loading an HTTP stack.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """A client command failed; ``str(error)`` is the message for the user."""


class ApiError(ClientError):
    """The registry answered an error.

    :param status: the HTTP status.
    :param code: the registry's error code (``PACKAGE_ALREADY_EXISTS`` …), or
        ``HTTP <status>`` when the body was not the registry's error JSON
        (a proxy in front answered, say).
    :param detail: the registry's detail text.
    """

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body or {}


class ConnectionFailed(ClientError):
    """The registry could not be reached, or the connection broke."""


class ChecksumError(ClientError):
    """Bytes did not match their sha256."""


class NotARegistry(ClientError):
    """The server at the URL answered, but not as a registry (a web page, another API)."""
