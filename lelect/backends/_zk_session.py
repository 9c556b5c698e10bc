"""The ZooKeeper backend's connection layer: URL options, one kazoo client per session
with the session timeout the server *granted*, and ZooKeeper errors as lelect errors.

kazoo is imported here and in :mod:`lelect.backends.zookeeper` only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState, KeeperState
from kazoo.retry import KazooRetry
from kazoo.security import OPEN_ACL_UNSAFE, make_acl, make_digest_acl

from lelect.backends.urls import BackendURL
from lelect.durations import format_duration, parse_duration
from lelect.errors import BackendUnavailable, UsageError

log = logging.getLogger("lelect.zookeeper")
# kazoo logs every dropped connection at WARNING; keep it off a user's terminal unless
# the application configured logging (the records still propagate to its handlers).
kazoo_log = logging.getLogger("lelect.zookeeper.kazoo")
kazoo_log.addHandler(logging.NullHandler())

DEFAULT_PORT = 2181
DEFAULT_PATH = "/lelect"
DEFAULT_SESSION_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
OPTIONS = {"session_timeout", "connect_timeout", "auth"}
#: The longest timeout lelect passes on: ZooKeeper carries the session timeout as a
#: signed 32-bit number of milliseconds (kazoo's connection thread dies on more).
MAX_TIMEOUT = (2**31 - 1) / 1000.0

#: Errors that mean "no answer (yet)": the connection dropped or the call timed out.
TRANSIENT = (ConnectionLoss, OperationTimeoutError, KazooTimeoutError)
#: Everything a kazoo call can raise (its timeout is not a KazooException).
ZK_ERRORS = (KazooException, KazooTimeoutError)


@dataclass(frozen=True)
class ZooKeeperConfig:
    """What a ``zookeeper://`` URL says."""

    hosts: str  # kazoo's "h1:2181,h2:2181"
    path: str  # base path, not a chroot
    session_timeout: float
    connect_timeout: float
    auth_scheme: str | None = None
    auth_credential: str | None = None

    @classmethod
    def from_url(cls, url: BackendURL) -> ZooKeeperConfig:
        url.check_options(OPTIONS)
        if url.username or url.password is not None:
            raise UsageError(
                "zookeeper:// URLs take credentials as ?auth=digest:USER:PASSWORD, not USER@HOST"
            )
        if not url.hosts:
            raise UsageError(
                f"no host in {url.masked!r}: use zookeeper://HOST:2181[,HOST:2181…][/PATH]"
            )
        hosts = ",".join(
            (f"[{host}]" if ":" in host else host) + f":{port or DEFAULT_PORT}"
            for host, port in url.hosts
        )
        session_timeout = parse_duration(
            url.option("session_timeout", str(DEFAULT_SESSION_TIMEOUT)), what="session_timeout"
        )
        connect_timeout = parse_duration(
            url.option("connect_timeout", str(DEFAULT_CONNECT_TIMEOUT)), what="connect_timeout"
        )
        if session_timeout <= 0 or connect_timeout <= 0:
            raise UsageError("session_timeout and connect_timeout must be longer than 0")
        check_session_timeout(session_timeout, "session_timeout")
        if connect_timeout > MAX_TIMEOUT:
            raise UsageError(f"connect_timeout must be at most {format_duration(MAX_TIMEOUT)}")
        scheme = credential = None
        auth = url.option("auth")
        if auth is not None:
            scheme, sep, credential = auth.partition(":")
            if not scheme or not sep or (scheme == "digest" and ":" not in credential):
                raise UsageError("malformed auth option: use auth=digest:USER:PASSWORD")
        return cls(
            hosts=hosts,
            path=_base_path(url.path),
            session_timeout=session_timeout,
            connect_timeout=connect_timeout,
            auth_scheme=scheme,
            auth_credential=credential,
        )

    @property
    def auth_data(self) -> list[tuple[str, str]] | None:
        if self.auth_scheme is None:
            return None
        return [(self.auth_scheme, self.auth_credential or "")]

    def acl(self) -> list[Any]:
        """lelect's znodes: all rights for our identity, read-only for everyone else."""
        if self.auth_scheme is None:
            return list(OPEN_ACL_UNSAFE)
        return [self._owner(), make_acl("world", "anyone", read=True)]

    def clock_acl(self) -> list[Any]:
        """The scratch node whose mtime is the server's clock: anybody may touch it, so a
        reader without credentials still judges heartbeats by the server's time."""
        if self.auth_scheme is None:
            return list(OPEN_ACL_UNSAFE)
        return [self._owner(), make_acl("world", "anyone", read=True, write=True)]

    def _owner(self) -> Any:
        if self.auth_scheme == "digest":
            user, _, password = (self.auth_credential or "").partition(":")
            return make_digest_acl(user, password, all=True)
        # Any other scheme: the "auth" ACL names whatever identity this session proved.
        return make_acl("auth", "", all=True)


def check_session_timeout(seconds: float, what: str) -> None:
    """Refuse a session timeout kazoo cannot send: it goes out as whole milliseconds in
    a signed 32-bit field (0 ms cannot connect; more kills kazoo's connection thread)."""
    if int(seconds * 1000) < 1:
        raise UsageError(f"{what} must be at least 1ms")
    if seconds > MAX_TIMEOUT:
        raise UsageError(f"{what} must be at most {format_duration(MAX_TIMEOUT)}")


def _base_path(path: str) -> str:
    path = path.rstrip("/")
    if not path:
        return DEFAULT_PATH
    parts = path.split("/")[1:]
    if any(part in ("", ".", "..") for part in parts) or "\0" in path:
        raise UsageError(f"invalid ZooKeeper path {path!r}: use /NAME[/NAME…]")
    return path


