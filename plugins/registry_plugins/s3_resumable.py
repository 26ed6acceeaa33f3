"""Resumable uploads kept in S3 itself, as one multipart upload each.

The state kept in the record store names the multipart upload, its parts
(number, ETag, size) and the *tail*: bytes not yet enough for a part (S3
wants at least 5 MiB in every part but the last), kept as a small object of
their own. Nothing lives on the local disk between requests, so an upload
survives a restart and continues on any instance sharing the bucket.

Every object is below ``{prefix}.resumable/{upload_id}/``: ``assembled``
(the completed multipart upload) and ``tail-{start}-{size}`` objects. A tail
key is never reused (its start and size name it), so a crash between storing
a new tail and committing the state leaves the old state's tail intact; the
stale objects go when the upload is discarded. Those keys never match the
blob key pattern, so ``gc`` never takes them for orphans; it finds the
objects and multipart uploads of an upload no record names through
:meth:`S3Multipart.kept` instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from registry.storage import UPLOAD_ID, KeptUpload, ResumableStore
from registry_plugins.s3_common import MISSING_KEY_CODES, error_code

if TYPE_CHECKING:
    from registry_plugins.storage_s3 import S3Storage

MiB = 1024 * 1024
#: S3's smallest part (every part but the last).
MIN_PART = 5 * MiB
#: Parts are cut to this size from larger chunks; bounds memory per append.
PART_SIZE = 8 * MiB
FOLDER = ".resumable"


class S3Multipart(ResumableStore):
    """:class:`ResumableStore` over S3 multipart uploads of ``storage``'s bucket."""

    def __init__(self, storage: S3Storage) -> None:
        self.storage = storage

    def _key(self, upload_id: str, name: str) -> str:
        return self.storage.object_key(f"{FOLDER}/{upload_id}/{name}")

    async def begin(self, upload_id: str) -> dict[str, Any]:
        target = self._key(upload_id, "assembled")
        bucket = self.storage.bucket
        created = await self.storage._call(
            "start resumable upload", lambda c: c.create_multipart_upload(Bucket=bucket, Key=target))
        return {"multipart": created["UploadId"], "parts": [], "tail": None}

    async def append(self, upload_id: str, state: dict[str, Any], offset: int, chunk: Path) -> dict[str, Any]:
        storage = self.storage
        bucket = storage.bucket
        tail = state.get("tail")
        parts = list(state.get("parts", []))

        def work(client: BaseClient) -> dict[str, Any]:
            pending = b""
            if tail is not None:
                pending = client.get_object(Bucket=bucket, Key=tail["key"])["Body"].read()[: tail["size"]]
            start = offset - len(pending)  # where ``pending`` begins in the upload
            with chunk.open("rb") as source:
                while True:
                    data = source.read(PART_SIZE - len(pending))  # pending stays below PART_SIZE here
                    pending += data
                    more = bool(data)
                    if len(pending) >= PART_SIZE or (not more and len(pending) >= MIN_PART):
                        number = len(parts) + 1
                        sent = client.upload_part(Bucket=bucket, Key=self._key(upload_id, "assembled"),
                                                  UploadId=state["multipart"], PartNumber=number, Body=pending)
                        parts.append([number, sent["ETag"], len(pending)])
                        start += len(pending)
                        pending = b""
                    if not more:
                        break
            new_tail = None
            if pending:
                key = self._key(upload_id, f"tail-{start:020d}-{len(pending)}")
                client.put_object(Bucket=bucket, Key=key, Body=pending)
                new_tail = {"key": key, "size": len(pending)}
            return {"multipart": state["multipart"], "parts": parts, "tail": new_tail}

        return await storage._call("keep upload chunk", work)

    async def assemble(self, upload_id: str, state: dict[str, Any]) -> AsyncIterator[bytes]:
        storage = self.storage
        bucket = storage.bucket
        target = self._key(upload_id, "assembled")
        tail = state.get("tail")
        parts = list(state.get("parts", []))
        if not parts and tail is not None:
            source = tail["key"]  # smaller than one part: the tail is the whole upload
        else:
            def complete(client: BaseClient) -> None:
                # Joined by an earlier attempt whose outcome was not kept (a crash or a
                # failure while storing the package): its parts are gone, the object is
                # the upload, and no part (the tail's neither) can be added any more.
                try:
                    client.head_object(Bucket=bucket, Key=target)
                    return
                except Exception as exc:  # a ClientError has a code; anything else has none and is raised
                    if error_code(exc) not in MISSING_KEY_CODES:
                        raise
                if tail is not None:
                    data = client.get_object(Bucket=bucket, Key=tail["key"])["Body"].read()[: tail["size"]]
                    sent = client.upload_part(Bucket=bucket, Key=target, UploadId=state["multipart"],
                                              PartNumber=len(parts) + 1, Body=data)
                    parts.append([len(parts) + 1, sent["ETag"], len(data)])
                try:
                    client.complete_multipart_upload(
                        Bucket=bucket, Key=target, UploadId=state["multipart"],
                        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _ in parts]})
                except ClientError as exc:
                    # Completed by an earlier attempt whose answer was lost: the object is there.
                    if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                        raise
                    client.head_object(Bucket=bucket, Key=target)

            await storage._call("complete resumable upload", complete)
            source = target
        body = await storage._call("read resumable upload", lambda c: c.get_object(Bucket=bucket, Key=source)["Body"])
        try:
            while data := await storage._run("read resumable upload", lambda: body.read(MiB)):
                yield data
        finally:
            await storage._run("read resumable upload", body.close)

    async def discard(self, upload_id: str, state: dict[str, Any]) -> None:
        storage = self.storage
        bucket = storage.bucket
        folder = self._folder(upload_id)

        def work(client: BaseClient) -> None:
            # The state names its multipart upload; without one (``registry gc``
            # of bytes no record names) every multipart upload below the folder goes.
            if state.get("multipart"):
                multiparts = [(self._key(upload_id, "assembled"), state["multipart"])]
            else:
                multiparts = [(u["Key"], u["UploadId"]) for u in _pages(client, "list_multipart_uploads", "Uploads",
                                                                         Bucket=bucket, Prefix=folder)]
            for key, multipart in multiparts:
                try:
                    client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=multipart)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                        raise
            for entry in _pages(client, "list_objects_v2", "Contents", Bucket=bucket, Prefix=folder):
                client.delete_object(Bucket=bucket, Key=entry["Key"])

        await storage._call("discard resumable upload", work)

    async def kept(self) -> list[KeptUpload]:
        """Every upload with objects or a multipart upload below the resumable
        folder: last modified when its newest object, part or multipart
        upload was made, its size what they hold."""
        storage = self.storage
        bucket = storage.bucket
        folder = storage.prefix + f"{FOLDER}/"

        def work(client: BaseClient) -> list[KeptUpload]:
            found: dict[str, tuple[datetime, int]] = {}

            def note(key: str, moment: datetime, size: int) -> None:
                upload_id = key[len(folder):].split("/", 1)[0]
                if UPLOAD_ID.fullmatch(upload_id):
                    newest, total = found.get(upload_id, (moment, 0))
                    found[upload_id] = (max(newest, moment), total + size)

            for entry in _pages(client, "list_objects_v2", "Contents", Bucket=bucket, Prefix=folder):
                note(entry["Key"], entry["LastModified"], entry["Size"])
            for upload in _pages(client, "list_multipart_uploads", "Uploads", Bucket=bucket, Prefix=folder):
                note(upload["Key"], upload["Initiated"], 0)
                for part in _pages(client, "list_parts", "Parts", Bucket=bucket, Key=upload["Key"],
                                   UploadId=upload["UploadId"]):
                    note(upload["Key"], part["LastModified"], part["Size"])
            return [KeptUpload(upload_id, modified, size) for upload_id, (modified, size) in found.items()]

        return await storage._call("list resumable uploads", work)

    def _folder(self, upload_id: str) -> str:
        return self.storage.prefix + f"{FOLDER}/{upload_id}/"


def _pages(client: BaseClient, operation: str, field: str, **arguments: Any) -> Iterator[dict[str, Any]]:
    """Every item under ``field`` of every page ``operation`` answers (boto3's paginator)."""
    for page in client.get_paginator(operation).paginate(**arguments):
        yield from page.get(field, [])
