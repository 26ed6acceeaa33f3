"""Upload a file (multipart field ``package``) to a live registry."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    Api,
    RegistryProcess,
    base_config,
    blob_files,
    make_tar,
    merge,
    package,
    run_python,
    staged_files,
    start_registry,
)

FORMAT_MEDIA_TYPES = {
    "tar.gz": "application/gzip",
    "tar.bz2": "application/x-bzip2",
    "tar.xz": "application/x-xz",
    "tar": "application/x-tar",
    "zip": "application/zip",
}
RECORD_KEYS = {"id", "version", "package_name", "package_size", "sha256_signature",
               "is_deleted", "updated", "created", "operator"}


def multipart_body(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body from (name, file name or None, data), in order."""
    boundary = "----registry-test-" + uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, file_name, data in parts:
        disposition = f'form-data; name="{name}"'
        if file_name is not None:
            disposition += f'; filename="{file_name}"'
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode())
        if file_name is not None:
            chunks.append(b"Content-Type: application/octet-stream\r\n")
        chunks.append(b"\r\n" + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def storage_root(process: RegistryProcess) -> Path:
    return process.config.parent / "packages"


def staging_files(process: RegistryProcess) -> list[Path]:
    return staged_files(storage_root(process) / ".staging")


def assert_nothing_left(api: Api, process: RegistryProcess, code: str) -> None:
    """The contract: a failed upload leaves no record, no blob, no staging file."""
    listing = api.list(code, include_deleted="true")
    assert listing.status_code == 200, listing.text
    assert listing.json()["count"] == 0
    assert list(blob_files(storage_root(process) / code)) == []
    assert staging_files(process) == []


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.headers["bkapi-error-code"] == code


# -- success ------------------------------------------------------------------------


def test_upload_file_with_version_field(api: Api, code: str, registry: RegistryProcess) -> None:
    data = package(salt=code)
    response = api.upload(code, data, filename="example.tar.gz", version="0.0.5")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == RECORD_KEYS
    assert body["version"] == "0.0.5"
    assert body["package_name"] == "example:0.0.5"
    assert body["package_size"] == str(len(data))
    assert body["sha256_signature"] == hashlib.sha256(data).hexdigest()
    assert body["is_deleted"] is False
    assert body["operator"] == "alice"
    stored = list(blob_files(storage_root(registry) / code))
    assert len(stored) == 1
    assert stored[0].read_bytes() == data
    assert staging_files(registry) == []


def test_package_name_cut_at_first_dot(api: Api, code: str) -> None:
    response = api.upload(code, package(salt=code), filename="demo-1.2.0.tar.gz", version="1.2.0")
    assert response.status_code == 201, response.text
    assert response.json()["package_name"] == "demo-1:1.2.0"


def test_package_name_already_containing_version(api: Api, code: str) -> None:
    response = api.upload(code, package(salt=code), filename="app-v3.tar.gz", version="v3")
    assert response.status_code == 201, response.text
    assert response.json()["package_name"] == "app-v3"


def test_version_field_is_trimmed(api: Api, code: str) -> None:
    response = api.upload(code, package(salt=code), filename="p.tar.gz", version="   2.0.1  ")
    assert response.status_code == 201, response.text
    assert response.json()["version"] == "2.0.1"
    assert response.json()["package_name"] == "p:2.0.1"


@pytest.mark.parametrize("spec", [2, 3])
def test_version_from_app_desc(api: Api, code: str, spec: int) -> None:
    response = api.upload(code, package("4.5.6", salt=code, spec=spec), filename="bundle.tar.gz")
    assert response.status_code == 201, response.text
    assert response.json()["version"] == "4.5.6"
    assert response.json()["package_name"] == "bundle:4.5.6"


def test_an_app_desc_of_nested_aliases_is_read_at_once() -> None:
    """A YAML alias repeats a node without copying it: 500 bytes of
    ``app_desc.yaml`` can name a billion strings. Only the scalars that say
    the version are read, no structure is turned into text (which expands
    it: gigabytes, and a server out of memory). Run in a child limited to
    1 GiB, so a regression ends in a MemoryError instead of exhausting the machine."""
    script = ("import resource\n"
              "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
              "from registry.archive import version_from_app_desc\n"
              "lines = ['a0: &a0 [' + ','.join(['lol'] * 10) + ']']\n"
              "lines += [f'a{i}: &a{i} [' + ','.join([f'*a{i - 1}'] * 10) + ']' for i in range(1, 9)]\n"
              "lines += ['specVersion: *a8', 'appVersion: *a8', 'app_version: 1.2.3']\n"
              "print(version_from_app_desc('\\n'.join(lines).encode()))\n")
    done = run_python(script)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1.2.3"


def test_version_field_wins_over_app_desc(api: Api, code: str) -> None:
    response = api.upload(code, package("4.5.6", salt=code), filename="bundle.tar.gz", version="9.9.9")
    assert response.status_code == 201, response.text
    assert response.json()["version"] == "9.9.9"


def test_missing_version_info(api: Api, code: str, registry: RegistryProcess) -> None:
    response = api.upload(code, package(salt=code), filename="bundle.tar.gz")
    assert_error(response, 400, "MISSING_VERSION_INFO")
    assert_nothing_left(api, registry, code)


@pytest.mark.parametrize("fmt", list(FORMAT_MEDIA_TYPES))
def test_each_format(api: Api, code: str, fmt: str) -> None:
    data = package("1.0.0", salt=code + fmt, fmt=fmt)
    response = api.upload(code, data, filename=f"src.{fmt}")
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["version"] == "1.0.0"
    assert record["package_name"] == "src:1.0.0"
    assert record["sha256_signature"] == hashlib.sha256(data).hexdigest()
    download = api.download(code, record["id"])
    assert download.status_code == 200
    assert download.content == data
    assert download.headers["content-type"].split(";")[0] == FORMAT_MEDIA_TYPES[fmt]


def test_format_detected_by_content_not_name(api: Api, code: str) -> None:
    """A zip uploaded under a .tar.gz name is stored and served as a zip."""
    data = package("1", salt=code, fmt="zip")
    response = api.upload(code, data, filename="misnamed.tar.gz")
    assert response.status_code == 201, response.text
    download = api.download(code, response.json()["id"])
    assert download.content == data
    assert download.headers["content-type"].split(";")[0] == "application/zip"


@pytest.mark.parametrize("file_first", [True, False], ids=["fields-after-file", "fields-before-file"])
def test_fields_before_and_after_the_file_part(api: Api, code: str, file_first: bool) -> None:
    data = package(salt=code)
    file_part = ("package", "ordered.tar.gz", data)
    fields = [
        ("version", None, b"  3.1.4 "),
        ("allow_overwrite", None, b"false"),
        ("sha256", None, hashlib.sha256(data).hexdigest().encode()),
    ]
    body, content_type = multipart_body([file_part, *fields] if file_first else [*fields, file_part])
    response = api.http.post(api.path(code), content=body, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    assert response.json()["version"] == "3.1.4"
    assert response.json()["package_name"] == "ordered:3.1.4"
    assert api.download(code, response.json()["id"]).content == data


def test_allow_overwrite_after_the_file_part_is_honoured(api: Api, code: str) -> None:
    first = api.upload(code, package(salt=code + "a"), filename="o.tar.gz", version="1")
    assert first.status_code == 201, first.text
    data = package(salt=code + "b")
    body, content_type = multipart_body([
        ("package", "o.tar.gz", data),
        ("version", None, b"1"),
        ("allow_overwrite", None, b"TRUE"),
    ])
    response = api.http.post(api.path(code), content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == first.json()["id"]
    assert response.json()["sha256_signature"] == hashlib.sha256(data).hexdigest()


def test_sha256_field_verified(api: Api, code: str, registry: RegistryProcess) -> None:
    data = package(salt=code)
    wrong = api.upload(code, data, filename="c.tar.gz", version="1", sha256="f" * 64)
    assert_error(wrong, 400, "CHECKSUM_MISMATCH")
    assert_nothing_left(api, registry, code)
    right = api.upload(code, data, filename="c.tar.gz", version="1",
                       sha256=hashlib.sha256(data).hexdigest().upper())
    assert right.status_code == 201, right.text


def test_streamed_chunked_upload(api: Api, code: str) -> None:
    """A body without Content-Length (chunked) is streamed into the staging file."""
    data = package(salt=code)
    body, content_type = multipart_body([("version", None, b"7"), ("package", "s.tar.gz", data)])

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start:start + 100]

    response = api.http.post(api.path(code), content=chunks(), headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    assert response.json()["sha256_signature"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("prefix", ["/stag", "/api/bkpaas3/prod"])
def test_stage_prefixes_serve_file_upload(api: Api, code: str, prefix: str) -> None:
    response = api.http.post(api.path(code, prefix=prefix), files={"package": ("p.tar.gz", package(salt=code))},
                             data={"version": "1"})
    assert response.status_code == 201, response.text


# -- failures -----------------------------------------------------------------------


def test_missing_package_field(api: Api, code: str, registry: RegistryProcess) -> None:
    body, content_type = multipart_body([("version", None, b"1.0")])
    response = api.http.post(api.path(code), content=body, headers={"Content-Type": content_type})
    assert_error(response, 400, "VALIDATION_ERROR")
    assert "package" in response.json()["fields_detail"]
    assert_nothing_left(api, registry, code)


def test_file_under_another_field_name_is_not_the_package(api: Api, code: str, registry: RegistryProcess) -> None:
    body, content_type = multipart_body([("file", "p.tar.gz", package(salt=code)), ("version", None, b"1")])
    response = api.http.post(api.path(code), content=body, headers={"Content-Type": content_type})
    assert_error(response, 400, "VALIDATION_ERROR")
    assert "package" in response.json()["fields_detail"]
    assert_nothing_left(api, registry, code)


@pytest.mark.parametrize("kind", ["json", "urlencoded", "raw"])
def test_non_multipart_body(api: Api, code: str, registry: RegistryProcess, kind: str) -> None:
    if kind == "json":
        response = api.http.post(api.path(code), json={"version": "1", "package": "x"})
    elif kind == "urlencoded":
        response = api.http.post(api.path(code), data={"version": "1", "package": "x"})
    else:
        response = api.http.post(api.path(code), content=package(salt=code),
                                 headers={"Content-Type": "application/gzip"})
    assert_error(response, 400, "VALIDATION_ERROR")
    assert response.json()["fields_detail"]
    assert_nothing_left(api, registry, code)


def test_multipart_without_boundary(api: Api, code: str, registry: RegistryProcess) -> None:
    body, _ = multipart_body([("version", None, b"1"), ("package", "p.tar.gz", package(salt=code))])
    response = api.http.post(api.path(code), content=body, headers={"Content-Type": "multipart/form-data"})
    assert_error(response, 400, "VALIDATION_ERROR")
    assert_nothing_left(api, registry, code)


def test_two_package_parts(api: Api, code: str, registry: RegistryProcess) -> None:
    body, content_type = multipart_body([
        ("version", None, b"1"),
        ("package", "a.tar.gz", package(salt=code + "a")),
        ("package", "b.tar.gz", package(salt=code + "b")),
    ])
    response = api.http.post(api.path(code), content=body, headers={"Content-Type": content_type})
    assert_error(response, 400, "VALIDATION_ERROR")
    assert "package" in response.json()["fields_detail"]
    assert_nothing_left(api, registry, code)


def test_malformed_multipart_body(api: Api, code: str, registry: RegistryProcess) -> None:
    response = api.http.post(api.path(code), content=b"--nope\r\ngarbage",
                             headers={"Content-Type": "multipart/form-data; boundary=elsewhere"})
    assert_error(response, 400, "VALIDATION_ERROR")
    assert_nothing_left(api, registry, code)


def test_oversized_part_headers(api: Api, code: str, registry: RegistryProcess) -> None:
    """A part's headers are held in memory until the part starts: capped, whatever the
    python-multipart release (recent ones cap each line and their count, not the sum)."""
    boundary = "----registry-test-" + uuid.uuid4().hex
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 4000) for i in range(5))
    body = (f"--{boundary}\r\n".encode() + padding
            + b'Content-Disposition: form-data; name="package"; filename="p.tar.gz"\r\n\r\n'
            + package(salt=code) + f"\r\n--{boundary}--\r\n".encode())
    response = api.http.post(api.path(code), content=body,
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_error(response, 400, "VALIDATION_ERROR")
    assert_nothing_left(api, registry, code)


def test_invalid_version_field(api: Api, code: str, registry: RegistryProcess) -> None:
    response = api.upload(code, package(salt=code), version="../1", allow_overwrite="maybe")
    assert_error(response, 400, "VALIDATION_ERROR")
    assert set(response.json()["fields_detail"]) == {"version", "allow_overwrite"}
    assert_nothing_left(api, registry, code)


def test_empty_file(api: Api, code: str, registry: RegistryProcess) -> None:
    response = api.upload(code, b"", filename="empty.tar.gz", version="1")
    assert_error(response, 400, "INVALID_PACKAGE")
    assert_nothing_left(api, registry, code)


@pytest.mark.parametrize("data", [b"this is not an archive at all\n" * 20, b"\x1f\x8b\x08\x00truncated-gzip"],
                         ids=["text", "broken-gzip"])
def test_not_an_archive(api: Api, code: str, registry: RegistryProcess, data: bytes) -> None:
    response = api.upload(code, data, filename="bad.tar.gz", version="1")
    assert_error(response, 400, "INVALID_PACKAGE")
    assert_nothing_left(api, registry, code)


def test_failed_upload_leaves_existing_version_untouched(api: Api, code: str, registry: RegistryProcess) -> None:
    data = package(salt=code)
    first = api.upload(code, data, filename="keep.tar.gz", version="1")
    assert first.status_code == 201, first.text
    bad = api.upload(code, b"garbage" * 10, filename="keep.tar.gz", version="1", allow_overwrite=True)
    assert_error(bad, 400, "INVALID_PACKAGE")
    assert api.get(code, first.json()["id"]).json() == first.json()
    assert api.download(code, first.json()["id"]).content == data
    assert [p.read_bytes() for p in blob_files(storage_root(registry) / code)] == [data]
    assert staging_files(registry) == []


# -- size limit ---------------------------------------------------------------------

SMALL_LIMIT = 4096


@pytest.fixture(scope="module")
def small_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("small-registry")
    process = start_registry(root, merge(base_config(root), {"limits": {"max_package_size": SMALL_LIMIT}}))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def small_token(small_registry: RegistryProcess) -> str:
    return small_registry.token("bob")


@pytest.fixture
def small_api(small_registry: RegistryProcess, small_token: str) -> Iterator[Api]:
    client = Api(small_registry.url, small_token)
    try:
        yield client
    finally:
        client.close()


def big_package(size: int, salt: str) -> bytes:
    """A valid tar (uncompressed, so its size is predictable) of at least ``size`` bytes."""
    return make_tar({"blob.bin": salt.encode() * (size // len(salt) + 1)}, compression="")


def test_within_limit_accepted(small_api: Api, code: str) -> None:
    data = package(salt=code)
    assert len(data) <= SMALL_LIMIT
    response = small_api.upload(code, data, version="1")
    assert response.status_code == 201, response.text


def test_too_large_declared(small_api: Api, small_registry: RegistryProcess, code: str) -> None:
    """A Content-Length far past the limit is refused (before or while reading)."""
    data = big_package(256 * 1024, code)
    response = small_api.upload(code, data, version="1")
    assert_error(response, 413, "PACKAGE_TOO_LARGE")
    assert_nothing_left(small_api, small_registry, code)


def test_too_large_just_past_the_limit(small_api: Api, small_registry: RegistryProcess, code: str) -> None:
    """Declared size within the multipart slack, file one byte too many: refused while streaming."""
    data = big_package(SMALL_LIMIT, code)
    assert len(data) > SMALL_LIMIT
    response = small_api.upload(code, data, version="1")
    assert_error(response, 413, "PACKAGE_TOO_LARGE")
    assert_nothing_left(small_api, small_registry, code)


@pytest.mark.parametrize("size", [SMALL_LIMIT + 1, 256 * 1024])
def test_too_large_streamed(small_api: Api, small_registry: RegistryProcess, code: str, size: int) -> None:
    """A chunked body (no Content-Length) is cut off once past the limit."""
    data = (code.encode() * size)[:size]
    body, content_type = multipart_body([("version", None, b"1"), ("package", "big.tar.gz", data)])

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1024):
            yield body[start:start + 1024]

    response = small_api.http.post(small_api.path(code), content=chunks(), headers={"Content-Type": content_type})
    assert_error(response, 413, "PACKAGE_TOO_LARGE")
    assert_nothing_left(small_api, small_registry, code)


def test_discarded_parts_count_toward_the_body_limit(small_api: Api, code: str, small_registry: RegistryProcess) -> None:
    """A chunked body whose bulk is in a part that is not the package is not read forever."""
    boundary = "limit-boundary"
    junk = b"x" * (SMALL_LIMIT + 256 * 1024)

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"package\"; filename=\"p.tar.gz\"\r\n\r\n").encode()
        yield package(salt=code)[:100]
        yield f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"junk\"; filename=\"j.bin\"\r\n\r\n".encode()
        for start in range(0, len(junk), 16 * 1024):
            yield junk[start:start + 16 * 1024]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = small_api.http.post(small_api.path(code), content=body(),
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413
    assert response.json()["code"] == "PACKAGE_TOO_LARGE"
    assert small_api.list(code).json()["count"] == 0
