"""The web interface's words in Chinese and English, and which one a request gets.

Chinese by default, like the API; English when ``Accept-Language`` prefers
it; the 中文 / English switch stores the choice in a cookie, which wins.
"""

from __future__ import annotations

from starlette.requests import Request

from registry.api.errors import preferred_language
from registry.ui.cookies import cookie

LANG_COOKIE = "registry_lang"
LANGUAGES = ("zh", "en")

#: key -> (zh, en)
MESSAGES: dict[str, tuple[str, str]] = {
    "title": ("源码包仓库", "Source Package Registry"),
    "applications": ("应用", "Applications"),
    "application": ("应用", "Application"),
    "modules": ("模块", "Modules"),
    "module": ("模块", "Module"),
    "packages": ("源码包", "Packages"),
    "last_upload": ("最近上传", "Last upload"),
    "filter": ("筛选", "Filter"),
    "search": ("搜索", "Search"),
    "show_deleted": ("显示已删除", "Show deleted"),
    "none_yet": ("暂无内容", "Nothing here yet"),
    "sign_in": ("登录", "Sign in"),
    "sign_out": ("退出登录", "Sign out"),
    "token": ("访问令牌", "Token"),
    "app_code": ("应用编码", "App code"),
    "app_secret": ("应用密钥", "App secret"),
    "sign_in_token": ("使用访问令牌登录", "Sign in with a token"),
    "sign_in_app": ("使用应用编码和密钥登录", "Sign in with an app code and secret"),
    "signed_in_as": ("当前用户", "Signed in as"),
    "anonymous": ("匿名访问", "Anonymous reader"),
    "read_only": ("只读", "read-only"),
    "version": ("版本", "Version"),
    "package": ("源码包", "Package"),
    "size": ("大小", "Size"),
    "sha256": ("SHA-256", "SHA-256"),
    "operator": ("操作人", "Operator"),
    "created": ("创建时间", "Created"),
    "updated": ("更新时间", "Updated"),
    "status": ("状态", "Status"),
    "actions": ("操作", "Actions"),
    "live": ("正常", "Live"),
    "deleted": ("已删除", "Deleted"),
    "download": ("下载", "Download"),
    "delete": ("删除", "Delete"),
    "restore": ("恢复", "Restore"),
    "confirm": ("确认", "Confirm"),
    "cancel": ("取消", "Cancel"),
    "copy_button": ("复制", "Copy"),
    "copy_sha": ("复制 SHA-256", "Copy SHA-256"),
    "copied": ("已复制", "Copied"),
    "upload_file": ("上传文件", "Upload a file"),
    "upload_link": ("从链接上传", "Upload from a link"),
    "package_file": ("源码包", "Package"),
    "drop_hint": ("拖放文件到此处，或选择文件", "Drop a file here or choose one"),
    "version_hint": ("留空则读取 app_desc.yaml", "empty: read from app_desc.yaml"),
    "allow_overwrite": ("允许覆盖", "Allow overwrite"),
    "upload": ("上传", "Upload"),
    "package_url": ("源码包地址", "Package URL"),
    "upload_from_link": ("从链接上传", "Upload from link"),
    "overwrite": ("覆盖", "Overwrite"),
    "progress": ("上传进度", "Upload progress"),
    "previous": ("上一页", "Previous"),
    "next": ("下一页", "Next"),
    "page_of": ("共 {count} 个", "{count} in all"),
    "details": ("详情", "Details"),
    "fetch": ("获取", "Fetch it"),
    "app_desc_none": ("该源码包没有 app_desc.yaml", "This package has no app_desc.yaml"),
    "app_desc_cut": ("内容过长，仅显示开头部分", "Too long: only the beginning is shown"),
    "members": ("文件列表", "Members"),
    "members_first": ("前 {shown} 个，共 {total} 个", "first {shown} of {total}"),
    "not_captured": ("该源码包上传时未记录此信息", "Not captured when this package was stored"),
    "history": ("历史", "History"),
    "event": ("事件", "Event"),
    "time": ("时间", "Time"),
    "ev_stored": ("上传", "stored"),
    "ev_overwritten": ("覆盖", "overwritten"),
    "ev_deleted": ("删除", "deleted"),
    "ev_restored": ("恢复", "restored"),
    "no_history": ("暂无记录", "No events recorded"),
    "field": ("字段", "Field"),
    "value": ("值", "Value"),
    "id": ("编号", "ID"),
    "package_name": ("源码包名称", "Package name"),
    "format": ("格式", "Format"),
    "file_name": ("文件名", "File name"),
    "origin": ("来源", "Origin"),
    "source_url": ("来源地址", "Source URL"),
    "is_deleted": ("已删除", "Deleted"),
    "yes": ("是", "yes"),
    "no": ("否", "no"),
    "language": ("语言", "Language"),
    "skip": ("跳到正文", "Skip to content"),
    "breadcrumb": ("导航", "Breadcrumb"),
    "error": ("出错了", "Something went wrong"),
    "back": ("返回首页", "Back to the applications"),
    "stored_ok": ("已上传", "Stored"),
    "deleted_ok": ("已删除", "Deleted"),
    "restored_ok": ("已恢复", "Restored"),
    "uploading": ("正在上传", "Uploading"),
    "network_error": ("网络错误", "Network error"),
    "signed_out": ("已退出登录", "Signed out"),
    "pages": ("分页", "Pages"),
}


def language(request: Request) -> str:
    """``zh`` or ``en``: the switch's cookie, else ``Accept-Language``."""
    chosen = cookie(request, LANG_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    return preferred_language(request.headers.get("accept-language"))


def translator(lang: str) -> dict[str, str]:
    """Every message in ``lang``."""
    index = LANGUAGES.index(lang)
    return {key: pair[index] for key, pair in MESSAGES.items()}
