"""Start-up time of the ``registry`` command and of ``registry serve``.

Run from the repository's virtualenv::

    python benchmarks/startup.py              # 15 runs of each
    python benchmarks/startup.py --repeat 5
    python benchmarks/startup.py --skip-peer  # no pypiserver
    python benchmarks/run.py --suite startup  # the same, 15 runs

It times, as wall-clock medians of interleaved runs:

- ``python -c pass`` (the floor any Python command pays), ``registry
  --version`` (parser only) and ``registry ls`` against a port where nothing
  listens (the client stack is loaded and the connection is refused at once,
  so no server time is counted);
- ``registry serve`` on the default configuration (SQLite and the filesystem
  storage in a temporary folder, the database already made by ``registry
  migrate``: a restart, the usual case) and ``pypi-server run`` (installed on first use into
  ``benchmarks/.venv-peer``): from spawning the process to the first answer
  of its health route (``/healthz``, pypiserver's ``/health``), polled every
  2 ms on a fresh connection. Each server is stopped before the next starts.
  ``python -c pass`` in pypiserver's virtualenv shows the floor there: an
  editable install (``pip install -e``) adds an import hook to every start
  of this one's.

Every command runs from bytecode, as an installed registry does (pip
compiles it at install time; pypiserver's virtualenv has it): the
environment's ``PYTHONDONTWRITEBYTECODE`` is dropped and
``PYTHONPYCACHEPREFIX`` points into the temporary folder, so the untimed
first run of each command compiles what an editable checkout would
otherwise compile on every start (about 70 ms of ``serve``'s start-up on the
development VM), and writes nothing into the checkout.

``--baseline PATH`` adds another ``registry`` executable (another checkout's
virtualenv) to every round, for A/B comparisons in the same run. It prints
the target (``serve`` within 2x pypiserver) with met or missed and the load
average; the numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
#: ``serve`` answers its first request within this many times pypiserver's start-up.
TARGET_SERVE_VS_PEER = 2.0
POLL_INTERVAL = 0.002
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def registry_command() -> list[str]:
    """The installed ``registry`` script beside this interpreter, else ``python -m registry.cli``."""
    script = Path(sys.executable).with_name("registry")
    return [str(script)] if script.exists() else [sys.executable, "-m", "registry.cli"]


def clean_env(pycache: Path) -> dict[str, str]:
    """This environment without ``REGISTRY_*`` variables (no config key may leak
    in), writing and reading bytecode under ``pycache``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("REGISTRY_") and k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def time_once(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    return time.perf_counter() - start


def answers(port: int, path: str) -> bool:
    """Whether ``GET path`` on a new connection gets a status line below 500."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return False
    parts = head.split(b" ", 2)
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] in b"1234"


def time_server(argv: Callable[[int], list[str]], path: str, log: Path, env: dict[str, str]) -> float:
    """Seconds from spawning ``argv(port)`` to the first answer of ``path``; the server is stopped after."""
    port = free_port()
    with log.open("ab") as out:
        start = time.perf_counter()
        process = subprocess.Popen(argv(port), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env)
    try:
        while not answers(port, path):
            if process.poll() is not None:
                raise RuntimeError(f"{argv(port)[0]} exited early:\n{log.read_text(errors='replace')[-4000:]}")
            if time.perf_counter() - start > START_TIMEOUT:
                raise RuntimeError(f"{argv(port)[0]} did not answer within {START_TIMEOUT:g} s")
            time.sleep(POLL_INTERVAL)
        return time.perf_counter() - start
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_config(root: Path) -> Path:
    """The default configuration with its paths in ``root``: SQLite, filesystem storage."""
    config = root / "registry.toml"
    config.write_text(
        f'[database]\npath = "{root / "registry.db"}"\n\n'
        f'[storage]\nbackend = "filesystem"\n\n[storage.filesystem]\nroot = "{root / "packages"}"\n'
    )
    return config


def serve_argv(registry: list[str], config: Path) -> Callable[[int], list[str]]:
    return lambda port: [*registry, "--config", str(config), "serve", "--port", str(port)]


def peer_argv(workdir: Path) -> Callable[[int], list[str]]:
    sys.path.insert(0, str(HERE))
    import peer

    executable = peer.ensure_venv()
    packages = workdir / "peer-packages"
    packages.mkdir(exist_ok=True)
    return lambda port: [str(executable), "run", "-i", LOOPBACK, "-p", str(port), "-a", ".", "-P", ".",
                         str(packages)]


def report(times: dict[str, list[float]], floor: float) -> None:
    print(f"{'command':<32} {'median ms':>10} {'over python':>12} {'min':>6} {'max':>6}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<32} {median * 1000:>10.0f} {(median - floor) * 1000:>+11.0f}"
              f" {min(samples) * 1000:>6.0f} {max(samples) * 1000:>6.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs of each command (default 15)")
    parser.add_argument("--skip-peer", action="store_true", help="do not install or run pypiserver")
    parser.add_argument("--baseline", type=Path, default=None, metavar="PATH",
                        help="another `registry` executable to time in the same rounds (A/B)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    registry = registry_command()
    refused = f"http://{LOOPBACK}:{free_port()}"
    workdir = Path(tempfile.mkdtemp(prefix="registry-startup-"))
    try:
        config = write_config(workdir)
        env = clean_env(workdir / "pycache")
        # the database exists (and is migrated) before the timed starts: a restart, the usual case
        subprocess.run([*registry, "--config", str(config), "migrate"], capture_output=True, check=True, env=env)
        commands: dict[str, Callable[[], float]] = {
            "python -c pass": lambda: time_once([sys.executable, "-c", "pass"], env),
            "registry --version": lambda: time_once([*registry, "--version"], env),
            "registry ls (refused)": lambda: time_once(
                [*registry, "ls", "--app", "demo", "--url", refused, "--token", "t"], env),
            "registry serve": lambda: time_server(serve_argv(registry, config), "/healthz", workdir / "serve.log", env),
        }
        if args.baseline is not None:
            baseline = [str(args.baseline)]
            commands["registry --version (baseline)"] = lambda: time_once([*baseline, "--version"], env)
            commands["registry ls (refused, baseline)"] = lambda: time_once(
                [*baseline, "ls", "--app", "demo", "--url", refused, "--token", "t"], env)
            commands["registry serve (baseline)"] = lambda: time_server(
                serve_argv(baseline, config), "/healthz", workdir / "serve-baseline.log", env)
        if not args.skip_peer:
            peer = peer_argv(workdir)
            # the peer's floor: its virtualenv has no editable install's import hook
            peer_python = str(Path(peer(0)[0]).with_name("python"))
            commands["python -c pass (peer venv)"] = lambda: time_once([peer_python, "-c", "pass"], env)
            commands["pypi-server run"] = lambda: time_server(peer, "/health", workdir / "peer.log", env)
        loads = [os.getloadavg()[0]]
        for measure in commands.values():  # warm the file cache and compile the bytecode once
            measure()
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, measure in commands.items():
                times[name].append(measure())
        loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(times, statistics.median(times["python -c pass"]))
    print(f"\nload average (1 min) {loads[0]:.2f} before, {loads[1]:.2f} after; {args.repeat} interleaved runs each")
    if "pypi-server run" in times:
        ours, theirs = statistics.median(times["registry serve"]), statistics.median(times["pypi-server run"])
        verdict = "met" if ours <= TARGET_SERVE_VS_PEER * theirs else "missed"
        print(f"target: serve answers its first request within {TARGET_SERVE_VS_PEER:g}x pypiserver's start-up:"
              f" {ours * 1000:.0f} ms vs {theirs * 1000:.0f} ms ({ours / theirs:.2f}x): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
