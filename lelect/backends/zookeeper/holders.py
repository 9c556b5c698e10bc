"""The agreement on ``--holders`` (:mod:`lelect.seats`), kept by ZooKeeper sessions.

A session already lives exactly as long as its candidate, so a candidate's word on N is
an ephemeral sequential node ``<path>/_holders/NAME/n<N>-<seq>`` (:mod:`.layout`): made
once, checked against the nodes already there (the oldest place wins: a candidate that
finds an older claim of another N withdraws its own and is refused), and never refreshed:
the session's own pings keep it, and it goes with the session (at once on a clean exit,
after the session timeout on a kill -9).

A candidate has one session at a time, but not always the same one: a candidate with
seats waits in the line on one session and takes its seat on another, and a session
ends with each leadership. So before a session that carries the claim ends while the
candidate still has another one, the claim is carried there first
(``n<N>-r<place>-<seq>``: the same place, so no claim made meanwhile can get ahead of
it); a campaign that opens a session while the claim lives on another one carries it
too. Between two campaigns (no session) nothing runs, and the next campaign claims
afresh.
"""

from __future__ import annotations

import threading

from kazoo.exceptions import NoNodeError

from lelect.backends.zookeeper.layout import holders_claim_prefix, holders_claims
from lelect.backends.zookeeper.session import ZK_ERRORS, ZooKeeperSession, log
from lelect.names import split_part

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only

if TYPE_CHECKING:
    from lelect.backends.zookeeper.backend import ZooKeeperBackend


class Claim:
    """This process's claim on one election: its place, and its node in each session
    that carries it (path, the session id it was made in)."""

    __slots__ = ("holders", "place", "nodes")

    def __init__(self, holders: int, place: int,
                 nodes: dict[ZooKeeperSession, tuple[str, int]]) -> None:
        self.holders, self.place, self.nodes = holders, place, nodes

    def live(self, besides: ZooKeeperSession | None = None) -> bool:
        """A node of the claim is in a live session (other than ``besides``)."""
        return any(_alive(session, sid) for session, (_, sid) in self.nodes.items()
                   if session is not besides)


def _alive(session: ZooKeeperSession, session_id: int) -> bool:
    """Still the session the node was made in (not closed, not expired and re-made); a
    session cut off from the server keeps its nodes until it expires."""
    return not session.closed and _session_id(session) == session_id


class HoldersClaims:
    """Every claim on --holders a ZooKeeper backend holds."""

    def __init__(self, backend: ZooKeeperBackend) -> None:
        self.backend = backend
        self._claims: dict[str, Claim] = {}
        self._lock = threading.RLock()

    def claim(self, election: str, holders: int) -> int | None:
        """:meth:`Backend.claim_holders`: no request while this process's claim lives."""
        with self._lock:
            held = self._claims.get(election)
            if held is not None and held.holders == holders and held.live():
                return None
        # (no lock held while the server is asked: a session's end carries the claims)
        backend = self.backend
        paths = backend.paths(election)
        session = backend._session()
        with session.errors(f"claiming --holders {holders} for {election!r}", paths.holders):
            path = backend._ask(session, "create", f"{paths.holders}/{holders_claim_prefix(holders)}",
                                ephemeral=True, sequence=True, makepath=True)
            mine = path.rsplit("/", 1)[1]
            session_id = _session_id(session)
            place = holders_claims([mine])[0].place
            claims = holders_claims(backend._ask(session, "get_children", paths.holders))
            earlier = [c for c in claims if c.holders != holders and c.place < place]
            if earlier:
                try:
                    backend._ask(session, "delete", path)
                except NoNodeError:
                    pass
                return earlier[0].holders
        with self._lock:
            self._claims[election] = Claim(holders, place, {session: (path, session_id)})
        return None

    def agreed(self, election: str) -> int | None:
        """:meth:`Backend.holders_agreed`: the oldest live claim's number."""
        backend = self.backend
        paths = backend.paths(election)
        session = backend._session()
        with session.errors(f"reading the --holders of {election!r}", paths.holders):
            try:
                claims = holders_claims(backend._ask(session, "get_children", paths.holders))
            except NoNodeError:
                return None
        return claims[0].holders if claims else None

    def carry_to(self, session: ZooKeeperSession, election: str) -> None:
        """A campaign opened ``session`` for ``election`` (or its line or a seat): carry
        the claim on it while the claim lives on another session."""
        with self._lock:
            held = self._claims.get(split_part(election)[0])
            if held is None or session in held.nodes or not held.live(besides=session):
                return
            self._carry(split_part(election)[0], held, session, self.backend.connect_timeout)

    def leaving(self, session: ZooKeeperSession, patience: float) -> None:
        """``session`` is about to end: a claim that lives only there is carried to
        another live session of this process first, if it has one (waiting at most
        ``patience`` for the server: this is on a release's way)."""
        with self._lock:
            for election, held in self._claims.items():
                if session not in held.nodes or held.live(besides=session):
                    held.nodes.pop(session, None)
                    continue
                for other in self.backend._live_sessions():
                    if other is not session:
                        self._carry(election, held, other, patience)
                        break
                held.nodes.pop(session, None)

    def _carry(self, election: str, held: Claim, session: ZooKeeperSession, patience: float
               ) -> None:
        paths = self.backend.paths(election)
        try:
            path = session.call(
                "create", f"{paths.holders}/{holders_claim_prefix(held.holders, held.place)}",
                ephemeral=True, sequence=True, makepath=True, timeout=patience)
        except ZK_ERRORS as exc:
            log.debug("carrying the --holders claim of %r failed (%s)", election,
                      type(exc).__name__)
            return
        held.nodes[session] = (path, _session_id(session))


def _session_id(session: ZooKeeperSession) -> int:
    """The id of the session's client, also while it is disconnected (kazoo's
    ``client_id`` is None then); another id once it expired and a new one began."""
    return getattr(session.client, "_session_id", None) or -1
