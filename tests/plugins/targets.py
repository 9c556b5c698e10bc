"""What the backend contract suite runs against: one :class:`Target` per backend id.

Each server plugin defines a fixture ``target_<id>`` returning a Target on a real
server (a fresh namespace per test: a directory, a key prefix, a base path, a schema).
``tests/test_contract.py`` takes the ``target`` fixture, parametrized over
:data:`BACKEND_IDS`; a new backend adds its id here and its fixture in its plugin.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

#: Every backend the contract suite runs against.
BACKEND_IDS = ["file", "redis", "zookeeper", "postgres", "etcd", "mysql"]
#: The backends that talk to a server over the network.
NETWORK_IDS = [b for b in BACKEND_IDS if b != "file"]


@dataclass
class Target:
    id: str
    #: A URL of a fresh namespace on a running server; leases (if any) are short (ttl).
    url: str
    #: Lease length the URL asks for (None: no lease, the embedded backend).
    ttl: float | None
    #: A secret inside ``url`` that must never be shown (None: the URL has none).
    secret: str | None = None
    #: ``url_for(connect_timeout, host, port)``: the same backend's URL aimed at another
    #: server address (a silent listener, a refused port), with that connect_timeout.
    url_for: Callable[[float, str, int], str] | None = None
    #: Malformed URLs and options of this backend (each must be status 2, one line).
    bad_urls: list[str] = field(default_factory=list)
    #: Another fresh namespace on the same server (for tests needing two).
    fresh: Callable[[], str] | None = None
    #: The server, for fault tests: ``freeze()``, ``thaw()``, ``restart()`` (None: file).
    server: Any = None
    #: Wake-ups a candidate waiting 5 s (12 s lease, heartbeats off) may make: its lease
    #: keep-alive and its client's pings, a few each.
    idle_wakeups: int = 8

    @property
    def lease(self) -> bool:
        return self.ttl is not None


@pytest.fixture(params=BACKEND_IDS)
def target(request) -> Target:
    return request.getfixturevalue(f"target_{request.param}")


@pytest.fixture(params=NETWORK_IDS)
def network_target(request) -> Target:
    return request.getfixturevalue(f"target_{request.param}")


@pytest.fixture
def target_file(tmp_path) -> Target:
    counter = iter(range(1_000_000))
    return Target(
        id="file",
        url=f"file://{tmp_path / 'state'}",
        ttl=None,
        bad_urls=["file://", "file://somehost/x", f"file://{tmp_path}/x?ttl=1s"],
        fresh=lambda: f"file://{tmp_path / f'state-{next(counter)}'}",
    )


@pytest.fixture
def silent_listener():
    """A TCP port on 127.0.0.1 that accepts connections (the kernel's backlog) and never
    answers a byte: a server that is up but hung."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def refused_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
