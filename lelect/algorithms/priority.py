"""What Bully and Ring share: the id is the priority, and the leader heartbeats everyone.

Neither algorithm says how a follower learns that its leader died. Here, as in
most deployments of them, the leader sends every other node a :class:`Heartbeat`
each ``heartbeat_interval`` ticks, and a follower that hears nothing from its
leader for ``leader_timeout`` ticks (randomized in ``[T, 2T)``) starts an
election. Heartbeats also pull the group towards the highest live id: a node
that hears a leader with a lower id than its own, while it knows of no other
leader, starts an election; a leader that hears a higher one steps down.

``term`` is an election round counter, not a fencing token: each winner
announces one more than the highest round it has seen (kept across restarts, as
if on disk). Without a quorum nothing stops two sides of a partition, or a
node that was down, from announcing the same or a lower round.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from lelect.algorithms import (
    BecameLeader,
    LeaderChanged,
    Message,
    NodeId,
    Outbox,
    Output,
    SteppedDown,
)


@dataclass(frozen=True)
class Heartbeat(Message):
    """The leader's periodic "I am alive and lead round ``term``", to every other node."""

    term: int


class PriorityNode:
    """Base of BullyNode and RingNode: leader view, round counter, heartbeats and silence timer.

    Subclasses keep their own state enum and provide ``_start_election``,
    ``_in_election`` and ``_enter_follower``.
    """

    def __init__(
        self,
        node_id: NodeId,
        members: Sequence[NodeId],
        rng: random.Random,
        *,
        heartbeat_interval: int,
        leader_timeout: int,
    ) -> None:
        if node_id not in members:
            raise ValueError(f"node {node_id} is not among the members {list(members)}")
        if heartbeat_interval < 1 or leader_timeout <= heartbeat_interval:
            raise ValueError("need 1 <= heartbeat_interval < leader_timeout (in ticks)")
        self._id = node_id
        self._members = tuple(members)
        self._rng = rng
        self._heartbeat_interval = heartbeat_interval
        self._leader_timeout = leader_timeout
        self._out = Outbox()
        self._max_term = 0  # highest round seen; survives restart()
        self._reset_view()

    def _reset_view(self) -> None:
        self._leader: NodeId | None = None
        self._term = 0
        self._silence = 0
        self._silence_limit = self._random_timeout(self._leader_timeout)
        self._heartbeat_elapsed = 0

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
    def leading(self) -> bool:
        return self._leader == self._id

    def campaign(self) -> Output:
        if not self.leading and not self._in_election():
            self._start_election()
        return self._out.flush()

    # -- hooks -------------------------------------------------------------

    def _start_election(self) -> None:
        raise NotImplementedError

    def _in_election(self) -> bool:
        raise NotImplementedError

    def _enter_follower(self) -> None:
        raise NotImplementedError

    # -- shared rules --------------------------------------------------------

    def _random_timeout(self, ticks: int) -> int:
        return self._rng.randrange(ticks, 2 * ticks)

    def _set_leader(self, leader: NodeId | None, term: int) -> None:
        if (leader, term) != (self._leader, self._term):
            self._leader, self._term = leader, term
            self._out.emit(LeaderChanged(self._id, leader, term))
        self._silence = 0
        self._silence_limit = self._random_timeout(self._leader_timeout)

    def _lead(self) -> None:
        """Win a round: announce one more than the highest round seen."""
        self._max_term += 1
        self._set_leader(self._id, self._max_term)
        self._heartbeat_elapsed = 0
        self._out.emit(BecameLeader(self._id, self._max_term))

    def _follow(self, leader: NodeId, term: int) -> None:
        if self.leading:
            self._out.emit(SteppedDown(self._id, self._term, f"node {leader} outranks it"))
        self._enter_follower()
        self._set_leader(leader, term)

    def _hear_leader(self, leader: NodeId, term: int, *, announced: bool) -> None:
        """React to ``leader`` claiming round ``term``: a fresh announcement or a heartbeat.

        Follow a higher id (a fresh announcement always, a heartbeat if it beats
        the leader we know); answer a lower id with an election, unless we
        already follow someone higher, whose heartbeats will set it right.
        """
        self._max_term = max(self._max_term, term)
        if leader == self._leader or (
            leader > self._id and (announced or self._leader is None or leader > self._leader)
        ):
            self._follow(leader, term)
        elif leader < self._id and self._leader is None and not self._in_election():
            self._start_election()

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        if self._heartbeat_elapsed >= self._heartbeat_interval:
            self._heartbeat_elapsed = 0
            for peer in self._members:
                if peer != self._id:
                    self._out.send(Heartbeat(self._id, peer, self._term))

    def _leader_silent(self) -> bool:
        """Count one tick without news from the leader; True once that is too long."""
        self._silence += 1
        return self._silence >= self._silence_limit
