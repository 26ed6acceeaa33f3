"""The registry's one error model.

Every failure a client can see is a :class:`RegistryError` subclass. Each class
carries its wire ``code``, its HTTP ``status`` and the detail text in Chinese
(the platform's default) and English. The HTTP layer turns any of them into
``{"code": ..., "detail": ...}`` plus the ``bkapi-error-code`` header; nothing
else in the code base builds an error body.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RegistryError(Exception):
    """Base of every client-visible failure.

    :param message: an extra sentence appended to the standard detail, e.g. the
        offending archive member or the URL's host. It must never contain a
        secret: callers pass redacted values only.
    :param data: extra machine-readable data returned as ``data``.
    """

    code: ClassVar[str] = "INTERNAL_ERROR"
    status: ClassVar[int] = 500
    detail_zh: ClassVar[str] = "服务内部错误"
    detail_en: ClassVar[str] = "Internal error"

    def __init__(self, message: str = "", *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message or self.detail_en)
        self.message = message
        self.data = data
        #: extra response headers (e.g. ``Content-Range`` on a 416)
        self.headers: dict[str, str] = {}

    def detail(self, language: str) -> str:
        """The detail text in ``language`` ("zh" or "en"), with the extra message."""
        base = self.detail_en if language == "en" else self.detail_zh
        if not self.message:
            return base
        return f"{base}: {self.message}"

    def body(self, language: str) -> dict[str, Any]:
        """The JSON body for this error."""
        body: dict[str, Any] = {"code": self.code, "detail": self.detail(language)}
        if self.data is not None:
            body["data"] = self.data
        return body


class ValidationError(RegistryError):
    """One or more request fields are missing, malformed or too long.

    :param fields: field name -> list of (zh, en) message pairs.
    """

    code = "VALIDATION_ERROR"
    status = 400
    detail_zh = "参数校验失败"
    detail_en = "Validation failed"

    def __init__(self, fields: dict[str, list[tuple[str, str]]]) -> None:
        super().__init__("")
        self.fields = fields

    @classmethod
    def single(cls, field: str, zh: str, en: str) -> ValidationError:
        return cls({field: [(zh, en)]})

    def detail(self, language: str) -> str:
        index = 1 if language == "en" else 0
        parts = [f"{name}: {msgs[0][index]}" for name, msgs in self.fields.items() if msgs]
        base = self.detail_en if language == "en" else self.detail_zh
        return f"{base}: {'; '.join(parts)}" if parts else base

    def body(self, language: str) -> dict[str, Any]:
        index = 1 if language == "en" else 0
        body = super().body(language)
        body["fields_detail"] = {
            name: [pair[index] for pair in msgs] for name, msgs in self.fields.items()
        }
        return body


class UnsupportedSourceOrigin(RegistryError):
    code = "UNSUPPORTED_SOURCE_ORIGIN"
    status = 400
    detail_zh = "未支持的源码来源"
    detail_en = "Unsupported source origin"


class SourceOriginForbidden(RegistryError):
    code = "SOURCE_ORIGIN_FORBIDDEN"
    status = 403
    detail_zh = "不允许的源码来源地址"
    detail_en = "Source origin address not allowed"


class MissingVersionInfo(RegistryError):
    code = "MISSING_VERSION_INFO"
    status = 400
    detail_zh = "缺失版本信息"
    detail_en = "Missing version information"


class InvalidPackage(RegistryError):
    code = "INVALID_PACKAGE"
    status = 400
    detail_zh = "源码包文件格式错误"
    detail_en = "Invalid source package"


class PackageAlreadyExists(RegistryError):
    code = "PACKAGE_ALREADY_EXISTS"
    status = 409
    detail_zh = "源码包已存在"
    detail_en = "Source package already exists"


class ChecksumMismatch(RegistryError):
    code = "CHECKSUM_MISMATCH"
    status = 400
    detail_zh = "源码包校验和不匹配"
    detail_en = "Source package checksum mismatch"


class PackageTooLarge(RegistryError):
    code = "PACKAGE_TOO_LARGE"
    status = 413
    detail_zh = "源码包过大"
    detail_en = "Source package too large"


class PackageDownloadFailed(RegistryError):
    code = "PACKAGE_DOWNLOAD_FAILED"
    status = 502
    detail_zh = "源码包下载失败"
    detail_en = "Failed to download the source package"


class PackageDownloadTimeout(RegistryError):
    code = "PACKAGE_DOWNLOAD_TIMEOUT"
    status = 504
    detail_zh = "源码包下载超时"
    detail_en = "Timed out downloading the source package"


class ObjectStoreException(RegistryError):
    code = "OBJECT_STORE_EXCEPTION"
    status = 503
    detail_zh = "对象存储服务异常"
    detail_en = "Object storage service failure"


class DatabaseUnavailable(RegistryError):
    """The record store cannot be reached, is locked past its timeout, or its
    disk is full. Transient: clients retry after ``Retry-After`` seconds."""

    code = "DATABASE_UNAVAILABLE"
    status = 503
    detail_zh = "数据库服务异常"
    detail_en = "Database service failure"
    #: seconds a client should wait before retrying
    RETRY_AFTER = 5

    def __init__(self, message: str = "", *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message, data=data)
        self.headers["Retry-After"] = str(self.RETRY_AFTER)


class PackageNotFound(RegistryError):
    code = "PACKAGE_NOT_FOUND"
    status = 404
    detail_zh = "找不到指定的源码包"
    detail_en = "Source package not found"


class Unauthenticated(RegistryError):
    code = "UNAUTHENTICATED"
    status = 401
    detail_zh = "用户未登录或登录态失效"
    detail_en = "Not authenticated, or the credential is no longer valid"


class PermissionDenied(RegistryError):
    code = "PERMISSION_DENIED"
    status = 403
    detail_zh = "无权限访问"
    detail_en = "Permission denied"


class InsufficientStorage(RegistryError):
    """The storage or the staging disk is full (ENOSPC, EDQUOT); nothing was kept."""

    code = "INSUFFICIENT_STORAGE"
    status = 507
    detail_zh = "存储空间不足"
    detail_en = "Insufficient storage"


class JobNotFound(RegistryError):
    """No such background job or resumable upload in that module."""

    code = "JOB_NOT_FOUND"
    status = 404
    detail_zh = "找不到指定的任务"
    detail_en = "Job not found"


class ChunkChecksumMismatch(RegistryError):
    """A resumable upload's PATCH body differs from its ``Upload-Checksum``
    (tus answers 460; the chunk is discarded, the offset unchanged). The
    whole package's ``sha256`` is still ``CHECKSUM_MISMATCH`` (400)."""

    code = "UPLOAD_CHECKSUM_MISMATCH"
    status = 460
    detail_zh = "上传分块校验和不匹配"
    detail_en = "Upload chunk checksum mismatch"


