"""The peer: pypiserver, in a virtualenv of its own (``benchmarks/.venv-peer``).

pypiserver is installed with waitress, the WSGI server bottle picks first on
``--server auto`` (pypiserver's default) and the one its own Docker image
installs as a fallback; ``--peer-server wsgiref`` measures the standard
library's server, which a bare ``pip install pypiserver`` would run on.
Authentication is off (``-a . -P .``), as the registry's token check costs
next to nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from servers import LOOPBACK, ServerProcess, free_port

VENV = Path(__file__).resolve().parent / ".venv-peer"
PACKAGES = ["pypiserver", "waitress"]


def ensure_venv() -> Path:
    """Create the peer's virtualenv and install pypiserver unless already there.

    :returns: the ``pypi-server`` executable.
    """
    executable = VENV / "bin" / "pypi-server"
    if executable.exists() and (VENV / "bin" / "waitress-serve").exists():
        return executable
    print(f"installing {' '.join(PACKAGES)} into {VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *PACKAGES], check=True)
    return executable


def version() -> str:
    """The installed pypiserver's version."""
    completed = subprocess.run([str(VENV / "bin" / "pypi-server"), "--version"],
                               capture_output=True, text=True, check=False)
    return (completed.stdout or completed.stderr).strip()


def pypiserver(workdir: Path, server: str = "waitress") -> ServerProcess:
    """pypiserver serving (and accepting uploads into) ``workdir/peer-packages``.

    :param server: ``waitress`` (bottle's ``auto`` choice once waitress is
        installed) or ``wsgiref``.
    """
    packages = workdir / "peer-packages"
    packages.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        str(ensure_venv()), "run", "-i", LOOPBACK, "-p", str(port), "-a", ".", "-P", ".",
        "--server", "auto" if server == "waitress" else server, str(packages),
    ]
    return ServerProcess("pypiserver", argv, port, workdir / "pypiserver.log", ready_path="/health")


def upload_fields(version: str) -> dict[str, str]:
    """The form fields of a ``twine upload`` of an sdist, as pypiserver reads them."""
    return {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": "bench",
        "version": version,
        "filetype": "sdist",
        "pyversion": "source",
        "metadata_version": "2.1",
    }
