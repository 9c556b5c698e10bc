"""Real MariaDB servers for the MySQL backend's tests: ``mariadb-install-db`` in a temp
dir (as the ``mysql`` user when tests run as root), ``mariadbd`` on a free loopback port
with its unix socket in the same temp dir, removed after. A missing MariaDB fails the
test: never a skip.

The tests' administrator is ``root`` over the unix socket; lelect connects over TCP as
``lelect`` with exactly the GRANTs docs/mysql.md gives (:data:`GRANTS`). One server
serves the whole session (each test gets a fresh table prefix); tests that restart or
kill the server take one of their own.
"""

from __future__ import annotations

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

from tests.helpers import free_port

PASSWORD = "s3cret-my-pw"
USER = "lelect"
DATABASE = "lelect_contract"
#: The privileges docs/mysql.md grants lelect's user (tables created on first use).
GRANTS = "SELECT, INSERT, UPDATE, DELETE, CREATE"
#: The privileges of a user that only runs campaigns once the tables exist.
RUN_GRANTS = "SELECT, INSERT, UPDATE, DELETE"


def mariadb_binaries() -> tuple[str, str]:
    server = shutil.which("mariadbd") or (os.path.exists("/usr/sbin/mariadbd") and "/usr/sbin/mariadbd")
    install = shutil.which("mariadb-install-db")
    if not server or not install:
        pytest.fail("MariaDB is not installed (apt-get install mariadb-server)", pytrace=False)
    return str(server), install


class MariaDBServer:
    """One throwaway server. ``restart()`` keeps port, data and users."""

    def __init__(self, tls: dict[str, Path] | None = None) -> None:
        self.server_bin, install = mariadb_binaries()
        self.tls = tls
        self.root = Path(tempfile.mkdtemp(prefix="lelect-my-"))
        self.data = self.root / "data"
        self.socket = self.root / "sock"
        # Its own temp dir: a starting mariadbd removes the temporary tables it finds in
        # its tmpdir, so servers sharing /tmp (a worker each) removed each other's while
        # mariadb-install-db ran ("Unknown table 'mysql.tmp_user_sys'").
        self.tmp = self.root / "tmp"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._user = None
        if os.geteuid() == 0:  # mariadbd refuses to run as root without --user
            self._user = pwd.getpwnam("mysql")
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self.root.chmod(0o700)
        self.tmp.mkdir(mode=0o700)
        if self._user is not None:
            os.chown(self.tmp, self._user.pw_uid, self._user.pw_gid)
        self.tls_options: list[str] = []
        if tls:
            for name in ("server_cert", "server_key", "ca"):
                copy = self.root / f"{name}.pem"
                shutil.copy(tls[name], copy)
                copy.chmod(0o600)
                if self._user is not None:
                    os.chown(copy, self._user.pw_uid, self._user.pw_gid)
            self.tls_options = [f"--ssl-cert={self.root / 'server_cert.pem'}",
                                f"--ssl-key={self.root / 'server_key.pem'}",
                                f"--ssl-ca={self.root / 'ca.pem'}"]
        user = self._user.pw_name if self._user else pwd.getpwuid(os.geteuid()).pw_name
        result = subprocess.run(
            [install, "--no-defaults", f"--datadir={self.data}", f"--tmpdir={self.tmp}",
             f"--user={user}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0:
            pytest.fail(f"mariadb-install-db failed: {result.stderr[-2000:]}", pytrace=False)
        self.start()
        self.sql(f"CREATE DATABASE {DATABASE}")
        self.create_user(USER, PASSWORD, GRANTS, DATABASE)

    def start(self) -> None:
        user = ["--user=" + self._user.pw_name] if self._user else []
        self.process = subprocess.Popen(
            [self.server_bin, "--no-defaults", f"--datadir={self.data}", f"--tmpdir={self.tmp}",
             *user,
             "--bind-address=127.0.0.1", f"--port={self.port}", f"--socket={self.socket}",
             f"--pid-file={self.root / 'pid'}", "--skip-name-resolve", "--skip-log-bin",
             "--innodb-flush-log-at-trx-commit=0", "--innodb-buffer-pool-size=32M",
             "--max-connections=400", f"--log-error={self.root / 'log'}",
             "--innodb-lock-wait-timeout=5", *self.tls_options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.wait_ready()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> None:
        """Stop and start again: every connection is closed; data and port stay."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the server (a frozen host, as far as clients see)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sql("SELECT 1")
                return
            except Exception:
                if self.process is not None and self.process.poll() is not None:
                    log = self.root / "log"
                    pytest.fail(f"mariadbd exited: {log.read_text()[-2000:] if log.exists() else ''}",
                                pytrace=False)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # -- what tests need ----------------------------------------------------------------

    def connect(self, database: str | None = None):
        """A PyMySQL connection as root over the unix socket (autocommit)."""
        import pymysql

        return pymysql.connect(unix_socket=str(self.socket), user="root", database=database,
                               autocommit=True, charset="utf8mb4")

    def sql(self, statement: str, database: str | None = None) -> list[tuple]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            conn.close()

    def create_user(self, user: str, password: str, grants: str, database: str) -> None:
        self.sql(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'")
        self.sql(f"GRANT {grants} ON `{database}`.* TO '{user}'@'127.0.0.1'")

    def url(self, database: str = DATABASE, user: str = USER, password: str | None = PASSWORD,
            host: str = "127.0.0.1", port: int | None = None, **options: str) -> str:  # fmt: skip
        auth = user if password is None else f"{user}:{password}"
        text = f"mysql://{auth}@{host}:{port or self.port}/{database}"
        if options:
            text += "?" + "&".join(f"{k}={v}" for k, v in options.items())
        return text


_names = itertools.count()


def fresh_prefix() -> str:
    return f"t{os.getpid()}_{next(_names)}_"


@pytest.fixture(scope="session")
def mysql_server():
    server = MariaDBServer()
    yield server
    server.remove()


@pytest.fixture
def mysql_private_server():
    """A server of the test's own, for restarts and kills."""
    server = MariaDBServer()
    yield server
    server.remove()


@pytest.fixture
def target_mysql(mysql_server):
    """The contract suite's MariaDB: a fresh table prefix per test, reached over TCP as a
    user with exactly the documented GRANTs."""
    from tests.plugins.targets import Target

    server = mysql_server

    def fresh() -> str:
        return server.url(ttl="2s", prefix=fresh_prefix())

    def url_for(connect_timeout: float, host: str, port: int) -> str:
        return server.url(host=host, port=port, ttl="2s", connect_timeout=f"{connect_timeout}s")

    return Target(
        id="mysql",
        url=fresh(),
        ttl=2.0,
        secret=PASSWORD,
        url_for=url_for,
        bad_urls=[
            "mysql://h:99999/db", "mysql://h/db?ttl=abc", "mysql://h/db?nope=1",
            "mysql://h/db?prefix=Bad-Name", "mysql://h/db?ttl=0s", "mysql://h/db?history=0",
            "mysql://h/db?connect_timeout=forever", "mysql://h/", "mysql://h/db?ssl_mode=maybe",
            "mysql://h/db?ssl_mode=verify_ca&ssl_ca=/nonexistent/ca.pem", "mysql://h1,h2/db",
        ],
        fresh=fresh,
        server=server,
    )
