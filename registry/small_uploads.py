"""Small uploads: a body received whole in memory, then stored in one go.

A package upload whose request announces at most :data:`SMALL_BODY` bytes is
not streamed through a :class:`registry.staging.StagingFile` (a writer and a
follower thread of its own, a hand-off per step): its ``package`` part is
kept in a :class:`BodyBuffer`, and once the body is complete the service
hashes, inspects, versions, checks, writes and fsyncs it, stores the blob and
commits the record in one worker thread (see ``Registry.upload_small``).
The promises are the same as for any upload: the blob is durable under its
key before the record naming it is committed, and a failure leaves no
record, no blob and no staging file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from registry.errors import PackageTooLarge, ValidationError
from registry.storage import storage_failure

#: Request bodies announcing at most this many bytes are received in memory:
#: at most this much per upload in flight, and bounded by the connection cap.
SMALL_BODY = 256 * 1024


class BodyBuffer:
    """The ``package`` part of a small upload, in memory (a ``PackageSink``
    of :func:`registry.api.forms.parse_multipart`)."""

    def __init__(self, max_size: int) -> None:
        #: the package size limit; :meth:`write` refuses to pass it
        self.max_size = max_size
        self.size = 0
        self._chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raise ``PackageTooLarge`` once past the limit.

        :raises ValidationError: past :data:`SMALL_BODY`, which a body whose
            request announced at most that cannot reach: memory held per
            request stays bounded whatever a client sends.
        """
        self.size += len(chunk)
        if self.size > self.max_size:
            raise PackageTooLarge(f"more than {self.max_size} bytes")
        if self.size > SMALL_BODY:
            raise ValidationError.single("package", "请求体长于其 Content-Length",
                                         "the request body is longer than its Content-Length")
        self._chunks.append(chunk)

    @property
    def data(self) -> bytes:
        """Every byte written so far."""
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]


def write_staged(folder: Path, data: bytes) -> Path:
    """Write ``data`` to a new staging file in ``folder`` and fsync it; its path.

    Blocking: call it in a worker thread. On failure no file is left.

    :raises InsufficientStorage: the disk or quota is full (507).
    :raises ObjectStoreException: any other failure to create or write it.
    """
    try:
        try:
            fd, name = tempfile.mkstemp(dir=folder, prefix="upload-", suffix=".part")
        except FileNotFoundError:  # made at start-up; made again only if it went missing since
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=folder, prefix="upload-", suffix=".part")
    except OSError as exc:  # no inode left, a read-only or missing folder
        raise storage_failure(exc, "cannot create a staging file") from exc
    path = Path(name)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # ENOSPC from write() or fsync() is the client's 507
            raise storage_failure(exc, "cannot write the staging file") from exc
        raise
    return path
