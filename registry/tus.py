"""tus 1.0.0 header parsing: numbers, ``Upload-Metadata``, ``Upload-Checksum``.

Pure functions, no I/O. Every number is parsed with a length cap and every
malformed header is a ``VALIDATION_ERROR`` naming the header, never a 500.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from registry.errors import TusVersionUnsupported, ValidationError
from registry.validation import MAX_NUMBER_DIGITS, parse_decimal

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,checksum"
CHECKSUM_ALGORITHMS = "sha256,sha1"
DIGEST_SIZES = {"sha256": 32, "sha1": 20}
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
#: Largest ``Upload-Metadata`` header accepted.
MAX_METADATA_LENGTH = 4096
METADATA_KEYS = ("filename", "version", "allow_overwrite", "sha256")


def _invalid(header: str, zh: str, en: str) -> ValidationError:
    return ValidationError.single(header, zh, en)


def require_tus_version(headers: Mapping[str, str]) -> None:
    """:raises TusVersionUnsupported: ``Tus-Resumable`` absent or not 1.0.0."""
    if headers.get("tus-resumable", "").strip() != TUS_VERSION:
        error = TusVersionUnsupported(f"Tus-Resumable must be {TUS_VERSION}")
        error.headers["Tus-Version"] = TUS_VERSION
        raise error


def parse_number(headers: Mapping[str, str], name: str) -> int:
    """The non-negative integer header ``name``.

    :raises ValidationError: absent, not decimal digits, or longer than
        :data:`registry.validation.MAX_NUMBER_DIGITS` digits (so it fits a
        signed 64-bit column in any record store).
    """
    raw = headers.get(name.lower())
    if raw is None:
        raise _invalid(name, "该请求头是必填项", "this header is required")
    number = parse_decimal(raw.strip())
    if number is None:
        raise _invalid(name, "须为非负整数", f"must be a non-negative integer of at most {MAX_NUMBER_DIGITS} digits")
    return number


def parse_metadata(raw: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (value optional).

    Unknown keys are kept (tus clients add their own, e.g. ``filetype``) but
    ignored by the caller.

    :raises ValidationError: too long, a duplicate key, or a value that is
        not base64 of UTF-8 text.
    """
    if raw is None or not raw.strip():
        return {}
    if len(raw) > MAX_METADATA_LENGTH:
        raise _invalid("Upload-Metadata", f"长度不能超过 {MAX_METADATA_LENGTH}",
                       f"must be at most {MAX_METADATA_LENGTH} characters")
    result: dict[str, str] = {}
    for pair in raw.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if not key or len(parts) > 2 or key in result:
            raise _invalid("Upload-Metadata", "格式错误", "must be comma-separated 'key base64value' pairs")
        value = ""
        if len(parts) == 2:
            try:
                value = base64.b64decode(parts[1], validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise _invalid("Upload-Metadata", f"{key} 的值不是合法的 base64",
                               f"the value of {key} is not base64 of UTF-8 text") from None
        result[key] = value
    return result


def parse_checksum(raw: str | None) -> tuple[str, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64 digest>`` as (algorithm, raw digest), or None.

    ``sha256`` is the registry's own; ``sha1`` is accepted too, because tus
    requires every server to support it and clients (tuspy) default to it.

    :raises ValidationError: another algorithm or a malformed digest (tus answers 400).
    """
    if raw is None:
        return None
    algorithm, _, encoded = raw.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in DIGEST_SIZES:
        raise _invalid("Upload-Checksum", f"仅支持 {CHECKSUM_ALGORITHMS}", f"only {CHECKSUM_ALGORITHMS} are supported")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        digest = b""
    if len(digest) != DIGEST_SIZES[algorithm]:
        raise _invalid("Upload-Checksum", f"不是合法的 base64 {algorithm} 摘要", f"is not a base64 {algorithm} digest")
    return algorithm, digest


def encode_metadata(values: Mapping[str, str]) -> str:
    """``Upload-Metadata`` for ``values``: the inverse of :func:`parse_metadata`."""
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items())
