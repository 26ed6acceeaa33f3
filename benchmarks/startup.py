"""Start-up time of the ``registry`` command against a bare Python.

Run from the repository's virtualenv::

    python benchmarks/startup.py              # 15 runs of each
    python benchmarks/startup.py --repeat 5

It times, as wall-clock medians of interleaved runs: ``python -c pass`` (the
floor any Python command pays), ``registry --version`` (parser only) and
``registry ls`` against a port where nothing listens (the client stack is
loaded and the connection is refused at once, so no server time is counted).
The numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def registry_command() -> list[str]:
    """The installed ``registry`` script beside this interpreter, else ``python -m registry.cli``."""
    script = Path(sys.executable).with_name("registry")
    return [str(script)] if script.exists() else [sys.executable, "-m", "registry.cli"]


def time_once(command: list[str]) -> float:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean, check=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs of each command (default 15)")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{free_port()}"
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "registry --version": [*registry_command(), "--version"],
        "registry ls (refused)": [*registry_command(), "ls", "--app", "demo", "--url", url, "--token", "t"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():  # warm the file cache once
        time_once(command)
    for _ in range(args.repeat):
        for name, command in commands.items():
            times[name].append(time_once(command))
    floor = statistics.median(times["python -c pass"])
    print(f"{'command':<24} {'median ms':>10} {'over python':>12}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<24} {median * 1000:>10.0f} {(median - floor) * 1000:>+11.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
