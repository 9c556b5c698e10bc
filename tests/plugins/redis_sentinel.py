"""Redis with Sentinel for the failover tests: a master, a replica and three
``redis-sentinel`` processes (Debian's ``redis-sentinel``), all on free loopback ports
in a temp dir. A missing redis-sentinel fails the test: never a skip.

The servers are :class:`tests.plugins.redis_server.RedisServer` with lelect's
delayed-restart rule left on (the rule is what a failover needs). With ``tls`` (the
test certificates) every link lelect and the sentinels use is TLS: the sentinels listen
on a TLS port only and monitor the servers' TLS ports, replication runs over TLS, and
passwords guard the servers (``requirepass``) and the sentinels."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from tests.helpers import free_port, wait_until
from tests.plugins.redis_server import RedisServer

MASTER_NAME = "lelect-test"
#: How long a master may not answer before the sentinels call it down.
DOWN_AFTER_MS = 1000


def redis_sentinel_binary() -> str:
    binary = shutil.which("redis-sentinel")
    if binary is None:
        pytest.fail("redis-sentinel is not installed (apt-get install redis-sentinel)",
                    pytrace=False)
    return binary


class Sentinel:
    """One redis-sentinel process watching ``master``."""

    def __init__(self, directory: Path, master_port: int,
                 tls: dict[str, Path] | None = None, master_password: str | None = None,
                 password: str | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        self.password = password
        config = directory / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        listen = f"port {self.port}\n"
        if tls:
            listen = (
                f"port 0\ntls-port {self.port}\ntls-replication yes\n"
                f"tls-cert-file {tls['server_cert']}\ntls-key-file {tls['server_key']}\n"
                f"tls-ca-cert-file {tls['ca']}\ntls-auth-clients optional\n"
            )
        if master_password:
            listen += f"sentinel auth-pass {MASTER_NAME} {master_password}\n"
        if password:  # the sentinels' own, which they also use among themselves
            listen += f"requirepass {password}\nsentinel sentinel-pass {password}\n"
        config.write_text(
            listen +
            "bind 127.0.0.1\n"
            f"dir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        config.chmod(0o600)
        self.process = subprocess.Popen([redis_sentinel_binary(), str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=10, what=f"redis-sentinel on port {self.port}")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            log = self.directory / "sentinel.log"
            pytest.fail(f"redis-sentinel exited at start-up:\n"
                        f"{log.read_text()[-2000:] if log.exists() else ''}", pytrace=False)
        try:
            return bool(self.client(socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def client(self, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 5)
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls["ca"]))
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           decode_responses=True, **kwargs)

    def master_port(self) -> int | None:
        try:
            named = self.client().execute_command("SENTINEL", "get-master-addr-by-name",
                                                  MASTER_NAME)
        except redis.RedisError:
            return None
        return int(named[1]) if named else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SentinelSetup:
    """A master, a replica of it, and three sentinels that agree on both."""

    def __init__(self, directory: Path, tls: dict[str, Path] | None = None) -> None:
        self.tls = tls
        #: The master's password and the sentinels' (TLS set-ups only).
        self.password = "master-s3cret" if tls else None
        self.sentinel_password = "sentinel-s3cret" if tls else None
        extra: tuple[str, ...] = ()
        if tls:
            extra = ("--tls-replication", "yes", "--masterauth", self.password)
        self.master = RedisServer(directory / "master", restart_guard=True, tls=tls,
                                  password=self.password, extra=extra)
        self.replica = RedisServer(
            directory / "replica", restart_guard=True, tls=tls, password=self.password,
            extra=(*extra, "--replicaof", "127.0.0.1", str(self.port_of(self.master))))
        self.sentinels: list[Sentinel] = []
        for index in range(3):
            self.sentinels.append(Sentinel(directory / f"sentinel-{index}",
                                           self.port_of(self.master), tls, self.password,
                                           self.sentinel_password))
        wait_until(self._settled, timeout=30, what="three sentinels that know each other"
                   " and the replica in sync")

    def _settled(self) -> bool:
        if self.replica.client().info("replication").get("master_link_status") != "up":
            return False
        for sentinel in self.sentinels:
            try:
                state = sentinel.client().sentinel_master(MASTER_NAME)
            except redis.RedisError:
                return False
            if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica]

    def port_of(self, server: RedisServer) -> int:
        """The port the sentinels and lelect reach ``server`` at (its TLS port with TLS)."""
        return server.tls_port if self.tls else server.port  # type: ignore[return-value]

    def url(self, **options: str) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.tls:
            options = {"ssl_ca_certs": str(self.tls["ca"]),
                       "sentinel_password": self.sentinel_password, **options}
        query = "&".join(f"{k}={v}" for k, v in options.items())
        scheme, auth = "redis+sentinel", ""
        if self.tls:
            scheme, auth = "rediss+sentinel", f":{self.password}@"
        return f"{scheme}://{auth}{hosts}/{MASTER_NAME}/0" + (f"?{query}" if query else "")

    def named_master(self) -> int | None:
        """The master's port as the first sentinel that answers says."""
        for sentinel in self.sentinels:
            port = sentinel.master_port()
            if port is not None:
                return port
        return None

    def server_at(self, port: int) -> RedisServer:
        (server,) = [s for s in self.servers if self.port_of(s) == port]
        return server

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: the replica is promoted, the master demoted later."""
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)

    def kill_master(self) -> None:
        os.kill(self.master.pid, signal.SIGKILL)
        self.master.process.wait()

    def wait_for_new_master(self, timeout: float = 30) -> RedisServer:
        """Every sentinel names the replica, and the replica says it is a master."""
        def switched() -> bool:
            if any(s.master_port() != self.port_of(self.replica) for s in self.sentinels):
                return False
            return self.replica.client().info("replication").get("role") == "master"

        wait_until(switched, timeout=timeout, interval=0.05, what="the sentinels' failover")
        return self.replica

    def remove(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.remove()


@pytest.fixture
def redis_sentinels(tmp_path: Path):
    """A master, a replica and three sentinels (quorum 2) on loopback."""
    setup = SentinelSetup(tmp_path / "sentinel")
    yield setup
    setup.remove()


@pytest.fixture
def redis_tls_sentinels(tmp_path: Path, redis_test_certs):
    """The same over TLS only (``rediss+sentinel://``), with passwords on the servers
    and the sentinels."""
    setup = SentinelSetup(tmp_path / "sentinel", tls=redis_test_certs)
    yield setup
    setup.remove()


def lelect_clients(server: RedisServer) -> int:
    """lelect's connections to ``server`` (CLIENT LIST name=lelect)."""
    return sum(1 for c in server.client().client_list() if c.get("name") == "lelect")
