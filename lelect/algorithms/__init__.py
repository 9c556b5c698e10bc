"""Leader election algorithms as pure state machines (sans-IO, like etcd-io/raft and h11).

A node is driven by two inputs and answers each with an :class:`Output`:

- ``step(message)`` when a message addressed to it arrives;
- ``tick()`` once per tick of the caller's clock (simulated or real).

The output holds the messages to send and the events that happened (became
leader, stepped down, ...). A node owns no socket, thread, clock or randomness:
the caller delivers messages, counts ticks and hands in a seeded
``random.Random``. That is what lets :mod:`lelect.sim` replay any run from its
seed, and lets a TCP transport (the future ``raft://`` backend) drive the very
same objects.

Node ids are ints; for Bully and Ring the id is also the node's priority.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

NodeId = int


@dataclass(frozen=True)
class Message:
    """Something one node sends another. Each algorithm subclasses it per message type."""

    src: NodeId
    dst: NodeId


@dataclass(frozen=True)
class Event:
    """Something that happened inside one node, for the caller to record or act on."""

    node: NodeId


@dataclass(frozen=True)
class ElectionStarted(Event):
    """The node began an election for ``term`` (Bully, Ring: the round it would announce;
    Raft with ``pre_vote``: a pre-vote round, which changes no term)."""

    term: int
    pre_vote: bool = False


@dataclass(frozen=True)
class BecameLeader(Event):
    term: int


@dataclass(frozen=True)
class SteppedDown(Event):
    """The node stopped leading; ``reason`` names the rule that made it."""

    term: int
    reason: str


@dataclass(frozen=True)
class LeaderChanged(Event):
    """The node's idea of who leads changed (``None``: it knows of no leader)."""

    leader: NodeId | None
    term: int


@dataclass(frozen=True)
class Output:
    """What one ``step``, ``tick``, ``campaign`` or ``restart`` produced."""

    messages: tuple[Message, ...] = ()
    events: tuple[Event, ...] = ()


class Node(Protocol):
    """What the simulator (and a transport) needs from every algorithm."""

    @property
    def id(self) -> NodeId: ...

    @property
    def leader(self) -> NodeId | None:
        """Who this node believes leads (itself when it leads), or None."""

    @property
    def term(self) -> int:
        """Raft's current term; for Bully and Ring the round of the leader it knows."""

    @property
    def state(self) -> Enum: ...

    def step(self, message: Message) -> Output: ...

    def tick(self) -> Output: ...

    def campaign(self) -> Output:
        """Start an election now, as if the leader had timed out (no-op while leading)."""

    def restart(self) -> Output:
        """The node crashed and came back: volatile state is lost, stable state is kept."""


class Outbox:
    """Collects the messages and events of one call; ``flush`` hands them out and starts over."""

    def __init__(self) -> None:
        self._messages: list[Message] = []
        self._events: list[Event] = []

    def send(self, message: Message) -> None:
        self._messages.append(message)

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def flush(self) -> Output:
        output = Output(tuple(self._messages), tuple(self._events))
        self._messages.clear()
        self._events.clear()
        return output
