"""Calling the hooks that may return an awaitable: one way, one set of rules.

pluggy calls implementations but does not await what they return, so the
core calls each implementation itself, in pluggy's order (last registered
first, ``tryfirst``/``trylast`` honoured), passing only the arguments it
declares, and awaits an awaitable result before calling the next one.

Failures follow one rule per hook, chosen by the caller:

- ``raise`` (``registry_startup``): the first failure propagates and the
  rest are not called: start-up stops.
- ``log`` (``registry_package_event``, ``registry_shutdown``): each failure
  is logged with the plugin's name and the next implementation still runs,
  so a broken audit log or webhook neither fails an upload nor keeps the
  storage from shutting down.

Hook wrappers (``hookwrapper=True``, ``wrapper=True``) are not supported for
any registry hook: :func:`registry.plugins.make_plugin_manager` refuses them
at start-up.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Literal

import pluggy

logger = logging.getLogger("registry.plugins")


async def call_hook(
    caller: pluggy.HookCaller, kwargs: dict[str, Any], *, on_error: Literal["raise", "log"], what: str = ""
) -> None:
    """Call every implementation of ``caller`` with ``kwargs``, awaiting results.

    :param on_error: ``raise``: stop at the first failure and raise it;
        ``log``: log each failure (naming the plugin) and go on.
    :param what: words for the log line, such as ``stored of package 7``.
    """
    for impl in reversed(caller.get_hookimpls()):
        try:
            result = impl.function(**{name: kwargs[name] for name in impl.argnames})
            if inspect.isawaitable(result):
                await result
        except Exception:
            if on_error == "raise":
                raise
            logger.exception("hook %s of plugin %s failed%s", caller.name, impl.plugin_name,
                             f" for {what}" if what else "")
