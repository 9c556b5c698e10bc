"""Standard streams that are closed or fail, handled the way one expects of a tool.

- A closed fd 0, 1 or 2 is reserved at start-up with /dev/null opened the other way
  round (writes to it fail with EBADF, as they would on the closed fd), so that no lock
  file, database or socket lelect opens later becomes its stdout or stderr, and the job
  inherits the same "cannot write" it would have had.
- stdout: a reader that left (EPIPE, ``| head -1``) has what it wanted: the rest of the
  output is dropped and the command ends with its own status (``watch`` ends, 0). Any
  other failure (closed, disk full, I/O error) is :class:`OutputFailed`: one line on
  stderr and status 74 (EX_IOERR), as ``cat`` says "write error" and exits non-zero.
- stderr: a diagnostic that cannot be written is dropped; it never changes a status (a
  campaign ends with its job's status, ``-q`` or not).
"""

from __future__ import annotations

import errno
import io
import os
import sys

#: sysexits' EX_IOERR: lelect could not write its output.
from lelect.status import ExitStatus

EXIT_OUTPUT_FAILED = ExitStatus.OUTPUT_FAILED


class OutputFailed(OSError):
    """stdout could not be written (not a reader that left: that is no error)."""


class GuardedWriter(io.TextIOWrapper):
    """A standard output stream that handles its own failures (see the module)."""

    def __init__(self, fd: int, name: str, like) -> None:
        raw = io.FileIO(fd, "w", closefd=False)
        buffered = io.BufferedWriter(raw)
        interactive = _isatty(fd)
        super().__init__(
            buffered,
            encoding=getattr(like, "encoding", None) or "utf-8",
            errors=getattr(like, "errors", None) or "strict",
            line_buffering=interactive or name == "stderr",
            write_through=name == "stderr",
        )
        self.stream_name = name
        self.reader_gone = False
        self.failed: OSError | None = None

    def write(self, text: str) -> int:
        if self.reader_gone or self.failed:  # said once (stdout) or never (stderr)
            return len(text)
        try:
            return super().write(text)
        except OSError as exc:
            return self._failed(exc, len(text))

    def flush(self) -> None:
        if self.reader_gone or self.failed:
            return
        try:
            super().flush()
        except OSError as exc:
            self._failed(exc, 0)

    def _failed(self, exc: OSError, length: int) -> int:
        if self.stream_name == "stdout" and exc.errno == errno.EPIPE:
            self.reader_gone = True
            _sink(self.fileno())
            return length
        self.failed = exc
        if self.stream_name == "stderr":
            return length
        raise OutputFailed(exc.errno, exc.strerror or str(exc)) from None


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _sink(fd: int) -> None:
    """Point ``fd`` at /dev/null: what is still buffered or written goes nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def _reserve(fd: int, flags: int) -> bool:
    """Open /dev/null as ``fd`` if it is closed (True then)."""
    try:
        os.fstat(fd)
        return False
    except OSError:
        pass
    null = os.open(os.devnull, flags)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)
    return True


def guard() -> None:
    """Reserve closed standard fds and install the guarded stdout and stderr."""
    _reserve(0, os.O_WRONLY)  # reads fail with EBADF, as on a closed stdin
    _reserve(1, os.O_RDONLY)  # writes fail with EBADF
    _reserve(2, os.O_RDONLY)
    if sys.stdin is None:
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = GuardedWriter(1, "stdout", sys.stdout)
    sys.stderr = GuardedWriter(2, "stderr", sys.stderr)


def reader_gone() -> bool:
    """True once stdout's reader left (``| head -1``): a stream of output may end."""
    return bool(getattr(sys.stdout, "reader_gone", False))
