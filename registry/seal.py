"""Seal a secret-bearing string so that it can be kept in the record store.

A background job must be able to run again after a restart, on any instance,
so its full ``package_url`` (a pre-signed URL carries its signature in the
query) has to outlive the request; but secrets never reach the database in
clear. The URL is stored sealed with a key kept in a file beside the
database (mode 0600, made on first use): encrypted with an HMAC-SHA256
keystream (a fresh 16-byte nonce per seal) and authenticated with an
HMAC-SHA256 tag, standard library only. A database copied without the key
file reveals no secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

KEY_SIZE = 32
NONCE_SIZE = 16
TAG_SIZE = 32


class SealBroken(Exception):
    """The sealed text was not made with this key, or was altered."""


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
