"""etcd backend: ``etcd://[user:password@]host:2379[,host2:2379…]/PREFIX`` and ``etcds://…``
(TLS; options ``ca``, ``cert``, ``key``); options ``ttl``, ``connect_timeout``, ``history``.

An election is exactly etcd's ``client/v3/concurrency`` Election on ``PREFIX/NAME``, so
``etcdctl elect PREFIX/NAME`` and ``etcdctl lock PREFIX/NAME`` contend in it too:

- each candidate puts ``PREFIX/NAME/<its lease id in hex>`` under its own lease, value =
  its node id (``create_revision == 0`` guards the put, as Campaign does);
- the key with the lowest create revision leads, and that revision is the term (what
  ``etcdctl lock`` exports as ``ETCD_LOCK_REV`` when it did not have to wait);
- each waiter watches only the key just before its own for its deletion (no herd).

lelect's own records live outside every election prefix (no election name starts with
``_``): ``PREFIX/_members/NAME/<node id>`` (heartbeats, each under a lease as long as the
member stays listed), ``PREFIX/_resign/NAME`` (a request that the leader of a term step
down, under that leader's lease), ``PREFIX/_history/NAME/<term, 20 digits>``,
``PREFIX/_slots/NAME/<slot>`` and ``PREFIX/_notes/NAME/<key>`` (notes; one with a ttl
under a lease of its own). Every write that concerns a leadership compares the
contender key's create revision: that revision is the leadership's identity.

The lease is granted with the ttl (etcd grants whole seconds, at least its minimum: we use
what it granted), kept alive every ttl/3 and counted from when each keep-alive was sent.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator

from lelect.backends.base import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HISTORY,
    DEFAULT_TTL,
    MAX_NOTE,
    RUNNING,
    Backend,
    Candidate,
    Ending,
    HandBack,
    Heartbeat,
    HistoryEntry,
    LeaderInfo,
    Leadership,
    Members,
    WakePipe,
    busy,
    cancel_wakeup,
    check_cancel,
    check_note,
    check_note_key,
    only_changes,
    timed_out,
    unreachable,
    wait_slice,
)
from lelect.backends.etcd import gateway as wire
from lelect.backends.etcd.gateway import Endpoint, GatewayError, KeyValue, TLSFiles
from lelect.backends.etcd.rpc import GrpcGateway, txn_request
from lelect.backends.logs import Logger
from lelect.backends.notes import HANDOVER_KEY, value_key
from lelect.backends.records import (
    MAX_SLOTS,
    VANISHED,
    VANISHED_REASON,
    ResignAnswer,
    decode_member,
    encode_member,
    stored_arrivals,
)
from lelect.durations import format_duration
from lelect.errors import BackendUnavailable, UsageError
from lelect.frozen import Record, replace
from lelect.lease import Attempts, GaveUp, Lease, Renewal, RetryPolicy, renew_interval
from lelect.names import ELECTION_NAME, validate_stored

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only

if TYPE_CHECKING:
    from lelect.backends.urls import BackendURL

log = Logger("lelect.etcd")

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "lelect"
#: A leadership's watch that etcd refused is opened again after this pause (its lease's
#: keep-alive decides meanwhile whether the leadership is lost).
WAKE = 0.25
#: An observer whose watch stayed quiet this long looks at the leader again.
LOOK_AGAIN = 60.0
_OPTIONS = {"ttl", "connect_timeout", "history", "ca", "cert", "key"}


# -- the URL ---------------------------------------------------------------------------


class EtcdOptions(Record):
    endpoints: tuple[Endpoint, ...]
    prefix: str
    ttl: float
    connect_timeout: float
    history: int
    tls: TLSFiles | None
    username: str | None
    password: str | None

    _unshown = ("password",)

    @classmethod
    def from_url(cls, url: BackendURL) -> EtcdOptions:
        url.check_options(_OPTIONS)
        if not url.hosts:
            raise UsageError(f"{url.scheme}:// URL names no host: use {url.scheme}://host:2379/PREFIX")
        prefix = url.path[1:] if url.path.startswith("/") else url.path
        prefix = prefix.rstrip("/") if prefix != "/" else prefix
        prefix = prefix or DEFAULT_PREFIX
        if "//" in prefix.lstrip("/") or not prefix.isascii() or not prefix.isprintable() or " " in prefix:
            raise UsageError(
                f"invalid key prefix {prefix!r} in {url.scheme}:// URL: use printable ASCII"
                " without spaces or empty path segments, e.g. etcd://host:2379/lelect"
            )
        tls = None
        files = {name: url.option(name) for name in ("ca", "cert", "key")}
        if url.scheme == "etcds":
            for name, path in files.items():
                if path is not None and not os.path.isfile(path):
                    raise UsageError(f"{name} option in etcds:// URL: no such file {path!r}")
            if bool(files["cert"]) != bool(files["key"]):
                raise UsageError("etcds:// URL: give cert= and key= together (a client certificate and its key)")
            tls = TLSFiles(files["ca"], files["cert"], files["key"])
        elif any(files.values()):
            given = next(name for name, path in files.items() if path)
            raise UsageError(f"{given} option needs TLS: use etcds:// instead of etcd://")
        return cls(
            endpoints=tuple(Endpoint(host, port or DEFAULT_PORT) for host, port in url.hosts),
            prefix=prefix,
            ttl=url.duration("ttl", DEFAULT_TTL),
            connect_timeout=url.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            history=url.integer("history", DEFAULT_HISTORY),
            tls=tls,
            username=url.username,
            password=url.password,
        )


class EtcdKeys(Record):
    """Where one election lives."""

    prefix: str
    election: str

    @property
    def contenders(self) -> str:
        """etcd's election prefix (``NewElection(s, "PREFIX/NAME")`` adds the slash)."""
        return f"{self.prefix}/{self.election}/"

    def contender(self, lease_id: int) -> str:
        return f"{self.contenders}{lease_id:x}"

    @property
    def members(self) -> str:
        return f"{self.prefix}/_members/{self.election}/"

    def member(self, node_id: str) -> str:
        return self.members + node_id

    @property
    def resign(self) -> str:
        return f"{self.prefix}/_resign/{self.election}"

    @property
    def history(self) -> str:
        return f"{self.prefix}/_history/{self.election}/"

    def history_entry(self, term: int) -> str:
        return f"{self.history}{term:020d}"

    @property
    def slots(self) -> str:
        return f"{self.prefix}/_slots/{self.election}/"

    def slot(self, name: str) -> str:
        return self.slots + name

    def note(self, key: str) -> str:
        return f"{self.prefix}/_notes/{self.election}/{key}"


