"""How the web interface and the browse routes page at scale.

Run from the repository's virtualenv::

    python benchmarks/ui_scale.py                       # 100,000 packages in one module, 10,000 applications
    python benchmarks/ui_scale.py --packages 10000 --applications 1000

It fills a fresh SQLite record store directly (one module with ``--packages``
records, and ``--applications`` applications of two records each; the
store's triggers keep its per-module counters as the rows go in), starts
``registry serve`` on it, signs a session in, and prints the median time of
each page and route, next to the same page of a small module or application,
with the target (large within 1.5x of small; 2x for a search) met or missed.
Deep pages are reached the way a person reaches them: by the pages' own
Next/Previous links, which carry keyset cursors (the last page is the
Previous-way cursor with no key). Numbers are reported, never asserted.
Everything listens on 127.0.0.1 and lives in a temporary folder removed at
the end.
"""

from __future__ import annotations

import argparse
import hashlib
import html
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

from registry.api import pages
from registry.records import Order
from tests.helpers import RegistryProcess, base_config, start_registry

#: How much slower than the small page the large one may be: (default, search).
GOAL = 1.5
SEARCH_GOAL = 2.0

INSERT = (
    "INSERT INTO packages (code, module, version, package_name, package_size, sha256, blob_key, format, file_name,"
    " origin, source_url, is_deleted, revived, created, updated, operator)"
    " VALUES (?, ?, ?, ?, 1000, ?, ?, 'tar.gz', '', 'upload', '', 0, 0, ?, ?, 'bench')"
)


def fill(db_path: Path, packages: int, applications: int) -> None:
    """The module ``big/default`` with ``packages`` records, ten in ``small/default``,
    and ``applications`` apps of two records each."""
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


API = "/bkapps/applications/"


def next_link(client: httpx.Client, path: str) -> str:
    """The Next link of a page (a keyset cursor)."""
    page = client.get(path)
    page.raise_for_status()
    found = re.search(r'<a href="([^"]+)" rel="next"', page.text)
    assert found is not None, path
    return html.unescape(found.group(1))


def median_ms(client: httpx.Client, path: str, runs: int) -> float:
    """The median milliseconds of ``runs`` GETs of ``path``, after three unmeasured ones."""
    for _ in range(3):
        client.get(path).raise_for_status()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


#: The small instance: two pages of packages in ``big/default``, two pages of applications.
SMALL_PACKAGES, SMALL_APPLICATIONS = 100, 60


def serve(root: Path, packages: int, applications: int) -> tuple[RegistryProcess, httpx.Client]:
    """A registry on a store filled by :func:`fill`, and a client signed in to its web interface."""
    root.mkdir()
    server = start_registry(root, base_config(root))
    token = server.token("bench")
    server.stop()  # fill while nobody else writes
    fill(root / "registry.db", packages, applications)
    server.start()
    client = httpx.Client(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {token}"})
    page = client.get("/ui/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    client.post("/ui/login", data={"csrf_token": csrf.group(1), "token": token})
    return server, client


def paths(client: httpx.Client, packages: int) -> list[tuple[str, str]]:
    """(what, path) of every page and route measured, on one instance."""
    last_packages = pages.encode(Order.CREATED_DESC, None, backward=True)
    # about ten hits at any size: 1.99…9 and the ten one digit longer
    term = "1." + "9" * max(1, len(str(packages - 1)) - 1)
    last_app = pages.encode_code(None, backward=True)
    return [
        ("packages page 1", "/ui/big/default/"),
        ("packages middle page (Next)", next_link(client, f"/ui/big/default/?offset={max(0, packages // 2 - 50)}")),
        ("packages last page (cursor)", f"/ui/big/default/?cursor={last_packages}"),
        ("packages page 1, deleted too", "/ui/big/default/?deleted=1"),
        ("packages search (~10 hits)", f"/ui/big/default/?q={term}"),
        ("package page", "/ui/big/default/1/"),
        ("modules page", "/ui/big/"),
        ("applications page 1", "/ui/"),
        ("applications last page", f"/ui/?cursor={last_app}"),
        ("GET /bkapps/applications/", f"{API}?limit=50"),
        ("GET /bkapps/applications/ last", f"{API}?limit=50&cursor={last_app}"),
        ("GET …/{code}/modules/", f"{API}big/modules/"),
        ("GET list, first page (API)", f"{API}big/modules/default/source_package/?limit=50"),
        ("GET list, last page (API)", f"{API}big/modules/default/source_package/?limit=50&cursor={last_packages}"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--packages", type=int, default=100_000)
    parser.add_argument("--applications", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ui-scale-") as tmp:
        started: list[tuple[RegistryProcess, httpx.Client]] = []
        try:
            started.append(serve(Path(tmp) / "small", SMALL_PACKAGES, SMALL_APPLICATIONS))
            started.append(serve(Path(tmp) / "large", args.packages, args.applications))
            (_, small), (_, large) = started
            print(f"{'':32} {'small (ms)':>11} {'large (ms)':>11} {'ratio':>7}  target   (small: "
                  f"{SMALL_PACKAGES} packages, {SMALL_APPLICATIONS} applications; large: {args.packages:,} "
                  f"packages in one module, {args.applications:,} applications; median of {args.runs})")
            for (name, quick_path), (_, slow_path) in zip(paths(small, SMALL_PACKAGES), paths(large, args.packages),
                                                          strict=True):
                quick, slow = median_ms(small, quick_path, args.runs), median_ms(large, slow_path, args.runs)
                goal = SEARCH_GOAL if "search" in name else GOAL
                verdict = "met" if slow <= goal * quick else "missed"
                print(f"{name:32} {quick:11.1f} {slow:11.1f} {slow / quick:6.2f}x  <= {goal}x {verdict}", flush=True)
        finally:
            for server, client in started:
                client.close()
                server.stop()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
