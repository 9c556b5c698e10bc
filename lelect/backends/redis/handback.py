"""The job's keeper hands a Redis leadership back after lelect died and the job's whole
process group is gone: one script over a minimal RESP client. The script is lelect's
own RELEASE (``scripts``), with the keys and arguments RedisBackend.hand_back
wrote into the recipe: it releases only if the leader key still holds our token,
closes our history entry as "lost" with the job's exit status, and forgets our member
record.

Standard library only, and as little of it as will do: the keeper runs ``python -S
-I`` and imports this module while the next leader waits, so it imports lelect's RESP
wire (``resp``: ``socket``, and ``ssl`` only for TLS: the URL's CA, client certificate
and key, the host name checked; with ``rediss+sentinel://`` for the sentinels too) and
nothing else of lelect. AUTH
and SELECT are pipelined with the script. Every socket wait gets what is left of one
deadline, so the whole hand-back ends within its budget; if Redis cannot be reached,
the lease simply runs out.
"""

import time

from lelect.backends.redis.resp import ReplyError, Wire


class _Wire(Wire):
    """lelect's RESP wire with the hand-back's caps: a release answers with a few small
    values; anything bigger is a broken server."""

    MAX_LINE = 64 * 1024
    MAX_BULK = 1 << 20
    MAX_ARRAY = 1024
    MAX_DEPTH = 8
    MAX_REPLY = 4 << 20


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
            end = time.monotonic() + share
            wire = _Wire.open({"host": host, "port": port}, tls, end, decode=False)
            try:
                wire.send(*commands, ("SENTINEL", "get-master-addr-by-name", sentinel["master"]),
                          deadline=end)
                for _ in commands:
                    wire.reply(end)
                named = wire.reply(end)
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
    wire = _Wire.open(params["address"], params.get("tls"), deadline, decode=False)
    try:
        wire.send(*commands, ("EVALSHA", params["sha"], *release), deadline=deadline)
        for _ in commands:
            wire.reply(deadline)
        try:
            released = wire.reply(deadline)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            wire.send(("EVAL", params["script"], *release), deadline=deadline)
            released = wire.reply(deadline)
    finally:
        wire.close()
    return "released" if released == 1 else "not ours"
