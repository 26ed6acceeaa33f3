"""Property-based run of /openapi.json against a live server: no 5xx, and every
response matches the documented status codes, content types and schemas."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import RegistryProcess, base_config, start_registry

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("fuzzed")
    tables = base_config(root, files_root=root / "files")
    # Fuzzed links must not resolve names or leave the machine: only one
    # closed loopback port is an allowed host, everything else is refused (403).
    tables["origins.http"]["allowed_hosts"] = ["127.0.0.1:9"]
    server = start_registry(root, tables)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fuzz_token(fuzzed_registry: RegistryProcess) -> str:
    return fuzzed_registry.token("fuzzer")


@pytest.fixture(scope="module")
def api_schema(fuzzed_registry: RegistryProcess) -> schemathesis.BaseSchema:
    loaded = schemathesis.openapi.from_url(f"{fuzzed_registry.url}/openapi.json")
    # The prefixed copies of each route are the same handlers; fuzz each once.
    return loaded.exclude(path_regex=r"^/(api|\{stage\})/")


def test_openapi_conformance(api_schema: schemathesis.BaseSchema, fuzzed_registry: RegistryProcess,
                             fuzz_token: str) -> None:
    """Every operation, fuzzed with schema-valid and edge-case inputs.

    Driven through hypothesis directly rather than schemathesis' pytest plugin,
    which does not support this pytest version.
    """
    headers = {"Authorization": f"Bearer {fuzz_token}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 11  # 7 package operations, health, readiness, metrics, docs
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=fuzzed_registry.url, headers=headers, checks=CHECKS)

        check()