class UploadOffsetMismatch(RegistryError):
    """A PATCH's ``Upload-Offset`` is not the upload's offset, the upload is
    complete, or another request is writing to it (tus answers 409)."""

    code = "UPLOAD_OFFSET_MISMATCH"
    status = 409
    detail_zh = "上传偏移量不匹配"
    detail_en = "Upload offset mismatch"


class TusVersionUnsupported(RegistryError):
    """``Tus-Resumable`` missing or not a version this server speaks (tus answers 412)."""

    code = "TUS_VERSION_UNSUPPORTED"
    status = 412
    detail_zh = "不支持的 tus 协议版本"
    detail_en = "Unsupported tus version"


class UnsupportedMediaType(RegistryError):
    """A PATCH body not sent as ``application/offset+octet-stream`` (tus answers 415)."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    status = 415
    detail_zh = "不支持的内容类型"
    detail_en = "Unsupported media type"


class NotFound(RegistryError):
    """No route matches the path (not a package lookup)."""

    code = "NOT_FOUND"
    status = 404
    detail_zh = "资源不存在"
    detail_en = "Not found"


class MethodNotAllowed(RegistryError):
    code = "METHOD_NOT_ALLOWED"
    status = 405
    detail_zh = "不支持的请求方法"
    detail_en = "Method not allowed"


class RangeNotSatisfiable(RegistryError):
    code = "RANGE_NOT_SATISFIABLE"
    status = 416
    detail_zh = "请求的范围无效"
    detail_en = "Requested range not satisfiable"


def all_error_classes() -> list[type[RegistryError]]:
    """Every concrete error class, for documentation and the error-shape test."""
    found: list[type[RegistryError]] = []
    stack: list[type[RegistryError]] = [RegistryError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    return found


class RequestTimeout(RegistryError):
    """The client stopped sending the request head or body for longer than
    ``server.header_timeout`` / ``server.body_idle_timeout``."""

    code = "REQUEST_TIMEOUT"
    status = 408
    detail_zh = "请求超时"
    detail_en = "Request timeout"


class ServiceUnavailable(RegistryError):
    """The process holds ``server.max_connections`` connections already: the
    new one is answered at once and closed, never queued."""

    code = "SERVICE_UNAVAILABLE"
    status = 503
    detail_zh = "服务繁忙，请稍后重试"
    detail_en = "Too many connections, retry later"
