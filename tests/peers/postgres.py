"""A real, throwaway PostgreSQL server for the tests: Debian's `postgresql` server binaries
(/usr/lib/postgresql/*/bin; installed with apt-get when missing and we are root), a fresh cluster in a
temporary folder (initdb, trust authentication), listening on 127.0.0.1 at a free port with fsync off,
stopped and removed at the end. As root the server runs as the `postgres` user (`runuser`), as
PostgreSQL refuses to run as root.

- `start_postgres(directory)`: an async context manager yielding a `PgCluster` (`cluster.url()` is a
  database made for the caller);
- the `pg_cluster` fixture (one cluster per test session) and `pg_url` (a fresh database per test).

Tests are skipped, with the reason, only when PostgreSQL cannot be installed at all."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.net import reserve_port

_db_numbers = itertools.count(1)


class PostgresMissing(RuntimeError):
    pass


def _bin_dir() -> Path | None:
    def version(initdb: str) -> int:
        name = Path(initdb).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def postgres_bin() -> Path:
    """The folder of initdb/pg_ctl, installing Debian's `postgresql` when it is missing (as root)."""
    found = _bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresMissing("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin) and "
                              "not root: install Debian's `postgresql` package (./dev test does)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "postgresql"]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise PostgresMissing(f"apt-get install postgresql failed: {done.stderr.strip()[-300:]}")
    found = _bin_dir()
    if found is None:
        raise PostgresMissing("apt-get installed postgresql but no initdb was found")
    return found


class PgCluster:
    """One PostgreSQL server (a cluster) in its own folder."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="fm-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing("running as root and there is no `postgres` user to run the "
                                      "server as") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str, timeout: float = 60) -> str:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}\n{log}")
        return done.stdout

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    def init(self) -> None:
        self._run(self.tool("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")

    def start(self) -> None:
        """Start on the cluster's port (a free one the first time)."""
        for attempt in range(3):
            if not self.port or attempt:
                self.port = reserve_port()
            opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
                    " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            try:
                self._run(self.tool("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                          "-o", opts, "start", timeout=90)
                return
            except RuntimeError:
                if attempt == 2 or "already in use" not in self.log.read_text(errors="replace"):
                    raise

    def stop(self, mode: str = "fast") -> None:
        self._run(self.tool("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", timeout=90)

    def restart(self) -> None:
        """pg_ctl restart: every connection is closed, the server comes back on the same port."""
        self.stop()
        self.start()

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL."""
        name = name or f"t{os.getpid()}_{next(_db_numbers)}"
        self._run(self.tool("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-T", "template0", name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._run(self.tool("dropdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "--force",
                  "--if-exists", name)

    def url(self, name: str = "failover") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def new_cluster() -> PgCluster:
    """Initialise and start a cluster (with a `failover` database); PostgresMissing when PostgreSQL
    cannot be installed."""
    cluster = PgCluster(postgres_bin())
    try:
        cluster.init()
        cluster.start()
        cluster.create_database("failover")
    except BaseException:
        cluster.remove()
        raise
    return cluster


@contextlib.asynccontextmanager
async def start_postgres(directory: Path | None = None) -> AsyncIterator[PgCluster]:
    """A running cluster for one test; `cluster.url()` is its `failover` database. The server's log is
    copied into `directory` at the end (the cluster itself lives in a folder the postgres user owns)."""
    try:
        cluster = await asyncio.to_thread(new_cluster)
    except PostgresMissing as exc:
        pytest.skip(f"no PostgreSQL: {exc}")
    try:
        yield cluster
    finally:
        if directory is not None and cluster.log.exists():
            with contextlib.suppress(OSError):
                shutil.copy(cluster.log, Path(directory) / "postgresql.log")
        await asyncio.to_thread(cluster.remove)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the whole session (started on first use)."""
    try:
        cluster = new_cluster()
    except PostgresMissing as exc:
        pytest.skip(f"no PostgreSQL: {exc}")
    yield cluster
    cluster.remove()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh database for one test (dropped after it)."""
    url = pg_cluster.create_database()
    yield url
    pg_cluster.drop_database(url.rsplit("/", 1)[1])