def lease_seconds(ttl: float) -> int:
    """etcd leases are whole seconds: ask for the ttl rounded up."""
    return max(1, math.ceil(ttl - 1e-9))


# -- leases ------------------------------------------------------------------------------


class _Lease:
    """One etcd lease (a waiter's too: its key in line lives under it), kept alive by
    :class:`lelect.lease.Lease` with etcd's keep-alive as the renew verb."""

    def __init__(self, backend: EtcdBackend, ttl: float, budget: float) -> None:
        self.backend = backend
        t_send = time.monotonic()
        answer = backend.gateway.call("lease/grant", {"TTL": str(lease_seconds(ttl))}, budget)
        self.id = wire.lease_id(answer)
        #: The lease etcd granted: whole seconds, at least its minimum.
        self.granted = wire.decoded(lambda raw: float(raw.get("TTL") or lease_seconds(ttl)), answer)
        if self.granted != ttl:
            backend.say_granted(ttl, self.granted)
        # Renewing as often as the asked-for ttl needs keeps every promise made for it.
        self.keeper = Lease(t_send, self.granted, self._keepalive,
                            interval=renew_interval(min(ttl, self.granted)),
                            describe=lambda exc: getattr(exc, "message", str(exc)),
                            name=f"etcd-lease:{self.id:x}")
        self.keeper.start()

    def _keepalive(self, budget: float) -> Renewal:
        answer = self.backend.gateway.call("lease/keepalive", {"ID": str(self.id)}, budget)
        granted = wire.decoded(lambda raw: int((raw.get("result") or raw).get("TTL") or 0), answer)
        if granted <= 0:
            return Renewal(False, reason="etcd says our lease expired")
        return Renewal(True, granted=float(granted))

    def alive(self) -> bool:
        return self.keeper.alive()

    def revoke(self, budget: float) -> None:
        """Stop renewing and revoke the lease (deleting every key under it), best effort:
        a lease that cannot be revoked runs out by itself."""
        self.keeper.stop()
        try:
            self.backend.gateway.call("lease/revoke", {"ID": str(self.id)}, budget)
        except GatewayError as exc:
            if exc.code != 5:  # NotFound: it had run out already
                log.warning("lelect: could not revoke etcd lease %x (%s); it runs out by itself",
                            self.id, exc.message)
                self.backend.release_later(self._revoke_again)

    def _revoke_again(self, budget: float) -> None:
        try:
            self.backend.gateway.call("lease/revoke", {"ID": str(self.id)}, budget)
        except GatewayError as exc:
            if exc.code != 5:
                raise


# -- leadership ----------------------------------------------------------------------------


class EtcdLeadership(Leadership):
    """A won election: our contender key under our lease. Two watches hear of our key's
    deletion (lost) and of a resign request for our term."""

    def __init__(self, backend: EtcdBackend, keys: EtcdKeys, candidate: Candidate,
                 key: str, term: int, lease: _Lease, entry: HistoryEntry, revision: int) -> None:
        super().__init__(backend, keys.election, candidate, term, key, lease.keeper, entry.started)
        self.keys = keys
        self.key = key
        self.etcd_lease = lease
        self.entry = entry
        #: The lease etcd granted (whole seconds, at least its minimum).
        self.ttl = lease.granted
        self.stopped = threading.Event()
        self._backend = backend
        self._revision = revision
        #: History entries once ours is in (the release drops those beyond ``history``).
        self.history_count = 0
        #: The newest history entry when we won (to close as vanished if still running).
        self.newest_before: KeyValue | None = None
        #: Set once the win's history entry is written (or could not be); its writer
        #: starts with the leadership (``begun``).
        self.recorded = threading.Event()
        self.begun = False
        #: One per watch thread: ends its read when the leadership stops or is lost.
        self._wakes: list[WakePipe] = []
        self._wakes_lock = threading.Lock()

    def _begin(self) -> None:
        self.begun = True
        self.subscribe(lambda kind: self._wake_watches() if kind == "lost" else None)
        threading.Thread(target=self._watch, args=(self._revision + 1,),
                         name=f"lelect-etcd-watch:{self.key}", daemon=True).start()

    def _on_event(self, event: wire.WatchEvent) -> None:
        if event.key == self.key:
            if event.kind == "DELETE":
                self.mark_lost(f"our key {self.key} was deleted")
        elif event.key == self.keys.resign:
            if event.kind == "PUT" and event.value.decode("utf-8", "replace") == str(self.term):
                self.mark_resign_requested()

    def _watch(self, start: int) -> None:
        """Record the win, then follow our key and the resign request (one stream) from
        revision ``start`` until the leadership ends, reopening the watch where it left
        off when it breaks."""
        backend = self._backend
        try:
            backend.record_win(self)
        finally:
            self.recorded.set()
        wake = WakePipe()
        with self._wakes_lock:
            self._wakes.append(wake)
        # Per key: two watches on one stream need not deliver in revision order between
        # them, so a reopened stream starts at the lower (a repeated event is harmless).
        after = {self.key: start, self.keys.resign: start}
        try:
            while not self._over():
                start = min(after.values())
                try:
                    stream = backend.gateway.watch(self.key, also=(self.keys.resign,),
                                                   start_revision=start,
                                                   budget=backend.options.connect_timeout)
                except GatewayError:
                    self.stopped.wait(WAKE)  # the keep-alive decides whether the lease is lost
                    continue
                try:
                    while not self._over():
                        # Sleeps until an event or the leadership's end (``wake``).
                        events = stream.next(self.ttl, wake)
                        for event in events or ():
                            if event.key in after:
                                after[event.key] = max(after[event.key], event.mod_revision + 1)
                            if not self._over():
                                self._on_event(event)
                except GatewayError as exc:
                    if exc.kind == "compacted":
                        # What happened meanwhile is gone: look at the keys themselves.
                        after = dict.fromkeys(after, backend.look_again(self))
                finally:
                    stream.close()
        finally:
            with self._wakes_lock:
                self._wakes.remove(wake)
            wake.close()

    def _wake_watches(self) -> None:
        with self._wakes_lock:
            wakes = list(self._wakes)
        for wake in wakes:
            wake.wake()

    def _over(self) -> bool:
        return self.stopped.is_set() or self.lost.is_set() or self.released

    def stop(self) -> None:
        self.stopped.set()
        self._wake_watches()
        self.etcd_lease.keeper.stop()


