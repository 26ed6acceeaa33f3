"""A test-only plugin: on shutdown, writes what the serving process loaded and
the state of its garbage collector.

Loaded by the start-up tests through ``[plugins] modules`` (the way any
third-party plugin is). The file named by the environment receives a JSON
object: ``modules``, the sorted ``sys.modules`` keys of the serving process;
``gc_enabled``, whether its cyclic collector runs; ``gc_frozen``, how many
objects start-up left frozen. A test sees them for a real ``registry
serve`` without any switch in the registry itself.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from registry.hookspecs import hookimpl

REPORT_ENV = "REGISTRY_TEST_MODULES_REPORT"


@hookimpl
def registry_shutdown() -> None:
    report = {"modules": sorted(sys.modules), "gc_enabled": gc.isenabled(), "gc_frozen": gc.get_freeze_count()}
    Path(os.environ[REPORT_ENV]).write_text(json.dumps(report))
