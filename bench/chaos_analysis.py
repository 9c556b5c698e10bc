"""What a chaos run (``bench/chaos.py``) saw, judged: records in, findings out.

Pure: no clock, no processes. Every record carries ``t``, seconds on the bench's own
monotonic clock (the fenced resource stamps jobs and writes with it; lelect's JSON log
lines are converted to it). :func:`analyse` turns a run's records into a
:class:`Report`; :func:`render` prints it as a table. ``tests/test_chaos.py`` feeds it
planted overlaps, regressions and orphans.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

#: A job frozen with its whole tree may run this long after the thaw (its keeper's
#: dead-man switch fires at once, but it must first be scheduled).
THAW_LIMIT = 0.25
#: A job may outlive its keeper and its lelect by this much (the kernel delivering the
#: SIGKILL, the resource seeing the socket close).
ORPHAN_GRACE = 0.5
#: A leadership won this close to the end of the run may not have started its job yet.
LATE = 1.0


# -- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobStart:
    """A job connected to the fenced resource: who runs it and under which term."""

    t: float
    job: int
    node: str
    term: int
    pid: int
    keeper: int
    lelect: int


@dataclass(frozen=True)
class Write:
    """A write of ``job`` stamped ``term``; refused when an earlier one had a higher term."""

    t: float
    job: int
    term: int
    accepted: bool


@dataclass(frozen=True)
class JobEnd:
    """The job's connection closed: it died."""

    t: float
    job: int


@dataclass(frozen=True)
class Gone:
    """A lelect or keeper process was first seen gone (or a zombie)."""

    t: float
    pid: int


@dataclass(frozen=True)
class Fault:
    """A fault from ``t`` until ``healed`` (``t`` for an instant one: a kill, a resign).
    ``node`` is the candidate struck (None: the server)."""

    t: float
    kind: str
    node: str | None
    healed: float


@dataclass(frozen=True)
class Log:
    """One JSON log line of the lelect process ``lelect`` (``term`` where it names one)."""

    t: float
    node: str
    lelect: int
    event: str
    term: int | None = None


@dataclass(frozen=True)
class Exit:
    """A lelect process ended; ``expected`` when the bench killed or stopped it."""

    t: float
    node: str
    lelect: int
    status: int
    expected: bool


@dataclass(frozen=True)
class Text:
    """A line on a candidate's stderr that is not a JSON log record (a traceback?)."""

    t: float
    node: str
    line: str


@dataclass(frozen=True)
class End:
    """The run is over; a job not ended by now ran until now."""

    t: float


Record = JobStart | Write | JobEnd | Gone | Fault | Log | Exit | Text | End


# -- findings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlap:
    earlier: JobStart
    later: JobStart
    seconds: float


@dataclass(frozen=True)
class Thawed:
    """A job frozen with its whole tree while the next one started: how long it ran on
    after the thaw."""

    job: JobStart
    after_thaw: float


@dataclass(frozen=True)
class Recovery:
    fault: Fault
    seconds: float | None  # None: no accepted write before the next fault or the end
    #: No recovery yet when the next fault struck, sooner than the limit after this heal:
    #: this heal was given no chance to be judged (the next one is).
    cut_short: bool = False


@dataclass
class Report:
    faults: Counter = field(default_factory=Counter)
    leaderships: int = 0
    jobs: int = 0
    writes: int = 0
    refused: int = 0
    overlaps: list[Overlap] = field(default_factory=list)
    thawed: list[Thawed] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    orphans: list[JobStart] = field(default_factory=list)
    jobless: list[tuple[str, int]] = field(default_factory=list)
    after_loss: list[tuple[str, int, bool]] = field(default_factory=list)  # node, term, ran
    gave_up: list[Exit] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    events: Counter = field(default_factory=Counter)
    texts: list[Text] = field(default_factory=list)
    recovery_limit: float = 4.0

    @property
    def slow_recoveries(self) -> list[Recovery]:
        return [r for r in self.recoveries if not r.cut_short
                and (r.seconds is None or r.seconds > self.recovery_limit)]

    @property
    def long_thaws(self) -> list[Thawed]:
        return [t for t in self.thawed if t.after_thaw > THAW_LIMIT]

    def violations(self) -> list[str]:
        """One line per kind of violation found (empty: the run held)."""
        found = {
            "overlaps (two jobs alive at once)": len(self.overlaps),
            f"jobs that ran > {THAW_LIMIT * 1000:.0f} ms after their thaw": len(self.long_thaws),
            "term regressions": len(self.regressions),
            "orphans": len(self.orphans),
            "leaderships without a job": len(self.jobless),
            "jobs started after a loss was logged": len(self.after_loss),
            "candidates that gave up (exited)": len(self.gave_up),
            f"heals not followed by a running job within {self.recovery_limit:g}s":
                len(self.slow_recoveries),
        }
        return [f"{count} {what}" for what, count in found.items() if count]

    @property
    def ok(self) -> bool:
        return not self.violations()


# -- the analysis -------------------------------------------------------------------------


def _freeze_covering(faults: list[Fault], node: str, t: float) -> Fault | None:
    for fault in faults:
        if fault.kind == "freeze-tree" and fault.node == node and fault.t <= t <= fault.healed:
            return fault
    return None


