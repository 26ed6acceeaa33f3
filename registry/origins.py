"""What an origin plugin provides: a way to fetch a ``package_url`` as a stream."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass


@dataclass
class Download:
    """An open fetch.

    :param chunks: the body, in order; the core stops reading (and closes the
        fetch) as soon as it has seen more than the size limit.
    :param size: the size the origin announced before sending (an HTTP
        ``Content-Length``, an S3 object's size), or None. The core refuses a
        declared size over the limit before reading, and fails the upload with
        ``PACKAGE_DOWNLOAD_FAILED`` when the body does not match it.
    :param file_name: see the attribute.
    :param display_url: see the attribute.
    """

    chunks: AsyncIterator[bytes]
    size: int | None = None
    #: The package's file name as the source names it (``example.tar.gz``),
    #: from which ``package_name`` is derived; "" lets the core take the
    #: URL's last ``/``-separated segment, whatever the scheme.
    file_name: str = ""
    #: The URL as it may be stored and shown; "" stores the URL itself. The
    #: core applies its secret redaction (user info, signature and token
    #: parameters) to either.
    display_url: str = ""


def default_file_name(url: str) -> str:
    """The file name of a URL whose origin names none: its last ``/``-separated
    segment, without query or fragment; no scheme's path rules are assumed."""
    return url.split("#", 1)[0].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


class Origin(ABC):
    """A source of package bytes, such as ``https://`` or ``s3://``.

    Subclasses set :attr:`name` (the name ``[origins] enabled`` lists) and are
    returned from the ``registry_origins`` hook.
    """

    name: str = ""

    @abstractmethod
    def accepts(self, url: str) -> bool:
        """True when this origin handles ``url`` (usually: by its scheme).

        Must not do I/O. Policy refusals (a forbidden host, a path outside the
        allowed roots) belong in :meth:`open`, so that they answer
        ``SOURCE_ORIGIN_FORBIDDEN`` rather than ``UNSUPPORTED_SOURCE_ORIGIN``.
        """

    @abstractmethod
    def open(self, url: str, max_size: int) -> AbstractAsyncContextManager[Download]:
        """Start fetching ``url``; the context closes the connection or file.

        :param max_size: the configured package size limit, so an origin may
            refuse early or cap its reads; the core enforces it regardless.
        :raises registry.errors.SourceOriginForbidden: policy refuses the URL.
        :raises registry.errors.PackageDownloadFailed: the source answered an
            error or could not be reached.
        :raises registry.errors.PackageDownloadTimeout: the source was too slow.
        """