class Session:
    """One kazoo client and the session it holds.

    ``granted`` is the session timeout the server granted (seconds): the server expires
    the session that long after it last heard from us, whatever we asked for.
    """

    def __init__(self, config: ZooKeeperConfig, session_timeout: float) -> None:
        self.config = config
        self.requested = session_timeout
        self.granted: float | None = None
        self.connected = threading.Event()
        self.closed = False
        self._changed = threading.Condition()
        self._listeners: list[Callable[[str], None]] = []
        # Reconnect promptly: kazoo's default back-off grows to an hour between tries.
        retry = KazooRetry(
            max_tries=-1, delay=0.05, backoff=2, max_jitter=0.2, max_delay=min(1.0, session_timeout / 4)
        )
        self.client = KazooClient(
            hosts=config.hosts,
            timeout=session_timeout,
            connection_retry=retry,
            default_acl=config.acl(),
            auth_data=config.auth_data,
            logger=kazoo_log,
        )
        self._record_granted_timeout()
        self.client.add_listener(self._on_state)

    def _record_granted_timeout(self) -> None:
        # kazoo keeps the negotiated timeout to itself; its connection handler returns
        # (2/3 of it, it / number of hosts) from _connect, once per (re)connection.
        connection = self.client._connection
        connect = connection._connect
        hosts = len(self.client.hosts)

        def recording_connect(*args: Any, **kwargs: Any) -> Any:
            read_timeout, connect_timeout = connect(*args, **kwargs)
            self.granted = connect_timeout * hosts / 1000.0
            return read_timeout, connect_timeout

        connection._connect = recording_connect

    # -- state ------------------------------------------------------------------

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """``listener(state)`` with state "CONNECTED", "SUSPENDED" or "LOST"; it runs on
        kazoo's connection thread, so it must only set flags."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[str], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self.connected.set()
        else:
            self.connected.clear()
        with self._changed:
            self._changed.notify_all()
        for listener in list(self._listeners):
            listener(str(state))

    # -- life -------------------------------------------------------------------

    def start(self, within: float) -> None:
        """Connect and prove it with one answered request, or raise BackendUnavailable."""
        # kazoo's start() reports refused credentials as a time-out after the whole wait,
        # or not, depending on which answer comes first. Refusal during the first connect
        # reaches no state listener (the state stays LOST), so while connecting, and only
        # then, look at the client's state every 50 ms.
        live = self.client.start_async()
        deadline = time.monotonic() + max(within, 0.001)
        while not live.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            refused = self.client.client_state == KeeperState.AUTH_FAILED
            if refused or time.monotonic() >= deadline:
                self.closed = True
                self._stop()
                if refused:
                    raise BackendUnavailable(self._refused_credentials())
                raise BackendUnavailable(
                    f"cannot reach ZooKeeper at {self.config.hosts} within"
                    f" {format_duration(within)}: is it running, and is the URL right?"
                )
        with self.errors("checking the connection", self.config.path):
            self.call("exists", self.config.path, timeout=within)
        if self.granted is None:  # pragma: no cover - a kazoo that changed its internals
            self.close()
            raise BackendUnavailable(
                "cannot learn the session timeout ZooKeeper granted from this kazoo version"
            )

    def close(self, wait: float = 1.0) -> None:
        """End the session (its ephemeral nodes go at once). Waits at most ``wait``
        seconds, and not at all for a server that does not answer: the session then
        expires on its own."""
        if self.closed:
            return
        self.closed = True
        with self._changed:
            self._changed.notify_all()
        stopping = threading.Thread(target=self._stop, name="zk-close", daemon=True)
        stopping.start()
        stopping.join(wait if self.connected.is_set() else 0)

    def _stop(self) -> None:
        try:
            self.client.stop()
            self.client.close()
        except Exception:  # noqa: BLE001 - closing is best effort; the session expires anyway
            log.debug("closing the ZooKeeper session failed", exc_info=True)

    # -- calls ------------------------------------------------------------------

    def call(self, method: str, *args: Any, timeout: float, **kwargs: Any) -> Any:
        """``client.<method>(…)`` that gives up after ``timeout`` seconds (KazooTimeoutError):
        a call to a frozen or unreachable server must never block for ever."""
        result = getattr(self.client, method + "_async")(*args, **kwargs)
        return result.get(timeout=max(timeout, 0.0))

    def wait_connected(self, timeout: float | None) -> bool:
        """Wait for the connection (True), ``timeout`` or the session's close (False)."""
        with self._changed:
            self._changed.wait_for(lambda: self.connected.is_set() or self.closed, timeout)
        return self.connected.is_set() and not self.closed

    def _refused_credentials(self) -> str:
        return (
            f"ZooKeeper at {self.config.hosts} refused the credentials given in ?auth="
            f" (scheme {self.config.auth_scheme!r})"
        )

    @contextmanager
    def errors(self, doing: str, path: str | None = None) -> Iterator[None]:
        """ZooKeeper errors as one line a user can act on (BackendUnavailable, status 69)."""
        try:
            yield
        except NoAuthError:
            raise BackendUnavailable(
                f"ZooKeeper refused {doing}: the ACL of {path or self.config.path} does not allow"
                " this client; give its owner's credentials with ?auth=digest:USER:PASSWORD"
            ) from None
        except AuthFailedError:
            raise BackendUnavailable(self._refused_credentials()) from None
        except (*TRANSIENT, SessionExpiredError, ConnectionClosedError):
            raise BackendUnavailable(
                f"no answer from ZooKeeper at {self.config.hosts} while {doing}"
            ) from None
        except KazooException as exc:
            raise BackendUnavailable(
                f"ZooKeeper failed while {doing}: {type(exc).__name__}"
            ) from None
