"""Built-in storage ``s3``: one object per blob in an S3 (or S3-compatible) bucket.

Selected by ``[storage] backend = "s3"`` and configured by ``[storage.s3]``
(bucket, prefix, endpoint_url, region). Credentials come only from boto3's own
chain (environment, shared profile, instance role): nothing in the
configuration holds a secret, so nothing here can log one.

- ``put`` uploads the staged file with boto3's managed transfer: multipart
  above :data:`MULTIPART_THRESHOLD`, in :data:`MULTIPART_CHUNKSIZE` parts, at
  most :data:`MAX_CONCURRENCY` in flight, so memory stays bounded whatever the
  package size. An S3 object becomes visible only when its upload completes
  (``PutObject`` or ``CompleteMultipartUpload``), and a failed multipart upload
  is aborted by the transfer manager, so a failed put leaves nothing under the
  key.
- ``open`` streams a ranged ``GetObject`` body in chunks of
  :func:`registry.transfers.download_chunk_size` (at most 1 MiB, smaller
  when many downloads run), reading the next only when the caller asks.
- Every boto3 call (client creation included: it reads model files and the
  credential chain) runs in a worker thread, never on the event loop.
- Any boto3/botocore failure becomes ``ObjectStoreException`` (503); a
  missing key on ``open`` is ``BlobMissing``.
- boto3 is imported when an :class:`S3Storage` is made, not when the plugin
  loads: a registry storing on the filesystem never loads it for its storage.

The bucket must exist: ``startup`` checks it and refuses to start otherwise,
rather than creating one with whatever policy and region the credentials
happen to allow.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from registry.errors import InsufficientStorage, ObjectStoreException
from registry.hookspecs import hookimpl
from registry.redact import redact_url
from registry.settings import Setting, Settings
from registry.storage import (
    BlobInfo,
    BlobMissing,
    ResumableStore,
    Storage,
    storage_failure,
)
from registry.transfers import download_chunk_size
from registry_plugins.s3_common import (
    MISSING_KEY_CODES,
    boto_errors,
    brief_error,
    check_endpoint_url,
    describe_error,
    error_code,
    make_s3_client,
    unwrap_error,
)

if TYPE_CHECKING:
    from botocore.client import BaseClient

NAME = "s3"
MiB = 1024 * 1024
#: Objects at least this large are sent as multipart uploads.
MULTIPART_THRESHOLD = 8 * MiB
#: Size of each part; with MAX_CONCURRENCY this bounds a put's memory (~32 MiB).
MULTIPART_CHUNKSIZE = 8 * MiB
MAX_CONCURRENCY = 4
#: Error codes meaning "no such bucket" (HeadBucket answers a bare 404).
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})
#: answers of S3-compatible stores whose disk or quota is full (MinIO, Ceph
#: RGW): the client's 507 INSUFFICIENT_STORAGE, not a failing store
_FULL_CODES = frozenset({"XMinioStorageFull", "QuotaExceeded", "507"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"})

logger = logging.getLogger("registry.storage.s3")
T = TypeVar("T")

__all__ = ["S3Storage", "boto_errors", "make_s3_client"]


def normalize_prefix(prefix: str) -> str:
    """``"/a/b/"`` -> ``"a/b/"``; ``""`` stays ``""``: ready to prepend to a key."""
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


class S3Storage(Storage):
    """Blobs as objects ``{prefix}{key}`` in one bucket.

    :param staging_dir: local folder for uploads in flight (the core's
        ``storage.staging_dir``); S3 cannot rename a local file into place, so
        ``put`` copies it and the core removes it afterwards.
    :param client_factory: ``(endpoint_url, region) -> client``, called once,
        in a worker thread, on first use; an embedding application may pass
        one adding its own botocore config or event hooks.
    """

    name = NAME

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint_url: str,
        region: str,
        staging_dir: Path,
        client_factory: Callable[[str, str], BaseClient] = make_s3_client,
    ) -> None:
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        self._staging_dir = staging_dir
        self._client_factory = client_factory
        self._client: BaseClient | None = None
        self._client_lock = threading.Lock()
        self.transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=MAX_CONCURRENCY,
            use_threads=True,
            # The CRT transfer client, when installed, would pick its own part
            # sizes; the classic one honours the bounds above.
            preferred_transfer_client="classic",
        )

    @property
    def staging_dir(self) -> Path:
        return self._staging_dir

    @property
    def where(self) -> str:
        """The bucket and endpoint, for operator-facing messages."""
        location = f"s3://{self.bucket}/{self.prefix}"
        return f"{location} at {redact_url(self.endpoint_url)}" if self.endpoint_url else location

    def object_key(self, key: str) -> str:
        """The S3 key of blob ``key``; rejects keys that could alias another.

        :raises ValueError: an empty key or one with empty, ``.`` or ``..`` segments.
        """
        if not key or any(part in ("", ".", "..") for part in key.split("/")):
            raise ValueError(f"invalid blob key {key!r}")
        return self.prefix + key

    # -- running boto3 off the event loop -------------------------------------

    def _s3(self) -> BaseClient:
        """The shared client, built on first use. Worker threads only."""
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory(self.endpoint_url, self.region)
            return self._client

    async def _run(self, action: str, work: Callable[[], T]) -> T:
        """Run blocking boto3 ``work`` in a worker thread; its failures become 503s.

        :param action: what failed, for the error message ("store blob", …).
        """
        try:
            return await anyio.to_thread.run_sync(work)
        except boto_errors() as exc:
            # The client sees what failed; the log says where and why.
            logger.warning("s3: cannot %s in %s: %s", action, self.where, describe_error(exc))
            if error_code(unwrap_error(exc)) in _FULL_CODES:
                raise InsufficientStorage(f"cannot {action}: {brief_error(exc)}") from exc
            raise ObjectStoreException(f"cannot {action}: {brief_error(exc)}") from exc

    async def _call(self, action: str, work: Callable[[BaseClient], T]) -> T:
        """:meth:`_run` for ``work(client)``."""
        return await self._run(action, lambda: work(self._s3()))

    # -- Storage ------------------------------------------------------------

    async def startup(self) -> None:
        """Create the local staging folder and check the bucket (never creates it)."""
        try:
            await anyio.to_thread.run_sync(lambda: self._staging_dir.mkdir(parents=True, exist_ok=True))
        except OSError as exc:
            raise storage_failure(exc, f"cannot create {self._staging_dir}") from exc
        await self.check()

    async def check(self) -> None:
        """``HeadBucket``: the endpoint answers, the bucket exists, access is allowed."""
        try:
            await anyio.to_thread.run_sync(lambda: self._s3().head_bucket(Bucket=self.bucket))
        except boto_errors() as exc:
            raise ObjectStoreException(self._bucket_problem(exc)) from exc

    def _bucket_problem(self, exc: BaseException) -> str:
        code = error_code(exc)
        if code in _MISSING_BUCKET_CODES:
            return f"bucket {self.where} does not exist; create it first (the registry never creates buckets)"
        if code in _DENIED_CODES:
            return f"access to bucket {self.where} denied ({code}); check the credentials boto3 finds"
        return f"bucket {self.where} unreachable: {describe_error(exc)}"

    async def put(self, staged: Path, key: str) -> None:
        """Upload ``staged`` to ``key``; multipart for large files, aborted on failure.

        If the request is cancelled while the (uninterruptible) upload thread
        runs, the upload still finishes; the object is then deleted, so a put
        that did not return leaves nothing under ``key``.
        """
        target = self.object_key(key)

        def upload(client: BaseClient) -> None:
            client.upload_file(str(staged), self.bucket, target, Config=self.transfer_config)

        try:
            await self._call("store blob", upload)
        except OSError as exc:  # the staged file vanished or cannot be read
            raise ObjectStoreException(f"cannot read staged upload: {exc.strerror}") from exc
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._delete_after_cancel(key)
            raise

    async def _delete_after_cancel(self, key: str) -> None:
        try:
            await self.delete(key)
        except ObjectStoreException:
            logger.warning("could not delete blob %s after a cancelled put", key, exc_info=True)

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``start``..``end`` with one ranged ``GetObject``.

        :raises BlobMissing: no object under ``key`` (on first iteration).
        """
        target = self.object_key(key)
        if end is not None and end <= start:
            # An empty range cannot be expressed as an HTTP Range; still
            # report a missing blob as the contract asks.
            if not await self.exists(key):
                raise BlobMissing(key)
            return
        body = await self._call("read blob", lambda client: _get_body(client, self.bucket, target, start, end))
        if body is _MISSING:
            raise BlobMissing(key)
        if body is _PAST_END:
            return
        try:
            while chunk := await self._run("read blob", lambda: body.read(download_chunk_size())):
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(body.close)

    async def iter_blobs(self) -> AsyncIterator[BlobInfo]:
        """Every object under the prefix, a listing page at a time.

        Multipart uploads in progress are not objects yet, so they never
        appear; neither do keys that :meth:`object_key` would not produce.
        """
        token: str | None = None
        while True:
            page = await self._call("list blobs", functools.partial(_list_page, bucket=self.bucket, prefix=self.prefix,
                                                                    token=token))
            for entry in page.get("Contents", []):
                key = entry["Key"][len(self.prefix):]
                try:
                    self.object_key(key)
                except ValueError:
                    continue
                yield BlobInfo(key=key, size=entry["Size"], modified=entry["LastModified"])
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    async def delete(self, key: str) -> None:
        """``DeleteObject``; S3 answers success for a missing key too."""
        target = self.object_key(key)
        await self._call("delete blob", lambda client: client.delete_object(Bucket=self.bucket, Key=target))

    async def exists(self, key: str) -> bool:
        """``HeadObject``: True when the object is there, False on 404."""
        target = self.object_key(key)

        def head(client: BaseClient) -> bool:
            try:
                client.head_object(Bucket=self.bucket, Key=target)
            except Exception as exc:  # a ClientError has a code; anything else has none and is raised
                if error_code(exc) in MISSING_KEY_CODES:
                    return False
                raise
            return True

        return await self._call("look up blob", head)

    def resumable(self) -> ResumableStore:
        """Resumable uploads as S3 multipart uploads (see :mod:`registry_plugins.s3_resumable`)."""
        from registry_plugins.s3_resumable import S3Multipart

        return S3Multipart(self)

    async def shutdown(self) -> None:
        """Close the client's connection pool; a later call builds a new client."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await anyio.to_thread.run_sync(client.close)


#: Sentinels returned by :func:`_get_body` instead of a body.
_MISSING: Any = object()
_PAST_END: Any = object()


def _list_page(client: BaseClient, bucket: str, prefix: str, token: str | None) -> dict[str, Any]:
    """One ``ListObjectsV2`` page (blocking)."""
    request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
    if token is not None:
        request["ContinuationToken"] = token
    return client.list_objects_v2(**request)  # type: ignore[no-any-return]


def _get_body(client: BaseClient, bucket: str, key: str, start: int, end: int | None) -> Any:
    """The ``StreamingBody`` of bytes ``start``..``end`` of an object (blocking).

    Returns :data:`_MISSING` for a missing key and :data:`_PAST_END` when
    ``start`` is at or past the end of the object (S3 answers 416 there,
    where a file would read nothing).
    """
    request: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if start > 0 or end is not None:
        last = "" if end is None else str(end - 1)
        request["Range"] = f"bytes={start}-{last}"
    try:
        return client.get_object(**request)["Body"]
    except Exception as exc:  # a ClientError has a code; anything else has none and is raised
        code = error_code(exc)
        if code in MISSING_KEY_CODES:
            return _MISSING
        if code == "InvalidRange":
            return _PAST_END
        raise


@hookimpl
def registry_settings() -> list[Setting]:
    return [
        Setting("storage.s3.bucket", "str", "source-packages", "Bucket holding the package blobs; must exist."),
        Setting("storage.s3.prefix", "str", "", "Key prefix for every blob, e.g. `registry/`; empty for none."),
        Setting("storage.s3.endpoint_url", "str", "",
                "S3-compatible endpoint (MinIO, Ceph, moto); empty for AWS. Credentials come from boto3's usual chain.",
                check=check_endpoint_url),
        Setting("storage.s3.region", "str", "us-east-1", "Region requests are signed for."),
    ]


@hookimpl
def registry_storage(backend: str, settings: Settings) -> Storage | None:
    if backend != NAME:
        return None
    return S3Storage(
        bucket=settings["storage.s3.bucket"],
        prefix=settings["storage.s3.prefix"],
        endpoint_url=settings["storage.s3.endpoint_url"],
        region=settings["storage.s3.region"],
        # Unset: a "staging" folder beside the database, the local state's home.
        staging_dir=Path(settings["storage.staging_dir"] or Path(settings["database.path"]).parent / "staging"),
    )
