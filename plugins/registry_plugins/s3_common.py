"""What the S3 storage and the ``s3`` origin share: clients and error reporting.

Not a plugin itself (no hooks): a helper module, so that neither plugin
reaches into the other's internals.

boto3 is imported by the functions here that need it, never at module load:
importing it costs about 100 ms, which a registry that neither stores in S3
nor has fetched an ``s3://`` link yet must not pay at start-up. Every
function that inspects an error imports it only to classify an exception a
boto3 call raised, so boto3 is loaded by then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from registry.redact import redact_url

if TYPE_CHECKING:
    from botocore.client import BaseClient

#: Seconds to open a connection: a dead endpoint fails in seconds, not minutes.
CONNECT_TIMEOUT = 5
#: Seconds without a byte on an open connection.
READ_TIMEOUT = 60
#: Attempts per request, the first included ("standard" retry mode backs off
#: between them); a few, so transient errors heal and outages surface quickly.
MAX_ATTEMPTS = 3


def boto_errors() -> tuple[type[Exception], ...]:
    """Everything boto3 raises for a failed request: botocore's own errors
    (connection, timeout, credentials, streaming), error answers, and boto3's
    transfer wrapper (``S3UploadFailedError``).

    A function, not a constant, so that boto3 loads with the first client:
    ``except boto_errors()`` evaluates it only when an exception is raised.
    """
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, Boto3Error)


def check_endpoint_url(value: str) -> str | None:
    """A settings ``check``: empty (AWS) or an ``http(s)://host[:port]`` URL.

    boto3 only complains when the first request is made, as a ``ValueError``
    that would otherwise surface as a 500.
    """
    if not value:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be empty (AWS) or an http(s)://host[:port] URL"
    return None


def make_s3_client(endpoint_url: str, region: str) -> BaseClient:
    """A boto3 S3 client with bounded timeouts and retries.

    Blocking (it loads service models and resolves credentials): call it in a
    worker thread. Each call uses a private :class:`boto3.session.Session`,
    because the default session is not thread-safe; the client itself is, and
    is shared by all requests.

    :param endpoint_url: "" for AWS; otherwise the S3-compatible endpoint
        (MinIO, Ceph, moto), addressed path-style (``endpoint/bucket/key``),
        which such servers support without wildcard DNS.
    :param region: the signing region.
    """
    import boto3.session
    from botocore.config import Config

    config = Config(
        region_name=region or None,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url or None, config=config)


#: The codes S3 (and its look-alikes) answer for a key that does not exist.
MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ``ClientError`` ("NoSuchKey", "404", …), else ""."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def brief_error(exc: BaseException) -> str:
    """What failed, for clients: ``PutObject answered AccessDenied`` or the
    error's type, ``EndpointConnectionError``; no endpoint, key or secret."""
    from botocore.exceptions import ClientError

    exc = unwrap_error(exc)
    if isinstance(exc, ClientError):
        return f"{exc.operation_name} answered {error_code(exc) or '?'}"
    return type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """A one-line, secret-free description of a boto3 failure, for operators.

    Error answers add S3's message; transport errors botocore's (which names
    at most the endpoint URL, redacted).
    """
    from botocore.exceptions import ClientError

    exc = unwrap_error(exc)
    if isinstance(exc, ClientError):
        message = exc.response.get("Error", {}).get("Message") or ""
        return f"{brief_error(exc)} ({message})"[:300] if message else brief_error(exc)
    return f"{type(exc).__name__}: {_redact_text(str(exc))}"[:300]


def unwrap_error(exc: BaseException) -> BaseException:
    """The botocore error under boto3's ``S3UploadFailedError`` (which names the local file)."""
    from boto3.exceptions import S3UploadFailedError

    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, BaseException):
        return exc.__context__
    return exc


def _redact_text(text: str) -> str:
    """Redact any URL botocore quoted in a message (endpoint URLs are quoted)."""
    parts = text.split('"')
    return '"'.join(redact_url(p) if "://" in p else p for p in parts)
