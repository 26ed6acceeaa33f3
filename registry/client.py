"""An HTTP client of the registry's package API (the ``registry`` client commands).

It needs no configuration file: only the server's base URL (which may carry a
stage prefix such as ``/api/bkpaas3/stag``) and a token. Files are streamed
both ways: an upload is sent from an open file in 64 KiB pieces, a download is
written as it arrives, so neither is ever held in memory whole.

Failures are :class:`ClientError` subclasses whose ``str()`` is the line to
show a person: the registry's ``code: detail`` (asked for in English), or
what went wrong with the connection or the checksum.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self
from urllib.parse import quote, unquote

import httpx

from registry.client_errors import (
    ApiError,
    ChecksumError,
    ClientError,
    ConnectionFailed,
    NotARegistry,
)
from registry.validation import parse_decimal

#: ``(done, total)`` progress callback; total is None when unknown.
Progress = Callable[[int, int | None], None]

READ_SIZE = 1024 * 1024
LIST_PAGE_SIZE = 1000
# Reads may wait long: after the last byte of a 2 GiB upload the server still
# inspects the whole archive before it answers.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=900.0, write=300.0, pool=10.0)
__all__ = ["ApiError", "ChecksumError", "ClientError", "ConnectionFailed", "NotARegistry", "RegistryClient"]

PACKAGES = "bkapps/applications/{code}/modules/{module}/source_package/"
APPLICATIONS = "bkapps/applications/"
#: JSON objects of a listing (named: inside the client, ``list`` is a method).
Entries = list[dict[str, Any]]
#: The response header in which the registry says what an upload did.
OUTCOME_HEADER = "registry-upload-outcome"
#: What a package reference on the command line may be besides an id or a version.
LATEST = "latest"


@dataclass(frozen=True)
class UploadResult:
    """A package record as the registry answered an upload.

    :param created: True for 201 (a new or revived version), False for 200
        (an overwrite, or identical bytes already stored).
    :param outcome: ``created``, ``revived``, ``overwritten`` or ``identical``
        as the registry said (``Registry-Upload-Outcome``); from an older
        registry that does not say, ``created`` or ``overwritten or identical``.
    """

    record: dict[str, Any]
    created: bool
    outcome: str = ""


def _upload_result(response: httpx.Response, record: dict[str, Any]) -> UploadResult:
    created = response.status_code == 201
    fallback = "created" if created else "overwritten or identical"
    return UploadResult(record=record, created=created, outcome=response.headers.get(OUTCOME_HEADER, fallback))


def attachment_name(header: str) -> str | None:
    """The file name a ``Content-Disposition`` header proposes, made safe to
    create in the current folder (no folders, no leading dot), or None.

    ``filename*=UTF-8''…`` wins over ``filename="…"``, as RFC 6266 says.
    """
    name = None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        key = key.strip().lower()
        if key == "filename*" and value.lower().startswith("utf-8''"):
            name = unquote(value[7:])
            break
        if key == "filename" and name is None:
            name = value.strip().strip('"')
    if name is None:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1].lstrip(".")
    if not name or not name.isprintable():
        return None
    return name


@dataclass(frozen=True)
class PullResult:
    path: Path
    size: int
    sha256: str


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    """The hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(READ_SIZE):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


