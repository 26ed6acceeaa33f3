"""Built-in origin ``s3``: fetch ``s3://bucket/key`` with one ``GetObject``.

Configured by ``[origins.s3]`` (endpoint_url, region, allowed_buckets); the
credentials are boto3's usual chain, as for the ``s3`` storage, whose client
settings (timeouts, bounded retries, path-style addressing for custom
endpoints) this origin shares.

The key is everything after the bucket's ``/``, taken literally as the AWS CLI
does: no percent-decoding, and ``?`` or ``#`` are part of the key. The body is
read in :data:`READ_SIZE` chunks in worker threads; the object's
``ContentLength`` is the announced size, so a truncated body fails the upload.
Every failure is a ``PACKAGE_DOWNLOAD_*`` error naming the object, never a 500.
boto3 is loaded by the first fetch, in the worker thread that builds the
client: a registry that is never sent an ``s3://`` link never imports it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from registry.errors import (
    PackageDownloadFailed,
    PackageDownloadTimeout,
    RegistryError,
    SourceOriginForbidden,
    ValidationError,
)
from registry.hookspecs import hookimpl
from registry.origins import Download, Origin
from registry.redact import redact_url
from registry.settings import Setting, Settings
from registry_plugins.s3_common import (
    boto_errors,
    brief_error,
    check_endpoint_url,
    describe_error,
    error_code,
    make_s3_client,
)

if TYPE_CHECKING:
    from botocore.client import BaseClient

NAME = "s3"
SCHEME_PREFIX = "s3://"
READ_SIZE = 1024 * 1024
#: Bucket names as S3 accepts them, legacy (upper case, underscores) included;
#: this also keeps ``user@``, ``:port`` and empty names out.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_MAX_KEY_BYTES = 1024
T = TypeVar("T")

logger = logging.getLogger("registry.origins.s3")


@dataclass(frozen=True)
class S3Object:
    """A parsed ``s3://bucket/key``."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> S3Object:
    """Split ``s3://bucket/key``.

    :raises ValidationError: on ``package_url`` when the bucket or key is
        missing or malformed.
    """
    rest = url[len(SCHEME_PREFIX):] if url[: len(SCHEME_PREFIX)].lower() == SCHEME_PREFIX else ""
    bucket, _, key = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValidationError.single("package_url", "S3 地址缺少合法的存储桶名 (s3://bucket/key)",
                                     "the s3 URL lacks a valid bucket name (s3://bucket/key)")
    if not key or len(key.encode()) > _MAX_KEY_BYTES or "\x00" in key:
        raise ValidationError.single("package_url", "S3 地址缺少对象键 (s3://bucket/key)",
                                     "the s3 URL lacks an object key (s3://bucket/key)")
    return S3Object(bucket, key)


class S3Origin(Origin):
    """``s3://bucket/key`` through one S3 endpoint.

    :param allowed_buckets: buckets links may name; empty allows any bucket
        the registry's credentials can read.
    """

    name = NAME

    def __init__(self, endpoint_url: str, region: str, allowed_buckets: list[str]) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.allowed_buckets = frozenset(allowed_buckets)
        self._client: BaseClient | None = None
        self._client_lock = threading.Lock()

    def accepts(self, url: str) -> bool:
        return url[: len(SCHEME_PREFIX)].lower() == SCHEME_PREFIX

    def _s3(self) -> BaseClient:
        """The shared client, built on first use. Worker threads only."""
        with self._client_lock:
            if self._client is None:
                self._client = make_s3_client(self.endpoint_url, self.region)
            return self._client

    @asynccontextmanager
    async def open(self, url: str, max_size: int) -> AsyncIterator[Download]:
        location = parse_s3_url(url)
        if self.allowed_buckets and location.bucket not in self.allowed_buckets:
            raise SourceOriginForbidden(f"bucket '{location.bucket}' is not in origins.s3.allowed_buckets")
        response = await _fetch(location, lambda: self._s3().get_object(Bucket=location.bucket, Key=location.key))
        body = response["Body"]
        try:
            # an S3 key is not a URL path: '?' and '#' are part of it, nothing is percent-decoded
            yield Download(chunks=_read(location, body), size=response.get("ContentLength"),
                           file_name=location.key.rsplit("/", 1)[-1], display_url=redact_url(url))
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(body.close)


async def _fetch(location: S3Object, work: Callable[[], T]) -> T:
    """Run blocking boto3 ``work`` in a worker thread, mapping its failures."""
    try:
        return await anyio.to_thread.run_sync(work)
    except boto_errors() as exc:
        logger.warning("s3 origin: cannot fetch %s: %s", location, describe_error(exc))
        raise download_error(location, exc) from exc


async def _read(location: S3Object, body: Any) -> AsyncIterator[bytes]:
    """The chunks of a ``GetObject`` body (a botocore ``StreamingBody``)."""
    while chunk := await _fetch(location, lambda: body.read(READ_SIZE)):
        yield chunk


def download_error(location: S3Object, exc: BaseException) -> RegistryError:
    """The client-facing error for a failed fetch of ``location``."""
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError)):
        return PackageDownloadTimeout(f"{location}: {type(exc).__name__}")
    code = error_code(exc)
    if code in ("NoSuchKey", "404", "NotFound"):
        return PackageDownloadFailed(f"{location}: no such object")
    if code == "NoSuchBucket":
        return PackageDownloadFailed(f"{location}: no such bucket")
    if code in ("AccessDenied", "403", "Forbidden"):
        return PackageDownloadFailed(f"{location}: access denied")
    return PackageDownloadFailed(f"{location}: {brief_error(exc)}")


@hookimpl
def registry_settings() -> list[Setting]:
    return [
        Setting("origins.s3.endpoint_url", "str", "",
                "S3-compatible endpoint `s3://` links are fetched from; empty for AWS.", check=check_endpoint_url),
        Setting("origins.s3.region", "str", "us-east-1", "Region requests are signed for."),
        Setting("origins.s3.allowed_buckets", "list[str]", [],
                "Buckets `s3://` links may name; empty: any bucket the credentials can read."),
    ]


@hookimpl
def registry_origins(settings: Settings) -> list[Origin]:
    return [
        S3Origin(
            endpoint_url=settings["origins.s3.endpoint_url"],
            region=settings["origins.s3.region"],
            allowed_buckets=settings["origins.s3.allowed_buckets"],
        )
    ]