def analyse(records: Iterable[Record], recovery_limit: float = 4.0,
            ttl: float | None = None) -> Report:
    """Judge a run. ``recovery_limit``: a heal must be followed by an accepted write
    within this many seconds (the issue's check: 2 x ttl) of a job that survived the
    fault: one started since the fault began, or one that runs on for ``ttl`` after the
    heal (default: half the limit) or until the next fault. (A leader's job that writes
    on for a moment after a server restart, until its next renew finds the lease gone, is
    not a recovery.)"""
    survive = recovery_limit / 2 if ttl is None else ttl
    records = sorted(records, key=lambda r: r.t)
    report = Report(recovery_limit=recovery_limit)
    end = max((r.t for r in records), default=0.0)
    starts: dict[int, JobStart] = {}
    ends: dict[int, float] = {}
    gone: dict[int, list[float]] = defaultdict(list)
    faults: list[Fault] = []
    writes: list[Write] = []
    logs: dict[int, list[Log]] = defaultdict(list)
    for record in records:
        if isinstance(record, JobStart):
            starts[record.job] = record
        elif isinstance(record, JobEnd):
            ends.setdefault(record.job, record.t)
        elif isinstance(record, Write):
            writes.append(record)
        elif isinstance(record, Gone):
            gone[record.pid].append(record.t)
        elif isinstance(record, Fault):
            faults.append(record)
        elif isinstance(record, Log):
            logs[record.lelect].append(record)
            report.events[record.event] += 1
        elif isinstance(record, Exit) and not record.expected:
            report.gave_up.append(record)
        elif isinstance(record, Text):
            report.texts.append(record)
        elif isinstance(record, End):
            end = max(end, record.t)

    report.faults = Counter(f.kind for f in faults)
    report.jobs = len(starts)
    report.writes = len(writes)
    report.refused = sum(not w.accepted for w in writes)
    jobs = sorted(starts.values(), key=lambda j: (j.t, j.job))

    def ended(job: JobStart) -> float:
        return ends.get(job.job, end)

    # Overlaps: a later job started while an earlier one was still alive.
    for i, later in enumerate(jobs):
        for earlier in jobs[:i]:
            if ended(earlier) <= later.t:
                continue
            frozen = _freeze_covering(faults, earlier.node, later.t)
            if frozen is not None:
                report.thawed.append(Thawed(earlier, max(0.0, ended(earlier) - frozen.healed)))
            else:
                report.overlaps.append(Overlap(earlier, later, min(ended(earlier), ended(later))
                                               - later.t))

    # Term regressions: each new job's term exceeds every earlier job's; the resource
    # never accepts a write below the highest it accepted.
    highest_job = None
    for job in jobs:
        if highest_job is not None and job.term <= highest_job.term:
            report.regressions.append(
                f"job {job.job} of {job.node} started with term {job.term} after job"
                f" {highest_job.job} of {highest_job.node} had term {highest_job.term}")
        if highest_job is None or job.term > highest_job.term:
            highest_job = job
    highest_write = None
    for write in writes:
        if write.accepted and highest_write is not None and write.term < highest_write:
            report.regressions.append(
                f"the resource accepted term {write.term} after term {highest_write}")
        if write.accepted:
            highest_write = max(highest_write or write.term, write.term)

    # Orphans: a job alive after both its keeper and its lelect were gone.
    for job in jobs:
        keeper_gone = [t for t in gone.get(job.keeper, []) if t >= job.t]
        lelect_gone = [t for t in gone.get(job.lelect, []) if t >= job.t]
        if keeper_gone and lelect_gone:
            both = max(keeper_gone[0], lelect_gone[0])
            if ended(job) > both + ORPHAN_GRACE:
                report.orphans.append(job)

    # Leaderships, from each lelect's log in order: won, job started, lost.
    terms_with_jobs = {job.term for job in jobs}
    for lelect_logs in logs.values():
        current: dict | None = None
        leaderships = []
        for log in lelect_logs:
            if log.event == "elected" and log.term is not None:
                if current is not None and current["term"] == log.term:
                    continue  # said twice (the keeper announces it on the embedded backend)
                current = {"node": log.node, "term": log.term, "t": log.t, "job": False,
                           "lost": False}
                leaderships.append(current)
            elif current is None:
                continue
            elif log.event == "job-started":
                if current["lost"] and not current["job"]:
                    report.after_loss.append((current["node"], current["term"],
                                              current["term"] in terms_with_jobs))
                current["job"] = True
            elif log.event == "lost":
                current["lost"] = True
        for leadership in leaderships:
            report.leaderships += 1
            has_job = leadership["job"] or leadership["term"] in terms_with_jobs
            if not has_job and leadership["t"] < end - LATE:
                report.jobless.append((leadership["node"], leadership["term"]))

    # Recovery: from each heal to the first accepted write after it by a job that
    # survived the fault.
    accepted = [w for w in writes if w.accepted]
    ordered = sorted(faults, key=lambda f: f.t)
    for i, fault in enumerate(ordered):
        until = ordered[i + 1].t if i + 1 < len(ordered) else end

        def survived(job: JobStart | None, fault: Fault = fault, until: float = until) -> bool:
            return job is None or job.t >= fault.t or ended(job) >= min(
                fault.healed + survive, until)

        after = next((w.t for w in accepted
                      if fault.healed <= w.t <= until and survived(starts.get(w.job))), None)
        cut_short = after is None and i + 1 < len(ordered) and (
            until - fault.healed < recovery_limit)
        report.recoveries.append(Recovery(fault, None if after is None else after - fault.healed,
                                          cut_short))
    return report


