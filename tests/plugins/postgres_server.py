"""Real PostgreSQL clusters for the PostgreSQL backend's tests: ``initdb`` as the
``postgres`` user (tests run as root in CI; initdb refuses root) in a temp dir, with
scram-sha-256 password auth over TCP, started on a free loopback port with its unix
socket in the same temp dir, and removed after. A missing PostgreSQL fails the test:
never a skip.

One cluster serves the whole session (each test gets a fresh schema or database); tests
that restart or kill the server take a cluster of their own.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from lelect.backends.postgres.sql import bell_key
from tests.helpers import free_port

#: The password of every role the tests make (a secret that must never be shown).
PASSWORD = "s3cret-pg-pw"
#: The role lelect connects as in the contract suite: owner of its database, no superuser.
ROLE = "lelect"

_HBA = """\
local   all   all                        trust
host    all   lelect_trust  127.0.0.1/32 trust
host    all   lelect_md5    127.0.0.1/32 md5
hostnossl all lelect_tls    127.0.0.1/32 reject
host    all   all           127.0.0.1/32 scram-sha-256
"""


def postgres_bindir() -> Path:
    """Debian's server binaries (the newest major installed), else pg_config's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))  # fmt: skip
    if found:
        return Path(found[-1]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout
        if (Path(bindir.strip()) / "initdb").exists():
            return Path(bindir.strip())
    pytest.fail("PostgreSQL is not installed (apt-get install postgresql)", pytrace=False)


class PostgresCluster:
    """One throwaway cluster. ``restart()`` keeps port, data and roles."""

    def __init__(self, *, tls: dict[str, Path] | None = None,
                 settings: dict[str, str] | None = None) -> None:  # fmt: skip
        self.bindir = postgres_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="lelect-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.tls = tls
        self._user = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self._user = pwd.getpwnam("postgres")
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self.root.chmod(0o700)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        self._own(pwfile)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")  # fmt: skip
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_preload_libraries": "'pg_stat_statements'",
            "log_min_messages": "warning",
            **(settings or {}),
        }
        if tls:
            for name in ("server_cert", "server_key", "ca"):
                copy = self.root / f"{name}.pem"
                shutil.copy(tls[name], copy)
                copy.chmod(0o600)
                self._own(copy)
            conf.update(ssl="on", ssl_cert_file=f"'{self.root / 'server_cert.pem'}'",
                        ssl_key_file=f"'{self.root / 'server_key.pem'}'",
                        ssl_ca_file=f"'{self.root / 'ca.pem'}'")  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        (self.data / "pg_hba.conf").write_text(_HBA)
        self.start()
        self.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")

    def _own(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid,
                      "extra_groups": []}  # fmt: skip
        result = subprocess.run([str(self.bindir / program), *args], capture_output=True,
                                text=True, cwd=self.root, **kwargs)  # fmt: skip
        if check and result.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{program} failed: {result.stderr}{result.stdout}\n{tail}", pytrace=False)
        return result

    # -- server life --------------------------------------------------------------------

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                  check=False)  # fmt: skip

    def restart(self) -> None:
        """``pg_ctl restart``: every connection is closed; data and port stay."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-m", "fast",
                  "-w", "-t", "60", "restart")  # fmt: skip

    def _processes(self) -> list:
        import psutil

        postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend (a frozen host, as far as clients see)."""
        for process in self._processes():
            process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for process in self._processes():
            process.send_signal(signal.SIGCONT)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- what tests need ----------------------------------------------------------------

    def connect(self, dbname: str = "postgres", **kwargs):
        """An autocommit psycopg connection as the superuser, over the unix socket."""
        import psycopg

        return psycopg.connect(host=str(self.root), port=self.port, user="postgres",
                               dbname=dbname, autocommit=True, **kwargs)  # fmt: skip

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple]:
        with self.connect(dbname) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def create_database(self, name: str, owner: str = ROLE) -> str:
        self.sql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return name

    def url(self, dbname: str, user: str = ROLE, password: str | None = PASSWORD,
            host: str = "127.0.0.1", port: int | None = None, **options: str) -> str:  # fmt: skip
        auth = user if password is None else f"{user}:{password}"
        text = f"postgresql://{auth}@{host}:{port or self.port}/{dbname}"
        if options:
            text += "?" + "&".join(f"{k}={v}" for k, v in options.items())
        return text

    def leader_backend_pid(self, dbname: str, schema: str, election: str) -> int | None:
        """The server process of the leader's connection (the lease row records it)."""
        rows = self.sql(
            f"SELECT backend_pid FROM {schema}.lease WHERE election = '{election}'"
            " AND expires_at > clock_timestamp()",
            dbname,
        )
        return rows[0][0] if rows else None

    def waiting(self, dbname: str, schema: str, election: str) -> int:
        """Candidates of ``election`` waiting behind its leader."""
        return self.sql(waiting_sql(schema, election), dbname)[0][0]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sql("SELECT 1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


_names = itertools.count()


def fresh_name(prefix: str) -> str:
    return f"{prefix}{os.getpid()}_{next(_names)}"


@pytest.fixture(scope="session")
def postgres_cluster():
    """One cluster for the session: tests take a fresh schema or database in it."""
    cluster = PostgresCluster()
    yield cluster
    cluster.remove()


@pytest.fixture
def postgres_private_cluster():
    """A cluster of the test's own, for restarts and kills."""
    cluster = PostgresCluster()
    yield cluster
    cluster.remove()


@pytest.fixture(scope="session")
def postgres_contract_db(postgres_cluster) -> str:
    return postgres_cluster.create_database("lelect_contract")


@pytest.fixture
def postgres_database(postgres_cluster) -> str:
    """A fresh database owned by the lelect role (nothing created in it yet)."""
    return postgres_cluster.create_database(fresh_name("db"))


@pytest.fixture
def target_postgres(postgres_cluster, postgres_contract_db):
    """The contract suite's PostgreSQL: a fresh schema per test, reached over TCP with
    scram-sha-256 as a role that owns the database (not a superuser)."""
    from tests.plugins.targets import Target

    cluster = postgres_cluster

    def fresh() -> str:
        return cluster.url(postgres_contract_db, ttl="2s", schema=fresh_name("t"))

    def url_for(connect_timeout: float, host: str, port: int) -> str:
        return cluster.url(postgres_contract_db, host=host, port=port, ttl="2s",
                           connect_timeout=f"{connect_timeout}s")  # fmt: skip

    return Target(
        id="postgres",
        url=fresh(),
        ttl=2.0,
        secret=PASSWORD,
        url_for=url_for,
        bad_urls=[
            "postgresql://h:99999/db", "postgresql://h/db?ttl=abc", "postgresql://h/db?nope=1",
            "postgresql://h/db?schema=Bad-Name", "postgresql://h/db?ttl=0s",
            "postgresql://h/db?history=0", "postgres://h/db?connect_timeout=forever",
        ],
        fresh=fresh,
        server=cluster,
    )


def waiting_sql(schema: str, election: str) -> str:
    """How many candidates of ``election`` wait behind its leader: server processes that
    hold or wait for the election's doorbell (its advisory lock), other than the
    leader's. (Between two pieces of its wait a waiter is briefly not counted.)"""
    key = bell_key(schema, election) & 0xFFFFFFFFFFFFFFFF
    return (
        "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        f" AND classid = {key >> 32} AND objid = {key & 0xFFFFFFFF} AND objsubid = 1"
        " AND pid IS DISTINCT FROM"
        f" (SELECT backend_pid FROM {schema}.lease WHERE election = '{election}')"
    )
