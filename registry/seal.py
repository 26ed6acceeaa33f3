"""Seal a secret-bearing string so that it can be kept in the record store.

A background job must be able to run again after a restart, on any instance,
so its full ``package_url`` (a pre-signed URL carries its signature in the
query) has to outlive the request; but secrets never reach the database in
clear. The URL is stored sealed with a key kept in a file beside the
database (mode 0600, made on first use), or in ``[jobs] key_file``, which
every instance sharing a database server must be given (see
:func:`key_path`): encrypted with an HMAC-SHA256
keystream (a fresh 16-byte nonce per seal) and authenticated with an
HMAC-SHA256 tag, standard library only. A database copied without the key
file reveals no secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KEY_SIZE = 32
NONCE_SIZE = 16
TAG_SIZE = 32


class SealBroken(Exception):
    """The sealed text was not made with this key, or was altered."""


def key_path(settings: Mapping[str, Any]) -> tuple[Path, bool]:
    """Where this registry's sealing key is, and whether it was configured:
    ``[jobs] key_file``, else ``{database.path}`` with the suffix ``.jobs-key``
    (made on first use; only instances on one host share that file)."""
    configured = settings["jobs.key_file"]
    if configured:
        return Path(configured), True
    return Path(settings["database.path"]).with_suffix(".jobs-key"), False


def read_key(path: Path) -> bytes:
    """The key an operator put in ``path``: 32 bytes, raw or as 64 hex digits
    (``openssl rand -hex 32``); never made here, because instances that each
    made their own would not open each other's jobs. Blocking.

    :raises SealBroken: the file is missing, unreadable or holds no key.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SealBroken(f"cannot read {path}: {exc.strerror}") from None
    text = raw.strip()
    if len(text) == 2 * KEY_SIZE and all(chr(c) in string.hexdigits for c in text):
        return bytes.fromhex(text.decode())
    if len(raw) == KEY_SIZE:
        return raw
    raise SealBroken(f"{path} holds neither {KEY_SIZE} bytes nor {2 * KEY_SIZE} hex digits")


def sealing_key(settings: Mapping[str, Any]) -> bytes:
    """The key that seals background jobs' URLs (see :func:`key_path`). Blocking.

    :raises SealBroken: a configured key file cannot be used.
    """
    path, configured = key_path(settings)
    return read_key(path) if configured else load_key(path)


def load_key(path: Path) -> bytes:
    """The key in ``path``, made (0600) when absent. Blocking."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = os.urandom(KEY_SIZE)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
    if len(key) != KEY_SIZE:
        raise SealBroken(f"{path} does not hold a {KEY_SIZE}-byte key")
    return key


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = []
    for counter in range((length + 31) // 32):
        blocks.append(hmac.new(key, b"enc" + nonce + counter.to_bytes(8, "big"), hashlib.sha256).digest())
    return b"".join(blocks)[:length]


def seal(key: bytes, text: str) -> str:
    """``text`` encrypted and authenticated, as URL-safe base64."""
    data = text.encode()
    nonce = os.urandom(NONCE_SIZE)
    cipher = bytes(a ^ b for a, b in zip(data, _keystream(key, nonce, len(data)), strict=True))
    tag = hmac.new(key, b"tag" + nonce + cipher, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(nonce + tag + cipher).decode()


def unseal(key: bytes, sealed: str) -> str:
    """The text :func:`seal` sealed. :raises SealBroken: wrong key or altered text."""
    try:
        raw = base64.urlsafe_b64decode(sealed.encode())
    except ValueError as exc:
        raise SealBroken("not sealed text") from exc
    nonce, tag, cipher = raw[:NONCE_SIZE], raw[NONCE_SIZE:NONCE_SIZE + TAG_SIZE], raw[NONCE_SIZE + TAG_SIZE:]
    expected = hmac.new(key, b"tag" + nonce + cipher, hashlib.sha256).digest()
    if len(nonce) != NONCE_SIZE or not hmac.compare_digest(tag, expected):
        raise SealBroken("the seal does not match this key")
    data = bytes(a ^ b for a, b in zip(cipher, _keystream(key, nonce, len(cipher)), strict=True))
    return data.decode()