# -- the table ----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def render(report: Report, title: str = "chaos run") -> str:
    """The report as a plain table (and the first few findings of each kind)."""
    rows: list[tuple[str, str]] = []
    faults = ", ".join(f"{kind} {count}" for kind, count in sorted(report.faults.items()))
    rows.append(("faults", f"{sum(report.faults.values())} ({faults or 'none'})"))
    rows.append(("leaderships", str(report.leaderships)))
    rows.append(("jobs", str(report.jobs)))
    rows.append(("writes (refused)", f"{report.writes} ({report.refused})"))
    worst = max((o.seconds for o in report.overlaps), default=0.0)
    rows.append(("overlaps", f"{len(report.overlaps)}"
                 + (f" (longest {_ms(worst)})" if report.overlaps else "")))
    thaw = max((t.after_thaw for t in report.thawed), default=0.0)
    rows.append(("frozen-tree overlaps", f"{len(report.thawed)}"
                 + (f" (ran after thaw: max {_ms(thaw)})" if report.thawed else "")))
    rows.append(("term regressions", str(len(report.regressions))))
    rows.append(("orphans", str(len(report.orphans))))
    rows.append(("leaderships without a job", str(len(report.jobless))))
    ran = sum(1 for *_, r in report.after_loss if r)
    rows.append(("jobs started after a loss", f"{len(report.after_loss)} ({ran} really ran)"))
    rows.append(("candidates that gave up", str(len(report.gave_up))
                 + (f" (statuses {sorted(Counter(e.status for e in report.gave_up).items())})"
                    if report.gave_up else "")))
    done = [r.seconds for r in report.recoveries if r.seconds is not None]
    if done:
        ordered = sorted(done)
        p50 = ordered[len(ordered) // 2]
        cut = sum(r.cut_short for r in report.recoveries)
        rows.append(("recovery after heal", f"p50 {_ms(p50)}, max {_ms(ordered[-1])},"
                     f" > {report.recovery_limit:g}s: {len(report.slow_recoveries)}"
                     f" of {len(report.recoveries)}"
                     + (f" ({cut} cut short by the next fault)" if cut else "")))
    else:
        rows.append(("recovery after heal", f"none of {len(report.recoveries)}"))
    slow = Counter(r.fault.kind for r in report.slow_recoveries)
    if slow:
        rows.append(("  slow, by fault", ", ".join(f"{k} {n}" for k, n in sorted(slow.items()))))
    loud = {k: n for k, n in report.events.items()
            if k in ("lost", "keeper-gone", "duplicate-id", "execfail", "keeper-error")}
    rows.append(("lelect said", ", ".join(f"{k} {n}" for k, n in sorted(loud.items())) or "-"))
    rows.append(("other stderr lines", str(len(report.texts))))
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    details: list[str] = []
    for overlap in report.overlaps[:5]:
        details.append(f"overlap {_ms(overlap.seconds)}: {overlap.earlier.node} term"
                       f" {overlap.earlier.term} and {overlap.later.node} term {overlap.later.term}"
                       f" at t={overlap.later.t:.3f}")
    for thawed in report.long_thaws[:5]:
        details.append(f"ran {_ms(thawed.after_thaw)} after its thaw: {thawed.job.node} term"
                       f" {thawed.job.term}")
    details += [f"regression: {text}" for text in report.regressions[:5]]
    for job in report.orphans[:5]:
        details.append(f"orphan: job pid {job.pid} of {job.node} term {job.term}")
    for node, term in report.jobless[:5]:
        details.append(f"no job: {node} term {term}")
    for node, term, ran_ in report.after_loss[:5]:
        details.append(f"job started after the loss: {node} term {term}"
                       f" ({'it ran' if ran_ else 'never reached the resource'})")
    for exit_ in report.gave_up[:5]:
        details.append(f"gave up: {exit_.node} (pid {exit_.lelect}) exited {exit_.status}"
                       f" at t={exit_.t:.3f}")
    for recovery in report.slow_recoveries[:5]:
        took = "never" if recovery.seconds is None else f"{recovery.seconds:.2f}s"
        details.append(f"slow recovery: {recovery.fault.kind} on {recovery.fault.node or 'server'}"
                       f" healed at t={recovery.fault.healed:.3f}: {took}")
    for text in report.texts[:3]:
        details.append(f"stderr of {text.node}: {text.line[:150]}")
    if details:
        lines += ["", *details]
    violations = report.violations()
    lines += ["", "VIOLATIONS: " + "; ".join(violations) if violations else "no violations"]
    return "\n".join(lines)
