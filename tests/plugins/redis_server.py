"""Real ``redis-server`` processes for the Redis backend's tests: each on a free loopback
port in a temp dir, without persistence (``--save '' --appendonly no``), started and
waited for (PING) by a fixture. A missing redis-server fails the test: never a skip."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from tests.helpers import free_port


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)", pytrace=False)
    return binary


def make_test_certs(directory: Path) -> dict[str, Path]:
    """A test CA and a server and a client certificate it signed (openssl CLI), valid for
    127.0.0.1 and localhost. Returns paths: ca, ca_key, server_cert, server_key,
    client_cert, client_key."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        name: directory / f"{name}.pem"
        for name in ("ca", "ca_key", "server_cert", "server_key", "client_cert", "client_key")
    }

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    # Extensions as a strict verifier wants them (Python 3.13 sets VERIFY_X509_STRICT):
    # a CA with key usage, and leaves naming their issuer's key.
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=lelect test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        "-keyout", str(paths["ca_key"]), "-out", str(paths["ca"]),
    )  # fmt: skip
    extensions = directory / "san.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    for who in ("server", "client"):
        csr = directory / f"{who}.csr"
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
            "-keyout", str(paths[f"{who}_key"]), "-out", str(csr),
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(paths["ca"]),
            "-CAkey", str(paths["ca_key"]), "-CAcreateserial", "-days", "2",
            "-extfile", str(extensions), "-out", str(paths[f"{who}_cert"]),
        )  # fmt: skip
    return paths


class RedisServer:
    """One redis-server process. ``restart()`` keeps the port (and loses the data).

    Its URLs turn lelect's delayed-restart rule off (``restart_guard=off``) unless
    ``restart_guard=True``: a redis-server started a moment ago is one that may have
    forgotten its leases, and every test's first election would wait a ttl."""

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        tls: dict[str, Path] | None = None,
        extra: tuple[str, ...] = (),
        restart_guard: bool = False,
    ) -> None:
        self.restart_guard = restart_guard
        self.binary = redis_server_binary()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.tls = tls
        self.extra = extra
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        # A unix socket path must stay under ~107 bytes: pytest's tmp paths can be longer.
        self._socket_dir = tempfile.mkdtemp(prefix="lelect-redis-")
        self.socket_path = os.path.join(self._socket_dir, "redis.sock")
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _with_guard(self, url: str) -> str:
        if self.restart_guard:
            return url
        return url + ("&" if "?" in url else "?") + "restart_guard=off"

    def url_at(self, host: str, port: int) -> str:
        """A URL of this server's database 0 at another address (a proxy in front)."""
        auth = f":{self.password}@" if self.password else ""
        return self._with_guard(f"redis://{auth}{host}:{port}/0")

    @property
    def url(self) -> str:
        """``redis://[:PASSWORD@]127.0.0.1:PORT/0?…``: add options with ``&``."""
        return self.url_at("127.0.0.1", self.port)

    @property
    def tls_url(self) -> str:
        assert self.tls is not None
        return self._with_guard(
            f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.tls['ca']}")

    @property
    def unix_url(self) -> str:
        return self._with_guard(f"unix://{self.socket_path}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command_line(self) -> list[str]:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--logfile", str(self.directory / "redis.log"),
            "--enable-debug-command", "yes",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            args += [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(self.tls["server_cert"]),
                "--tls-key-file", str(self.tls["server_key"]),
                "--tls-ca-cert-file", str(self.tls["ca"]),
                "--tls-auth-clients", "optional",
            ]  # fmt: skip
        return args + list(self.extra)

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            self.command_line(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = self.directory / "redis.log"
                detail = log.read_text()[-2000:] if log.exists() else self.process.stderr.read()
                pytest.fail(f"redis-server exited at start-up:\n{detail}", pytrace=False)
            try:
                if self.client(socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server on {self.host_port} did not answer PING", pytrace=False)
            time.sleep(0.01)

    def client(self, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 5)
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            decode_responses=True,
            **kwargs,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port: without persistence the data is gone."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)

    def command_calls(self) -> dict[str, int]:
        """INFO commandstats as {command: calls}."""
        stats = self.client().info("commandstats")
        return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


@pytest.fixture
def redis_server(tmp_path: Path):
    """A fresh redis-server for one test."""
    server = RedisServer(tmp_path / "redis")
    yield server
    server.remove()


@pytest.fixture
def redis_server_factory(tmp_path: Path):
    """Factory: ``redis_server_factory(password=..., tls=..., extra=...)`` -> RedisServer."""
    servers: list[RedisServer] = []

    def make(**kwargs) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.remove()


@pytest.fixture(scope="session")
def redis_test_certs(tmp_path_factory) -> dict[str, Path]:
    return make_test_certs(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture
def target_redis(redis_server_factory):
    """The contract suite's Redis: a password-protected server of the test's own."""
    from tests.plugins.targets import Target

    secret = "s3cret-redis-pw"
    server = redis_server_factory(password=secret)

    def url_for(connect_timeout: float, host: str, port: int) -> str:
        return f"redis://:{secret}@{host}:{port}/0?ttl=2s&connect_timeout={connect_timeout}s"

    prefixes = iter(range(1_000_000))
    return Target(
        id="redis",
        url=f"{server.url}&ttl=2s",
        ttl=2.0,
        secret=secret,
        url_for=url_for,
        bad_urls=[
            "redis://h:99999/0", "redis://h/x", "redis://h/0?ttl=abc", "redis://h/0?nope=1",
            "redis://h/0?prefix=a*b", "redis://h1,h2/0", "redis://h/0?restart_guard=maybe",
        ],
        fresh=lambda: f"{server.url}&ttl=2s&prefix=p{next(prefixes)}",
        server=server,
    )
