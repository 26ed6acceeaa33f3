"""What looking for tar headers in a zip adds to its inspection.

Run from the repository's virtualenv::

    python benchmarks/zip_scan.py                       # 64 MiB zips, 7 rounds
    python benchmarks/zip_scan.py --size-mib 16 --repeat 3
    python benchmarks/zip_scan.py --baseline /path/to/other/checkout

A zip is refused when GNU tar would find a member header at a 512-byte
boundary of it (``registry.gnu_tar_scan``); that scan reads the file once
more after the zip's own inspection. This builds two zips of ``--size-mib``:
``stored`` (entries of random bytes kept as they are: inspection only
checks their CRCs, so the scan's share is largest) and ``deflated`` (entries
of random words, compressed about 3 to 1), and times, as medians of
interleaved rounds, ``inspect_archive`` on each (the scan included) and the
scan alone (``find_header`` over a memory map, as inspection does). ``--baseline`` adds ``inspect_archive`` from
another checkout (its root, holding ``registry/``), run in a child process
like this one's, for an A/B in the same run. Every timing reads files already
in the page cache. It prints the target (the scan at most 20% of the stored
zip's inspection) with met or missed and the load average; the numbers are
reported, never asserted.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1024 * 1024
#: The scan may cost at most this share of the stored zip's inspection: the
#: worst case (inspection only computes CRCs there, about 1.7 GB/s on the
#: development VM), where a fifth more is still under 5% of an upload as a
#: whole (file uploads run at about 0.4 GB/s, see README.md's Performance).
TARGET_SCAN_SHARE = 0.20

#: Run in a child process with the checkout to measure on ``PYTHONPATH``:
#: prints the seconds ``inspect_archive`` took on the zip named by argv[1].
_WORKER = """
import sys, time
from pathlib import Path
from registry.archive import ArchiveLimits, inspect_archive
limits = ArchiveLimits(max_members=100_000, max_unpacked_size=2**40, max_compression_ratio=1000)
start = time.perf_counter()
inspect_archive(Path(sys.argv[1]), limits)
print(time.perf_counter() - start)
"""


def build_zips(folder: Path, size: int) -> dict[str, Path]:
    """The ``stored`` and ``deflated`` zips of about ``size`` bytes each."""
    rng = random.Random(0)
    stored = folder / "stored.zip"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        for n in range(max(1, size // MiB)):
            archive.writestr(f"data/{n}.bin", rng.randbytes(MiB))
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(4096)]
    deflated = folder / "deflated.zip"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        n = 0
        while deflated.stat().st_size < size:
            archive.writestr(f"src/{n}.txt", b" ".join(rng.choices(words, k=MiB // 10)))
            n += 1
    return {"stored": stored, "deflated": deflated}


def inspect_in(checkout: Path, path: Path) -> float:
    """Seconds ``inspect_archive`` of ``checkout`` took on ``path`` (in a child process)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), str(checkout / "plugins")])}
    done = subprocess.run([sys.executable, "-c", _WORKER, str(path)], env=env, capture_output=True,
                          text=True, check=True)
    return float(done.stdout)


def scan(path: Path) -> float:
    """Seconds ``find_header`` (this checkout's) took on ``path``."""
    sys.path[:0] = [str(ROOT)]
    from registry.gnu_tar_scan import find_header
    with path.open("rb") as f:
        start = time.perf_counter()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            found = find_header(mapped)
        elapsed = time.perf_counter() - start
    assert found is None, f"{path.name}: a tar header at byte {found}"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--baseline", type=Path, help="another checkout's root, for an A/B")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        zips = build_zips(Path(tmp), args.size_mib * MiB)
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeat):
            for kind, path in zips.items():
                times.setdefault((kind, "inspect"), []).append(inspect_in(ROOT, path))
                if args.baseline:
                    times.setdefault((kind, "baseline"), []).append(inspect_in(args.baseline, path))
                times.setdefault((kind, "scan"), []).append(scan(path))
        for kind, path in zips.items():
            size = path.stat().st_size / MiB
            line = [f"{kind:9} {size:6.1f} MiB:"]
            for what in ("inspect", "baseline", "scan"):
                if (kind, what) in times:
                    line.append(f"{what} {statistics.median(times[kind, what]) * 1000:8.1f} ms")
            print("  ".join(line))
    share = statistics.median(times["stored", "scan"]) / statistics.median(times["stored", "inspect"])
    verdict = "met" if share <= TARGET_SCAN_SHARE else "missed"
    print(f"scan share of the stored zip's inspection: {share:.1%} (target {TARGET_SCAN_SHARE:.0%}: {verdict})")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
