"""How the web interface and the browse routes page at scale.

Run from the repository's virtualenv::

    python benchmarks/ui_scale.py                       # 100,000 packages in one module, 10,000 applications
    python benchmarks/ui_scale.py --packages 10000 --applications 1000

It fills a fresh SQLite record store directly (one module with ``--packages``
records, and ``--applications`` applications of two records each), starts
``registry serve`` on it, signs a session in, and prints the median time of
each page and route, next to the same page of a small module or application.
Numbers are reported, never asserted. Everything listens on 127.0.0.1 and
lives in a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import base_config, start_registry

INSERT = (
    "INSERT INTO packages (code, module, version, package_name, package_size, sha256, blob_key, format, file_name,"
    " origin, source_url, is_deleted, revived, created, updated, operator)"
    " VALUES (?, ?, ?, ?, 1000, ?, ?, 'tar.gz', '', 'upload', '', 0, 0, ?, ?, 'bench')"
)


def fill(db_path: Path, packages: int, applications: int) -> None:
    """The big module ``big/default``, a small one ``small/default`` and ``applications`` apps."""
    def rows():  # type: ignore[no-untyped-def]
        for i in range(packages):
            stamp = f"2024-01-01 00:00:00.{i % 1_000_000:06}"
            yield ("big", "default", f"1.{i}", f"big:1.{i}", hashlib.sha256(str(i).encode()).hexdigest(),
                   f"big/default/{i}", stamp, stamp)
        for i in range(10):
            yield ("small", "default", f"1.{i}", f"small:1.{i}", "0" * 64, f"small/default/{i}",
                   "2024-01-01 00:00:00.000000", "2024-01-01 00:00:00.000000")
        for a in range(applications):
            for j in range(2):
                stamp = f"2024-01-02 00:00:00.{a % 1_000_000:06}"
                yield (f"app{a:06}", "default", f"0.{j}", f"x:0.{j}", "0" * 64, f"app{a}/default/{j}", stamp, stamp)

    db = sqlite3.connect(db_path)
    with db:
        db.executemany(INSERT, rows())
    db.close()


def median_ms(client: httpx.Client, path: str, runs: int) -> float:
    client.get(path).raise_for_status()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--packages", type=int, default=100_000)
    parser.add_argument("--applications", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ui-scale-") as tmp:
        root = Path(tmp)
        server = start_registry(root, base_config(root))
        try:
            token = server.token("bench")
            server.stop()  # fill while nobody else writes
            fill(root / "registry.db", args.packages, args.applications)
            server.start()
            with httpx.Client(base_url=server.url, timeout=120) as client:
                page = client.get("/ui/login")
                csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
                assert csrf is not None
                client.post("/ui/login", data={"csrf_token": csrf.group(1), "token": token})
                last_app = f"/ui/?offset={max(0, args.applications - 50)}"
                pairs = [
                    ("packages page 1", "/ui/small/default/", "/ui/big/default/"),
                    ("packages last page", "/ui/small/default/", f"/ui/big/default/?offset={max(0, args.packages - 50)}"),
                    ("packages search", "/ui/small/default/?q=1.5", "/ui/big/default/?q=1.5"),
                    ("package page", f"/ui/small/default/{args.packages + 1}/", "/ui/big/default/1/"),
                    ("modules page", "/ui/small/", "/ui/big/"),
                    ("applications page 1", "/ui/?q=small", "/ui/"),
                    ("applications last page", "/ui/?q=small", last_app),
                    ("GET /bkapps/applications/", "/bkapps/applications/?search_term=small", "/bkapps/applications/?limit=50"),
                    ("GET …/{code}/modules/", "/bkapps/applications/small/modules/", "/bkapps/applications/big/modules/"),
                ]
                print(f"{'':28} {'small (ms)':>11} {'large (ms)':>11}   "
                      f"({args.packages:,} packages in one module, {args.applications:,} applications)")
                for name, small, large in pairs:
                    print(f"{name:28} {median_ms(client, small, args.runs):11.1f} {median_ms(client, large, args.runs):11.1f}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
