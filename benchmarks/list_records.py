"""List latency of the record stores as they grow: SQLite and PostgreSQL.

Run from the repository's virtualenv::

    python benchmarks/list_records.py                      # 1k, 10k, 100k records
    python benchmarks/list_records.py --sizes 1000 10000   # a quicker run
    python benchmarks/list_records.py --postgres-url postgresql://user@host/db   # an existing server

For each store and size it fills a fresh database (through the store's own
``import_records``, in batches) once with every record in one module and once
spread over 1,000 applications, then calls ``list`` for the first page (100
records, newest first, the API's default) and for the last page, many times,
and prints p50/p99 in milliseconds. The target: the first page within 2x from
1k to 100k records. Without ``--postgres-url`` a throwaway PostgreSQL cluster
is started from the server binaries (as the tests do) and removed at the end.
Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from registry_plugins.postgres_store import PostgresStore
from registry_plugins.store_sqlite import SQLiteStore

from registry.records import Order, Record
from registry.store import RecordStore

BATCH = 5000
CALLS = 200


def records(count: int, apps: int) -> Iterator[list[Record]]:
    """``count`` live records over ``apps`` applications (one module each), in batches."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    batch: list[Record] = []
    for n in range(1, count + 1):
        code = f"app-{n % apps}"
        moment = start + timedelta(seconds=n)
        batch.append(Record(
            id=n, code=code, module="default", version=f"1.{n}.0", package_name=f"default-1.{n}.0.tar.gz",
            package_size=1024 + n % 977, sha256=f"{n:064x}", blob_key=f"{code}/default/{n:032x}", format="tar.gz",
            file_name="", origin="upload", source_url="", is_deleted=n % 10 == 3, revived=False,
            deleted_at=moment if n % 10 == 3 else None, created=moment, updated=moment, operator="bench",
        ))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def timed(call: Callable[[], object]) -> list[float]:
    call()  # warm the caches
    samples = []
    for _ in range(CALLS):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def p(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


def measure(make: Callable[[], RecordStore], label: str, sizes: list[int]) -> None:
    for layout, apps in (("one module", 1), ("1,000 apps", 1000)):
        for size in sizes:
            store = make()
            try:
                store.migrate()
                for batch in records(size, apps):
                    store.import_records(batch)
                count, _ = store.list("app-0", "default", limit=1)
                page = functools.partial(store.list, "app-0", "default", order_by=Order.CREATED_DESC, limit=100)
                first = timed(page)
                last = timed(functools.partial(page, offset=max(0, count - 100)))
            finally:
                store.close()
            print(f"| {label} | {layout} | {size:,} | {count:,} | {p(first, 50):.2f} | {p(first, 99):.2f}"
                  f" | {p(last, 50):.2f} | {p(last, 99):.2f} |", flush=True)


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[Callable[[], str]]:
    """A function returning the URL of a fresh database on the given or a throwaway server."""
    import psycopg

    cluster = None
    if url is None:
        from tests.pg import Cluster, find_bin_dir

        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise SystemExit("no PostgreSQL server binaries; pass --postgres-url")
        cluster = Cluster(bin_dir)
        cluster.start()
        url = cluster.url
    admin = url

    def new_database() -> str:
        name = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{admin.rpartition('/')[0]}/{name}"

    try:
        yield new_database
    finally:
        if cluster is not None:
            cluster.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--postgres-url", help="an admin URL allowed to create databases (default: a throwaway cluster)")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    print(f"list latency, ms ({CALLS} calls each; first page and last page of 100, newest first)")
    print("| store | layout | records | in the listed module | first p50 | first p99 | last p50 | last p99 |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as folder:
        measure(lambda: SQLiteStore(Path(folder) / f"{uuid.uuid4().hex}.db"), "SQLite", args.sizes)
    if not args.skip_postgres:
        with postgres(args.postgres_url) as new_database:
            measure(lambda: PostgresStore(new_database(), pool_size=2), "PostgreSQL", args.sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
