"""A PostgreSQL with pgvector of our own, for the knowledge search's pgvector path: the tests'
(once per session) and the ``knowledge`` benchmark's, when ``DATABASE_URL``'s server has none.

Debian 12's PostgreSQL 15 has no pgvector package, so the server comes from the ``pgserver``
wheel (a dev dependency: PostgreSQL 16 with pgvector built in; only its binaries are used). It is
initialised in a temporary directory, started on a free port and removed when stopped.
PostgreSQL refuses to run as root: under root (CI) it runs as the ``postgres`` user that
Debian's PostgreSQL creates.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import free_port


def binaries() -> Path | None:
    """The ``bin`` directory of pgserver's PostgreSQL, or None when the wheel is not installed."""
    spec = importlib.util.find_spec("pgserver")  # found, not imported: only its binaries are used
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    return found if (found / "postgres").exists() else None


def missing_message() -> str:
    return "pgserver (PostgreSQL with pgvector) is needed for the pgvector tests: pip install -e '.[dev]'"


def _as_postgres() -> list[str]:
    """The prefix that runs a server command as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root needs a `postgres` user to start PostgreSQL as") from None
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PgvectorServer:
    port: int = 0
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="agentstream-pgvector-")))

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        bin_dir = binaries()
        assert bin_dir is not None, missing_message()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        self.port = free_port()
        as_user, run = _as_postgres(), self.directory
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(run / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        options = (
            f"-p {self.port} -k {run} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        )
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(run / "data"), "-o", options, "-l", str(run / "log"), "-w",
             "start"],
            check=True,
            capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        bin_dir = binaries()
        if bin_dir is not None and (self.directory / "data" / "postmaster.pid").exists():
            subprocess.run(
                [*_as_postgres(), str(bin_dir / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "immediate",
                 "stop"],
                check=False,
                capture_output=True,
            )  # fmt: skip
        shutil.rmtree(self.directory, ignore_errors=True)
