"""The ZooKeeper backend's connection layer: URL options, one kazoo client per session
with the session timeout the server *granted*, a connect that keeps its bound, and
ZooKeeper errors as lelect errors.

kazoo is imported by this package and :mod:`lelect.backends.zookeeper.backend` only.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    ConnectionClosedError,
    ConnectionDropped,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    OperationTimeoutError,
    RolledBackError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.protocol.states import KazooState, KeeperState
from kazoo.retry import KazooRetry
from kazoo.security import OPEN_ACL_UNSAFE, make_acl, make_digest_acl

from lelect.backends.base import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HISTORY,
    DEFAULT_TTL,
    Cancel,
    unreachable,
    wait_slice,
)
from lelect.backends.urls import BackendURL
from lelect.backends.zookeeper.layout import Check, Create, Delete, Op, SetData
from lelect.durations import RANGES, format_duration
from lelect.errors import BackendUnavailable, UsageError
from lelect.frozen import Record

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("lelect.zookeeper")
# kazoo logs every dropped connection at WARNING; keep it off a user's terminal unless
# the application configured logging (the records still propagate to its handlers).
kazoo_log = logging.getLogger("lelect.zookeeper.kazoo")
kazoo_log.addHandler(logging.NullHandler())

DEFAULT_PORT = 2181
DEFAULT_PATH = "/lelect"
DEFAULT_SESSION_TIMEOUT = DEFAULT_TTL  # the lease, as on every backend
OPTIONS = {"session_timeout", "connect_timeout", "auth", "history"}
#: The longest timeout lelect passes on: ZooKeeper carries the session timeout as a
#: signed 32-bit number of milliseconds (kazoo's connection thread dies on more).
MAX_TIMEOUT = (2**31 - 1) / 1000.0

#: The longest frame a server may send (ZooKeeper's own jute.maxbuffer is 1 MiB by
#: default); kazoo would allocate whatever length a server announces.
MAX_FRAME = 4 << 20

#: Errors that mean "no answer (yet)": the connection dropped or the call timed out.
TRANSIENT = (ConnectionLoss, OperationTimeoutError, KazooTimeoutError)
#: Everything a kazoo call can raise (its timeout is not a KazooException).
ZK_ERRORS = (KazooException, KazooTimeoutError)


class ZooKeeperConfig(Record):
    """What a ``zookeeper://`` URL says."""

    hosts: str  # kazoo's "h1:2181,h2:2181"
    host_ports: tuple[tuple[str, int], ...]
    path: str  # base path, not a chroot
    session_timeout: float
    connect_timeout: float
    history_limit: int = DEFAULT_HISTORY
    auth_scheme: str | None = None
    auth_credential: str | None = None

    _unshown = ("auth_credential",)

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
        host_ports = tuple((host, port or DEFAULT_PORT) for host, port in url.hosts)
        hosts = ",".join(
            (f"[{host}]" if ":" in host else host) + f":{port}" for host, port in host_ports
        )
        # The session timeout is the lease: it has the ttl's range (well inside the
        # 2^31 ms ZooKeeper can carry).
        session_timeout = url.duration("session_timeout", DEFAULT_SESSION_TIMEOUT,
                                       limits=RANGES["ttl"])
        check_session_timeout(session_timeout, "session_timeout")
        connect_timeout = url.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        check_session_timeout(connect_timeout, "connect_timeout")
        scheme = credential = None
        auth = url.option("auth")
        if auth is not None:
            scheme, sep, credential = auth.partition(":")
            if not scheme or not sep or (scheme == "digest" and ":" not in credential):
                raise UsageError("malformed auth option: use auth=digest:USER:PASSWORD")
        return cls(
            hosts=hosts,
            host_ports=host_ports,
            path=_base_path(url.path),
            session_timeout=session_timeout,
            connect_timeout=connect_timeout,
            history_limit=url.integer("history", DEFAULT_HISTORY),
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
    """Refuse a timeout kazoo cannot send: it goes out as whole milliseconds in a signed
    32-bit field (0 ms cannot connect; more kills kazoo's connection thread)."""
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


class _BoundedConnects(SequentialThreadingHandler):
    """kazoo's threading handler, which also keeps a session's first connect within its
    bound: while it runs, every attempt (TCP connect and the server's answer) ends by
    its share of the deadline, and each attempt's outcome is told to the session, so
    that "every host refused" fails at once. A session closed before it ever connected
    shuts its half-open socket, so kazoo's thread ends now, not a session timeout later.
    """

    def __init__(self, hosts: int, on_attempt: Callable[[], None]) -> None:
        super().__init__()
        self.hosts = max(hosts, 1)
        self.on_attempt = on_attempt
        self.deadline: float | None = None
        self.budget = 0.0
        self.refused: set[tuple[str, int]] = set()
        self.answered_tcp = False  # some host accepted a TCP connection
        self.other_failure = False  # some attempt failed otherwise than refused
        self.cut_on_stop = False
        self._attempt_until: float | None = None
        self._socket: socket.socket | None = None

    def bound(self, deadline: float, budget: float) -> None:
        self.deadline, self.budget = deadline, budget

    def unbound(self) -> None:
        """Connected: from now on kazoo's own timeouts apply (reconnects, auth)."""
        self.deadline = self._attempt_until = None

    def create_connection(self, address: Any, hostname: Any = None, timeout: Any = None,
                          **kwargs: Any) -> Any:
        if self.deadline is not None:
            now = time.monotonic()
            share = max(self.budget / self.hosts, 0.1)
            self._attempt_until = min(self.deadline, now + share)
            timeout = max(0.001, min(timeout or share, self._attempt_until - now))
        host = (str(hostname or address[0]), int(address[1]))
        try:
            sock = super().create_connection(address, hostname, timeout, **kwargs)
        except ConnectionRefusedError:
            self.refused.add(host)
            self.on_attempt()
            raise
        except OSError:
            self.other_failure = True
            self.on_attempt()
            raise
        self._socket = sock
        self.answered_tcp = True
        self.on_attempt()
        return sock

    def select(self, *args: Any, **kwargs: Any) -> Any:
        until = self._attempt_until
        if until is not None and len(args) >= 4 and args[3] is not None:
            # While connecting: the server's answer is due within the attempt's share.
            args = (*args[:3], max(0.0, min(args[3], until - time.monotonic())), *args[4:])
        return super().select(*args, **kwargs)

    def all_refused(self, host_ports: tuple[tuple[str, int], ...]) -> bool:
        return (not self.answered_tcp and not self.other_failure
                and all(host in self.refused for host in host_ports))

    def stop(self) -> None:
        # kazoo's stop() has set its stop flag by now; waking its thread is all it takes.
        sock = self._socket
        if self.cut_on_stop and sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().stop()


class Failed(Record):
    """Why a transaction failed: the index of the operation that failed and its error."""

    index: int
    op: Op
    error: KazooException


class CallCancelled(Exception):
    """A call's wait for its answer was ended by the campaign's cancel."""


class ZooKeeperSession:
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
        #: True once start() concluded that no server answered (not a refusal of ours).
        self.unreachable = False
        #: (server clock - monotonic clock, monotonic time taken) of the last touch of the
        #: clock node: what notes' ttls are judged by for a while.
        self.clock_sample: tuple[float, float] | None = None
        self._verdict: BackendUnavailable | None = None
        self._changed = threading.Condition()
        self._listeners: list[Callable[[str], None]] = []
        self.handler = _BoundedConnects(len(config.host_ports), self._poke)
        # Reconnect promptly: kazoo's default back-off grows to an hour between tries.
        retry = KazooRetry(
            max_tries=-1, delay=0.05, backoff=2, max_jitter=0.2, max_delay=min(1.0, session_timeout / 4)
        )
        self.client = KazooClient(
            hosts=config.hosts,
            timeout=session_timeout,
            handler=self.handler,
            connection_retry=retry,
            default_acl=config.acl(),
            auth_data=config.auth_data,
            logger=kazoo_log,
        )
        #: Why the server's last answer was refused (a broken or hostile server).
        self.malformed: str | None = None
        self._record_granted_timeout()
        self._cap_frames()
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

    def _cap_frames(self) -> None:
        # kazoo reads a frame's 4-byte length and then that many bytes, whatever the
        # length: a frame longer than MAX_FRAME (or negative) drops the connection.
        connection = self.client._connection
        read = connection._read

        def capped_read(length: int, timeout: Any) -> bytes:
            if not 0 <= length <= MAX_FRAME:
                self.malformed = f"a frame of {length} bytes, over the {MAX_FRAME >> 20} MiB limit"
                raise ConnectionDropped(f"refused {self.malformed}")
            return read(length, timeout)

        connection._read = capped_read

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
            self.handler.unbound()
            self.connected.set()
        else:
            self.connected.clear()
        self._poke()
        for listener in list(self._listeners):
            listener(str(state))

    def _poke(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- life -------------------------------------------------------------------

    def start(self, within: float) -> None:
        """Connect and prove it with one answered request, or raise BackendUnavailable,
        all within ``within`` seconds (teardown included): refused everywhere fails at
        once, a silent or foreign server at the bound."""
        started = time.monotonic()
        deadline = started + within
        self.handler.bound(deadline, within)
        self.client.start_async()
        with self._changed:
            self._changed.wait_for(
                lambda: self.connected.is_set() or self.closed or self._verdict is not None
                or self.handler.all_refused(self.config.host_ports)
                or time.monotonic() >= deadline,
                timeout=max(0.0, deadline - time.monotonic()),
            )
        if not self.connected.is_set():
            verdict = self._no_session(within)
            self.close(wait=0)
            raise verdict
        try:
            self.call("exists", self.config.path, timeout=max(0.0, deadline - time.monotonic()))
        except AuthFailedError:
            self.close(wait=0)
            raise BackendUnavailable(self._refused_credentials()) from None
        except (*TRANSIENT, SessionExpiredError):
            self.close(wait=0)
            if self.client.client_state == KeeperState.AUTH_FAILED:
                raise BackendUnavailable(self._refused_credentials()) from None
            self.unreachable = True
            raise unreachable("ZooKeeper", self.config.hosts, within,
                              "it took the connection but did not answer") from None
        except KazooException as exc:
            self.close(wait=0)
            raise BackendUnavailable(f"ZooKeeper failed while connecting: {type(exc).__name__}"
                                     ) from None
        if self.granted is None:  # pragma: no cover - a kazoo that changed its internals
            self.close(wait=0)
            raise BackendUnavailable(
                "cannot learn the session timeout ZooKeeper granted from this kazoo version"
            )

    def _no_session(self, within: float) -> BackendUnavailable:
        if self._verdict is not None:
            if getattr(self._verdict, "refused", False):
                # Another session was refused: say so with this session's own bound (a
                # campaign's -w 500ms, not the 5s of the session that tried first).
                return _refused(self.config.hosts, within)
            return self._verdict
        if self.client.client_state == KeeperState.AUTH_FAILED:
            return BackendUnavailable(self._refused_credentials())
        if self.closed and not self.unreachable:
            return BackendUnavailable("the ZooKeeper session was closed while connecting")
        self.unreachable = True
        if self.handler.all_refused(self.config.host_ports):
            return _refused(self.config.hosts, within)
        if self.malformed is not None:
            return unreachable("ZooKeeper", self.config.hosts, within,
                               f"not a ZooKeeper answer: {self.malformed}")
        if self.handler.answered_tcp:
            return unreachable("ZooKeeper", self.config.hosts, within,
                               "it took the connection but gave no ZooKeeper answer"
                               " (is that a ZooKeeper port?)")
        return unreachable("ZooKeeper", self.config.hosts, within)

    def fail(self, verdict: BackendUnavailable) -> None:
        """Another session of the same backend found no server: stop connecting with its
        verdict (one connect budget for all of a backend's sessions)."""
        if not self.connected.is_set():
            self._verdict = verdict
            self._poke()

    def close(self, wait: float = 1.0) -> None:
        """End the session (its ephemeral nodes go at once). Waits at most ``wait``
        seconds, and not at all for a session that is not connected: one that never was
        has nothing to close, and a lost one expires on its own."""
        if self.closed:
            return
        self.closed = True
        connected = self.connected.is_set()
        self.handler.cut_on_stop = not connected
        self._poke()
        stopping = threading.Thread(target=self._stop, name="zk-close", daemon=True)
        stopping.start()
        stopping.join(wait if connected else 0)

    def _stop(self) -> None:
        try:
            self.client.stop()
            self.client.close()
        except Exception:  # noqa: BLE001 - closing is best effort; the session expires anyway
            log.debug("closing the ZooKeeper session failed", exc_info=True)

    @property
    def client_id(self) -> tuple[int, bytes] | None:
        """(session id, password): what another connection needs to act in this session."""
        return self.client.client_id

    # -- calls ------------------------------------------------------------------

    def call(self, method: str, *args: Any, timeout: float,
             cancel: threading.Event | None = None, **kwargs: Any) -> Any:
        """``client.<method>(…)`` that gives up after ``timeout`` seconds (KazooTimeoutError):
        a call to a frozen or unreachable server must never block for ever. With a
        :class:`Cancel`, its setting ends the wait for the answer (CallCancelled)."""
        result = getattr(self.client, method + "_async")(*args, **kwargs)
        if isinstance(cancel, Cancel):
            # The answer wakes this thread from kazoo's connection thread itself (a
            # rawlink'd callback would go through its completion thread: one more hop);
            # a cancel ends the wait by failing the call.
            def interrupt() -> None:
                if not result.ready():
                    result.set_exception(CallCancelled(method))

            with cancel.waking(interrupt):
                result.wait(max(timeout, 0.0))
            return result.get(block=False)  # not yet answered: KazooTimeoutError
        return result.get(timeout=max(timeout, 0.0))

    def commit(self, ops: list[Op], timeout: float) -> Failed | None:
        """One multi: all of ``ops`` or none. None when it went through, else which
        operation failed and why."""
        return self.settle(self.commit_async(ops), ops, timeout)

    def commit_async(self, ops: list[Op]) -> Any:
        """The multi of ``ops``, sent without waiting (its answer: :meth:`settle`)."""
        transaction = self.client.transaction()
        for op in ops:
            if isinstance(op, Check):
                transaction.check(op.path, op.version)
            elif isinstance(op, Create):
                transaction.create(op.path, op.data)
            elif isinstance(op, SetData):
                transaction.set_data(op.path, op.data, op.version)
            elif isinstance(op, Delete):
                transaction.delete(op.path, op.version)
        return transaction.commit_async()

    @staticmethod
    def settle(sent: Any, ops: list[Op], timeout: float) -> Failed | None:
        """The answer to :meth:`commit_async`: None if it went through, else the failure."""
        results = sent.get(timeout=max(timeout, 0.0))
        for index, result in enumerate(results):
            # The server reports the operations before the failing one as rolled back.
            if isinstance(result, KazooException) and not isinstance(result, RolledBackError):
                return Failed(index, ops[index], result)
        return None

    def wait_connected(self, timeout: float | None, cancel: threading.Event | None = None) -> bool:
        """Wait for the connection (True), ``timeout``, the session's close or ``cancel``
        (False): a campaign told to stop while its server is gone stops at once."""

        def done() -> bool:
            return self.connected.is_set() or self.closed or (cancel is not None and cancel.is_set())

        end = None if timeout is None else time.monotonic() + timeout
        with cancel.waking(self._poke) if isinstance(cancel, Cancel) else nullcontext():
            with self._changed:
                while not done():
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._changed.wait(wait_slice(left, cancel))
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


def _refused(hosts: str, within: float) -> BackendUnavailable:
    verdict = unreachable("ZooKeeper", hosts, within, "connection refused")
    verdict.refused = True  # type: ignore[attr-defined] - read by sessions that adopt it
    return verdict
