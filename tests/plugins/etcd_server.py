"""Real ``etcd`` processes (Debian's etcd-server) for the etcd backend's tests: each on
free loopback client and peer ports with a fresh data dir, started and waited for (its
/health answers) by a fixture. A missing etcd fails the test: never a skip.

- ``etcd_server`` (session): one server the tests share, each test under a fresh prefix;
- ``etcd_server_factory`` (function): servers of the test's own, for tests that stop,
  freeze, restart or lock down (auth, TLS) their server.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port

ETCDCTL_API = {"ETCDCTL_API": "3"}


def etcd_binary(name: str = "etcd") -> str:
    binary = shutil.which(name)
    if binary is None:
        package = "etcd-server" if name == "etcd" else "etcd-client"
        pytest.fail(f"{name} is not installed (apt-get install {package})", pytrace=False)
    return binary


class EtcdServer:
    """One single-member etcd. ``restart()`` keeps its port and its data."""

    def __init__(self, directory: Path, *, tls: dict[str, Path] | None = None) -> None:
        self.binary = etcd_binary()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data_dir = directory / "data"
        self.tls = tls
        self.port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen | None = None
        self.user: tuple[str, str] | None = None  # root's name and password once auth is on
        self.start()

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, prefix: str = "lelect", **options: str) -> str:
        """A URL of this server (as root, once auth is on)."""
        scheme = "etcds" if self.tls else "etcd"
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"{scheme}://{self.userinfo}{self.endpoint}/{prefix}" + (f"?{query}" if query else "")

    @property
    def userinfo(self) -> str:
        """``root:PASSWORD@`` once auth is on, else empty."""
        return f"{self.user[0]}:{self.user[1]}@" if self.user else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command_line(self) -> list[str]:
        client = f"{self.scheme}://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            "--name", "lelect-test",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"lelect-test={peer}",
            "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", str(self.directory / "etcd.log"),
            "--bcrypt-cost", "4",  # authenticate (a bcrypt) in microseconds, not 50 ms
        ]  # fmt: skip
        if self.tls:
            args += [
                "--cert-file", str(self.tls["server_cert"]),
                "--key-file", str(self.tls["server_key"]),
                "--trusted-ca-file", str(self.tls["ca"]),  # and clients need a certificate
            ]  # fmt: skip
        return args

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            self.command_line(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = self.directory / "etcd.log"
                detail = log.read_text()[-2000:] if log.exists() else ""
                pytest.fail(f"etcd exited at start-up:\n{detail}", pytrace=False)
            if self.healthy():
                return
            if time.monotonic() > deadline:
                pytest.fail(f"etcd on {self.endpoint} did not become healthy", pytrace=False)
            time.sleep(0.02)

    def healthy(self) -> bool:
        try:
            self.etcdctl("endpoint", "health", timeout=2)
            return True
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False

    def etcdctl(self, *args: str, timeout: float = 20, user: tuple[str, str] | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        """Run ``etcdctl ARGS`` against this server (as root once auth is on)."""
        return subprocess.run(
            self.etcdctl_command(*args, user=user), capture_output=True, text=True,
            timeout=timeout, check=check, env={**os.environ, **ETCDCTL_API},
        )

    def etcdctl_command(self, *args: str, user: tuple[str, str] | None = None) -> list[str]:
        command = [etcd_binary("etcdctl"), "--endpoints", f"{self.scheme}://{self.endpoint}",
                   "--dial-timeout", "2s", "--command-timeout", "5s"]
        if self.tls:
            command += ["--cacert", str(self.tls["ca"]), "--cert", str(self.tls["client_cert"]),
                        "--key", str(self.tls["client_key"])]
        who = user or self.user
        if who:
            command += ["--user", f"{who[0]}:{who[1]}"]
        return command + list(args)

    def get(self, key: str, *, prefix: bool = False) -> list[dict]:
        """The key-values at ``key`` (or under it), values and keys decoded."""
        import base64

        out = self.etcdctl("get", key, *(["--prefix"] if prefix else []), "-w", "json").stdout
        found = []
        for kv in json.loads(out).get("kvs", []):
            kv["key"] = base64.b64decode(kv["key"]).decode()
            kv["value"] = base64.b64decode(kv.get("value", "")).decode()
            found.append(kv)
        return found

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data (leases survive)."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)

    def enable_auth(self, root_password: str) -> None:
        self.etcdctl("user", "add", f"root:{root_password}")
        self.etcdctl("auth", "enable")
        self.user = ("root", root_password)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as answer:
            return answer.read().decode()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


#: The shared server's root password: its URLs carry it, so the contract suite checks
#: that it is never shown.
ROOT_PASSWORD = "s3cret-etcd-pw"


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory) -> Iterator[EtcdServer]:
    """One etcd for the whole session, with auth on: use a fresh prefix per test
    (``etcd_prefix``)."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.enable_auth(ROOT_PASSWORD)
    yield server
    server.remove()


_PREFIXES = itertools.count(1)


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix nobody else uses on the shared server."""
    return f"t{os.getpid()}-{next(_PREFIXES)}"


@pytest.fixture
def etcd_server_factory(tmp_path: Path):
    """Factory: ``etcd_server_factory(tls=...)`` -> an EtcdServer of this test's own."""
    servers: list[EtcdServer] = []

    def make(**kwargs) -> EtcdServer:
        server = EtcdServer(tmp_path / f"etcd-{len(servers)}", **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.remove()


@pytest.fixture
def target_etcd(etcd_server, etcd_prefix):
    """The contract suite's etcd: the shared server, a fresh prefix, 2 s leases."""
    from tests.plugins.targets import Target

    prefixes = iter(range(1_000_000))

    def url_for(connect_timeout: float, host: str, port: int) -> str:
        return (f"etcd://root:{ROOT_PASSWORD}@{host}:{port}/{etcd_prefix}?ttl=2s"
                f"&connect_timeout={connect_timeout}s")

    return Target(
        id="etcd",
        url=etcd_server.url(etcd_prefix, ttl="2s"),
        ttl=2.0,
        secret=ROOT_PASSWORD,
        url_for=url_for,
        bad_urls=[
            "etcd://h:99999/x", "etcd:///x", "etcd://h/x?ttl=abc", "etcd://h/x?nope=1",
            "etcd://h/a//b", "etcd://h/x?ca=/etc/hostname", "etcds://h/x?cert=/etc/hostname",
            "etcd://h/x?history=0",
        ],
        fresh=lambda: etcd_server.url(f"{etcd_prefix}-{next(prefixes)}", ttl="2s"),
        server=etcd_server,
        # A gRPC keep-alive: the call, its answer on the connection's I/O thread, and
        # the server's flow-control PING (answered) and WINDOW_UPDATE after it: up to ~5
        # wake-ups each, 2 of them in 5 s (6-7 measured idle, 9 under load).
        idle_wakeups=12,
    )
