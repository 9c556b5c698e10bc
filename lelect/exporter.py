"""Prometheus metrics of elections, built on prometheus_client (``lelect[metrics]``),
served with ``/leader/NAME`` and ``/healthz`` by lelect's own HTTP server.

An :class:`Exporter` follows its elections with the same :class:`~lelect.health.GroupWatch`
that ``lelect watch`` uses (woken by the backend's own notifications, and refreshed
every ``interval`` for heartbeat ages); a scrape renders the latest look, so scrapes
cost the backend nothing.

    lelect_has_leader{election}                      1 while somebody leads
    lelect_leader_term{election}                     the leader's term (fencing token)
    lelect_seats{election,state}                     seats held and free (--holders N)
    lelect_seat_term{election,seat}                  each held seat's term
    lelect_members{election,status}                  members alive / suspect / dead
    lelect_health_status{election}                   0 healthy, 1 degraded, 2 critical
    lelect_member_heartbeat_age_seconds{election,node_id}
    lelect_leader_changes_total{election}            leaderships in the history (and since)
    lelect_backend_up                                0 while the backend fails

If the watch stops for good, the exporter serves ``lelect_backend_up 0`` and nothing
else (never a stale leader), and ``lelect exporter`` exits 69 for its supervisor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from lelect.errors import LelectError, UsageError
from lelect.health import ALIVE, DEAD, EXIT_STATUS, SUSPECT, GroupHealth, PhiAccrualDetector
from lelect.httpserve import MAX_CONNECTIONS, READ_TIMEOUT, ProbeServer, Response

if TYPE_CHECKING:
    from lelect.election import Client

INSTALL_HINT = "lelect exporter needs prometheus_client: pip install 'lelect[metrics]'"


def _prometheus():
    try:
        from prometheus_client import core
        from prometheus_client.registry import CollectorRegistry
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return core, CollectorRegistry


class Exporter:
    def __init__(self, client: Client, names: Sequence[str] = (),
                 detector: PhiAccrualDetector | None = None, interval: float = 5.0,
                 on_stop: Callable[[], None] | None = None) -> None:
        self.client = client
        self.watch = client.watch(names, detector, interval)
        self._lock = threading.Lock()
        self._groups: tuple[GroupHealth, ...] = ()
        self._error: str | None = None
        self._terms: dict[str, set[tuple[int | None, int]]] = {}  # (seat, term)s counted
        self._changes: dict[str, int] = {}
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        #: Called once if the watch stops for good (its thread died): nothing is
        #: current any more, and a supervisor should restart the exporter.
        self._on_stop = on_stop
        self._thread = threading.Thread(target=self._follow, name="exporter-watch", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        """Follow the elections; the first look must succeed (a wrong URL says so now)."""
        self._thread.start()
        self._ready.wait(timeout)
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        self.watch.close()

    def _follow(self) -> None:
        try:
            for snapshot in self.watch.run():
                with self._lock:
                    self._error = snapshot.error
                    if snapshot.error is None:
                        self._groups = snapshot.groups
                        for group in snapshot.groups:
                            first = group.election not in self._terms
                            if first or any(c.election == group.election for c in snapshot.changes):
                                self._count_changes(group.election)
                self._ready.set()
        except BaseException as exc:  # noqa: BLE001 - reported by start() and failure
            with self._lock:
                self._failure = exc
                self._groups = ()  # never serve a look that is no longer kept current
            self._ready.set()
            if self._on_stop is not None:
                self._on_stop()

    @property
    def failure(self) -> BaseException | None:
        """Why the watch stopped (None while it runs)."""
        return self._failure

    def _count_changes(self, election: str) -> None:
        """Leader changes, from the history: every leadership it records counts once."""
        try:
            entries = self.client.election(election).history()
        except LelectError:
            return
        seen = self._terms.setdefault(election, set())
        new = {(e.seat, e.term) for e in entries} - seen  # terms are per seat
        seen |= new
        self._changes[election] = self._changes.get(election, 0) + len(new)

    # -- HTTP answers (from the latest look: a request costs the backend nothing) --------

    def healthz(self) -> Response:
        """200 while the backend answers, 503 while it fails."""
        with self._lock:
            error = self._error
        if error:
            return Response.json(503, {"status": "backend failing", "error": error})
        return Response.json(200, {"status": "ok"})

    def leader_response(self, election: str) -> Response:
        """``leader --json``'s object: 200 with a leader, 503 without, 404 for an
        election this exporter does not know (or the backend failing: 503)."""
        with self._lock:
            groups, error = self._groups, self._error
        group = next((g for g in groups if g.election == election), None)
        if group is None:
            if error:
                return Response.json(503, {"election": election, "leader": None, "error": error})
            return Response.json(404, {"election": election, "error": "unknown election"})
        leader = group.leader
        body = {"election": election, "leader": leader.to_json() if leader else None}
        if group.seats:
            body["holders"] = [seat.to_json() for seat in group.seats]
        return Response.json(200 if leader is not None else 503, body)

    # -- prometheus_client's collector protocol ---------------------------------------

    def describe(self) -> list[Any]:
        return []  # families vary with the elections; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        core, _ = _prometheus()
        with self._lock:
            groups, error, changes = self._groups, self._error, dict(self._changes)
            stopped = self._failure is not None
        up = core.GaugeMetricFamily("lelect_backend_up", "1 while the backend answers")
        up.add_metric([], 0 if error or stopped else 1)
        yield up
        has = core.GaugeMetricFamily("lelect_has_leader", "1 while somebody leads",
                                     labels=["election"])
        term = core.GaugeMetricFamily("lelect_leader_term", "The leader's term (fencing token)",
                                      labels=["election"])
        members = core.GaugeMetricFamily("lelect_members", "Members by status",
                                         labels=["election", "status"])
        health = core.GaugeMetricFamily("lelect_health_status",
                                        "0 healthy, 1 degraded, 2 critical (as lelect health)",
                                        labels=["election"])
        age = core.GaugeMetricFamily("lelect_member_heartbeat_age_seconds",
                                     "Backend time since a member's last heartbeat",
                                     labels=["election", "node_id"])
        total = core.CounterMetricFamily("lelect_leader_changes_total",
                                         "Leaderships recorded in the history",
                                         labels=["election"])
        seats = core.GaugeMetricFamily("lelect_seats", "Seats of an election with seats, by"
                                       " whether they are held", labels=["election", "state"])
        seat_term = core.GaugeMetricFamily("lelect_seat_term", "Each held seat's term (its"
                                           " fencing token)", labels=["election", "seat"])
        for group in groups:
            name = group.election
            has.add_metric([name], 1 if group.leader else 0)
            if group.leader is not None:
                term.add_metric([name], group.leader.term)
            if group.seats:
                held = [s for s in group.seats if s.holder is not None]
                seats.add_metric([name, "held"], len(held))
                seats.add_metric([name, "free"], len(group.seats) - len(held))
                for s in held:
                    seat_term.add_metric([name, str(s.seat)], s.holder.term)
            for status in (ALIVE, SUSPECT, DEAD):
                members.add_metric([name, status], sum(m.status == status for m in group.members))
            health.add_metric([name], EXIT_STATUS[group.status])
            for member in group.members:
                if member.last_seen_s is not None:
                    age.add_metric([name, member.node_id], member.last_seen_s)
            total.add_metric([name], changes.get(name, 0))
        yield from (has, term, members, health, age, total, seats, seat_term)


def serve(exporter: Exporter, host: str, port: int, *, read_timeout: float = READ_TIMEOUT,
          max_connections: int = MAX_CONNECTIONS) -> ProbeServer:
    """Serve ``/metrics``, ``/leader/NAME`` and ``/healthz`` on ``host:port`` (a thread)
    with lelect's HTTP server (:mod:`lelect.httpserve`: a read timeout, a connection
    cap); returns the running server."""
    _, registry_class = _prometheus()
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = registry_class(auto_describe=False)
    registry.register(exporter)

    def route(path: str) -> Response:
        if path == "/metrics":
            return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            return exporter.healthz()
        if path.startswith("/leader/"):
            return exporter.leader_response(unquote(path[len("/leader/"):]))
        if path == "/":
            return Response.text(200, "lelect exporter: /metrics, /leader/NAME, /healthz")
        return Response.json(404, {"error": f"no such path: {path[:100]}"})

    return ProbeServer(host, port, route, read_timeout=read_timeout,
                       max_connections=max_connections).start()
