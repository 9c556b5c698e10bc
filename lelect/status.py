"""Every exit status lelect gives, in one place: the errors (``lelect.errors``), the
campaign core, the CLI, ``health``, ``resign`` and the ``--help`` table read them here.
Standard library only (the embedded path imports it)."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    #: The answer is no: nobody (or not that term) leads, nobody was asked.
    NO = 1
    USAGE = 2
    UNAVAILABLE = 69
    INTERNAL = 70
    LOST = 73
    #: stdout could not be written (closed, disk full; not a reader that left): EX_IOERR.
    OUTPUT_FAILED = 74
    CONFLICT = 75
    CONFIG = 78
    MAX_RUNTIME = 79
    TIMEOUT = 124
    NOT_FOUND = 127
    CANCELLED = 130


class HealthStatus(IntEnum):
    """``lelect health``: the Nagios convention (OK, WARNING, CRITICAL)."""

    HEALTHY = 0
    DEGRADED = 1
    CRITICAL = 2


#: The ``--help`` and README table, in order: (status, meaning).
EXIT_TABLE: tuple[tuple[str, str], ...] = (
    ("job's own", "the job ran and exited (killed by signal N: 128+N)"),
    (str(int(ExitStatus.USAGE)), "usage error (bad flag, election name, URL, missing -- CMD)"),
    (str(int(ExitStatus.UNAVAILABLE)), "backend unreachable or failing"),
    (str(int(ExitStatus.INTERNAL)), "internal error (a bug in lelect)"),
    (str(int(ExitStatus.LOST)), "leadership lost while the job ran; the job was stopped"),
    (str(int(ExitStatus.OUTPUT_FAILED)),
     "could not write to stdout (closed, disk full; not a reader that left)"),
    (str(int(ExitStatus.CONFLICT)), "--no-wait and someone else leads (--conflict-exit-code)"),
    (str(int(ExitStatus.CONFIG)),
     "configuration refused (unsafe directory, lease/grace, corrupt state)"),
    (str(int(ExitStatus.MAX_RUNTIME)), "--max-runtime reached; the job was stopped"),
    (str(int(ExitStatus.TIMEOUT)), "--timeout ran out before leadership (-E overrides, like flock -E)"),
    (str(int(ExitStatus.NOT_FOUND)), "the command was not found or is not executable"),
    ("128+N", "lelect was stopped by signal N (it ends by that signal itself)"),
)


def exit_table_text() -> str:
    """The table as click's help epilog shows it (``\\b``: keep the lines)."""
    rows = "\n".join(f"  {status:<10} {meaning}" for status, meaning in EXIT_TABLE)
    return f"\b\nExit statuses:\n{rows}"
