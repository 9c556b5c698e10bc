"""The job's keeper hands a Redis leadership back after lelect died and the job's whole
process group is gone: one RELEASE script (the very one lelect's own release runs) over
a minimal RESP client. It releases only if the leader key still holds our token, closes
our history entry as "lost" with the job's exit status, and forgets our member record.

Standard library only (the keeper runs ``python -S -I``): plain TCP, a unix socket or
TLS (the URL's CA, client certificate and key; the host name is checked), AUTH and
SELECT. Every socket wait gets what is left of one deadline, so the whole hand-back
ends within its budget; if Redis cannot be reached, the lease simply runs out.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

from lelect.backends._redis_scripts import RELEASE, ElectionKeys, release_args
from lelect.backends.records import HAND_BACK_REASON, LOST


class ReplyError(Exception):
    """Redis answered with an error."""


class _Wire:
    """One connection speaking RESP2, every read and write bounded by ``deadline``."""

    def __init__(self, params: dict[str, Any], deadline: float) -> None:
        self._deadline = deadline
        self._buffer = b""
        address = params["address"]
        if "path" in address:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._left())
            try:
                sock.connect(address["path"])
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((address["host"], address["port"]),
                                            timeout=self._left())
        tls = params.get("tls")
        if tls is not None:
            try:
                context = ssl.create_default_context(cafile=tls.get("ca_certs"))
                if tls.get("certfile"):
                    context.load_cert_chain(tls["certfile"], tls.get("keyfile"))
                sock.settimeout(self._left())
                sock = context.wrap_socket(sock, server_hostname=address["host"])
            except BaseException:
                sock.close()
                raise
        self._sock = sock

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the hand-back ran out of time")
        return left

    def send(self, *commands: tuple[Any, ...]) -> None:
        """Send ``commands`` at once (a pipeline)."""
        packed = b"".join(_pack(command) for command in commands)
        self._sock.settimeout(self._left())
        self._sock.sendall(packed)

    def reply(self) -> Any:
        """The next reply; an error reply is raised as ReplyError."""
        answer = self._read()
        if isinstance(answer, ReplyError):
            raise answer
        return answer

    def _read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "surrogateescape")
        if kind == b"-":
            return ReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exactly(size + 2)[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise ConnectionError(f"not a Redis reply: {line[:40]!r}")

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _fill(self) -> None:
        self._sock.settimeout(self._left())
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        self._sock.close()


def _pack(command: tuple[Any, ...]) -> bytes:
    parts = [f"*{len(command)}\r\n".encode()]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8", "surrogateescape")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def hand_back(params: dict[str, Any], budget: float, exit_status: int | None) -> str:
    """Release the leadership in ``params`` (what RedisBackend.hand_back made) within
    ``budget`` seconds: "released", or "not ours" when the lease had already gone
    (another leader's key and history entry are left alone). Raises on failure."""
    deadline = time.monotonic() + budget
    keys = ElectionKeys(params["prefix"], params["election"])
    argv = release_args(keys, params["token"], params["term"], LOST, exit_status,
                        HAND_BACK_REASON, None, forget_member=params["node_id"])
    commands: list[tuple[Any, ...]] = []
    if params.get("password") is not None:
        user = (params["username"],) if params.get("username") else ()
        commands.append(("AUTH", *user, params["password"]))
    if params.get("db"):
        commands.append(("SELECT", params["db"]))
    release = (len(keys.release_keys), *keys.release_keys, *argv)
    wire = _Wire(params, deadline)
    try:
        wire.send(*commands, ("EVALSHA", RELEASE.sha, *release))
        for _ in commands:
            wire.reply()
        try:
            released = wire.reply()
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            wire.send(("EVAL", RELEASE.text, *release))
            released = wire.reply()
    finally:
        wire.close()
    return "released" if released == 1 else "not ours"
