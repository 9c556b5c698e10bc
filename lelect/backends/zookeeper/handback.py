"""The keeper's hand-back of a ZooKeeper leadership, with the standard library only.

lelect died while its job ran, and the keeper has seen the job's whole process group
gone. Our contender node is ephemeral: it lives exactly as long as lelect's campaign
session. So the keeper reattaches to *that* session from a fresh connection (a
ZooKeeper client may resume a session by its id and password), writes in one multi that
the leadership was lost this way and that the member is gone, and ends the session
(closeSession), which removes our node at once: the next waiter's watch fires. If the
session expired already, the server refuses the reattach and nothing is touched: only
this session's own node could ever go, never another leader's.

A minimal ZooKeeper client: length-prefixed jute records over a TCP socket (the
request/reply headers, ConnectRequest/Response, auth, multi and closeSession), each read
and write bounded by the run's deadline.
"""

from __future__ import annotations

import socket
import struct
import time

from lelect.backends.records import HAND_BACK_REASON, LOST, HistoryEntry
from lelect.backends.zookeeper.layout import Check, Create, Delete, Op, SetData, hand_back_ops
from lelect.frozen import replace

# Op codes and special xids of the ZooKeeper protocol.
_CREATE, _DELETE, _SET_DATA, _CHECK, _MULTI, _CLOSE, _AUTH = 1, 2, 5, 13, 14, -11, 100
_WATCH_XID, _PING_XID, _AUTH_XID = -1, -2, -4
_MULTI_ERROR = -1
_NO_NODE = -101
#: world:anyone with every right (a URL without credentials).
_OPEN = [[31, "world", "anyone"]]


class HandBackFailed(ConnectionError):
    """No ZooKeeper host could be asked within the budget (the session then expires)."""


# -- jute: the records on the wire ----------------------------------------------------------


def _int(value: int) -> bytes:
    return struct.pack("!i", value)


def _long(value: int) -> bytes:
    return struct.pack("!q", value)


def _buffer(data: bytes | None) -> bytes:
    return _int(-1) if data is None else _int(len(data)) + data


def _string(text: str) -> bytes:
    return _buffer(text.encode("utf-8"))


def _acl(acl: list) -> bytes:
    """A vector<ACL>: (perms, scheme, id) each."""
    return _int(len(acl)) + b"".join(_int(int(perms)) + _string(scheme) + _string(ident)
                                     for perms, scheme, ident in acl)


def _op(op: Op, acl: list) -> tuple[int, bytes]:
    if isinstance(op, Create):
        return _CREATE, _string(op.path) + _buffer(op.data) + _acl(acl) + _int(0)  # persistent
    if isinstance(op, Check):
        return _CHECK, _string(op.path) + _int(op.version)
    if isinstance(op, Delete):
        return _DELETE, _string(op.path) + _int(op.version)
    if isinstance(op, SetData):
        return _SET_DATA, _string(op.path) + _buffer(op.data) + _int(op.version)
    raise TypeError(f"not a hand-back operation: {op!r}")


def _multi(ops: list[Op], acl: list) -> bytes:
    body = b""
    for op in ops:
        kind, record = _op(op, acl)
        body += _int(kind) + b"\x00" + _int(-1) + record  # MultiHeader(type, done, err)
    return body + _int(-1) + b"\x01" + _int(-1)


#: The hand-back's answers are a few dozen bytes; a server may announce any length.
_MAX_FRAME = 1 << 20


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> int:
        try:
            (value,) = struct.unpack_from(fmt, self.data, self.at)
        except struct.error:
            raise ConnectionError("not a ZooKeeper answer: a reply too short") from None
        self.at += struct.calcsize(fmt)
        return value

    def buffer(self) -> bytes | None:
        length = self.take("!i")
        if length < 0:
            return None
        value = self.data[self.at:self.at + length]
        self.at += length
        return value


def _multi_failure(reply: bytes) -> tuple[int, int] | None:
    """The index of the operation that failed and its error code (None: all went through)."""
    reader = _Reader(reply)
    index = 0
    while True:
        kind, done, _ = reader.take("!i"), reader.take("!B"), reader.take("!i")
        if done:
            return None
        if kind == _MULTI_ERROR:
            code = reader.take("!i")
            if code != 0:  # 0: rolled back because another one failed
                return index, code
        elif kind == _CREATE:
            reader.buffer()
        elif kind == _SET_DATA:
            reader.at += 68  # a Stat: 4 longs, 3 ints, 1 long, 2 ints, 1 long
        index += 1


# -- one connection ---------------------------------------------------------------------------