class _ProgressReader:
    """A read-only file that reports its position as httpx reads it.

    httpx streams a multipart file field by ``read()``ing it in pieces and
    learns its length from ``fileno()``; both are passed through.
    """

    def __init__(self, file: BinaryIO, total: int, progress: Progress | None) -> None:
        self._file = file
        self._total = total
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        if self._progress is not None:
            self._progress(self._file.tell(), self._total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        return self._file.fileno()


class RegistryClient:
    """The package routes of one registry, called with one token.

    :param base_url: e.g. ``http://registry:8000`` or
        ``https://host/api/bkpaas3/stag``.
    :param token: sent as ``Authorization: Bearer``; None sends no credential
        (enough for reads when the registry allows anonymous reads).
    :param transport: an httpx transport to use instead of the network.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Accept-Language": "en", "User-Agent": "registry-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/") + "/"
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- routes -------------------------------------------------------------

    @staticmethod
    def packages_path(code: str, module: str, suffix: str = "") -> str:
        """The module's package route, relative to the base URL; values are
        quoted so a stray ``/`` cannot reach another route."""
        return PACKAGES.format(code=quote(code, safe=""), module=quote(module, safe="")) + suffix

    def push(
        self,
        path: Path,
        code: str,
        module: str,
        *,
        version: str | None = None,
        overwrite: bool = False,
        sha256: str | None = None,
        progress: Progress | None = None,
    ) -> UploadResult:
        """Upload a local file as multipart field ``package``, streamed.

        The file's sha256 (computed here unless given) is sent as the
        ``sha256`` field, so the registry refuses bytes damaged on the way
        (``CHECKSUM_MISMATCH``); the answered record is checked against it too.

        :raises ApiError: the registry refused the upload.
        :raises ChecksumError: the registry stored other bytes than were sent.
        """
        digest = sha256 or file_sha256(path)
        fields = {"sha256": digest, "allow_overwrite": "true" if overwrite else "false"}
        if version is not None:
            fields["version"] = version
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            reader = _ProgressReader(f, size, progress)
            response = self._send(
                "POST", self.packages_path(code, module), data=fields, files={"package": (path.name, reader)}
            )
        result = _upload_result(response, self._json(response))
        self._check_record_digest(result.record, digest)
        return result

    def push_link(
        self,
        url: str,
        code: str,
        module: str,
        *,
        version: str | None = None,
        overwrite: bool = False,
        sha256: str | None = None,
    ) -> UploadResult:
        """Ask the registry to fetch ``url`` itself (upload by link).

        :raises ApiError: the registry refused or could not fetch it.
        """
        body: dict[str, Any] = {"package_url": url, "allow_overwrite": overwrite}
        if version is not None:
            body["version"] = version
        if sha256 is not None:
            body["sha256"] = sha256
        response = self._send("POST", self.packages_path(code, module, "link/"), json=body)
        result = _upload_result(response, self._json(response))
        if sha256 is not None:
            self._check_record_digest(result.record, sha256)
        return result

    def list(self, code: str, module: str, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Every record of a module, newest first, following the pages."""
        return self._all_pages(self.packages_path(code, module),
                               {"include_deleted": "true"} if include_deleted else None)

    def _all_pages(self, path: str, params: dict[str, Any] | None = None) -> Entries:
        """Every ``results`` entry of a paged listing, following the pages."""
        results: Entries = []
        while True:
            page = self._json(self._send("GET", path, params={
                **(params or {}), "limit": LIST_PAGE_SIZE, "offset": len(results)}))
            if not isinstance(page, dict) or not isinstance(page.get("results"), list):
                raise NotARegistry(f"not a registry at {self.base_url}: {path} answered no listing")
            results.extend(page["results"])
            if not page["results"] or len(results) >= page["count"]:
                return results

    def applications(self) -> Entries:
        """The applications the token may read: ``code``, ``modules``, ``packages``, ``last_uploaded``."""
        return self._all_pages(APPLICATIONS)

    def modules(self, code: str) -> Entries:
        """An application's modules: ``name``, ``packages``, ``last_uploaded``."""
        return self._all_pages(f"{APPLICATIONS}{quote(code, safe='')}/modules/")

    def delete(self, package_id: int, code: str, module: str) -> None:
        """Soft-delete a package (the registry answers 204, also when it already was)."""
        self._send("DELETE", self.packages_path(code, module, f"{package_id}/"))

    def restore(self, package_id: int, code: str, module: str) -> dict[str, Any]:
        """Undo a soft delete; the restored record."""
        record: dict[str, Any] = self._json(self._send("POST", self.packages_path(code, module, f"{package_id}/restore/")))
        return record

    def resolve(self, ref: str, code: str, module: str, *, include_deleted: bool = False) -> dict[str, Any]:
        """The record a command line names: an id, a version, or ``latest``.

        ``latest`` is the newest live package. A number is an id when such a
        package exists, else a version (versions such as ``2`` exist too).
        ``include_deleted`` lets ``restore`` find soft-deleted versions.

        :raises ApiError: ``PACKAGE_NOT_FOUND`` when nothing matches.
        """
        ref = ref.strip()
        if ref.isascii() and ref.isdigit() and len(ref) <= 18:
            try:
                return self.get(int(ref), code, module)
            except ApiError as exc:
                if exc.code != "PACKAGE_NOT_FOUND":
                    raise
        records = self.list(code, module, include_deleted=include_deleted and ref != LATEST)
        if ref == LATEST:
            live = [r for r in records if not r.get("is_deleted")]
            if live:
                return live[0]
            raise ApiError(404, "PACKAGE_NOT_FOUND", f"{code}/{module} has no package")
        for record in records:
            if record.get("version") == ref:
                return record
        raise ApiError(404, "PACKAGE_NOT_FOUND", f"{code}/{module} has no package with id or version {ref!r}")

    def get(self, package_id: int, code: str, module: str) -> dict[str, Any]:
        """One record."""
        record: dict[str, Any] = self._json(self._send("GET", self.packages_path(code, module, f"{package_id}/")))
        return record

    def pull(
        self, package_id: int, code: str, module: str, dest: Path | None = None, *,
        progress: Progress | None = None,
    ) -> PullResult:
        """Download a package to ``dest``, verified against ``X-Checksum-Sha256``.

        ``dest`` None writes the file name the registry proposes
        (``Content-Disposition``) into the current folder.

        The bytes go to a temporary file beside ``dest``, which is renamed to
        ``dest`` only once the checksum matches: on any failure ``dest`` is
        left as it was (absent, or the previous file) and the temporary file
        is removed.

        :raises ApiError: the registry answered an error.
        :raises ChecksumError: the bytes received do not match the checksum,
            or the registry sent none.
        """
        path = self.packages_path(code, module, f"{package_id}/download/")
        try:
            with self.http.stream("GET", path) as response:
                self._raise_for_error(response)
                if dest is None:
                    name = attachment_name(response.headers.get("content-disposition", ""))
                    if name is None:
                        raise ClientError("the registry proposed no file name: pass -o FILE")
                    dest = Path(name)
                expected = response.headers.get("x-checksum-sha256", "").strip().lower()
                if not expected:
                    raise ChecksumError("the registry sent no X-Checksum-Sha256 header; nothing to verify against")
                total = parse_decimal(response.headers.get("content-length", "").strip())  # progress only
                return _receive(response.iter_bytes(READ_SIZE), dest, expected, total, progress)
        except httpx.TransportError as exc:
            raise self._connection_failed(exc) from exc

    # -- plumbing -----------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._connection_failed(exc) from exc
        self._raise_for_error(response)
        return response

    def _connection_failed(self, exc: httpx.TransportError) -> ConnectionFailed:
        if isinstance(exc, httpx.TimeoutException):
            return ConnectionFailed(f"timed out talking to {self.base_url} ({type(exc).__name__})")
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError):
            return ConnectionFailed(f"cannot connect to {self.base_url}: {reason}")
        return ConnectionFailed(f"connection to {self.base_url} failed: {reason}")

    def _raise_for_error(self, response: httpx.Response) -> None:
        """Raise :class:`ApiError` for any answer that is not 2xx.

        An answer without the registry's error JSON comes from something else:
        a 5xx from a proxy in front is shown by status and reason; anything
        else (an HTML 404 page, say) means ``--url`` names no registry.
        """
        if response.is_success:
            return
        response.read()
        body: Any = None
        with contextlib.suppress(ValueError):  # not JSON: a proxy in front answered
            body = response.json()
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            raise ApiError(response.status_code, body["code"], str(body.get("detail", "")), body)
        if response.status_code >= 500:
            raise ApiError(response.status_code, f"HTTP {response.status_code}",
                           f"{response.reason_phrase} (from {self.base_url}, not in the registry's error format)")
        raise NotARegistry(f"not a registry at {self.base_url}: it answered HTTP {response.status_code}"
                           f" {_kind_of_body(response)}")

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise NotARegistry(f"not a registry at {self.base_url}: it answered HTTP {response.status_code}"
                               f" {_kind_of_body(response)}") from None

    @staticmethod
    def _check_record_digest(record: dict[str, Any], sha256: str) -> None:
        stored = record.get("sha256_signature")
        if stored != sha256:
            raise ChecksumError(f"the registry recorded sha256 {stored}, the file has {sha256}")


def _kind_of_body(response: httpx.Response) -> str:
    """``with text/html``: what came back instead of the registry's JSON, never the body itself."""
    media = response.headers.get("content-type", "").split(";")[0].strip()
    return f"with {media}" if media else "without a body type"


def _receive(chunks: Iterator[bytes], dest: Path, expected: str, total: int | None,
             progress: Progress | None) -> PullResult:
    """Write ``chunks`` beside ``dest`` and rename it into place if they hash to ``expected``."""
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    temp = Path(name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(size, total)
            out.flush()
            os.fsync(out.fileno())
        received = digest.hexdigest()
        if received != expected:
            raise ChecksumError(f"sha256 mismatch: the registry announced {expected}, received {received}")
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)
    return PullResult(path=dest, size=size, sha256=received)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