# -- the backend ---------------------------------------------------------------------------


class EtcdBackend(Backend):
    """Elections in one etcd cluster, through its members' v3 JSON gateways."""

    scheme = "etcd"
    lease_based = True
    has_clock = False  # etcd has no clock a client can read: now() is local time
    tells_next_in_line = True

    def __init__(self, url: BackendURL) -> None:
        super().__init__(url)
        self.scheme = url.scheme
        self.options = EtcdOptions.from_url(url)
        self.default_ttl = self.ttl = self.options.ttl
        self.connect_timeout = self.options.connect_timeout
        self.history_limit = self.options.history
        self.retry = RetryPolicy(self.connect_timeout)
        self.gateway = GrpcGateway(self.options.endpoints, tls=self.options.tls,
                                   username=self.options.username,
                                   password=self.options.password)
        self._said_granted: set[tuple[float, float]] = set()

    def keys(self, election: str) -> EtcdKeys:
        return EtcdKeys(self.options.prefix, validate_stored(election))

    def say_granted(self, asked: float, granted: float) -> None:
        """Say once per length that etcd's lease differs from the ttl asked for."""
        if (asked, granted) in self._said_granted:
            return
        self._said_granted.add((asked, granted))
        log.warning(
            "lelect: etcd granted a %s lease for ttl %s (leases are whole seconds, at least"
            " etcd's minimum): using %s", format_duration(granted), format_duration(asked),
            format_duration(granted),
        )

    # -- campaign ------------------------------------------------------------------------

    def _retry(self, attempts: Attempts, exc: GatewayError) -> None:
        """Pause before the next try, or raise the one-line error when that was the last."""
        try:
            attempts.retry_after(exc.transient)
        except GaveUp as gave_up:
            raise self.unavailable(exc, gave_up.bound) from None

    def _campaign(
        self,
        election: str,
        candidate: Candidate,
        *,
        timeout: float | None,
        no_wait: bool,
        ttl: float | None,
        on_wait: Callable[[LeaderInfo | None], None] | None,
        cancel: threading.Event | None = None,
        on_next: Callable[[bool], None] | None = None,
    ) -> Leadership:
        keys = self.keys(election)
        ttl = self.default_ttl if ttl is None else ttl
        contact = self.retry.attempts(timeout, cancel=cancel, election=election)
        give_up = contact.give_up.at
        told_waiting = False

        def waiting(holder: LeaderInfo | None) -> None:
            nonlocal told_waiting
            if not told_waiting and on_wait is not None:
                told_waiting = True
                on_wait(holder)

        while True:
            try:
                if no_wait or timeout == 0:
                    # Look first: a busy election costs no lease.
                    holder = self._leader(keys, contact.budget())[0]
                    if holder is not None:
                        raise busy(election, holder) if no_wait else timed_out(election, timeout)
                lease = _Lease(self, ttl, contact.budget())
            except GatewayError as exc:
                self._retry(contact, exc)
                continue
            contact.succeeded()
            # Leaving the line revokes our lease at once, with time of its own (not what is
            # left of --timeout): a key left in line would lead, jobless, when its turn came.
            try:
                won = self._contend(keys, candidate, lease, contact, give_up, timeout,
                                    no_wait=no_wait, waiting=waiting, cancel=cancel,
                                    on_next=on_next)
            except BaseException:
                lease.revoke(min(self.connect_timeout, 1.0))
                raise
            if won is not None:
                return won
            lease.revoke(min(self.connect_timeout, 1.0))  # our place was lost: queue again

    def _contend(self, keys: EtcdKeys, candidate: Candidate, lease: _Lease,
                 contact: Attempts, give_up: float | None, timeout: float | None, *,
                 no_wait: bool, waiting: Callable[[LeaderInfo | None], None],
                 cancel: threading.Event | None = None,
                 on_next: Callable[[bool], None] | None = None) -> EtcdLeadership | None:
        """Queue under ``lease`` and wait for our turn; None if our place was lost (the
        lease ran out or our key was deleted) and we must queue again."""
        key = keys.contender(lease.id)
        while True:
            try:
                # etcd's Campaign: our key unless it exists, and the first in line.
                joined = self.gateway.txn(
                    [wire.created_at(key, 0)],
                    [wire.put(key, candidate.node_id, lease.id),
                     wire.get(keys.contenders, prefix=True, first_by="CREATE", limit=1)],
                    [wire.get(key), wire.get(keys.contenders, prefix=True, first_by="CREATE", limit=1)],
                    budget=contact.budget(),
                )
                break
            except GatewayError as exc:
                self._retry(contact, exc)
        if joined.succeeded:
            term = joined.revision
        elif joined.ranges[0] and joined.ranges[0].first:
            term = joined.ranges[0].first.create_revision
        else:
            return None
        first = joined.ranges[1].first if joined.ranges[1] else None
        if first is None:
            return None  # our key is gone already
        if first.create_revision != term:
            holder = self._holder(keys, first, contact.budget())
            if no_wait:
                raise busy(keys.election, holder)
            if timeout == 0:
                raise timed_out(keys.election, 0)
            waiting(holder)
        return self._take_turn(keys, candidate, key, term, lease, contact, give_up, timeout,
                               cancel, seen=joined.revision, on_next=on_next)

    def _take_turn(self, keys: EtcdKeys, candidate: Candidate, key: str, term: int,
                   lease: _Lease, contact: Attempts, give_up: float | None,
                   timeout: float | None, cancel: threading.Event | None = None,
                   seen: int = 0, on_next: Callable[[bool], None] | None = None
                   ) -> EtcdLeadership | None:
        """etcd's waitDeletes with the win folded in: claim the election (one txn that
        wins only if no key older than ours is left); while one is, watch the youngest of
        them for its deletion and claim again. None if our place was lost (the lease ran
        out or our key was deleted) and we must queue again.

        The claim is a serializable read (the member answers from its own store at once,
        not behind the writes it is committing: the old leader's lease revoke, just sent)
        that counts only if it read at ``seen`` or later (the revision of our join, then
        of the deletion we saw): once no key older than ours is left at some revision,
        none ever is again (a key made later is younger), and our key lives as long as
        our lease, which we count ourselves. A member behind ``seen`` (another one, after
        a failover) is asked again, linearizably.

        A claim that fails reads the two youngest keys older than ours: with only one,
        the key we watch is the leader's, and ``on_next`` hears that we are next in line
        (a hint: the job may be made ready, never started)."""
        # Made once: sent on a deletion.
        quick, sure = (self._claim_request(keys, key, term, serializable=True),
                       self._claim_request(keys, key, term))
        while True:
            if not lease.alive():
                return None
            try:
                claim = self.gateway.post_txn(quick, contact.budget())
                if claim.revision < seen:
                    claim = self.gateway.post_txn(sure, contact.budget())
            except GatewayError as exc:
                self._retry(contact, exc)
                continue
            if claim.succeeded:
                entry = HistoryEntry(keys.election, term, candidate.node_id, candidate.host,
                                     candidate.pid, started=time.time())
                return self._won(keys, candidate, key, entry, lease, claim)
            mine = claim.ranges[0].first if claim.ranges[0] else None
            older = claim.ranges[1].first if claim.ranges[1] else None
            if mine is None or mine.create_revision != term:
                return None
            # Next in line: only the leader's key is older than ours. Else the key we watch
            # will lead one day, and its history entry, written as it starts its job,
            # tells us that we are next then (without a look of ours at the line).
            promotion = None
            if on_next is not None and older is not None:
                on_next(len(claim.ranges[1].kvs) == 1)
                if len(claim.ranges[1].kvs) > 1:
                    promotion = keys.history_entry(older.create_revision)
            if give_up is not None and time.monotonic() >= give_up:
                raise timed_out(keys.election, timeout)
            if older is None:
                # One txn reads at one revision: an etcd cannot fail that compare with no
                # older key (one that ignores a range's end would, every time: no spin).
                raise self.unavailable(GatewayError(
                    "server", "a range compare failed with no key older than ours"
                    " (etcd 3.3 or later compares every key of a range)"))
            try:
                stream = self.gateway.watch(older.key, start_revision=claim.revision + 1,
                                            budget=contact.budget(),
                                            also=() if promotion is None else (promotion,))
            except GatewayError as exc:
                self._retry(contact, exc)
                continue
            contact.succeeded()
            try:
                seen = max(seen, self._until_deleted(
                    stream, lease, give_up, cancel, keys.election, older.key,
                    None if promotion is None else (promotion, on_next)))
            except GatewayError as exc:
                if exc.kind != "compacted":
                    self._retry(contact, exc)
            finally:
                stream.close()

    @staticmethod
    def _until_deleted(stream: wire.WatchStream, lease: _Lease, give_up: float | None,
                       cancel: threading.Event | None = None, election: str = "",
                       key: str | None = None,
                       promotion: tuple[str, Callable[[bool], None]] | None = None) -> int:
        """Until the watched key (``key``: that one among the stream's) is deleted: the
        revision of its deletion (0 if we woke for another reason). The read wakes by
        itself only when our lease would run out unrenewed (its keep-alive moves that on)
        or at ``give_up``; a :class:`~lelect.backends.base.Cancel` wakes it at once.
        ``promotion``: (a key, ``on_next``): a put of that key calls ``on_next(True)``."""
        with cancel_wakeup(cancel) as woken:
            while lease.alive():
                check_cancel(cancel, election)
                now = time.monotonic()
                wake = max(lease.keeper.deadline - now, 0.001)
                if give_up is not None:
                    wake = min(wake, give_up - now)
                if wake <= 0:
                    return 0
                events = stream.next(wait_slice(wake, cancel) or 0.0, woken) or ()
                deleted = [event.mod_revision for event in events
                           if event.kind == "DELETE" and key in (None, event.key)]
                if deleted:
                    return max(deleted)
                if promotion is not None and any(
                        event.kind == "PUT" and event.key == promotion[0] for event in events):
                    promotion[1](True)
            check_cancel(cancel, election)
            return 0

    @staticmethod
    def _claim_request(keys: EtcdKeys, key: str, term: int, serializable: bool = False) -> bytes:
        """One read-only txn (no write: no wait on etcd's disk before the job runs): if
        our key is ours and no key older than it is left, we lead, and it reads what a
        new leader needs at once (the newest history entry and the history's length, a
        resign request, the handover note). Otherwise our key and the two youngest older ones."""
        return txn_request(
            [wire.created_at(key, term), wire.none_created_before(keys.contenders, term)],
            [wire.get(keys.history, prefix=True, last_by="KEY", limit=1, serializable=serializable),
             wire.get(keys.history, prefix=True, count_only=True, serializable=serializable),
             wire.get(keys.resign, serializable=serializable),
             wire.get(keys.note(HANDOVER_KEY), serializable=serializable)],
            [wire.get(key, serializable=serializable),
             wire.get(keys.contenders, prefix=True, last_by="CREATE", limit=2,
                      max_create_revision=term - 1, serializable=serializable)],
        )

    def _won(self, keys: EtcdKeys, candidate: Candidate, key: str, entry: HistoryEntry,
             lease: _Lease, claim: wire.TxnResult) -> EtcdLeadership:
        newest, _, resign, handover = (r.first if r else None for r in claim.ranges[:4])
        leadership = EtcdLeadership(self, keys, candidate, key, entry.term, lease, entry,
                                    claim.revision)
        leadership.history_count = (claim.ranges[1].count if claim.ranges[1] else 0) + 1
        leadership.newest_before = newest
        leadership.notes_at_win[HANDOVER_KEY] = (
            handover.value if handover is not None and len(handover.value) <= MAX_NOTE else None)
        if resign is not None and resign.value.decode("utf-8", "replace") == str(entry.term):
            leadership.mark_resign_requested()
        return leadership

    def record_win(self, leadership: EtcdLeadership) -> None:
        """Write the leadership's history entry ("running") while its job starts, and close
        the one before it as vanished if it is still "running". Guarded: only while our
        key is ours and our entry not yet written (a quick release may have closed it)."""
        keys, entry = leadership.keys, leadership.entry
        entry_key = keys.history_entry(entry.term)
        try:
            self.gateway.txn([wire.created_at(leadership.key, entry.term),
                              wire.created_at(entry_key, 0)],
                             [wire.put(entry_key, entry.encode())], budget=self.connect_timeout)
        except GatewayError as exc:
            log.warning("lelect: could not record term %d of %r in the history (%s)", entry.term,
                        keys.election, exc.message)
        newest = leadership.newest_before
        previous = _decode_entry(newest) if newest is not None else None
        if previous is not None and previous.outcome == RUNNING and previous.term < entry.term:
            self._close_vanished(keys, newest, previous)

    def _await_records(self) -> None:
        """Before reading what a win of ours writes: wait until our wins are recorded."""
        for leadership in list(self.leaderships):
            if isinstance(leadership, EtcdLeadership) and leadership.begun:
                leadership.recorded.wait(self.connect_timeout)

    def _close_vanished(self, keys: EtcdKeys, stored: KeyValue, previous: HistoryEntry) -> None:
        """The leadership before ours ended unseen (its holder died with its keeper, or
        was cut off): record it as vanished, unless its own late release came first."""
        closed = replace(previous, ended=time.time(), outcome=VANISHED, reason=VANISHED_REASON)
        try:
            done = self.gateway.txn([wire.modified_at(stored.key, stored.mod_revision)],
                                    [wire.put(stored.key, closed.encode())],
                                    budget=self.connect_timeout).succeeded
        except GatewayError as exc:
            log.warning("lelect: could not close term %d of %r as vanished (%s)", previous.term,
                        keys.election, exc.message)
            return
        if done:
            log.info("lelect: term %d of %r ended unseen; recorded as vanished", previous.term,
                     keys.election)

    def _trim_history(self, keys: EtcdKeys, count: int, budget: float) -> None:
        """Drop the oldest entries beyond ``history`` (``count``: how many there are)."""
        if count <= self.history_limit:
            return
        oldest = self.gateway.range(keys.history, prefix=True, first_by="KEY", keys_only=True,
                                    limit=count - self.history_limit, budget=budget)
        if oldest.kvs:
            self.gateway.txn([], [wire.delete(keys.history, oldest.kvs[-1].key + "\0")],
                             budget=budget)

    def _holder(self, keys: EtcdKeys, first: KeyValue, budget: float) -> LeaderInfo:
        """Who holds the election, from its first key (and its history entry, if lelect's)."""
        try:
            entry = self.gateway.range(keys.history_entry(first.create_revision), budget=budget)
        except GatewayError:
            entry = None
        return _leader_info(first, _decode_entry(entry.first) if entry and entry.first else None)

    # -- release -------------------------------------------------------------------------

    def resign(self, leadership: Leadership, ending: Ending) -> None:
        assert isinstance(leadership, EtcdLeadership)
        keys = leadership.keys
        budget = leadership.parting_budget(self.connect_timeout)
        closed = replace(leadership.entry, ended=time.time(), outcome=ending.outcome,
                         exit_status=ending.exit_status, reason=ending.reason)
        slot = ending.done_slot
        if slot:
            closed = replace(closed, slot=slot)

        # The entry of a job that ended at once may still be on its way (no record lost).
        if leadership.begun:
            leadership.recorded.wait(budget)

        def settle(budget: float) -> None:
            ops = [wire.delete(leadership.key),
                   wire.put(keys.history_entry(leadership.term), closed.encode())]
            if leadership.publishes_value:  # this term's value goes with it
                ops.append(wire.delete(keys.note(value_key(leadership.term))))
            if slot:
                ops += self._slot_ops(keys, slot, closed, budget)
            try:
                released = self.gateway.txn([wire.created_at(leadership.key, leadership.term)],
                                            ops, budget=budget)
            finally:
                # Our watches end once the release is on its way: waking their thread
                # first had it close its stream (and take the GIL) before the release went.
                # Until then an event they read is ignored (the leadership is released).
                leadership.stop()
            if released.succeeded:
                leadership.value_forgotten = True
            else:
                # No longer ours: still close our own entry, if nobody did (first writer wins).
                self._close_own_entry(keys, closed, budget)

        def finish(budget: float) -> None:
            # After the release, not on the way to the job: the next leader is not kept
            # waiting (nor its etcd busy), and only a leader adds entries.
            leadership.etcd_lease.revoke(budget)
            count, leadership.history_count = leadership.history_count, 0
            self._trim_history(keys, count, budget)

        def release(budget: float) -> None:
            settle(budget)
            finish(budget)

        def failed(exc: GatewayError) -> None:
            log.warning("lelect: could not release %r (%s); it frees itself when the lease runs out",
                        leadership.election, exc.message)
            self.release_later(release)

        def aftermath() -> None:
            try:
                finish(budget)
            except GatewayError as exc:
                failed(exc)

        try:
            settle(budget)
        except GatewayError as exc:
            failed(exc)
            return
        leadership.aftermath = aftermath

    def _slot_ops(self, keys: EtcdKeys, slot: str, closed: HistoryEntry, budget: float
                  ) -> list[dict]:
        ops = [wire.put(keys.slot(slot), closed.encode())]
        count = self.gateway.range(keys.slots, prefix=True, count_only=True, budget=budget).count
        if count >= MAX_SLOTS:
            oldest = self.gateway.range(keys.slots, prefix=True, first_by="MOD", keys_only=True,
                                        limit=count - MAX_SLOTS + 1, budget=budget)
            ops += [wire.delete(kv.key) for kv in oldest.kvs if kv.key != keys.slot(slot)]
        return ops

    def _close_own_entry(self, keys: EtcdKeys, closed: HistoryEntry, budget: float) -> None:
        stored = self.gateway.range(keys.history_entry(closed.term), budget=budget).first
        entry = _decode_entry(stored) if stored else None
        if stored is None or entry is None or entry.outcome != RUNNING:
            return
        self.gateway.txn([wire.modified_at(stored.key, stored.mod_revision)],
                         [wire.put(stored.key, closed.encode())], budget=budget)

    def look_again(self, leadership: EtcdLeadership) -> int:
        """After a compacted watch: check our key and the resign request directly; the
        revision to watch from next."""
        keys = leadership.keys
        try:
            now = self.gateway.txn([], [wire.get(leadership.key), wire.get(keys.resign)],
                                   budget=self.connect_timeout)
        except GatewayError:
            return 0
        mine = now.ranges[0].first if now.ranges[0] else None
        if mine is None or mine.create_revision != leadership.term:
            leadership.mark_lost(f"our key {leadership.key} was deleted")
        asked = now.ranges[1].first if now.ranges[1] else None
        if asked is not None and asked.value.decode("utf-8", "replace") == str(leadership.term):
            leadership.mark_resign_requested()
        return now.revision + 1

    def hand_back(self, leadership: Leadership) -> HandBack | None:
        assert isinstance(leadership, EtcdLeadership)
        options = self.options
        return HandBack(
            budget=min(self.connect_timeout, leadership.ttl), election=leadership.election,
            module="lelect.backends.etcd.handback",
            params={
                "endpoints": [[e.host, e.port] for e in options.endpoints],
                "tls": None if options.tls is None else {
                    "ca": options.tls.ca, "cert": options.tls.cert, "key": options.tls.key},
                "username": options.username,
                "password": options.password,
                # etcd's authenticate costs a bcrypt: the keeper tries lelect's token first.
                "token": self.gateway.token,
                "lease_id": leadership.etcd_lease.id,
                "key": leadership.key,
                "term": leadership.term,
                "history_key": leadership.keys.history_entry(leadership.term),
                "entry": leadership.entry.encode(),
                "member_key": leadership.keys.member(leadership.node_id),
            },
        )

    # -- looking -------------------------------------------------------------------------

    def leader(self, election: str) -> LeaderInfo | None:
        keys = self.keys(election)
        self._await_records()
        try:
            return self._leader(keys, self.connect_timeout)[0]
        except GatewayError as exc:
            raise self.unavailable(exc) from None

    def _leader(self, keys: EtcdKeys, budget: float
                ) -> tuple[LeaderInfo | None, KeyValue | None, int]:
        """The leader (etcd's Leader: the first key by create revision, with host, pid
        and since from its history entry), its key, and the revision they were read at."""
        looked = self.gateway.txn([], [
            wire.get(keys.contenders, prefix=True, first_by="CREATE", limit=1),
            wire.get(keys.history, prefix=True, last_by="KEY", limit=1),
        ], budget=budget)
        first = looked.ranges[0].first if looked.ranges[0] else None
        if first is None:
            return None, None, looked.revision
        newest = looked.ranges[1].first if looked.ranges[1] else None
        entry = _decode_entry(newest) if newest else None
        return _leader_info(first, entry), first, looked.revision

    def observe(self, election: str, stop: threading.Event | None = None
                ) -> Iterator[LeaderInfo | None]:
        return only_changes(self._looks(self.keys(election), stop or threading.Event()))

    def _looks(self, keys: EtcdKeys, stop: threading.Event) -> Iterator[LeaderInfo | None]:
        """etcd's Observe: look at the leader, then watch its key (or, with none, the
        election's prefix) from just after that look until it changes."""
        contact = self.retry.attempts(None, cancel=stop)
        while not stop.is_set():
            try:
                current, first, revision = self._leader(keys, contact.budget())
                # Any put under the prefix when nobody leads; the leader's key otherwise.
                watched, end = (keys.contenders, wire.prefix_end(keys.contenders)) if first is None \
                    else (first.key, None)
                stream = self.gateway.watch(watched, range_end=end, start_revision=revision + 1,
                                            budget=contact.budget())
            except GatewayError as exc:
                self._retry(contact, exc)
                continue
            contact.succeeded()
            yield current
            try:
                # Sleeps on the watch: a Cancel ``stop`` wakes it (a plain Event is looked
                # at every CANCEL_CHECK); a quiet LOOK_AGAIN ends in a fresh look, which
                # also finds a connection that died without a word.
                with cancel_wakeup(stop) as woken:
                    quiet_until = time.monotonic() + LOOK_AGAIN
                    while not stop.is_set():
                        left = quiet_until - time.monotonic()
                        if left <= 0:
                            break
                        events = stream.next(wait_slice(left, stop) or 0.0, woken)
                        if events:
                            break
            except GatewayError as exc:
                if exc.kind != "compacted":
                    self._retry(contact, exc)
            finally:
                stream.close()

    def request_resign(self, election: str, term: int | None = None) -> ResignAnswer:
        keys = self.keys(election)
        self._await_records()
        try:
            first = self.gateway.range(keys.contenders, prefix=True, first_by="CREATE", limit=1,
                                       budget=self.connect_timeout).first
            if first is None or (term is not None and first.create_revision != term):
                return ResignAnswer.NOT_LEADING
            # lelect records each of its leaderships as it wins; an `etcdctl elect` or
            # `lock` leader has no record and reads no request.
            if self.gateway.range(keys.history_entry(first.create_revision),
                                  budget=self.connect_timeout).first is None:
                return ResignAnswer.CANNOT_ASK
            # Under the leader's own lease: the request ends with that leadership.
            asked = self.gateway.txn(
                [wire.created_at(first.key, first.create_revision)],
                [wire.put(keys.resign, str(first.create_revision), first.lease)],
                budget=self.connect_timeout,
            )
        except GatewayError as exc:
            raise self.unavailable(exc) from None
        return ResignAnswer.ASKED if asked.succeeded else ResignAnswer.NOT_LEADING

    # -- heartbeats ----------------------------------------------------------------------

    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        """Store the heartbeat with the arrival stamps so far plus this one (local time:
        etcd has no clock), under a lease of ``ttl`` seconds that each publish renews, so
        a member that stops publishing is forgotten by etcd itself."""
        keys = self.keys(heartbeat.election)
        key = keys.member(heartbeat.node_id)
        budget = self.connect_timeout
        try:
            for _ in range(10):
                stored = self.gateway.range(key, budget=budget).first
                lease = self._member_lease(stored, ttl, budget)
                arrivals = [*stored_arrivals(stored.value if stored else None), time.time()]
                record = encode_member(heartbeat, arrivals, forget_after=ttl)
                guard = wire.modified_at(key, stored.mod_revision) if stored else wire.created_at(key, 0)
                if self.gateway.txn([guard], [wire.put(key, record, lease)], budget=budget).succeeded:
                    return
        except GatewayError as exc:
            raise self.unavailable(exc) from None
        raise BackendUnavailable(f"could not publish a heartbeat to {key}: too many concurrent writers")

    def _member_lease(self, stored: KeyValue | None, ttl: float, budget: float) -> int:
        """The member's lease renewed, or a new one if it ran out or has another length."""
        seconds = lease_seconds(ttl)
        if stored is not None and stored.lease:
            answer = self.gateway.call("lease/keepalive", {"ID": str(stored.lease)}, budget)
            if wire.decoded(lambda raw: int((raw.get("result") or raw).get("TTL") or 0),
                            answer) == seconds:
                return stored.lease
        answer = self.gateway.call("lease/grant", {"TTL": str(seconds)}, budget)
        return wire.lease_id(answer)

    def remove_member(self, election: str, node_id: str) -> None:
        try:
            self.gateway.call("kv/deleterange", {"key": wire.b64(self.keys(election).member(node_id))},
                              self.connect_timeout)
        except GatewayError as exc:
            raise self.unavailable(exc) from None

    def members(self, election: str) -> Members:
        keys = self.keys(election)
        try:
            found = self.gateway.range(keys.members, prefix=True, first_by="KEY",
                                       budget=self.connect_timeout)
        except GatewayError as exc:
            raise self.unavailable(exc) from None
        records = tuple(decode_member(kv.key[len(keys.members):], kv.value) for kv in found.kvs)
        return Members(election=election, now=time.time(), records=records)

    def elections(self) -> list[str]:
        top = self.options.prefix + "/"
        members = f"{top}_members/"
        history = f"{top}_history/"
        try:
            looked = self.gateway.txn([], [
                # Every election prefix: names start with a letter or digit, never "_".
                wire.get(top + "0", range_end=top + "_", keys_only=True),
                wire.get(top + "a", range_end=top + "{", keys_only=True),
                wire.get(members, prefix=True, keys_only=True),
                wire.get(history, prefix=True, keys_only=True),
            ], budget=self.connect_timeout)
        except GatewayError as exc:
            raise self.unavailable(exc) from None
        names = set()
        for found, head in zip(looked.ranges, (top, top, members, history)):
            for kv in found.kvs if found else ():
                name, sep, _ = kv.key[len(head):].partition("/")
                if sep and ELECTION_NAME.fullmatch(name):
                    names.add(name)
        return sorted(names)

    # -- operations ----------------------------------------------------------------------

    def history(self, election: str, limit: int | None = None) -> list[HistoryEntry]:
        keys = self.keys(election)
        self._await_records()
        try:
            found = self.gateway.range(keys.history, prefix=True, last_by="KEY",
                                       limit=limit or self.history_limit, budget=self.connect_timeout)
        except GatewayError as exc:
            raise self.unavailable(exc) from None
        entries = [_decode_entry(kv) for kv in reversed(found.kvs)]
        return [entry for entry in entries if entry is not None]

    def slot_done(self, election: str, slot: str) -> HistoryEntry | None:
        keys = self.keys(election)
        try:
            stored = self.gateway.range(keys.slot(slot), budget=self.connect_timeout).first
        except GatewayError as exc:
            raise self.unavailable(exc) from None
        return _decode_entry(stored) if stored else None

    def now(self) -> float:
        return time.time()

    # -- notes -----------------------------------------------------------------------------

    def put_note(self, election: str, key: str, data: bytes, ttl: float | None = None, *,
                 create: bool = False) -> bool:
        key, data = check_note_key(key), check_note(data)
        note, budget = self.keys(election).note(key), self.connect_timeout
        try:
            # A ttl is kept by etcd's clock: a lease of the note's own (whole seconds, at
            # least etcd's minimum) that deletes the note when it runs out. A lease left
            # unused (a create that found a live note) just runs out too.
            lease = None if ttl is None else wire.lease_id(self.gateway.call(
                "lease/grant", {"TTL": str(lease_seconds(ttl))}, budget))
            # etcd's Campaign guard: "the key does not exist" is create revision 0.
            written = self.gateway.txn([wire.created_at(note, 0)] if create else [],
                                       [wire.put(note, data, lease)], budget=budget)
        except GatewayError as exc:
            raise self.unavailable(exc) from None
        return written.succeeded

    def get_note(self, election: str, key: str) -> bytes | None:
        note = self.keys(election).note(check_note_key(key))
        try:
            stored = self.gateway.range(note, budget=self.connect_timeout).first
        except GatewayError as exc:
            raise self.unavailable(exc) from None
        # etcd cannot read part of a value: the answer is bounded by the gateway's caps
        # (and etcd's request limit, 1.5 MiB by default), a note by MAX_NOTE.
        return None if stored is None or len(stored.value) > MAX_NOTE else stored.value

    def delete_note(self, election: str, key: str) -> None:
        note = self.keys(election).note(check_note_key(key))
        try:
            self.gateway.call("kv/deleterange", {"key": wire.b64(note)}, self.connect_timeout)
        except GatewayError as exc:
            raise self.unavailable(exc) from None

    def close(self) -> None:
        self.gateway.close()

    # -- errors --------------------------------------------------------------------------

    def unavailable(self, exc: GatewayError, within: float | None = None) -> BackendUnavailable:
        """One line for a failed call: what failed, where, and what to do."""
        where = self.gateway.where
        if exc.kind == "auth":
            who = f"user {self.options.username!r}" if self.options.username else "a client without a user"
            hint = "" if self.options.username else ": put user:password@ in the URL"
            return BackendUnavailable(f"etcd at {where} refused {who} ({exc.message}){hint}")
        if exc.kind == "denied":
            return BackendUnavailable(
                f"etcd at {where}: user {self.options.username!r} may not use {self.options.prefix}/"
                f" ({exc.message}): grant it a role with readwrite on that prefix")
        if exc.kind == "tls":
            return BackendUnavailable(f"TLS to etcd at {where} failed: {exc.message}")
        if exc.kind == "unreachable":
            return unreachable("etcd", where, self.connect_timeout if within is None else within,
                               exc.message)
        return BackendUnavailable(f"etcd at {where} answered: {exc.message}")


def _decode_entry(kv: KeyValue) -> HistoryEntry | None:
    try:
        return HistoryEntry.decode(kv.value)
    except ValueError:
        return None


def _leader_info(first: KeyValue, entry: HistoryEntry | None) -> LeaderInfo:
    """The leader from its key (value: node id; an ``etcdctl lock`` key has none: its
    lease) and, when it is lelect's, the history entry of its term."""
    node_id = first.value.decode("utf-8", "replace") or first.key.rsplit("/", 1)[-1]
    if entry is None or entry.term != first.create_revision:
        return LeaderInfo(node_id=node_id, term=first.create_revision)
    return LeaderInfo(node_id=node_id, term=first.create_revision, since=entry.started,
                      host=entry.host, pid=entry.pid)
