"""A test-only plugin: on shutdown, writes the names of the modules the server loaded.

Loaded by the start-up tests through ``[plugins] modules`` (the way any
third-party plugin is). The file named by the environment receives the
sorted ``sys.modules`` keys of the serving process as a JSON list, so a test
sees which libraries a real ``registry serve`` imported without any switch
in the registry itself.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from registry.hookspecs import hookimpl

REPORT_ENV = "REGISTRY_TEST_MODULES_REPORT"


@hookimpl
def registry_shutdown() -> None:
    Path(os.environ[REPORT_ENV]).write_text(json.dumps(sorted(sys.modules)))
