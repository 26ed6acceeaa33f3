"""Blocking work of an upload stays off the event loop (checked by thread, not by timing)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import registry.service
import registry.staging
from registry.staging import StagingFile
from tests.helpers import Api, base_config, inprocess_registry, package

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with inprocess_registry(tmp_path, base_config(tmp_path), "loop-tester") as http:
        yield http


async def test_app_desc_is_parsed_off_the_event_loop(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Up to 1 MiB of YAML, parsed in pure Python, holds the thread for seconds.
    loop_thread = threading.get_ident()
    parsed_in: list[int] = []
    original = registry.service.version_from_app_desc

    def recording(content: bytes) -> Any:
        parsed_in.append(threading.get_ident())
        return original(content)

    monkeypatch.setattr(registry.service, "version_from_app_desc", recording)
    response = await client.post(Api.path("loop"), files={"package": ("p.tar.gz", package("2.0.0", salt="loop"))})
    assert response.status_code == 201, response.text
    assert response.json()["version"] == "2.0.0"
    assert parsed_in and loop_thread not in parsed_in


async def test_staging_opens_the_follower_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    opened_in: list[int] = []

    class Recording(registry.staging._Follower):
        def __init__(self, *args: Any) -> None:
            opened_in.append(threading.get_ident())
            super().__init__(*args)

    monkeypatch.setattr(registry.staging, "_Follower", Recording)
    async with StagingFile(tmp_path, 10**6, follower=lambda upload: upload.read(10)) as staged:
        await staged.write(b"0123456789")
        await staged.finish()
        assert await staged.followed() == b"0123456789"
        await staged.synced()
    assert opened_in and loop_thread not in opened_in
    assert list(tmp_path.iterdir()) == []
