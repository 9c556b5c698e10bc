"""A real ZooKeeper (Debian's ``zookeeper`` package) started standalone for the tests:
temp data dir, free loopback port, small tickTime so short session timeouts are allowed.

``zookeeper_server`` is session-scoped (JVM start-up costs ~1 s); tests that stop or
freeze the server use ``fresh_zookeeper`` (function-scoped) instead. A missing
ZooKeeper or java fails the test: it never skips.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import free_port

JAR_DIRS = (Path("/usr/share/java"), Path("/usr/share/zookeeper"))
# The server jar's manifest names its own dependencies; log4j makes its log readable.
LOG_JARS = ("slf4j-log4j12.jar", "log4j-1.2.jar")
TICK_MS = 200  # minSessionTimeout = 2 ticks = 400 ms


def _classpath() -> str:
    for directory in JAR_DIRS:
        jar = directory / "zookeeper.jar"
        if jar.exists():
            extra = [str(directory / name) for name in LOG_JARS if (directory / name).exists()]
            return ":".join([str(jar), *extra])
    pytest.fail(
        "ZooKeeper is not installed (no zookeeper.jar in /usr/share/java):"
        " apt-get install zookeeper default-jre-headless"
    )


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        pytest.fail("java is not installed: apt-get install default-jre-headless")
    return java


def _die_with_parent() -> None:
    """No JVM outlives a killed pytest (Linux: PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def four_letter_word(port: int, word: str, timeout: float = 2.0) -> str:
    """Send a ZooKeeper four-letter command; return the answer ('' if none)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks).decode()
    except OSError:
        return ""


class ZooKeeperServer:
    """One standalone ZooKeeper process on 127.0.0.1:``port``."""

    def __init__(self, root: Path, *, extra_config: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.extra_config = extra_config or {}
        self.process: subprocess.Popen | None = None
        self.log_path = root / "zookeeper.log"

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/lelect", hosts: str | None = None, **options: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in options.items())
        return f"zookeeper://{hosts or self.hosts}{path}" + (f"?{query}" if query else "")

    def start(self, timeout: float = 30.0) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = {
            "tickTime": str(TICK_MS),
            "dataDir": str(data),
            "clientPort": str(self.port),
            "clientPortAddress": "127.0.0.1",
            "admin.enableServer": "false",
            "maxSessionTimeout": "60000",
            "maxClientCnxns": "0",
            "4lw.commands.whitelist": "*",
            "forceSync": "no",
            **self.extra_config,
        }
        cfg = self.root / "zoo.cfg"
        cfg.write_text("".join(f"{key}={value}\n" for key, value in config.items()))
        log4j = self.root / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=WARN, FILE\n"
            "log4j.appender.FILE=org.apache.log4j.FileAppender\n"
            f"log4j.appender.FILE.File={self.log_path}\n"
            "log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p %c{1} - %m%n\n"
        )
        command = [
            _java(),
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j.configuration=file:{log4j}",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp",
            _classpath(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(cfg),
        ]
        out = open(self.root / "stdout.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, preexec_fn=_die_with_parent
        )
        out.close()
        deadline = time.monotonic() + timeout
        # "ruok" answers before the server serves; "srvr" names its mode only once it does.
        while "Mode:" not in four_letter_word(self.port, "srvr", timeout=0.5):
            if self.process.poll() is not None:
                pytest.fail(f"ZooKeeper exited with status {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"ZooKeeper did not answer on {self.hosts} in {timeout}s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("stdout.log", "zookeeper.log"):
            path = self.root / name
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    def command(self, word: str) -> str:
        return four_letter_word(self.port, word)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _start(tmp: Path, **extra_config: str) -> ZooKeeperServer:
    server = ZooKeeperServer(tmp, extra_config=extra_config)
    server.start()
    return server


@pytest.fixture(scope="session")
def zookeeper_server():
    """A ZooKeeper shared by every test that does not stop or freeze it."""
    root = Path(tempfile.mkdtemp(prefix="lelect-zk-"))
    server = _start(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_zookeeper(tmp_path):
    """A ZooKeeper of the test's own, for tests that SIGSTOP or stop it."""
    server = _start(tmp_path / "zk")
    yield server
    server.stop()


@pytest.fixture
def zk_path():
    """A base path of the test's own, so tests sharing a server do not meet."""
    return f"/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def zk_url(zookeeper_server, zk_path):
    """``zookeeper://127.0.0.1:PORT/t-…`` with a short session timeout, on the shared server."""
    return zookeeper_server.url(zk_path, session_timeout="2s")


@pytest.fixture
def target_zookeeper(zookeeper_server, zk_path):
    """The contract suite's ZooKeeper: the shared server, a base path of the test's own,
    digest credentials (the secret) and a 2 s session."""
    from tests.plugins.targets import Target

    secret = "s3cret-zk-pw"
    auth = f"digest:lelect:{secret}"

    def url_for(connect_timeout: float, host: str, port: int) -> str:
        return (f"zookeeper://{host}:{port}{zk_path}?session_timeout=2s"
                f"&connect_timeout={connect_timeout}s&auth={auth}")

    paths = iter(range(1_000_000))
    return Target(
        id="zookeeper",
        url=zookeeper_server.url(zk_path, session_timeout="2s", auth=auth),
        ttl=2.0,
        secret=secret,
        url_for=url_for,
        bad_urls=[
            "zookeeper://", "zookeeper://h:99999/x", "zookeeper://h/x?session_timeout=abc",
            "zookeeper://h/x?nope=1", "zookeeper://u:pw@h/x", "zookeeper://h/a//b",
        ],
        fresh=lambda: zookeeper_server.url(f"{zk_path}-{next(paths)}", session_timeout="2s",
                                           auth=auth),
        server=zookeeper_server,
    )
