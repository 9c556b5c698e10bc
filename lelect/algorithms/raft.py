"""Raft leader election (Ongaro & Ousterhout; Ongaro's thesis ch. 3, 9.6) as a pure state machine.

Election only: terms, RequestVote, and AppendEntries as heartbeats without log
entries, so every log is empty and the vote's "log at least as up to date"
check always passes. The structure follows etcd-io/raft:

- a follower (or candidate) that hears no leader for a randomized election
  timeout, ``[election_timeout, 2 * election_timeout)`` ticks, campaigns;
- **PreVote** (thesis 9.6): it first asks whether it *could* win at
  ``term + 1`` without changing any term; only with a majority of pre-votes
  does it become a candidate. A node cut off from the majority therefore never
  raises its term, and cannot unseat the leader when it comes back;
- **CheckQuorum** and the leader lease (thesis 6.2, 9.6): a leader that has not
  heard from a majority (itself included) within the last ``election_timeout``
  ticks steps down, and a node that heard from its leader within the last
  ``election_timeout`` ticks ignores (pre-)vote requests for a higher term.

``term`` and ``voted_for`` are the stable state: :meth:`RaftNode.restart` keeps
them, as Raft requires of disk. Election safety (at most one leader per term)
comes from every node casting at most one vote per term; liveness needs a
majority of nodes alive and connected.

Messages per election without contention: ``n-1`` PreVotes and answers,
``n-1`` RequestVotes and answers, then ``n-1`` AppendEntries (and answers)
per heartbeat interval.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from lelect.algorithms import (
    BecameLeader,
    ElectionStarted,
    LeaderChanged,
    Message,
    NodeId,
    Outbox,
    Output,
    SteppedDown,
)

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "PreVote",
    "PreVoteResponse",
    "RaftConfig",
    "RaftMessage",
    "RaftNode",
    "RaftState",
    "RequestVote",
    "RequestVoteResponse",
]


class RaftState(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True)
class RaftConfig:
    """Timeouts in ticks (etcd's defaults are 10 and 1 with 100 ms ticks)."""

    election_timeout: int = 15
    heartbeat_interval: int = 5
    pre_vote: bool = True
    check_quorum: bool = True


@dataclass(frozen=True)
class RaftMessage(Message):
    term: int


@dataclass(frozen=True)
class PreVote(RaftMessage):
    """Asks whether the receiver would vote for the sender at ``term`` (the sender's term + 1).

    Neither side changes its term for it.
    """


@dataclass(frozen=True)
class PreVoteResponse(RaftMessage):
    """Granted: ``term`` echoes the request's; refused: the responder's current term."""

    granted: bool


@dataclass(frozen=True)
class RequestVote(RaftMessage):
    pass


@dataclass(frozen=True)
class RequestVoteResponse(RaftMessage):
    granted: bool


@dataclass(frozen=True)
class AppendEntries(RaftMessage):
    """The leader's heartbeat (election only: it carries no entries)."""


@dataclass(frozen=True)
class AppendEntriesResponse(RaftMessage):
    pass


class RaftNode:
    def __init__(
        self,
        node_id: NodeId,
        members: Sequence[NodeId],
        rng: random.Random,
        config: RaftConfig | None = None,
    ) -> None:
        if node_id not in members:
            raise ValueError(f"node {node_id} is not among the members {list(members)}")
        self._config = config or RaftConfig()
        if not 1 <= self._config.heartbeat_interval < self._config.election_timeout:
            raise ValueError("need 1 <= heartbeat_interval < election_timeout (in ticks)")
        self._id = node_id
        self._peers = tuple(member for member in members if member != node_id)
        self._quorum = len(members) // 2 + 1
        self._rng = rng
        self._out = Outbox()
        # Stable state: would live on disk, so restart() keeps it.
        self._term = 0
        self._voted_for: NodeId | None = None
        self._reset_volatile()

    def _reset_volatile(self) -> None:
        self._state = RaftState.FOLLOWER
        self._leader: NodeId | None = None
        self._election_elapsed = 0  # ticks since we heard from a leader (or campaigned)
        self._randomized_timeout = self._random_election_timeout()
        self._heartbeat_elapsed = 0
        self._votes: dict[NodeId, bool] = {}
        self._silent_ticks: dict[NodeId, int] = {}  # leader only: ticks since each peer answered

    @property
    def id(self) -> NodeId:
        return self._id

    @property
    def leader(self) -> NodeId | None:
        return self._leader

    @property
    def term(self) -> int:
        return self._term

    @property
    def state(self) -> RaftState:
        return self._state

    @property
    def voted_for(self) -> NodeId | None:
        return self._voted_for

    # -- inputs --------------------------------------------------------------

    def tick(self) -> Output:
        if self._state is RaftState.LEADER:
            self._tick_leader()
        else:
            self._election_elapsed += 1
            if self._election_elapsed >= self._randomized_timeout:
                self._campaign()
        return self._out.flush()

    def campaign(self) -> Output:
        if self._state is not RaftState.LEADER:
            self._campaign()
        return self._out.flush()

    def restart(self) -> Output:
        self._reset_volatile()
        return self._out.flush()

    def step(self, message: Message) -> Output:
        if isinstance(message, RaftMessage):
            self._step(message)
        return self._out.flush()

    def _step(self, m: RaftMessage) -> None:
        if m.term > self._term:
            if isinstance(m, (PreVote, RequestVote)) and self._in_lease():
                return  # we trust a live leader: do not let a (maybe cut-off) node disrupt it
            if isinstance(m, PreVote) or (isinstance(m, PreVoteResponse) and m.granted):
                pass  # pre-votes never change a term
            else:
                leader = m.src if isinstance(m, AppendEntries) else None
                self._become_follower(m.term, leader, reason=f"node {m.src} has term {m.term}")
        elif m.term < self._term:
            if isinstance(m, AppendEntries) and (
                self._config.pre_vote or self._config.check_quorum
            ):
                # A stale leader (e.g. healed from a partition) learns the newer term from this.
                self._out.send(AppendEntriesResponse(self._id, m.src, self._term))
            elif isinstance(m, PreVote):
                self._out.send(PreVoteResponse(self._id, m.src, self._term, granted=False))
            return

        if isinstance(m, (PreVote, RequestVote)):
            self._on_vote_request(m)
        elif isinstance(m, AppendEntries):
            self._on_append_entries(m)
        elif isinstance(m, (PreVoteResponse, RequestVoteResponse)):
            self._on_vote_response(m)
        elif isinstance(m, AppendEntriesResponse) and self._state is RaftState.LEADER:
            self._silent_ticks[m.src] = 0

    def _in_lease(self) -> bool:
        if not self._config.check_quorum or self._leader is None:
            return False
        return (
            self._state is RaftState.LEADER
            or self._election_elapsed < self._config.election_timeout
        )

    def _on_vote_request(self, m: PreVote | RequestVote) -> None:
        pre_vote = isinstance(m, PreVote)
        can_vote = (
            self._voted_for == m.src
            or (self._voted_for is None and self._leader is None)
            or (pre_vote and m.term > self._term)
        )
        reply = PreVoteResponse if pre_vote else RequestVoteResponse
        if not can_vote:
            self._out.send(reply(self._id, m.src, self._term, granted=False))
            return
        self._out.send(reply(self._id, m.src, m.term, granted=True))
        if not pre_vote:
            self._voted_for = m.src
            self._election_elapsed = 0

    def _on_append_entries(self, m: AppendEntries) -> None:
        if self._state is RaftState.LEADER:
            return  # same term, two leaders: impossible while each node votes once per term
        if self._state is not RaftState.FOLLOWER:
            self._become_follower(m.term, m.src, reason=None)
        self._election_elapsed = 0
        self._set_leader(m.src)
        self._out.send(AppendEntriesResponse(self._id, m.src, self._term))

    def _on_vote_response(self, m: PreVoteResponse | RequestVoteResponse) -> None:
        if self._state is RaftState.PRE_CANDIDATE:
            if not isinstance(m, PreVoteResponse) or (m.granted and m.term != self._term + 1):
                return
        elif self._state is RaftState.CANDIDATE:
            if not isinstance(m, RequestVoteResponse):
                return
        else:
            return
        self._votes[m.src] = m.granted
        granted = sum(self._votes.values())
        if granted >= self._quorum:
            if self._state is RaftState.PRE_CANDIDATE:
                self._become_candidate()
            else:
                self._become_leader()
        elif len(self._votes) - granted >= self._quorum:
            self._become_follower(self._term, None, reason=None)

    # -- transitions ---------------------------------------------------------

    def _campaign(self) -> None:
        if self._config.pre_vote:
            self._become_pre_candidate()
        else:
            self._become_candidate()

    def _become_pre_candidate(self) -> None:
        self._state = RaftState.PRE_CANDIDATE
        self._start_round()
        self._out.emit(ElectionStarted(self._id, self._term + 1, pre_vote=True))
        if len(self._votes) >= self._quorum:
            self._become_candidate()
            return
        for peer in self._peers:
            self._out.send(PreVote(self._id, peer, self._term + 1))

    def _become_candidate(self) -> None:
        self._state = RaftState.CANDIDATE
        self._term += 1
        self._voted_for = self._id
        self._start_round()
        self._out.emit(ElectionStarted(self._id, self._term))
        if len(self._votes) >= self._quorum:
            self._become_leader()
            return
        for peer in self._peers:
            self._out.send(RequestVote(self._id, peer, self._term))

    def _start_round(self) -> None:
        self._set_leader(None)
        self._votes = {self._id: True}
        self._election_elapsed = 0
        self._randomized_timeout = self._random_election_timeout()

    def _become_leader(self) -> None:
        self._state = RaftState.LEADER
        self._set_leader(self._id)
        self._heartbeat_elapsed = 0
        self._silent_ticks = dict.fromkeys(self._peers, 0)
        self._out.emit(BecameLeader(self._id, self._term))
        self._broadcast_heartbeat()

    def _become_follower(self, term: int, leader: NodeId | None, *, reason: str | None) -> None:
        if self._state is RaftState.LEADER:
            self._out.emit(SteppedDown(self._id, self._term, reason or "stepped down"))
        if term != self._term:
            self._term = term
            self._voted_for = None
        self._state = RaftState.FOLLOWER
        self._set_leader(leader)
        self._election_elapsed = 0
        self._randomized_timeout = self._random_election_timeout()

    def _tick_leader(self) -> None:
        if self._config.check_quorum:
            for peer in self._silent_ticks:
                self._silent_ticks[peer] += 1
            heard = 1 + sum(
                ticks < self._config.election_timeout for ticks in self._silent_ticks.values()
            )
            if heard < self._quorum:
                self._become_follower(self._term, None, reason="lost contact with the majority")
                return
        self._heartbeat_elapsed += 1
        if self._heartbeat_elapsed >= self._config.heartbeat_interval:
            self._broadcast_heartbeat()

    def _broadcast_heartbeat(self) -> None:
        self._heartbeat_elapsed = 0
        for peer in self._peers:
            self._out.send(AppendEntries(self._id, peer, self._term))

    def _set_leader(self, leader: NodeId | None) -> None:
        if leader != self._leader:
            self._leader = leader
            self._out.emit(LeaderChanged(self._id, leader, self._term))

    def _random_election_timeout(self) -> int:
        timeout = self._config.election_timeout
        return self._rng.randrange(timeout, 2 * timeout)