class _Connection:
    """A socket to one ZooKeeper server; every call ends by ``deadline`` (monotonic)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.xid = 0

    @classmethod
    def open(cls, host: str, port: int, deadline: float) -> _Connection:
        sock = socket.create_connection((host, port), timeout=_left(deadline))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, deadline)

    def close(self) -> None:
        self.sock.close()

    def _send(self, payload: bytes) -> None:
        self.sock.settimeout(_left(self.deadline))
        self.sock.sendall(_int(len(payload)) + payload)

    def _receive(self) -> bytes:
        (length,) = struct.unpack("!i", self._exactly(4))
        if not 16 <= length <= _MAX_FRAME:  # a reply header is 16 bytes
            raise ConnectionError(f"not a ZooKeeper answer: a frame of {length} bytes")
        return self._exactly(length)

    def _exactly(self, count: int) -> bytes:
        chunks = []
        missing = count
        while missing > 0:
            self.sock.settimeout(_left(self.deadline))
            chunk = self.sock.recv(min(missing, 65536))
            if not chunk:
                raise ConnectionError("ZooKeeper closed the connection")
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def reattach(self, session_id: int, password: bytes, timeout_ms: int, last_zxid: int) -> bool:
        """Resume the session; False if the server refuses it (expired, or not this
        password): then it is not ours to act in."""
        self._send(_int(0) + _long(last_zxid) + _int(timeout_ms) + _long(session_id)
                   + _buffer(password) + b"\x00")
        reply = _Reader(self._receive())
        reply.take("!i")  # protocol version
        granted = reply.take("!i")
        resumed = reply.take("!q")
        return granted > 0 and resumed == session_id

    def request(self, kind: int, body: bytes, xid: int | None = None) -> tuple[int, bytes]:
        """Send one request; (error code, reply body) of its answer."""
        if xid is None:
            self.xid += 1
            xid = self.xid
        self._send(_int(xid) + _int(kind) + body)
        while True:
            reply = self._receive()
            answered, _zxid, err = struct.unpack_from("!iqi", reply)
            if answered in (_WATCH_XID, _PING_XID):
                continue  # not ours to answer
            if answered != xid:
                raise ConnectionError(f"ZooKeeper answered request {answered}, not {xid}")
            return err, reply[16:]

    def authenticate(self, scheme: str, credential: str) -> None:
        err, _ = self.request(_AUTH, _int(0) + _string(scheme) + _buffer(credential.encode()),
                              xid=_AUTH_XID)
        if err:
            raise PermissionError(f"ZooKeeper refused the {scheme!r} credentials")

    def commit(self, ops: list[Op], acl: list) -> tuple[int, int] | None:
        """One multi (a Create with ``acl``); the index of the failed operation and its
        error code, or None if it went through."""
        err, reply = self.request(_MULTI, _multi(ops, acl))
        if err and not reply:
            raise ConnectionError(f"ZooKeeper refused the transaction (error {err})")
        return _multi_failure(reply)

    def close_session(self) -> None:
        """End the session: its ephemeral nodes (our contender) go now."""
        try:
            self.request(_CLOSE, b"")
        except ConnectionError:
            pass  # the server may close the socket as its answer


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the hand-back's budget ran out")
    return left


# -- the hand-back ------------------------------------------------------------------------


def hand_back(params: dict, budget: float, exit_status: int | None) -> str:
    """Release the leadership ``params`` describes (see ZooKeeperBackend.hand_back);
    "released", "not ours" (the session is gone: nothing touched), or raise."""
    deadline = time.monotonic() + budget
    closing = None
    if params.get("entry") is not None:  # None: the history could not be written
        closed = replace(HistoryEntry.decode(params["entry"]), ended=time.time(), outcome=LOST,
                         exit_status=exit_status, reason=HAND_BACK_REASON)
        closing = (params["entry_path"], closed)
    ops = hand_back_ops(params["node"], closing, params["member"])
    auth = params.get("auth")
    problems = []
    for host, port in params["hosts"]:
        try:
            connection = _Connection.open(host, int(port), deadline)
        except OSError as exc:  # refused: the next host at once; silent: it took its time
            problems.append(f"{host}:{port}: {exc}")
            continue
        try:
            if not connection.reattach(int(params["session_id"]), bytes.fromhex(params["password"]),
                                       int(params["timeout_ms"]), int(params.get("last_zxid", 0))):
                return "not ours"
            if auth is not None:
                connection.authenticate(auth[0], auth[1])
            _commit_best_effort(connection, ops, params.get("acl") or _OPEN)
            connection.close_session()
            return "released"
        except OSError as exc:
            problems.append(f"{host}:{port}: {exc}")
        finally:
            connection.close()
    raise HandBackFailed("; ".join(problems) or "no ZooKeeper host given")


def _commit_best_effort(connection: _Connection, ops: list[Op], acl: list) -> None:
    """The multi, leaving out whatever fails (a node already gone, an entry the next
    leader closed) until the rest goes through. An entry not written yet (lelect died as
    its job started, before the entry written beside it) is created, closed."""
    while ops:
        failed = connection.commit(ops, acl)
        if failed is None:
            return
        index, code = failed
        op = ops[index]
        if isinstance(op, SetData) and code == _NO_NODE:
            ops = [*ops[:index], Create(op.path, op.data), *ops[index + 1:]]
            continue
        ops = ops[:index] + ops[index + 1:]

