"""The chaos run (bench/chaos.py): its analysis finds what is planted in synthetic
records, and a short real run (marked ``chaos``: ``pytest -m chaos``) keeps the
safety properties on the embedded backend and on Redis."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from chaos_analysis import (  # noqa: E402
    End,
    Exit,
    Fault,
    Gone,
    JobEnd,
    JobStart,
    Log,
    Write,
    analyse,
    render,
)


def job(job_id: int, t: float, term: int, node: str = "c0", keeper: int = 0,
        lelect: int = 0) -> JobStart:
    return JobStart(t, job_id, node, term, 1000 + job_id, keeper or 2000 + job_id,
                    lelect or 3000 + job_id)


def writes(job_id: int, term: int, start: float, stop: float, accepted: bool = True):
    t, out = start, []
    while t < stop:
        out.append(Write(t, job_id, term, accepted))
        t += 0.02
    return out


def clean_run():
    """Two leaderships one after the other, each with its job, and a resign between."""
    return [
        Log(0.0, "c0", 3001, "elected", 5), job(1, 0.01, 5), *writes(1, 5, 0.02, 1.0),
        Fault(1.0, "resign", None, 1.0), JobEnd(1.05, 1),
        Log(1.1, "c1", 3002, "elected", 6), job(2, 1.12, 6, "c1"), *writes(2, 6, 1.13, 3.0),
        End(3.0),
    ]


def test_a_clean_run_has_no_violations():
    report = analyse(clean_run())
    assert report.ok, report.violations()
    assert (report.jobs, report.leaderships, report.faults["resign"]) == (2, 2, 1)
    (recovery,) = report.recoveries
    assert recovery.seconds == pytest.approx(0.13, abs=0.011)
    assert "no violations" in render(report)


def test_a_planted_overlap_is_found():
    records = [r for r in clean_run() if not isinstance(r, JobEnd)] + [JobEnd(1.3, 1)]
    report = analyse(records)
    (overlap,) = report.overlaps
    assert (overlap.earlier.job, overlap.later.job) == (1, 2)
    assert overlap.seconds == pytest.approx(0.18)
    assert "1 overlaps" in report.violations()[0]
    assert "VIOLATIONS" in render(report)


def test_an_overlap_of_a_frozen_tree_is_judged_by_how_long_it_ran_after_the_thaw():
    frozen = [Log(0.0, "c0", 3001, "elected", 5), job(1, 0.01, 5), *writes(1, 5, 0.02, 0.5),
              Fault(0.5, "freeze-tree", "c0", 4.0),
              Log(2.6, "c1", 3002, "elected", 6), job(2, 2.62, 6, "c1"),
              *writes(2, 6, 2.63, 6.0), *writes(1, 5, 4.0, 4.1, accepted=False)]
    brief = analyse([*frozen, JobEnd(4.1, 1), End(6.0)])
    assert not brief.overlaps and brief.ok, brief.violations()
    assert brief.thawed[0].after_thaw == pytest.approx(0.1)
    assert brief.refused == len(writes(1, 5, 4.0, 4.1))
    long = analyse([*frozen, JobEnd(4.5, 1), End(6.0)])
    assert len(long.long_thaws) == 1 and not long.ok


def test_planted_term_regressions_are_found():
    records = [job(1, 0.0, 7), *writes(1, 7, 0.01, 0.5), JobEnd(0.5, 1),
               job(2, 0.6, 7, "c1"), *writes(2, 7, 0.61, 1.0), JobEnd(1.0, 2),
               job(3, 1.1, 6, "c2"), Write(1.2, 3, 6, True), JobEnd(1.3, 3), End(2.0)]
    report = analyse(records)
    assert len(report.regressions) == 3, report.regressions  # two jobs, one write
    assert any("accepted term 6 after term 7" in r for r in report.regressions)


def test_a_planted_orphan_is_found():
    records = [job(1, 0.0, 5, keeper=20, lelect=30), *writes(1, 5, 0.01, 3.0),
               Gone(1.0, 30), Gone(1.1, 20), End(3.0)]  # never ended: alive at the end
    (orphan,) = analyse(records).orphans
    assert orphan.job == 1
    handed_back = [job(1, 0.0, 5, keeper=20, lelect=30), Gone(1.0, 30), JobEnd(1.05, 1),
                   Gone(1.1, 20), End(3.0)]
    assert not analyse(handed_back).orphans


def test_a_job_started_after_the_loss_and_a_leadership_without_a_job_are_found():
    records = [Log(0.0, "c0", 30, "elected", 5), Log(0.001, "c0", 30, "lost"),
               Log(0.03, "c0", 30, "job-started"), job(1, 0.04, 5, lelect=30), JobEnd(0.1, 1),
               Log(1.0, "c1", 31, "elected", 6), Log(1.0, "c1", 31, "keeper-gone"),
               End(5.0)]
    report = analyse(records)
    assert report.after_loss == [("c0", 5, True)]
    assert report.jobless == [("c1", 6)]


def test_give_ups_and_slow_recoveries_are_found():
    records = [job(1, 0.0, 5), *writes(1, 5, 0.01, 1.0), JobEnd(1.0, 1),
               Fault(1.0, "partition", "c0", 2.0), Exit(1.5, "c0", 30, 69, expected=False),
               Exit(1.6, "c1", 31, -9, expected=True),
               job(2, 7.0, 6, "c1"), *writes(2, 6, 7.01, 8.0), End(8.0)]
    report = analyse(records, recovery_limit=4.0)
    assert [e.status for e in report.gave_up] == [69]
    (slow,) = report.slow_recoveries
    assert slow.seconds == pytest.approx(5.01)


def test_a_job_that_writes_on_briefly_after_the_heal_is_no_recovery():
    """After a server restart the old leader's job writes on until its next renew finds
    the lease gone: those writes do not count as a recovery; the next job's do. A job
    that survives the fault (runs on for a ttl, or until the next fault) does count."""
    restart = [job(1, 0.0, 5), *writes(1, 5, 0.01, 1.2), Fault(1.0, "restart-server", None, 1.05),
               JobEnd(1.2, 1), job(2, 4.5, 6, "c1"), *writes(2, 6, 4.51, 6.0), End(6.0)]
    (recovery,) = analyse(restart, recovery_limit=4.0, ttl=2.0).recoveries
    assert recovery.seconds == pytest.approx(3.46, abs=0.011)
    survivor = [job(1, 0.0, 5), *writes(1, 5, 0.01, 4.0), Fault(1.0, "partition", "c2", 2.0),
                Fault(3.5, "kill-lelect", "c0", 3.5), JobEnd(3.6, 1), End(4.0)]
    first, _ = analyse(survivor, recovery_limit=4.0, ttl=2.0).recoveries
    assert first.seconds == pytest.approx(0.01, abs=0.011)


def test_a_heal_the_next_fault_struck_too_soon_after_is_not_judged():
    """The next fault came before any job could take over (sooner than the limit): that
    heal is cut short, not slow; the next heal is judged as usual."""
    faults = [job(1, 0.0, 5), *writes(1, 5, 0.01, 1.3), Fault(1.0, "resign", None, 1.1),
              JobEnd(1.3, 1), Fault(1.8, "kill-keeper", "c1", 1.8)]
    records = [*faults, job(2, 2.5, 6, "c1"), *writes(2, 6, 2.51, 6.0), End(6.0)]
    cut, judged = analyse(records, recovery_limit=4.0, ttl=2.0).recoveries
    assert cut.cut_short and cut.seconds is None
    assert not judged.cut_short and judged.seconds == pytest.approx(0.71, abs=0.011)
    late = [*faults, job(2, 6.5, 6, "c1"), *writes(2, 6, 6.51, 8.0), End(8.0)]
    report = analyse(late, recovery_limit=4.0, ttl=2.0)
    assert [r.fault.kind for r in report.slow_recoveries] == ["kill-keeper"]
    assert "1 cut short" in render(report)


# -- a short real run ---------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_short_chaos_run_keeps_one_job_at_a_time(backend, tmp_path):
    """Half a minute of random faults: no overlap outside a frozen tree, terms never go
    back, nothing orphaned; and (issue 18's liveness) no give-up, no leadership without
    its job, every heal followed by a running job within 2 x ttl."""
    import chaos

    report = chaos.run(backend, minutes=0.5, seed=18, workdir=tmp_path, say=lambda _: None)
    print(render(report, f"chaos: {backend}"))
    for log in sorted(tmp_path.glob("*.log")):  # shown if the test fails: why, in order
        print(f"--- {log.name}\n{log.read_text(errors='replace')[-6000:]}")
    assert sum(report.faults.values()) >= 5 and report.jobs >= 2, render(report)
    assert not report.overlaps and not report.long_thaws, render(report)
    assert not report.regressions and not report.orphans, render(report)
    assert not report.gave_up and not report.jobless and not report.after_loss, render(report)
    assert not report.slow_recoveries, render(report)
