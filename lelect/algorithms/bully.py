"""The Bully algorithm (Garcia-Molina, 1982) as a pure state machine.

A node that suspects the leader sends :class:`Election` to every node with a
higher id. A live higher node replies :class:`Answer` and runs its own election.
A node that gets no answer within ``answer_timeout`` ticks wins and tells every
other node with :class:`Coordinator`; one that got an answer waits
``coordinator_timeout`` ticks for the winner's announcement, else starts over.
The highest live id therefore wins. A node that restarts starts an election at
once (and so bullies a lower leader away).

Assumption: delays are bounded. ``answer_timeout`` must exceed the longest
round trip, or a lower node declares itself leader while a higher one lives;
heartbeats (see :mod:`lelect.algorithms.priority`) then undo that, at a cost.
There is no quorum: each side of a partition elects its own leader.

Messages, all nodes live, no loss (n nodes, the lowest or highest initiating):
the highest id initiating costs n-1 Coordinators; the lowest costs n(n-1)/2
Elections, n(n-1)/2 Answers and n-1 Coordinators, as every node the election
reaches runs its own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from lelect.algorithms import ElectionStarted, Message, NodeId, Output
from lelect.algorithms.priority import Heartbeat, PriorityNode

__all__ = [
    "Answer",
    "BullyConfig",
    "BullyNode",
    "BullyState",
    "Coordinator",
    "Election",
    "Heartbeat",
]


class BullyState(Enum):
    FOLLOWER = "follower"
    ELECTING = "electing"  # sent Election to the higher ids, waiting for an Answer
    AWAITING_COORDINATOR = "awaiting_coordinator"  # a higher node answered; waiting for it to win
    LEADER = "leader"


@dataclass(frozen=True)
class BullyConfig:
    """Timeouts in ticks."""

    heartbeat_interval: int = 5
    leader_timeout: int = 15  # randomized in [T, 2T)
    answer_timeout: int = 3  # must exceed the longest round trip
    coordinator_timeout: int = 10


@dataclass(frozen=True)
class Election(Message):
    """To a higher id: "I am holding an election; are you alive?"."""


@dataclass(frozen=True)
class Answer(Message):
    """To a lower id: "I am alive and take the election over"."""


@dataclass(frozen=True)
class Coordinator(Message):
    """From the winner to every other node: "I lead round ``term``"."""

    term: int


class BullyNode(PriorityNode):
    def __init__(
        self,
        node_id: NodeId,
        members: Sequence[NodeId],
        rng: random.Random,
        config: BullyConfig | None = None,
    ) -> None:
        self._config = config or BullyConfig()
        super().__init__(
            node_id,
            members,
            rng,
            heartbeat_interval=self._config.heartbeat_interval,
            leader_timeout=self._config.leader_timeout,
        )
        self._state = BullyState.FOLLOWER
        self._waited = 0  # ticks spent in ELECTING or AWAITING_COORDINATOR

    @property
    def state(self) -> BullyState:
        return self._state

    def tick(self) -> Output:
        if self._state is BullyState.LEADER:
            self._tick_heartbeat()
        elif self._state is BullyState.FOLLOWER:
            if self._leader_silent():
                self._start_election()
        else:
            self._waited += 1
            if self._state is BullyState.ELECTING and self._waited >= self._config.answer_timeout:
                self._win()
            elif (
                self._state is BullyState.AWAITING_COORDINATOR
                and self._waited >= self._config.coordinator_timeout
            ):
                self._start_election()
        return self._out.flush()

    def step(self, message: Message) -> Output:
        match message:
            case Election(src=lower) if lower < self._id:
                # A leader only answers: its next heartbeat tells the asker who leads.
                self._out.send(Answer(self._id, lower))
                if self._state is BullyState.FOLLOWER:
                    self._start_election()
            case Answer(src=higher) if higher > self._id:
                if self._state is BullyState.ELECTING:
                    self._state = BullyState.AWAITING_COORDINATOR
                    self._waited = 0
            case Coordinator(src=leader, term=term):
                self._hear_leader(leader, term, announced=True)
            case Heartbeat(src=leader, term=term):
                self._hear_leader(leader, term, announced=False)
        return self._out.flush()

    def restart(self) -> Output:
        """Come back with no view of the group and, as Bully prescribes, hold an election."""
        self._reset_view()
        self._state = BullyState.FOLLOWER
        self._waited = 0
        self._start_election()
        return self._out.flush()

    # -- hooks for PriorityNode ---------------------------------------------

    def _in_election(self) -> bool:
        return self._state in (BullyState.ELECTING, BullyState.AWAITING_COORDINATOR)

    def _enter_follower(self) -> None:
        self._state = BullyState.FOLLOWER

    def _start_election(self) -> None:
        self._set_leader(None, self._term)
        self._out.emit(ElectionStarted(self._id, self._max_term + 1))
        higher = [peer for peer in self._members if peer > self._id]
        if not higher:
            self._win()
            return
        self._state = BullyState.ELECTING
        self._waited = 0
        for peer in higher:
            self._out.send(Election(self._id, peer))

    def _win(self) -> None:
        self._state = BullyState.LEADER
        self._lead()
        for peer in self._members:
            if peer != self._id:
                self._out.send(Coordinator(self._id, peer, self._term))
