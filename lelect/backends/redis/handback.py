"""The job's keeper hands a Redis leadership back after lelect died and the job's whole
process group is gone: one script over a minimal RESP client. The script is lelect's
own RELEASE (``scripts``), with the keys and arguments RedisBackend.hand_back
wrote into the recipe: it releases only if the leader key still holds our token,
closes our history entry as "lost" with the job's exit status, and forgets our member
record.

Standard library only, and as little of it as will do: the keeper runs ``python -S
-I`` and imports this module while the next leader waits, so it imports ``socket``
(and ``ssl`` only for TLS: the URL's CA, client certificate and key, the host name
checked; with ``rediss+sentinel://`` for the sentinels too), nothing of lelect. AUTH
and SELECT are pipelined with the script. Every socket wait gets what is left of one
deadline, so the whole hand-back ends within its budget; if Redis cannot be reached,
the lease simply runs out.
"""

import socket
import time

# A release answers with a few small values; anything bigger is a broken server.
_MAX_LINE = 64 * 1024
_MAX_BULK = 1 << 20
_MAX_ARRAY = 1024
_MAX_DEPTH = 8


class ReplyError(Exception):
    """Redis answered with an error."""


class _Wire:
    """One connection speaking RESP2, every read and write bounded by ``deadline``."""

    def __init__(self, params, deadline):
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
                import ssl

                context = ssl.create_default_context(cafile=tls.get("ca_certs"))
                if tls.get("certfile"):
                    context.load_cert_chain(tls["certfile"], tls.get("keyfile"))
                sock.settimeout(self._left())
                sock = context.wrap_socket(sock, server_hostname=address["host"])
            except BaseException:
                sock.close()
                raise
        self._sock = sock

    def _left(self):
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the hand-back ran out of time")
        return left

    def send(self, *commands):
        """Send ``commands`` at once (a pipeline)."""
        packed = b"".join(_pack(command) for command in commands)
        self._sock.settimeout(self._left())
        self._sock.sendall(packed)

    def reply(self):
        """The next reply; an error reply is raised as ReplyError."""
        answer = self._read()
        if isinstance(answer, ReplyError):
            raise answer
        return answer

    def _read(self, depth=0):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "surrogateescape")
        if kind == b"-":
            return ReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return _number(line, rest, 1 << 63)
        if kind == b"$":
            size = _number(line, rest, _MAX_BULK)
            return None if size < 0 else self._exactly(size + 2)[:-2]
        if kind == b"*" and depth < _MAX_DEPTH:
            size = _number(line, rest, _MAX_ARRAY)
            return None if size < 0 else [self._read(depth + 1) for _ in range(size)]
        raise ConnectionError(f"not a Redis reply: {line[:40]!r}")

    def _line(self):
        while b"\r\n" not in self._buffer:
            if len(self._buffer) > _MAX_LINE:
                raise ConnectionError("not a Redis reply: a line without end")
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _exactly(self, size):
        while len(self._buffer) < size:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _fill(self):
        self._sock.settimeout(self._left())
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self._buffer += chunk

    def close(self):
        self._sock.close()


def _number(line, text, limit):
    """The integer of a reply line, within +-``limit``: else not a Redis reply."""
    digits = text[1:] if text[:1] == b"-" else text
    if not (digits.isdigit() and len(digits) <= 19 and abs(int(text)) <= limit):
        raise ConnectionError(f"not a Redis reply: {line[:40]!r}")
    return int(text)


def _pack(command):
    parts = [f"*{len(command)}\r\n".encode()]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8", "surrogateescape")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _master_of(sentinel, tls, deadline):
    """The master's address as the first sentinel that knows it says (each sentinel
    gets its share of what is left of the budget; reached by TLS if ``tls``, with the
    master's TLS options, as lelect reached it)."""
    sentinels = sentinel["sentinels"]
    problems = []
    for index, (host, port) in enumerate(sentinels):
        share = (deadline - time.monotonic()) / (len(sentinels) - index)
        if share <= 0:
            break
        commands = []
        if sentinel.get("password") is not None:
            user = (sentinel["username"],) if sentinel.get("username") else ()
            commands.append(("AUTH", *user, sentinel["password"]))
        try:
            wire = _Wire({"address": {"host": host, "port": port}, "tls": tls},
                         time.monotonic() + share)
            try:
                wire.send(*commands, ("SENTINEL", "get-master-addr-by-name", sentinel["master"]))
                for _ in commands:
                    wire.reply()
                named = wire.reply()
            finally:
                wire.close()
        except (OSError, ReplyError) as exc:
            problems.append(f"sentinel {host}:{port}: {exc}")
            continue
        if (isinstance(named, list) and len(named) == 2 and isinstance(named[0], bytes)
                and isinstance(named[1], bytes) and named[1].isdigit()
                and 0 < int(named[1]) < 65536):
            return {"host": named[0].decode("ascii", "replace"), "port": int(named[1])}
        problems.append(f"sentinel {host}:{port} named no master {sentinel['master']!r}")
    raise ConnectionError("no sentinel named the master: " + ("; ".join(problems)
                                                             or "out of time"))


def hand_back(params, budget, exit_status):
    """Release the leadership in ``params`` (RedisBackend.hand_back's recipe) within
    ``budget`` seconds: "released", or "not ours" when the lease had already gone
    (another leader's key and history entry are left alone). Raises on failure."""
    deadline = time.monotonic() + budget
    status = "" if exit_status is None else str(int(exit_status))
    argv = [status if arg is None else arg for arg in params["argv"]]  # None: the status
    commands = []
    if params.get("password") is not None:
        user = (params["username"],) if params.get("username") else ()
        commands.append(("AUTH", *user, params["password"]))
    if params.get("db"):
        commands.append(("SELECT", params["db"]))
    release = (len(params["keys"]), *params["keys"], *argv)
    if params.get("sentinel"):
        params = dict(params, address=_master_of(params["sentinel"], params.get("tls"),
                                                 deadline))
    wire = _Wire(params, deadline)
    try:
        wire.send(*commands, ("EVALSHA", params["sha"], *release))
        for _ in commands:
            wire.reply()
        try:
            released = wire.reply()
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            wire.send(("EVAL", params["script"], *release))
            released = wire.reply()
    finally:
        wire.close()
    return "released" if released == 1 else "not ours"
