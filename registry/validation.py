"""Field rules of the contract: slugs, versions, booleans, digests, names.

Each ``parse_*`` function takes the raw value a client sent (already a string
or JSON value) and returns the clean value or raises ``ValidationError``
naming the field. String values are trimmed first, as the platform does.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

from registry.errors import ValidationError

SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
MAX_URL_LENGTH = 4096
MAX_PACKAGE_NAME = 128
#: Longest decimal number read from a query or header: 18 digits always fit a
#: 64-bit integer, and int() of thousands of digits is slow, then an error.
MAX_NUMBER_DIGITS = 18
#: What a package name never carries: C0 and C1 controls, DEL, and the bidi
#: embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069).
UNSAFE_NAME_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
TRUE_WORDS = {"true", "1"}
FALSE_WORDS = {"false", "0"}


def _invalid(field: str, zh: str, en: str) -> ValidationError:
    return ValidationError.single(field, zh, en)


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid(field, "必须是字符串", "must be a string")
    return value.strip()


def parse_decimal(text: str, max_digits: int = MAX_NUMBER_DIGITS) -> int | None:
    """``text`` as a non-negative int when it is 1 to ``max_digits`` ASCII
    digits, else None (a sign, a space, other digits, or too many of them).

    Every number a client sends in a query or header goes through this (or
    a caller's own length cap) before ``int()``: Python refuses to convert
    more than 4300 digits with a ``ValueError``, which would be a 500.
    """
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def parse_slug(field: str, value: str) -> str:
    """``code`` or ``module_name``: 1–32 of ``a-z 0-9 - _``, starting alphanumeric."""
    if not SLUG.fullmatch(value):
        raise _invalid(
            field,
            "须为 1-32 位小写字母、数字、- 或 _，且以字母或数字开头",
            "must be 1-32 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
        )
    return value


def check_version(field: str, version: str) -> str:
    """``version`` unchanged when it is 1-128 of ``A-Za-z0-9._+-`` starting
    alphanumeric; :raises ValidationError: naming ``field`` otherwise."""
    if not VERSION.fullmatch(version):
        raise _invalid(
            field,
            "须为 1-128 位字母、数字或 . _ + -，且以字母或数字开头",
            "must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', '+' and '-', starting with a letter or digit",
        )
    return version


def parse_version(value: Any) -> str | None:
    """The optional ``version``; None when absent or blank."""
    if value is None:
        return None
    text = _text("version", value)
    return check_version("version", text) if text else None


def parse_bool(field: str, value: Any, default: bool = False) -> bool:
    """JSON true/false, or the strings true/false/1/0 in any case, as a bool.

    Returns ``default`` when the value is absent (None) or a blank string.

    :raises ValidationError: naming ``field``, for any other value.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        if word == "":
            return default
    raise _invalid(field, "须为布尔值 true/false", "must be a boolean (true/false/1/0)")


def parse_sha256(value: Any) -> str | None:
    """The optional ``sha256`` as 64 lowercase hex digits; None when absent or blank.

    :raises ValidationError: not a string, or not 64 hexadecimal characters.
    """
    if value is None:
        return None
    text = _text("sha256", value)
    if not text:
        return None
    if not SHA256.fullmatch(text):
        raise _invalid("sha256", "须为 64 位十六进制字符", "must be 64 hexadecimal characters")
    return text.lower()


def parse_package_url(value: Any) -> str:
    """The required ``package_url``, trimmed: at most 4096 characters, no white
    space or control characters, parseable and with a scheme. Whether an
    origin takes the scheme is decided later (``UNSUPPORTED_SOURCE_ORIGIN``).

    :raises ValidationError: absent, blank or failing any of those rules.
    """
    if value is None:
        raise _invalid("package_url", "该字段是必填项", "this field is required")
    text = _text("package_url", value)
    if not text:
        raise _invalid("package_url", "该字段是必填项", "this field is required")
    if len(text) > MAX_URL_LENGTH:
        raise _invalid("package_url", f"长度不能超过 {MAX_URL_LENGTH}", f"must be at most {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 for c in text):
        raise _invalid("package_url", "不能包含空白或控制字符", "must not contain white space or control characters")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise _invalid("package_url", "不是合法的 URL", "is not a valid URL") from None
    if not parts.scheme:
        raise _invalid("package_url", "不是合法的 URL", "is not a valid URL")
    return text


def url_file_name(url: str) -> str:
    """The last segment of the URL's path, percent-decoded (may be empty)."""
    path = urlsplit(url).path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1]) if "/" in path else unquote(path)


def derive_package_name(file_name: str, version: str, fallback: str) -> str:
    """The contract's ``package_name``: the file name cut at its first dot,
    then ``:{version}`` unless the name already contains the version.

    ``fallback`` (the module name) stands in for an empty file name. Control
    characters and bidi overrides become ``_`` (see :func:`safe_name`).
    """
    base = safe_name(file_name.split("/")[-1].split("\\")[-1].split(".", 1)[0]) or fallback
    if version in base:
        return base[:MAX_PACKAGE_NAME]
    suffix = f":{version}"
    room = max(0, MAX_PACKAGE_NAME - len(suffix))
    return (base[:room] + suffix)[:MAX_PACKAGE_NAME]


def safe_name(text: str) -> str:
    """``text`` with every C0/C1 control, DEL and bidi override replaced by
    ``_``: a name shown on a terminal never moves its cursor, changes its
    colours or reorders the text around it."""
    return UNSAFE_NAME_CHARS.sub("_", text)
